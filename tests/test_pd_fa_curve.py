"""The Pd-Fa curve of the small-target metrics (issue 11): points against hand-computed values, the evaluator's
curve (summed like the other counters, consistent with Pd / Fa at 0.5) and the PNG."""

import numpy as np
import pytest
import torch

from unip_hf.evaluation.evaluator import SegmentationEvaluator
from unip_hf.hub.results import BenchmarkResult
from unip_hf.evaluation.metrics import pd_fa_curve, save_pd_fa_plot
from unip_hf.evaluation.model_saving import PD_FA_PLOT_NAME, write_pd_fa_plot


def hand_made_images():
    # image 1 (10x10): a 1-px target at (2, 2) scored 0.9, a 2x2 target at rows/cols 6-7 scored 0.4, a false alarm
    # at (0, 9) scored 0.7; image 2 (10x10): no target, a 3-px blob scored 0.6
    reference_1 = np.zeros((10, 10), dtype=np.uint8)
    reference_1[2, 2] = 1
    reference_1[6:8, 6:8] = 1
    probability_1 = np.zeros((10, 10))
    probability_1[2, 2] = 0.9
    probability_1[6:8, 6:8] = 0.4
    probability_1[0, 9] = 0.7
    reference_2 = np.zeros((10, 10), dtype=np.uint8)
    probability_2 = np.zeros((10, 10))
    probability_2[5, 1:4] = 0.6
    return [probability_1, probability_2], [reference_1, reference_2]


def test_curve_points_by_hand():
    probabilities, references = hand_made_images()
    curve = pd_fa_curve(probabilities, references, thresholds=[0.8, 0.3, 0.5])
    assert curve["thresholds"] == [0.3, 0.5, 0.8]
    # 0.3: both targets found; false alarms (0, 9) and the blob: 4 px of 200
    # 0.5: the 2x2 target is lost; same false alarms
    # 0.8: only the 1-px target; no false alarm
    assert curve["pd"] == [1.0, 0.5, 0.5]
    assert curve["fa"] == pytest.approx([4 / 200 * 1e6, 4 / 200 * 1e6, 0.0])
    # IoU over both images: 0.3: 5 / (5 + 1 + 3); 0.5: 1 / (5 + 1 + 3); 0.8: 1 / 5
    assert curve["iou"] == pytest.approx([5 / 9, 1 / 9, 1 / 5])


def test_evaluator_reports_the_curve_consistent_with_the_threshold():
    probabilities, references = hand_made_images()
    evaluator = SegmentationEvaluator("irstd", 2, curve_thresholds=[0.3, 0.5, 0.8])
    for probability, reference in zip(probabilities, references):
        p = torch.from_numpy(probability).float().clamp(1e-6, 1 - 1e-6)
        logits = torch.stack([torch.zeros_like(p), torch.logit(p)])[None]  # softmax target probability = p
        evaluator.add(logits, torch.from_numpy(reference.astype(np.int64))[None])
    metrics = evaluator.compute()
    curve = metrics["pd_fa_curve"]
    at_half = curve["thresholds"].index(0.5)
    assert curve["pd"][at_half] == metrics["pd"] == 0.5
    assert curve["fa"][at_half] == pytest.approx(metrics["fa"])
    assert curve["pd"] == [1.0, 0.5, 0.5]
    without = SegmentationEvaluator("irstd", 2, curve_thresholds=())
    without.add(torch.zeros(1, 2, 10, 10), torch.from_numpy(references[0].astype(np.int64))[None])
    assert "pd_fa_curve" not in without.compute() and without.compute()["pd"] == 0.0
    with pytest.raises(ValueError, match="thresholds"):
        SegmentationEvaluator("irstd", 2, curve_thresholds=[1.5])


def test_plot_written_beside_the_results(tmp_path):
    probabilities, references = hand_made_images()
    curve = pd_fa_curve(probabilities, references)
    result = BenchmarkResult(dataset_id="sirst", dataset_split="val", task="irstd",
                             metrics={"iou": 0.5, "pd_fa_curve": curve})
    written = write_pd_fa_plot(str(tmp_path), [result])
    assert written == [str(tmp_path / PD_FA_PLOT_NAME)]
    assert (tmp_path / PD_FA_PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no curve, no plot
    assert write_pd_fa_plot(str(tmp_path / "none"), [BenchmarkResult(dataset_id="x", metrics={"iou": 0.1})]) == []
    assert save_pd_fa_plot({"a": curve}, str(tmp_path / "direct.png")) == str(tmp_path / "direct.png")
