"""Attention-pattern analysis of vision transformers, after UNIP (Zhang et al., "UNIP: Rethinking Pre-trained
Attention Patterns for Infrared Semantic Segmentation", ICLR 2025): `analyze_attention` runs a `UnipViTModel` or a
transformers ViT-family model over images and measures every layer (`attention_measures`) into an
`AttentionReport` (`attention_patterns`: labels and teacher-layer choice); `query_attention_maps` gives the maps
that `attention_plots.plot_attention_maps` draws. The models are read through `vit_family`. Layer indices are
0-based everywhere.

The README imports `AttentionReport`, `choose_teacher_layer` and `plot_layer_curves` from here (their owners are
`attention_patterns` and `attention_plots`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from unip_hf.analysis.measures import _TINY, _layers_measures, patch_distance_matrix
from unip_hf.analysis.patterns import AttentionReport, PatternThresholds, choose_teacher_layer
from unip_hf.analysis.plots import plot_layer_curves
from unip_hf.data.files import find_images
from unip_hf.models.image_processing_unip import INFRARED_MEAN as UNIP_MEAN
from unip_hf.models.image_processing_unip import INFRARED_STD as UNIP_STD
from unip_hf.models.image_processing_unip import UnipImageProcessor
from unip_hf.models.infrared_decoding import decode_intensity, load_infrared_image
from unip_hf.models.vit_family import eager_attention, model_attentions, vision_config

logger = logging.getLogger(__name__)


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
    config = vision_config(model.config)
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
        if key != "nmi_with_cls":
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
    config = vision_config(model.config)
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


__all__ = ["AttentionReport", "analyze_attention", "choose_teacher_layer", "plot_layer_curves", "query_attention_maps"]
