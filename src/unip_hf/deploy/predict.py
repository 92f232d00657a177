"""`unip predict`: a UNIP segmentation model (Zhang et al., "UNIP", ICLR 2025) on your own images.

Images come from files, folders (recursive, through `unip_hf.data.files.find_images`) or glob patterns, in any depth or
mode (decoded by `infrared_decoding.load_infrared_image`, the one decoder); each is run through the model's
saved processor (its evaluation protocol: resize, normalise, pad; `resize_logits` back to the image size), and gets
`<name>_mask.png` (class ids) and `<name>_overlay.png` (input and prediction side by side, with a legend, drawn by
`demo.overlay_panels`). For a binary model (two classes, as every small-target model is) the target class is the
pixels whose probability exceeds `threshold`, and `targets.csv` lists the targets: 8-connected components, as the
IRSTD metrics count them, with centroid, area, bounding box and peak probability (written as each image is done).

What a run refuses before it loads the model (`PredictionSetupError`): an `--out` that is, or holds, an input (a
file, folder or glob base inside it: outputs such as `foo_overlay.png` could replace an input of that name and a
later run would read them as images; an `--out` inside an input folder is fine, searches never enter it), an output
path that resolves to an input, a model without its segmentation head (`load_segmentation_model`), and processor
settings the processor itself refuses (`--radiometric celsius` without `--intensity_range`). What it skips, names
and counts, finishing the other images: unreadable files, images the processor refuses (NaN/inf floats, 1-bit),
float images outside [0, 1] without `--intensity_range` (temperatures would all clip to 1), and images too small or
too elongated for the model after its resize.
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
from transformers import AutoImageProcessor
from transformers.modeling_outputs import SemanticSegmenterOutput

from unip_hf.studies.demo import _palette, overlay_panels
from unip_hf.data.files import IMAGE_EXTENSIONS, find_images
from unip_hf.models.infrared_decoding import InfraredImageError, load_infrared_image
from unip_hf.evaluation.model_saving import MissingTaskHeadError, load_segmentation_model, make_processor, task_head_problem

TARGETS_NAME = "targets.csv"
TARGET_COLUMNS = ("image", "target", "centroid_x", "centroid_y", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
                  "max_score")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_GLOB_CHARACTERS = set("*?[")
OUTPUT_SUFFIXES = ("_mask.png", "_overlay.png")
#: Float images whose values lie further than this outside [0, 1] are not clipped silently (the processor's
#: tolerance before it warns).
_FLOAT_TOLERANCE = 1e-3


class PredictionSetupError(ValueError):
    """A `unip predict` run refused before any image is read: the arguments, the output folder or the model (the
    message names which and how to fix it)."""


@dataclass
class PredictionResult:
    """What `predict_images` did: the images written (`(image, mask, overlay)` paths), the files skipped
    (`"path: reason"`), the number of targets listed and the CSV path (binary models)."""

    written: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    targets: int = 0
    targets_csv: str | None = None
    not_searched: list[str] = field(default_factory=list)


def is_binary_model(config: Any) -> bool:
    """Whether a model predicts one target class against background (two labels), as small-target models do (their
    config type is `unip_small_target`); their predictions get a `targets.csv`."""
    return getattr(config, "model_type", None) == "unip_small_target" or int(getattr(config, "num_labels", 0)) == 2


def _is_glob(source: str) -> bool:
    return not os.path.lexists(source) and bool(_GLOB_CHARACTERS & set(source))


def _glob_base(pattern: str) -> str:
    """The folder a glob pattern searches: its leading components without glob characters."""
    parts = Path(pattern).parts
    fixed = parts[: next((i for i, part in enumerate(parts) if _GLOB_CHARACTERS & set(part)), len(parts))]
    return str(Path(*fixed)) if fixed else "."


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies below it, links resolved."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_out_folder(sources: Sequence[str], out_dir: str | os.PathLike) -> None:
    """Refuse an `--out` that is or holds an input: a file named directly, a searched folder or a glob's base folder
    equal to `--out` or inside it. (An `--out` inside a searched folder is fine: `collect_images` skips it.)

    Raises:
        PredictionSetupError: naming `--out`, the input and the way out.
    """
    for source in sources:
        base = _glob_base(source) if _is_glob(source) else source
        if os.path.lexists(base) and _inside(base, out_dir):
            what = "the input file" if os.path.isfile(base) else "the input folder"
            raise PredictionSetupError(
                f"--out {out_dir} is or holds {what} {source}: outputs (<name>_mask.png, <name>_overlay.png) would be "
                "written among the inputs, could replace an input of the same name (e.g. foo_overlay.png) and a "
                "later run would read them as images. Choose an --out that holds no input, e.g. "
                f"{Path(base if os.path.isdir(base) else Path(base).parent) / 'predictions'} (a folder inside the "
                "inputs is never searched)")


def collect_images(sources: Sequence[str], skipped: list[str], out_dir: str | os.PathLike | None = None,
                   not_searched: list[str] | None = None) -> list[tuple[Path, str]]:
    """`(path, output name)` of every image named by `sources` (files, folders searched recursively, or glob
    patterns such as `data/*.png` or `data/**/*.tif`), each real file once. The output name keeps a file's path below
    the folder it was found in (a file given directly: its name), without the suffix; names that would collide get
    `-2`, `-3`, ...

    Folder searches and glob patterns never take a file under `out_dir` (earlier outputs are not inputs): such files
    are listed in `not_searched`.

    Raises:
        FileNotFoundError: a source that is neither a path nor a glob pattern matching anything.
    """
    found: list[tuple[Path, str]] = []
    for source in sources:
        if _is_glob(source):
            matches = sorted(glob.glob(source, recursive=True))
            files = [m for m in matches if os.path.isfile(m) and m.lower().endswith(IMAGE_EXTENSIONS)]
            if not files:
                raise FileNotFoundError(f"no image file matches {source!r}")
            found.extend((Path(m), Path(m).stem, True) for m in files)
            continue
        searched = os.path.isdir(source)
        for path in find_images(source, skipped=skipped):
            relative = path.relative_to(source) if searched else Path(path.name)
            found.append((path, str(relative.with_suffix("")), searched))
    if out_dir is not None:
        kept = []
        for path, name, searched in found:
            if searched and _inside(path, out_dir):
                if not_searched is not None:
                    not_searched.append(str(path))
            else:
                kept.append((path, name, searched))
        found = kept
    found = [(path, name) for path, name, _ in found]
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


def load_predictor(model_name_or_path: str, trust_remote_code: bool = False, device: str | None = None,
                   radiometric: str | None = None, intensity_range: Sequence[float] | None = None):
    """The segmentation model (eval mode, on `device`) and its processor: the one saved with it, else the
    evaluation protocol built from its config (`segmentation_saving.make_processor`), with `radiometric` and
    `intensity_range` (when given) replacing the saved ones.

    Raises:
        PredictionSetupError: settings the processor refuses (built through the processor class itself, so predict
            refuses exactly what the processor refuses, e.g. `radiometric="celsius"` without `intensity_range`), or a
            model without its segmentation head (before its weights load when its config says so).
    """
    problem = task_head_problem(model_name_or_path)
    if problem:
        raise PredictionSetupError(f"MODEL {problem}")
    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # no preprocessor_config.json: the evaluation protocol of the config
        processor = None
    try:
        model = load_segmentation_model(model_name_or_path, trust_remote_code=trust_remote_code)
    except MissingTaskHeadError as err:
        raise PredictionSetupError(f"MODEL {err}") from None
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    if processor is None:
        processor = make_processor(model.config)
    overrides = {name: value for name, value in (("radiometric", radiometric),
                                                 ("intensity_range", intensity_range)) if value is not None}
    if overrides:
        try:  # the processor's own checks decide (and a saved intensity_range serves a new --radiometric celsius)
            processor = type(processor).from_dict(
                {**processor.to_dict(), **{k: list(v) if k == "intensity_range" else v for k, v in overrides.items()}})
        except ValueError as err:
            flags = " ".join(f"--{name}" for name in overrides) or "the saved processor"
            raise PredictionSetupError(f"{flags}: {err}".replace(
                "intensity_range=(lo, hi)", "--intensity_range LO HI").replace("(-20, 120)", "-20 120")) from None
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


def _float_range_problem(image: Image.Image, processor) -> str | None:
    """Why a float image would be wrong without `intensity_range`: values outside [0, 1] that the processor would
    clip (temperatures in degrees would all become 1.0, a constant image)."""
    if image.mode != "F" or getattr(processor, "intensity_range", None) is not None:
        return None
    values = np.asarray(image, dtype=np.float32)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return None  # NaN/inf: the processor refuses it with its own message
    low, high = float(finite.min()), float(finite.max())
    if low >= -_FLOAT_TOLERANCE and high <= 1 + _FLOAT_TOLERANCE:
        return None
    return (f"float values from {low:g} to {high:g}, outside the [0, 1] a float image is read as (they would be "
            "clipped, e.g. every temperature above 1 degree to 1.0); pass --intensity_range LO HI, the values "
            "mapped to 0 and 1 (e.g. -20 120 for degrees Celsius)")


def _model_input(processor, image: Image.Image, patch_size: int) -> dict[str, Any]:
    """The processor's inputs for one image; `ValueError` (naming the image) for what the processor refuses and for
    an image too small or too elongated for the model after the processor's resize."""
    inputs = processor(images=image, return_tensors="pt")
    height, width = inputs["pixel_values"].shape[-2:]
    smallest = 2 * patch_size  # the LL-FPN's 1/32 level pools the patch grid by 2
    if min(height, width) < smallest:
        raise ValueError(
            f"{image.size[0]}x{image.size[1]} becomes {width}x{height} at the model's input, smaller than the "
            f"{smallest} px per side it needs (2 patches of {patch_size}); crop or pad it to a less elongated shape")
    return inputs


