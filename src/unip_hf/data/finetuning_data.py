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

from unip_hf.data import IndexedTransformDataset, load_segmentation_dataset
from unip_hf.data.segmentation import available_splits
from unip_hf.models.image_processing_unip import INFRARED_MEAN, INFRARED_STD, UnipImageProcessor, keep_ratio_size
from unip_hf.models.infrared_decoding import load_infrared_image


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


def resolve_eval_split(name: str, data_dir: str, split: str | None, argument: str = "eval_split") -> str:
    """The evaluation split: `split` if given (it must be one of the data set's splits: a `ValueError` naming
    `--argument` and the available splits), else `val` when the data set has one, else `test`."""
    splits = dataset_splits(name, data_dir)
    if split:
        return check_split(name, data_dir, split, argument, splits)
    for candidate in ("val", "test"):
        if candidate in splits:
            return candidate
    raise ValueError(f"{data_dir} has no val or test split (found {splits}); pass --{argument}")


def dataset_splits(name: str, data_dir: str) -> list[str]:
    """The splits the `name` layout finds in `data_dir` (nothing built); errors name `--data_dir` / `--dataset`."""
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir!r} is not a folder")
    try:
        return available_splits(name, data_dir)
    except ValueError as err:
        raise ValueError(f"--dataset {name!r}: {err}") from None


