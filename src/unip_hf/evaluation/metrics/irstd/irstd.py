"""UNIP small-target metric: infrared small-target detection (IRSTD) scores as an `evaluate` module.

IoU accumulated over the data set, nIoU (mean per-image IoU), and target-level Pd / Fa from
8-connected components matched by centroid distance, accumulated in a few counters.
"""

import evaluate
import datasets
import numpy as np
import scipy.ndimage


_DESCRIPTION = """\
Infrared small-target detection metrics, as used across the IRSTD literature (SIRST, NUDT-SIRST,
IRSTD-1k):

- `iou`: pixel IoU of the target class accumulated over the data set (sum of intersections over
  sum of unions).
- `niou`: mean over images of the per-image pixel IoU (images where both masks are empty are
  skipped: their IoU is undefined).
- `pd`: probability of detection, detected targets / ground-truth targets. Targets are the
  8-connected components of the ground truth; predicted objects those of the thresholded
  prediction. A target is detected when a predicted component's centroid lies strictly closer
  than `distance_threshold` (3) pixels to its centroid; ground-truth targets are visited in
  label (raster) order and each takes the first still-unmatched predicted component in range, so
  the matching is one-to-one.
- `fa`: false-alarm rate **x 1e6**: pixels of predicted components matched to no target, divided by
  all pixels of all images, times one million (the unit used in the literature's tables).

`fa_rule="correct"` (default) counts every unmatched predicted component. `fa_rule="reference"`
reproduces the widely used reference implementation (the `PD_FA` class of the DNANet / SLS code
bases), which drops an unmatched component whenever its *area value* equals the area of any
matched component of the same image: unmatched blobs of the same size as a detected target are
then not counted as false alarms. Use it only to compare with numbers from that code.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D arrays or an array/tensor of shape `(batch, height, width)`):
        Floating arrays are target probabilities, thresholded with `> threshold`; integer or
        boolean arrays are binary masks (non-zero = target). A singleton channel axis
        (`(batch, 1, H, W)`) is accepted.
    references (same layout as `predictions`):
        Ground-truth masks; non-zero pixels are target (0/1 and 0/255 masks both work).
    threshold (`float`, *optional*, defaults to 0.5):
        Probability threshold for floating predictions.
    distance_threshold (`float`, *optional*, defaults to 3.0):
        A target is detected when the centroid distance is strictly below this many pixels.
    fa_rule (`str`, *optional*, defaults to `"correct"`):
        `"correct"` or `"reference"` (see the description).

    `threshold`, `distance_threshold` and `fa_rule` may be given to `evaluate.load` or `add_batch`.

Returns:
    `iou`, `niou`, `pd` (floats in [0, 1]), `fa` (false-alarm pixels per million pixels), and the
    counts behind them: `num_images`, `num_targets`, `num_detected`, `false_alarm_pixels`,
    `total_pixels`.

Examples:
    >>> import numpy as np
    >>> import evaluate
    >>> import unip_hf.evaluation.metrics
    >>> metric = evaluate.load(unip_hf.evaluation.metrics.metric_path("irstd"))
    >>> mask = np.zeros((8, 8), dtype=np.uint8); mask[2:4, 2:4] = 1
    >>> metric.add_batch(predictions=[mask.astype(float)], references=[mask])
    >>> metric.compute()["pd"]
    1.0
"""

_CITATION = """\
@inproceedings{zhang2025unip,
  title     = {{UNIP}: Rethinking Pre-trained Attention Patterns for Infrared Semantic Segmentation},
  author    = {Zhang, Tao and Wen, Jinyong and Chen, Zhen and Ding, Kun and Xiang, Shiming and Pan, Chunhong},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025},
  url       = {https://arxiv.org/abs/2502.02257}
}
"""

FA_RULES = ("correct", "reference")

# 8-connectivity: diagonal neighbours join a component.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

_COUNTERS = ("intersection", "union", "niou_images", "num_images", "num_targets", "num_detected",
             "false_alarm_pixels", "total_pixels")


