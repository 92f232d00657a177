"""Reading attention measures as patterns, after UNIP (Zhang et al., ICLR 2025): the local / hybrid / global
labelling rule (`label_pattern`, `PatternThresholds`), the NMI-HAD teacher-layer choice (`choose_teacher_layer`)
and `AttentionReport`, the JSON-serialisable layer-wise result of `attention_analysis.analyze_attention`. Layer
indices are 0-based: the paper's "layer 18 of 24" is layer 17 here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PATTERNS = ("local", "hybrid", "global")

@dataclass
class PatternThresholds:
    """Thresholds of the local / hybrid / global labelling rule (see `label_pattern`).

    Args:
        global_below: A layer whose NMI is below this is *global*: the queries share (almost) one map.
        local_at_least: A layer whose NMI is at least this is *local*: each query's map is mostly its own
            neighbourhood.
        min_key_concentration: A layer in the NMI band between the two thresholds is *hybrid* only if the map the
            queries share, p(k), is concentrated (`key_concentration` = 1 - H(K)/log P at least this): the queries
            then agree on some keys (the foreground) besides their own neighbourhoods. Below it, the layer is a
            broad *local* window (every key equally attended on average).
        min_hybrid_margin: `choose_teacher_layer` prefers hybrid layers whose NMI is at least this far from both NMI
            thresholds ("clearly hybrid").
        min_hybrid_head_fraction: With per-head measures, a layer is *hybrid* only if at least this share of its
            heads is hybrid on its own (see `label_layer`): a layer whose local and global heads merely average into
            the hybrid band is not.
    """

    global_below: float = 0.08
    local_at_least: float = 0.30
    min_key_concentration: float = 0.01
    min_hybrid_margin: float = 0.01
    min_hybrid_head_fraction: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.global_below < self.local_at_least <= 1.0:
            raise ValueError(f"need 0 <= global_below < local_at_least <= 1, got {self}")
        if not 0.0 < self.min_hybrid_head_fraction <= 1.0:
            raise ValueError(f"min_hybrid_head_fraction must be in (0, 1], got {self.min_hybrid_head_fraction}")


def label_pattern(nmi: float, key_concentration: float | None = None, thresholds: PatternThresholds | None = None) -> str:
    """Label one layer `"local"`, `"hybrid"` or `"global"` from its head-averaged measures (CLS excluded).

    Rule (defaults in brackets):

    1. NMI < `global_below` [0.08] -> **global** (all queries share nearly one map);
    2. NMI >= `local_at_least` [0.30] -> **local** (each query looks at its own neighbourhood);
    3. in between, **hybrid** if `key_concentration` >= `min_key_concentration` [0.01] (the queries also share a
       concentrated map, the foreground), else **local** (a broad window with no shared component). Without a
       key concentration, the band is hybrid.

    Calibration on a 14x14 patch grid (224 px, patch 16), CLS excluded: identity map NMI 1; Gaussian windows of
    sigma 0.5 / 1 / 2 / 3 patches NMI 0.76 / 0.50 / 0.28 / 0.16 with key concentration < 0.003; a window of sigma 1
    mixed with one shared foreground blob at weights 0.8 / 0.65 / 0.5 / 0.35 / 0.2 NMI 0.35 / 0.27 / 0.20 / 0.13 /
    0.07 with key concentration 0.010 / 0.027 / 0.052 / 0.084 / 0.126; the shared blob alone NMI 0. NMI is
    normalised by log N, so much smaller grids (e.g. 4x4) compress the range: pass your own thresholds there.

    Args:
        nmi: The layer's NMI.
        key_concentration: The layer's key concentration (see `attention_measures`), optional.
        thresholds: The rule's thresholds (defaults when `None`).
    """
    th = thresholds or PatternThresholds()
    if not math.isfinite(nmi):
        raise ValueError(f"NMI must be finite, got {nmi}")
    if nmi < th.global_below:
        return "global"
    if nmi >= th.local_at_least:
        return "local"
    if key_concentration is not None and key_concentration < th.min_key_concentration:
        return "local"
    return "hybrid"


def label_heads(head_nmi: list[float], head_key_concentration: list[float] | None = None,
                thresholds: PatternThresholds | None = None) -> list[str]:
    """Label every head of one layer with `label_pattern`, from the head's own NMI and key concentration (each the
    mean over images). Without per-head key concentrations, the NMI band is hybrid (as in `label_pattern`)."""
    concentrations = list(head_key_concentration) if head_key_concentration else [None] * len(head_nmi)
    if len(concentrations) != len(head_nmi):
        raise ValueError(f"{len(head_nmi)} head NMI values but {len(concentrations)} head key concentrations")
    return [label_pattern(float(v), c, thresholds) for v, c in zip(head_nmi, concentrations)]


def head_mix(head_labels: list[str]) -> dict[str, int]:
    """How many heads of a layer carry each label: `{"local": n, "hybrid": n, "global": n}`."""
    return {name: sum(1 for lab in head_labels if lab == name) for name in PATTERNS}


def label_layer(averaged_label: str, head_labels: list[str] | None = None,
                thresholds: PatternThresholds | None = None) -> str:
    """A layer's label from its heads' labels (`label_heads`) and its head-averaged label (`label_pattern`).

    Rule:

    1. without head labels, the head-averaged label;
    2. **hybrid** if at least `min_hybrid_head_fraction` [0.5] of the heads are hybrid on their own;
    3. otherwise the more common of the local and global head labels; on a tie, the head-averaged label unless
       that is hybrid, then **local** (a layer is never called hybrid because its local and global heads average
       into the band: e.g. heads at NMI 0.34, 0.11, 0.27 whose queries each attend to their own neighbourhood, with
       no shared map, are three local heads, so the layer is local).

    Args:
        averaged_label: `label_pattern` of the head-averaged measures.
        head_labels: The label of every head (optional).
        thresholds: The rule's thresholds (defaults when `None`).
    """
    th = thresholds or PatternThresholds()
    if not head_labels:
        return averaged_label
    mix = head_mix(head_labels)
    if mix["hybrid"] >= th.min_hybrid_head_fraction * len(head_labels):
        return "hybrid"
    if mix["local"] != mix["global"]:
        return "local" if mix["local"] > mix["global"] else "global"
    return averaged_label if averaged_label != "hybrid" else "local"


def choose_teacher_layer(report: "AttentionReport", thresholds: PatternThresholds | None = None) -> int:
    """Choose the NMI-HAD teacher layer from an attention report: the deepest clearly hybrid layer (0-based).

    Justification. UNIP distils one teacher layer's attention into the student's last layer, and the paper shows that
    the hybrid pattern (each query attends to its neighbourhood *and* to the foreground shared by all queries) is the
    one that helps segmentation: local layers carry no semantics, global layers lose the spatial detail. Within the
    hybrid layers, depth adds semantics, and the layers the paper picks are the deepest hybrid ones before the
    global layers take over: layer 18 of 24 for MAE-L, 9 of 12 for DINO-B, 21 of 24 for iBOT-L (1-based; 17, 8 and 20
    here). So:

    Layers are labelled as in `AttentionReport.relabel`: from their heads when the report has per-head measures
    (`label_layer`: at least half the heads hybrid), else from the head-averaged NMI, so a layer whose local and
    global heads only average into the hybrid band is never chosen.

    1. among layers labelled hybrid whose NMI is at least `min_hybrid_margin` inside the hybrid band, take the deepest;
    2. otherwise the deepest hybrid layer;
    3. if no layer is hybrid, the layer whose NMI is closest to the centre of the hybrid band (deeper on ties), with a
       warning, since the model then has no hybrid layer to distil.

    Args:
        report: An `AttentionReport`.
        thresholds: Labelling thresholds; defaults to the report's own.

    Returns:
        The 0-based index of the teacher layer.
    """
    return _choose_teacher_layer(report, thresholds)[0]


def _choose_teacher_layer(report: "AttentionReport", thresholds: PatternThresholds | None = None) -> tuple[int, str]:
    th = thresholds or PatternThresholds(**report.thresholds)
    nmi = report.nmi_mean
    if not nmi:
        raise ValueError("the report has no layers")
    labels = _layer_labels(report, th)
    hybrid = [i for i, lab in enumerate(labels) if lab == "hybrid"]
    clear = [
        i for i in hybrid if nmi[i] - th.global_below >= th.min_hybrid_margin and th.local_at_least - nmi[i] >= th.min_hybrid_margin
    ]
    if clear:
        i = clear[-1]
        return i, f"deepest clearly hybrid layer (NMI {nmi[i]:.3f} in [{th.global_below}, {th.local_at_least}))"
    if hybrid:
        i = hybrid[-1]
        return i, f"deepest hybrid layer (NMI {nmi[i]:.3f}, close to a threshold)"
    centre = 0.5 * (th.global_below + th.local_at_least)
    i = min(range(len(nmi)), key=lambda j: (round(abs(nmi[j] - centre), 3), -j))
    logger.warning("no hybrid layer found; falling back to layer %d, whose NMI is closest to the hybrid band", i)
    return i, f"no hybrid layer; layer with NMI closest to the hybrid band centre {centre:.3f} (NMI {nmi[i]:.3f})"



@dataclass
class AttentionReport:
    """Layer-wise attention-pattern measures of one model on a set of images (JSON-serialisable).

    Per-layer values are the mean over heads of each image's value, then mean and standard deviation over images.
    Per-head values (`head_*`, one list per layer) are mean and standard deviation over images. NMI excludes the CLS
    token unless named `nmi_with_cls`; distances are in patches; entropies in nats. Layer indices are 0-based.

    Args:
        model_name: Checkpoint path, Hub id or class name.
        model_type: `config.model_type` of the analysed model.
        num_layers: Number of analysed layers.
        num_heads: Heads of each layer.
        grid_size: `[rows, cols]` of the patch grid.
        num_prefix_tokens: Special tokens before the patches (CLS, distillation, registers).
        image_size: `[height, width]` of the analysed images.
        num_images: Images measured.
        skipped_images: Images that could not be read, and entries the folder scan skipped (bad names, FIFOs, broken links).
        thresholds: The labelling rule's thresholds (`PatternThresholds` as a dict).
        labels: Pattern label per layer (`label_layer`: from the heads' labels when per-head measures exist).
        head_labels: Pattern label of every head, one list per layer (`label_heads`).
        head_mix: Per layer, how many heads are local, hybrid and global.
        teacher_layer: `choose_teacher_layer` of this report.
        teacher_reason: Why that layer was chosen.
        timings: Seconds spent in the forward passes, the measures and the image preprocessing.

    The `key_concentration_*` lists hold 1 - H(K)/log P per layer (see `attention_measures`), used by the rule;
    `head_key_concentration_*` the same per head (empty in reports written before per-head labelling).
    """

    model_name: str
    model_type: str
    num_layers: int
    num_heads: list[int]
    grid_size: list[int]
    num_prefix_tokens: int
    image_size: list[int]
    num_images: int
    nmi_mean: list[float]
    nmi_std: list[float]
    nmi_with_cls_mean: list[float]
    nmi_with_cls_std: list[float]
    distance_mean: list[float]
    distance_std: list[float]
    entropy_mean: list[float]
    entropy_std: list[float]
    key_concentration_mean: list[float]
    key_concentration_std: list[float]
    head_nmi_mean: list[list[float]]
    head_nmi_std: list[list[float]]
    head_distance_mean: list[list[float]]
    head_distance_std: list[list[float]]
    head_entropy_mean: list[list[float]]
    head_entropy_std: list[list[float]]
    head_key_concentration_mean: list[list[float]] = field(default_factory=list)
    head_key_concentration_std: list[list[float]] = field(default_factory=list)
    skipped_images: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=lambda: dataclasses.asdict(PatternThresholds()))
    labels: list[str] = field(default_factory=list)
    head_labels: list[list[str]] = field(default_factory=list)
    head_mix: list[dict[str, int]] = field(default_factory=list)
    teacher_layer: int | None = None
    teacher_reason: str = ""
    layer_indexing: str = "0-based"
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not self.labels and self.nmi_mean:
            self.relabel()

    def relabel(self, thresholds: PatternThresholds | None = None) -> "AttentionReport":
        """Recompute the labels and the teacher layer (with new thresholds, if given); returns `self`."""
        if thresholds is not None:
            self.thresholds = dataclasses.asdict(thresholds)
        th = PatternThresholds(**self.thresholds)
        self.head_labels = _head_labels(self, th)
        self.head_mix = [head_mix(labels) for labels in self.head_labels]
        self.labels = _layer_labels(self, th)
        self.teacher_layer, self.teacher_reason = _choose_teacher_layer(self, th)
        return self

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the report (JSON types only)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AttentionReport":
        """Rebuild a report from `to_dict()` output, ignoring unknown keys (forward compatibility)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON (parent folders created) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AttentionReport":
        """Read a report written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def format_table(self) -> str:
        """A fixed-width per-layer table (0-based layers) with NMI, NMI with CLS, distance, entropy and label."""
        header = (f"{'layer':>5}  {'NMI':>13}  {'NMI+CLS':>7}  {'distance':>14}  {'entropy':>7}  {'key conc':>8}  "
                  f"{'heads L/H/G':>11}  pattern")
        lines = [f"{self.model_name}: {self.num_images} images, grid {self.grid_size[0]}x{self.grid_size[1]}, "
                 f"layers 0-based", header, "-" * len(header)]
        for i in range(self.num_layers):
            mark = "  <- teacher" if i == self.teacher_layer else ""
            mix = self.head_mix[i] if i < len(self.head_mix) else None
            heads = f"{mix['local']}/{mix['hybrid']}/{mix['global']}" if mix else "-"
            lines.append(
                f"{i:>5}  {self.nmi_mean[i]:>6.3f}±{self.nmi_std[i]:<6.3f}  {self.nmi_with_cls_mean[i]:>7.3f}  "
                f"{self.distance_mean[i]:>6.2f}±{self.distance_std[i]:<7.2f}  {self.entropy_mean[i]:>7.3f}  "
                f"{self.key_concentration_mean[i]:>8.3f}  {heads:>11}  {self.labels[i]}{mark}"
            )
        return "\n".join(lines)


def _head_labels(report: "AttentionReport", th: PatternThresholds) -> list[list[str]]:
    """Per-head labels of every layer (empty when the report has no per-head NMI)."""
    heads = getattr(report, "head_nmi_mean", None) or []
    if len(heads) != len(report.nmi_mean):
        return []
    concentrations = getattr(report, "head_key_concentration_mean", None) or []
    if len(concentrations) != len(heads):
        concentrations = [None] * len(heads)
    return [label_heads(nmi, conc, th) for nmi, conc in zip(heads, concentrations)]


def _layer_labels(report: "AttentionReport", th: PatternThresholds) -> list[str]:
    averaged = [label_pattern(v, c, th) for v, c in zip(report.nmi_mean, _concentrations(report))]
    heads = _head_labels(report, th)
    if not heads:
        return averaged
    return [label_layer(avg, labels, th) for avg, labels in zip(averaged, heads)]


def _concentrations(report: "AttentionReport") -> list[float | None]:
    values = getattr(report, "key_concentration_mean", None)
    return list(values) if values else [None] * len(report.nmi_mean)


__all__ = ["AttentionReport", "PatternThresholds", "choose_teacher_layer", "label_heads", "label_layer", "label_pattern"]
