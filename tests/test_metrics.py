"""Tests of the UNIP metrics: the `mean_iou` and `irstd` evaluate modules and their plain functions."""

import json
import os

import numpy as np
import pytest
import torch

import evaluate

from unip_hf.evaluation.metrics import (
    compute_irstd,
    compute_mean_iou,
    confusion_matrix,
    image_statistics,
    load_metric,
    match_targets,
    metric_path,
    to_builtin,
)

# The stock `mean_iou` metric card's example (inputs and printed outputs).
STOCK_PREDICTIONS = [
    np.array([[1, 2], [3, 4], [5, 255]]),
    np.array([[2, 7], [9, 2], [3, 6]]),
    np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]]),
]
STOCK_REFERENCES = [
    np.array([[0, 3], [5, 4], [6, 255]]),
    np.array([[1, 7], [9, 2], [3, 6]]),
    np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]]),
]
STOCK_RESULTS = {
    "mean_iou": 0.47750000000000004,
    "mean_accuracy": 0.5916666666666666,
    "overall_accuracy": 0.5263157894736842,
    "per_category_iou": [0.0, 0.0, 0.375, 0.4, 0.5, 0.0, 0.5, 1.0, 1.0, 1.0],
    "per_category_accuracy": [0.0, 0.0, 0.75, 2 / 3, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0],
}


def assert_stock(results):
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert results[key] == pytest.approx(STOCK_RESULTS[key], abs=1e-12), key
    for key in ("per_category_iou", "per_category_accuracy"):
        np.testing.assert_allclose(results[key], STOCK_RESULTS[key], atol=1e-12, err_msg=key)


# --------------------------------------------------------------------------------------- mean IoU
def test_offline_and_loaded_by_path():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    metric = evaluate.load(metric_path("mean_iou"))
    assert isinstance(metric, evaluate.Metric)
    assert metric.name == "mean_iou"
    assert load_metric("irstd").name == "irstd"
    with pytest.raises(ValueError):
        metric_path("accuracy")


def test_mean_iou_stock_example_one_shot():
    metric = load_metric("mean_iou")
    results = metric.compute(
        predictions=STOCK_PREDICTIONS, references=STOCK_REFERENCES, num_labels=10, ignore_index=255, reduce_labels=False
    )
    assert_stock(results)
    assert_stock(compute_mean_iou(STOCK_PREDICTIONS, STOCK_REFERENCES, num_labels=10))


def test_mean_iou_stock_example_streaming():
    metric = evaluate.load(metric_path("mean_iou"), num_labels=10)
    for prediction, reference in zip(STOCK_PREDICTIONS, STOCK_REFERENCES):
        metric.add_batch(predictions=[prediction], references=[reference])
    assert len(metric) == 3
    assert_stock(metric.compute())
    # compute() resets the state; add() works one image at a time.
    for prediction, reference in zip(STOCK_PREDICTIONS, STOCK_REFERENCES):
        metric.add(prediction=prediction, reference=reference)
    assert_stock(metric.compute())


