"""UNIP semantic-segmentation metric: mean IoU as a streaming `evaluate` module.

Per-class IoU and accuracy, mIoU (background class counted, as in UNIP's tables) and overall
accuracy, accumulated in a confusion matrix so memory does not grow with the number of images.
"""

import evaluate
import datasets
import numpy as np


_DESCRIPTION = """\
Mean Intersection-over-Union for semantic segmentation, accumulated in a confusion matrix.

IoU of class c = |pred == c and label == c| / |pred == c or label == c| over all valid pixels
of all images (pixels whose label is `ignore_index` are skipped). mIoU is the mean over classes
whose union is not empty; every class counts, background (id 0) included. Accuracy of class c is
the recall |pred == c and label == c| / |label == c|; overall accuracy is correct pixels over
valid pixels. The numbers match the Hub's stock `mean_iou` metric, but `add_batch` folds each
batch into a `(num_labels + 1) x (num_labels + 1)` confusion matrix (the last column counts
predicted ids outside `[0, num_labels)`), so memory does not depend on how many images are
evaluated. A reference id outside `[0, num_labels)` that is not `ignore_index` is a `ValueError`
naming it (a wrong class list would otherwise pass as a lower score).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D arrays or an array/tensor of shape `(batch, height, width)`):
        Predicted class ids. Images in one batch may have different sizes when given as a list.
    references (same layout as `predictions`):
        Ground-truth class ids; `ignore_index` marks pixels to skip.
    num_labels (`int`, *optional*):
        Number of classes, background included. Predicted ids outside `[0, num_labels)` count as a
        wrong "other" class; reference ids outside it (other than `ignore_index`) are refused with a
        `ValueError` naming them. When not given anywhere, it is the largest reference id seen + 1 (classes
        that are only ever predicted are then not reported): pass it whenever it is known.
    ignore_index (`int`, *optional*, defaults to 255):
        Label id whose pixels are skipped.
    reduce_labels (`bool`, *optional*, defaults to `False`):
        Map label 0 to `ignore_index` and shift the other labels down by one (for data sets whose
        0 means "unlabelled"). Off by default: in UNIP's data sets 0 is the background class.
    label_map (`dict[int, int]`, *optional*):
        Old label id -> new label id, applied to the references before `reduce_labels`.
    nan_to_num (`float`, *optional*):
        Replace NaN (classes with an empty union or no labelled pixel) by this value in the output.

    `num_labels`, `ignore_index`, `reduce_labels` and `label_map` may be given to `evaluate.load`
    (they then apply to every `add_batch`) or to `compute` (stock-metric style).

Returns:
    `mean_iou` (`float`), `mean_accuracy` (`float`), `overall_accuracy` (`float`),
    `per_category_iou` (`np.ndarray` of shape `(num_labels,)`),
    `per_category_accuracy` (`np.ndarray` of shape `(num_labels,)`).

Examples:
    >>> import numpy as np
    >>> import evaluate
    >>> import unip_hf.evaluation.metrics
    >>> metric = evaluate.load(unip_hf.evaluation.metrics.metric_path("mean_iou"), num_labels=3)
    >>> metric.add_batch(predictions=[np.array([[0, 1], [2, 2]])], references=[np.array([[0, 1], [2, 255]])])
    >>> round(metric.compute()["mean_iou"], 4)
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

# Settings that change how pixels are counted; they must stay fixed while a matrix accumulates.
_ACCUMULATION_SETTINGS = ("ignore_index", "reduce_labels", "label_map")


def _to_numpy(array):
    """Convert a numpy array, torch tensor or nested list to a numpy array without importing torch."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _iter_images(batch):
    """Yield 2-D arrays from a list of images or an array/tensor of shape `(batch, H, W)`."""
    if isinstance(batch, (list, tuple)):
        for item in batch:
            yield _to_numpy(item)
        return
    array = _to_numpy(batch)
    if array.ndim == 2:
        yield array
    else:
        yield from array


