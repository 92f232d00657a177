"""Procedural thermal-like scenes with exact masks, for UNIP (Zhang et al., ICLR 2025) demos and tests.

Smooth background gradients and noise, warm objects of a few classes with soft edges, optional small hot
targets; any size, seeded. `write_synthetic_dataset` writes them in the ``images/{split}`` + ``masks/{split}`` layout.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import datasets
import numpy as np
from PIL import Image

from unip_hf.data.segmentation import load_segmentation_dataset

__all__ = ["write_synthetic_dataset"]

#: Class names of the synthetic scenes (id = position).
SYNTHETIC_CLASSES = ("background", "person", "vehicle", "animal", "hot_target")


def _shape_distance(kind: str, yy, xx, cy, cx, ry, rx, angle) -> np.ndarray:
    """Signed distance-like field (in pixels, negative inside) of an ellipse or rounded box."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = c * dx + s * dy, -s * dx + c * dy
    if kind == "ellipse":
        r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        return (r - 1.0) * min(rx, ry)
    qx, qy = np.abs(u) - rx * 0.8, np.abs(v) - ry * 0.8
    rad = 0.2 * min(rx, ry)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0)
    return outside - rad


def make_thermal_scene(
    height: int = 256,
    width: int = 320,
    seed: int = 0,
    num_objects: tuple[int, int] = (2, 5),
    num_hot_targets: tuple[int, int] = (0, 3),
    noise: float = 0.02,
    bit_depth: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic thermal scene and its exact mask.

    Args:
        height / width: image size (any).
        seed: scene seed (same seed, same scene).
        num_objects: inclusive range of warm objects (person = upright ellipse, vehicle = rounded box,
            animal = flat ellipse).
        num_hot_targets: inclusive range of small hot targets (class ``hot_target``, radius 1-3 px).
        noise: standard deviation of the sensor noise (intensity in [0, 1]).
        bit_depth: 8 (uint8 image) or 16 (uint16 image).

    Returns:
        ``(image, mask)``: ``image`` HxW uint8/uint16; ``mask`` HxW uint8 of ids in `SYNTHETIC_CLASSES`. A pixel's
        label is the last object drawn whose interior (distance < 0) contains the pixel centre.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gy, gx = rng.uniform(-0.25, 0.25, size=2)
    img = 0.3 + gy * (yy / max(height, 1) - 0.5) + gx * (xx / max(width, 1) - 0.5)
    for _ in range(3):  # a few broad warm/cool blobs
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        sig = rng.uniform(0.2, 0.5) * max(height, width)
        img = img + rng.uniform(-0.08, 0.08) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
    mask = np.zeros((height, width), dtype=np.uint8)
    scale = min(height, width)
    for _ in range(int(rng.integers(num_objects[0], num_objects[1] + 1))):
        cls = int(rng.integers(1, 4))
        base = rng.uniform(0.05, 0.15) * scale
        if cls == 1:
            kind, ry, rx, angle = "ellipse", base * 1.8, base * 0.6, rng.uniform(-0.15, 0.15)
        elif cls == 2:
            kind, ry, rx, angle = "box", base * 0.8, base * 1.6, rng.uniform(-0.3, 0.3)
        else:
            kind, ry, rx, angle = "ellipse", base * 0.6, base * 1.2, rng.uniform(-0.5, 0.5)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        d = _shape_distance(kind, yy, xx, cy, cx, ry, rx, angle)
        alpha = 1.0 / (1.0 + np.exp(np.clip(d / 1.2, -30, 30)))  # soft edge, 0.5 at the boundary
        temp = rng.uniform(0.55, 0.85) + 0.05 * np.exp(-np.maximum(-d, 0) / max(base, 1))  # warmer rim
        img = img * (1 - alpha) + temp * alpha
        mask[d < 0] = cls
    for _ in range(int(rng.integers(num_hot_targets[0], num_hot_targets[1] + 1))):
        cy, cx, r = rng.uniform(2, max(3, height - 2)), rng.uniform(2, max(3, width - 2)), rng.uniform(1.0, 3.0)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        img = np.maximum(img, 0.95 * np.exp(-d2 / (2 * (r * 0.8) ** 2)))
        mask[d2 < r * r] = 4
    img = img + rng.normal(0.0, noise, size=img.shape)
    img = np.clip(img, 0.0, 1.0)
    top = 255 if bit_depth == 8 else 65535
    image = np.round(img * top).astype(np.uint8 if bit_depth == 8 else np.uint16)
    return image, mask


def write_synthetic_dataset(
    out_dir: str,
    num_train: int = 16,
    num_val: int = 4,
    height: int = 256,
    width: int = 320,
    seed: int = 0,
    bit_depth: int = 8,
    cache_dir: Optional[str] = None,
    return_dataset: bool = True,
):
    """Write synthetic scenes as ``images/{split}/scene_NNNNN.png`` + ``masks/{split}/scene_NNNNN.png``.

    Also writes ``classes.json`` (names and palette), so that ``load_segmentation_dataset("folder", out_dir, split)``
    reads the folder back.

    Args:
        out_dir: destination folder (created).
        num_train / num_val: number of scenes per split (a split with 0 scenes is not written).
        height / width / bit_depth: scene size and depth.
        seed: base seed; scene ``i`` of split ``s`` uses a seed derived from (seed, s, i).
        cache_dir: `datasets` cache for the returned data set.
        return_dataset: return a `datasets.DatasetDict` (else ``None``).

    Returns:
        A `datasets.DatasetDict` with the written splits (``id``, ``image``, ``label``), or ``None``.
    """
    splits = {"train": num_train, "val": num_val}
    for s_idx, (split, n) in enumerate(splits.items()):
        if n <= 0:
            continue
        os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
        os.makedirs(os.path.join(out_dir, "masks", split), exist_ok=True)
        for i in range(n):
            scene_seed = int(np.random.SeedSequence([seed, s_idx, i]).generate_state(1)[0])
            image, mask = make_thermal_scene(height, width, seed=scene_seed, bit_depth=bit_depth)
            Image.fromarray(image).save(os.path.join(out_dir, "images", split, f"scene_{i:05d}.png"))
            Image.fromarray(mask).save(os.path.join(out_dir, "masks", split, f"scene_{i:05d}.png"))
    palette = [[0, 0, 0], [220, 20, 60], [0, 0, 142], [119, 172, 48], [255, 255, 0]]
    with open(os.path.join(out_dir, "classes.json"), "w", encoding="utf-8") as f:
        json.dump({"classes": list(SYNTHETIC_CLASSES), "palette": palette}, f, indent=1)
    if not return_dataset:
        return None
    return datasets.DatasetDict(
        {split: load_segmentation_dataset("folder", out_dir, split, cache_dir=cache_dir) for split, n in splits.items() if n > 0}
    )