def _to_numpy(array):
    """Convert a numpy array, torch tensor or nested list to a numpy array without importing torch."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _iter_images(batch):
    """Yield 2-D arrays from a list of images or an array/tensor of shape `(batch, [1,] H, W)`."""
    items = batch if isinstance(batch, (list, tuple)) else None
    if items is None:
        array = _to_numpy(batch)
        items = [array] if array.ndim == 2 else list(array)
    for item in items:
        item = _to_numpy(item)
        if item.ndim == 3 and item.shape[0] == 1:
            item = item[0]
        if item.ndim != 2:
            raise ValueError(f"expected 2-D masks, got shape {item.shape}")
        yield item


def binarize(prediction, threshold=0.5):
    """Binary target mask from probabilities (`> threshold`) or from a binary/integer mask (`!= 0`).

    Args:
        prediction (`np.ndarray`): Probabilities (floating dtype) or a mask (integer/boolean dtype).
        threshold (`float`, *optional*, defaults to 0.5): Probability threshold for floating input.

    Returns:
        `np.ndarray` of bools with the shape of `prediction`.
    """
    prediction = np.asarray(prediction)
    if np.issubdtype(prediction.dtype, np.floating):
        return prediction > threshold
    return prediction != 0


def components(mask):
    """8-connected components of a binary mask with their areas and centroids.

    Args:
        mask (`np.ndarray`): 2-D boolean mask.

    Returns:
        `(areas, centroids)`: int64 array `(n,)` and float64 array `(n, 2)` of (row, column)
        centroids, in label order (raster order of each component's first pixel).
    """
    labels, count = scipy.ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.float64)
    flat = labels.ravel()
    rows, cols = np.divmod(np.flatnonzero(flat), labels.shape[1])
    ids = flat[flat > 0]
    areas = np.bincount(ids, minlength=count + 1)[1:]
    centroids = np.stack(
        [np.bincount(ids, weights=rows, minlength=count + 1)[1:], np.bincount(ids, weights=cols, minlength=count + 1)[1:]],
        axis=1,
    ) / areas[:, None]
    return areas.astype(np.int64), centroids


def match_targets(target_centroids, predicted_centroids, distance_threshold=3.0):
    """Greedy one-to-one matching of ground-truth targets to predicted components.

    Targets are visited in order; each takes the first still-unmatched predicted component whose
    centroid is strictly closer than `distance_threshold`.

    Args:
        target_centroids (`np.ndarray`): `(n_targets, 2)` centroids of the ground-truth components.
        predicted_centroids (`np.ndarray`): `(n_predicted, 2)` centroids of the predicted components.
        distance_threshold (`float`, *optional*, defaults to 3.0): Strict distance bound in pixels.

    Returns:
        `np.ndarray` of shape `(n_targets,)`: index of the matched predicted component, or -1.
    """
    matches = np.full(len(target_centroids), -1, dtype=np.int64)
    if len(target_centroids) == 0 or len(predicted_centroids) == 0:
        return matches
    free = np.ones(len(predicted_centroids), dtype=bool)
    for target, centroid in enumerate(target_centroids):
        # One row at a time: memory stays O(n_predicted) even for very noisy predictions.
        row = np.hypot(predicted_centroids[:, 0] - centroid[0], predicted_centroids[:, 1] - centroid[1])
        candidates = np.flatnonzero(free & (row < distance_threshold))
        if candidates.size:
            matches[target] = candidates[0]
            free[candidates[0]] = False
    return matches


def image_statistics(prediction, reference, threshold=0.5, distance_threshold=3.0, fa_rule="correct"):
    """Counters of one image: pixel intersection/union, targets, detections and false-alarm pixels.

    Args:
        prediction (`np.ndarray`): 2-D probabilities or binary mask (see `binarize`).
        reference (`np.ndarray`): 2-D ground-truth mask (non-zero = target).
        threshold (`float`, *optional*, defaults to 0.5): Probability threshold.
        distance_threshold (`float`, *optional*, defaults to 3.0): Centroid distance bound (strict).
        fa_rule (`str`, *optional*, defaults to `"correct"`): `"correct"` or `"reference"`.

    Returns:
        `dict` with `intersection`, `union`, `num_targets`, `num_detected`, `false_alarm_pixels`,
        `total_pixels` (ints).
    """
    if fa_rule not in FA_RULES:
        raise ValueError(f"fa_rule must be one of {FA_RULES}, got {fa_rule!r}")
    predicted = binarize(prediction, threshold)
    target = np.asarray(reference) != 0
    if predicted.shape != target.shape:
        raise ValueError(f"prediction shape {predicted.shape} does not match reference shape {target.shape}")
    predicted_areas, predicted_centroids = components(predicted)
    _, target_centroids = components(target)
    matches = match_targets(target_centroids, predicted_centroids, distance_threshold)
    matched = np.zeros(len(predicted_areas), dtype=bool)
    matched[matches[matches >= 0]] = True
    if fa_rule == "correct":
        false_alarm = int(predicted_areas[~matched].sum())
    else:
        # Reference behaviour: an unmatched component is dropped when its area equals any matched area.
        matched_area_values = set(predicted_areas[matched].tolist())
        false_alarm = int(sum(area for area in predicted_areas[~matched].tolist() if area not in matched_area_values))
    return {
        "intersection": int(np.count_nonzero(predicted & target)),
        "union": int(np.count_nonzero(predicted | target)),
        "num_targets": int(len(target_centroids)),
        "num_detected": int(np.count_nonzero(matches >= 0)),
        "false_alarm_pixels": false_alarm,
        "total_pixels": int(target.size),
    }


def irstd_from_counters(counters):
    """Final `iou`, `niou`, `pd`, `fa` (x 1e6) from accumulated counters (see `Irstd.counters`).

    Args:
        counters (`dict`): Sums of `image_statistics` plus `niou_sum`, `niou_images`, `num_images`.

    Returns:
        `dict` with `iou`, `niou`, `pd`, `fa` and the raw counts.
    """

    def ratio(numerator, denominator):
        return float(numerator) / float(denominator) if denominator else float("nan")

    return {
        "iou": ratio(counters["intersection"], counters["union"]),
        "niou": ratio(counters["niou_sum"], counters["niou_images"]),
        "pd": ratio(counters["num_detected"], counters["num_targets"]),
        "fa": ratio(counters["false_alarm_pixels"], counters["total_pixels"]) * 1e6,
        "num_images": int(counters["num_images"]),
        "num_targets": int(counters["num_targets"]),
        "num_detected": int(counters["num_detected"]),
        "false_alarm_pixels": int(counters["false_alarm_pixels"]),
        "total_pixels": int(counters["total_pixels"]),
    }


class Irstd(evaluate.Metric):
    """Streaming IRSTD metrics (IoU, nIoU, Pd, Fa x 1e6): `add_batch` only updates a few counters.

    Nothing is written to the Arrow cache, so memory does not depend on the number of images.
    For several processes, gather predictions first or sum `counters` across processes and call
    `irstd_from_counters`.

    Args:
        threshold (`float`, *optional*, defaults to 0.5): Probability threshold for floating predictions.
        distance_threshold (`float`, *optional*, defaults to 3.0): Strict centroid distance bound (pixels).
        fa_rule (`str`, *optional*, defaults to `"correct"`): `"correct"` or `"reference"`.
        **kwargs: Passed to `evaluate.Metric`.
    """

    def __init__(self, threshold=0.5, distance_threshold=3.0, fa_rule="correct", **kwargs):
        if kwargs.get("num_process", 1) != 1:
            raise ValueError(
                "Irstd accumulates in memory; with several processes gather predictions first "
                "(accelerator.gather_for_metrics) or sum `metric.counters` across processes."
            )
        if fa_rule not in FA_RULES:
            raise ValueError(f"fa_rule must be one of {FA_RULES}, got {fa_rule!r}")
        super().__init__(**kwargs)
        self._defaults = {"threshold": threshold, "distance_threshold": distance_threshold, "fa_rule": fa_rule}
        self.reset()

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2502.02257"],
        )

    def reset(self):
        """Zero all counters."""
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._niou_sum = 0.0

    @property
    def counters(self):
        """The accumulated counters (a copy): pixel sums, target counts, per-image IoU sum."""
        counters = dict(self._counters)
        counters["niou_sum"] = self._niou_sum
        return counters

    def __len__(self):
        return self._counters["num_images"]

    def _settings(self, overrides):
        unknown = set(overrides) - set(self._defaults)
        if unknown:
            raise ValueError(f"unknown arguments for irstd: {sorted(unknown)}")
        settings = dict(self._defaults)
        settings.update(overrides)
        return settings

    def _add_images(self, predictions, references, settings):
        for prediction, reference in zip(_iter_images(predictions), _iter_images(references), strict=True):
            stats = image_statistics(prediction, reference, **settings)
            for key, value in stats.items():
                self._counters[key] += value
            self._counters["num_images"] += 1
            if stats["union"] > 0:
                self._niou_sum += stats["intersection"] / stats["union"]
                self._counters["niou_images"] += 1

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Update the counters with a batch of predictions and ground-truth masks.

        Args:
            predictions: list of 2-D arrays or a `(batch, [1,] H, W)` array/tensor.
            references: same layout, ground-truth masks.
            **kwargs: `threshold`, `distance_threshold`, `fa_rule` overrides.
        """
        if predictions is None or references is None:
            raise ValueError("add_batch needs both predictions and references")
        self._add_images(predictions, references, self._settings(kwargs))

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Update the counters with one prediction and ground-truth mask.

        Args:
            prediction: 2-D array/tensor.
            reference: 2-D array/tensor.
            **kwargs: `threshold`, `distance_threshold`, `fa_rule` overrides.
        """
        if prediction is None or reference is None:
            raise ValueError("add needs both prediction and reference")
        self._add_images([prediction], [reference], self._settings(kwargs))

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Add the optional last batch, return `iou`, `niou`, `pd`, `fa` (x 1e6) and reset.

        Args:
            predictions: optional last batch.
            references: optional last batch of ground-truth masks.
            **kwargs: `threshold`, `distance_threshold`, `fa_rule` overrides for that batch.

        Returns:
            `dict` with `iou`, `niou`, `pd`, `fa` and the raw counts.
        """
        if predictions is not None or references is not None:
            self._add_images(predictions, references, self._settings(kwargs))
        return self._compute()

    def _compute(self, **_unused):
        if self._counters["num_images"] == 0:
            raise ValueError("irstd: nothing to compute, add predictions and references first")
        results = irstd_from_counters(self.counters)
        self.reset()
        return results


__all__ = [
    "FA_RULES",
    "Irstd",
    "binarize",
    "components",
    "image_statistics",
    "irstd_from_counters",
    "match_targets",
]
