"""Layer-wise linear probing of a frozen UNIP / ViT backbone, after UNIP (Zhang et al., ICLR 2025): one 1x1 linear
classifier per block, trained on that block's patch features, the paper's "which layer carries the segmentation
signal" curve.

Every image is resized to `crop_size` x `crop_size` and run through the frozen backbone **once**; the features of
all blocks are cached (in memory, and on disk when `cache_path` is given, so that other seeds reuse them), then all
probes train together on the cache (independent parameters: the same as separate runs, in one pass). Training
views are fixed (no augmentation, unlike the `linear_probe` protocol of `finetuning.run_finetuning`); each block's
features are standardised per channel with the training statistics (an affine map, so the probe stays linear);
the loss is pixel-wise cross-entropy at the crop size on bilinearly upsampled logits. Evaluation upsamples each
image's logits to its label's full size and scores them with `evaluation.SegmentationEvaluator` (mean IoU for
semantic sets, IoU for small-target sets). `cache_features=False` recomputes the features of every batch instead
(the 12-separate-runs baseline of `benchmarks/bench_layerwise_probe.py`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from unip_hf.evaluation.evaluator import SegmentationEvaluator
from unip_hf.data.finetuning_data import EvalSegmentationDataset
from unip_hf.evaluation.metrics import to_builtin


def _square_inputs(dataset: EvalSegmentationDataset, crop_size: int, with_train_labels: bool):
    """(pixel_values [N, C, S, S], labels [N, S, S] or None, full-size labels list)."""
    pixels, small, full = [], [], []
    for i in range(len(dataset)):
        item = dataset[i]
        pixels.append(F.interpolate(item["pixel_values"][None].float(), size=(crop_size, crop_size), mode="bilinear",
                                    align_corners=False)[0])
        label = item["labels"]
        full.append(label)
        if with_train_labels:
            small.append(F.interpolate(label[None, None].float(), size=(crop_size, crop_size),
                                       mode="nearest")[0, 0].long())
    return torch.stack(pixels), (torch.stack(small) if with_train_labels else None), full


@torch.no_grad()
def block_features(backbone, pixel_values: torch.Tensor, layers: Sequence[int], batch_size: int = 16) -> torch.Tensor:
    """Patch features `[N, len(layers), hidden, h, w]` (float16) of the given blocks of a frozen `UnipViTModel`."""
    backbone.eval()
    out = []
    for start in range(0, pixel_values.shape[0], batch_size):
        maps = backbone.forward_intermediates(pixel_values[start:start + batch_size], indices=list(layers))
        out.append(torch.stack(maps, dim=1).half())
    return torch.cat(out)


def _load_or_compute(backbone, pixel_values, layers, cache_path: str | None) -> torch.Tensor:
    if cache_path and os.path.isfile(cache_path):
        from safetensors.torch import load_file

        cached = load_file(cache_path)["features"]
        if cached.shape[0] == pixel_values.shape[0] and cached.shape[1] == len(layers):
            return cached
    features = block_features(backbone, pixel_values, layers)
    if cache_path:
        from safetensors.torch import save_file

        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        tmp = f"{cache_path}.tmp-{os.getpid()}"
        save_file({"features": features.contiguous()}, tmp)
        os.replace(tmp, cache_path)  # never a half-written cache
    return features


def layerwise_probe(
    backbone,
    train_set: EvalSegmentationDataset,
    eval_set: EvalSegmentationDataset,
    task: str,
    num_labels: int,
    crop_size: int,
    steps: int,
    learning_rate: float,
    batch_size: int = 8,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    ignore_index: int = 255,
    cache_features: bool = True,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate one linear probe per block of a frozen backbone.

    Args:
        backbone: A `UnipViTModel` (frozen here; not modified).
        train_set, eval_set: `EvalSegmentationDataset`s (full-size normalised images and labels).
        task: `"semantic"` or `"irstd"`.
        num_labels: Classes, background included.
        crop_size: Square input side (a multiple of the patch size).
        steps: Optimizer steps (AdamW, cosine decay, no weight decay).
        learning_rate: Peak learning rate.
        batch_size: Training images per step.
        seed: Seed of the probe initialisation and the batch order.
        layers: 0-based blocks to probe (default: all).
        ignore_index: Ignored label value.
        cache_features: Compute the features once and train every probe on the cache (default); `False` recomputes
            the features of each batch (as separate probe runs would).
        cache_dir: Folder for `train_features.safetensors` / `eval_features.safetensors` (reused when they match).

    Returns:
        A dict: `layers`, `main_metric`, `values` (the main metric per layer), `metrics` (all metrics per layer),
        `best_layer`, `feature_s` and `train_s` (seconds).
    """
    depth = backbone.config.num_hidden_layers
    layers = list(range(depth)) if layers is None else [int(i) % depth for i in layers]
    if crop_size % backbone.config.patch_size:
        raise ValueError(f"crop_size {crop_size} must be a multiple of the patch size {backbone.config.patch_size}")
    t0 = time.perf_counter()
    train_pixels, train_labels, _ = _square_inputs(train_set, crop_size, True)
    eval_pixels, _, eval_labels = _square_inputs(eval_set, crop_size, False)
    for param in backbone.parameters():
        param.requires_grad_(False)
    if cache_features:
        train_cache = _load_or_compute(backbone, train_pixels, layers,
                                       os.path.join(cache_dir, "train_features.safetensors") if cache_dir else None)
        features_of = lambda index: train_cache[index].float()  # noqa: E731
        sample = train_cache.float()
    else:
        features_of = lambda index: block_features(backbone, train_pixels[index], layers).float()  # noqa: E731
        sample = block_features(backbone, train_pixels[: min(len(train_pixels), 32)], layers).float()
    # per-layer, per-channel standardisation from the training features (affine, so the probe stays linear)
    mean = sample.mean(dim=(0, 3, 4))  # [L, C]
    std = sample.std(dim=(0, 3, 4)).clamp_min(1e-6)
    del sample
    feature_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    generator = torch.Generator().manual_seed(int(seed))
    num_layers, hidden = len(layers), backbone.config.hidden_size
    weight = torch.nn.Parameter(torch.randn(num_layers, num_labels, hidden, generator=generator) * 0.01)
    bias = torch.nn.Parameter(torch.zeros(num_layers, num_labels))
    optimizer = torch.optim.AdamW([weight, bias], lr=learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / max(1, steps))).item()))
    n = train_pixels.shape[0]
    batch_size = min(batch_size, n)

    def logits_of(features: torch.Tensor) -> torch.Tensor:  # [B, L, C, h, w] -> [B, L, K, h, w]
        normed = (features - mean[None, :, :, None, None]) / std[None, :, :, None, None]
        return torch.einsum("blchw,lkc->blkhw", normed, weight) + bias[None, :, :, None, None]

    order = torch.randperm(n, generator=generator)
    cursor = 0
    for _ in range(steps):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor:cursor + batch_size]
        cursor += batch_size
        logits = logits_of(features_of(index))
        b, l, k, h, w = logits.shape
        up = F.interpolate(logits.reshape(b * l, k, h, w), size=(crop_size, crop_size), mode="bilinear",
                           align_corners=False)
        target = train_labels[index][:, None].expand(b, l, crop_size, crop_size).reshape(b * l, crop_size, crop_size)
        # summed over the probes: each probe gets the gradient of its own run
        loss = F.cross_entropy(up, target, ignore_index=ignore_index) * l
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    train_s = time.perf_counter() - t1

    with torch.no_grad():
        if cache_features:
            eval_cache = _load_or_compute(backbone, eval_pixels, layers,
                                          os.path.join(cache_dir, "eval_features.safetensors") if cache_dir else None)
        else:
            eval_cache = block_features(backbone, eval_pixels, layers)
        evaluators = [SegmentationEvaluator(task, num_labels, ignore_index) for _ in layers]
        for i, label in enumerate(eval_labels):
            logits = logits_of(eval_cache[i:i + 1].float())[0]  # [L, K, h, w]
            up = F.interpolate(logits, size=tuple(label.shape), mode="bilinear", align_corners=False)
            for j, evaluator in enumerate(evaluators):
                evaluator.add(up[j:j + 1], label[None])
    metrics = [to_builtin(e.compute()) for e in evaluators]
    main = evaluators[0].main_metric
    values = [float(m[main]) for m in metrics]
    best = max(range(len(values)), key=lambda i: values[i])
    return {"layers": layers, "main_metric": main, "values": values, "metrics": metrics, "best_layer": layers[best],
            "feature_s": feature_s, "train_s": train_s}


__all__ = ["layerwise_probe"]