def _prepare_labels(label, ignore_index=255, reduce_labels=False, label_map=None):
    """Apply `label_map` then `reduce_labels` to one label map (returns a new int64 array)."""
    label = np.asarray(label).astype(np.int64, copy=True)
    if label_map:
        original = label.copy()
        for old_id, new_id in label_map.items():
            label[original == int(old_id)] = int(new_id)
    if reduce_labels:
        background = label == 0
        label = label - 1
        label[background] = ignore_index
        label[label == ignore_index - 1] = ignore_index
    return label


def _refuse_label_rows(rows, old, num_labels):
    names = ", ".join(str(i) if i < old else f"outside [0, {old})" for i in rows)
    raise ValueError(f"reference label(s) {names} are outside the {num_labels} classes (0..{num_labels - 1}); pass "
                     "the right num_labels")


def resize_confusion_matrix(matrix, num_labels):
    """Resize a `(K + 1) x (K + 1)` confusion matrix (last index = out-of-range ids) to `num_labels`.

    Predictions of classes beyond the new size are folded into the out-of-range slot; new classes get zero
    counts. Labelled pixels of a class beyond the new size (or in the out-of-range row) are a `ValueError`.

    Args:
        matrix (`np.ndarray`): Square int64 matrix, rows = labels, columns = predictions.
        num_labels (`int`): Number of classes of the result.

    Returns:
        `np.ndarray` of shape `(num_labels + 1, num_labels + 1)`.
    """
    old = matrix.shape[0] - 1
    if old == num_labels:
        return matrix
    labelled = np.flatnonzero(matrix.sum(axis=1))
    lost = [int(i) for i in labelled if i >= min(old, num_labels)]
    if lost:  # labelled pixels of classes the result does not have: refused, as `confusion_matrix` does
        _refuse_label_rows(lost, old, num_labels)
    # Map every old index to its new index; classes >= num_labels and the old overflow go to overflow.
    index = np.arange(old + 1)
    index = np.where(index < min(old, num_labels), index, num_labels)
    out = np.zeros((num_labels + 1, num_labels + 1), dtype=np.int64)
    np.add.at(out, (index[:, None], index[None, :]), matrix)
    return out


def confusion_matrix(prediction, reference, num_labels, ignore_index=255, reduce_labels=False, label_map=None):
    """Confusion matrix of one image, with an extra last row/column for ids outside `[0, num_labels)`.

    Args:
        prediction (`np.ndarray`): Predicted class ids, any shape.
        reference (`np.ndarray`): Ground-truth class ids, same shape as `prediction`.
        num_labels (`int`): Number of classes, background included.
        ignore_index (`int`, *optional*, defaults to 255): Label id whose pixels are skipped.
        reduce_labels (`bool`, *optional*, defaults to `False`): Map 0 to `ignore_index`, shift others down.
        label_map (`dict[int, int]`, *optional*): Old id -> new id for the references.

    Returns:
        `np.ndarray` of shape `(num_labels + 1, num_labels + 1)`, dtype int64, rows = labels.
    """
    prediction = np.asarray(prediction).astype(np.int64, copy=False)
    label = _prepare_labels(reference, ignore_index, reduce_labels, label_map)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction shape {prediction.shape} does not match reference shape {label.shape}")
    valid = label != ignore_index
    label = label[valid]
    prediction = prediction[valid]
    outside = (label < 0) | (label >= num_labels)
    if outside.any():  # a wrong class list or label map: refused, never scored as a wrong "other" class
        values = np.unique(label[outside])
        shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if values.size > 8 else "")
        raise ValueError(
            f"reference label(s) {shown} outside the {num_labels} classes (0..{num_labels - 1}) and not the ignore "
            f"index {ignore_index} ({int(outside.sum())} pixel(s)); pass the right num_labels, map them with "
            "label_map, or set them to the ignore index"
        )
    prediction = np.where((prediction >= 0) & (prediction < num_labels), prediction, num_labels)
    size = num_labels + 1
    counts = np.bincount(label * size + prediction, minlength=size * size)
    return counts.reshape(size, size).astype(np.int64, copy=False)


