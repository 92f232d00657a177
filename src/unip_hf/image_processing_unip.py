"""Image processor of UNIP infrared models (Zhang et al., "UNIP: Rethinking Pre-trained Attention Patterns for Infrared
Semantic Segmentation", ICLR 2025): decodes infrared images of any depth and mode to one intensity channel, scales
8/16-bit and float data to [0, 1], resizes, normalises with infrared statistics and replicates to the model's channels.

This file imports only numpy, PIL, torch, transformers, the standard library and its sibling `configuration_unip`,
so that it travels with saved checkpoints as remote code.

How each input kind becomes intensity in [0, 1] (before normalisation):

| input | intensity | scaling to [0, 1] |
|---|---|---|
| PIL `L`; uint8 arrays/tensors (H,W), (H,W,1), (1,H,W) | the value | `x * rescale_factor` (1/255) |
| PIL `RGB`, `RGBA`, `RGBX`, `P`, `PA`, `LA`, other 8-bit modes; uint8 (H,W,3)/(H,W,4) | ITU-R 601 luma `0.299 R + 0.587 G + 0.114 B` (alpha dropped, `P` through its palette) | `x * rescale_factor` |
| PIL `I;16`, `I;16B`, `I;16L`, `I`; uint16 arrays/tensors (1 or 3/4 channels, colour through luma) | the value (or luma) | `bit_depth_scaling`: `"percentile"` (default) or `"fixed"`, see below |
| PIL `F`; float16/32/64 arrays/tensors | the value (or luma) | taken as already in [0, 1] and clipped to it; with `intensity_range=(lo, hi)`: `(x - lo) / (hi - lo)`, clipped |

16-bit data (`bit_depth_scaling`):
- `"percentile"`: a per-image robust stretch, `(x - p_lo) / (p_hi - p_lo)` clipped to [0, 1], where `p_lo, p_hi` are
  the `percentiles` (default 1 and 99) of that image. This is what raw 14-bit thermal camera counts need (they occupy
  a narrow band of the 16-bit range). A constant image (`p_hi == p_lo`) falls back to the fixed scaling.
- `"fixed"`: `(x - lo) / (hi - lo)` clipped to [0, 1] with `(lo, hi) = intensity_range`, default `(0, 65535)`.

Refused as images (`ValueError` naming what was received and what is accepted): boolean arrays, integer arrays of
other dtypes than uint8/uint16 (int32/int64 arrays are label maps: pass them as `segmentation_maps=`), PIL mode `1`,
arrays with 2 or 5+ channels, arrays that are not 2-D or 3-D (batches go in a list or a 4-D array), empty images, and
float data containing NaN or infinity.

This module owns the decoding of the whole package: `load_infrared_image` opens files (EXIF orientation applied,
`MAX_IMAGE_PIXELS` enforced, unreadable/truncated files an `InfraredImageError` naming the file) and
`decode_intensity` turns any input into the intensity above; the data builders, the training/evaluation transforms
and the attention analysis call these two functions.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import (
    get_resize_output_image_size,
    get_size_with_aspect_ratio,
)
from transformers.image_utils import (
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
    get_image_size_for_max_height_width,
    load_image,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType, logging

from .configuration_unip import AUTO_MAP, write_remote_code

logger = logging.get_logger(__name__)

# Infrared statistics used by UNIP pre-training and fine-tuning (intensity in [0, 1]).
INFRARED_MEAN = 0.3801
INFRARED_STD = 0.1871
# ITU-R BT.601 luma weights (the weights PIL uses for RGB -> L).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
BIT_DEPTH_SCALINGS = ("percentile", "fixed")
#: Percentiles of the default per-image stretch of 16-bit data.
DEFAULT_PERCENTILES = (1.0, 99.0)
#: The per-call options of `UnipImageProcessor.to_intensity` that `process_image` passes on.
_DECODING_OPTIONS = ("bit_depth_scaling", "intensity_range", "percentiles", "do_rescale", "rescale_factor",
                     "radiometric")
#: The geometry options that the label maps share with their images, in `_process_segmentation_maps`' order.
_GEOMETRY_OPTIONS = ("do_resize", "size", "do_center_crop", "crop_size", "img_scale", "size_divisor")
#: Largest image, in pixels (width x height), that `load_infrared_image` decodes: 64 megapixels (an 8000x8000 frame;
#: infrared cameras deliver at most a few megapixels). A larger file is refused with an `InfraredImageError` naming it,
#: before its pixels are decoded. Pass `max_pixels=` to the functions of this module, or set this attribute, to
#: change it (0 or `None` disables the check; PIL's own decompression-bomb limit of about 179 megapixels still holds).
MAX_IMAGE_PIXELS = 64_000_000
_EXIF_ORIENTATION = 0x0112

_ACCEPTED_IMAGES = (
    "accepted images: PIL images of mode L, LA, P, PA, RGB, RGBA, I;16, I;16B, I;16L, I or F (other colour modes are "
    "converted to RGB); numpy arrays or torch tensors of dtype uint8, uint16 or float16/32/64 shaped (H, W), (H, W, C) "
    "or (C, H, W) with C = 1, 3 (RGB) or 4 (RGBA); a path to an image file; or a list of these / a 4-D batch"
)
_ACCEPTED_MAPS = (
    "accepted segmentation maps: PIL images of mode L, P (palette indices), I, I;16 or 1; numpy arrays or torch "
    "tensors of any integer or boolean dtype (or float with integral values) shaped (H, W), (H, W, 1) or (1, H, W)"
)
_INT16_PIL_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: What `load_infrared_image(radiometric=...)` reads from a FLIR radiometric JPEG: its false-colour (or gray) preview
#: image, as for any JPEG (`"preview"`, and what `None` does); the 16-bit raw thermal counts (`"raw"`, PIL `I;16`); or
#: the temperatures in degrees Celsius from the embedded calibration (`"celsius"`, PIL `F`).
RADIOMETRIC_MODES = ("preview", "raw", "celsius")
_RADIOMETRIC_EXTRA = 'pip install "unip-hf[radiometric]"'


def _describe(obj: Any) -> str:
    """Short human-readable description of an input, for error messages."""
    if isinstance(obj, PIL.Image.Image):
        return f"a PIL image of mode {obj.mode!r} and size {obj.size}"
    if isinstance(obj, torch.Tensor):
        return f"a torch tensor of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    if isinstance(obj, np.ndarray):
        return f"a numpy array of shape {obj.shape} and dtype {obj.dtype}"
    return f"an object of type {type(obj).__name__}"


class InfraredImageError(ValueError):
    """An image that cannot be used (missing, unreadable, truncated, too large, wrong kind, NaN/inf); the message
    starts with the file name. Data builders and the attention analysis skip, name and count such files."""


def _source_name(image: Any, name: str | None = None) -> str | None:
    """The name used in error messages: `name`, else the file path, else `None` (in-memory arrays)."""
    if name:
        return str(name)
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, dict):
        return str(image["path"]) if image.get("path") else "<image bytes>"
    if isinstance(image, (bytes, bytearray)):
        return "<image bytes>"
    if isinstance(image, PIL.Image.Image) and getattr(image, "filename", ""):
        return str(image.filename)
    return None


def load_infrared_image(
    image: str | os.PathLike | bytes | dict | PIL.Image.Image,
    *,
    max_pixels: int | None = None,
    name: str | None = None,
    draft: Callable[[int, int], tuple[int, int] | None] | None = None,
    radiometric: str | None = None,
) -> PIL.Image.Image:
    """Open an image file keeping its mode and bit depth (no RGB conversion, unlike transformers' `load_image`).

    The EXIF orientation is applied (as `datasets` and transformers' `load_image` do). 16-bit PNG/TIFF files stay
    `I;16`/`I`, float TIFFs stay `F`. The pixel count is checked against `max_pixels` from the header, before any pixel
    is decoded. A PIL image is returned as given (its pixels were decoded by the caller).

    Args:
        image (`str`, `os.PathLike`, `bytes`, `dict` or `PIL.Image.Image`):
            Path of a local image file, the encoded bytes, or a `datasets` image dict (`{"bytes", "path"}`).
        max_pixels (`int`, *optional*, defaults to `MAX_IMAGE_PIXELS`):
            Largest accepted width x height; 0 disables the check.
        name (`str`, *optional*):
            Name of the image in error messages (default: its path).
        draft (`Callable`, *optional*):
            Called once with the (width, height) of the image as it will be returned, before its pixels are decoded;
            for a JPEG, a returned (width, height) is the smallest size needed, and the file is decoded straight to
            8-bit luma at the largest reduced scale (1/2, 1/4, 1/8) that still covers it (PIL's `draft`).
        radiometric (`str`, *optional*):
            What to read from a FLIR radiometric JPEG (one with FLIR thermal data in its APP1 segments), see
            `RADIOMETRIC_MODES`: `"raw"` gives the 16-bit thermal counts (`I;16`), `"celsius"` the temperatures in
            degrees Celsius (`F`, from the calibration the file carries), both at the sensor's resolution and read
            with the optional library `flyr` (`pip install "unip-hf[radiometric]"`); `"preview"` the JPEG's own
            (false-colour) image. `None` (default) reads the preview, as for any JPEG, and warns once that the file
            holds thermal data, so that what a model sees never depends on whether an optional package is installed.
            With `"raw"` or `"celsius"`, a file without FLIR thermal data is an `InfraredImageError` (no silent
            fallback to the preview). PIL images are returned as given.

    Returns:
        `PIL.Image.Image`: the decoded image, fully loaded, with `filename` set to its name.

    Raises:
        InfraredImageError: the file does not exist, is not an image, is truncated or corrupt, or is too large; with
            `radiometric="raw"` or `"celsius"`, it holds no FLIR thermal data that `flyr` can read.
        ImportError: `radiometric="raw"` or `"celsius"` without `flyr` installed (names the file and the extra).
    """
    if radiometric is not None and radiometric not in RADIOMETRIC_MODES:
        raise ValueError(f"`radiometric` must be one of {RADIOMETRIC_MODES} or None, got {radiometric!r}.")
    if isinstance(image, PIL.Image.Image):
        if draft is not None:
            draft(*image.size)
        return image
    label = _source_name(image, name)
    if isinstance(image, dict):
        if image.get("bytes") is None and not image.get("path"):
            raise ValueError(f"Received an image dict without 'bytes' or 'path' ({sorted(image)}); {_ACCEPTED_IMAGES}.")
        image = image["bytes"] if image.get("bytes") is not None else image["path"]
    if isinstance(image, (bytes, bytearray)):
        source: Any = io.BytesIO(image)
    elif isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        if not os.path.isfile(source):
            what = " (a dangling symbolic link)" if os.path.islink(source) else ""
            raise InfraredImageError(
                f"Received the path {source!r}{what}, but no such image file was found."
            )
    else:
        raise ValueError(f"Received {_describe(image)}; {_ACCEPTED_IMAGES}.")
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        opened = PIL.Image.open(source)
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds; all mean "not an image we can read"
        raise InfraredImageError(f"{label}: cannot be read as an image ({type(err).__name__}: {err})") from err
    with opened:
        is_flir = opened.format == "JPEG" and any(
            marker == "APP1" and data.startswith(b"FLIR\x00") for marker, data in getattr(opened, "applist", ())
        )
        width, height = opened.size
        if limit and width * height > limit:
            raise InfraredImageError(
                f"{label}: {width}x{height} = {width * height} pixels exceeds the limit of {limit} pixels "
                f"({limit / 1e6:g} megapixels; raise it with max_pixels= or "
                "unip_hf.image_processing_unip.MAX_IMAGE_PIXELS, or downscale/tile the image)."
            )
        if radiometric in ("raw", "celsius"):
            decoded = _read_flir_thermal(image if isinstance(image, (bytes, bytearray)) else source, label,
                                         radiometric, is_flir)
            if draft is not None:
                draft(*decoded.size)
            return decoded
        if is_flir and radiometric is None:
            _warn_preview_once(label)
        try:
            if draft is not None and opened.format == "JPEG":
                swapped = opened.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
                wanted = draft(*((height, width) if swapped else (width, height)))
                if wanted is not None:
                    opened.draft("L", (wanted[1], wanted[0]) if swapped else tuple(wanted))
                draft = None
            opened.load()
            decoded = PIL.ImageOps.exif_transpose(opened)
        except Exception as err:  # noqa: BLE001
            raise InfraredImageError(
                f"{label}: cannot be decoded, the file is truncated or corrupt ({type(err).__name__}: {err})"
            ) from err
    decoded.filename = label
    if draft is not None:
        draft(*decoded.size)
    return decoded


_PREVIEW_WARNED: list[str] = []


def _warn_preview_once(label: str) -> None:
    """Say once per process that FLIR radiometric JPEGs are read as their previews (naming the first such file)."""
    if _PREVIEW_WARNED:
        return
    _PREVIEW_WARNED.append(label)
    logger.warning(
        f"{label}: a FLIR radiometric JPEG, read as its preview image (false colour turned to luma), not as its "
        "thermal data. Pass radiometric='raw' (16-bit counts) or 'celsius' (UnipImageProcessor(radiometric=...), "
        "`unip predict --radiometric raw`) to read the thermal data, or radiometric='preview' to keep the preview "
        "without this warning (said once; other such files are read the same way)."
    )


def _read_flir_thermal(source: Any, label: str, radiometric: str, is_flir: bool) -> PIL.Image.Image:
    """The thermal image of a FLIR radiometric JPEG through `flyr`: raw counts (`I;16`) or degrees Celsius (`F`)."""
    if not is_flir:
        raise InfraredImageError(
            f"{label}: holds no FLIR radiometric data (no FLIR APP1 segment), so radiometric={radiometric!r} cannot "
            "be read from it; use radiometric='preview' (or leave it unset) for ordinary images."
        )
    try:
        import flyr  # optional (the `radiometric` extra); imported here only, so this file still travels as remote code
        from flyr.records import RecordIndex, extract_flir_app1, parse_flir_records
        from flyr.thermal import parse_raw_data
    except ImportError as err:
        raise ImportError(
            f"{label}: reading the thermal data of a FLIR radiometric JPEG (radiometric={radiometric!r}) needs the "
            f"optional library flyr: {_RADIOMETRIC_EXTRA} (or `pip install flyr`); radiometric='preview' reads the "
            "preview image without it."
        ) from err
    payload = source if isinstance(source, (bytes, bytearray)) else open(source, "rb").read()
    unreadable = (
        label + ": its FLIR thermal data cannot be read by flyr ({}); radiometric='preview' reads its preview image."
    )
    try:
        app1 = extract_flir_app1(io.BytesIO(payload))
        header = app1.getbuffer()
        # flyr reads the record directory big-endian and trusts its size; a little-endian FFF header (DJI Zenmuse XT
        # and XT-R files) gives an absurd count that would take flyr minutes to walk: refuse it from the header.
        entries = int.from_bytes(bytes(header[28:32]), "big") if len(header) >= 64 else 0
        if not 0 < 32 * entries <= len(header):
            raise ValueError(f"record directory of {entries} entries in {len(header)} bytes: an FFF layout flyr "
                             "does not support (e.g. little-endian, as DJI Zenmuse XT files)")
        if radiometric == "raw":
            records = parse_flir_records(app1)
            if RecordIndex.RAW_DATA.value not in records:
                raise ValueError("no raw-data record")
            _, _, counts = parse_raw_data(app1, records[RecordIndex.RAW_DATA.value])
            values = np.asarray(counts)
            if values.size == 0 or values.min() < 0 or values.max() > 65535:
                raise ValueError("raw counts outside 0..65535")
            decoded = PIL.Image.fromarray(values.astype(np.uint16))
        else:
            celsius = np.asarray(flyr.unpack(io.BytesIO(payload)).celsius, dtype=np.float32)
            if celsius.size == 0 or not np.isfinite(celsius).all():
                raise ValueError("the calibration gives non-finite temperatures")
            decoded = PIL.Image.fromarray(celsius)  # mode F
    except (ValueError, KeyError, IndexError, EOFError, OSError, TypeError) as err:
        raise InfraredImageError(unreadable.format(f"{type(err).__name__}: {err}")) from err
    decoded.filename = label
    return decoded


def _is_image_object(obj: Any) -> bool:
    return isinstance(obj, (PIL.Image.Image, np.ndarray, torch.Tensor, str, os.PathLike))


def _flatten_inputs(inputs: Any, batch_ndim: int, what: str) -> list:
    """Flatten a single input, a (nested) list, or a batched array into a list of single inputs.

    `batch_ndim` is the number of dimensions from which an array counts as a batch (4 for images, 3 for segmentation
    maps, except `(H, W, 1)` maps).
    """
    if isinstance(inputs, (list, tuple)):
        if len(inputs) == 0:
            accepted = _ACCEPTED_IMAGES if what == "images" else _ACCEPTED_MAPS
            raise ValueError(f"Received an empty list of {what}; {accepted}.")
        flat = []
        for item in inputs:
            if isinstance(item, (list, tuple)):
                flat.extend(_flatten_inputs(item, batch_ndim, what))
            else:
                flat.append(item)
        return flat
    if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim >= batch_ndim:
        is_single_map = what != "images" and inputs.ndim == 3 and inputs.shape[-1] == 1
        if inputs.ndim == batch_ndim and not is_single_map:
            return list(inputs)
    return [inputs]


def _to_numpy(image: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.bfloat16:
            image = image.float()
        return image.numpy()
    return image


def _channels_last(array: np.ndarray, prefer_first: bool, input_data_format: Any, received: str) -> np.ndarray:
    """Return a 3-D array channels-last, deciding where the channel axis is when not told."""
    if input_data_format is not None:
        fmt = ChannelDimension(input_data_format)
        return np.moveaxis(array, 0, -1) if fmt == ChannelDimension.FIRST else array
    first_ok, last_ok = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
    if prefer_first and first_ok:
        return np.moveaxis(array, 0, -1)
    if last_ok:
        return array
    if first_ok:
        return np.moveaxis(array, 0, -1)
    raise ValueError(
        f"Received {received}: it has no channel axis of size 1, 3 or 4 (e.g. a {array.shape[-1]}-channel image "
        f"or a stack of 2-D images); {_ACCEPTED_IMAGES}."
    )


def _decode_image(image: Any, input_data_format: Any = None) -> tuple[np.ndarray, str]:
    """Decode one image into a channels-last array with 1 or 3 channels and its value kind.

    Returns:
        `(array, kind)` with `array` of shape (H, W, 1) or (H, W, 3) and `kind` one of `"uint8"`, `"uint16"`, `"float"`.
    """
    received = _describe(image)
    if isinstance(image, PIL.Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"Received an empty image ({received}); images need at least one pixel.")
        mode = image.mode
        if mode == "1":
            raise ValueError(
                f"Received {received}: a 1-bit image looks like a mask, not an infrared image. Pass masks as "
                f"`segmentation_maps=`; {_ACCEPTED_IMAGES}."
            )
        if mode == "L":
            return np.asarray(image)[..., None], "uint8"
        if mode == "LA":
            return np.asarray(image)[..., :1], "uint8"
        if mode in _INT16_PIL_MODES:
            return np.asarray(image)[..., None], "uint16"
        if mode == "F":
            return np.asarray(image)[..., None], "float"
        if mode not in ("RGB", "RGBA", "RGBX"):
            # P and PA go through their palette; CMYK, YCbCr, LAB, HSV, La, RGBa through PIL's RGB conversion.
            image = image.convert("RGB")
        return np.asarray(image)[..., :3], "uint8"

    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise ValueError(f"Received {received}; {_ACCEPTED_IMAGES}.")
    prefer_first = isinstance(image, torch.Tensor)
    array = _to_numpy(image)
    if array.dtype == np.bool_:
        raise ValueError(
            f"Received {received}: a boolean array is a mask, not an image. Pass masks as `segmentation_maps=`; "
            f"{_ACCEPTED_IMAGES}."
        )
    if array.dtype.kind == "u" and array.dtype.itemsize == 1:
        kind = "uint8"
    elif array.dtype.kind == "u" and array.dtype.itemsize == 2:  # either byte order
        kind = "uint16"
    elif np.issubdtype(array.dtype, np.floating):
        kind = "float"
    elif np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"Received {received}: {array.dtype} arrays are label maps, not images (images are uint8, uint16 or "
            f"float). Pass label maps as `segmentation_maps=`, or cast 16-bit sensor data to uint16; "
            f"{_ACCEPTED_IMAGES}."
        )
    else:
        raise ValueError(f"Received {received}: unsupported dtype; {_ACCEPTED_IMAGES}.")
    if array.size == 0:
        raise ValueError(f"Received an empty image ({received}); images need at least one pixel.")
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3:
        array = _channels_last(array, prefer_first, input_data_format, received)
    else:
        raise ValueError(
            f"Received {received}: a single image must be 2-D or 3-D (batches go in a list or a 4-D array); "
            f"{_ACCEPTED_IMAGES}."
        )
    channels = array.shape[-1]
    if channels == 4:
        array = array[..., :3]
    elif channels not in (1, 3):
        raise ValueError(f"Received {received}: {channels} channels; {_ACCEPTED_IMAGES}.")
    return array, kind


def _intensity(array: np.ndarray) -> np.ndarray:
    """(H, W, 1 or 3) array -> (H, W) float32 intensity (ITU-R 601 luma for colour; a gray image stored as RGB gives
    its gray value exactly, as the float32 luma sum can be one ulp off)."""
    if array.shape[-1] == 1 or (
        np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2])
    ):
        return array[..., 0].astype(np.float32)
    return array.astype(np.float32) @ _LUMA


_LUMA = np.asarray(LUMA_WEIGHTS, dtype=np.float32)


def _percentiles(values: np.ndarray, percentiles: Sequence[float]) -> tuple[float, float]:
    """The two percentiles of `values` (numpy's default linear interpolation).

    uint16 data use a histogram (exact, several times faster than sorting); other data use `np.percentile`.
    """
    if values.dtype.kind == "u" and values.dtype.itemsize <= 2:
        cumulative = np.cumsum(np.bincount(values.ravel()))
        count = int(cumulative[-1])
        result = []
        for q in percentiles:
            rank = float(q) / 100.0 * (count - 1)
            below = int(np.floor(rank))
            low = int(np.searchsorted(cumulative, below, side="right"))
            high = int(np.searchsorted(cumulative, min(below + 1, count - 1), side="right"))
            result.append(low + (rank - below) * (high - low))
        return result[0], result[1]
    low, high = np.percentile(values, [float(percentiles[0]), float(percentiles[1])])
    return float(low), float(high)


def _stretch(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """In place `(x - lo) / (hi - lo)` clipped to [0, 1]."""
    x -= np.float32(lo)
    x *= np.float32(1.0 / (hi - lo))
    np.clip(x, 0.0, 1.0, out=x)
    return x


def keep_ratio_size(height: int, width: int, img_scale: Sequence[int]) -> tuple[int, int]:
    """(height, width) of an image rescaled, aspect ratio kept, to fit `img_scale` = (long, short) side targets: the
    largest scale with the long side <= `max(img_scale)` and the short side <= `min(img_scale)`, sides rounded half up
    (mmseg's `keep_ratio` rule; upscales small images too). The evaluation protocol of UNIP fine-tuning."""
    scale = min(max(img_scale) / max(width, height), min(img_scale) / min(width, height))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _pad_bottom_right(array: np.ndarray, multiple: int | None, fill_value: float) -> np.ndarray:
    """Pad the last two axes of `array` at the bottom and right with `fill_value` up to multiples of `multiple`."""
    if not multiple:
        return array
    pad_h, pad_w = (-array.shape[-2]) % multiple, (-array.shape[-1]) % multiple
    if not (pad_h or pad_w):
        return array
    widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_h), (0, pad_w)]
    return np.pad(array, widths, mode="constant", constant_values=fill_value)


def _check_options(
    num_channels: int | None = None,
    bit_depth_scaling: str | None = None,
    intensity_range: Sequence[float] | None = None,
    percentiles: Sequence[float] | None = None,
    img_scale: Sequence[int] | None = None,
    size_divisor: int | None = None,
) -> None:
    if num_channels is not None and num_channels not in (1, 3):
        raise ValueError(f"`num_channels` must be 1 or 3, got {num_channels!r}.")
    if bit_depth_scaling is not None and bit_depth_scaling not in BIT_DEPTH_SCALINGS:
        raise ValueError(f"`bit_depth_scaling` must be one of {BIT_DEPTH_SCALINGS}, got {bit_depth_scaling!r}.")
    if intensity_range is not None:
        if len(intensity_range) != 2 or not float(intensity_range[1]) > float(intensity_range[0]):
            raise ValueError(f"`intensity_range` must be (lo, hi) with hi > lo, got {intensity_range!r}.")
    if percentiles is not None:
        if len(percentiles) != 2 or not 0.0 <= float(percentiles[0]) < float(percentiles[1]) <= 100.0:
            raise ValueError(f"`percentiles` must be (lo, hi) with 0 <= lo < hi <= 100, got {percentiles!r}.")
    if img_scale is not None:
        if len(img_scale) != 2 or not all(int(v) == v and v >= 1 for v in img_scale):
            raise ValueError(f"`img_scale` must be (long, short) side lengths >= 1, got {img_scale!r}.")
    if size_divisor is not None and not (int(size_divisor) == size_divisor and size_divisor >= 1):
        raise ValueError(f"`size_divisor` must be an integer >= 1, got {size_divisor!r}.")


def _check_radiometric(radiometric: str | None, intensity_range: Sequence[float] | None) -> None:
    """`radiometric` is a known mode; temperatures come with the window in degrees Celsius that maps them to [0, 1]."""
    if radiometric is not None and radiometric not in RADIOMETRIC_MODES:
        raise ValueError(f"`radiometric` must be one of {RADIOMETRIC_MODES} or None, got {radiometric!r}.")
    if radiometric == "celsius" and intensity_range is None:
        raise ValueError(
            "radiometric='celsius' gives temperatures in degrees Celsius: pass intensity_range=(lo, hi), the "
            "temperatures mapped to 0 and 1 (e.g. (-20, 120)); float data are otherwise taken as already in [0, 1]. "
            "radiometric='raw' needs no range (16-bit counts are stretched per image)."
        )


def decode_intensity(
    image: Any,
    *,
    bit_depth_scaling: str = "percentile",
    intensity_range: Sequence[float] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    do_rescale: bool = True,
    rescale_factor: float = 1 / 255,
    input_data_format: str | ChannelDimension | None = None,
    max_pixels: int | None = None,
    name: str | None = None,
    radiometric: str | None = None,
) -> np.ndarray:
    """Decode one image (file, bytes, `datasets` dict, PIL image, array or tensor) into float32 intensity (H, W).

    The one decoding function of the package (see the module docstring for the mapping of every input kind):
    `UnipImageProcessor.to_intensity`, the data builders, the training and evaluation transforms and the attention
    analysis all call it, so that training, evaluation and inference see the same intensities.

    Args:
        image:
            One image; files are opened with `load_infrared_image` (EXIF orientation, pixel limit).
        bit_depth_scaling (`str`, *optional*, defaults to `"percentile"`):
            16-bit data: per-image stretch between `percentiles`, or `"fixed"` (`intensity_range`, default 0-65535).
        intensity_range (`Sequence[float]`, *optional*):
            `(lo, hi)` mapped to 0 and 1, for 16-bit data under `"fixed"` and for float data (default: float data are
            taken as already in [0, 1] and clipped to it).
        percentiles (`Sequence[float]`, *optional*, defaults to `(1, 99)`):
            Percentiles of the `"percentile"` stretch.
        do_rescale (`bool`, *optional*, defaults to `True`):
            `False` returns the raw values (luma for colour) as float32.
        rescale_factor (`float`, *optional*, defaults to 1/255):
            Factor applied to 8-bit data.
        input_data_format (`ChannelDimension` or `str`, *optional*):
            Channel layout of a 3-D array input; guessed when not given (channels-last first for numpy,
            channels-first first for torch).
        max_pixels (`int`, *optional*, defaults to `MAX_IMAGE_PIXELS`):
            Pixel limit for files.
        name (`str`, *optional*):
            Name of the image in error messages (default: its path).
        radiometric (`str`, *optional*):
            What to read from a FLIR radiometric JPEG file (see `load_infrared_image`). The result then takes the
            ordinary paths: `"raw"` counts are 16-bit data (`bit_depth_scaling`: per-image percentile stretch, or
            `"fixed"` with `intensity_range` in counts), `"celsius"` temperatures are float data and need
            `intensity_range=(lo, hi)` in degrees Celsius (mapped to 0 and 1, clipped) when `do_rescale`.

    Returns:
        `np.ndarray`: float32 array of shape (H, W), in [0, 1] when `do_rescale`.

    Raises:
        InfraredImageError: a file that cannot be used (see `load_infrared_image`), or whose content is refused
            (wrong kind, NaN/inf); the message starts with the file name.
        ValueError: an in-memory input that is refused, naming what was received.
    """
    _check_options(None, bit_depth_scaling, intensity_range, percentiles)
    _check_radiometric(radiometric, intensity_range if do_rescale else (0.0, 1.0))
    label = _source_name(image, name)
    if isinstance(image, (str, os.PathLike, bytes, bytearray, dict)):
        image = load_infrared_image(image, max_pixels=max_pixels, name=label, radiometric=radiometric)
    try:
        array, kind = _decode_image(image, input_data_format)
    except InfraredImageError:
        raise
    except ValueError as err:
        if label is None:
            raise
        raise InfraredImageError(f"{label}: {err}") from None
    x = _intensity(array)
    if kind == "float" and not np.isfinite(x).all():
        what = label if label is not None else f"Received {_describe(image)}"
        raise InfraredImageError(f"{what}: contains NaN or infinite values; float images must be finite.")
    if not do_rescale:
        return x
    if kind == "uint8":
        x *= np.float32(rescale_factor)
    elif kind == "uint16":
        # percentiles of single-channel uint16 data come from the integers themselves (histogram, exact and fast)
        stats_source = array[..., 0] if array.shape[-1] == 1 and array.dtype.kind == "u" else x
        lo, hi = None, None
        if bit_depth_scaling == "percentile":
            lo, hi = _percentiles(stats_source, percentiles)
            if not hi > lo:
                lo, hi = None, None
        if lo is None:
            lo, hi = (0.0, 65535.0) if intensity_range is None else (float(v) for v in intensity_range)
        _stretch(x, lo, hi)
    else:
        if intensity_range is not None:
            _stretch(x, float(intensity_range[0]), float(intensity_range[1]))
        else:
            if x.min() < -1e-3 or x.max() > 1.0 + 1e-3:
                logger.warning_once(
                    "UnipImageProcessor: float input outside [0, 1] was clipped; float data are taken as already "
                    "scaled to [0, 1]. Pass `intensity_range=(lo, hi)` for other ranges (e.g. temperatures)."
                )
            np.clip(x, 0.0, 1.0, out=x)
    return x


def to_intensity_image(
    image: Any, *, max_pixels: int | None = None, name: str | None = None, radiometric: str | None = None
) -> PIL.Image.Image:
    """One-channel PIL image keeping the raw values of an image file (or PIL image), for storing data sets.

    `decode_intensity` gives the same result on it as on the original: 8-bit data become `L` (colour through the same
    ITU-R 601 luma, rounded to 8 bits, which is exact for gray images stored as RGB), 16-bit data `I;16` (PIL `I`
    values outside 0..65535 stay `I`), float data stay `F` (checked finite). Store `F` and `I` images as TIFF.

    Args:
        image (`str`, `os.PathLike`, `bytes`, `dict` or `PIL.Image.Image`):
            As for `load_infrared_image`.
        max_pixels, name, radiometric:
            As for `load_infrared_image` (`"raw"` gives `I;16` counts, `"celsius"` an `F` image of temperatures).

    Raises:
        InfraredImageError: as `decode_intensity`, naming the file.
    """
    label = _source_name(image, name)
    image = load_infrared_image(image, max_pixels=max_pixels, name=label, radiometric=radiometric)
    mode = image.mode
    if mode in ("L", "I;16"):
        return image
    if mode in _INT16_PIL_MODES:
        values = np.asarray(image)
        if mode != "I" or (values.size and values.min() >= 0 and values.max() <= 65535):
            return PIL.Image.fromarray(values.astype(np.uint16))
        return image
    raw = decode_intensity(image, do_rescale=False, name=label)  # refuses what the processor refuses (NaN, mode 1)
    if mode == "F":
        return image
    return PIL.Image.fromarray(np.clip(np.rint(raw), 0, 255).astype(np.uint8), mode="L")


class UnipImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    num_channels (`int`, *optional*, defaults to `self.num_channels`):
        Channels of the output (1, or 3 with the intensity replicated), matching the model's `num_channels`.
    bit_depth_scaling (`str`, *optional*, defaults to `self.bit_depth_scaling`):
        How 16-bit data map to [0, 1]: `"percentile"` (per-image stretch between `percentiles`) or `"fixed"`
        (`intensity_range`, default the full 0-65535 range).
    intensity_range (`list[float]`, *optional*, defaults to `self.intensity_range`):
        `(lo, hi)` raw values mapped to 0 and 1: for 16-bit data under `"fixed"` scaling (default `(0, 65535)`) and
        for float data (default: float data are taken as already in [0, 1]).
    percentiles (`list[float]`, *optional*, defaults to `self.percentiles`):
        Lower and upper percentiles of the `"percentile"` stretch.
    img_scale (`list[int]`, *optional*, defaults to `self.img_scale`):
        `(long, short)` side targets of a resize that keeps the aspect ratio (`keep_ratio_size`); replaces `size`.
    size_divisor (`int`, *optional*, defaults to `self.size_divisor`):
        Pad the outputs at the bottom and right (0 after normalisation, 255 in labels) to multiples of it.
    radiometric (`str`, *optional*, defaults to `self.radiometric`):
        What FLIR radiometric JPEG files give: `"raw"` counts, `"celsius"` temperatures, `"preview"` (see
        `load_infrared_image`).
    """

    num_channels: int
    bit_depth_scaling: str
    intensity_range: list[float | int] | tuple[float | int, ...] | None
    percentiles: list[float | int] | tuple[float | int, ...]
    img_scale: list[int] | tuple[int, ...] | None
    size_divisor: int | None
    radiometric: str | None


class UnipImageProcessor(PilBackend):
    r"""
    Image processor of UNIP infrared models (PIL/numpy backend, no torchvision needed).

    Every image, whatever its mode, depth and layout, becomes one intensity channel in [0, 1] (see the module
    docstring for the exact mapping of each input kind), is resized (bilinear, anti-aliased, in float32), normalised
    with infrared statistics and replicated to `num_channels`. Segmentation maps are resized with nearest-neighbour
    interpolation and returned as int64 `labels` with their values untouched (255 stays "ignore").

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize the images.
        size (`dict[str, int]`, *optional*, defaults to `{"height": 224, "width": 224}`):
            Output size: `{"height", "width"}`, or `{"shortest_edge"}` (aspect ratio kept, optionally with
            `"longest_edge"`), or `{"max_height", "max_width"}`.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BILINEAR`):
            Filter used to resize images (segmentation maps always use nearest neighbour).
        do_center_crop (`bool`, *optional*, defaults to `False`):
            Whether to center-crop to `crop_size` after resizing.
        crop_size (`dict[str, int]`, *optional*):
            Size of the center crop.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to map the raw values to [0, 1] (8-bit by `rescale_factor`, 16-bit by `bit_depth_scaling`,
            float by `intensity_range`). When `False`, the raw values (or their luma) are used as float32.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Factor applied to 8-bit data.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise with `image_mean` and `image_std`.
        image_mean (`float` or `list[float]`, *optional*, defaults to `[0.3801, 0.3801, 0.3801]`):
            Mean of the infrared intensity: one value, or one per output channel.
        image_std (`float` or `list[float]`, *optional*, defaults to `[0.1871, 0.1871, 0.1871]`):
            Standard deviation of the infrared intensity: one value, or one per output channel.
        num_channels (`int`, *optional*, defaults to 3):
            Output channels (1, or 3 with the intensity replicated, as the paper does); match the model config.
        bit_depth_scaling (`str`, *optional*, defaults to `"percentile"`):
            How 16-bit data (uint16, PIL `I;16*` and `I`) map to [0, 1]: `"percentile"` or `"fixed"`.
        intensity_range (`list[float]`, *optional*):
            `(lo, hi)` raw values mapped to 0 and 1, for 16-bit data under `"fixed"` (default `(0, 65535)`) and for
            float data (default: float data are taken as already in [0, 1]).
        percentiles (`list[float]`, *optional*, defaults to `[1.0, 99.0]`):
            Percentiles of the per-image `"percentile"` stretch.
        img_scale (`list[int]`, *optional*):
            `(long, short)` side targets: when set, images (and maps) are resized keeping their aspect ratio with
            `keep_ratio_size` (the fine-tuning evaluation protocol) instead of to `size`.
        size_divisor (`int`, *optional*):
            When set, outputs are padded at the bottom and right to multiples of it (the patch size): images with 0
            (after normalisation), labels with 255. `post_process_semantic_segmentation` then crops the padding and
            resizes to the original size exactly as `unip_hf.evaluation` does. The processor saved with
            a fine-tuned model sets both, so `pipeline("image-segmentation")` reproduces the evaluated predictions
            (whole-image inference; sliding-window evaluation has no pipeline counterpart).
        radiometric (`str`, *optional*):
            What FLIR radiometric JPEG files (paths) give, saved with the processor so that a model sees at inference
            what it was trained on: `"raw"` (16-bit thermal counts, then `bit_depth_scaling`), `"celsius"`
            (temperatures, mapped to [0, 1] by `intensity_range`, which it requires), `"preview"` (the JPEG's
            image). `None` (default) reads the preview and warns once. `"raw"`/`"celsius"` need the optional `flyr`
            (`pip install "unip-hf[radiometric]"`). See `load_infrared_image`.

    Example:

    ```python
    >>> import numpy as np
    >>> from PIL import Image
    >>> from unip_hf import UnipImageProcessor

    >>> processor = UnipImageProcessor(size={"height": 64, "width": 64})
    >>> raw = (np.random.default_rng(0).integers(7000, 9000, (120, 160))).astype(np.uint16)  # 14-bit counts
    >>> batch = processor([Image.fromarray(raw), np.zeros((48, 48, 3), np.uint8)], return_tensors="pt")
    >>> tuple(batch["pixel_values"].shape)
    (2, 3, 64, 64)
    ```
    """

    valid_kwargs = UnipImageProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.BILINEAR
    image_mean = (INFRARED_MEAN, INFRARED_MEAN, INFRARED_MEAN)
    image_std = (INFRARED_STD, INFRARED_STD, INFRARED_STD)
    size = {"height": 224, "width": 224}
    default_to_square = True
    do_resize = True
    do_center_crop = False
    crop_size = None
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    num_channels = 3
    bit_depth_scaling = "percentile"
    intensity_range = None
    percentiles = DEFAULT_PERCENTILES
    img_scale = None
    size_divisor = None
    radiometric = None

    def __init__(self, **kwargs: Unpack[UnipImageProcessorKwargs]):
        super().__init__(**kwargs)
        _check_options(self.num_channels, self.bit_depth_scaling, self.intensity_range, self.percentiles,
                       self.img_scale, self.size_divisor)
        _check_radiometric(self.radiometric, self.intensity_range)
        self.percentiles = [float(p) for p in self.percentiles]
        if self.intensity_range is not None:
            self.intensity_range = [float(v) for v in self.intensity_range]
        if self.img_scale is not None:
            self.img_scale = [int(v) for v in self.img_scale]
        if self.size_divisor is not None:
            self.size_divisor = int(self.size_divisor)

    @classmethod
    def from_model_config(cls, config: Any, **kwargs) -> "UnipImageProcessor":
        """Build a processor matching a model config: its `num_channels` and `image_size` (square).

        Args:
            config (`UnipConfig` or any config with `num_channels` and `image_size`):
                The model configuration.
            kwargs:
                Other processor arguments; they override the values taken from the config.
        """
        image_size = getattr(config, "image_size", 224)
        if isinstance(image_size, (list, tuple)):
            height, width = image_size
        else:
            height = width = image_size
        kwargs.setdefault("num_channels", getattr(config, "num_channels", 3))
        kwargs.setdefault("size", {"height": int(height), "width": int(width)})
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Serializable attributes. The `auto_map` entry of a saved processor is written in the backend-keyed form
        (`{"pil": "image_processing_unip.UnipImageProcessor"}`), which `AutoImageProcessor` resolves like the plain
        string; with the plain string, `pipeline()` would also infer a (nonexistent) remote video processor from it
        and ask the user, interactively, whether to trust remote code."""
        output = super().to_dict()
        auto_map = output.get("auto_map")
        if isinstance(auto_map, dict) and isinstance(auto_map.get("AutoImageProcessor"), str):
            output["auto_map"] = {**auto_map, "AutoImageProcessor": {"pil": auto_map["AutoImageProcessor"]}}
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`save_pretrained`, plus the remote code (`configuration_unip.write_remote_code`, as the models do): the UNIP
        files next to `preprocessor_config.json` and its `auto_map`, so that `AutoImageProcessor.from_pretrained(dir,
        trust_remote_code=True)` works where `unip_hf` is not installed."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(save_directory, "preprocessor_config.json",
                          {"AutoImageProcessor": {"pil": AUTO_MAP["AutoImageProcessor"]}})
        return result

    # ------------------------------------------------------------------ entry point
    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[UnipImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Preprocess one image or a batch of images (and optionally their segmentation maps).

        Args:
            images (`ImageInput`):
                A PIL image, numpy array, torch tensor or file path, a list of them, or a 4-D array/tensor batch.
                See the class and module docstrings for the accepted kinds and how each maps to [0, 1].
            segmentation_maps (`ImageInput`, *optional*):
                One label map per image, same height and width as its image: PIL `L`/`P`/`I`/`I;16`/`1`, or integer,
                boolean or integral-float arrays/tensors (H, W), (H, W, 1) or (1, H, W); a list, or a 3-D batch.
                Resized with nearest neighbour, values untouched, returned as int64 `labels`.
            kwargs:
                Any constructor argument, overriding it for this call, plus `return_tensors` (`"pt"` or `"np"`),
                `data_format` (`"channels_first"` default, or `"channels_last"`) and `input_data_format` (channel
                layout of 3-D array inputs when the automatic guess is not wanted).

        Returns:
            [`BatchFeature`]: `pixel_values` of shape (batch, num_channels, height, width), float32, and `labels` of
            shape (batch, height, width), int64, when segmentation maps were given. Stacked into one array when all
            outputs share a size, a list otherwise (`return_tensors="pt"` then requires equal sizes).
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _validate_preprocess_kwargs(self, **kwargs) -> None:
        super()._validate_preprocess_kwargs(**kwargs)
        _check_options(
            kwargs.get("num_channels"),
            kwargs.get("bit_depth_scaling"),
            kwargs.get("intensity_range"),
            kwargs.get("percentiles"),
            kwargs.get("img_scale"),
            kwargs.get("size_divisor"),
        )

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        """Open file paths without RGB conversion (16-bit files keep their depth); other inputs pass through.

        URLs are delegated to `transformers.image_utils.load_image`, which decodes them as 8-bit RGB.
        """
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, str) and image_url_or_urls.startswith(("http://", "https://")):
            return load_image(image_url_or_urls)
        if isinstance(image_url_or_urls, (str, os.PathLike)):
            return load_infrared_image(image_url_or_urls)
        return image_url_or_urls

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        if images is None:
            raise ValueError(f"Received no images (None); {_ACCEPTED_IMAGES}.")
        # URLs are fetched here; local paths stay paths, so that `decode_intensity` names the file in its errors
        return _flatten_inputs(_fetch_urls(self, images), batch_ndim=expected_ndims + 1, what="images")

    # ------------------------------------------------------------------ per-image decoding
    def to_intensity(
        self,
        image: Any,
        bit_depth_scaling: str | None = None,
        intensity_range: Sequence[float] | None = None,
        percentiles: Sequence[float] | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        input_data_format: str | ChannelDimension | None = None,
        radiometric: str | None = None,
    ) -> np.ndarray:
        """Decode one image into float32 intensity of shape (H, W), in [0, 1] when `do_rescale` (the default).

        The processor's settings applied to the package's one decoding function, `decode_intensity`.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or `os.PathLike`):
                One image (see the module docstring for the accepted kinds); files named in errors.
            bit_depth_scaling, intensity_range, percentiles, do_rescale, rescale_factor, radiometric:
                Override the processor's values for this image.
            input_data_format (`ChannelDimension` or `str`, *optional*):
                Channel layout of a 3-D array input; guessed when not given (channels-last first for numpy,
                channels-first first for torch).

        Returns:
            `np.ndarray`: float32 array of shape (H, W).
        """
        return decode_intensity(
            image,
            bit_depth_scaling=self.bit_depth_scaling if bit_depth_scaling is None else bit_depth_scaling,
            intensity_range=self.intensity_range if intensity_range is None else intensity_range,
            percentiles=self.percentiles if percentiles is None else percentiles,
            do_rescale=self.do_rescale if do_rescale is None else do_rescale,
            rescale_factor=self.rescale_factor if rescale_factor is None else rescale_factor,
            input_data_format=input_data_format,
            radiometric=self.radiometric if radiometric is None else radiometric,
        )

    @staticmethod
    def image_size_of(image: Any, input_data_format: str | ChannelDimension | None = None) -> tuple[int, int]:
        """(height, width) of one input image, with the same layout rules as processing, without decoding pixels.

        Args:
            image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
                One image.
            input_data_format (`ChannelDimension` or `str`, *optional*):
                Channel layout of a 3-D array; guessed as in processing when not given.
        """
        if isinstance(image, PIL.Image.Image):
            return image.height, image.width
        if not isinstance(image, (np.ndarray, torch.Tensor)):
            raise ValueError(f"Received {_describe(image)}; {_ACCEPTED_IMAGES}.")
        shape = tuple(image.shape)
        if len(shape) == 2:
            return shape
        if len(shape) != 3:
            raise ValueError(f"Received {_describe(image)}: a single image must be 2-D or 3-D; {_ACCEPTED_IMAGES}.")
        layout = _channels_last(
            np.broadcast_to(np.uint8(0), shape),
            isinstance(image, torch.Tensor),
            input_data_format,
            _describe(image),
        )
        return tuple(layout.shape[:2])

    def process_image(
        self, image: Any, input_data_format: str | ChannelDimension | None = None, **kwargs
    ) -> np.ndarray:
        """Decode one image into float32 intensity of shape (1, H, W) (the backend's channels-first format).

        The decoding options among `kwargs` (`to_intensity`'s: bit_depth_scaling, intensity_range, percentiles,
        do_rescale, rescale_factor, radiometric) override the processor's for this call; the others belong to later steps.
        """
        options = {name: kwargs.get(name) for name in _DECODING_OPTIONS}
        return self.to_intensity(image, input_data_format=input_data_format, **options)[None]

    @staticmethod
    def _decode_segmentation_map(segmentation_map: Any) -> np.ndarray:
        """Decode one segmentation map into an int64 array of shape (H, W), values untouched."""
        received = _describe(segmentation_map)
        if isinstance(segmentation_map, (str, os.PathLike)):
            segmentation_map = load_infrared_image(segmentation_map)
            received = _describe(segmentation_map)
        if isinstance(segmentation_map, PIL.Image.Image):
            if segmentation_map.mode not in ("L", "P", "1", "F") + _INT16_PIL_MODES:
                raise ValueError(
                    f"Received {received} as a segmentation map: colour-coded maps must first be mapped to class "
                    f"ids; {_ACCEPTED_MAPS}."
                )
            array = np.asarray(segmentation_map)
        elif isinstance(segmentation_map, (np.ndarray, torch.Tensor)):
            array = _to_numpy(segmentation_map)
        else:
            raise ValueError(f"Received {received} as a segmentation map; {_ACCEPTED_MAPS}.")
        if array.size == 0:
            raise ValueError(f"Received an empty segmentation map ({received}).")
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        elif array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise ValueError(f"Received {received} as a segmentation map: it must be 2-D; {_ACCEPTED_MAPS}.")
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
                raise ValueError(
                    f"Received {received} as a segmentation map with non-integral values; labels must be integers."
                )
        elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            raise ValueError(f"Received {received} as a segmentation map; {_ACCEPTED_MAPS}.")
        return array.astype(np.int64)

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def _output_size(
        height: int, width: int, size: SizeDict, img_scale: Sequence[int] | None = None
    ) -> tuple[int, int]:
        if img_scale is not None:
            return keep_ratio_size(height, width, img_scale)
        if size.shortest_edge and size.longest_edge:
            return tuple(get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge))
        if size.shortest_edge:
            dummy = np.empty((1, height, width), dtype=np.uint8)
            return tuple(
                get_resize_output_image_size(
                    dummy, size=size.shortest_edge, default_to_square=False, input_data_format=ChannelDimension.FIRST
                )
            )
        if size.max_height and size.max_width:
            return tuple(get_image_size_for_max_height_width((height, width), size.max_height, size.max_width))
        if size.height and size.width:
            return (int(size.height), int(size.width))
        raise ValueError(
            f"`size` must contain 'height' and 'width', 'shortest_edge' (optionally with 'longest_edge'), or "
            f"'max_height' and 'max_width'; got {dict(size)}."
        )

    def resize(
        self,
        image: np.ndarray,
        size: SizeDict,
        resample: PILImageResampling | int | None = None,
        img_scale: Sequence[int] | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Resize a channels-first float array in float32 (PIL mode `F`, anti-aliased when shrinking).

        Args:
            image (`np.ndarray`):
                Array of shape (C, H, W).
            size (`SizeDict`):
                Target size (see the class docstring).
            resample (`PILImageResampling`, *optional*):
                PIL filter, bilinear by default.
            img_scale (`Sequence[int]`, *optional*):
                `(long, short)` targets of an aspect-ratio-keeping resize, used instead of `size`.

        Returns:
            `np.ndarray`: float32 array of shape (C, new_height, new_width).
        """
        if not isinstance(size, SizeDict):
            size = SizeDict(**size)
        height, width = image.shape[-2:]
        new_height, new_width = self._output_size(height, width, size, img_scale)
        if (new_height, new_width) == (height, width):
            return image.astype(np.float32, copy=False)
        resample = PIL.Image.Resampling(int(PILImageResampling.BILINEAR if resample is None else resample))
        channels = [
            np.asarray(
                PIL.Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F").resize(
                    (new_width, new_height), resample=resample
                )
            )
            for channel in image
        ]
        return np.stack(channels)

    @staticmethod
    def _nearest_resize(label_map: np.ndarray, new_height: int, new_width: int) -> np.ndarray:
        """Nearest-neighbour resize of an (H, W) array by index sampling (pixel centres, as PIL's NEAREST)."""
        height, width = label_map.shape
        if (new_height, new_width) == (height, width):
            return label_map
        rows = np.minimum(((np.arange(new_height) + 0.5) * (height / new_height)).astype(np.int64), height - 1)
        cols = np.minimum(((np.arange(new_width) + 0.5) * (width / new_width)).astype(np.int64), width - 1)
        return label_map[rows[:, None], cols[None, :]]

    @staticmethod
    def _crop_box(height: int, width: int, crop_size: SizeDict) -> tuple[int, int, int, int]:
        top = max((height - crop_size.height) // 2, 0)
        left = max((width - crop_size.width) // 2, 0)
        return top, left, min(top + crop_size.height, height), min(left + crop_size.width, width)

    # ------------------------------------------------------------------ batch processing
    def _channel_stats(self, values: Any, num_channels: int, name: str) -> np.ndarray:
        array = np.asarray(values, dtype=np.float32).reshape(-1)
        if array.size == 1:
            return np.repeat(array, num_channels)
        if array.size == num_channels:
            return array
        if num_channels == 1 and np.all(array == array[0]):
            return array[:1]
        raise ValueError(
            f"`{name}` must have 1 or {num_channels} values for num_channels={num_channels}, got {values}."
        )

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool = True,
        size: SizeDict | None = None,
        resample: PILImageResampling | int | None = None,
        do_center_crop: bool = False,
        crop_size: SizeDict | None = None,
        do_normalize: bool = True,
        image_mean: float | Iterable[float] | None = None,
        image_std: float | Iterable[float] | None = None,
        num_channels: int | None = None,
        img_scale: Sequence[int] | None = None,
        size_divisor: int | None = None,
        **kwargs,
    ) -> list[np.ndarray]:
        """Resize, crop, normalise, replicate and pad prepared (1, H, W) float32 intensity images."""
        num_channels = self.num_channels if num_channels is None else num_channels
        if do_normalize:
            mean = self._channel_stats(image_mean, num_channels, "image_mean")
            std = self._channel_stats(image_std, num_channels, "image_std")
            uniform = bool(np.all(mean == mean[0]) and np.all(std == std[0]))
        processed = []
        for image in images:
            if do_resize:
                image = self.resize(image, size=size, resample=resample, img_scale=img_scale)
            if do_center_crop:
                top, left, bottom, right = self._crop_box(image.shape[-2], image.shape[-1], crop_size)
                image = image[:, top:bottom, left:right]
            image = np.ascontiguousarray(image, dtype=np.float32)
            if do_normalize and uniform:
                image = (image - mean[0]) * np.float32(1.0 / std[0])
            image = np.broadcast_to(image, (num_channels, *image.shape[-2:]))
            if do_normalize and not uniform:
                image = (image - mean[:, None, None]) / std[:, None, None]
            image = _pad_bottom_right(image, size_divisor, 0.0)
            processed.append(np.ascontiguousarray(image, dtype=np.float32))
        return processed

    def _process_segmentation_maps(
        self, segmentation_maps: ImageInput, image_sizes: list[tuple[int, int]], **kwargs
    ) -> list[np.ndarray]:
        """The label maps through the images' geometry (resize, center crop, padding), NEAREST, values untouched.

        `kwargs` are this call's options; a geometry option (`_GEOMETRY_OPTIONS`) not among them is the processor's.
        """
        do_resize, size, do_center_crop, crop_size, img_scale, size_divisor = (
            kwargs.get(name, getattr(self, name)) for name in _GEOMETRY_OPTIONS
        )
        maps = _flatten_inputs(self.fetch_images(segmentation_maps), batch_ndim=3, what="segmentation maps")
        if len(maps) != len(image_sizes):
            batch_note = ""
            if isinstance(segmentation_maps, (np.ndarray, torch.Tensor)) and segmentation_maps.ndim == 3:
                batch_note = f" ({_describe(segmentation_maps)} counts as a batch of 2-D maps)"
            raise ValueError(
                f"Received {len(maps)} segmentation maps{batch_note} for {len(image_sizes)} images; give one 2-D map "
                f"per image; {_ACCEPTED_MAPS}."
            )
        processed = []
        for index, (raw_map, image_size) in enumerate(zip(maps, image_sizes)):
            label_map = self._decode_segmentation_map(raw_map)
            if label_map.shape != image_size:
                raise ValueError(
                    f"Segmentation map {index} has size {label_map.shape} but its image has size {image_size} "
                    "(height, width); they must match."
                )
            if do_resize:
                label_map = self._nearest_resize(label_map, *self._output_size(*label_map.shape, size, img_scale))
            if do_center_crop:
                top, left, bottom, right = self._crop_box(*label_map.shape, crop_size)
                label_map = label_map[top:bottom, left:right]
            label_map = _pad_bottom_right(label_map, size_divisor, 255)
            processed.append(np.ascontiguousarray(label_map, dtype=np.int64))
        return processed

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        return_tensors: str | TensorType | None = None,
        data_format: str | ChannelDimension | None = ChannelDimension.FIRST,
        do_pad: bool | None = None,
        pad_size: SizeDict | None = None,
        **kwargs,
    ) -> BatchFeature:
        intensities = self._prepare_image_like_inputs(images, **kwargs)
        image_sizes = [tuple(image.shape[-2:]) for image in intensities]
        pixel_values = self._preprocess(intensities, **kwargs)
        if do_pad:
            pixel_values = self.pad(pixel_values, pad_size=pad_size)
        if data_format is not None and ChannelDimension(data_format) == ChannelDimension.LAST:
            pixel_values = [np.moveaxis(image, 0, -1) for image in pixel_values]
        data = {"pixel_values": _stack_if_possible(pixel_values)}
        if segmentation_maps is not None:
            labels = self._process_segmentation_maps(segmentation_maps, image_sizes, **kwargs)
            if do_pad:
                labels = [
                    label[0]
                    for label in self.pad([label[None] for label in labels], pad_size=pad_size, fill_value=255)
                ]
            data["labels"] = _stack_if_possible(labels)
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ post-processing
    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: list[tuple[int, int]] | torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Turn the logits of [`UnipForSemanticSegmentation`] into one class-id map per image.

        Args:
            outputs ([`SemanticSegmenterOutput`] or anything with a `logits` attribute/key):
                Model outputs; `logits` of shape (batch, num_labels, height, width).
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                One (height, width) per image, the size of the image given to the processor; logits are bilinearly
                resized to it before the argmax. When not given, the maps keep the logits' size. With `img_scale` or
                `size_divisor` set, the evaluation protocol of `unip_hf.evaluation` is followed: the logits are
                resized to the padded input size, the padding is cropped, and the rest is resized to the target size.

        Returns:
            `list[torch.Tensor]`: `batch` int64 tensors of shape (height, width).
        """
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if target_sizes is None:
            # max(...).indices: the same first-maximum class as argmax, ~20-50x faster on CPU over the class axis
            return list(logits.max(dim=1).indices.long().unbind(0))
        return [logit.max(dim=0).indices.long() for logit in self.resize_logits(outputs, target_sizes)]

    def resize_logits(
        self, outputs: Any, target_sizes: list[tuple[int, int]] | torch.Tensor
    ) -> list[torch.Tensor]:
        """The logits of each image at its target size, as `post_process_semantic_segmentation` resizes them before
        the argmax (for class probabilities at the image size, e.g. a small-target threshold).

        Args:
            outputs: as for `post_process_semantic_segmentation`.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`): one (height, width) per image.

        Returns:
            `list[torch.Tensor]`: `batch` float tensors of shape (num_labels, height, width).
        """
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if isinstance(target_sizes, torch.Tensor):
            target_sizes = target_sizes.tolist()
        if len(target_sizes) != logits.shape[0]:
            raise ValueError(
                f"Received {len(target_sizes)} target sizes for a batch of {logits.shape[0]} logits; "
                "give one per image."
            )
        maps = []
        protocol = self.img_scale is not None or self.size_divisor is not None
        for logit, target_size in zip(logits, target_sizes):
            height, width = (int(v) for v in target_size)
            if protocol:
                # the input the model saw: resized (or not) as in preprocessing, then padded to the divisor
                inner = (height, width)
                if self.do_resize:
                    size = self.size if isinstance(self.size, SizeDict) else SizeDict(**self.size)
                    inner = self._output_size(height, width, size, self.img_scale)
                divisor = self.size_divisor or 1
                padded = tuple(-(-side // divisor) * divisor for side in inner)
                logit = F.interpolate(logit[None].float(), size=padded, mode="bilinear", align_corners=False)[0]
                logit = logit[:, : inner[0], : inner[1]]
            if (height, width) != tuple(logit.shape[-2:]):
                logit = F.interpolate(
                    logit[None].float(), size=(height, width), mode="bilinear", align_corners=False
                )[0]
            maps.append(logit)
        return maps


def _fetch_urls(processor: UnipImageProcessor, images: Any) -> Any:
    if isinstance(images, (list, tuple)):
        return [_fetch_urls(processor, item) for item in images]
    if isinstance(images, str) and images.startswith(("http://", "https://")):
        return processor.fetch_images(images)
    return images


def _stack_if_possible(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    if len({array.shape for array in arrays}) == 1:
        return np.stack(arrays)
    return arrays


__all__ = ["UnipImageProcessor", "InfraredImageError", "MAX_IMAGE_PIXELS", "decode_intensity"]
