"""Tests of `unip demo` (UNIP, Zhang et al., ICLR 2025): the command is registered, a very short run on synthetic scenes
trains, evaluates, saves, reloads through `pipeline("image-segmentation")` and writes the overlay PNG; the overlay
drawing; argument errors. The default run (about two minutes) is what users start; here it is a few steps."""

import json

import numpy as np
import pytest
from PIL import Image

from unip_hf.cli import build_parser
from unip_hf.studies.demo import overlay_panels, run_demo
from conftest import reset_accelerate


def test_demo_is_a_cli_command():
    args = build_parser().parse_args(["demo", "--out", "x", "--max_steps", "3"])
    assert args.command == "demo" and args.out == "x" and args.max_steps == 3 and args.dataset is None
    assert build_parser().parse_args(["demo"]).max_steps == 120  # about a minute on 2 shared cores (issue 22)


def test_short_demo_end_to_end(tmp_path, capsys):
    reset_accelerate()
    result = run_demo(out=str(tmp_path / "demo"), max_steps=3, num_train=8, num_val=2, batch_size=4)
    printed = capsys.readouterr().out
    assert "chance level" in printed and "mean_iou on synthetic val" in printed
    assert result.main_metric == "mean_iou" and 0.0 <= result.metrics["mean_iou"] <= 1.0
    assert 0.0 < result.chance["chance"] < 1.0 and result.chance["chance"] == max(result.chance["majority"],
                                                                                 result.chance["random"])
    overlay = Image.open(result.overlay_path)
    assert overlay.mode == "RGB" and overlay.size[0] > 3 * 128  # three panels, magnified
    assert result.pipeline_labels and set(result.pipeline_labels) <= {"background", "person", "vehicle", "animal",
                                                                      "hot_target"}
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert summary["steps"] == 3 and summary["dataset"] == "synthetic"
    # saved as it goes (issue 22): an evaluation and a checkpoint half-way, not only at the end
    assert "every 1 steps an evaluation and a checkpoint" in printed
    assert (tmp_path / "demo" / "model" / "checkpoint-1").is_dir()
    assert len(json.loads((tmp_path / "demo" / "model" / "eval_log.json").read_text())["history"]) == 3
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "modeling_unip.py",
                 "eval_results.json", "README.md"):
        assert (tmp_path / "demo" / "model" / name).is_file(), name


def test_overlay_colours_only_labelled_pixels():
    image = Image.fromarray(np.full((4, 6), 100, np.uint8))
    prediction = np.zeros((4, 6), np.int64)
    prediction[1, 2] = 1
    canvas = overlay_panels(image, prediction, {0: "background", 1: "thing"}, [(0, 0, 0), (255, 0, 0)], alpha=1.0)
    panel = np.asarray(canvas)[22:26, 8 + 6 + 8: 8 + 6 + 8 + 6]  # second panel (no ground truth given)
    assert tuple(panel[1, 2]) == (255, 0, 0) and tuple(panel[0, 0]) == (100, 100, 100)


def test_demo_needs_both_dataset_and_data_dir(tmp_path):
    with pytest.raises(ValueError, match="both --dataset and --data_dir"):
        run_demo(out=str(tmp_path), dataset="sirst")
