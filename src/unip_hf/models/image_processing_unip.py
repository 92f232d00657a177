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

import os
from collections.abc import Iterable, Sequence
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

from .infrared_decoding import (
    _ACCEPTED_IMAGES,
    _ACCEPTED_MAPS,
    _INT16_PIL_MODES,
    DEFAULT_PERCENTILES,
    _channels_last,
    _check_options,
    _check_radiometric,
    _describe,
    _to_numpy,
    decode_intensity,
    load_infrared_image,
)

from .configuration_unip import AUTO_MAP, write_remote_code

logger = logging.get_logger(__name__)

# Infrared statistics used by UNIP pre-training and fine-tuning (intensity in [0, 1]).
INFRARED_MEAN = 0.3801
INFRARED_STD = 0.1871
#: The per-call options of `UnipImageProcessor.to_intensity` that `process_image` passes on.
_DECODING_OPTIONS = ("bit_depth_scaling", "intensity_range", "percentiles", "do_rescale", "rescale_factor",
                     "radiometric")
#: The geometry options that the label maps share with their images, in `_process_segmentation_maps`' order.
_GEOMETRY_OPTIONS = ("do_resize", "size", "do_center_crop", "crop_size", "img_scale", "size_divisor")


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
            resizes to the original size exactly as `unip_hf.evaluation.evaluator` does. The processor saved with
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
                `size_divisor` set, the evaluation protocol of `unip_hf.evaluation.evaluator` is followed: the logits are
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


__all__ = ["UnipImageProcessor"]
