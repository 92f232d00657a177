"""Tests of `unip convert` on checkpoints as the field writes them (issue 20 item 1, issue 24 items 3, 13, 17): the
official UNIP MAE-style `save_model` pickle (optimizer state, scaler, `argparse.Namespace` args), a crafted pickle that
must be refused without running, DDP / EMA / teacher entries, fp16 and bf16 files, NaN weights, bad head counts,
empty and truncated files, an mmseg checkpoint given to the backbone converters, non-empty output folders, and the
card of converted weights (source, licence, what was converted)."""

import argparse
import json
import os
import sys

import pytest
import torch
import yaml
from safetensors.torch import save_file

from unip_hf import UnipConfig, UnipForSemanticSegmentation, UnipViTModel
from unip_hf.cli import main as cli_main
from unip_hf.conversion.convert import Conversion, conversion_card, convert, convert_checkpoint
from unip_hf.conversion.mmseg import to_mmseg_checkpoint
from unip_hf.conversion.checkpoint_reading import ConversionError, read_checkpoint, to_timm_state_dict

sys.path.insert(0, os.path.dirname(__file__))
from test_convert import TINY, to_timm_layout  # noqa: E402


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny_student(last_heads: int = 4) -> UnipViTModel:
    torch.manual_seed(0)
    return UnipViTModel(UnipConfig(**TINY, last_layer_num_attention_heads=last_heads,
                                   position_embedding_type="learned")).eval()


def official_checkpoint(model: UnipViTModel, **args) -> dict:
    """A checkpoint exactly as the official MAE-style `save_model` writes it: the model's state dict, a real AdamW
    state after one step, the epoch, a GradScaler state dict and the run's `argparse.Namespace`."""
    parameters = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.AdamW(parameters, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    sum(p.sum() for p in parameters).backward()
    optimizer.step()
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 17}
    namespace = argparse.Namespace(model="unip_vit_tiny_patch16", input_size=224, batch_size=64, blr=1.5e-4,
                                   teacher_model="mae_vit_large_patch16", intermediate=18, **args)
    return {"model": to_timm_layout(model), "optimizer": optimizer.state_dict(), "epoch": 99, "scaler": scaler,
            "args": namespace}


def test_official_save_model_pickle_converts(tmp_path, pixels):
    """Guards issue 20 item 1: the official format (Namespace args, optimizer and scaler state) failed with `Weights
    only load failed`; it now loads with weights_only=True and only argparse.Namespace allowed, and the distilled
    last block's head count comes from args.last_heads."""
    source = tiny_student()
    torch.save(official_checkpoint(source, last_heads=4), tmp_path / "official_like.pth")
    result = convert(tmp_path / "official_like.pth", "auto", num_attention_heads=2)
    assert result.source_format == "unip" and result.official_unip and result.entry == "model"
    assert result.model.config.last_block_heads == 4  # from args.last_heads
    with torch.no_grad():
        torch.testing.assert_close(result.model(pixels).last_hidden_state, source(pixels).last_hidden_state)
    # the reproduction of the issue, explicit head counts
    converted = convert_checkpoint(tmp_path / "official_like.pth", tmp_path / "converted", "unip",
                                   num_attention_heads=2, last_layer_num_attention_heads=4)
    assert converted.config.last_block_heads == 4