@torch.inference_mode()
def class_probabilities(model, processor, image: Image.Image, inputs: dict[str, Any] | None = None,
                        tile_size: int | None = None) -> np.ndarray:
    """Class probabilities `(num_labels, H, W)` at the image size, through the processor's protocol; small-target
    models tile large frames (`tiling_for`)."""
    if inputs is None:
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


def mask_dtype(num_labels: int) -> type:
    """The dtype of saved masks: uint8 up to 256 classes, uint16 (16-bit PNG) up to 65536, the same for every image
    of a model so that every mask of a run reads back alike.

    Raises:
        PredictionSetupError: more than 65536 classes (no PNG holds them)."""
    if num_labels <= 256:
        return np.uint8
    if num_labels <= 65536:
        return np.uint16
    raise PredictionSetupError(f"MODEL predicts {num_labels} classes; masks are PNGs of at most 16 bits (65536 ids)")


def _save_mask(prediction: np.ndarray, path: Path, dtype: type = np.uint8) -> None:
    if prediction.max(initial=0) > np.iinfo(dtype).max:
        raise ValueError(f"{path}: class id {int(prediction.max())} does not fit a {np.dtype(dtype).name} mask")
    Image.fromarray(prediction.astype(dtype)).save(path)


def _skip(result: PredictionResult, path: Path, reason: str) -> None:
    reason = reason if str(path) in reason else f"{path}: {reason}"
    result.skipped.append(reason)
    tqdm.write(f"skipped {reason}")


