"""`unip predict`: a UNIP segmentation model (Zhang et al., "UNIP", ICLR 2025) on your own images.

Images come from files, folders (recursive, through `unip_hf.files.find_images`) or glob patterns, in any depth or
mode (decoded by `image_processing_unip.load_infrared_image`, the one decoder); each is run through the model's
saved processor (its evaluation protocol: resize, normalise, pad; `resize_logits` back to the image size), and gets
`<name>_mask.png` (class ids) and `<name>_overlay.png` (input and prediction side by side, with a legend, drawn by
`demo.overlay_panels`). For a binary model (two classes, as every small-target model is) the target class is the
pixels whose probability exceeds `threshold`, and `targets.csv` lists the targets: 8-connected components, as the
IRSTD metrics count them, with centroid, area, bounding box and peak probability. Unreadable files are named,
skipped and counted.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
from transformers.modeling_outputs import SemanticSegmenterOutput

from .demo import _palette, overlay_panels
from .files import IMAGE_EXTENSIONS, find_images
from .image_processing_unip import InfraredImageError, load_infrared_image
from .segmentation_saving import make_processor

TARGETS_NAME = "targets.csv"
TARGET_COLUMNS = ("image", "target", "centroid_x", "centroid_y", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
                  "max_score")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_GLOB_CHARACTERS = set("*?[")


@dataclass
class PredictionResult:
    """What `predict_images` did: the images written (`(image, mask, overlay)` paths), the files skipped
    (`"path: reason"`), the number of targets listed and the CSV path (binary models)."""

    written: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    targets: int = 0
    targets_csv: str | None = None


def is_binary_model(config: Any) -> bool:
    """Whether a model predicts one target class against background (two labels), as small-target models do (their
    config type is `unip_small_target`); their predictions get a `targets.csv`."""
    return getattr(config, "model_type", None) == "unip_small_target" or int(getattr(config, "num_labels", 0)) == 2


def collect_images(sources: Sequence[str], skipped: list[str]) -> list[tuple[Path, str]]:
    """`(path, output name)` of every image named by `sources` (files, folders searched recursively, or glob
    patterns such as `data/*.png` or `data/**/*.tif`), each real file once. The output name keeps a file's path below
    the folder it was found in (a file given directly: its name), without the suffix; names that would collide get
    `-2`, `-3`, ...

    Raises:
        FileNotFoundError: a source that is neither a path nor a glob pattern matching anything.
    """
    found: list[tuple[Path, str]] = []
    for source in sources:
        if not os.path.lexists(source) and _GLOB_CHARACTERS & set(source):
            matches = sorted(glob.glob(source, recursive=True))
            files = [m for m in matches if os.path.isfile(m) and m.lower().endswith(IMAGE_EXTENSIONS)]
            if not files:
                raise FileNotFoundError(f"no image file matches {source!r}")
            found.extend((Path(m), Path(m).stem) for m in files)
            continue
        for path in find_images(source, skipped=skipped):
            relative = path.relative_to(source) if os.path.isdir(source) else Path(path.name)
            found.append((path, str(relative.with_suffix(""))))
    seen: dict[str, int] = {}
    named, files = [], set()
    for path, name in found:
        if os.path.realpath(path) in files:
            continue
        files.add(os.path.realpath(path))
        count = seen.get(name, 0) + 1
        seen[name] = count
        named.append((path, name if count == 1 else f"{name}-{count}"))
    return named


def find_targets(probability: np.ndarray, mask: np.ndarray) -> list[dict[str, Any]]:
    """The targets of a binary prediction: 8-connected components of `mask` (raster order of their first pixel),
    each with its centroid (x, y), area in pixels, bounding box (x0, y0, x1, y1; inclusive) and the largest target
    probability inside it."""
    labels, count = scipy.ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    ids = np.arange(1, count + 1)
    ones = np.ones(mask.shape, dtype=np.float64)
    areas = scipy.ndimage.sum_labels(ones, labels, ids)
    centroids = scipy.ndimage.center_of_mass(ones, labels, ids)
    scores = scipy.ndimage.maximum(probability, labels, ids)
    boxes = scipy.ndimage.find_objects(labels)
    return [{"target": index + 1, "centroid_x": round(float(col), 2), "centroid_y": round(float(row), 2),
             "area": int(area), "bbox_x0": box[1].start, "bbox_y0": box[0].start, "bbox_x1": box[1].stop - 1,
             "bbox_y1": box[0].stop - 1, "max_score": round(float(score), 4)}
            for index, ((row, col), area, score, box) in enumerate(zip(centroids, areas, scores, boxes))]


def load_predictor(model_name_or_path: str, trust_remote_code: bool = False, device: str | None = None):
    """The segmentation model (eval mode, on `device`) and its processor: the one saved with it, else the
    evaluation protocol built from its config (`segmentation_saving.make_processor`)."""
    model = AutoModelForSemanticSegmentation.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # no preprocessor_config.json: the evaluation protocol of the config
        processor = make_processor(model.config)
    return model, processor


#: `tile_size=None` tiles a small-target model's frames above this many pixels (when the tiled result is exact).
AUTO_TILE_PIXELS = 1024 * 1024
#: The tile size of that automatic tiling.
AUTO_TILE_SIZE = 512


def operating_threshold(config: Any, threshold: float | None = None) -> float:
    """The target threshold to apply: `threshold` when given, else the model's saved operating point
    (`config.target_threshold`, chosen on a validation split by `--target_fa`), else 0.5."""
    return float(threshold) if threshold is not None else float(getattr(config, "target_threshold", 0.5) or 0.5)


def tiling_for(model, height: int, width: int, tile_size: int | None = None) -> int | None:
    """The tile size `class_probabilities` uses for a `height` x `width` input, or `None` for one whole-frame pass.

    Only small-target models (`tiled_target_logits`) tile. `tile_size` 0: never; a positive size: always; `None`
    (automatic): `AUTO_TILE_SIZE` for frames above `AUTO_TILE_PIXELS` whose sides are multiples of the model's
    `tile_multiple`, where the tiled result is identical to the whole-frame one."""
    if not hasattr(model, "tiled_target_logits") or tile_size == 0:
        return None
    if tile_size is not None:
        return int(tile_size)
    multiple = model.tile_multiple
    if height * width > AUTO_TILE_PIXELS and height % multiple == 0 and width % multiple == 0:
        return AUTO_TILE_SIZE
    return None


@torch.inference_mode()
def class_probabilities(model, processor, image: Image.Image, tile_size: int | None = None) -> np.ndarray:
    """Class probabilities `(num_labels, H, W)` at the image size, through the processor's protocol; small-target
    models tile large frames (`tiling_for`)."""
    inputs = processor(images=image, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(model.device, dtype=next(model.parameters()).dtype)
    tile = tiling_for(model, pixel_values.shape[-2], pixel_values.shape[-1], tile_size)
    if tile is not None:
        target_logits = model.tiled_target_logits(pixel_values, tile)
        outputs = SemanticSegmenterOutput(logits=torch.cat([torch.zeros_like(target_logits), target_logits], dim=1))
    else:
        outputs = model(pixel_values=pixel_values)
    logits = processor.resize_logits(outputs, [(image.size[1], image.size[0])])[0]
    return logits.float().softmax(dim=0).cpu().numpy()


def _save_mask(prediction: np.ndarray, path: Path) -> None:
    dtype = np.uint8 if prediction.max(initial=0) < 256 else np.uint16
    Image.fromarray(prediction.astype(dtype)).save(path)


def predict_images(model_name_or_path: str, sources: Sequence[str], out_dir: str | os.PathLike, *,
                   threshold: float | None = None, radiometric: str | None = None, trust_remote_code: bool = False,
                   device: str | None = None, progress: bool = True, tile_size: int | None = None) -> PredictionResult:
    """Segment every image named by `sources` and write the masks, overlays and (binary models) `targets.csv`.

    Args:
        model_name_or_path (`str`): a saved segmentation model folder or Hub id.
        sources (`Sequence[str]`): image files, folders (recursive) or glob patterns.
        out_dir (`str` or `os.PathLike`): output folder (created).
        threshold (`float`, *optional*): target probability above which a pixel is a target (binary models; other
            models take the most probable class); default: the model's saved operating point
            (`config.target_threshold`), else 0.5.
        radiometric (`str`, *optional*): passed to `load_infrared_image` as `radiometric=` when given ("raw",
            "celsius" or "preview" for radiometric FLIR JPEGs); `None` keeps the decoder's default.
        trust_remote_code (`bool`, *optional*): allow remote code when loading the model.
        device (`str`, *optional*): torch device (default: cuda if available, else cpu).
        progress (`bool`, *optional*, defaults to `True`): show a progress bar.
        tile_size (`int`, *optional*): small-target models: run the full-resolution part in tiles of this size (0:
            never; default: automatic for large frames, see `tiling_for`).

    Returns:
        `PredictionResult`.

    Raises:
        FileNotFoundError: a source does not exist or a pattern matches nothing.
        ValueError: no image could be read (every file is named).
    """
    out = Path(out_dir)
    result = PredictionResult()
    images = collect_images(sources, result.skipped)
    model, processor = load_predictor(model_name_or_path, trust_remote_code, device)
    config = model.config
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()} or {
        i: f"class_{i}" for i in range(config.num_labels)}
    palette = _palette(id2label, getattr(config, "palette", None) or [(0, 0, 0)] * len(id2label))
    binary = is_binary_model(config)
    threshold = operating_threshold(config, threshold)
    decode = {} if radiometric is None else {"radiometric": radiometric}
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for path, name in tqdm(images, desc="predict", unit="image", disable=not progress):
        try:
            image = load_infrared_image(path, **decode)
        except InfraredImageError as err:  # the message names the file
            reason = str(err) if str(path) in str(err) else f"{path}: {err}"
            result.skipped.append(reason)
            tqdm.write(f"skipped {reason}")
            continue
        probabilities = class_probabilities(model, processor, image, tile_size)
        if binary:
            mask = probabilities[1] > threshold
            prediction = mask.astype(np.uint8)
            rows.extend({"image": str(path), **target} for target in find_targets(probabilities[1], mask))
        else:
            prediction = probabilities.argmax(axis=0)
        mask_path, overlay_path = out / f"{name}_mask.png", out / f"{name}_overlay.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        _save_mask(prediction, mask_path)
        overlay_panels(image, prediction, id2label, palette).save(overlay_path)
        result.written.append((str(path), str(mask_path), str(overlay_path)))
    if not result.written:
        listed = "; ".join(result.skipped) or "none found"
        raise ValueError(f"no readable image in {' '.join(map(str, sources))} ({listed})")
    if binary:
        result.targets_csv = str(out / TARGETS_NAME)
        with open(result.targets_csv, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=TARGET_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        result.targets = len(rows)
    return result


def command_predict(args) -> int:
    """Run `unip predict`; returns the exit status (1 when no image could be read)."""
    try:
        result = predict_images(args.model, args.images, args.out, threshold=args.threshold,
                                radiometric=args.radiometric, trust_remote_code=args.trust_remote_code,
                                device=args.device, progress=not args.no_progress,
                                tile_size=getattr(args, "tile_size", None))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 1
    print(f"{len(result.written)} image(s) segmented: masks and overlays in {args.out}")
    if result.targets_csv:
        print(f"{result.targets} target(s) listed in {result.targets_csv}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} file(s):")
        for item in result.skipped:
            print(f"  {item}")
    return 0


__all__ = ["predict_images"]