def test_crafted_pickle_is_refused_without_running(tmp_path):
    """Guards the allow-list: a pickle whose reduce calls os.system is refused and its command never runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    state = to_timm_layout(tiny_student())
    torch.save({"model": state, "args": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ConversionError, match=r"evil\.pth: refused: the pickle needs '(posix|nt)\.system'"):
        read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    code = None
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "out"), "--num_heads", "2"])
    code = exit_info.value.code
    assert code == 2 and not marker.exists() and not (tmp_path / "out").exists()


def test_ddp_prefix_and_ema_entry(tmp_path, pixels):
    """A DDP `module.` prefix is removed; with `model` and `model_ema` both present, `model` is read (the note names
    the other) and `--checkpoint_key model_ema` reads the EMA weights."""
    model, ema = tiny_student(), tiny_student()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01)
    wrap = lambda m: {"module." + k: v for k, v in to_timm_layout(m).items()}  # noqa: E731
    torch.save({"model": wrap(model), "model_ema": wrap(ema), "epoch": 3}, tmp_path / "ddp.pth")
    plain = convert(tmp_path / "ddp.pth", "timm", num_attention_heads=2, last_layer_num_attention_heads=4)
    assert plain.entry == "model" and any("model_ema" in note for note in plain.notes)
    from_ema = convert(tmp_path / "ddp.pth", "timm", checkpoint_key="model_ema", num_attention_heads=2,
                       last_layer_num_attention_heads=4)
    with torch.no_grad():
        torch.testing.assert_close(plain.model(pixels).last_hidden_state, model(pixels).last_hidden_state)
        torch.testing.assert_close(from_ema.model(pixels).last_hidden_state, ema(pixels).last_hidden_state)
    with pytest.raises(ConversionError, match=r"no state dict under 'nothing' \(entries with a dictionary: "
                                              r"\['model', 'model_ema'\]\)"):
        convert(tmp_path / "ddp.pth", "timm", checkpoint_key="nothing", num_attention_heads=2)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files(tmp_path, pixels, suffix, dtype):
    """fp16 / bf16 weights (.pth and .safetensors) convert to the same values in float32."""
    source = tiny_student()
    state = {k: v.to(dtype) for k, v in to_timm_layout(source).items()}
    path = tmp_path / f"half{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"model": state}, path)
    result = convert(path, "auto", num_attention_heads=2, last_layer_num_attention_heads=4)
    assert result.source_dtypes == [str(dtype).replace("torch.", "")]
    reference = tiny_student().to(dtype).float()
    for (name, ours), theirs in zip(result.model.named_parameters(), reference.parameters()):
        assert ours.dtype == torch.float32 and torch.equal(ours, theirs), name
    with torch.no_grad():
        torch.testing.assert_close(result.model(pixels).last_hidden_state, reference(pixels).last_hidden_state)


def test_teacher_only_key_sets(tmp_path, pixels):
    """A DINO/iBOT-style `{'teacher': {backbone.*, head.*}}` converts (prefix removed, projection head dropped), and
    so does an MAE teacher's pre-training checkpoint (decoder and mask token dropped)."""
    source = tiny_student(last_heads=2)
    teacher = {"backbone." + k: v for k, v in to_timm_layout(source).items()}
    teacher["head.mlp.0.weight"] = torch.randn(8, 32)
    teacher["head.last_layer.weight_g"] = torch.ones(16, 1)
    torch.save({"teacher": teacher, "epoch": 100}, tmp_path / "checkpoint_teacher.pth")
    result = convert(tmp_path / "checkpoint_teacher.pth", "auto", num_attention_heads=2)
    assert result.entry == "teacher" and result.source_format == "timm"
    mae = to_timm_layout(source)
    mae.update({"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.randn(16, 32),
                "decoder_blocks.0.norm1.weight": torch.ones(16), "decoder_pred.weight": torch.randn(192, 16)})
    torch.save({"model": mae}, tmp_path / "mae_pretrain.pth")
    from_mae = convert(tmp_path / "mae_pretrain.pth", "timm", num_attention_heads=2)
    with torch.no_grad():
        for converted in (result.model, from_mae.model):
            torch.testing.assert_close(converted(pixels).last_hidden_state, source(pixels).last_hidden_state)


