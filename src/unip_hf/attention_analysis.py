"""Attention-pattern analysis for vision transformers, after UNIP (Zhang et al., "UNIP: Rethinking Pre-trained Attention
Patterns for Infrared Semantic Segmentation", ICLR 2025).

Implements the layer-wise measures of the paper (normalised mutual information between queries and keys, mean
attention distance, attention entropy) on batched attention probabilities, `analyze_attention` for UNIP models and
transformers ViT-family models, the local / hybrid / global labelling rule, the NMI-HAD teacher-layer choice
(`choose_teacher_layer`) and the figures (`plot_layer_curves`, `plot_attention_maps`). Layer indices are 0-based
everywhere: the paper's "layer 18 of 24" is layer 17 here.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .files import IMAGE_EXTENSIONS, FileScan
from .image_processing_unip import INFRARED_MEAN as UNIP_MEAN
from .image_processing_unip import INFRARED_STD as UNIP_STD
from .image_processing_unip import UnipImageProcessor, decode_intensity, load_infrared_image

logger = logging.getLogger(__name__)

PATTERNS = ("local", "hybrid", "global")
_TINY = 1e-30


# ---------------------------------------------------------------------------------------------------------------------
# Measures on attention probabilities
# ---------------------------------------------------------------------------------------------------------------------


def patch_distance_matrix(grid_size: tuple[int, int] | int, device: torch.device | str | None = None) -> torch.Tensor:
    """Euclidean distances between the patches of a grid, in patches.

    Args:
        grid_size: `(rows, cols)` of the patch grid, or one int for a square grid.
        device: Device of the returned tensor.

    Returns:
        A float32 tensor of shape `[rows * cols, rows * cols]`, patches in row-major order.
    """
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else (int(grid_size[0]), int(grid_size[1]))
    yy, xx = torch.meshgrid(torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32), indexing="ij")
    coords = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=-1)
    return torch.cdist(coords, coords).to(device)


def _select_tokens(attn: torch.Tensor, num_prefix_tokens: int, include_cls: bool) -> torch.Tensor:
    """The query x key block of the tokens kept for a measure (patches, plus CLS when `include_cls`); not renormalised."""
    if not include_cls or num_prefix_tokens == 0:
        return attn[..., num_prefix_tokens:, num_prefix_tokens:]
    if num_prefix_tokens == 1:
        return attn
    keep = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(num_prefix_tokens, attn.shape[-1])]).to(attn.device)
    return attn.index_select(-2, keep).index_select(-1, keep)


def _plogp_sum(x: torch.Tensor) -> torch.Tensor:
    """sum_k x log x over the last axis (0 log 0 = 0); about twice as fast as `xlogy(x, x).sum(-1)` on CPU."""
    return torch.linalg.vecdot(x, x.clamp_min(_TINY).log_())


def _row_statistics(block: torch.Tensor, plogp_sum: torch.Tensor | None = None, mass: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor]:
    """Statistics of the rows of a (possibly unnormalised) attention block, as if every row were renormalised.

    Rows whose mass is exactly zero (all of it went to removed special tokens) have no distribution; they contribute
    zero to every sum instead of producing NaN.

    Args:
        block: `[B, H, Q, K]` non-negative weights (only used for what is not given).
        plogp_sum: `sum_k a log a` per row, if already computed.
        mass: Row sums, if already computed.

    Returns:
        A dict with `mass` (row sums, [B, H, Q]), `inv_mass` (0 for empty rows), `neg_entropy` (sum p log p of each
        renormalised row) and `valid` (rows with positive mass).
    """
    if mass is None:
        mass = block.sum(-1)
    valid = mass > 0
    safe_mass = torch.where(valid, mass, torch.ones_like(mass))
    inv_mass = torch.where(valid, safe_mass.reciprocal(), torch.zeros_like(mass))
    if plogp_sum is None:
        plogp_sum = _plogp_sum(block)
    # sum_k (a/s) log(a/s) = (1/s) sum_k a log a - log s
    neg_entropy = torch.where(valid, plogp_sum * inv_mass - torch.log(safe_mass), torch.zeros_like(mass))
    return {"mass": mass, "inv_mass": inv_mass, "neg_entropy": neg_entropy, "valid": valid}


def _finish_nmi(mutual_information: torch.Tensor, h_key: torch.Tensor, num_queries: int) -> torch.Tensor:
    denominator = torch.sqrt(math.log(num_queries) * h_key.clamp_min(0.0))
    nmi = torch.where(denominator > 1e-12, mutual_information / denominator.clamp_min(1e-12), torch.zeros_like(h_key))
    return nmi.clamp(0.0, 1.0)


def _nmi_from_block(
    block: torch.Tensor, stats: dict[str, torch.Tensor], return_key_entropy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """NMI of one square attention block per (batch, head); see `normalized_mutual_information`.

    With `return_key_entropy`, also returns H(K), the entropy of the map shared by the queries, p(k)."""
    num_queries = block.shape[-2]
    inv_mass = stats["inv_mass"]
    # p(k) = mean_q A[q, k] of the renormalised rows (a batched vector-matrix product, one pass over the block)
    p_key = (inv_mass.unsqueeze(-2) @ block).squeeze(-2) / num_queries
    h_key = -torch.special.xlogy(p_key, p_key).sum(-1)
    # MI = mean_q sum_k A[q,k] log(A[q,k] / p(k)) = mean_q KL(A[q] || p): written as a KL so that a map shared by
    # every query gives exactly 0 up to second-order rounding.
    log_p_key = torch.log(p_key.clamp_min(_TINY))
    cross = (block * log_p_key.unsqueeze(-2)).sum(-1) * inv_mass
    mutual_information = (stats["neg_entropy"] - cross).mean(-1)
    nmi = _finish_nmi(mutual_information, h_key, num_queries)
    return (nmi, h_key) if return_key_entropy else nmi


def normalized_mutual_information(
    attentions: torch.Tensor, num_prefix_tokens: int = 1, include_cls: bool = False
) -> torch.Tensor:
    """Normalised mutual information between queries and keys of attention maps (UNIP's pattern measure).

    With p(q) = 1/N, p(k|q) = A[q, k] and p(k) = mean_q A[q, k]:
    MI = sum_q sum_k p(q) A[q, k] log(A[q, k] / p(k)) and NMI = MI / sqrt(H(Q) H(K)), H(Q) = log N, H(K) the entropy of
    p(k). NMI is 1 when every query attends only to itself (identity map) and 0 when all queries share one map.

    Args:
        attentions: Post-softmax attention probabilities of shape `[B, H, N, N]` (any float dtype and device; the
            maths is done in float32).
        num_prefix_tokens: Number of special tokens before the patches (CLS, distillation, register tokens).
        include_cls: Keep the CLS token (index 0) as a query and key. Other special tokens are always dropped. Rows
            are renormalised over the kept keys.

    Returns:
        A float32 tensor of shape `[B, H]` with values in [0, 1].
    """
    block = _select_tokens(attentions.float(), num_prefix_tokens, include_cls)
    return _nmi_from_block(block, _row_statistics(block))


def mean_attention_distance(
    attentions: torch.Tensor, grid_size: tuple[int, int] | int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Mean attention distance in patches: sum_k A[q, k] * ||pos(q) - pos(k)||, averaged over the patch queries.

    Special tokens are dropped and rows renormalised over the patch keys.

    Args:
        attentions: Attention probabilities `[B, H, N, N]`.
        grid_size: `(rows, cols)` of the patch grid (rows * cols = N - num_prefix_tokens).
        num_prefix_tokens: Special tokens before the patches.

    Returns:
        A float32 tensor `[B, H]`.
    """
    block = _select_tokens(attentions.float(), num_prefix_tokens, include_cls=False)
    stats = _row_statistics(block)
    distances = patch_distance_matrix(grid_size, block.device)
    _check_grid(block, distances)
    return ((block * distances).sum(-1) * stats["inv_mass"]).mean(-1)


def attention_entropy(attentions: torch.Tensor, num_prefix_tokens: int = 1, normalized: bool = False) -> torch.Tensor:
    """Entropy (nats) of each query's attention over the patch keys, averaged over the patch queries.

    Args:
        attentions: Attention probabilities `[B, H, N, N]`.
        num_prefix_tokens: Special tokens before the patches (dropped; rows renormalised).
        normalized: Divide by log(number of patches), giving a value in [0, 1] (1 = uniform attention).

    Returns:
        A float32 tensor `[B, H]`.
    """
    block = _select_tokens(attentions.float(), num_prefix_tokens, include_cls=False)
    entropy = -_row_statistics(block)["neg_entropy"].mean(-1)
    return entropy / math.log(block.shape[-1]) if normalized else entropy


def _check_grid(block: torch.Tensor, distances: torch.Tensor) -> None:
    if block.shape[-1] != distances.shape[-1]:
        raise ValueError(
            f"the attention has {block.shape[-1]} patch tokens but the grid has {distances.shape[-1]} patches; "
            "check grid_size and num_prefix_tokens"
        )


def _extended_distances(distances: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """`[N, N]` distances with zero rows and columns for the special tokens (so that they add nothing)."""
    t = num_prefix_tokens
    n = distances.shape[-1] + t
    ext = distances.new_zeros(n, n)
    ext[t:, t:] = distances
    return ext


def _fast_measures(
    attn: torch.Tensor, num_prefix_tokens: int, distances_ext: torch.Tensor, with_cls: bool = True
) -> dict[str, torch.Tensor]:
    """All measures of one layer from its full `[B, H, N, N]` map, without copying the patch block.

    Every quantity over a kept token set S (patches; or CLS + patches) is written as a pass over the whole
    contiguous map with S as a mask: row masses and p(k) are matrix-vector products, sum p log p is one `log` pass
    minus the (small) special-token columns, the cross term is one more matrix-vector product and the distance one
    multiply-and-sum with a distance matrix that is zero on the special tokens. Both NMI variants share the passes.
    """
    t = num_prefix_tokens
    n = attn.shape[-1]
    masks = attn.new_ones(n, 2 if with_cls and t >= 1 else 1)
    masks[:t] = 0.0
    if masks.shape[1] == 2:
        masks[0, 1] = 1.0
    counts = masks.sum(0)  # queries (= keys) kept by each variant, [V]
    mass = attn @ masks  # [B, H, N, V]
    buf = torch.clamp_min(attn, _TINY)
    buf.log_().mul_(attn)  # a log a, 0 for a == 0
    plogp = buf.sum(-1, keepdim=True)
    if t:
        plogp = plogp - buf[..., :t] @ (1.0 - masks[:t])  # drop the removed special-token keys
    else:
        plogp = plogp.expand_as(mass)
    keep_rows = masks.bool()  # [N, V]: query q is kept by variant v
    valid = (mass > 0) & keep_rows
    safe_mass = torch.where(valid, mass, torch.ones_like(mass))
    inv_mass = torch.where(valid, safe_mass.reciprocal(), torch.zeros_like(mass))
    neg_entropy = torch.where(valid, plogp * inv_mass - torch.log(safe_mass), torch.zeros_like(mass))
    # p(k) of each variant: mean over kept queries of the renormalised rows, restricted to kept keys
    p_key = (inv_mass.transpose(-1, -2) @ attn) / counts[:, None] * masks.T  # [B, H, V, N]
    h_key = -torch.special.xlogy(p_key, p_key).sum(-1)  # [B, H, V]
    log_p = torch.log(p_key.clamp_min(_TINY)) * masks.T
    cross = (attn @ log_p.transpose(-1, -2)) * inv_mass  # [B, H, N, V]
    mutual_information = (neg_entropy - cross).sum(-2) / counts
    denominator = torch.sqrt(torch.log(counts) * h_key.clamp_min(0.0))
    nmi = torch.where(denominator > 1e-12, mutual_information / denominator.clamp_min(1e-12), torch.zeros_like(h_key))
    nmi = nmi.clamp(0.0, 1.0)
    num_patches = float(counts[0])
    torch.mul(attn, distances_ext, out=buf)
    out = {
        "nmi": nmi[..., 0],
        "key_concentration": (1.0 - h_key[..., 0] / math.log(num_patches)).clamp(0.0, 1.0),
        "distance": (buf.sum(-1) * inv_mass[..., 0]).sum(-1) / num_patches,
        "entropy": (-neg_entropy[..., 0].sum(-1) / num_patches).clamp_min(0.0),
    }
    if masks.shape[1] == 2:
        out["nmi_with_cls"] = nmi[..., 1]
    return out


def _layers_measures(
    attentions: Sequence[torch.Tensor], num_prefix_tokens: int, distances: torch.Tensor
) -> list[dict[str, np.ndarray]]:
    """Measures of every layer as float64 arrays `[B, H]` (`nmi_with_cls` equals `nmi` without a CLS token)."""
    ext = _extended_distances(distances, num_prefix_tokens)
    results = []
    for attn in attentions:
        out = _fast_measures(attn.float().contiguous(), num_prefix_tokens, ext)
        out.setdefault("nmi_with_cls", out["nmi"])
        results.append({k: v.detach().cpu().numpy().astype(np.float64) for k, v in out.items()})
    return results


def attention_measures(
    attentions: torch.Tensor,
    grid_size: tuple[int, int] | int,
    num_prefix_tokens: int = 1,
    with_cls: bool = True,
    distances: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All per-(image, head) measures of one layer in one pass over the attention maps.

    Works on the whole contiguous map with the kept tokens as masks (no copy of the patch block), so that the
    expensive element-wise work (one `log` pass, a few matrix-vector products) is shared by all measures and both
    NMI variants. Agrees with `normalized_mutual_information`, `mean_attention_distance` and `attention_entropy`.

    Args:
        attentions: Attention probabilities `[B, H, N, N]`.
        grid_size: `(rows, cols)` of the patch grid.
        num_prefix_tokens: Special tokens before the patches (CLS first).
        with_cls: Also compute `nmi_with_cls` (CLS kept as query and key).
        distances: Precomputed `patch_distance_matrix(grid_size)` on the attention's device (optional).

    Returns:
        Float32 tensors of shape `[B, H]`: `nmi` (patches only), `nmi_with_cls` (when `with_cls` and a prefix token
        exists), `distance` (patches), `entropy` (nats, patches) and `key_concentration` (1 - H(K) / log P, P the
        number of patches: 0 when the map shared by the queries, p(k), is uniform, larger when the queries agree on
        some keys, e.g. the foreground).
    """
    attn = attentions.float()
    t = num_prefix_tokens
    if distances is None:
        distances = patch_distance_matrix(grid_size, attn.device)
    if attn.shape[-1] - t != distances.shape[-1]:
        raise ValueError(
            f"the attention has {attn.shape[-1] - t} patch tokens but the grid has {distances.shape[-1]} patches; "
            "check grid_size and num_prefix_tokens"
        )
    out = _fast_measures(attn.contiguous(), t, _extended_distances(distances, t), with_cls=with_cls)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Pattern labels and teacher-layer choice
# ---------------------------------------------------------------------------------------------------------------------


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
    """

    global_below: float = 0.08
    local_at_least: float = 0.30
    min_key_concentration: float = 0.01
    min_hybrid_margin: float = 0.01

    def __post_init__(self):
        if not 0.0 <= self.global_below < self.local_at_least <= 1.0:
            raise ValueError(f"need 0 <= global_below < local_at_least <= 1, got {self}")


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


def choose_teacher_layer(report: "AttentionReport", thresholds: PatternThresholds | None = None) -> int:
    """Choose the NMI-HAD teacher layer from an attention report: the deepest clearly hybrid layer (0-based).

    Justification. UNIP distils one teacher layer's attention into the student's last layer, and the paper shows that
    the hybrid pattern (each query attends to its neighbourhood *and* to the foreground shared by all queries) is the
    one that helps segmentation: local layers carry no semantics, global layers lose the spatial detail. Within the
    hybrid layers, depth adds semantics, and the layers the paper picks are the deepest hybrid ones before the
    global layers take over: layer 18 of 24 for MAE-L, 9 of 12 for DINO-B, 21 of 24 for iBOT-L (1-based; 17, 8 and 20
    here). So:

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
    labels = [label_pattern(v, c, th) for v, c in zip(nmi, _concentrations(report))]
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


# ---------------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------------


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
        labels: Pattern label per layer.
        teacher_layer: `choose_teacher_layer` of this report.
        teacher_reason: Why that layer was chosen.
        timings: Seconds spent in the forward passes, the measures and the image preprocessing.

    The `key_concentration_*` lists hold 1 - H(K)/log P per layer (see `attention_measures`), used by the rule.
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
    skipped_images: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=lambda: dataclasses.asdict(PatternThresholds()))
    labels: list[str] = field(default_factory=list)
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
        self.labels = [label_pattern(v, c, th) for v, c in zip(self.nmi_mean, _concentrations(self))]
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
        header = f"{'layer':>5}  {'NMI':>13}  {'NMI+CLS':>7}  {'distance':>14}  {'entropy':>7}  {'key conc':>8}  pattern"
        lines = [f"{self.model_name}: {self.num_images} images, grid {self.grid_size[0]}x{self.grid_size[1]}, "
                 f"layers 0-based", header, "-" * len(header)]
        for i in range(self.num_layers):
            mark = "  <- teacher" if i == self.teacher_layer else ""
            lines.append(
                f"{i:>5}  {self.nmi_mean[i]:>6.3f}±{self.nmi_std[i]:<6.3f}  {self.nmi_with_cls_mean[i]:>7.3f}  "
                f"{self.distance_mean[i]:>6.2f}±{self.distance_std[i]:<7.2f}  {self.entropy_mean[i]:>7.3f}  "
                f"{self.key_concentration_mean[i]:>8.3f}  {self.labels[i]}{mark}"
            )
        return "\n".join(lines)


def _concentrations(report: "AttentionReport") -> list[float | None]:
    values = getattr(report, "key_concentration_mean", None)
    return list(values) if values else [None] * len(report.nmi_mean)


# ---------------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------------


def find_images(sources: str | os.PathLike | Sequence[str | os.PathLike], skipped: list[str] | None = None) -> list[Path]:
    """Image files named by `sources`: files, or folders searched recursively (following symbolic links).

    Files are taken as given (their readability is checked later); folders contribute files with an image extension,
    sorted, through the package's walker (`unip_hf.files`): each real file once, link loops not followed, names that
    are not UTF-8, broken links and non-regular files (FIFOs) skipped, never opened.

    Args:
        sources: A path or a list of paths.
        skipped: Optional list that receives one ``"path: reason"`` line per skipped entry.

    Raises:
        FileNotFoundError: a named path does not exist (a broken link is skipped instead).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    scan = FileScan()
    for src in sources:
        if not os.path.lexists(src):
            raise FileNotFoundError(f"no such image file or folder: {src}")
        scan.add(src, IMAGE_EXTENSIONS)
    for item in scan.skipped:
        logger.warning("skipping %s", item)
        if skipped is not None:
            skipped.append(str(item))
    return [Path(f) for f in scan.files]


def _spread_order(n: int, k: int | None) -> list[int]:
    """Indices 0..n-1 ordered so that the first k are spread evenly over the list (the rest follow, as fallbacks)."""
    if k is None or k >= n:
        return list(range(n))
    first = sorted({int(round(i * (n - 1) / max(k - 1, 1))) for i in range(k)}) if k > 1 else [0]
    rest = [i for i in range(n) if i not in set(first)]
    return first + rest


class SimplePreprocessor:
    """Intensity -> resize -> normalise -> replicate channels (the UNIP input pipeline).

    Used when no package or model image processor applies. Every image becomes intensity through the package's one
    decoding function (`decode_intensity`: 8-bit / 255, colour through luma, 16-bit percentile stretch, float kept),
    as UNIP does for all of its pre-training data, so RGB models see a gray image repeated on their three channels.

    Args:
        image_size: Output side (square).
        mean: Normalisation mean (one value, or per channel).
        std: Normalisation standard deviation (one value, or per channel).
        num_channels: Channels of the output.
    """

    def __init__(self, image_size: int, mean: float | Sequence[float] = UNIP_MEAN, std: float | Sequence[float] = UNIP_STD,
                 num_channels: int = 3):
        self.image_size = int(image_size)
        self.num_channels = int(num_channels)
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arrays = []
        for im in images:
            arr = decode_intensity(im)
            resized = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32)).resize((self.image_size, self.image_size), Image.BILINEAR)
            arrays.append(np.asarray(resized, dtype=np.float32))
        x = torch.from_numpy(np.stack(arrays)).unsqueeze(1).clamp(0.0, 1.0)
        x = x.expand(-1, self.num_channels, -1, -1)
        return (x - self.mean) / self.std


def _processor_callable(image_processor, model_config, image_size: int, num_channels: int):
    """A function list[PIL] -> pixel_values [B, C, S, S] for the given (or default) image processor.

    - a plain callable is used as is;
    - a `UnipImageProcessor` (given, or built for UNIP models when none is given) runs with the size forced to
      `image_size` x `image_size` and the model's channel count;
    - another transformers image processor contributes its `image_mean` / `image_std` to `SimplePreprocessor`, so
      that every model sees the same grayscale image on the same patch grid;
    - otherwise `SimplePreprocessor` with UNIP's statistics.
    """
    is_unip_processor = isinstance(image_processor, UnipImageProcessor)
    if image_processor is not None and not is_unip_processor and not hasattr(image_processor, "image_mean"):
        if callable(image_processor):
            return image_processor
    if image_processor is None and getattr(model_config, "model_type", None) == "unip":
        image_processor, is_unip_processor = UnipImageProcessor(num_channels=num_channels), True
    if is_unip_processor:
        def run_unip(images):
            out = image_processor(
                images, size={"height": image_size, "width": image_size}, do_resize=True, do_center_crop=False,
                num_channels=num_channels, return_tensors="pt",
            )["pixel_values"]
            return out.float()

        return run_unip
    if image_processor is not None:
        mean = getattr(image_processor, "image_mean", None) or UNIP_MEAN
        std = getattr(image_processor, "image_std", None) or UNIP_STD
        if isinstance(mean, (list, tuple)) and len(mean) != num_channels:
            mean, std = float(np.mean(mean)), float(np.mean(std))
        return SimplePreprocessor(image_size, mean, std, num_channels)
    return SimplePreprocessor(image_size, UNIP_MEAN, UNIP_STD, num_channels)


# ---------------------------------------------------------------------------------------------------------------------
# Running models
# ---------------------------------------------------------------------------------------------------------------------


def _vision_config(model) -> Any:
    config = model.config
    return getattr(config, "vision_config", None) or config


def require_vision_config(config, name: str = "the model") -> Any:
    """The vision part of a model config (a CLIP-like config's `vision_config`, else the config itself); a
    `ValueError` naming `name` when it is no ViT-family vision model (no `patch_size`: BERT, GPT-2, ...)."""
    vision = getattr(config, "vision_config", None) or config
    if getattr(vision, "patch_size", None) is None:
        raise ValueError(
            f"{name} is a {getattr(config, 'model_type', '?')!r} model ({type(config).__name__}), not a ViT-family "
            "vision model (its config has no patch_size); use a vision transformer such as UNIP, ViT, ViT-MAE, DeiT, "
            "DINOv2 or a CLIP vision tower"
        )
    return vision


def load_vision_backbone(name_or_path: str, name: str | None = None, **from_pretrained_kwargs: Any):
    """Load a ViT-family model with `AutoModel.from_pretrained` for its attention (teacher of NMI-HAD, subject of the
    analysis): its config is checked first (`require_vision_config`), and a class that takes `add_pooling_layer`
    (transformers' `ViTModel`, `DeiTModel`, ...) is built without its pooler, which no caller uses, unless the
    checkpoint holds pooler weights (loading a backbone checkpoint without them, such as a ViT-MAE or
    classification one, would otherwise report `pooler.dense.*` as missing and newly initialised).

    Args:
        name_or_path (`str`): local folder or Hub id.
        name (`str`, *optional*): how errors name the model (e.g. `"--teacher_name_or_path 'x'"`).
        **from_pretrained_kwargs: passed to `AutoConfig` / `AutoModel.from_pretrained` (e.g. `trust_remote_code`).
    """
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(
        name_or_path, trust_remote_code=from_pretrained_kwargs.get("trust_remote_code", False))
    require_vision_config(config, name or repr(name_or_path))
    try:
        model_class = AutoModel._model_mapping[type(config)]
    except KeyError:  # remote code: the class is only known once loaded
        model_class = None
    if model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        keys = _checkpoint_keys(name_or_path, from_pretrained_kwargs)
        if keys is not None:  # keep a pooler the checkpoint has (dropping it would report its weights as unexpected)
            from_pretrained_kwargs.setdefault("add_pooling_layer",
                                              any(".pooler." in f".{key}" for key in keys))
    return AutoModel.from_pretrained(name_or_path, config=config, **from_pretrained_kwargs)


def _checkpoint_keys(name_or_path: str, kwargs: dict[str, Any]) -> set[str] | None:
    """Parameter names of a safetensors checkpoint (read from its header or index, not its tensors); `None` when
    they cannot be read (e.g. a `pytorch_model.bin` checkpoint)."""
    from safetensors import safe_open
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

    options = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
    try:
        for filename in (SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME):
            path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False, **options)
            if not path:
                continue
            if filename == SAFE_WEIGHTS_INDEX_NAME:
                with open(path, encoding="utf-8") as handle:
                    return set(json.load(handle).get("weight_map", {}))
            with safe_open(path, framework="pt") as handle:
                return set(handle.keys())
    except (OSError, ValueError) as err:
        logger.debug("could not read the parameter names of %s: %s", name_or_path, err)
    return None


