"""Tests of the NMI-HAD pre-training recipe (`unip_hf.pretraining.nmi_had.run_pretraining`, `recipes/pretrain.py`): the three
targets, outputs loadable with AutoModel, exact resume, two processes, patched Hub push and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

from unip_hf import UnipConfig, UnipViTModel
from unip_hf.pretraining.nmi_had import (
    DistillationArguments,
    PretrainDataArguments,
    PretrainingArguments,
    parse_pretraining_args,
    run_pretraining,
)
from unip_hf.training.checkpoints import list_checkpoints
from unip_hf.training.nan_guard import NonFiniteLossError

from conftest import data_path

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # from conftest


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    teacher = T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                                     image_size=32, patch_size=8, initializer_range=0.3), add_pooling_layer=False)
    teacher.save_pretrained(root / "teacher")
    student = UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, last_layer_num_attention_heads=4,
                         image_size=32, patch_size=8)
    student.to_json_file(str(root / "student.json"))
    rng = np.random.default_rng(0)
    (root / "images" / "sub").mkdir(parents=True)
    for i in range(16):
        folder = root / "images" / ("sub" if i % 2 else "")
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(folder / f"im{i}.png")
    return root


def make_args(assets, output_dir, **overrides):
    distill = DistillationArguments(teacher_name_or_path=str(assets / "teacher"), teacher_layer="1",
                                    student_config=str(assets / "student.json"), drop_path_rate=0.0)
    data = PretrainDataArguments(train_data=[str(assets / "images")], image_size=32)
    train = PretrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=4,
                                 learning_rate=1e-3, warmup_steps=1, checkpointing_steps=2, seed=0)
    for key, value in overrides.items():
        target = next(part for part in (distill, data, train) if hasattr(part, key))
        setattr(target, key, value)
    return distill, data, train


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def test_attention_target_end_to_end(assets, tmp_path):
    result = run_pretraining(*make_args(assets, tmp_path / "run"))
    out = tmp_path / "run"
    assert result.global_step == 4 and len(result.losses) == 4 and result.teacher_layer == 1
    assert all(np.isfinite(result.losses))
    model = T.AutoModel.from_pretrained(out)
    assert isinstance(model, UnipViTModel) and model.config.last_layer_num_attention_heads == 4
    processor = T.AutoImageProcessor.from_pretrained(out)
    assert type(processor).__name__ == "UnipImageProcessor"
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"]] == [1, 2, 3, 4]
    assert {"loss", "learning_rate", "images_per_second"} <= set(state["log_history"][0])
    card = (out / "README.md").read_text()
    assert "teacher" in card and str(assets / "teacher") in card and "final loss" in card
    assert f"{result.final_loss:.4f}" in card and "| teacher layer | 2 |" in card.replace("  ", " ")
    summary = json.loads((out / "pretraining_summary.json").read_text())
    assert summary["steps"] == 4 and summary["teacher_layer"] == 1
    assert [os.path.basename(p) for p in list_checkpoints(str(out))] == ["checkpoint-2", "checkpoint-4"]
    # the frozen parts (last block's MLP, final norm) were not touched; the rest was trained
    fresh = UnipViTModel(UnipConfig.from_json_file(str(assets / "student.json")))
    trained = weights(out)
    assert not torch.equal(trained["encoder.layer.1.attention.qkv.weight"],
                           fresh.state_dict()["encoder.layer.1.attention.qkv.weight"])


@pytest.mark.parametrize("feature_loss", ["cosine", "smooth_l1"])
def test_feature_target(assets, tmp_path, feature_loss):
    result = run_pretraining(*make_args(assets, tmp_path, distill_target="features", feature_loss=feature_loss,
                                        max_steps=2, checkpointing_steps=0))
    assert result.global_step == 2 and all(np.isfinite(result.losses))
    assert isinstance(T.AutoModel.from_pretrained(tmp_path), UnipViTModel)
    assert not any(k.startswith("projection") for k in weights(tmp_path))


def test_none_target_saves_initialised_student(assets, tmp_path):
    result = run_pretraining(*make_args(assets, tmp_path, distill_target="none", teacher_name_or_path=None,
                                        student_config=None, student_preset="unip-tiny"))
    assert result.global_step == 0 and result.losses == []
    model = T.AutoModel.from_pretrained(tmp_path)
    assert model.config.hidden_size == 192 and model.config.image_size == 32
    assert list_checkpoints(str(tmp_path)) == []
    assert json.loads((tmp_path / "pretraining_summary.json").read_text())["distill_target"] == "none"


class Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted(assets, tmp_path):
    straight = run_pretraining(*make_args(assets, tmp_path / "a", drop_path_rate=0.1))

    def stop_at_two(step, logs):
        if step == 2:
            raise Interrupt()

    with pytest.raises(Interrupt):
        run_pretraining(*make_args(assets, tmp_path / "b", drop_path_rate=0.1), on_step_end=stop_at_two)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    resumed = run_pretraining(*make_args(assets, tmp_path / "b", drop_path_rate=0.1, resume_from_checkpoint="latest"))
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


def _two_process_run(assets, output_dir):
    import faulthandler

    from accelerate.state import AcceleratorState, GradientState

    faulthandler.dump_traceback_later(240, exit=True)  # a hung child fails the test instead of blocking it

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.set_num_threads(1)
    run_pretraining(*make_args(assets, output_dir, per_device_train_batch_size=2, checkpointing_steps=2))


def test_two_processes_match_one(assets, tmp_path, monkeypatch):
    from accelerate import debug_launcher

    # forked children must not start OpenMP thread pools (accelerate sets 2 threads when OMP_NUM_THREADS is unset)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    single = run_pretraining(*make_args(assets, tmp_path / "one", checkpointing_steps=0))
    debug_launcher(_two_process_run, args=(assets, tmp_path / "two"), num_processes=2)
    two = json.loads((tmp_path / "two" / "trainer_state.json").read_text())
    assert [e["loss"] for e in two["log_history"]] == pytest.approx(single.losses, rel=1e-4)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key in a:  # AdamW normalises tiny gradients, so summation-order noise shows up at ~1e-5
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=3e-4)
    assert json.loads((tmp_path / "two" / "pretraining_summary.json").read_text())["total_batch_size"] == 4
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "two"))] == ["checkpoint-2", "checkpoint-4"]
    checkpoint = tmp_path / "two" / "checkpoint-4"
    assert sorted(p.name for p in checkpoint.glob("rng_state_*.json")) == ["rng_state_0.json", "rng_state_1.json"]
    assert not list(checkpoint.glob("*.pkl")) and not list(checkpoint.glob("*.bin"))  # pickle-free


def test_push_to_hub_patched(assets, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, **kw: calls.setdefault("create", kw))

    def fake_upload(self, **kw):
        from unip_hf.hub.upload import list_upload_files

        calls["upload"] = kw
        calls["files"] = list_upload_files(kw["folder_path"], kw.get("allow_patterns"), kw.get("ignore_patterns"))
        return "commit"

    monkeypatch.setattr(HfApi, "upload_folder", fake_upload)
    run_pretraining(*make_args(assets, tmp_path, max_steps=2, push_to_hub=True, hub_model_id="me/unip-test"))
    assert calls["create"]["repo_id"] == "me/unip-test"
    files = calls["files"]
    for name in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json", "modeling_unip.py",
                 "configuration_unip.py", "pretraining_summary.json"):
        assert name in files
    assert not any(f.startswith("checkpoint-") for f in files)
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-feature-extraction"
    assert "unip" in card.data.tags and "me/unip-test" in card.text
    assert "final loss" in card.text


def test_push_needs_repo_id(assets, tmp_path):
    with pytest.raises(ValueError, match="hub_model_id"):
        run_pretraining(*make_args(assets, tmp_path, max_steps=1, push_to_hub=True, checkpointing_steps=0))


def test_bad_input(assets, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable image"):
        run_pretraining(*make_args(assets, tmp_path / "o1", train_data=[str(tmp_path / "empty")]))
    with pytest.raises(ValueError, match="larger than the data set"):
        run_pretraining(*make_args(assets, tmp_path / "o2", per_device_train_batch_size=64))
    resnet = T.ResNetModel(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1]))
    resnet.save_pretrained(tmp_path / "resnet")
    with pytest.raises(ValueError, match="'resnet' model .* not a ViT-family vision model"):
        run_pretraining(*make_args(assets, tmp_path / "o3", teacher_name_or_path=str(tmp_path / "resnet")))
    bad_heads = UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    bad_heads.to_json_file(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="last_layer_num_attention_heads=4"):
        run_pretraining(*make_args(assets, tmp_path / "o4", student_config=str(tmp_path / "bad.json")))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(assets, tmp_path, monkeypatch):
    import unip_hf.pretraining.nmi_had as pretraining

    real = pretraining.nmi_had_loss
    count = {"n": 0}

    def poisoned(student, teacher):
        count["n"] += 1
        loss = real(student, teacher)
        return loss * float("nan") if count["n"] >= 3 else loss

    monkeypatch.setattr(pretraining, "nmi_had_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="checkpoint-2"):
        run_pretraining(*make_args(assets, tmp_path))
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["checkpoint-2"]
    assert not (tmp_path / "model.safetensors").exists()


def test_argument_parsing_and_paper_defaults(assets):
    distill, data, train = parse_pretraining_args(
        ["--teacher_name_or_path", str(assets / "teacher"), "--teacher_layer", "auto", "--train_data", "a", "b", "--max_steps", "5"])
    assert distill.teacher_layer == "auto" and data.train_data == ["a", "b"] and train.max_steps == 5
    assert (train.adam_beta1, train.adam_beta2, train.weight_decay) == (0.9, 0.95, 0.05)
    assert train.base_learning_rate == 1.5e-4 and train.learning_rate is None and train.lr_scheduler_type == "cosine"
    assert train.warmup_ratio == 0.05 and distill.drop_path_rate == 0.1 and data.crop_min_scale == 0.2
    assert (data.image_mean, data.image_std, data.image_size) == (0.3801, 0.1871, 224)


def test_recipe_script_on_real_images(assets, tmp_path):
    pool = data_path("infrared-pool")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, str(REPO / "recipes" / "pretrain.py"), "--teacher_name_or_path", str(assets / "teacher"),
               "--teacher_layer", "auto", "--teacher_layer_num_images", "4", "--student_config",
               str(assets / "student.json"), "--train_data", str(pool / "hit-uav"), "--image_size", "32",
               "--per_device_train_batch_size", "4", "--max_steps", "2", "--output_dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done: 2 steps" in done.stdout and "chosen by teacher_layer=auto" in done.stdout
    assert isinstance(T.AutoModel.from_pretrained(tmp_path), UnipViTModel)


def test_tensorboard_tracker(assets, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra (pip install 'unip-hf[tensorboard]')")
    run_pretraining(*make_args(assets, tmp_path, max_steps=2, checkpointing_steps=0, report_to="tensorboard"))
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file written"


def test_skipped_images_counts_files_not_events(assets, tmp_path):
    """A truncated image drawn in each of 3 epochs is one skipped image in the summary, not three."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(folder / f"im{i}.png")
    data = (folder / "im3.png").read_bytes()
    (folder / "im3.png").write_bytes(data[: len(data) // 3])  # header fine, pixels missing
    os.symlink(folder / "im0.png", folder / "same_as_im0.png")  # a second name: used once, not a skip
    result = run_pretraining(*make_args(assets, tmp_path / "run", train_data=[str(folder), str(folder / "im1.png")],
                                        max_steps=6, checkpointing_steps=0))
    summary = json.loads((tmp_path / "run" / "pretraining_summary.json").read_text())
    assert result.images == summary["images"] == 8 and summary["skipped_images"] == result.skipped_images == 1


def test_huge_learning_rate_never_leaves_a_non_finite_checkpoint(assets, tmp_path):
    # the issue's `--learning_rate 1000 --checkpointing_steps 1`: before the fix the run stopped at step 3 naming
    # checkpoint-2, whose weights / optimizer state were already non-finite (the loss was checked, not the state)
    from safetensors.torch import load_file

    with pytest.raises(NonFiniteLossError, match=r"checkpoint-\d") as error:
        run_pretraining(*make_args(assets, tmp_path, learning_rate=1000.0, checkpointing_steps=1, max_steps=8))
    checkpoints = list_checkpoints(str(tmp_path))
    assert checkpoints and checkpoints[-1] in str(error.value)
    for folder in checkpoints:
        for name in os.listdir(folder):
            if name.endswith(".safetensors"):
                for key, value in load_file(os.path.join(folder, name)).items():
                    assert not value.is_floating_point() or torch.isfinite(value).all(), f"{folder}/{name}: {key}"


def test_training_data_summary_says_each_count_once(assets, tmp_path, capsys):
    from conftest import reset_accelerate

    capsys.readouterr()
    run_pretraining(*make_args(assets, tmp_path / "one", max_steps=1, checkpointing_steps=0))
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("Training data:"))
    assert line == f"Training data: {assets / 'images'} (16 images)", line  # was "(16 images); 16 images"
    reset_accelerate()
    sources = [str(assets / "images" / "sub"), str(assets / "images" / "im0.png")]
    run_pretraining(*make_args(assets, tmp_path / "two", max_steps=1, checkpointing_steps=0, train_data=sources))
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("Training data:"))
    assert line == f"Training data: {sources[0]} (8 images); {sources[1]}; 9 images in all", line