def check_split(name: str, data_dir: str, split: str, argument: str, splits: list[str] | None = None) -> str:
    """`split` itself when the `name` data set in `data_dir` provides it, else a `ValueError` naming `--argument`, the
    split and the available ones (read from the layout, nothing is built: checked before a model is loaded). A folder
    whose layout shows no split at all passes here: the build names it ("no split found under ...")."""
    splits = dataset_splits(name, data_dir) if splits is None else splits
    if splits and split not in splits:
        raise ValueError(f"--{argument} {split!r}: the {name} data in {data_dir} has no such split; available: "
                         f"{', '.join(splits)}")
    return split


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
        negatives (`Sequence[str]`, *optional*): image files known to hold no target (`--negative_data`, see
            `load_negative_frames`), appended after the data set's images with an all-background label.
        with_keys (`bool`, *optional*, defaults to `False`): add `sample_key` (`[epoch, index]`, int64) to each view,
            so that a view can be drawn again (`view`): what hard-negative mining keeps.
    """

    def __init__(self, dataset, transform, negatives=(), with_keys: bool = False):
        self.inner = IndexedTransformDataset(dataset, transform, image_key="image", label_key="label")
        self.transform = transform
        self.negatives = [str(path) for path in negatives]
        self.with_keys = with_keys

    def __len__(self) -> int:
        return len(self.inner) + len(self.negatives)

    def view(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        """The view of `(epoch, index)`: the same pixels and labels each time."""
        self.transform.set_epoch(epoch)
        if index >= len(self.inner):
            item = self.transform(self.negatives[index - len(self.inner)], None, index=int(index))
        else:
            item = self.inner[int(index)]
        if self.with_keys:
            item["sample_key"] = torch.tensor([int(epoch), int(index)], dtype=torch.int64)
        return item

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self.view(int(epoch), int(index))


def load_negative_frames(folder: str) -> tuple[list[str], list[str]]:
    """The readable image files under `folder` (recursive; `--negative_data`), and the `"path: reason"` of every
    file skipped (not an image, or undecodable: each is opened once here, so that training never meets it).

    The frames must hold no target at all: every pixel of theirs is trained as background, so one real target among
    them teaches the model to miss targets. Only the user can vouch for that; look at them.

    Raises:
        FileNotFoundError: `folder` does not exist.
        ValueError: `folder` holds no readable image (the skipped files are named).
    """
    from unip_hf.data.files import find_images  # the one folder walker (light; kept local as this module's only use)
    from unip_hf.models.infrared_decoding import InfraredImageError

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--negative_data {folder}: no such folder (a folder of frames that hold no target)")
    skipped: list[str] = []
    readable = []
    for path in find_images(folder, skipped=skipped):
        try:
            load_infrared_image(path)
        except (InfraredImageError, OSError, ValueError) as error:
            skipped.append(str(error) if str(path) in str(error) else f"{path}: {error}")
            continue
        readable.append(str(path))
    if not readable:
        raise ValueError(f"--negative_data {folder} holds no readable image"
                         + (f" (skipped: {'; '.join(skipped)})" if skipped else "") + "; point it at a folder of "
                         "target-free frames, or drop the option")
    return readable, skipped


class HardNegativePool:
    """Hard-negative mining for small targets: training views on which the model fires away from every target,
    kept with a priority (the number of false-alarm pixels) and drawn again in later batches.

    Each step, `mine(keys, target_logits, labels)` scores the views just trained on: pixels whose target probability
    exceeds 0.5, that are background and farther than `margin` pixels from any target (a target drawn a little too
    large is not a false alarm). A view with a positive score enters the pool (or updates its entry); a view that
    became quiet leaves it. At most `capacity` views are kept (the highest scores; ties by key). `draw(count)` picks
    views without replacement with probability proportional to their score, from a generator seeded by
    `(seed, draws so far)`: the same run draws the same views. The state is plain JSON (`state_dict`,
    `load_state_dict`); `finetuning` saves it next to each checkpoint and restores it on resume.

    Args:
        capacity (`int`, defaults to 512): views kept.
        seed (`int`, defaults to 0): seed of the draws.
        margin (`int`, defaults to 3): pixels around a target that never count as false alarm (the IRSTD matching
            distance).
    """

    def __init__(self, capacity: int = 512, seed: int = 0, margin: int = 3):
        if capacity < 1:
            raise ValueError(f"hard-negative pool capacity must be >= 1, got {capacity}")
        self.capacity, self.seed, self.margin = int(capacity), int(seed), int(margin)
        self.entries: dict[tuple[int, int], int] = {}
        self.draws = 0

    def __len__(self) -> int:
        return len(self.entries)

    @torch.no_grad()
    def false_alarm_pixels(self, target_logits: torch.Tensor, labels: torch.Tensor,
                           ignore_index: int = 255) -> torch.Tensor:
        """Per view: background pixels farther than `margin` from any target whose target probability is > 0.5."""
        labels = labels.to(target_logits.device)
        target = ((labels > 0) & (labels != ignore_index)).float()[:, None]
        near = torch.nn.functional.max_pool2d(target, 2 * self.margin + 1, stride=1, padding=self.margin)[:, 0] > 0
        firing = target_logits.detach().float()[:, 0] > 0.0  # sigmoid(z) > 0.5
        return (firing & (labels == 0) & ~near).sum(dim=(1, 2))

    def mine(self, keys: torch.Tensor, target_logits: torch.Tensor, labels: torch.Tensor,
             ignore_index: int = 255) -> None:
        """Update the pool with the views `keys` (`(B, 2)` `[epoch, index]`) just trained on."""
        scores = self.false_alarm_pixels(target_logits, labels, ignore_index).tolist()
        for (epoch, index), score in zip(keys.tolist(), scores):
            key = (int(epoch), int(index))
            if score > 0:
                self.entries[key] = int(score)
            else:
                self.entries.pop(key, None)
        if len(self.entries) > self.capacity:
            kept = sorted(self.entries.items(), key=lambda item: (-item[1], item[0]))[: self.capacity]
            self.entries = dict(kept)

    def draw(self, count: int) -> list[tuple[int, int]]:
        """Up to `count` keys, without replacement, with probability proportional to their score."""
        self.draws += 1
        if not self.entries or count < 1:
            return []
        keys = sorted(self.entries)
        weights = np.array([self.entries[key] for key in keys], dtype=np.float64)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, 0x4E47, self.draws])))
        chosen = rng.choice(len(keys), size=min(count, len(keys)), replace=False, p=weights / weights.sum())
        return [keys[i] for i in sorted(chosen)]

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "seed": self.seed, "margin": self.margin, "draws": self.draws,
                "entries": [[epoch, index, score] for (epoch, index), score in sorted(self.entries.items())]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws = int(state["draws"])
        self.entries = {(int(e), int(i)): int(score) for e, i, score in state["entries"]}


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
