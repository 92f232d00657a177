"""The images of UNIP pre-training (Zhang et al., ICLR 2025): `--train_data` entries (image folders, `save_to_disk`
folders, parquet folders, Hub ids) resolved by `load_training_sources`, folders scanned by `scan_image_folder`, and
`PretrainImageDataset`, which turns each image into the view teacher and student share (unreadable images skipped,
named and counted).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from unip_hf.data.files import IMAGE_EXTENSIONS, FileScan, scan_files

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------


def is_saved_dataset(path: str) -> bool:
    """A `datasets` `save_to_disk` folder (Dataset or DatasetDict)."""
    return any(os.path.isfile(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json"))


def contains_parquet(path: str) -> bool:
    """Whether `path` holds ``.parquet`` files at any depth (the package's walker: link loops are not followed)."""
    return bool(scan_files(path, extensions=(".parquet",)).files)


class PretrainImageDataset(Dataset):
    """Pre-training images from files and/or `datasets` data sets, each turned into the same augmented view for
    teacher and student. Keys are `(epoch, index)` from an `EpochSampler`; the view depends only on
    `(seed, epoch, index)`. An image that cannot be decoded is skipped (the next one is used) and counted once,
    however often it is drawn (`skipped_at_load` counts distinct images; with DataLoader workers each worker
    process counts its own).

    Args:
        sources (`list`): entries are file paths (`str`) or `(datasets.Dataset, image_column)` pairs.
        transform (`Callable`): `transform(image, index=...)` with a `seed` and an `epoch` attribute
            (`data.transforms.PretrainTransform`).
        skipped_at_scan (`int`, *optional*): unreadable files already dropped when scanning folders.
    """

    def __init__(self, sources: list, transform: Callable, skipped_at_scan: int = 0):
        self.files: list[str] = [s for s in sources if isinstance(s, str)]
        self.tables = [s for s in sources if not isinstance(s, str)]
        self.offsets = [len(self.files)]
        for table, _column in self.tables:
            self.offsets.append(self.offsets[-1] + len(table))
        self.transform = transform
        self.skipped_at_scan = skipped_at_scan
        self.unreadable: set[int] = set()  # indices found undecodable; not tried again

    @property
    def skipped_at_load(self) -> int:
        """Distinct images that could not be decoded so far (in this process)."""
        return len(self.unreadable)

    def __len__(self) -> int:
        return self.offsets[-1]

    def _raw(self, index: int) -> Any:
        if index < len(self.files):
            return self.files[index]
        for part, (table, column) in enumerate(self.tables):
            if index < self.offsets[part + 1]:
                return table[index - self.offsets[part]][column]
        raise IndexError(index)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        self.transform.epoch = epoch
        for attempt in range(min(len(self), 100)):
            current = (index + attempt) % len(self)
            if current in self.unreadable:
                continue
            try:
                return {"pixel_values": self.transform(self._raw(current), index=index)}
            except Exception as error:  # noqa: BLE001 - any decoding failure: skip the image
                self.unreadable.add(current)
                logger.warning("skipping unreadable image %s: %s", self.files[current] if current < len(self.files)
                               else f"#{current}", error)
        raise RuntimeError("100 consecutive images could not be read; check the training data")


def scan_image_folder(folder: str, verify: bool = True, scan: FileScan | None = None) -> tuple[list[str], int]:
    """Image files under `folder` (recursive, following symbolic links, sorted, each real file once) and how many
    distinct files were skipped: names that are not UTF-8, broken links, FIFOs and other non-regular files (see
    `unip_hf.data.files`), and, when `verify`, files whose header PIL cannot parse.

    Args:
        folder: the folder to scan.
        verify: parse each header with PIL.
        scan: a `FileScan` shared by several folders, so that a file reached from two of them is listed once.
    """
    scan = scan if scan is not None else FileScan()
    start_files, start_skipped = len(scan.files), len(scan.skipped)
    scan.add(folder, IMAGE_EXTENSIONS)
    files = scan.files[start_files:]
    bad = 0
    for item in scan.skipped[start_skipped:]:
        logger.warning("skipping %s", item)
        bad += item.kind not in ("loop", "same-file")  # a second path to a listed file is not a lost image
    if not verify:
        return files, bad
    readable = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - header parsed
            readable.append(path)
        except Exception:  # noqa: BLE001
            bad += 1
            logger.warning("skipping unreadable image %s", path)
    return readable, bad


def load_training_sources(train_data: Sequence[str], image_column: str = "image") -> tuple[list, int, list[str]]:
    """Resolve `--train_data` entries: image folders (recursive), `save_to_disk` folders, parquet folders or Hub ids.

    Returns:
        `(sources, skipped, descriptions)` for `PretrainImageDataset`.
    """
    import datasets  # deliberately lazy: `import unip_hf` loads this module and does not otherwise need `datasets`

    if isinstance(train_data, str):
        train_data = [train_data]
    if not train_data:
        raise ValueError("--train_data is required: image folders, an InfMix folder or a Hub data set id")
    sources: list = []
    skipped = 0
    described = []
    scan = FileScan()  # one scan for all entries: a file named twice is used once
    for entry in train_data:
        if os.path.isdir(entry):
            if is_saved_dataset(entry):
                table = datasets.load_from_disk(entry)
            elif contains_parquet(entry):
                table = datasets.load_dataset(entry, split="train")
            else:
                first_skip = len(scan.skipped)
                files, bad = scan_image_folder(entry, scan=scan)
                if not files and any(s.kind == "same-file" for s in scan.skipped[first_skip:]):
                    described.append(f"{entry} (no new images: all already listed)")
                    continue
                if not files:
                    raise ValueError(f"no readable image found under {entry} (extensions {', '.join(IMAGE_EXTENSIONS)})"
                                     + (f"; {bad} skipped, see the warnings above" if bad else ""))
                sources.extend(files)
                skipped += bad
                described.append(f"{entry} ({len(files)} images{f', {bad} unreadable skipped' if bad else ''})")
                continue
        elif os.path.isfile(entry):
            if scan.add_file(entry):
                sources.append(entry)
                described.append(entry)
            else:
                logger.warning("skipping %s", scan.skipped[-1])
                skipped += scan.skipped[-1].kind != "same-file"
            continue
        elif os.path.exists(entry):
            raise ValueError(f"training data {entry!r} is neither a folder nor a regular file (a FIFO or a device?)")
        elif entry.startswith((".", "/")):
            raise FileNotFoundError(f"training data {entry!r} does not exist")
        else:
            table = datasets.load_dataset(entry, split="train")
        if isinstance(table, datasets.DatasetDict):
            table = table["train"] if "train" in table else next(iter(table.values()))
        column = image_column if image_column in table.column_names else next(
            (name for name, feature in table.features.items() if isinstance(feature, datasets.Image)), None)
        if column is None:
            raise ValueError(f"{entry} has no image column (columns: {table.column_names})")
        if len(table) == 0:
            raise ValueError(f"{entry} is empty")
        sources.append((table, column))
        described.append(f"{entry} ({len(table)} images)")
    return sources, skipped, described


__all__ = ["PretrainImageDataset"]
