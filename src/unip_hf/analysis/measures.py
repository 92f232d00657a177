"""The layer-wise attention measures of UNIP (Zhang et al., "UNIP: Rethinking Pre-trained Attention Patterns for
Infrared Semantic Segmentation", ICLR 2025) on batched attention probabilities `[B, H, N, N]`: normalised mutual
information between queries and keys, mean attention distance, attention entropy, key concentration, and
`attention_measures`, which computes all of them in one pass. Special tokens before the patches are dropped
(`vit_family.select_tokens`), rows renormalised over the kept keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from unip_hf.models.vit_family import select_tokens

_TINY = 1e-30
# A row keeping less patch mass than this gave (nearly) all of its attention to the removed special tokens: it is
# treated as empty, as a row of exact zeros is. Renormalising it would divide by a denormal (1 / 1e-39 = inf in
# float32: seen on a real ViT-MAE whose queries put 0.99999 on CLS) and turn every sum into inf / NaN.
_MIN_ROW_MASS = 1e-12

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


def _plogp_sum(x: torch.Tensor) -> torch.Tensor:
    """sum_k x log x over the last axis (0 log 0 = 0); about twice as fast as `xlogy(x, x).sum(-1)` on CPU."""
    return torch.linalg.vecdot(x, x.clamp_min(_TINY).log_())


def _row_statistics(block: torch.Tensor, plogp_sum: torch.Tensor | None = None, mass: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor]:
    """Statistics of the rows of a (possibly unnormalised) attention block, as if every row were renormalised.

    Rows whose mass is zero or below `_MIN_ROW_MASS` (all of it went to removed special tokens) have no distribution;
    they contribute zero to every sum instead of producing inf / NaN.

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
    valid = mass > _MIN_ROW_MASS
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
    block = select_tokens(attentions.float(), num_prefix_tokens, include_cls=include_cls)
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
    block = select_tokens(attentions.float(), num_prefix_tokens, include_cls=False)
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
    block = select_tokens(attentions.float(), num_prefix_tokens, include_cls=False)
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
    valid = (mass > _MIN_ROW_MASS) & keep_rows
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


__all__: list[str] = []  # nothing here is documented API; the package's own modules import what they need
