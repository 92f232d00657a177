"""Tests of `unip pretrain-mae` (`unip_hf.pretraining.mae`): a transformers ViT-MAE pre-trained on real infrared
images with the NMI-HAD recipe's data and loop, saved so that `AutoModel` and the attention analysis / NMI-HAD teacher
take it, exact resume, and bad input."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import transformers as T

from unip_hf.pretraining.mae import run_mae_pretraining
from unip_hf.recipe_arguments import MaeArguments, PretrainDataArguments, PretrainingArguments
from unip_hf.training.checkpoints import list_checkpoints

from conftest import data_path

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # from conftest


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Eight real TNO infrared frames and one corrupt file."""
    source = data_path("infrared-pool", "tno")
    folder = tmp_path_factory.mktemp("mae_images")
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".bmp"))[:8]
    assert len(files) == 8
    for path in files:
        shutil.copy(path, folder / path.name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return folder


def make_args(images, output_dir, **overrides):
    mae = MaeArguments(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8,
                       decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2)
    data = PretrainDataArguments(train_data=[str(images)], image_size=32)
    train = PretrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=4,
                                 learning_rate=1e-3, warmup_steps=1, checkpointing_steps=2, seed=0, logging_steps=1)
    for key, value in overrides.items():
        target = next(part for part in (mae, data, train) if hasattr(part, key))
        setattr(target, key, value)
    return mae, data, train


def test_end_to_end_loads_as_vit_mae_teacher(images, tmp_path):
    result = run_mae_pretraining(*make_args(images, tmp_path / "run"))
    assert result.global_step == 4 and len(result.losses) == 4
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.images == 8 and result.skipped_images == 1  # the corrupt file counted, not fatal
    summary = json.loads((tmp_path / "run" / "pretraining_summary.json").read_text())
    assert summary["objective"] == "mae" and summary["steps"] == 4 and summary["mask_ratio"] == 0.75
    assert (tmp_path / "run" / "training_curves.png").is_file()
    encoder = T.AutoModel.from_pretrained(tmp_path / "run")
    assert type(encoder).__name__ == "ViTMAEModel"
    full = T.ViTMAEForPreTraining.from_pretrained(tmp_path / "run")
    for key, value in encoder.state_dict().items():  # AutoModel got the trained encoder, not a fresh one
        torch.testing.assert_close(value, full.vit.state_dict()[key])
    processor = T.AutoImageProcessor.from_pretrained(tmp_path / "run")
    assert processor.image_mean == pytest.approx([0.3801] * 3) and processor.size["height"] == 32

    from unip_hf.analysis.attention_analysis import analyze_attention
    from unip_hf.pretraining.distillation import AttentionTeacher

    report = analyze_attention(encoder, str(images), image_size=32, num_images=3, progress=False)
    assert len(report.nmi_mean) == 2 and all(0.0 <= v <= 1.0 for v in report.nmi_mean)
    teacher = AttentionTeacher.from_pretrained(str(tmp_path / "run"), "1")
    maps = teacher(torch.randn(2, 3, 32, 32), student_grid=(4, 4), log_probs=True).exp()
    assert maps.shape == (2, 2, 17, 17)  # heads, CLS + 16 patches: MAE's masking is off for the teacher
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 17))


def test_resume_equals_uninterrupted(images, tmp_path):
    straight = run_mae_pretraining(*make_args(images, tmp_path / "a"))

    def stop_at_two(step, logs):
        if step == 2:
            raise Interrupt()

    with pytest.raises(Interrupt):
        run_mae_pretraining(*make_args(images, tmp_path / "b"), on_step_end=stop_at_two)
    assert [p.rsplit("-", 1)[1] for p in list_checkpoints(str(tmp_path / "b"), complete_only=True)] == ["2"]
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    resumed = run_mae_pretraining(*make_args(images, tmp_path / "b", resume_from_checkpoint="latest"))
    # the random masks of steps 3-4 come from the restored generator: the same losses and weights
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    a = T.ViTMAEForPreTraining.from_pretrained(tmp_path / "a").state_dict()
    b = T.ViTMAEForPreTraining.from_pretrained(tmp_path / "b").state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"image_size": 36}, "--image_size 36 must be a multiple of --patch_size 8"),
    ({"train_data": []}, "--train_data is required"),
])
def test_bad_input_named(images, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_mae_pretraining(*make_args(images, tmp_path / "bad", **overrides))


def test_argument_checks():
    with pytest.raises(ValueError, match="--hidden_size 30 must be a multiple of --num_attention_heads 4"):
        MaeArguments(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="mask_ratio"):
        MaeArguments(mask_ratio=1.0)


def test_command_refuses_bad_size_before_loading(images, tmp_path):
    run = subprocess.run([sys.executable, "-m", "unip_hf.cli", "pretrain-mae", "--train_data", str(images),
                          "--image_size", "36", "--patch_size", "8", "--output_dir", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert "--image_size 36 must be a multiple of --patch_size 8" in run.stderr