def mean_iou_from_confusion_matrix(matrix, num_labels=None, nan_to_num=None):
    """mIoU, accuracies and per-class values from an accumulated confusion matrix.

    Args:
        matrix (`np.ndarray`): `(K + 1) x (K + 1)` matrix from `confusion_matrix` (summed over images).
        num_labels (`int`, *optional*): Number of classes to report; defaults to `K`.
        nan_to_num (`float`, *optional*): Replace NaN in the outputs by this value.

    Returns:
        `dict` with `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats) and
        `per_category_iou`, `per_category_accuracy` (arrays of shape `(num_labels,)`).
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    if num_labels is not None:
        matrix = resize_confusion_matrix(matrix, int(num_labels))
    k = matrix.shape[0] - 1
    if matrix[k].any():
        _refuse_label_rows([k], k, k)
    intersect = np.diag(matrix)[:k].astype(np.float64)
    area_label = matrix.sum(axis=1)[:k].astype(np.float64)
    area_pred = matrix.sum(axis=0)[:k].astype(np.float64)
    union = area_label + area_pred - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        accuracy = intersect / area_label
        overall = intersect.sum() / area_label.sum() if area_label.sum() > 0 else np.nan
    results = {
        "mean_iou": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.any(~np.isnan(accuracy)) else float("nan"),
        "overall_accuracy": float(overall),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }
    if nan_to_num is not None:
        results = {
            key: (np.nan_to_num(value, nan=nan_to_num) if isinstance(value, np.ndarray) else
                  float(np.nan_to_num(value, nan=nan_to_num)))
            for key, value in results.items()
        }
    return results


class MeanIou(evaluate.Metric):
    """Streaming mean IoU: `add_batch` folds each batch into a confusion matrix held in memory.

    Unlike stock `evaluate` metrics, nothing is written to the Arrow cache, so memory stays at one
    `(num_labels + 1)^2` int64 matrix however many images are added. For several processes, gather
    predictions first (`accelerator.gather_for_metrics`) and add them on each process, or sum
    `confusion_matrix` across processes and call `mean_iou_from_confusion_matrix`.

    Args:
        num_labels (`int`, *optional*): Number of classes, background included.
        ignore_index (`int`, *optional*, defaults to 255): Label id whose pixels are skipped.
        reduce_labels (`bool`, *optional*, defaults to `False`): See the module description.
        label_map (`dict[int, int]`, *optional*): Old id -> new id for the references.
        nan_to_num (`float`, *optional*): Replace NaN in the outputs by this value.
        **kwargs: Passed to `evaluate.Metric` (`config_name`, `experiment_id`, ...).
    """

    def __init__(self, num_labels=None, ignore_index=255, reduce_labels=False, label_map=None, nan_to_num=None,
                 **kwargs):
        if kwargs.get("num_process", 1) != 1:
            raise ValueError(
                "MeanIou accumulates in memory; with several processes gather predictions first "
                "(accelerator.gather_for_metrics) or all-reduce `metric.confusion_matrix`."
            )
        super().__init__(**kwargs)
        self._defaults = {
            "num_labels": num_labels,
            "ignore_index": ignore_index,
            "reduce_labels": reduce_labels,
            "label_map": label_map,
            "nan_to_num": nan_to_num,
        }
        self.reset()

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2502.02257"],
        )

    # ----------------------------------------------------------------------------------------- state
    def reset(self):
        """Drop the accumulated confusion matrix and image count."""
        self._matrix = None
        self._num_images = 0
        self._accumulation_settings = None

    @property
    def confusion_matrix(self):
        """The accumulated `(K + 1) x (K + 1)` int64 matrix (rows = labels; last index = other ids), or None."""
        return self._matrix

    @property
    def num_images(self):
        """Number of images accumulated since the last `compute` or `reset`."""
        return self._num_images

    def __len__(self):
        return self._num_images

    def _settings(self, overrides):
        settings = dict(self._defaults)
        settings.update({key: value for key, value in overrides.items() if key in settings})
        unknown = set(overrides) - set(settings)
        if unknown:
            raise ValueError(f"unknown arguments for mean_iou: {sorted(unknown)}")
        return settings

    def add_confusion_matrix(self, matrix, **overrides):
        """Add a precomputed confusion matrix (e.g. one summed across processes) to the state.

        Args:
            matrix (`np.ndarray`): `(K + 1) x (K + 1)` matrix in the layout of `confusion_matrix`.
            **overrides: `num_labels` to resize to.
        """
        matrix = _to_numpy(matrix).astype(np.int64)
        num_labels = overrides.get("num_labels", self._defaults["num_labels"])
        if num_labels is not None:
            matrix = resize_confusion_matrix(matrix, int(num_labels))
        self._accumulate(matrix)

    def _accumulate(self, matrix):
        if self._matrix is None:
            self._matrix = matrix.copy()
            return
        size = max(self._matrix.shape[0], matrix.shape[0]) - 1
        self._matrix = resize_confusion_matrix(self._matrix, size) + resize_confusion_matrix(matrix, size)

    def _add_images(self, predictions, references, settings):
        fixed = tuple(repr(settings[key]) for key in _ACCUMULATION_SETTINGS)
        if self._accumulation_settings is None:
            self._accumulation_settings = fixed
        elif fixed != self._accumulation_settings:
            raise ValueError(
                f"{_ACCUMULATION_SETTINGS} changed while images were accumulating; pass them to evaluate.load "
                "or call compute()/reset() first"
            )
        for prediction, reference in zip(_iter_images(predictions), _iter_images(references), strict=True):
            num_labels = settings["num_labels"]
            if num_labels is None:
                # Grow with the largest reference id seen (ignore_index excluded).
                label = _prepare_labels(reference, settings["ignore_index"], settings["reduce_labels"],
                                        settings["label_map"])
                valid = label[label != settings["ignore_index"]]
                largest = int(valid.max()) if valid.size else -1
                current = self._matrix.shape[0] - 1 if self._matrix is not None else 0
                num_labels = max(largest + 1, current, 1)
            matrix = confusion_matrix(prediction, reference, int(num_labels), settings["ignore_index"],
                                      settings["reduce_labels"], settings["label_map"])
            self._accumulate(matrix)
            self._num_images += 1

    # --------------------------------------------------------------------------- evaluate interface
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Fold a batch of predicted and reference label maps into the confusion matrix.

        Args:
            predictions: list of 2-D arrays or a `(batch, H, W)` array/tensor of class ids.
            references: same layout, ground-truth ids.
            **kwargs: `num_labels`, `ignore_index`, `reduce_labels`, `label_map` overrides.
        """
        if predictions is None or references is None:
            raise ValueError("add_batch needs both predictions and references")
        self._add_images(predictions, references, self._settings(kwargs))

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Fold one predicted and reference label map into the confusion matrix.

        Args:
            prediction: 2-D array/tensor of class ids.
            reference: 2-D array/tensor of ground-truth ids.
            **kwargs: `num_labels`, `ignore_index`, `reduce_labels`, `label_map` overrides.
        """
        if prediction is None or reference is None:
            raise ValueError("add needs both prediction and reference")
        self._add_images([prediction], [reference], self._settings(kwargs))

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Add the optional last batch, return the metrics and reset the state.

        Args:
            predictions: optional last batch (same layout as for `add_batch`).
            references: optional last batch of ground-truth ids.
            **kwargs: `num_labels`, `ignore_index`, `reduce_labels`, `label_map`, `nan_to_num`.

        Returns:
            `dict` with `mean_iou`, `mean_accuracy`, `overall_accuracy`, `per_category_iou`,
            `per_category_accuracy`.
        """
        settings = self._settings(kwargs)
        if predictions is not None or references is not None:
            self._add_images(predictions, references, settings)
        return self._compute(**settings)

    def _compute(self, num_labels=None, nan_to_num=None, **_accumulation_settings):
        if self._matrix is None:
            raise ValueError("mean_iou: nothing to compute, add predictions and references first")
        results = mean_iou_from_confusion_matrix(self._matrix, num_labels=num_labels, nan_to_num=nan_to_num)
        self.reset()
        return results


__all__ = [
    "MeanIou",
    "confusion_matrix",
    "mean_iou_from_confusion_matrix",
    "resize_confusion_matrix",
]
