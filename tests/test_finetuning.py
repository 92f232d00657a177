"""Tests of UNIP fine-tuning (`unip_hf.training.finetuning`): layer-wise decay, both modes, sliding-window evaluation, metrics,
best-checkpoint keeping, exact resume, eval results and the patched push. Tiny configs (hidden 32, 2 blocks, patch 8,
32-64 px synthetic scenes)."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, parse_eval_result_entries
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from torch import nn

from unip_hf import UnipConfig, UnipForSemanticSegmentation
from unip_hf.data import write_synthetic_dataset
from unip_hf.evaluation.evaluator import SegmentationEvaluator
from unip_hf.training.finetuning import DataArguments, FinetuningArguments, ModelArguments, build_model, run_finetuning
from unip_hf.argument_checks import parse_img_scale
from unip_hf.data.finetuning_data import dataset_task, rescale_size
from unip_hf.evaluation.inference import predict_logits
from unip_hf.training.layer_decay import layer_decay_groups, layer_decay_scale, layer_id
from unip_hf.evaluation.metrics import compute_irstd, compute_mean_iou
from unip_hf.training.optimization import create_optimizer
from conftest import data_path, reset_accelerate

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "decoder_hidden_size": 16,
        "auxiliary_channels": 8, "out_indices": [0, 1, 1, 1]}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_synthetic_dataset(str(root), num_train=6, num_val=2, height=40, width=48, return_dataset=False)
    return str(root)


def arguments(data_dir, output_dir, mode="finetune", max_steps=2, **train):
    model = ModelArguments(model_name_or_path="none", preset="unip-tiny", patch_size=8, mode=mode,
                           config_overrides=json.dumps(TINY), drop_path_rate=0.1)
    data = DataArguments(dataset="folder", data_dir=data_dir, crop_size=32, img_scale="48x40",
                         cache_dir=os.path.join(os.path.dirname(output_dir), "cache"))
    defaults = {"output_dir": output_dir, "per_device_train_batch_size": 2, "max_steps": max_steps,
                "checkpointing_steps": 0, "learning_rate": 1e-3}
    return model, data, FinetuningArguments(**{**defaults, **train})


def run(data_dir, output_dir, **kwargs):
    reset_accelerate()
    return run_finetuning(*arguments(data_dir, str(output_dir), **kwargs))


def tiny_config(**overrides):
    return UnipConfig(image_size=32, patch_size=8, num_labels=3, **{**TINY, **overrides})


# ------------------------------------------------------------------------------------------------- layer decay
def test_layer_decay_multipliers_are_exact():
    model = UnipForSemanticSegmentation(tiny_config())
    decay, layers = 0.85, 2
    expected = {
        "unip.embeddings.cls_token": decay**3,
        "unip.embeddings.patch_embeddings.projection.weight": decay**3,
        "unip.embeddings.position_embeddings": decay**3,
        "unip.encoder.layer.0.attention.qkv.weight": decay**2,
        "unip.encoder.layer.1.mlp.fc2.bias": decay**1,
        "unip.layernorm.weight": 1.0,
        "neck.fpn1.0.weight": 1.0,
        "decode_head.classifier.weight": 1.0,
        "auxiliary_head.conv.0.weight": 1.0,
    }
    for name, value in expected.items():
        assert layer_decay_scale(name, layers, decay) == pytest.approx(value, abs=0, rel=1e-12), name
    assert layer_id("encoder.layer.1.norm1.weight", 2) == 2  # a bare UnipViTModel's names work too
    assert layer_id("embeddings.cls_token", 2) == 0

    groups = layer_decay_groups(model, weight_decay=0.05, decay=decay)
    by_name = {name: group for group in groups for name in group["names"]}
    assert by_name["unip.embeddings.patch_embeddings.projection.weight"]["lr_scale"] == pytest.approx(decay**3)
    assert by_name["unip.encoder.layer.0.attention.qkv.weight"]["weight_decay"] == 0.05
    for no_decay in ("unip.embeddings.cls_token", "unip.encoder.layer.0.norm1.weight",
                     "unip.encoder.layer.0.attention.qkv.bias", "decode_head.classifier.bias"):
        assert by_name[no_decay]["weight_decay"] == 0.0, no_decay
    assert "unip.embeddings.position_embeddings" not in by_name  # fixed sin-cos, not trained

    optimizer = create_optimizer(model, 1e-3, lr_scale_fn=lambda n: layer_decay_scale(n, layers, decay))
    assert sorted({round(g["lr"] / 1e-3, 10) for g in optimizer.param_groups}) == sorted(
        round(v, 10) for v in (decay**3, decay**2, decay, 1.0))


def test_img_scale_and_task_helpers():
    assert parse_img_scale(None, 512) == (2048, 512)
    assert parse_img_scale("320x256", 128) == (320, 256)
    with pytest.raises(ValueError, match="2048x512"):
        parse_img_scale("big", 128)
    assert rescale_size(640, 480, (512, 128)) == (128, 171)
    assert dataset_task("sirst") == "irstd" and dataset_task("IRSTD_1K") == "irstd"
    assert dataset_task("buffalo-udder") == "semantic" and dataset_task("folder", "irstd") == "irstd"


# ------------------------------------------------------------------------------------------------- modes
def test_build_model_modes_and_errors():
    labels = {0: "background", 1: "a", 2: "b"}
    args = ModelArguments(model_name_or_path="none", preset="unip-tiny", patch_size=8,
                          config_overrides=json.dumps(TINY), mode="linear_probe")
    probe = build_model(args, labels, 32)
    assert probe.config.decode_head == "linear_probe" and probe.config.num_labels == 3
    assert not any(p.requires_grad for p in probe.unip.parameters())
    assert all(p.requires_grad for p in probe.decode_head.parameters())
    args.mode, args.decode_head = "finetune", "multilevel_fpn"
    model = build_model(args, labels, 32)
    assert model.config.decode_head == "multilevel_fpn" and model.config.image_size == 32
    args.mode = "zero_shot"
    with pytest.raises(ValueError, match="--mode"):
        build_model(args, labels, 32)


def test_build_from_backbone_checkpoint_keeps_distilled_heads(tmp_path):
    from unip_hf import UnipViTModel

    backbone = UnipViTModel(tiny_config(last_layer_num_attention_heads=4))
    backbone.save_pretrained(tmp_path / "backbone")
    model = build_model(ModelArguments(model_name_or_path=str(tmp_path / "backbone")), {0: "bg", 1: "fg"}, 32)
    assert model.config.last_layer_num_attention_heads == 4 and model.config.num_labels == 2
    torch.testing.assert_close(model.unip.encoder.layer[1].attention.qkv.weight,
                               backbone.encoder.layer[1].attention.qkv.weight)
    # a segmentation checkpoint re-used for a linear probe of the same classes: the head is replaced
    model.save_pretrained(tmp_path / "segmenter")
    probe = build_model(ModelArguments(model_name_or_path=str(tmp_path / "segmenter"), mode="linear_probe"),
                        {0: "bg", 1: "fg"}, 32)
    assert probe.config.decode_head == "linear_probe" and probe.neck is None
    torch.testing.assert_close(probe.unip.encoder.layer[0].mlp.fc1.weight, backbone.encoder.layer[0].mlp.fc1.weight)


def test_linear_probe_trains_only_the_head(scenes, tmp_path):
    result = run(scenes, tmp_path / "probe", mode="linear_probe", max_steps=2)
    reset_accelerate()
    trained = UnipForSemanticSegmentation.from_pretrained(tmp_path / "probe")
    assert trained.config.decode_head == "linear_probe"
    # the backbone is still the (seeded) initialisation: rebuild it the same way and compare
    torch.manual_seed(0)
    from accelerate.utils import set_seed

    set_seed(0)
    fresh = build_model(arguments(scenes, str(tmp_path / "x"), mode="linear_probe")[0], trained.config.id2label, 32)
    torch.testing.assert_close(trained.unip.encoder.layer[0].mlp.fc1.weight, fresh.unip.encoder.layer[0].mlp.fc1.weight)
    assert not torch.equal(trained.decode_head.classifier.weight, fresh.decode_head.classifier.weight)
    results = json.loads((tmp_path / "probe" / "eval_results.json").read_text())["results"]
    assert results[0]["task"] == "linear-probe" and result.task == "semantic"



def backbone_checkpoint(path, **overrides):
    from unip_hf import UnipViTModel

    torch.manual_seed(0)
    UnipViTModel(tiny_config(**overrides)).save_pretrained(path)
    return str(path)


def test_finetuning_from_a_checkpoint_keeps_the_sincos_table_fixed(tmp_path):
    """Loaded with `from_pretrained`, the fixed table is no trainable parameter: not in the optimizer, unchanged after
    3 steps at the checkpoint's size; at another crop size every optimised parameter gets a gradient (what DDP
    needs)."""
    from unip_hf.training.finetuning import freeze_unused_backbone_parameters
    from unip_hf.models.modeling_unip import sincos_position_embedding

    source = backbone_checkpoint(tmp_path / "backbone")
    labels = {0: "bg", 1: "fg"}
    for crop in (32, 24):
        model = build_model(ModelArguments(model_name_or_path=source), labels, crop)
        freeze_unused_backbone_parameters(model)
        optimizer = create_optimizer(model, 1e-2, lr_scale_fn=lambda n: layer_decay_scale(n, 2, 0.85))
        optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
        table = model.unip.embeddings.position_embeddings
        assert id(table) not in optimised and not table.requires_grad
        for step in range(3):
            pixels = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(step))
            labels_map = torch.randint(0, 2, (2, crop, crop), generator=torch.Generator().manual_seed(step))
            optimizer.zero_grad()
            model(pixel_values=pixels, labels=labels_map).loss.backward()
            without_grad = [n for n, p in model.named_parameters() if id(p) in optimised and p.grad is None]
            assert not without_grad, without_grad
            optimizer.step()
        assert torch.equal(model.unip.embeddings.position_embeddings, sincos_position_embedding(32, 4, 4))


def test_linear_probe_reports_and_optimises_only_the_head(scenes, tmp_path, capsys):
    """From a checkpoint (whose loaded weights transformers makes trainable), the probe's backbone is frozen, absent
    from the optimizer and the printed count is the 1x1 head's."""
    source = backbone_checkpoint(tmp_path / "backbone")
    labels = {0: "bg", 1: "fg"}
    probe = build_model(ModelArguments(model_name_or_path=source, mode="linear_probe"), labels, 32)
    head = sum(p.numel() for p in probe.decode_head.parameters())
    assert head == 32 * 4 * 2 + 2  # four tapped maps of 32 channels -> 2 classes
    assert sum(p.numel() for p in probe.parameters() if p.requires_grad) == head
    optimizer = create_optimizer(probe, 1e-3)
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == head
    assert not any(name.startswith("unip.") for g in layer_decay_groups(probe, 0.05, 0.85) for name in g["names"])

    model, data, train = arguments(scenes, str(tmp_path / "probe"), mode="linear_probe")
    model.model_name_or_path, model.config_overrides = source, None
    reset_accelerate()
    capsys.readouterr()
    run_finetuning(model, data, train)
    printed = capsys.readouterr().out
    heads = sum(p.numel() for p in UnipForSemanticSegmentation.from_pretrained(tmp_path / "probe").decode_head.parameters())
    assert f"{heads:,} trainable parameters" in printed, printed
    assert "linear_probe (" in printed and "linear_probe linear_probe" not in printed, printed  # named once

