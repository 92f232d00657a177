"""Data transforms for UNIP (Zhang et al., ICLR 2025) pre-training and infrared segmentation, without torchvision.

Pre-training view (RandomResizedCrop 224, scale 0.2-1, flip, RGB->L->3 channels, normalise), segmentation
training (random resize 0.5-2.0, crop with a max single-class ratio, flip, photometric distortion, pad with
ignore 255), evaluation (resize; the sliding windows are inference, in `unip_hf.evaluation.inference`). Randomness comes from a
generator per (seed, epoch, index).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import datasets
import numpy as np
import torch
from PIL import Image

from unip_hf.models.image_processing_unip import INFRARED_MEAN as UNIP_MEAN
from unip_hf.models.image_processing_unip import INFRARED_STD as UNIP_STD
from unip_hf.models.infrared_decoding import decode_intensity, load_infrared_image

__all__ = ["PretrainTransform", "SegmentationTrainTransform", "SegmentationEvalTransform", "IndexedTransformDataset"]

IGNORE_INDEX = 255


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Generator for one sample, identical in any worker process: derived from (seed, epoch, index)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch), int(index)])))


def to_working_image(image: Image.Image, image_processor=None) -> Image.Image:
    """The image in one of two working modes: 8-bit `L`, or `F` holding its intensity in [0, 1].

    Every mode other than `L` (colour, palette, 16-bit, float) goes through `decode_intensity`, the package's one
    decoding function, with the 16-bit / float settings of `image_processor` (`UnipImageProcessor.to_intensity`;
    default settings otherwise), on the whole image before any crop, so training views and inference see the same
    intensities. `L` stays 8-bit so that crops resample in 8 bits (its intensity is the value / 255, as there).
    """
    if image.mode == "L":
        return image
    intensity = image_processor.to_intensity(image) if image_processor is not None else decode_intensity(image)
    return Image.fromarray(intensity, mode="F")


def _load_image(image: Any, image_processor=None, **kwargs) -> Image.Image:
    """`load_infrared_image` with the processor's `radiometric` choice (what FLIR radiometric JPEGs give)."""
    return load_infrared_image(image, radiometric=getattr(image_processor, "radiometric", None), **kwargs)


def _intensity_array(image: Image.Image) -> np.ndarray:
    """Float32 intensity in [0, 1] of a working image (`L`: / 255; `F`: already in [0, 1]), see `to_working_image`."""
    if image.mode == "F":
        return np.array(image, dtype=np.float32)  # a writable copy: normalisation works in place
    if image.mode != "L":
        raise ValueError(f"expected a working image of mode L or F (see to_working_image), got mode {image.mode!r}")
    return np.asarray(image, dtype=np.float32) / 255.0