def check_outputs(images: Sequence[tuple[Path, str]], out: Path) -> None:
    """Refuse a run where an output path (`<name>_mask.png`, `<name>_overlay.png`, `targets.csv`) is, or links to, one
    of its inputs.

    Raises:
        PredictionSetupError: naming the output and the input."""
    inputs = {os.path.realpath(path): path for path, _ in images}
    planned = [out / TARGETS_NAME] + [out / f"{name}{suffix}" for _, name in images for suffix in OUTPUT_SUFFIXES]
    for output in planned:
        hit = inputs.get(os.path.realpath(output))
        if hit is not None:
            raise PredictionSetupError(f"--out {out}: the output {output} would replace the input {hit}; choose an "
                                       "--out that holds no input")


def predict_images(model_name_or_path: str, sources: Sequence[str], out_dir: str | os.PathLike, *,
                   threshold: float | None = None, radiometric: str | None = None,
                   intensity_range: Sequence[float] | None = None, trust_remote_code: bool = False,
                   device: str | None = None, progress: bool = True, tile_size: int | None = None) -> PredictionResult:
    """Segment every image named by `sources` and write the masks, overlays and (binary models) `targets.csv`.

    Args:
        model_name_or_path (`str`): a saved segmentation model folder or Hub id (with its segmentation head).
        sources (`Sequence[str]`): image files, folders (recursive) or glob patterns.
        out_dir (`str` or `os.PathLike`): output folder (created). It must not be, or hold, an input; a folder inside
            a searched input folder is not searched.
        threshold (`float`, *optional*): target probability above which a pixel is a target (binary models; other
            models take the most probable class); default: the model's saved operating point
            (`config.target_threshold`), else 0.5.
        radiometric (`str`, *optional*): how FLIR radiometric JPEGs are read ("raw", "celsius" or "preview"),
            replacing the saved processor's setting; `None` keeps it (by default the decoder's: the preview).
        intensity_range (`(lo, hi)`, *optional*): float values (temperatures) mapped to 0 and 1, replacing the saved
            processor's; required by `radiometric="celsius"`, and by float images outside [0, 1] (skipped without it).
        trust_remote_code (`bool`, *optional*): allow remote code when loading the model.
        device (`str`, *optional*): torch device (default: cuda if available, else cpu).
        progress (`bool`, *optional*, defaults to `True`): show a progress bar.
        tile_size (`int`, *optional*): small-target models: run the full-resolution part in tiles of this size (0:
            never; default: automatic for large frames, see `tiling_for`).

    Returns:
        `PredictionResult`.

    Raises:
        FileNotFoundError: a source does not exist or a pattern matches nothing.
        PredictionSetupError: a refused `--out`, processor setting or model (before any image is read).
        ValueError: no image could be read (every file is named).
    """
    out = Path(out_dir)
    result = PredictionResult()
    check_out_folder(sources, out)
    images = collect_images(sources, result.skipped, out, result.not_searched)
    check_outputs(images, out)
    model, processor = load_predictor(model_name_or_path, trust_remote_code, device, radiometric, intensity_range)
    config = model.config
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()} or {
        i: f"class_{i}" for i in range(config.num_labels)}
    dtype = mask_dtype(int(config.num_labels))
    palette = _palette(id2label, getattr(config, "palette", None) or [(0, 0, 0)] * len(id2label))
    binary = is_binary_model(config)
    threshold = operating_threshold(config, threshold)
    patch_size = int(getattr(config, "patch_size", 16))
    saved_radiometric = getattr(processor, "radiometric", None)
    decode = {} if saved_radiometric is None else {"radiometric": saved_radiometric}
    out.mkdir(parents=True, exist_ok=True)
    handle = writer = None
    try:
        for path, name in tqdm(images, desc="predict", unit="image", disable=not progress):
            try:
                image = load_infrared_image(path, **decode)
            except InfraredImageError as err:  # the message names the file
                _skip(result, path, str(err))
                continue
            problem = _float_range_problem(image, processor)
            if problem:
                _skip(result, path, problem)
                continue
            try:  # what the processor refuses (NaN/inf floats, 1-bit images) and images too small for the model
                inputs = _model_input(processor, image, patch_size)
                probabilities = class_probabilities(model, processor, image, inputs, tile_size)
            except (ValueError, RuntimeError) as err:
                _skip(result, path, str(err) if isinstance(err, ValueError) else
                      f"the model cannot run on this {image.size[0]}x{image.size[1]} image "
                      f"({type(err).__name__}: {err})")
                continue
            rows: list[dict[str, Any]] = []
            if binary:
                mask = probabilities[1] > threshold
                prediction = mask.astype(np.uint8)
                rows = [{"image": str(path), **target} for target in find_targets(probabilities[1], mask)]
            else:
                prediction = probabilities.argmax(axis=0)
            mask_path, overlay_path = out / f"{name}_mask.png", out / f"{name}_overlay.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            _save_mask(prediction, mask_path, dtype)
            shown = Image.fromarray(np.rint(processor.to_intensity(image) * 255).astype(np.uint8), mode="L")
            overlay_panels(shown, prediction, id2label, palette).save(overlay_path)  # the intensity the model sees
            result.written.append((str(path), str(mask_path), str(overlay_path)))
            if binary:  # written as it goes: an interrupted run keeps the targets of the images it finished
                if handle is None:
                    result.targets_csv = str(out / TARGETS_NAME)
                    handle = open(result.targets_csv, "w", newline="", encoding="utf-8")
                    writer = csv.DictWriter(handle, fieldnames=TARGET_COLUMNS)
                    writer.writeheader()
                writer.writerows(rows)
                handle.flush()
                result.targets += len(rows)
    finally:
        if handle is not None:
            handle.close()
    if not result.written:
        listed = "; ".join(result.skipped) or "none found"
        raise ValueError(f"no readable image in {' '.join(map(str, sources))} ({listed})")
    return result


def command_predict(args) -> int:
    """Run `unip predict`; returns the exit status (2 for a refused run, as argparse's usage errors, one line on
    stderr; 1 when no image could be read)."""
    try:
        result = predict_images(args.model, args.images, args.out, threshold=args.threshold,
                                radiometric=args.radiometric, intensity_range=getattr(args, "intensity_range", None),
                                trust_remote_code=args.trust_remote_code, device=args.device,
                                progress=not args.no_progress, tile_size=getattr(args, "tile_size", None))
    except PredictionSetupError as err:
        parser = getattr(args, "command_parser", None)
        if parser is not None:
            parser.error(str(err))  # exits 2
        print(f"error: {err}")
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 1
    if result.not_searched:
        print(f"not read: {len(result.not_searched)} file(s) under --out {args.out} (earlier outputs are never inputs)")
    print(f"{len(result.written)} image(s) segmented: masks and overlays in {args.out}")
    if result.targets_csv:
        print(f"{result.targets} target(s) listed in {result.targets_csv}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} file(s):")
        for item in result.skipped:
            print(f"  {item}")
    return 0


__all__ = ["predict_images"]
