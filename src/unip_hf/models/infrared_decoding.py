"""Decoding infrared image files and arrays into one intensity channel (UNIP, Zhang et al., ICLR 2025): any depth or
mode (8/16-bit, float, palette, colour to luma), EXIF orientation, the pixel limit, FLIR radiometric JPEGs (raw counts
or temperatures), NaN refused. The one decoder of the package; `UnipImageProcessor` builds on it. Travels with saved
checkpoints as remote code, so it imports only numpy, PIL, torch and transformers."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_utils import (
    ChannelDimension,
)
from transformers.utils import logging

logger = logging.get_logger(__name__)


# ITU-R BT.601 luma weights (the weights PIL uses for RGB -> L).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


BIT_DEPTH_SCALINGS = ("percentile", "fixed")


#: Percentiles of the default per-image stretch of 16-bit data.
DEFAULT_PERCENTILES = (1.0, 99.0)


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
                "unip_hf.models.infrared_decoding.MAX_IMAGE_PIXELS, or downscale/tile the image)."
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


__all__ = ["InfraredImageError", "MAX_IMAGE_PIXELS", "decode_intensity", "load_infrared_image"]
