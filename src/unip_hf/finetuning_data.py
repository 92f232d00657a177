"""The segmentation data of UNIP fine-tuning and evaluation (Zhang et al., ICLR 2025), on top of the `unip_hf.data`
builders: which metrics a data set uses (`dataset_task`), the evaluation resolution (`parse_img_scale`,
`rescale_size`), the split to evaluate (`resolve_eval_split`), loading a split (`load_split`), training views keyed by
`(epoch, index)` (`KeyedSegmentationDataset`) and evaluation samples (`EvalSegmentationDataset`).
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset

from .data import IndexedTransformDataset, load_segmentation_dataset
from .data.segmentation import available_splits
from .image_processing_unip import (
    INFRARED_MEAN,
    INFRARED_STD,
    UnipImageProcessor,
    keep_ratio_size,
    load_infrared_image,
)
from .argument_checks import parse_img_scale  # noqa: F401  (re-exported: the evaluation resolution)
from .choices import TASKS


#: Data sets evaluated with the small-target metrics (IoU, nIoU, Pd, Fa).
IRSTD_DATASETS = ("sirst", "nudt-sirst", "irstd-1k")


def dataset_task(name: str, override: str | None = None) -> str:
    """`"irstd"` (IoU, nIoU, Pd, Fa) for the infrared small-target sets, `"semantic"` (mIoU) otherwise.

    Args:
        name (`str`): builder name (`sirst`, `buffalo-udder`, `folder`, ...).
        override (`str`, *optional*): `"semantic"`, `"irstd"` or `"auto"`/None (decide from the name).
    """
    if override and override != "auto":
        if override not in ("semantic", "irstd"):
            raise ValueError(f"--task must be auto, semantic or irstd, got {override!r}")
        return override
    return "irstd" if name.lower().replace("_", "-") in IRSTD_DATASETS else "semantic"


def rescale_size(width: int, height: int, img_scale: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image rescaled, ratio kept, to fit `img_scale` (mmseg `keep_ratio` rule; the processor's
    `keep_ratio_size`, which owns it)."""
    return keep_ratio_size(height, width, img_scale)


def resolve_eval_split(name: str, data_dir: str, split: str | None) -> str:
    """The evaluation split: `split` if given, else `val` when the data set has one, else `test`."""
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir!r} is not a folder")
    if split:
        return split
    try:
        splits = available_splits(name, data_dir)
    except ValueError as err:
        raise ValueError(f"--dataset {name!r}: {err}") from None
    for candidate in ("val", "test"):
        if candidate in splits:
            return candidate
    raise ValueError(f"{data_dir} has no val or test split (found {splits}); pass --eval_split")


def load_split(name: str, data_dir: str, split: str, cache_dir: str | None = None, max_samples: int | None = None):
    """One split of a segmentation data set (`unip_hf.data.load_segmentation_dataset`), optionally truncated."""
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir!r} is not a folder")
    dataset = load_segmentation_dataset(name, data_dir, split, cache_dir=cache_dir)
    if max_samples:
        dataset = dataset.select(range(min(int(max_samples), len(dataset))))
    return dataset


class KeyedSegmentationDataset(Dataset):
    """Training views keyed by `(epoch, index)` (from `EpochSampler`): each view's augmentation is drawn from
    `(seed, epoch, index)`, so resumed and multi-process runs see the views of an uninterrupted run.

    Args:
        dataset: a `datasets.Dataset` with `image` and `label` columns.
        transform (`SegmentationTrainTransform`): the augmentation.
    """

    def __init__(self, dataset, transform):
        self.inner = IndexedTransformDataset(dataset, transform, image_key="image", label_key="label")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        self.transform.set_epoch(epoch)
        return self.inner[int(index)]


def _protocol_processor(img_scale: tuple[int, int] | None, num_channels: int,
                        size_divisor: int | None = None) -> UnipImageProcessor:
    """The evaluation protocol as a `UnipImageProcessor`: rescale to `img_scale` keeping the ratio (`None`: no
    resize), normalise, and (for the saved processor) pad to `size_divisor`. Evaluation and the processor saved with
    a model both use it, so that `pipeline("image-segmentation")` predicts what the reported metrics measured."""
    return UnipImageProcessor(
        do_resize=img_scale is not None, img_scale=list(img_scale) if img_scale is not None else None,
        size_divisor=size_divisor, num_channels=num_channels, image_mean=[INFRARED_MEAN] * num_channels,
        image_std=[INFRARED_STD] * num_channels)


class EvalSegmentationDataset(Dataset):
    """Evaluation samples: the image rescaled to `img_scale` (ratio kept; `None` keeps its size) and normalised by
    the protocol's `UnipImageProcessor` (the one saved with the model, less the padding `predict_logits` adds), and
    the label at full resolution.

    Args:
        dataset: a `datasets.Dataset` with `image` and `label` columns.
        img_scale (`tuple[int, int]`, *optional*): (long, short) side targets.
        num_channels (`int`, *optional*, defaults to 3): model input channels.
    """

    def __init__(self, dataset, img_scale: tuple[int, int] | None = None, num_channels: int = 3):
        self.dataset = dataset.cast_column("image", datasets.Image(decode=False)).cast_column(
            "label", datasets.Image(decode=False))
        self.img_scale = img_scale
        self.num_channels = num_channels
        self.image_processor = _protocol_processor(img_scale, num_channels)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.dataset[int(index)]
        image = load_infrared_image(example["image"])
        pixel_values = self.image_processor(image, return_tensors="pt")["pixel_values"][0]
        label = np.asarray(load_infrared_image(example["label"]), dtype=np.int64)
        return {"pixel_values": pixel_values, "labels": torch.from_numpy(label.copy()),
                "id": example.get("id", str(index))}


__all__: list[str] = []  # nothing here is documented API; the package's own modules import what they need