def test_mean_iou_hand_computed_background_counts():
    prediction = np.array([[0, 1], [1, 1]])
    reference = np.array([[0, 1], [0, 1]])
    results = load_metric("mean_iou", num_labels=2).compute(predictions=[prediction], references=[reference])
    # background: intersection 1, union 2; class 1: intersection 2, union 3.
    np.testing.assert_allclose(results["per_category_iou"], [1 / 2, 2 / 3])
    np.testing.assert_allclose(results["per_category_accuracy"], [1 / 2, 1.0])
    assert results["mean_iou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert results["mean_accuracy"] == pytest.approx(0.75)
    assert results["overall_accuracy"] == pytest.approx(3 / 4)


def test_mean_iou_ignore_index_and_reduce_labels():
    prediction = np.array([[0, 1], [1, 0]])
    reference = np.array([[0, 255], [1, 255]])
    # The two ignored pixels do not count, whatever was predicted there.
    results = compute_mean_iou([prediction], [reference], num_labels=2)
    assert results["mean_iou"] == pytest.approx(1.0)
    assert results["overall_accuracy"] == pytest.approx(1.0)
    # Another ignore index.
    results = compute_mean_iou([prediction], [np.array([[0, 7], [1, 7]])], num_labels=2, ignore_index=7)
    assert results["mean_iou"] == pytest.approx(1.0)
    # reduce_labels: 0 -> ignored, 1 -> 0, 2 -> 1, 255 stays ignored.
    reference = np.array([[1, 2], [0, 255]])
    results = load_metric("mean_iou", num_labels=2, reduce_labels=True).compute(
        predictions=[np.array([[0, 1], [1, 1]])], references=[reference]
    )
    assert results["mean_iou"] == pytest.approx(1.0)
    assert results["overall_accuracy"] == pytest.approx(1.0)
    # Out-of-range predictions count as wrong for the labelled class.
    results = compute_mean_iou([np.array([[0, 9]])], [np.array([[0, 1]])], num_labels=2)
    np.testing.assert_allclose(results["per_category_iou"], [1.0, 0.0])
    assert results["overall_accuracy"] == pytest.approx(0.5)


def test_mean_iou_memory_independent_of_number_of_images():
    rng = np.random.default_rng(0)
    metric = load_metric("mean_iou", num_labels=4)
    predictions, references, sizes = [], [], []
    for _ in range(40):
        prediction = rng.integers(0, 4, size=(2, 32, 32))
        reference = rng.integers(0, 4, size=(2, 32, 32))
        reference[:, :3] = 255
        metric.add_batch(predictions=prediction, references=reference)
        predictions.extend(prediction)
        references.extend(reference)
        sizes.append(metric.confusion_matrix.nbytes)
        assert metric.writer is None and metric.cache_file_name is None  # nothing goes to the Arrow cache
    assert set(sizes) == {5 * 5 * 8}
    assert len(metric) == 80
    streamed = metric.compute()
    expected = compute_mean_iou(predictions, references, num_labels=4)
    np.testing.assert_allclose(streamed["per_category_iou"], expected["per_category_iou"])
    assert streamed["mean_iou"] == pytest.approx(expected["mean_iou"])
    assert metric.confusion_matrix is None and len(metric) == 0


def test_mean_iou_confusion_matrix_layout_and_torch_input():
    matrix = confusion_matrix(np.array([[0, 1, 5]]), np.array([[1, 1, 0]]), num_labels=2)
    # rows = labels, columns = predictions, last index = ids outside [0, 2)
    np.testing.assert_array_equal(matrix, [[0, 0, 1], [1, 1, 0], [0, 0, 0]])
    metric = load_metric("mean_iou", num_labels=10)
    metric.add_batch(
        predictions=[torch.as_tensor(p) for p in STOCK_PREDICTIONS],
        references=[torch.as_tensor(r) for r in STOCK_REFERENCES],
    )
    assert_stock(metric.compute())


def test_mean_iou_num_labels_inferred_and_given_late():
    metric = load_metric("mean_iou")
    metric.add_batch(predictions=STOCK_PREDICTIONS[:2], references=STOCK_REFERENCES[:2])
    metric.add_batch(predictions=STOCK_PREDICTIONS[2:], references=STOCK_REFERENCES[2:])
    assert_stock(metric.compute(num_labels=10))
    metric.add_batch(predictions=[np.array([[0, 1]])], references=[np.array([[0, 2]])])
    assert len(metric.compute()["per_category_iou"]) == 3  # largest reference id + 1


def test_mean_iou_settings_cannot_change_mid_stream():
    metric = load_metric("mean_iou", num_labels=2)
    metric.add_batch(predictions=[np.zeros((2, 2), int)], references=[np.zeros((2, 2), int)])
    with pytest.raises(ValueError):
        metric.add_batch(predictions=[np.zeros((2, 2), int)], references=[np.zeros((2, 2), int)], reduce_labels=True)


def test_mean_iou_refuses_reference_labels_outside_its_classes():
    """Guards the issue 24 pattern (mean_iou accepted labels outside its classes): a reference id >= num_labels (or
    negative) that is not the ignore index used to count as a wrong "other" class and lower the score silently; it
    is a ValueError naming the value now, in the plain function, the streaming module and a late num_labels.
    Predicted ids outside the classes still count as wrong."""
    prediction, reference = np.array([[0, 1], [1, 1]]), np.array([[0, 1], [7, 255]])
    with pytest.raises(ValueError, match=r"reference label\(s\) 7 outside the 2 classes \(0..1\) and not the ignore "
                                         r"index 255 \(1 pixel\(s\)\)"):
        compute_mean_iou([prediction], [reference], num_labels=2)
    with pytest.raises(ValueError, match=r"reference label\(s\) -1, 2 outside the 2 classes"):
        confusion_matrix(np.zeros((1, 3), int), np.array([[-1, 2, 2]]), num_labels=2)
    metric = load_metric("mean_iou", num_labels=2)
    with pytest.raises(ValueError, match=r"reference label\(s\) 7 outside"):
        metric.add_batch(predictions=[prediction], references=[reference])
    metric = load_metric("mean_iou")  # num_labels inferred (3 here), then given as 2 at compute
    metric.add_batch(predictions=[prediction], references=[np.array([[0, 1], [2, 255]])])
    with pytest.raises(ValueError, match=r"reference label\(s\) 2 are outside the 2 classes"):
        metric.compute(num_labels=2)
    # the ignore index and out-of-range predictions are still fine
    results = compute_mean_iou([np.array([[0, 9]])], [np.array([[0, 255]])], num_labels=2)
    assert results["overall_accuracy"] == pytest.approx(1.0)


def test_to_builtin_is_strict_json():
    results = compute_mean_iou([np.array([[0, 0]])], [np.array([[0, 0]])], num_labels=3)
    plain = to_builtin(results)
    assert plain["per_category_iou"] == [1.0, None, None]
    json.dumps(plain, allow_nan=False)


# ------------------------------------------------------------------------------------------ IRSTD
def blank(size=32):
    return np.zeros((size, size), dtype=np.uint8)


def test_irstd_hand_computed():
    reference = blank(16)
    reference[2:4, 2:4] = 1  # target A, centroid (2.5, 2.5)
    reference[10:12, 10:12] = 1  # target B, missed
    prediction = np.zeros((16, 16))
    prediction[2:4, 2:5] = 0.9  # 6 px, centroid (2.5, 3.0): detects A
    prediction[13, 1] = 0.7  # false alarm, 1 px
    prediction[0, 15] = 0.5  # not above the threshold
    results = load_metric("irstd").compute(predictions=[prediction], references=[reference])
    # intersection 4, union 6 + 4 (B) + 1 = 11
    assert results["iou"] == pytest.approx(4 / 11)
    assert results["niou"] == pytest.approx(4 / 11)
    assert results["pd"] == pytest.approx(0.5)
    assert results["fa"] == pytest.approx(1 / 256 * 1e6)
    assert (results["num_targets"], results["num_detected"], results["false_alarm_pixels"]) == (2, 1, 1)
    assert results["total_pixels"] == 256


def test_irstd_niou_differs_from_iou():
    reference_1, prediction_1 = blank(), blank()
    reference_1[0:10, 0:10] = 1
    prediction_1[0:10, 0:10] = 1  # IoU 1, 100 px
    reference_2, prediction_2 = blank(), blank()
    reference_2[20:22, 20:22] = 1
    prediction_2[20:22, 20:21] = 1  # IoU 2/4
    results = compute_irstd([prediction_1, prediction_2], [reference_1, reference_2])
    assert results["iou"] == pytest.approx(102 / 104)
    assert results["niou"] == pytest.approx((1.0 + 0.5) / 2)
    assert results["pd"] == pytest.approx(1.0)
    assert results["fa"] == 0.0


def test_irstd_eight_connectivity_and_strict_distance():
    reference = blank()
    reference[5, 5] = 1
    prediction = blank()
    prediction[5, 8] = 1  # exactly 3 px away: not detected (strictly less is required)
    stats = image_statistics(prediction, reference)
    assert stats["num_detected"] == 0 and stats["false_alarm_pixels"] == 1
    prediction = blank()
    prediction[5, 7] = 1
    assert image_statistics(prediction, reference)["num_detected"] == 1
    # Diagonal neighbours are one component (8-connectivity): one target, one detection.
    reference = blank()
    reference[10, 10] = reference[11, 11] = reference[12, 12] = 1
    stats = image_statistics(reference.copy(), reference)
    assert (stats["num_targets"], stats["num_detected"], stats["false_alarm_pixels"]) == (1, 1, 0)


def test_irstd_matching_is_one_to_one():
    reference = blank()
    reference[10, 10] = reference[10, 13] = 1  # two targets, 3 px apart
    prediction = blank()
    prediction[10, 11:13] = 1  # one component centred between them (1.5 px from each)
    stats = image_statistics(prediction, reference)
    assert (stats["num_targets"], stats["num_detected"]) == (2, 1)
    np.testing.assert_array_equal(match_targets(np.array([[0.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 0.5]])), [0, -1])


def test_irstd_fa_rules_differ_on_equal_size_blobs():
    reference = blank()
    reference[4:6, 4:6] = 1  # target, 4 px
    prediction = blank()
    prediction[4:6, 4:6] = 1  # detects the target, 4 px
    prediction[20:22, 20:22] = 1  # unmatched, also 4 px: the reference rule forgets it
    prediction[28, 2] = 1  # unmatched, 1 px: both rules count it
    correct = compute_irstd([prediction], [reference])
    reference_rule = compute_irstd([prediction], [reference], fa_rule="reference")
    assert correct["false_alarm_pixels"] == 5
    assert reference_rule["false_alarm_pixels"] == 1
    assert correct["fa"] == pytest.approx(5 / 1024 * 1e6)
    assert reference_rule["fa"] == pytest.approx(1 / 1024 * 1e6)
    assert correct["pd"] == reference_rule["pd"] == 1.0
    # The module takes the rule at load time too.
    metric = load_metric("irstd", fa_rule="reference")
    metric.add_batch(predictions=[prediction], references=[reference])
    assert metric.compute()["false_alarm_pixels"] == 1
    # Without an equal-size coincidence the rules agree.
    prediction[20:22, 20:22] = 0
    prediction[20, 20] = 1
    assert compute_irstd([prediction], [reference], fa_rule="reference")["fa"] == compute_irstd([prediction], [reference])["fa"]
    with pytest.raises(ValueError):
        compute_irstd([prediction], [reference], fa_rule="sls")


def test_irstd_probabilities_binary_and_batched_inputs():
    reference = blank()
    reference[8:10, 8:10] = 255  # 0/255 masks work
    probabilities = np.where(reference > 0, 0.8, 0.1).astype(np.float32)
    binary = (reference > 0).astype(np.int64)
    by_probability = compute_irstd([probabilities], [reference])
    by_mask = compute_irstd([binary], [reference])
    assert by_probability == by_mask
    assert by_probability["iou"] == 1.0
    assert compute_irstd([probabilities], [reference], threshold=0.9)["pd"] == 0.0
    metric = load_metric("irstd")
    metric.add_batch(predictions=np.stack([probabilities] * 3)[:, None], references=np.stack([reference] * 3)[:, None])
    results = metric.compute()
    assert results["num_images"] == 3 and results["num_targets"] == 3 and results["pd"] == 1.0


def test_irstd_streaming_state_is_constant():
    rng = np.random.default_rng(0)
    metric = load_metric("irstd")
    keys = None
    predictions, references = [], []
    for _ in range(20):
        reference = (rng.random((2, 64, 64)) > 0.995).astype(np.uint8)
        prediction = rng.random((2, 64, 64)) * 0.6 + reference * 0.4
        metric.add_batch(predictions=prediction, references=reference)
        predictions.extend(prediction)
        references.extend(reference)
        counters = metric.counters
        assert keys is None or set(counters) == keys
        keys = set(counters)
        assert all(np.isscalar(value) for value in counters.values())
        assert metric.writer is None
    assert metric.compute() == compute_irstd(predictions, references)
