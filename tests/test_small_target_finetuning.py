"""Fine-tuning the small-target model (issue 11): `--architecture auto` picks `UnipForSmallTargetSegmentation` for
SIRST (the old segmentation model stays available with `--architecture semantic`), evaluation at full resolution
with the Pd-Fa curve in eval_results.json and a PNG, and `--distill_from` end to end on tiny real data."""

import json
import os
import shutil

import pytest
import torch

from unip_hf import UnipForSemanticSegmentation, UnipForSmallTargetSegmentation
from unip_hf.evaluation.evaluator import EvaluationArguments, run_evaluation
from unip_hf.training.finetuning import (
    DataArguments,
    FinetuningArguments,
    ModelArguments,
    build_model,
    resolve_architecture,
    run_finetuning,
)
from unip_hf.training.small_target_distillation import SmallTargetDistiller, target_logits_of
from conftest import data_path, reset_accelerate

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "detail_channels": [4, 8]}
TRAIN, VAL = ["Misc_1", "Misc_2", "Misc_3", "Misc_4"], ["Misc_5", "Misc_6"]


@pytest.fixture(scope="module")
def mini_sirst(tmp_path_factory):
    """Six real SIRST images in the SIRST layout (4 train, 2 val)."""
    source = data_path("sirst")
    root = tmp_path_factory.mktemp("sirst")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for name in TRAIN + VAL:
        shutil.copy(source / "images" / f"{name}.png", root / "images")
        shutil.copy(source / "masks" / f"{name}_pixels0.png", root / "masks")
    (root / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "val.txt").write_text("\n".join(VAL) + "\n")
    (root / "test.txt").write_text("\n".join(VAL) + "\n")
    return str(root)


def arguments(data_dir, output_dir, architecture="auto", **model):
    model_args = ModelArguments(model_name_or_path="none", preset="unip-tiny", patch_size=8, architecture=architecture,
                                config_overrides=json.dumps(TINY if architecture != "semantic" else
                                                            {"hidden_size": 32, "num_hidden_layers": 2,
                                                             "num_attention_heads": 2, "decoder_hidden_size": 16,
                                                             "auxiliary_channels": 8}), **model)
    data_args = DataArguments(dataset="sirst", data_dir=data_dir, crop_size=32, img_scale="320x256",
                              cache_dir=os.path.join(os.path.dirname(output_dir), "cache"))
    train_args = FinetuningArguments(output_dir=output_dir, per_device_train_batch_size=2, max_steps=2,
                                     checkpointing_steps=0, learning_rate=1e-3, layer_decay=1.0)
    return model_args, data_args, train_args


def test_architecture_choice():
    assert resolve_architecture(ModelArguments(), "irstd") == "small_target"
    assert resolve_architecture(ModelArguments(), "semantic") == "semantic"
    assert resolve_architecture(ModelArguments(architecture="semantic"), "irstd") == "semantic"
    assert resolve_architecture(ModelArguments(mode="linear_probe"), "irstd") == "semantic"  # the probe's 1x1 head
    with pytest.raises(ValueError, match="linear_probe"):
        resolve_architecture(ModelArguments(mode="linear_probe", architecture="small_target"), "irstd")
    labels = {0: "background", 1: "target"}
    args = ModelArguments(preset="unip-tiny", patch_size=8, config_overrides=json.dumps(TINY))
    assert isinstance(build_model(args, labels, 32, "irstd"), UnipForSmallTargetSegmentation)
    semantic = ModelArguments(preset="unip-tiny", patch_size=8, architecture="semantic",
                              config_overrides=json.dumps({"num_hidden_layers": 2}))
    assert isinstance(build_model(semantic, labels, 32, "irstd"), UnipForSemanticSegmentation)
    with pytest.raises(ValueError, match="binary"):
        build_model(args, {0: "a", 1: "b", 2: "c"}, 32, "irstd")
    with pytest.raises(ValueError, match="architecture"):
        ModelArguments(architecture="unet")


def test_finetune_small_target_full_resolution_curve_and_distillation(mini_sirst, tmp_path):
    reset_accelerate()
    teacher_dir = str(tmp_path / "teacher")
    result = run_finetuning(*arguments(mini_sirst, teacher_dir))
    assert result.task == "irstd" and result.global_step == 2
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert config["model_type"] == "unip_small_target"
    # evaluated at each image's full resolution: the saved processor does not resize, it pads to the patch size
    processor = json.loads((tmp_path / "teacher" / "preprocessor_config.json").read_text())
    assert not processor["do_resize"] and processor["size_divisor"] == 8
    (entry,) = json.loads((tmp_path / "teacher" / "eval_results.json").read_text())["results"]
    curve = entry["metrics"]["pd_fa_curve"]
    assert len(curve["thresholds"]) == len(curve["pd"]) == len(curve["fa"]) >= 5
    assert curve["pd"][curve["thresholds"].index(0.5)] == entry["metrics"]["pd"]
    assert (tmp_path / "teacher" / "pd_fa_curve.png").is_file()
    # recipes/eval_segmentation.py scores the saved model at full resolution by default, as fine-tuning did
    reset_accelerate()
    evaluated = run_evaluation(EvaluationArguments(model_name_or_path=teacher_dir, dataset="sirst", data_dir=mini_sirst,
                                                   split="val", output_dir=str(tmp_path / "eval")))
    for key in ("iou", "niou", "pd", "fa"):
        assert evaluated["metrics"][key] == pytest.approx(entry["metrics"][key]), key
    assert (tmp_path / "eval" / "pd_fa_curve.png").is_file()

    # distillation from the fine-tuned teacher, logits and attention maps
    reset_accelerate()
    student_args = arguments(mini_sirst, str(tmp_path / "student"), distill_from=teacher_dir, distill_weight=1.0,
                             distill_temperature=2.0, distill_feature_weight=1.0)
    losses = []
    run_finetuning(*student_args, on_step_end=lambda step, logs: losses.append(logs["loss"]))
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert (tmp_path / "student" / "eval_results.json").is_file()

    # the distillation terms are added to the labels loss (and vanish against itself as teacher)
    distiller = SmallTargetDistiller.from_arguments(student_args[0])
    student = UnipForSmallTargetSegmentation.from_pretrained(teacher_dir).eval()
    pixels = torch.randn(2, 3, 32, 32)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    with torch.no_grad():
        own = float(student(pixels, labels=labels).loss)
        assert float(distiller.loss(student, pixels, labels)) == pytest.approx(own, abs=1e-5)
        assert target_logits_of(student(pixels)).shape == (2, 1, 32, 32)
        fresh = UnipForSmallTargetSegmentation(student.config).eval()
        assert float(distiller.loss(fresh, pixels, labels)) > float(fresh(pixels, labels=labels).loss)


def test_distill_feature_weight_needs_a_small_target_teacher(tmp_path):
    semantic = UnipForSemanticSegmentation(UnipForSemanticSegmentation.config_class(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32, num_labels=2,
        decoder_hidden_size=16, auxiliary_channels=8))
    with pytest.raises(ValueError, match="small-target teacher"):
        SmallTargetDistiller(semantic, feature_weight=1.0)
    distiller = SmallTargetDistiller(semantic)  # logits of any 2-class model
    assert target_logits_of(distiller.teacher(torch.randn(1, 3, 32, 32))).shape[1] == 1