# ------------------------------------------------------------------------------------------------- inference
def test_slide_with_one_window_equals_whole_image():
    model = UnipForSemanticSegmentation(tiny_config()).eval()
    pixels = torch.randn(1, 3, 32, 40)
    whole = predict_logits(model, pixels, "whole")
    slide = predict_logits(model, pixels, "slide", window=(32, 40), stride=(32, 40))
    assert whole.shape == (1, 3, 32, 40)
    torch.testing.assert_close(slide, whole)


class PixelwiseModel(nn.Module):
    """A translation-consistent segmenter (1x1 convolution): overlapping windows must reproduce the whole image."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"patch_size": 1})()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, pixel_values):
        return type("Out", (), {"logits": self.conv(pixel_values)})()


def test_slide_with_overlapping_windows_equals_whole_for_translation_consistent_model():
    model = PixelwiseModel()
    pixels = torch.randn(2, 3, 37, 53)
    whole = predict_logits(model, pixels, "whole")
    slide = predict_logits(model, pixels, "slide", window=16, stride=10)
    torch.testing.assert_close(slide, whole)
    smaller = predict_logits(model, torch.randn(1, 3, 9, 11), "slide", window=16)  # padded to the window, cropped
    assert smaller.shape == (1, 4, 9, 11)


def test_evaluator_matches_the_metric_functions():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 3, (2, 12, 12)))
    labels[0, :2] = 255
    logits = torch.randn(2, 3, 12, 12)
    semantic = SegmentationEvaluator("semantic", 3)
    semantic.add(logits[:1], labels[:1])
    semantic.add(logits[1:], labels[1:])
    expected = compute_mean_iou(list(logits.argmax(1).numpy()), list(labels.numpy()), num_labels=3)
    assert semantic.compute()["mean_iou"] == pytest.approx(expected["mean_iou"])

    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[0, 5:8, 5:8] = 1
    small = torch.full((1, 2, 32, 32), -5.0)
    small[0, 1, 5:8, 5:8] = 5.0  # detected
    small[0, 1, 20:23, 20:23] = 5.0  # false alarm
    irstd = SegmentationEvaluator("irstd", 2)
    irstd.add(small, target)
    probability = small.softmax(1)[:, 1].numpy()
    reference = compute_irstd(list(probability), list(target.numpy()))
    got = irstd.compute()
    for key in ("iou", "niou", "pd", "fa"):
        assert got[key] == pytest.approx(reference[key]), key
    assert got["pd"] == 1.0 and got["iou"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------- training runs
def test_finetune_writes_eval_results_best_model_and_card(scenes, tmp_path):
    out = tmp_path / "ft"
    result = run(scenes, out, max_steps=4, eval_steps=2, checkpointing_steps=2)
    assert result.global_step == 4 and [e["step"] for e in result.eval_history] == [2, 4]
    assert result.main_metric == "mean_iou" and result.task == "semantic"
    best = max(result.eval_history, key=lambda e: e["metrics"]["mean_iou"])
    assert result.best_step == best["step"]
    payload = json.loads((out / "eval_results.json").read_text())
    (entry,) = payload["results"]
    assert entry["dataset_id"] == "folder" and entry["dataset_split"] == "val"
    assert entry["task"] == "semantic-segmentation" and entry["notes"] == "whole image, single scale"
    assert entry["metrics"]["mean_iou"] == pytest.approx(best["metrics"]["mean_iou"])
    assert len(entry["metrics"]["per_category_iou"]) == 5
    yaml_files = sorted(p.name for p in (out / ".eval_results").iterdir())
    assert yaml_files == ["folder-val.yaml"]
    values = {e.task_id: e.value for e in parse_eval_result_entries(yaml.safe_load((out / ".eval_results" /
                                                                                    yaml_files[0]).read_text()))}
    assert values["mean_iou"] == pytest.approx(entry["metrics"]["mean_iou"])
    log = json.loads((out / "eval_log.json").read_text())
    assert log["best_step"] == result.best_step and len(log["history"]) == 2
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "modeling_unip.py", "README.md"):
        assert (out / name).is_file() and (out / "best_model" / name).is_file(), name
    processor = json.loads((out / "preprocessor_config.json").read_text())
    # the evaluation protocol: --img_scale 48x40 keeping the aspect ratio, padding to the patch size 8
    assert processor["img_scale"] == [48, 40] and processor["size_divisor"] == 8 and processor["do_resize"]
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-segmentation" and "infrared" in card.data.tags
    assert {r.metric_type for r in card.data.eval_results} >= {"mean_iou"}
    assert "Protocol: folder val: whole image, single scale" in card.content  # what the pipeline reproduces
    assert "runs whole-image" in card.content
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-4"]


class Interrupted(RuntimeError):
    pass


def test_resume_reproduces_an_uninterrupted_run(scenes, tmp_path):
    full = run(scenes, tmp_path / "full", max_steps=4, checkpointing_steps=2)

    def stop_at_2(step, logs):
        if step == 2:
            raise Interrupted("killed after step 2")

    model, data, train = arguments(scenes, str(tmp_path / "half"), max_steps=4, checkpointing_steps=2)
    reset_accelerate()
    with pytest.raises(Interrupted):
        run_finetuning(model, data, train, on_step_end=stop_at_2)
    assert (tmp_path / "half" / "checkpoint-2").is_dir() and not (tmp_path / "half" / "model.safetensors").exists()
    train.resume_from_checkpoint = "latest"
    reset_accelerate()
    resumed = run_finetuning(model, data, train)
    assert resumed.resumed_from.endswith("checkpoint-2") and resumed.global_step == 4
    a = UnipForSemanticSegmentation.from_pretrained(tmp_path / "full").state_dict()
    b = UnipForSemanticSegmentation.from_pretrained(tmp_path / "half").state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert full.metrics["mean_iou"] == pytest.approx(resumed.metrics["mean_iou"])
    def losses(folder):
        return [e["loss"] for e in json.loads((folder / "trainer_state.json").read_text())["log_history"]]

    assert losses(tmp_path / "half") == pytest.approx(losses(tmp_path / "full"))


@pytest.fixture
def patched_api(monkeypatch):
    calls = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        root = os.fspath(folder_path)
        files = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                       for d, _, names in os.walk(root) for f in names)
        ignore = list(kwargs.get("ignore_patterns") or []) + list(DEFAULT_IGNORE_PATTERNS)
        allow = kwargs.get("allow_patterns")
        committed = sorted(filter_repo_objects(files, allow_patterns=allow, ignore_patterns=ignore))
        calls["upload_folder"].append({"repo_id": repo_id, "files": committed, **kwargs})
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_commits_model_processor_code_card_and_results(scenes, tmp_path, patched_api):
    out = tmp_path / "push"
    run(scenes, out, max_steps=2, checkpointing_steps=2, push_to_hub=True, hub_model_id="someone/unip-demo")
    assert patched_api["create_repo"][0]["repo_id"] == "someone/unip-demo"
    (upload,) = patched_api["upload_folder"]
    curves = ["training_curves.png"] if importlib.util.find_spec("matplotlib") else []  # the plots extra
    assert upload["files"] == sorted([
        ".eval_results/folder-val.yaml",
        "README.md",
        "config.json",
        "configuration_unip.py",
        "eval_log.json",
        "eval_results.json",
        "image_processing_unip.py",
        "infrared_decoding.py",
        "losses.py",
        "model.safetensors",
        "modeling_unip.py",
        "modeling_unip_segmentation.py",
        "modeling_unip_small_target.py",
        "preprocessor_config.json",
        "trainer_state.json",
        *curves,
    ])
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-segmentation"
    assert {"infrared", "thermal", "unip"} <= set(card.data.tags)
    metrics = json.loads((out / "eval_results.json").read_text())["results"][0]["metrics"]
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["mean_iou"] == pytest.approx(
        metrics["mean_iou"])
    assert "someone/unip-demo" in card.content


def test_push_without_repo_id_is_an_error(scenes, tmp_path, patched_api):
    with pytest.raises(ValueError, match="hub_model_id"):
        run(scenes, tmp_path / "nopush", max_steps=1, push_to_hub=True)
    assert patched_api["upload_folder"] == []


def test_bad_inputs_name_the_problem(scenes, tmp_path):
    model, data, train = arguments(scenes, str(tmp_path / "a"))
    data.eval_mode = "tiles"
    reset_accelerate()
    with pytest.raises(ValueError, match="eval_mode"):
        run_finetuning(model, data, train)
    model, data, train = arguments(scenes, str(tmp_path / "b"))
    train.per_device_train_batch_size = 64
    reset_accelerate()
    with pytest.raises(ValueError, match="larger than the training split"):
        run_finetuning(model, data, train)
    model, data, train = arguments(str(tmp_path / "missing"), str(tmp_path / "c"))
    reset_accelerate()
    with pytest.raises(FileNotFoundError, match="missing"):
        run_finetuning(model, data, train)


# ------------------------------------------------------------------------------------------------- saved protocol
def write_real_binary_set(root, source):
    """A `folder` layout from real frames: 4 buffalo-udder training frames (640x480) and two validation images of
    other sizes and aspect ratios (a 640x480 frame, a 338x222 SIRST image); masks 0/255 become 0/1."""
    from PIL import Image

    buffalo, sirst = source("buffalo-udder"), source("sirst")
    frames = {"train": sorted((buffalo / "images" / "train").iterdir())[:4],
              "val": sorted((buffalo / "images" / "val").iterdir())[:1]}
    pairs = [(split, path, buffalo / "masks" / split / path.name) for split, paths in frames.items() for path in paths]
    pairs.append(("val", sirst / "images" / "Misc_242.png", sirst / "masks" / "Misc_242_pixels0.png"))
    for split, image, mask in pairs:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        name = image.stem + ".png"
        Image.open(image).save(root / "images" / split / name)
        Image.fromarray((np.asarray(Image.open(mask).convert("L")) > 127).astype(np.uint8)).save(
            root / "masks" / split / name)
    (root / "classes.json").write_text(json.dumps({"classes": ["background", "target"]}))


def pipeline_label_map(segments, label2id, size):
    label_map = np.full(size, -1, dtype=np.int64)
    for segment in segments:
        label_map[np.asarray(segment["mask"]) > 0] = label2id[segment["label"]]
    assert (label_map >= 0).all()
    return label_map


def test_saved_processor_reproduces_the_evaluated_predictions(tmp_path):
    """`pipeline("image-segmentation")` on the saved model predicts, pixel for pixel, what the evaluation measured
    (`recipes/eval_segmentation.py`'s path: `EvalSegmentationDataset` + `predict_logits` at the label size), for real images
    whose size and aspect ratio differ from the training crops, from each other, and from the patch grid."""
    from transformers import pipeline

    from unip_hf.data import load_segmentation_dataset
    from unip_hf.evaluation.evaluator import EvaluationArguments, run_evaluation
    from unip_hf.data.finetuning_data import EvalSegmentationDataset
    from unip_hf.models.image_processing_unip import UnipImageProcessor

    data_dir = tmp_path / "data"
    write_real_binary_set(data_dir, data_path)
    img_scale = "60x44"  # 640x480 -> 59x44 and 338x222 -> 60x39: not a multiple of the patch size 8
    model_args, data_args, train_args = arguments(str(data_dir), str(tmp_path / "out"), max_steps=2)
    data_args.img_scale = img_scale
    reset_accelerate()
    run_finetuning(model_args, data_args, train_args)
    out = tmp_path / "out"

    processor = UnipImageProcessor.from_pretrained(out)
    assert processor.img_scale == [60, 44] and processor.size_divisor == 8 and processor.do_resize

    model = UnipForSemanticSegmentation.from_pretrained(out).eval()
    split = load_segmentation_dataset("folder", str(data_dir), "val", cache_dir=str(tmp_path / "cache"))
    eval_set = EvalSegmentationDataset(split, parse_img_scale(img_scale, 32), model.config.num_channels)
    # two steps leave the tiny model predicting background everywhere, which any protocol reproduces: move the target
    # class's bias to the median margin of the first image (saved back), so that both classes are predicted
    logits = predict_logits(model, eval_set[0]["pixel_values"][None])[0]
    with torch.no_grad():
        model.decode_head.classifier.bias[1] += (logits[0] - logits[1]).median()
    model.save_pretrained(out)
    segmenter = pipeline("image-segmentation", model=str(out))
    infrared = pipeline("infrared-image-segmentation", model=str(out))  # the 16-bit-preserving variant: same masks
    predictions = []
    for index in range(len(eval_set)):
        sample = eval_set[index]
        labels = sample["labels"]
        expected = predict_logits(model, sample["pixel_values"][None], output_size=labels.shape).argmax(1)[0]
        path = data_dir / "images" / "val" / f"{sample['id']}.png"
        got = pipeline_label_map(segmenter(str(path)), model.config.label2id, tuple(labels.shape))
        np.testing.assert_array_equal(got, expected.numpy(), err_msg=str(path))
        np.testing.assert_array_equal(pipeline_label_map(infrared(str(path)), model.config.label2id, got.shape), got)
        predictions.append((got, labels.numpy()))
    assert any(len(np.unique(got)) > 1 for got, _ in predictions)  # the comparison is not trivially constant

    # and the metrics `recipes/eval_segmentation.py` reports are those of the pipeline's masks
    reset_accelerate()
    result = run_evaluation(EvaluationArguments(model_name_or_path=str(out), dataset="folder", data_dir=str(data_dir),
                                                img_scale=img_scale, cache_dir=str(tmp_path / "cache"),
                                                output_dir=str(tmp_path / "eval")))
    reference = compute_mean_iou([got for got, _ in predictions], [label for _, label in predictions], num_labels=2,
                                 ignore_index=255)
    assert result["metrics"]["mean_iou"] == pytest.approx(reference["mean_iou"], abs=1e-12)
