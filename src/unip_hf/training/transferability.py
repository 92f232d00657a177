"""Transferability-aware fine-tuning: our implementation of TMT ("Transferable Mask Transformer: Cross-domain
Semantic Segmentation with Region-adaptive Transferability Estimation", arXiv 2504.05774), written from its published
description (no code is public). This file owns ACTE, the Adaptive Cluster-based Transferability Estimator: regions
from a per-image k-means of the patch features with their spatial coordinates (the number of clusters chosen per
image by an explained-variance rule) or fixed windows (the ablation), a pluggable per-region score, and the per-patch
transferability map in [0, 1]. The TMA bias itself (the map entering the attention logits) lives in the model
(`modeling_unip.transferability_attention_bias`, blocks `UnipConfig.tmt_blocks`); the choices are listed in the
README's TMT section.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unip_hf.choices import REGION_MODES


# ------------------------------------------------------------------------------------------------------ clustering
def patch_coordinates(grid_height: int, grid_width: int, device=None) -> torch.Tensor:
    """`(grid_height * grid_width, 2)` (row, column) of each patch, in row-major order, scaled to [0, 1]."""
    rows = torch.arange(grid_height, device=device, dtype=torch.float32) / max(grid_height - 1, 1)
    cols = torch.arange(grid_width, device=device, dtype=torch.float32) / max(grid_width - 1, 1)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def clustering_points(tokens: torch.Tensor, grid: tuple[int, int], spatial_weight: float = 0.5) -> torch.Tensor:
    """The points ACTE clusters: each image's patch tokens `(batch, N, C)` centred on the image's mean token and
    L2-normalised (so the common component a ViT adds to every token does not dominate the distances, which then lie
    in [0, 2]), concatenated with `spatial_weight` times the patch coordinates in [0, 1]."""
    if tokens.ndim != 3 or tokens.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"tokens must be (batch, {grid[0]} x {grid[1]} patches, channels), got {tuple(tokens.shape)}")
    features = F.normalize(tokens.float() - tokens.float().mean(dim=1, keepdim=True), dim=-1)
    coords = patch_coordinates(*grid, device=tokens.device).expand(tokens.shape[0], -1, -1)
    return torch.cat([features, spatial_weight * coords], dim=-1)


def kmeans(points: torch.Tensor, k: int, iterations: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Lloyd k-means of `points` `(batch, N, D)` into `k` clusters per item, deterministic (no random
    numbers): the first centre is the point farthest from the item's mean, each next one the point farthest from the
    centres chosen so far (maximin initialisation); then at most `iterations` assignment/update rounds, stopping when
    no assignment changes. An empty cluster keeps its centre. Returns the labels `(batch, N)` and the within-cluster
    sum of squares `(batch,)`."""
    batch, count, _ = points.shape
    if not 1 <= k <= count:
        raise ValueError(f"k must be between 1 and the number of points ({count}), got {k}")
    points = points.float()
    first = (points - points.mean(dim=1, keepdim=True)).pow(2).sum(-1).argmax(dim=1)
    chosen = [first]
    nearest = (points - points[torch.arange(batch), first][:, None]).pow(2).sum(-1)
    for _ in range(1, k):
        nxt = nearest.argmax(dim=1)
        chosen.append(nxt)
        nearest = torch.minimum(nearest, (points - points[torch.arange(batch), nxt][:, None]).pow(2).sum(-1))
    centres = torch.stack([points[torch.arange(batch), index] for index in chosen], dim=1)
    labels = None
    for _ in range(iterations):
        new_labels = torch.cdist(points, centres).argmin(dim=-1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        onehot = F.one_hot(labels, k).to(points.dtype)  # (batch, N, k)
        sizes = onehot.sum(dim=1)  # (batch, k)
        sums = onehot.transpose(1, 2) @ points  # (batch, k, D)
        centres = torch.where(sizes[..., None] > 0, sums / sizes.clamp_min(1)[..., None], centres)
    sse = (points - torch.gather(centres, 1, labels[..., None].expand_as(points))).pow(2).sum(dim=(1, 2))
    return labels, sse


def adaptive_kmeans(points: torch.Tensor, max_clusters: int = 8, explained_variance: float = 0.6,
                    min_clusters: int = 2, iterations: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """ACTE's adaptive number of clusters, per image: k-means for every `k` in `min_clusters..max_clusters` (capped at
    a quarter of the points), and the smallest `k` whose clustering explains at least `explained_variance` of the
    image's total variance (`1 - SSE_k / SSE_1`), else the largest. Returns the labels `(batch, N)` and the chosen
    `k` per image `(batch,)`."""
    if not 0 < explained_variance < 1:
        raise ValueError(f"explained_variance must be in (0, 1), got {explained_variance}")
    batch, count, _ = points.shape
    high = max(1, min(max_clusters, count // 4))
    low = min(max(1, min_clusters), high)
    total = (points.float() - points.float().mean(dim=1, keepdim=True)).pow(2).sum(dim=(1, 2)).clamp_min(1e-12)
    labels = chosen_k = None
    for k in range(low, high + 1):
        k_labels, sse = kmeans(points, k, iterations)
        if labels is None:
            labels, chosen_k = k_labels, torch.full((batch,), k, device=points.device)
            done = 1 - sse / total >= explained_variance
            continue
        take = ~done
        labels = torch.where(take[:, None], k_labels, labels)
        chosen_k = torch.where(take, torch.full_like(chosen_k, k), chosen_k)
        done = done | (1 - sse / total >= explained_variance)
        if bool(done.all()):
            break
    return labels, chosen_k


def window_regions(batch: int, grid: tuple[int, int], window: int, device=None) -> torch.Tensor:
    """The ablation of ACTE's clusters: fixed `window x window`-patch windows, labels `(batch, N)` in row-major
    window order (the last row/column of windows may be smaller)."""
    if window < 1:
        raise ValueError(f"window must be >= 1 patch, got {window}")
    rows = torch.arange(grid[0], device=device) // window
    cols = torch.arange(grid[1], device=device) // window
    per_row = -(-grid[1] // window)
    return (rows[:, None] * per_row + cols[None, :]).reshape(1, -1).expand(batch, -1).contiguous()


def region_mean(values: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Each patch's value `(batch, N)` replaced by the mean over its region (labels `(batch, N)`)."""
    count = int(regions.max()) + 1
    onehot = F.one_hot(regions, count).to(values.dtype)
    means = (onehot * values[..., None]).sum(1) / onehot.sum(1).clamp_min(1)
    return torch.gather(means, 1, regions)


# --------------------------------------------------------------------------------------------------------- scores
def feature_agreement(tokens: torch.Tensor, reference: torch.Tensor | None, regions: torch.Tensor) -> torch.Tensor:
    """Default score: per patch, the cosine between the (image-centred) features being fine-tuned and those of the
    frozen pre-trained backbone at the same block, mapped to [0, 1] as `(1 + cos) / 2`. A region whose pre-trained
    features survive fine-tuning transfers; one the adaptation has to rewrite does not."""
    if reference is None:
        raise ValueError("the feature_agreement score needs the reference (pre-trained) tokens")
    a = tokens.float() - tokens.float().mean(dim=1, keepdim=True)
    b = reference.float() - reference.float().mean(dim=1, keepdim=True)
    return (1 + F.cosine_similarity(a, b, dim=-1)) / 2


def cluster_cohesion(tokens: torch.Tensor, reference: torch.Tensor | None, regions: torch.Tensor) -> torch.Tensor:
    """Reference-free score (semantic certainty): per patch, the cosine between its image-centred feature and its
    region's mean feature, `(1 + cos) / 2`. Heterogeneous regions (features that disagree with their region) score
    low."""
    features = F.normalize(tokens.float() - tokens.float().mean(dim=1, keepdim=True), dim=-1)
    count = int(regions.max()) + 1
    onehot = F.one_hot(regions, count).to(features.dtype)
    centres = onehot.transpose(1, 2) @ features / onehot.sum(1).clamp_min(1)[..., None]
    own = torch.gather(centres, 1, regions[..., None].expand_as(features))
    return (1 + F.cosine_similarity(features, own, dim=-1)) / 2


@dataclass(frozen=True)
class TransferabilityScore:
    """A per-patch score `fn(tokens, reference_tokens or None, regions) -> (batch, N)`, averaged over each region by
    ACTE; `needs_reference` says whether the frozen pre-trained backbone must run for it."""

    fn: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]
    needs_reference: bool


TRANSFERABILITY_SCORES: dict[str, TransferabilityScore] = {
    "feature_agreement": TransferabilityScore(feature_agreement, True),
    "cluster_cohesion": TransferabilityScore(cluster_cohesion, False),
}


def register_transferability_score(name: str, fn, needs_reference: bool = True) -> None:
    """Add a named score to `TRANSFERABILITY_SCORES` (usable as `--tmt_score NAME`)."""
    TRANSFERABILITY_SCORES[name] = TransferabilityScore(fn, needs_reference)


def normalise_map(scores: torch.Tensor, min_spread: float = 0.05) -> torch.Tensor:
    """Per-image min-max normalisation of region scores `(batch, N)` (in [0, 1]) to the map: `1 - (max - s) /
    max(max - min, min_spread)`. The softmax sees only differences between keys, so the map is relative (the worst
    region gets 0, the best 1), except that a spread below `min_spread` is not stretched: an image whose regions all
    score alike (up to noise, such as drop path at the start of fine-tuning) keeps a map near 1 (little bias)."""
    high = scores.max(dim=1, keepdim=True).values
    spread = high - scores.min(dim=1, keepdim=True).values
    return 1 - (high - scores) / spread.clamp_min(max(min_spread, 1e-12))


# ------------------------------------------------------------------------------------------------------ estimator
def source_tokens(vit: nn.Module, pixel_values: torch.Tensor, source_layer: int) -> torch.Tensor:
    """Patch tokens `(batch, N, C)` that enter block `source_layer` of a `UnipViTModel` (the embeddings when 0)."""
    encoded = vit.encoder(vit.embeddings(pixel_values), source_layer - 1)
    return encoded.last_hidden_state[:, 1:]


@dataclass
class TransferabilityEstimate:
    """One ACTE estimate: `map` `(batch, N)` in [0, 1] (high: transferable), `regions` `(batch, N)` labels and
    `num_regions` `(batch,)`."""

    map: torch.Tensor
    regions: torch.Tensor
    num_regions: torch.Tensor


class TransferabilityEstimator(nn.Module):
    """ACTE: the per-patch transferability map of a batch, from the fine-tuned patch tokens entering block
    `source_layer` and (for scores that need it) those of a frozen copy of the pre-trained backbone.

    Args:
        reference (`UnipViTModel`, *optional*): the pre-trained backbone (copied, truncated to the blocks before
            `source_layer`, frozen, always in eval mode). Required by `feature_agreement`.
        source_layer (`int`): the block whose input is read (the first TMA block).
        patch_size (`int`): patch side, to get the grid from the pixel size.
        regions (`str`, defaults to `"acte"`): `"acte"` (adaptive k-means) or `"windows"` (fixed windows, ablation).
        score (`str`, defaults to `"feature_agreement"`): a name of `TRANSFERABILITY_SCORES`.
        max_clusters (`int`, defaults to 8), explained_variance (`float`, defaults to 0.6): the adaptive-k rule.
        spatial_weight (`float`, defaults to 0.5): weight of the patch coordinates in the clustered points.
        window (`int`, defaults to 4): window side in patches for `regions="windows"`.
    """

    def __init__(self, reference: nn.Module | None, source_layer: int, patch_size: int, regions: str = "acte",
                 score: str = "feature_agreement", max_clusters: int = 8, explained_variance: float = 0.6,
                 spatial_weight: float = 0.5, window: int = 4):
        super().__init__()
        if regions not in REGION_MODES:
            raise ValueError(f"regions must be one of {REGION_MODES}, got {regions!r}")
        if score not in TRANSFERABILITY_SCORES:
            raise ValueError(f"unknown transferability score {score!r}; choose from {sorted(TRANSFERABILITY_SCORES)}")
        if max_clusters < 1:
            raise ValueError(f"max_clusters must be >= 1, got {max_clusters}")
        if not 0 < explained_variance < 1:
            raise ValueError(f"explained_variance must be in (0, 1), got {explained_variance}")
        if spatial_weight < 0:
            raise ValueError(f"spatial_weight must be >= 0, got {spatial_weight}")
        if window < 1:
            raise ValueError(f"window must be >= 1 patch, got {window}")
        self.score = TRANSFERABILITY_SCORES[score]
        self.score_name, self.regions, self.source_layer, self.patch_size = score, regions, source_layer, patch_size
        self.max_clusters, self.explained_variance = max_clusters, explained_variance
        self.spatial_weight, self.window = spatial_weight, window
        self.reference = None
        if self.score.needs_reference:
            if reference is None:
                raise ValueError(f"the {score!r} score needs the pre-trained backbone (reference)")
            reference = copy.deepcopy(reference)
            reference.encoder.layer = reference.encoder.layer[:source_layer]  # only what the source tokens need
            reference.requires_grad_(False)
            self.reference = reference.eval()

    @classmethod
    def for_model(cls, model: nn.Module, **options) -> "TransferabilityEstimator":
        """An estimator for a `UnipForSemanticSegmentation` (or `UnipViTModel`) about to be fine-tuned: its backbone
        now is the pre-trained reference; the source layer is the first block of `config.tmt_blocks` (or
        `options["source_layer"]`)."""
        vit = getattr(model, "unip", model)
        config = vit.config
        source = options.pop("source_layer", None)
        if source is None:
            if not config.tmt_blocks:
                raise ValueError("config.tmt_blocks is empty: pass source_layer")
            source = config.tmt_blocks[0]
        return cls(vit, source, config.patch_size, **options)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the reference is a fixed function: no dropout or drop path
        return self

    def describe(self) -> str:
        regions = (f"ACTE k-means, k in 2..{self.max_clusters} by explained variance >= {self.explained_variance:g}, "
                   f"spatial weight {self.spatial_weight:g}" if self.regions == "acte"
                   else f"fixed {self.window}x{self.window}-patch windows")
        return f"{regions}; score {self.score_name}; map from the input of block {self.source_layer}"

    def region_labels(self, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.regions == "windows":
            labels = window_regions(tokens.shape[0], grid, self.window, tokens.device)
            return labels, (labels.max(dim=1).values + 1)
        return adaptive_kmeans(clustering_points(tokens, grid, self.spatial_weight), self.max_clusters,
                               self.explained_variance)

    @torch.no_grad()
    def estimate(self, tokens: torch.Tensor, pixel_values: torch.Tensor) -> TransferabilityEstimate:
        """The map of a batch from the fine-tuned `tokens` `(batch, N, C)` entering `source_layer` and the
        `pixel_values` they came from (the reference reads them)."""
        grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
        tokens = tokens.detach()
        regions, counts = self.region_labels(tokens, grid)
        reference = None
        if self.reference is not None:
            reference = source_tokens(self.reference, pixel_values.to(tokens.device), self.source_layer)
        per_patch = self.score.fn(tokens, reference, regions)
        return TransferabilityEstimate(normalise_map(region_mean(per_patch, regions)).clamp(0, 1), regions, counts)

    def forward(self, tokens: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.estimate(tokens, pixel_values).map

    def bind(self, pixel_values: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The `transferability` argument of the model's forward for this batch: tokens -> map."""
        return lambda tokens: self(tokens, pixel_values)

    def from_pixels(self, vit: nn.Module, pixel_values: torch.Tensor) -> TransferabilityEstimate:
        """The estimate for `pixel_values` with the fine-tuned backbone `vit` run (without gradients, random state
        untouched) up to `source_layer`: for loss weighting without TMA, and for drawing the maps."""
        devices = [pixel_values.device] if pixel_values.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            tokens = source_tokens(vit, pixel_values, self.source_layer)
        return self.estimate(tokens, pixel_values)


def loss_weights_from_map(transferability: torch.Tensor, grid: tuple[int, int], weight: float) -> torch.Tensor:
    """Per-patch loss weights `(batch, grid_h, grid_w)`: `1 + weight * (1 - T)` (the ablation without TMA, where the
    map only re-weights the cross-entropy towards poorly transferring regions)."""
    return (1 + weight * (1 - transferability)).reshape(-1, *grid)


class TransferabilityAwareSegmenter(nn.Module):
    """A `UnipForSemanticSegmentation` whose every forward attends with the TMA bias computed by `estimator` for
    its own input (evaluation of a TMT model; sliding windows each get their own map)."""

    def __init__(self, model: nn.Module, estimator: TransferabilityEstimator):
        super().__init__()
        self.model, self.estimator = model, estimator

    @property
    def config(self):
        return self.model.config

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        return self.model(pixel_values=pixel_values, transferability=self.estimator.bind(pixel_values), **kwargs)


# ------------------------------------------------------------------------------------------------------- drawing
def _heat(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB: red (0, low transferability) through yellow to blue (1, high transferability)."""
    v = np.clip(values, 0, 1)[..., None]
    low, mid, high = np.array([220, 30, 30]), np.array([250, 220, 60]), np.array([40, 80, 220])
    return np.where(v < 0.5, low + (mid - low) * (v * 2), mid + (high - mid) * (v * 2 - 1)).astype(np.uint8)


def transferability_contact_sheet(images: list[np.ndarray], estimates: list[TransferabilityEstimate],
                                  grids: list[tuple[int, int]], tile: int = 160) -> Image.Image:
    """One row per image: the image, its transferability map over it (red: low, blue: high) and its regions
    (boundaries in white). `images` are `(H, W)` arrays in [0, 255]; each estimate holds one image."""
    rows = []
    for image, estimate, grid in zip(images, estimates, grids):
        gray = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L").resize((tile, tile), Image.BILINEAR)
        base = np.asarray(gray.convert("RGB"), dtype=np.float32)
        heat = np.asarray(Image.fromarray(_heat(estimate.map[0].reshape(grid).cpu().numpy())).resize(
            (tile, tile), Image.NEAREST), dtype=np.float32)
        overlay = (0.5 * base + 0.5 * heat).astype(np.uint8)
        labels = np.asarray(Image.fromarray(estimate.regions[0].reshape(grid).cpu().numpy().astype(np.uint8)).resize(
            (tile, tile), Image.NEAREST)).astype(np.int64)
        edges = np.zeros_like(labels, dtype=bool)
        edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edges[1:, :] |= labels[1:, :] != labels[:-1, :]
        bounded = base.copy()
        bounded[edges] = 255
        rows.append(np.concatenate([base.astype(np.uint8), overlay, bounded.astype(np.uint8)], axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


__all__ = ["TransferabilityEstimator", "TRANSFERABILITY_SCORES", "register_transferability_score", "adaptive_kmeans"]