def test_nan_weights_are_refused_by_name(tmp_path, capsys):
    """Guards issue 24 item 13: NaN / inf weights converted silently; they are refused naming the tensor."""
    state = to_timm_layout(tiny_student())
    state["blocks.1.mlp.fc1.weight"][0, :3] = float("nan")
    state["norm.bias"][0] = float("inf")
    torch.save({"model": state}, tmp_path / "nan.pth")
    with pytest.raises(ConversionError, match=r"2 tensor\(s\) hold NaN or infinite values, refusing to convert: "
                                              r"blocks\.1\.mlp\.fc1\.weight \(3 NaN, 0 inf of 4096\); norm\.bias"):
        convert(tmp_path / "nan.pth", "timm", num_attention_heads=2, last_layer_num_attention_heads=4)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", str(tmp_path / "nan.pth"), str(tmp_path / "out"), "--num_heads", "2"])
    assert exit_info.value.code == 2
    assert "blocks.1.mlp.fc1.weight (3 NaN" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_non_positive_head_counts_refused_at_argument_time(tmp_path, capsys, value):
    """Guards issue 24 item 13: `--last_layer_heads -1` converted to an unusable model; refused by argparse now,
    before any file is read (the source does not even exist)."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", str(tmp_path / "absent.pth"), str(tmp_path / "out"), "--last_layer_heads", value])
    assert exit_info.value.code == 2
    assert "--last_layer_heads" in capsys.readouterr().err


def test_head_count_not_dividing_the_width(tmp_path, capsys):
    torch.save({"model": to_timm_layout(tiny_student())}, tmp_path / "ckpt.pth")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", str(tmp_path / "ckpt.pth"), str(tmp_path / "out"), "--num_heads", "2",
                  "--last_layer_heads", "5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "--last_layer_heads 5 does not divide the width 32 read from the checkpoint; a head count must be one " \
           "of its divisors (1, 2, 4, 8, 16, 32)" in err


@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_empty_and_truncated_safetensors(tmp_path, capsys, kind):
    """Guards issue 24 item 17: a zero-byte or truncated .safetensors ended in a traceback; now a named error."""
    path = tmp_path / "model.safetensors"
    save_file(to_timm_layout(tiny_student()), str(path))
    data = path.read_bytes()
    path.write_bytes(b"" if kind == "empty" else data[: len(data) // 2])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", str(path), str(tmp_path / "out"), "--from", "timm", "--num_heads", "2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    expected = "the file is empty (0 bytes)" if kind == "empty" else "not a readable .safetensors file"
    assert f"{path}: {expected}" in err


def test_truncated_pth(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": to_timm_layout(tiny_student())}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ConversionError, match=r"ckpt\.pth: cannot read as a torch checkpoint \(1000 bytes"):
        read_checkpoint(path)


def tiny_segmenter() -> UnipForSemanticSegmentation:
    torch.manual_seed(0)
    return UnipForSemanticSegmentation(UnipConfig(**TINY, num_labels=3, auxiliary_channels=16,
                                                  position_embedding_type="learned")).eval()


@pytest.mark.parametrize("source_format", ["unip", "timm"])
def test_mmseg_checkpoint_given_to_backbone_converters(tmp_path, capsys, source_format):
    """Guards issue 24 item 17: `not a timm-layout ViT state dict` without the file or the prefix; now the message
    names the file, the `backbone.` prefix and --from mmseg."""
    torch.save(to_mmseg_checkpoint(tiny_segmenter()), tmp_path / "iter_14400.pth")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", str(tmp_path / "iter_14400.pth"), str(tmp_path / "out"), "--from", source_format])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert (f"{tmp_path / 'iter_14400.pth'} is an mmsegmentation segmenter, not a timm-layout ViT state dict: its "
            "backbone is under the 'backbone.' prefix and it also holds auxiliary_head., decode_head.; convert it "
            "with --from mmseg (or --from auto)") in err


def test_non_empty_output_needs_overwrite_and_is_cleared(tmp_path, capsys):
    """Guards issue 24 item 3: converting into a fine-tuned model's folder replaced its weights and config and left
    its card, eval results and best_model/ describing another model. Refused without --overwrite (nothing touched);
    with it, everything the old model left is removed first."""
    torch.save({"model": to_timm_layout(tiny_student())}, tmp_path / "ckpt.pth")
    old = tmp_path / "finetuned"
    (old / "best_model").mkdir(parents=True)
    (old / ".eval_results").mkdir()
    for name in ("README.md", "config.json", "model.safetensors", "eval_log.json", ".eval_results/sirst-test.yaml",
                 "best_model/config.json"):
        (old / name).write_text("old model")
    before = sorted(p.relative_to(old).as_posix() for p in old.rglob("*"))
    argv = ["convert", str(tmp_path / "ckpt.pth"), str(old), "--num_heads", "2", "--last_layer_heads", "4"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"output folder {old} is not empty (6 entries: .eval_results, README.md, best_model, config.json, " \
           "eval_log.json, model.safetensors); add --overwrite" in err
    assert sorted(p.relative_to(old).as_posix() for p in old.rglob("*")) == before
    assert cli_main(argv + ["--overwrite"]) == 0
    left = sorted(p.name for p in old.iterdir())
    assert not {"best_model", ".eval_results", "eval_log.json"} & set(left)
    assert "old model" not in (old / "README.md").read_text()
    assert json.loads((old / "config.json").read_text())["model_type"] == "unip"
    # an output folder that holds the source is refused even with --overwrite
    inside = tmp_path / "holder"
    inside.mkdir()
    torch.save({"model": to_timm_layout(tiny_student())}, inside / "ckpt.pth")
    with pytest.raises(SystemExit):
        cli_main(["convert", str(inside / "ckpt.pth"), str(inside), "--num_heads", "2", "--overwrite"])
    assert "holds the source" in capsys.readouterr().err and (inside / "ckpt.pth").is_file()


def card_metadata(folder) -> dict:
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1]), text


def test_card_of_converted_weights(tmp_path, capsys):
    """Guards issue 20 item 3: the card names the source file, its licence (--license) and what was converted."""
    torch.save({"model": to_timm_layout(tiny_student())}, tmp_path / "vit_tiny_ir.pth")
    assert cli_main(["convert", str(tmp_path / "vit_tiny_ir.pth"), str(tmp_path / "out"), "--num_heads", "2",
                     "--last_layer_heads", "4", "--license", "apache-2.0"]) == 0
    metadata, text = card_metadata(tmp_path / "out")
    assert metadata["license"] == "apache-2.0" and "base_model" not in metadata
    assert metadata["unip_conversion"] == {
        "source": "vit_tiny_ir.pth", "source_format": "timm", "hidden_size": 32, "num_hidden_layers": 3,
        "num_attention_heads": 2, "last_layer_num_attention_heads": 4, "patch_size": 8, "num_channels": 3,
        "checkpoint_entry": "model", "source_dtypes": ["float32"]}
    assert "from the file `vit_tiny_ir.pth` (width 32, 3 blocks, 2 heads (last block 4), patch 8, 3 channel(s))" in text
    assert "Licence of the source, as given at conversion: `apache-2.0`" in text
    assert "--from auto: " in capsys.readouterr().out


def test_official_source_card_says_cc_by_nc(tmp_path, capsys):
    torch.save(official_checkpoint(tiny_student(), last_heads=4), tmp_path / "UNIP_ViT_Tiny.pth")
    with pytest.raises(SystemExit):  # a licence that contradicts the official one is refused
        cli_main(["convert", str(tmp_path / "UNIP_ViT_Tiny.pth"), str(tmp_path / "out"), "--num_heads", "2",
                  "--license", "apache-2.0"])
    assert "the source is official UNIP, whose weights are licensed cc-by-nc-4.0" in capsys.readouterr().err
    assert cli_main(["convert", str(tmp_path / "UNIP_ViT_Tiny.pth"), str(tmp_path / "out"), "--num_heads", "2"]) == 0
    printed = capsys.readouterr().out
    assert "is an official UNIP pre-training checkpoint" in printed and "CC BY-NC 4.0" in printed
    metadata, text = card_metadata(tmp_path / "out")
    assert metadata["license"] == "cc-by-nc-4.0" and "official-unip" in metadata["tags"]
    assert "official UNIP release, licensed CC BY-NC 4.0 (non-commercial use only)" in text


def test_card_base_model_for_a_hub_source():
    """A Hub id source becomes the card's `base_model` (with a link), a file only its name."""
    result = Conversion(model=tiny_student(), source="someone/vit-thermal", source_format="transformers")
    card = conversion_card(result, "mit")
    assert card.data.base_model == "someone/vit-thermal" and card.data.license == "mit"
    assert "[`someone/vit-thermal`](https://huggingface.co/someone/vit-thermal)" in card.text
    # a file from the Hub cache: its repo is the base model; casiatao/UNIP is recognised as official
    cached = "/cache/hub/models--casiatao--UNIP/snapshots/0123abc/UNIP_ViT_Tiny.pth"
    result = Conversion(model=tiny_student(), source=cached, source_format="unip", official_unip=True)
    card = conversion_card(result)
    assert card.data.base_model == "casiatao/UNIP" and card.data.license == "cc-by-nc-4.0"
    assert "from the file `UNIP_ViT_Tiny.pth` of [`casiatao/UNIP`](https://huggingface.co/casiatao/UNIP)" in card.text