def _forward_module(model):
    """The module to call with pixel values (the vision tower of a CLIP-like dual encoder)."""
    if getattr(model.config, "vision_config", None) is not None and hasattr(model, "vision_model"):
        return model.vision_model
    return model


@contextmanager
def eager_attention(model):
    """Switch a transformers model to eager attention (which returns weights) for the duration of the block.

    Restores the previous implementation afterwards, also on error. Models that cannot switch (or already return
    explicit attention, like `UnipViTModel`) are left unchanged.

    Args:
        model: A `PreTrainedModel`.
    """
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switched = False
    if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
            switched = True
        except Exception as err:  # noqa: BLE001
            logger.warning("could not switch %s to eager attention (%s)", type(model).__name__, err)
    try:
        yield model
    finally:
        if switched:
            model.set_attn_implementation(previous)


@contextmanager
def _unmasked(model):
    """Disable random masking of ViTMAE-style models (mask_ratio 0) for the duration of the block."""
    config = _vision_config(model)
    ratio = getattr(config, "mask_ratio", None)
    if ratio:
        config.mask_ratio = 0.0
    try:
        yield
    finally:
        if ratio:
            config.mask_ratio = ratio


def model_attentions(model, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], int, tuple[int, int]]:
    """Run a model once and return its per-layer attention probabilities with the token layout.

    Handles `UnipViTModel`, ViT, DeiT (CLS + distillation token), ViTMAE (masking disabled and the patch order kept
    by passing increasing noise), Dinov2 (with or without register tokens), CLIP vision towers and any model that
    puts its special tokens before the patches.

    Args:
        model: The model (already in eager attention mode when it is a transformers model; see `eager_attention`).
        pixel_values: `[B, C, H, W]` input.

    Returns:
        `(attentions, num_prefix_tokens, grid_size)`: one `[B, H, N, N]` tensor per layer (0-based order), the number
        of special tokens before the patches, and `(rows, cols)` of the patch grid.
    """
    module = _forward_module(model)
    config = _vision_config(model)
    patch = getattr(config, "patch_size", None)
    if patch is None:
        raise ValueError(f"{type(model).__name__} has no patch_size in its config; cannot infer the patch grid")
    patch = patch if isinstance(patch, int) else int(patch[0])
    height, width = pixel_values.shape[-2:]
    grid = (height // patch, width // patch)
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs: dict[str, Any] = {"output_attentions": True, "return_dict": True}
    config_size = getattr(config, "image_size", None)
    config_size = (config_size, config_size) if isinstance(config_size, int) else tuple(config_size or ())
    if "interpolate_pos_encoding" in params and config_size != (height, width):
        kwargs["interpolate_pos_encoding"] = True
    if "noise" in params:  # ViTMAE: argsort of increasing noise is the identity, so the patch order is preserved
        kwargs["noise"] = torch.arange(grid[0] * grid[1], device=pixel_values.device, dtype=torch.float32).expand(
            pixel_values.shape[0], -1
        )
    with _unmasked(model):
        outputs = module(pixel_values=pixel_values, **kwargs)
    attentions = getattr(outputs, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise RuntimeError(
            f"{type(model).__name__} returned no attention weights; it needs an eager attention path "
            "(output_attentions=True)"
        )
    ids_restore = getattr(outputs, "ids_restore", None)
    num_tokens = attentions[0].shape[-1]
    prefix = num_tokens - grid[0] * grid[1]
    if prefix < 0:
        raise RuntimeError(f"{num_tokens} tokens for a {grid[0]}x{grid[1]} patch grid: some patches were dropped (masking?)")
    if ids_restore is not None and not torch.equal(
        ids_restore, torch.arange(ids_restore.shape[1], device=ids_restore.device).expand_as(ids_restore)
    ):
        # The model shuffled the patches: reorder queries and keys back to raster order.
        index = torch.cat([torch.arange(prefix, device=ids_restore.device).expand(ids_restore.shape[0], -1),
                           ids_restore + prefix], dim=1)
        attentions = [_reorder(a, index) for a in attentions]
    return list(attentions), prefix, grid


def _reorder(attn: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    b, h, n, _ = attn.shape
    idx = index[:, None, :, None].expand(b, h, n, n)
    attn = attn.gather(2, idx)
    return attn.gather(3, index[:, None, None, :].expand(b, h, n, n))


def _model_name(model) -> str:
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def _batches(images, image_size: int, batch_size: int, num_images: int | None, preprocess):
    """Yield (pixel_values, names) batches; returns the skipped list through the generator's return value."""
    if isinstance(images, torch.Tensor):
        x = images if images.dim() == 4 else images.unsqueeze(0)
        if num_images is not None:
            x = x[:num_images]
        for start in range(0, x.shape[0], batch_size):
            yield x[start:start + batch_size].float(), [f"tensor[{i}]" for i in range(start, min(start + batch_size, x.shape[0]))]
        return []
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    items: list[Any] = []
    skipped: list[str] = []
    for item in images:
        if isinstance(item, Image.Image):
            items.append(item)
        else:
            items.extend(find_images(item, skipped=skipped))
    if not items:
        raise ValueError("no images found" + (f" ({len(skipped)} skipped: {'; '.join(skipped[:3])})" if skipped else ""))
    order = _spread_order(len(items), num_images)
    batch, names, used = [], [], 0
    for idx in order:
        if num_images is not None and used >= num_images:
            break
        item = items[idx]
        name = f"image[{idx}]" if isinstance(item, Image.Image) else str(item)
        try:  # each image on its own, so that one unreadable or non-finite file is skipped, not the batch
            pixel_values = preprocess([load_infrared_image(item)])
        except Exception as err:  # noqa: BLE001 - any decoding failure: skip, name and count
            reason = str(err)
            reason = reason[len(name) + 2:] if reason.startswith(f"{name}: ") else reason
            logger.warning("skipping unreadable image %s (%s: %s)", name, type(err).__name__, reason)
            skipped.append(f"{name}: {type(err).__name__}: {reason}")
            continue
        batch.append(pixel_values)
        names.append(name)
        used += 1
        if len(batch) == batch_size:
            yield torch.cat(batch), names
            batch, names = [], []
    if batch:
        yield torch.cat(batch), names
    if used == 0:
        raise ValueError(f"none of the {len(items)} images could be read ({len(skipped)} unreadable)")
    return skipped


@torch.inference_mode()
def analyze_attention(
    model,
    images,
    image_size: int | None = None,
    num_images: int | None = None,
    batch_size: int = 8,
    image_processor=None,
    thresholds: PatternThresholds | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    model_name: str | None = None,
    timings: dict[str, float] | None = None,
) -> AttentionReport:
    """Measure the attention patterns of every layer of a vision transformer on a set of images.

    The model runs in eval mode with eager attention for the measurement only (transformers' SDPA returns no
    weights); its previous attention implementation and training mode are restored afterwards.

    Args:
        model: A `UnipViTModel` or a transformers vision transformer (`ViTModel`, `ViTMAEModel`, `DeiTModel`,
            `Dinov2Model`, `Dinov2WithRegistersModel`, `CLIPVisionModel`, ...).
        images: PIL images, image file paths, folders (searched recursively, following symbolic links), a list
            mixing those, or a preprocessed `[B, C, H, W]` tensor of pixel values.
        image_size: Square input side; defaults to the model config's `image_size`. Ignored for tensor input.
        num_images: Use at most this many readable images (spread evenly over the sorted list).
        batch_size: Images per forward pass.
        image_processor: A callable `list[PIL] -> pixel_values`, or a transformers image processor whose
            `image_mean`/`image_std` are used on the grayscale image. `None`: the package's `UnipImageProcessor`
            for UNIP models when available, else grayscale -> resize -> normalise with UNIP's statistics.
        thresholds: Labelling rule thresholds (see `label_pattern`).
        device: Device to run on; defaults to the model's.
        progress: Show a tqdm progress bar.
        model_name: Name stored in the report; defaults to the config's `_name_or_path` or the class name.
        timings: If a dict is given, it receives `forward_s`, `measure_s` and `preprocess_s` (seconds).

    Returns:
        An `AttentionReport`.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    config = _vision_config(model)
    size = int(image_size or (config.image_size if isinstance(config.image_size, int) else config.image_size[0]))
    num_channels = int(getattr(config, "num_channels", 3))
    preprocess = _processor_callable(image_processor, config, size, num_channels)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    thresholds = thresholds or PatternThresholds()
    was_training = model.training
    model.eval()
    per_layer: list[dict[str, list[np.ndarray]]] = []
    layout: dict[str, Any] = {}
    distances = None
    t_forward = t_measure = t_pre = 0.0
    total = None
    if isinstance(images, torch.Tensor):
        total = images.shape[0] if num_images is None else min(num_images, images.shape[0])
    elif num_images is not None:
        total = num_images
    bar = tqdm(total=total, desc="attention analysis", unit="img", disable=not progress)
    gen = _batches(images, size, batch_size, num_images, preprocess)
    skipped: list[str] = []
    n_seen = 0
    try:
        with eager_attention(model):
            while True:
                t0 = time.perf_counter()
                try:
                    pixel_values, names = next(gen)
                except StopIteration as stop:
                    skipped = list(stop.value or [])
                    break
                t1 = time.perf_counter()
                attentions, prefix, grid = model_attentions(model, pixel_values.to(device))
                t2 = time.perf_counter()
                if distances is None:
                    distances = patch_distance_matrix(grid, device)
                    layout = {"prefix": prefix, "grid": grid, "heads": [a.shape[1] for a in attentions],
                              "image_size": list(pixel_values.shape[-2:])}
                    per_layer = [{} for _ in attentions]
                for layer, measures in enumerate(_layers_measures(attentions, prefix, distances)):
                    for key, value in measures.items():
                        per_layer[layer].setdefault(key, []).append(value)
                t3 = time.perf_counter()
                t_pre += t1 - t0
                t_forward += t2 - t1
                t_measure += t3 - t2
                n_seen += pixel_values.shape[0]
                bar.update(pixel_values.shape[0])
    finally:
        bar.close()
        model.train(was_training)
    if n_seen == 0:
        raise ValueError("no images to analyse")
    t4 = time.perf_counter()
    result: dict[str, Any] = {}
    for key in per_layer[0]:
        values = [np.concatenate(layer[key]) for layer in per_layer]  # [images, heads] per layer
        result[f"{key}_mean"] = [float(v.mean(1).mean()) for v in values]
        result[f"{key}_std"] = [float(v.mean(1).std()) for v in values]
        if key not in ("nmi_with_cls", "key_concentration"):
            result[f"head_{key}_mean"] = [v.mean(0).tolist() for v in values]
            result[f"head_{key}_std"] = [v.std(0).tolist() for v in values]
    report = AttentionReport(
        model_name=model_name or _model_name(model),
        model_type=str(getattr(config, "model_type", type(model).__name__)),
        num_layers=len(layout["heads"]),
        num_heads=layout["heads"],
        grid_size=list(layout["grid"]),
        num_prefix_tokens=int(layout["prefix"]),
        image_size=[int(v) for v in layout["image_size"]],
        num_images=n_seen,
        skipped_images=skipped,
        thresholds=dataclasses.asdict(thresholds),
        **result,
    )
    t_measure += time.perf_counter() - t4
    if skipped:
        logger.warning("%d image(s) could not be read and were skipped", len(skipped))
    report.timings = {"forward_s": t_forward, "measure_s": t_measure, "preprocess_s": t_pre}
    if timings is not None:
        timings.update(report.timings)
    return report


@torch.inference_mode()
def query_attention_maps(
    model,
    image: Image.Image | str | os.PathLike | torch.Tensor,
    layers: Sequence[int],
    queries: Sequence[tuple[int, int]],
    image_size: int | None = None,
    image_processor=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Head-averaged attention maps of chosen query patches, for chosen layers, on one image.

    Args:
        model: The model (as for `analyze_attention`).
        image: A PIL image, a path, or a `[C, H, W]` / `[1, C, H, W]` tensor of pixel values.
        layers: 0-based layer indices.
        queries: `(row, col)` patch coordinates of the queries.
        image_size: Square input side (defaults to the config's).
        image_processor: As for `analyze_attention`.

    Returns:
        `(maps, intensity)`: maps of shape `[len(layers), len(queries), rows, cols]` (CLS dropped, rows renormalised
        over the patches) and the image's intensity `[S, S]` in [0, 1] for display.
    """
    config = _vision_config(model)
    size = int(image_size or (config.image_size if isinstance(config.image_size, int) else config.image_size[0]))
    num_channels = int(getattr(config, "num_channels", 3))
    if isinstance(image, torch.Tensor):
        pixel_values = image if image.dim() == 4 else image.unsqueeze(0)
        gray = pixel_values[0].float().mean(0)
        intensity = ((gray - gray.min()) / (gray.max() - gray.min()).clamp_min(1e-8)).numpy()
    else:
        pil = load_infrared_image(image)
        pixel_values = _processor_callable(image_processor, config, size, num_channels)([pil])
        intensity = np.asarray(Image.fromarray(decode_intensity(pil)).resize((size, size), Image.BILINEAR))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model):
            attentions, prefix, grid = model_attentions(model, pixel_values.to(device).float())
    finally:
        model.train(was_training)
    maps = np.zeros((len(layers), len(queries), grid[0], grid[1]), dtype=np.float32)
    for i, layer in enumerate(layers):
        attn = attentions[layer][0].float().mean(0)[prefix:, prefix:]  # [P, P], heads averaged
        attn = attn / attn.sum(-1, keepdim=True).clamp_min(_TINY)
        for j, (r, c) in enumerate(queries):
            maps[i, j] = attn[r * grid[1] + c].reshape(grid).cpu().numpy()
    return maps, np.clip(intensity, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------------

_PATTERN_COLOURS = {"local": "#4c72b0", "hybrid": "#55a868", "global": "#c44e52"}


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as err:
        raise ImportError(
            "the attention-analysis figures need matplotlib: pip install 'unip-hf[plots]'"
        ) from err
    return plt


def plot_layer_curves(
    reports: AttentionReport | Sequence[AttentionReport],
    path: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    title: str | None = None,
):
    """Layer-wise NMI and mean attention distance of one or several models on one figure.

    Left: NMI per layer (mean ± std over images) over the shaded NMI bands of the labelling rule (global below,
    hybrid between, local above the thresholds); each point is ringed with the colour of its layer's final label
    (which also uses the key concentration), and each model's teacher layer is starred. Right: mean attention
    distance in patches. The x axis is the 0-based layer index; each curve ends at its model's last layer.

    Args:
        reports: One report or several (compared on the same axes).
        path: Where to save a PNG (optional).
        names: Legend names (defaults to each report's `model_name`).
        title: Figure title.

    Returns:
        The matplotlib `Figure`.
    """
    plt = _pyplot()
    reports = [reports] if isinstance(reports, AttentionReport) else list(reports)
    names = list(names) if names is not None else [Path(r.model_name).name or r.model_name for r in reports]
    th = PatternThresholds(**reports[0].thresholds)
    fig, (ax_nmi, ax_dist) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    max_layers = max(r.num_layers for r in reports)
    top = max(0.6, max(max(np.add(r.nmi_mean, r.nmi_std)) for r in reports) * 1.1)
    bands = [(0.0, th.global_below, "global"), (th.global_below, th.local_at_least, "hybrid"), (th.local_at_least, top, "local")]
    for lo, hi, name in bands:
        ax_nmi.axhspan(lo, hi, color=_PATTERN_COLOURS[name], alpha=0.10, lw=0)
        ax_nmi.text(1.01, (lo + min(hi, top)) / 2, name, ha="left", va="center", fontsize=9, rotation=90,
                    color=_PATTERN_COLOURS[name], fontweight="bold", transform=ax_nmi.get_yaxis_transform())
    markers = "osD^vP*X"
    for k, (rep, name) in enumerate(zip(reports, names)):
        x = np.arange(rep.num_layers)
        line = ax_nmi.errorbar(x, rep.nmi_mean, yerr=rep.nmi_std, marker=markers[k % len(markers)], ms=5, capsize=2,
                               lw=1.6, label=name)
        colour = line[0].get_color()
        ax_nmi.scatter(x, rep.nmi_mean, s=70, facecolors="none", linewidths=1.6, zorder=3,
                       edgecolors=[_PATTERN_COLOURS[lab] for lab in rep.labels])
        ax_dist.errorbar(x, rep.distance_mean, yerr=rep.distance_std, marker=markers[k % len(markers)], ms=5,
                         capsize=2, lw=1.6, color=colour, label=name)
        if rep.teacher_layer is not None:
            t = rep.teacher_layer
            ax_nmi.plot([t], [rep.nmi_mean[t]], marker="*", ms=17, color=colour, mec="black", mew=0.8, ls="none",
                        label=f"{name}: teacher layer {t}")
    ax_nmi.set_ylim(0, top)
    ax_nmi.set_xlim(-0.5, max_layers - 0.5)
    ax_nmi.set_xlabel("layer (0-based)")
    ax_nmi.set_ylabel("NMI (CLS excluded)")
    ax_nmi.set_title("Query-key NMI per layer: high = local, low = global")
    ax_nmi.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 1.0), framealpha=0.85)
    ax_dist.set_xlim(-0.5, max_layers - 0.5)
    ax_dist.set_xlabel("layer (0-based)")
    ax_dist.set_ylabel("mean attention distance (patches)")
    ax_dist.set_title("Mean attention distance per layer")
    ax_dist.legend(fontsize=8, loc="best", framealpha=0.85)
    for ax in (ax_nmi, ax_dist):
        ax.set_xticks(np.arange(max_layers))
        ax.grid(alpha=0.3)
    detail = f"{reports[0].num_images} images, {reports[0].grid_size[0]}x{reports[0].grid_size[1]} patches"
    fig.suptitle(title or f"Attention patterns by layer ({detail}; mean ± std over images)", fontsize=12)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def default_queries(grid_size: Sequence[int], count: int = 4) -> list[tuple[int, int]]:
    """Query patches spread over the image: centre, then the centres of the four quadrants (up to `count`)."""
    rows, cols = int(grid_size[0]), int(grid_size[1])
    candidates = [(rows // 2, cols // 2), (rows // 4, cols // 4), (rows // 4, (3 * cols) // 4),
                  ((3 * rows) // 4, cols // 4), ((3 * rows) // 4, (3 * cols) // 4)]
    out: list[tuple[int, int]] = []
    for q in candidates:
        if q not in out:
            out.append(q)
    return out[:count]


def default_map_layers(report: AttentionReport, count: int = 4) -> list[int]:
    """Layers worth showing: one of each pattern present (the first local, the teacher layer, the last layer), then
    evenly spaced others, in increasing order."""
    chosen: list[int] = []
    labels = report.labels
    if "local" in labels:
        chosen.append(labels.index("local"))
    if report.teacher_layer is not None:
        chosen.append(report.teacher_layer)
    chosen.append(report.num_layers - 1)
    for i in np.linspace(0, report.num_layers - 1, count).round().astype(int).tolist():
        if len(set(chosen)) >= count:
            break
        chosen.append(i)
    return sorted(set(chosen))[:count]


def plot_attention_maps(
    maps: np.ndarray,
    intensity: np.ndarray,
    layers: Sequence[int],
    queries: Sequence[tuple[int, int]],
    labels: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    teacher_layer: int | None = None,
):
    """Grid of per-query attention maps overlaid on the input image (rows: layers, columns: queries).

    Each panel shows the grayscale image with the head-averaged attention of one query patch (marked by a cyan
    square) as a heat map stretched per panel between its minimum and maximum, low values transparent (a uniform map
    leaves the image untinted), and the peak attention as a multiple of uniform attention; row titles give the
    0-based layer and its pattern label.

    Args:
        maps: `[len(layers), len(queries), rows, cols]` from `query_attention_maps`.
        intensity: `[S, S]` image intensity in [0, 1].
        layers: The 0-based layer of each row.
        queries: `(row, col)` patch of each column.
        labels: Pattern label of each row (optional).
        path: Where to save a PNG (optional).
        title: Figure title.
        teacher_layer: Marks that row as the teacher layer.

    Returns:
        The matplotlib `Figure`.
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle  # noqa: PLC0415

    n_rows, n_cols = len(layers), len(queries)
    size = intensity.shape[0]
    cmap = plt.get_cmap("jet")
    grid = maps.shape[-2:]
    cell_h, cell_w = intensity.shape[0] / grid[0], intensity.shape[1] / grid[1]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols + 0.6, 2.4 * n_rows + 0.7), squeeze=False,
                             constrained_layout=True)
    for i, layer in enumerate(layers):
        for j, (r, c) in enumerate(queries):
            ax = axes[i, j]
            ax.imshow(intensity, cmap="gray", vmin=0, vmax=1, extent=(0, intensity.shape[1], intensity.shape[0], 0))
            m = maps[i, j].astype(np.float64)
            span = float(m.max() - m.min())
            norm = (m - m.min()) / span if span > 1e-3 * max(float(m.max()), 1e-12) else np.zeros_like(m)
            rgba = cmap(norm)
            rgba[..., 3] = 0.85 * norm**0.7  # low attention transparent: the image stays readable
            ax.imshow(rgba, extent=(0, intensity.shape[1], intensity.shape[0], 0), interpolation="nearest")
            peak = float(m.max()) * m.size
            ax.text(0.03, 0.03, f"peak {peak:.1f}x uniform", transform=ax.transAxes, fontsize=7, color="white",
                    bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "lw": 0})
            ax.add_patch(Rectangle((c * cell_w, r * cell_h), cell_w, cell_h, fill=False, ec="cyan", lw=1.8))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"query patch ({r}, {c})", fontsize=9)
            if j == 0:
                lab = f" · {labels[i]}" if labels is not None else ""
                star = " · teacher" if teacher_layer is not None and layer == teacher_layer else ""
                ax.set_ylabel(f"layer {layer}{lab}{star}", fontsize=9)
    fig.suptitle(title or f"Per-query attention (heads averaged, CLS dropped; {size}px, layers 0-based)", fontsize=11)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


__all__ = [
    "AttentionReport",
    "PATTERNS",
    "PatternThresholds",
    "SimplePreprocessor",
    "analyze_attention",
    "attention_entropy",
    "attention_measures",
    "choose_teacher_layer",
    "default_map_layers",
    "default_queries",
    "eager_attention",
    "find_images",
    "label_pattern",
    "load_vision_backbone",
    "mean_attention_distance",
    "model_attentions",
    "normalized_mutual_information",
    "patch_distance_matrix",
    "plot_attention_maps",
    "plot_layer_curves",
    "query_attention_maps",
    "require_vision_config",
]