def _to_tensor(arr: np.ndarray, mean: float, std: float, channels: int) -> torch.Tensor:
    """(arr - mean) / std as a ``channels x H x W`` float32 tensor (channels > 1: an expanded, read-only view)."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    arr *= 1.0 / std
    arr -= mean / std
    t = torch.from_numpy(arr).unsqueeze(0)
    return t.expand(channels, -1, -1) if channels > 1 else t


def random_resized_crop_box(
    width: int, height: int, rng: np.random.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """Crop box (left, top, right, bottom) with the RandomResizedCrop rule (10 tries, then a centre crop).

    Args:
        width: image width.
        height: image height.
        rng: the sample's generator.
        scale: range of the crop area relative to the image area.
        ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class PretrainTransform:
    """The UNIP pre-training view: RandomResizedCrop, flip, grayscale to 3 channels, normalise.

    JPEGs are decoded at reduced scale with PIL ``draft()`` when the crop is at least twice the output
    size, and only the crop box is resampled. Teacher and student see the same view.

    Args:
        size (`int`, defaults to 224): output side.
        scale (`tuple`, defaults to `(0.2, 1.0)`): crop area range.
        ratio (`tuple`, defaults to `(3/4, 4/3)`): crop aspect range.
        flip_prob (`float`, defaults to 0.5): horizontal flip probability.
        mean (`float`, defaults to 0.3801) / std (`float`, defaults to 0.1871): normalisation.
        num_channels (`int`, defaults to 3): 3 repeats the intensity (RGB->L->3 channels), 1 keeps one.
        seed (`int`, defaults to 0): base seed; the view of sample ``i`` in epoch ``e`` depends only on (seed, e, i).
        image_processor (`UnipImageProcessor`, *optional*): whose 16-bit / float scaling settings decode high-depth
            images (see `to_working_image`); default settings when omitted.
        grayscale (`bool`, defaults to `True`): convert colour images to intensity (the paper). `False` keeps a
            colour image's three channels (each normalised with `mean` / `std`; needs `num_channels=3`), the
            InfMix `no_grayscale` ablation; intensity images are unchanged. Same crop and flip either way.

    Example::

        t = PretrainTransform(seed=0)
        x = t(example["image"], index=7)          # float32 tensor 3x224x224
    """

    def __init__(self, size: int = 224, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_prob: float = 0.5,
                 mean: float = UNIP_MEAN, std: float = UNIP_STD, num_channels: int = 3, seed: int = 0,
                 image_processor=None, grayscale: bool = True):
        if not grayscale and num_channels != 3:
            raise ValueError(f"grayscale=False keeps colour images' 3 channels; it needs num_channels=3, got {num_channels}")
        self.grayscale = bool(grayscale)
        self.image_processor = image_processor
        self.size, self.scale, self.ratio, self.flip_prob = size, scale, ratio, flip_prob
        self.mean, self.std, self.num_channels, self.seed = mean, std, num_channels, seed
        self.epoch = 0
        self._counter = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch component of the per-sample seeds."""
        self.epoch = int(epoch)

    def __call__(self, image: Any, index: Optional[int] = None) -> torch.Tensor:
        """Transform one image.

        Args:
            image: PIL image, bytes, path or `datasets` image dict (decoded by `load_infrared_image`).
            index: the sample index (reproducible views); without it an internal counter is used.
        """
        if index is None:
            index, self._counter = self._counter, self._counter + 1
        rng = sample_rng(self.seed, self.epoch, index)
        plan: dict[str, Any] = {}

        def draft(width: int, height: int) -> tuple[int, int]:
            # the crop is drawn on the image as displayed (EXIF orientation applied); a JPEG is then decoded straight
            # to luma, at reduced scale when the crop allows it
            box = random_resized_crop_box(width, height, rng, self.scale, self.ratio)
            plan.update(box=box, size=(width, height))
            factor = max(1.0, min(box[2] - box[0], box[3] - box[1]) / self.size)
            return int(width / factor), int(height / factor)

        if not self.grayscale:
            im = _load_image(image, self.image_processor)
            if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
                return self._colour_view(im.convert("RGB"), rng)
            draft(*im.size)
        else:
            im = _load_image(image, self.image_processor, draft=draft)
        box, (width, height) = plan["box"], plan["size"]
        flip = rng.random() < self.flip_prob
        if im.size != (width, height):
            sx, sy = im.size[0] / width, im.size[1] / height
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        im = to_working_image(im, self.image_processor)
        im = im.resize((self.size, self.size), Image.BILINEAR, box=box)
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        arr = _intensity_array(im)
        return _to_tensor(arr, self.mean, self.std, self.num_channels)


    def _colour_view(self, im: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        """The same crop and flip draws as the intensity path, on the three colour channels."""
        box = random_resized_crop_box(im.size[0], im.size[1], rng, self.scale, self.ratio)
        flip = rng.random() < self.flip_prob
        im = im.resize((self.size, self.size), Image.BILINEAR, box=box)
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        return torch.from_numpy(((arr - self.mean) / self.std).transpose(2, 0, 1).copy())


def _resize_pair(image: Image.Image, mask: Optional[Image.Image], size: tuple[int, int], box=None):
    image = image.resize(size, Image.BILINEAR, box=box)
    if mask is not None:
        mask = mask.resize(size, Image.NEAREST, box=box)
    return image, mask


class SegmentationTrainTransform:
    """Segmentation training augmentation (mmseg-style), returning ``pixel_values`` and ``labels``.

    Random resize of the image into ``base_size * r`` (keep ratio, r in ``ratio_range``), random crop of
    ``crop_size`` retried up to 10 times until no class covers more than ``cat_max_ratio`` of it (ignore
    excluded, like mmseg's ``cat_max_ratio``; when no attempt qualifies, the first one holding more than one class
    is kept, so that small targets are not cropped away), horizontal flip, photometric distortion (brightness and
    contrast; hue/saturation do not apply to intensity images), pad to the crop size with 0 / ``ignore_index``,
    normalise. The crop is chosen in resized coordinates but only the crop region is resampled.

    Args:
        crop_size (`int` or `tuple`, defaults to 512): (height, width) of the output.
        base_size (`tuple`, defaults to `(2048, 512)`): long and short side targets before the random ratio.
        ratio_range (`tuple`, defaults to `(0.5, 2.0)`): random resize range.
        cat_max_ratio (`float`, defaults to 0.75): max share of one class in the crop.
        flip_prob (`float`, defaults to 0.5): horizontal flip probability.
        photometric (`bool`, defaults to `True`): brightness delta 32, contrast 0.5-1.5, each with p=0.5.
        mean / std (`float`): normalisation; num_channels (`int`, defaults to 3); ignore_index (`int`, 255).
        seed (`int`, defaults to 0): base seed, combined with the epoch and the sample index.
        image_processor (`UnipImageProcessor`, *optional*): whose 16-bit / float scaling settings decode high-depth
            images (see `to_working_image`); default settings when omitted.
        full_frame_ratio (`float`, defaults to 0.0): share of the views drawn as *full-frame* views (small targets:
            what teaches "not a target"): the whole frame resized by a factor drawn from `full_frame_scale` of its own
            size (not of `base_size`), then a crop at a uniformly random place, without the retries that seek a
            target. 0 draws nothing extra, so the views of earlier runs are unchanged.
        full_frame_scale (`tuple`, defaults to `(0.5, 2.0)`): resize range of the full-frame views.

    A `label` of `None` is a frame known to hold no target (a negative frame, `--negative_data`): its label is all
    background.
    """

    def __init__(self, crop_size=512, base_size=(2048, 512), ratio_range=(0.5, 2.0), cat_max_ratio: float = 0.75,
                 flip_prob: float = 0.5, photometric: bool = True, mean: float = UNIP_MEAN, std: float = UNIP_STD,
                 num_channels: int = 3, ignore_index: int = IGNORE_INDEX, seed: int = 0, image_processor=None,
                 full_frame_ratio: float = 0.0, full_frame_scale=(0.5, 2.0)):
        if not 0.0 <= full_frame_ratio <= 1.0:
            raise ValueError(f"full_frame_ratio must be in [0, 1], got {full_frame_ratio}")
        if not 0.0 < full_frame_scale[0] <= full_frame_scale[1]:
            raise ValueError(f"full_frame_scale must be (low, high) with 0 < low <= high, got {full_frame_scale}")
        self.full_frame_ratio, self.full_frame_scale = float(full_frame_ratio), tuple(full_frame_scale)
        self.image_processor = image_processor
        self.crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        self.base_size, self.ratio_range, self.cat_max_ratio = base_size, ratio_range, cat_max_ratio
        self.flip_prob, self.photometric = flip_prob, photometric
        self.mean, self.std, self.num_channels, self.ignore_index, self.seed = mean, std, num_channels, ignore_index, seed
        self.epoch = 0
        self._counter = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, image: Any, label: Any, index: Optional[int] = None) -> dict[str, torch.Tensor]:
        """Transform one (image, label) pair into ``{"pixel_values": 3xHxW float32, "labels": HxW int64}``."""
        if index is None:
            index, self._counter = self._counter, self._counter + 1
        rng = sample_rng(self.seed, self.epoch, index)
        im = _load_image(image, self.image_processor)
        w, h = im.size
        mask = Image.new("L", (w, h), 0) if label is None else load_infrared_image(label)
        if mask.size != (w, h):
            raise ValueError(f"label size {mask.size} differs from image size {(w, h)}")
        full_frame = self.full_frame_ratio > 0 and rng.random() < self.full_frame_ratio
        if full_frame:  # the whole frame at a random scale of its own size, cropped anywhere
            s = rng.uniform(*self.full_frame_scale)
        else:
            r = rng.uniform(*self.ratio_range)
            long_t, short_t = max(self.base_size) * r, min(self.base_size) * r
            s = min(long_t / max(w, h), short_t / min(w, h))
        rw, rh = max(1, int(w * s + 0.5)), max(1, int(h * s + 0.5))
        ch, cw = min(self.crop[0], rh), min(self.crop[1], rw)
        mask_arr = np.asarray(mask)
        mixed = None  # the first crop holding more than one class, used when none meets cat_max_ratio
        for attempt in range(10):
            top, left = int(rng.integers(0, rh - ch + 1)), int(rng.integers(0, rw - cw + 1))
            if self.cat_max_ratio >= 1.0 or full_frame:
                break
            y0, y1 = int(top / s), max(int(top / s) + 1, int((top + ch) / s))
            x0, x1 = int(left / s), max(int(left / s) + 1, int((left + cw) / s))
            region = mask_arr[y0:y1, x0:x1]
            _, counts = np.unique(region[region != self.ignore_index], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
            if len(counts) > 1 and mixed is None:
                mixed = (top, left)
        else:
            # no crop met the ratio (always the case for small targets, whose background fills > 99% of any crop):
            # prefer one that shows some foreground over a pure-background one
            if mixed is not None:
                top, left = mixed
        # rw, rh are rounded, so the crop's far edge may map a fraction of a pixel past the image: clamp it
        box = (left / s, top / s, min((left + cw) / s, w), min((top + ch) / s, h))
        im = to_working_image(im, self.image_processor)
        im, mask = _resize_pair(im, mask, (cw, ch), box)
        scale = 1.0 if im.mode == "F" else 255.0
        arr = np.asarray(im, dtype=np.float32)
        lab = np.asarray(mask, dtype=np.int64)
        if rng.random() < self.flip_prob:
            arr, lab = arr[:, ::-1], lab[:, ::-1]
        if self.photometric:
            arr = arr * (255.0 / scale)
            if rng.random() < 0.5:
                arr = arr + rng.uniform(-32, 32)
            if rng.random() < 0.5:
                arr = arr * rng.uniform(0.5, 1.5)
            arr = np.clip(arr, 0, 255) / 255.0
        else:
            arr = arr / scale
        pad_h, pad_w = self.crop[0] - arr.shape[0], self.crop[1] - arr.shape[1]
        if pad_h > 0 or pad_w > 0:
            arr = np.pad(arr, ((0, pad_h), (0, pad_w)), constant_values=0.0)
            lab = np.pad(lab, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        return {
            "pixel_values": _to_tensor(arr.astype(np.float32), self.mean, self.std, self.num_channels),
            "labels": torch.from_numpy(np.ascontiguousarray(lab)),
        }


class SegmentationEvalTransform:
    """Evaluation preprocessing: optional resize of the image (labels stay at full resolution), normalise.

    Args:
        size (`int` or `tuple`, *optional*): ``(height, width)``, or an int for the short side (keep ratio);
            ``None`` keeps the original size (use with `inference.sliding_window_inference`).
        mean / std / num_channels: as in training.
        image_processor (`UnipImageProcessor`, *optional*): whose 16-bit / float scaling settings decode high-depth
            images (see `to_working_image`); default settings when omitted.
    """

    def __init__(self, size=None, mean: float = UNIP_MEAN, std: float = UNIP_STD, num_channels: int = 3,
                 image_processor=None):
        self.image_processor = image_processor
        self.size, self.mean, self.std, self.num_channels = size, mean, std, num_channels

    def __call__(self, image: Any, label: Any = None) -> dict[str, torch.Tensor]:
        im = _load_image(image, self.image_processor)
        if self.size is not None:
            w, h = im.size
            if isinstance(self.size, int):
                s = self.size / min(w, h)
                target = (max(1, round(w * s)), max(1, round(h * s)))
            else:
                target = (self.size[1], self.size[0])
            im = to_working_image(im, self.image_processor).resize(target, Image.BILINEAR)
        arr = _intensity_array(to_working_image(im, self.image_processor))
        out = {"pixel_values": _to_tensor(arr, self.mean, self.std, self.num_channels)}
        if label is not None:
            out["labels"] = torch.from_numpy(np.asarray(load_infrared_image(label), dtype=np.int64).copy())
        return out


class IndexedTransformDataset(torch.utils.data.Dataset):
    """A map-style dataset applying a seeded transform with the sample index, so that views are
    reproducible whatever the number of DataLoader workers.

    Args:
        dataset: a `datasets.Dataset` (or any indexable of dicts).
        transform: `PretrainTransform` (uses ``image_key``) or a segmentation transform (also ``label_key``).
        image_key (`str`, defaults to "image") / label_key (`str`, *optional*): columns to read.
    """

    def __init__(self, dataset, transform: Callable, image_key: str = "image", label_key: Optional[str] = None):
        self.dataset, self.transform, self.image_key, self.label_key = dataset, transform, image_key, label_key
        self._raw = hasattr(dataset, "cast_column") and hasattr(dataset, "features")
        if self._raw:  # read the undecoded bytes: the transform decodes (with draft) itself
            cols = {k: datasets.Image(decode=False) for k in (image_key, label_key) if k}
            for k, feat in cols.items():
                self.dataset = self.dataset.cast_column(k, feat)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.transform.set_epoch(epoch)

    def __getitem__(self, index: int):
        ex = self.dataset[int(index)]
        if self.label_key:
            return self.transform(ex[self.image_key], ex[self.label_key], index=int(index))
        return {"pixel_values": self.transform(ex[self.image_key], index=int(index))}
