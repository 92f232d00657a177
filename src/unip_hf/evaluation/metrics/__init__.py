"""UNIP evaluation metrics: streaming `evaluate` modules shipped inside the package, loaded by path.

`mean_iou` (semantic segmentation, background counted) and `irstd` (small targets: IoU, nIoU, Pd,
Fa x 1e6), plus plain numpy functions that compute the same numbers without `evaluate`.

Example:
    ```python
    >>> import numpy as np
    >>> from unip_hf.evaluation.metrics import load_metric
    >>> metric = load_metric("mean_iou", num_labels=2)
    >>> metric.add_batch(predictions=[np.array([[0, 1], [1, 1]])], references=[np.array([[0, 1], [0, 1]])])
    >>> round(metric.compute()["mean_iou"], 4)
    0.5833
    ```
"""

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from unip_hf.evaluation.metrics.irstd.irstd import (
    FA_RULES,
    binarize,
    components,
    image_statistics,
    irstd_from_counters,
    match_targets,
)
from unip_hf.evaluation.metrics.irstd.pd_fa_curve import DEFAULT_THRESHOLDS, PdFaCurveAccumulator, pd_fa_curve, save_pd_fa_plot
from unip_hf.evaluation.metrics.mean_iou.mean_iou import confusion_matrix, mean_iou_from_confusion_matrix, resize_confusion_matrix

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("mean_iou", "irstd")
# The key each metric is ranked by (higher is better) when a recipe keeps the best checkpoint.
MAIN_METRIC = {"mean_iou": "mean_iou", "irstd": "iou"}
# The scalar keys of each metric where higher is better: what `--metric_for_best_model` may rank (not `fa`, a rate of
# false alarms, whose highest value is the worst model, nor counts or per-class arrays).
RANKED_METRICS = {"mean_iou": ("mean_iou", "mean_accuracy", "overall_accuracy"), "irstd": ("iou", "niou", "pd")}


def metric_path(name: str) -> str:
    """Folder of a shipped metric module, for `evaluate.load(path)`.

    Args:
        name (`str`): `"mean_iou"` or `"irstd"`.

    Returns:
        `str`: absolute path of the folder holding `<name>.py`.
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose one of {METRIC_NAMES}")
    return str(METRICS_DIR / name)


def load_metric(name: str, **kwargs: Any):
    """Load a shipped metric as an `evaluate.EvaluationModule`, by path (works offline).

    Args:
        name (`str`): `"mean_iou"` or `"irstd"`.
        **kwargs: Passed to `evaluate.load`; metric settings go to the module's constructor, e.g.
            `num_labels=2, ignore_index=255` for `mean_iou` or `threshold=0.5, fa_rule="reference"`
            for `irstd`.

    Returns:
        The metric module; call `add_batch(predictions=..., references=...)` per batch, then `compute()`.
    """
    # Deliberately lazy: `evaluate` takes seconds to import, and compute_mean_iou / compute_irstd work without it.
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)


def compute_mean_iou(
    predictions,
    references,
    num_labels: int,
    ignore_index: int = 255,
    reduce_labels: bool = False,
    label_map: Mapping[int, int] | None = None,
    nan_to_num: float | None = None,
) -> dict[str, Any]:
    """Mean IoU of whole lists of label maps, without `evaluate` (same numbers as the module).

    Args:
        predictions: iterable of 2-D predicted class-id arrays (or one `(batch, H, W)` array).
        references: iterable of 2-D ground-truth arrays, same sizes.
        num_labels (`int`): Number of classes, background included.
        ignore_index (`int`, *optional*, defaults to 255): Label id whose pixels are skipped.
        reduce_labels (`bool`, *optional*, defaults to `False`): Map 0 to `ignore_index`, shift others down.
        label_map (`dict[int, int]`, *optional*): Old id -> new id for the references.
        nan_to_num (`float`, *optional*): Replace NaN in the outputs by this value.

    Returns:
        `dict` with `mean_iou`, `mean_accuracy`, `overall_accuracy`, `per_category_iou`,
        `per_category_accuracy`.

    Raises:
        ValueError: a reference id outside `[0, num_labels)` that is not `ignore_index` (named); predicted ids outside
            the classes count as wrong.
    """
    total = np.zeros((num_labels + 1, num_labels + 1), dtype=np.int64)
    for prediction, reference in zip(predictions, references, strict=True):
        total += confusion_matrix(prediction, reference, num_labels, ignore_index, reduce_labels, label_map)
    return mean_iou_from_confusion_matrix(total, nan_to_num=nan_to_num)


def compute_irstd(
    predictions,
    references,
    threshold: float = 0.5,
    distance_threshold: float = 3.0,
    fa_rule: str = "correct",
) -> dict[str, Any]:
    """IRSTD metrics (`iou`, `niou`, `pd`, `fa` x 1e6) of lists of masks, without `evaluate`.

    Args:
        predictions: iterable of 2-D probability maps (floating) or binary masks.
        references: iterable of 2-D ground-truth masks (non-zero = target).
        threshold (`float`, *optional*, defaults to 0.5): Probability threshold (`> threshold`).
        distance_threshold (`float`, *optional*, defaults to 3.0): Strict centroid distance bound.
        fa_rule (`str`, *optional*, defaults to `"correct"`): `"correct"` or `"reference"`.

    Returns:
        `dict` with `iou`, `niou`, `pd`, `fa` and the raw counts.
    """
    counters = {"niou_sum": 0.0, "niou_images": 0, "num_images": 0}
    for prediction, reference in zip(predictions, references, strict=True):
        stats = image_statistics(prediction, reference, threshold, distance_threshold, fa_rule)
        for key, value in stats.items():
            counters[key] = counters.get(key, 0) + value
        counters["num_images"] += 1
        if stats["union"] > 0:
            counters["niou_sum"] += stats["intersection"] / stats["union"]
            counters["niou_images"] += 1
    if counters["num_images"] == 0:
        raise ValueError("compute_irstd: no images given")
    return irstd_from_counters(counters)


def to_builtin(results: Mapping[str, Any]) -> dict[str, Any]:
    """Metric results as plain Python values for JSON: arrays to lists, numpy scalars to floats/ints, NaN to None.

    Args:
        results (`Mapping[str, Any]`): Output of a metric's `compute()`.

    Returns:
        `dict` that `json.dumps` accepts in strict mode.
    """

    def convert(value):
        if isinstance(value, np.ndarray):
            return [convert(item) for item in value.tolist()]
        if isinstance(value, (list, tuple)):
            return [convert(item) for item in value]
        if isinstance(value, Mapping):
            return {str(key): convert(item) for key, item in value.items()}
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    return {str(key): convert(value) for key, value in results.items()}


__all__ = ["compute_irstd", "compute_mean_iou", "load_metric", "to_builtin", "pd_fa_curve", "save_pd_fa_plot"]
