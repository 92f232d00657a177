"""Threshold-free report of infrared small-target detection: the Pd-Fa curve (probability of detection against
false-alarm rate x 1e6, one point per probability threshold), with the IoU at each threshold, so that models are
compared without choosing one threshold. Counts come from `irstd.image_statistics` (the same target matching as Pd
and Fa at 0.5); `save_pd_fa_plot` draws the curve (matplotlib, the `plots` extra).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from unip_hf.evaluation.metrics.irstd.irstd import image_statistics

#: Thresholds of the curve: dense near both ends, where Fa and Pd change fastest.
DEFAULT_THRESHOLDS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
_CURVE_COUNTERS = ("num_detected", "false_alarm_pixels", "intersection", "union")
#: Thresholds searched when choosing an operating point for a target Fa (`choose_threshold`): the curve's, plus a
#: finer grid, denser towards 1 where the false alarms of a confident model thin out.
OPERATING_THRESHOLDS = tuple(sorted(set(DEFAULT_THRESHOLDS) | {round(0.05 * i, 2) for i in range(1, 20)}
                                    | {0.97, 0.98, 0.985, 0.99, 0.995, 0.998, 0.999}))


class PdFaCurveAccumulator:
    """Per-threshold counters summed over images: detections, false-alarm pixels, intersection, union, plus the
    number of targets and pixels (threshold-independent).

    Args:
        thresholds (`Sequence[float]`, *optional*): probability thresholds (default `DEFAULT_THRESHOLDS`).
        distance_threshold (`float`, *optional*, defaults to 3.0), fa_rule (`str`, *optional*, defaults to
            `"correct"`): as in `image_statistics`.
    """

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, distance_threshold: float = 3.0,
                 fa_rule: str = "correct"):
        thresholds = [float(t) for t in thresholds]
        if not thresholds or any(not 0.0 <= t < 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be probabilities in [0, 1), got {thresholds}")
        self.thresholds = sorted(set(thresholds))
        self.distance_threshold, self.fa_rule = distance_threshold, fa_rule
        self.counts = np.zeros((len(self.thresholds), len(_CURVE_COUNTERS)), dtype=np.int64)
        self.num_targets = 0
        self.total_pixels = 0

    def add(self, probability: np.ndarray, reference: np.ndarray) -> None:
        """Add one image: a 2-D target probability map and its 2-D ground-truth mask."""
        for row, threshold in enumerate(self.thresholds):
            stats = image_statistics(probability, reference, threshold, self.distance_threshold, self.fa_rule)
            self.counts[row] += [stats[key] for key in _CURVE_COUNTERS]
        self.num_targets += stats["num_targets"]
        self.total_pixels += stats["total_pixels"]

    def state(self) -> np.ndarray:
        """All counters as one flat int64 vector (to sum over processes), see `from_state`."""
        return np.concatenate([self.counts.ravel(), [self.num_targets, self.total_pixels]])

    def load_state(self, state: Iterable[float]) -> None:
        """Replace the counters by a (summed) `state()` vector."""
        state = np.rint(np.asarray(list(state), dtype=np.float64)).astype(np.int64)
        self.counts = state[:-2].reshape(self.counts.shape)
        self.num_targets, self.total_pixels = int(state[-2]), int(state[-1])

    def compute(self) -> dict[str, list[float]]:
        """`{"thresholds", "pd", "fa" (x 1e6), "iou"}`, one value per threshold (ascending thresholds)."""
        detected, false_alarm, intersection, union = (self.counts[:, i] for i in range(len(_CURVE_COUNTERS)))

        def ratio(numerator, denominator):
            return [float(n) / float(denominator) if denominator else float("nan") for n in numerator]

        return {
            "thresholds": list(self.thresholds),
            "pd": ratio(detected, self.num_targets),
            "fa": [value * 1e6 for value in ratio(false_alarm, self.total_pixels)],
            "iou": [float(i) / float(u) if u else float("nan") for i, u in zip(intersection, union)],
        }


def pd_fa_curve(predictions: Iterable[np.ndarray], references: Iterable[np.ndarray],
                thresholds: Sequence[float] = DEFAULT_THRESHOLDS, distance_threshold: float = 3.0,
                fa_rule: str = "correct") -> dict[str, list[float]]:
    """The Pd-Fa curve of target probability maps against ground-truth masks (lists of 2-D arrays).

    Returns:
        `dict` with `thresholds`, `pd`, `fa` (false-alarm pixels per million) and `iou`, one entry per threshold.
    """
    accumulator = PdFaCurveAccumulator(thresholds, distance_threshold, fa_rule)
    for probability, reference in zip(predictions, references):
        accumulator.add(np.asarray(probability, dtype=np.float64), np.asarray(reference))
    return accumulator.compute()


def save_pd_fa_plot(curves: dict[str, dict[str, list[float]]], path: str, title: str = "Pd-Fa curve") -> str:
    """Draw one or more Pd-Fa curves (`{label: curve}`) into a PNG at `path` (Fa on a log axis; each point annotated
    with its threshold). Needs matplotlib (`pip install 'unip-hf[plots]'`). Returns `path`."""
    # matplotlib is optional (the plots extra): imported when a figure is drawn, with a clear error if missing
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as err:
        raise ImportError("the Pd-Fa plot needs matplotlib: pip install 'unip-hf[plots]'") from err
    figure, axis = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    for label, curve in curves.items():
        fa = np.maximum(np.asarray(curve["fa"], dtype=float), 1e-2)  # Fa 0 drawn at the bottom of the log axis
        pd = np.asarray(curve["pd"], dtype=float) * 100
        axis.plot(fa, pd, marker="o", markersize=3, label=label)
        for threshold, x, y in zip(curve["thresholds"], fa, pd):
            axis.annotate(f"{threshold:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
    axis.set_xscale("log")
    axis.set_xlabel("Fa (false-alarm pixels per million)")
    axis.set_ylabel("Pd (%)")
    axis.set_ylim(0, 101)
    axis.grid(True, which="both", alpha=0.3)
    axis.set_title(title)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def choose_threshold(curve: dict[str, list[float]], target_fa: float) -> dict[str, float | bool]:
    """The operating point of a Pd-Fa curve for a target false-alarm rate: the lowest threshold (so the highest Pd)
    whose Fa (x 1e6) is at most `target_fa`; when no threshold reaches it, the one with the lowest Fa, with
    `reached` False. Choose it on a validation split, never on the test split that is reported.

    Returns:
        `dict` with `threshold`, `pd`, `fa`, `iou` at that point, `target_fa` and `reached`.
    """
    points = list(zip(curve["thresholds"], curve["pd"], curve["fa"], curve["iou"]))
    if not points:
        raise ValueError("choose_threshold: the curve has no point")
    admissible = [point for point in points if point[2] <= target_fa]
    reached = bool(admissible)
    threshold, pd, fa, iou = (min(admissible, key=lambda p: p[0]) if admissible
                              else min(points, key=lambda p: (p[2], -p[0])))
    return {"threshold": float(threshold), "pd": float(pd), "fa": float(fa), "iou": float(iou),
            "target_fa": float(target_fa), "reached": reached}