def test_overwrite_never_clears_the_working_folder(tmp_path, monkeypatch, capsys):
    torch.save({"model": to_timm_layout(tiny_student())}, tmp_path / "ckpt.pth")
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit):
        cli_main(["convert", str(tmp_path / "ckpt.pth"), ".", "--num_heads", "2", "--overwrite"])
    assert "--overwrite would delete everything in ." in capsys.readouterr().err
    assert (work / "notes.txt").read_text() == "mine"


def test_push_needs_a_license_and_pushes_the_card(tmp_path, capsys, monkeypatch):
    torch.save({"model": to_timm_layout(tiny_student())}, tmp_path / "ckpt.pth")
    argv = ["convert", str(tmp_path / "ckpt.pth"), str(tmp_path / "out"), "--num_heads", "2", "--push_to_hub",
            "me/converted"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2 and "--push_to_hub of converted weights needs --license" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    calls = {}
    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", lambda self, **kw: calls.setdefault("create", kw))
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", lambda self, **kw: calls.setdefault("upload", kw))
    assert cli_main(argv + ["--license", "cc-by-4.0"]) == 0
    assert calls["create"]["repo_id"] == "me/converted" and calls["upload"]["repo_id"] == "me/converted"
    metadata, _ = card_metadata(tmp_path / "out")
    assert metadata["license"] == "cc-by-4.0"
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "modeling_unip.py"} <= set(files)


def test_to_timm_state_dict_is_the_inverse(pixels):
    source = tiny_student()
    assert to_timm_state_dict(source).keys() == to_timm_layout(source).keys()
    converted = convert_checkpoint_state(to_timm_state_dict(source))
    with torch.no_grad():
        torch.testing.assert_close(converted(pixels).last_hidden_state, source(pixels).last_hidden_state)


def convert_checkpoint_state(state):
    from unip_hf.conversion.checkpoint_reading import convert_timm_state_dict

    return convert_timm_state_dict(state, num_attention_heads=2, last_layer_num_attention_heads=4)
