"""Infrared segmentation data sets for UNIP fine-tuning (Zhang et al., ICLR 2025) as `datasets` builders.

SODA, MFNet (thermal), SCUT-Seg, SIRST, NUDT-SIRST / IRSTD-1K, an ``images/{split}`` + ``masks/{split}``
layout, colour-coded masks (MassMIND) and a generic folder layout. Every builder yields single-channel images
decoded by `image_processing_unip` (EXIF orientation applied, luma for colour; PNG, 16-bit kept; float TIFFs stay
float TIFFs) and PNG masks of class ids (255 = ignore), with checked masks. An image or mask that cannot be decoded
(truncated, corrupt, NaN, over the pixel limit) skips its pair, named and counted (see `SegmentationBuilder`).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import datasets
import numpy as np
from PIL import Image

from unip_hf.data.files import IMAGE_EXTENSIONS, FileScan, data_fingerprint, read_text, require_utf8_name, scan_files
from unip_hf.models.infrared_decoding import InfraredImageError, load_infrared_image, to_intensity_image

__all__ = ["load_segmentation_dataset", "segmentation_metadata"]

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
METADATA_MARKER = "Segmentation metadata (JSON):"
_EXTS = IMAGE_EXTENSIONS  # one list of image file extensions for the package (unip_hf.data.files)
#: Bumped when the rows built from the same files change (e.g. 0/255 masks of the ``folder`` layout), so that
#: caches written by older code are not reused.
_CACHE_FORMAT = "segmentation-3"  # 3: the original files' modes in the metadata

#: SODA (Li et al., 2021): 20 object classes plus background.
SODA_CLASSES = (
    "background", "person", "building", "tree", "road", "pole", "grass", "door", "table", "chair", "car",
    "bicycle", "lamp", "monitor", "traffic_cone", "trash_can", "animal", "fence", "sky", "river", "sidewalk",
)
#: MFNet (Ha et al., 2017): 8 classes plus unlabelled.
MFNET_CLASSES = ("unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")
#: SCUT-Seg (Xiong et al., 2021): 9 classes plus background.
SCUT_SEG_CLASSES = ("background", "road", "person", "rider", "car", "truck", "fence", "tree", "bus", "pole")
#: MassMIND (Nirgudkar et al., 2023), class order as published.
MASSMIND_CLASSES = ("sky", "water", "bridge", "obstacle", "living_obstacle", "background", "self")
#: MassMIND mask colours, derived from the released masks: the MATLAB "lines" colour order, one
#: colour per class in the published class order (sky is the top region, water the bottom one, ...).
MASSMIND_PALETTE = (
    (0, 113, 188), (216, 82, 24), (236, 176, 31), (125, 46, 141), (118, 171, 47), (76, 189, 237), (161, 19, 46),
)
#: Some released MassMIND masks use a second convention: pure red for ``self`` and the dark red of
#: ``self`` for ``background`` (the shore). A mask that contains pure red is read with this palette.
MASSMIND_ALT_PALETTE = MASSMIND_PALETTE[:5] + ((161, 19, 46), (255, 0, 0))


def _default_palette(n: int) -> tuple:
    """Distinct colours (the PASCAL VOC bit-interleaving scheme), index 0 black."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


@dataclass
class SegmentationSpec:
    """Class names, colours and mask value rules of one data set.

    Args:
        name (`str`): short name used by `load_segmentation_dataset`.
        class_names (`tuple[str, ...]`): names in id order.
        palette (`tuple`, *optional*): one RGB triple per class (a default palette when empty).
        value_map (`dict[int, int]`, *optional*): raw mask value -> class id (e.g. ``{255: 1}`` for 0/255 masks).
        stray_values (`dict[int, int]`, *optional*): known stray raw values mapped (usually to 255) and counted.
        ignore_index (`int`, defaults to 255): label that losses and metrics ignore.
    """

    name: str
    class_names: tuple
    palette: tuple = ()
    value_map: dict = field(default_factory=dict)
    stray_values: dict = field(default_factory=dict)
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        if not self.palette:
            self.palette = _default_palette(len(self.class_names))

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.class_names)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id2label": {str(k): v for k, v in self.id2label.items()},
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
            "stray_values": {str(k): v for k, v in self.stray_values.items()},
        }


_BINARY = {0: 0, 255: 1}
SEGMENTATION_SPECS: dict[str, SegmentationSpec] = {
    "soda": SegmentationSpec("soda", SODA_CLASSES),
    "mfnet": SegmentationSpec(
        "mfnet", MFNET_CLASSES,
        palette=((0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192), (128, 128, 0), (64, 64, 128),
                 (192, 128, 128), (192, 64, 0)),
    ),
    "scut-seg": SegmentationSpec(
        "scut-seg", SCUT_SEG_CLASSES,
        palette=((0, 0, 0), (128, 64, 128), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (190, 153, 153),
                 (107, 142, 35), (0, 60, 100), (153, 153, 153)),
    ),
    "sirst": SegmentationSpec("sirst", ("background", "target"), ((0, 0, 0), (255, 255, 255)), dict(_BINARY)),
    "nudt-sirst": SegmentationSpec("nudt-sirst", ("background", "target"), ((0, 0, 0), (255, 255, 255)), dict(_BINARY)),
    # IRSTD-1K: one released mask holds a stray value 64 on a target border; it becomes ignore (255), counted.
    "irstd-1k": SegmentationSpec(
        "irstd-1k", ("background", "target"), ((0, 0, 0), (255, 255, 255)), dict(_BINARY), stray_values={64: IGNORE_INDEX}
    ),
    "buffalo-udder": SegmentationSpec("buffalo-udder", ("background", "udder"), ((0, 0, 0), (255, 255, 255)), dict(_BINARY)),
    "massmind": SegmentationSpec("massmind", MASSMIND_CLASSES, MASSMIND_PALETTE),
}


# ----------------------------------------------------------------------------------------------- image helpers
def encode_png(array_or_image: Any) -> bytes:
    """PNG bytes of a PIL image or a 2-D uint8/uint16 array."""
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _encode_image(image: Image.Image) -> bytes:
    """Lossless bytes of a stored image: PNG for `L` / `I;16`, TIFF for `F` (float) and 32-bit `I`."""
    if image.mode not in ("F", "I"):
        return encode_png(image)
    buf = io.BytesIO()
    image.save(buf, format="TIFF")
    return buf.getvalue()


def colour_mask_to_ids(rgb: np.ndarray, palette: tuple, path: str = "<mask>", ignore_colour=None) -> np.ndarray:
    """Map an HxWx3 colour mask to class ids by exact palette match.

    Args:
        rgb: uint8 array HxWx3.
        palette: one RGB triple per class id.
        path: file name used in the error message.
        ignore_colour: optional RGB triple mapped to 255.

    Raises:
        ValueError: naming the file and the first unknown colours.
    """
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    out = np.full(key.shape, 254, dtype=np.uint8)
    for i, c in enumerate(palette):
        out[key == ((c[0] << 16) | (c[1] << 8) | c[2])] = i
    if ignore_colour is not None:
        out[key == ((ignore_colour[0] << 16) | (ignore_colour[1] << 8) | ignore_colour[2])] = IGNORE_INDEX
    bad = out == 254
    if bad.any():
        colours = sorted({(int(k) >> 16, (int(k) >> 8) & 255, int(k) & 255) for k in np.unique(key[bad])[:5]})
        raise ValueError(f"{path}: colours {colours} are not in the palette of {len(palette)} classes")
    return out


# ----------------------------------------------------------------------------------------------- builders
class SegmentationBuilder(datasets.GeneratorBasedBuilder):
    """Base of the segmentation builders: yields ``image`` (PNG bytes, TIFF for float images), ``label`` (PNG of ids)
    and ``id``.

    Images are decoded by `infrared_decoding.to_intensity_image` (the processor's decoding: EXIF orientation,
    `MAX_IMAGE_PIXELS`, raw values kept, NaN refused), masks by `load_infrared_image`. A pair whose image or mask
    cannot be decoded (`InfraredImageError`: truncated, corrupt, missing, too large, NaN) is skipped with a warning
    naming the file, and listed in ``builder.skipped`` and in the metadata (``segmentation_metadata(ds)["skipped"]``,
    ``{"split", "file", "error"}`` each); a split where every pair is skipped is a `ValueError` naming the files.
    Wrong content that needs a decision (mask size or values, layout errors) still raises, naming the file.

    Subclasses set `SPEC` and implement `_splits` (available splits) and `_pairs` (image, mask paths).
    Use through `load_segmentation_dataset`, or directly::

        b = SirstBuilder(data_dir="/data/sirst", cache_dir="/tmp/hf"); b.download_and_prepare()
        ds = b.as_dataset("train")

    The cache key (the builder's ``hash``) is a fingerprint of every file under ``data_dir`` (relative names,
    sizes, modification times), of the spec and of ``skip_missing``: editing a mask, adding or deleting an image
    rebuilds the data set instead of returning the cached rows. Files skipped by the folder scan (names that
    are not UTF-8, FIFOs, broken links, loops) are listed in ``builder.scan_skipped``.
    """

    SPEC: SegmentationSpec = SegmentationSpec("generic", ("background", "foreground"))
    VERSION = datasets.Version("1.1.0")  # 1.1: decoded by image_processing_unip (float kept, EXIF, skipped pairs)
    DEFAULT_WRITER_BATCH_SIZE = 100

    def __init__(self, *args, spec: Optional[SegmentationSpec] = None, skip_missing: bool = False,
                 radiometric: Optional[str] = None, **kwargs):
        if spec is not None:
            self.SPEC = spec
        self.skip_missing = skip_missing
        self.radiometric = radiometric  # what FLIR radiometric JPEGs give (load_infrared_image); part of the cache key
        data_dir = kwargs.get("data_dir")
        if kwargs.get("hash") is None and data_dir and os.path.isdir(data_dir):
            kwargs["hash"] = self._data_hash(data_dir, kwargs.get("cache_dir"))
        super().__init__(*args, **kwargs)
        self.stray_counts: dict[str, int] = {}
        self.missing: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self.source_modes: dict[str, dict[str, int]] = {}  # split -> PIL mode of the original image files -> count
        self.scan_skipped: list = []  # SkippedFile items: entries the folder scan did not open

    def _data_hash(self, data_dir: str, cache_dir: Optional[str]) -> str:
        """Fingerprint of what `data_dir` holds (a cache folder inside it excluded) and of the build options."""
        files = scan_files(data_dir, extensions=None).files
        if cache_dir:
            inside = os.path.abspath(cache_dir) + os.sep
            files = [f for f in files if not os.path.abspath(f).startswith(inside)]
        spec = self.SPEC
        extra = json.dumps([_CACHE_FORMAT, type(self).__name__, spec.to_dict(),
                            sorted((str(k), v) for k, v in spec.value_map.items()), self.skip_missing]
                           + ([self.radiometric] if self.radiometric else []))
        return data_fingerprint(files, root=data_dir, extra=extra)

    def _list_images(self, folder: str, recursive: bool = False) -> list[str]:
        """Image files in `folder` (sorted) through the package's walker; skipped entries go to `scan_skipped` (once)."""
        scan = FileScan()
        scan.add(folder, _EXTS, recursive=recursive)
        for item in scan.skipped:
            if item not in self.scan_skipped:
                self.scan_skipped.append(item)
                logger.warning("%s: skipping %s", type(self).__name__, item)
        return scan.files

    # -- to implement
    def _splits(self, root: str) -> list[str]:
        raise NotImplementedError

    def _pairs(self, root: str, split: str) -> list[tuple[str, str]]:
        raise NotImplementedError

    # -- shared
    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=f"{self.SPEC.name} infrared segmentation\n\n{METADATA_MARKER}\n{json.dumps(self.SPEC.to_dict())}",
            features=datasets.Features(
                {"id": datasets.Value("string"), "image": datasets.Image(), "label": datasets.Image()}
            ),
        )

    def _root(self) -> str:
        root = self.config.data_dir
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(f"{type(self).__name__}: data_dir {root!r} is not a folder")
        return root

    def _split_generators(self, dl_manager):
        root = self._root()
        splits = self._splits(root)
        if not splits:
            raise FileNotFoundError(f"{type(self).__name__}: no split found under {root}")
        return [datasets.SplitGenerator(name=s, gen_kwargs={"split": s}) for s in splits]

    def _load_image(self, path: str) -> Image.Image:
        return to_intensity_image(path, radiometric=self.radiometric)

    def _load_mask(self, path: str) -> np.ndarray:
        im = load_infrared_image(path)
        if im.mode in ("RGB", "RGBA"):
            raise ValueError(f"{path}: colour mask (mode {im.mode}) where a mask of class ids was expected")
        arr = np.asarray(im.convert("L") if im.mode in ("1", "LA") else im)
        if arr.ndim != 2:
            raise ValueError(f"{path}: mask must be single-channel, got shape {arr.shape}")
        return self._map_values(arr, path)

    def _map_values(self, arr: np.ndarray, path: str, value_map: Optional[dict] = None) -> np.ndarray:
        """Raw mask values -> class ids through `value_map` (default: the spec's), checked against the classes."""
        spec = self.SPEC
        value_map = spec.value_map if value_map is None else value_map
        arr = arr.astype(np.int64)
        out = arr.copy()
        if value_map:
            out = np.full(arr.shape, -1, dtype=np.int64)
            for raw, cid in value_map.items():
                out[arr == raw] = cid
            out[(arr == spec.ignore_index) & (out < 0)] = spec.ignore_index
        for raw, cid in spec.stray_values.items():
            hit = arr == raw
            n = int(hit.sum())
            if n:
                out[hit] = cid
                self.stray_counts[os.path.basename(path)] = self.stray_counts.get(os.path.basename(path), 0) + n
        valid = ((out >= 0) & (out < len(spec.class_names))) | (out == spec.ignore_index)
        if not valid.all():
            bad = sorted(int(v) for v in np.unique(arr[~valid])[:8])
            raise ValueError(
                f"{path}: mask values {bad} are outside the {len(spec.class_names)} classes of {spec.name} "
                f"(allowed: 0..{len(spec.class_names) - 1} and ignore {spec.ignore_index})"
            )
        # stored as an 8-bit PNG up to 256 classes, 16-bit past that (an 8-bit cast would turn id 299 into 43)
        return out.astype(np.uint8 if len(spec.class_names) <= 256 else np.uint16)

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        pairs = self._pairs(self._root(), split)
        kept, skipped_before = 0, len(self.skipped)
        for img_path, mask_path in pairs:
            current = img_path
            try:
                image = self._load_image(img_path)
                current = mask_path
                mask = self._load_mask(mask_path)
            except InfraredImageError as err:
                self.skipped.append({"split": split, "file": current, "error": str(err)})
                logger.warning("%s: skipping the pair of %s (%s)", type(self).__name__, current, err)
                continue
            if (mask.shape[1], mask.shape[0]) != image.size:
                raise ValueError(
                    f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image {img_path} "
                    f"size {image.size[0]}x{image.size[1]}"
                )
            key = os.path.splitext(os.path.basename(img_path))[0]
            kept += 1
            modes = self.source_modes.setdefault(split, {})
            mode = _file_mode(img_path)
            modes[mode] = modes.get(mode, 0) + 1
            yield f"{split}/{key}", {
                "id": key,
                "image": {"bytes": _encode_image(image), "path": None},
                "label": {"bytes": encode_png(mask), "path": None},
            }
        if pairs and not kept:
            names = "; ".join(item["error"] for item in self.skipped[skipped_before:][:5])
            raise ValueError(
                f"{type(self).__name__}: no readable image pair in split {split!r} of {self.config.data_dir} "
                f"({len(pairs)} skipped): {names}"
            )
        if len(self.skipped) > skipped_before:
            logger.warning("%s: %d pair(s) of split %r skipped (unreadable files, listed in the metadata)",
                           type(self).__name__, len(self.skipped) - skipped_before, split)
        # the metadata always carries the original files' modes (`unip data inspect` reports them)
        meta = self.SPEC.to_dict()
        meta["source_modes"] = {name: dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
                                for name, counts in self.source_modes.items()}
        if self.stray_counts:
            meta["stray_counts"] = dict(self.stray_counts)
        if self.skipped:
            meta["skipped"] = list(self.skipped)
        if self.scan_skipped:
            meta["skipped_files"] = [str(item) for item in self.scan_skipped]
        self.info.description = f"{self.SPEC.name} infrared segmentation\n\n{METADATA_MARKER}\n{json.dumps(meta)}"


def _file_mode(path: str) -> str:
    """The PIL mode of an image file, from its header (what the file holds before decoding to intensity)."""
    try:
        with Image.open(path) as opened:
            return opened.mode
    except Exception:  # noqa: BLE001 - decoded a moment ago; a file replaced since is only reported as unknown
        return "unknown"


def _read_ids(path: str) -> list[str]:
    lines = read_text(path, "split file").splitlines()
    return [os.path.splitext(line.strip().split()[0])[0] for line in lines if line.strip()]


def _find(folder: str, stem: str, what: str) -> str:
    """The file `stem` + one of `_EXTS` in `folder`; a FIFO or device of that name is refused, never opened."""
    for ext in _EXTS:
        p = os.path.join(folder, stem + ext)
        if os.path.exists(p):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{what} {p} is not a regular file (a FIFO, device or folder); replace it")
            return p
    raise FileNotFoundError(f"{what} for {stem!r} not found in {folder}")


class _SplitFileBuilder(SegmentationBuilder):
    """Image and mask folders plus split files listing ids (one per line, extensions optional)."""

    IMAGE_DIR = "images"
    MASK_DIR = "masks"
    MASK_SUFFIX = ""
    SPLIT_FILES: dict[str, tuple[str, ...]] = {}

    def _split_file(self, root: str, split: str) -> Optional[str]:
        for pattern in self.SPLIT_FILES.get(split, (f"{split}.txt",)):
            hits = sorted(glob.glob(os.path.join(root, pattern)))
            if hits:
                return hits[0]
        return None

    def _splits(self, root: str) -> list[str]:
        return [s for s in self.SPLIT_FILES if self._split_file(root, s)]

    def _pairs(self, root: str, split: str) -> list[tuple[str, str]]:
        split_file = self._split_file(root, split)
        if split_file is None:
            raise FileNotFoundError(f"{type(self).__name__}: no split file for {split!r} under {root}")
        img_dir, mask_dir = os.path.join(root, self.IMAGE_DIR), os.path.join(root, self.MASK_DIR)
        pairs = []
        for i in _read_ids(split_file):
            try:
                pairs.append((_find(img_dir, i, "image"), _find(mask_dir, i + self.MASK_SUFFIX, "mask")))
            except FileNotFoundError as err:
                if not self.skip_missing:
                    raise FileNotFoundError(f"{err} (listed in {split_file}; pass skip_missing=True for subsets)") from None
                self.missing.append(f"{split}/{i}")
        return pairs


class SodaBuilder(_SplitFileBuilder):
    """SODA (21 classes): ``JPEGImages/``, ``SegmentationClassPNG/`` (ids), ``train_infrared.txt`` / ``test_infrared.txt``."""

    SPEC = SEGMENTATION_SPECS["soda"]
    IMAGE_DIR, MASK_DIR = "JPEGImages", "SegmentationClassPNG"
    SPLIT_FILES = {"train": ("train_infrared.txt",), "test": ("test_infrared.txt",)}


class MFNetBuilder(_SplitFileBuilder):
    """MFNet thermal (9 classes): 4-channel RGB-T PNGs in ``images/`` (thermal = 4th channel), ``labels/``, ``train/val/test.txt``."""

    SPEC = SEGMENTATION_SPECS["mfnet"]
    IMAGE_DIR, MASK_DIR = "images", "labels"
    SPLIT_FILES = {"train": ("train.txt",), "val": ("val.txt",), "test": ("test.txt",)}

    def _load_image(self, path: str) -> Image.Image:
        arr = np.asarray(load_infrared_image(path))
        if arr.ndim != 3 or arr.shape[2] != 4:
            raise ValueError(f"{path}: MFNet images have 4 channels (RGB + thermal), got shape {arr.shape}")
        return Image.fromarray(np.ascontiguousarray(arr[..., 3]))


class ScutSegBuilder(_SplitFileBuilder):
    """SCUT-Seg (10 classes): ``images/`` (jpg), ``labels/`` (png ids), ``train.txt`` / ``val.txt`` / ``test.txt``."""

    SPEC = SEGMENTATION_SPECS["scut-seg"]
    IMAGE_DIR, MASK_DIR = "images", "labels"
    SPLIT_FILES = {"train": ("train.txt",), "val": ("val.txt",), "test": ("test.txt",)}


class SirstBuilder(_SplitFileBuilder):
    """SIRST v1: ``images/Misc_N.png``, ``masks/Misc_N_pixels0.png`` (0/255 -> 0/1), ``train/val/test/trainval.txt``."""

    SPEC = SEGMENTATION_SPECS["sirst"]
    MASK_SUFFIX = "_pixels0"
    SPLIT_FILES = {"train": ("train.txt",), "val": ("val.txt",), "test": ("test.txt",), "trainval": ("trainval.txt",)}


class IrstdBuilder(_SplitFileBuilder):
    """NUDT-SIRST / IRSTD-1K: ``images/X.png``, ``masks/X.png`` (0/255), split files ``img_idx/{split}_*.txt``
    (or ``{split}.txt``, ``50_50/{split}.txt``). The ``irstd-1k`` spec maps the stray value 64 to 255 and counts it
    (``builder.stray_counts``, also in the info metadata)."""

    SPEC = SEGMENTATION_SPECS["nudt-sirst"]
    SPLIT_FILES = {
        "train": ("img_idx/train_*.txt", "train.txt", "50_50/train.txt", "trainval.txt"),
        "test": ("img_idx/test_*.txt", "test.txt", "50_50/test.txt"),
    }


class SplitFolderBuilder(SegmentationBuilder):
    """``images/{split}/*`` + ``masks/{split}/*`` with the same file stems (e.g. the buffalo-udder set, 0/255 -> 0/1)."""

    SPEC = SEGMENTATION_SPECS["buffalo-udder"]

    def _splits(self, root: str) -> list[str]:
        img = os.path.join(root, "images")
        if not os.path.isdir(img):
            return []
        return sorted(d for d in os.listdir(img) if os.path.isdir(os.path.join(img, d)) and not d.startswith(".")
                      and require_utf8_name(os.path.join(img, d), "split folder"))

    def _pairs(self, root: str, split: str) -> list[tuple[str, str]]:
        img_dir, mask_dir = os.path.join(root, "images", split), os.path.join(root, "masks", split)
        return [(f, _find(mask_dir, os.path.splitext(os.path.basename(f))[0], "mask")) for f in self._list_images(img_dir)]


class MassMindBuilder(SegmentationBuilder):
    """MassMIND LWIR maritime set: ``X.png`` beside ``X_label_ground-truth_semantic_colored.png`` (colour masks).

    Colours map to the 7 published classes by `MASSMIND_PALETTE`; masks containing pure red use
    `MASSMIND_ALT_PALETTE` (both conventions occur in the released masks). One split, ``train``.
    """

    SPEC = SEGMENTATION_SPECS["massmind"]
    MASK_SUFFIX = "_label_ground-truth_semantic_colored"

    def _splits(self, root: str) -> list[str]:
        return ["train"] if self._pairs(root, "train") else []

    def _pairs(self, root: str, split: str) -> list[tuple[str, str]]:
        pairs = []
        for mask in self._list_images(root, recursive=True):
            if not mask.endswith(f"{self.MASK_SUFFIX}.png"):
                continue
            stem = os.path.basename(mask)[: -len(self.MASK_SUFFIX) - 4]
            pairs.append((_find(os.path.dirname(mask), stem, "image"), mask))
        return pairs

    def _load_mask(self, path: str) -> np.ndarray:
        rgb = np.asarray(load_infrared_image(path).convert("RGB"))
        red = (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)
        palette = MASSMIND_ALT_PALETTE if red.any() else MASSMIND_PALETTE
        return colour_mask_to_ids(rgb, palette, path)


class GenericFolderBuilder(SegmentationBuilder):
    """Generic layout: ``images/`` + ``masks/`` (flat: one split ``train``; or ``{split}`` sub-folders).

    Class names come from ``classes.json`` (a list, or ``{"classes": [...], "palette": [...],
    "value_map": {"<raw>": <id>}}``) or ``classes.txt`` (one per line) in the root, else from the ``spec``
    argument. Masks hold ids (255 = ignore); colour masks (RGB) are mapped through the palette.

    Binary masks stored as 0/255: with exactly two classes and no ``value_map``, a mask whose values are a
    subset of {0, 255} and that contains 255 is read as background/foreground (255 -> 1), as the named binary
    builders (``sirst``, ``buffalo-udder``) do; 255 is then not "ignore". A mask holding 1 is read as ids (255 =
    ignore). A build in which both kinds occur stops with an error naming one file of each kind, since 255
    would mean foreground in one and ignore in the other: convert the masks to one convention, or give
    ``value_map`` in ``classes.json``.
    """

    _mask_convention: Optional[tuple[str, str]] = None  # ("0/255" | "ids", first mask that decided it)

    def _splits(self, root: str) -> list[str]:
        self._maybe_read_classes(root)
        img = os.path.join(root, "images")
        if not os.path.isdir(img):
            return []
        subs = sorted(d for d in os.listdir(img) if os.path.isdir(os.path.join(img, d)) and not d.startswith(".")
                      and require_utf8_name(os.path.join(img, d), "split folder"))
        return subs or ["train"]

    def _maybe_read_classes(self, root: str) -> None:
        jpath, tpath = os.path.join(root, "classes.json"), os.path.join(root, "classes.txt")
        if os.path.exists(jpath):
            try:
                data = json.loads(read_text(jpath, "class list"))
            except json.JSONDecodeError as err:
                raise ValueError(f"{jpath} is not valid JSON: {err}") from None
            if not isinstance(data, list) and not (isinstance(data, dict) and isinstance(data.get("classes"), list)):
                raise ValueError(f'{jpath}: expected a list of class names or {{"classes": [...], ...}}')
            names = data if isinstance(data, list) else data["classes"]
            palette = tuple(tuple(c) for c in data.get("palette", ())) if isinstance(data, dict) else ()
            value_map = {int(k): int(v) for k, v in data.get("value_map", {}).items()} if isinstance(data, dict) else {}
            self.SPEC = SegmentationSpec(os.path.basename(os.path.abspath(root)), tuple(names), palette, value_map)
        elif os.path.exists(tpath):
            names = tuple(line.strip() for line in read_text(tpath, "class list").splitlines() if line.strip())
            self.SPEC = SegmentationSpec(os.path.basename(os.path.abspath(root)), names)

    def _info(self) -> datasets.DatasetInfo:
        if self.config.data_dir and os.path.isdir(self.config.data_dir):
            self._maybe_read_classes(self.config.data_dir)
        return super()._info()

    def _pairs(self, root: str, split: str) -> list[tuple[str, str]]:
        img_dir, mask_dir = os.path.join(root, "images", split), os.path.join(root, "masks", split)
        if not os.path.isdir(img_dir):
            img_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
        return [(f, _find(mask_dir, os.path.splitext(os.path.basename(f))[0], "mask")) for f in self._list_images(img_dir)]

    def _load_mask(self, path: str) -> np.ndarray:
        im = load_infrared_image(path)
        if im.mode in ("RGB", "RGBA"):
            return colour_mask_to_ids(np.asarray(im.convert("RGB")), self.SPEC.palette, path)
        return super()._load_mask(path)

    def _map_values(self, arr: np.ndarray, path: str, value_map: Optional[dict] = None) -> np.ndarray:
        spec = self.SPEC
        if value_map is not None or spec.value_map or len(spec.class_names) != 2:
            return super()._map_values(arr, path, value_map)
        values = set(np.unique(arr).tolist())
        kind = "0/255" if 255 in values and values <= {0, 255} else "ids" if values - {0, 255} else None
        if kind is not None:
            if self._mask_convention is None:
                self._mask_convention = (kind, path)
            elif self._mask_convention[0] != kind:
                first_kind, first = self._mask_convention
                binary, ids = (path, first) if kind == "0/255" else (first, path)
                raise ValueError(
                    f"{binary}: mask holds only 0 and 255 (read as background/foreground, 255 -> 1, for the 2 classes "
                    f"{list(spec.class_names)}), but {ids} holds class ids (1 = {spec.class_names[1]}, 255 = ignore). "
                    "Store every mask one way (all 0/255, or all 0/1 with 255 = ignore), or set "
                    '"value_map" in classes.json (e.g. {"0": 0, "255": 1})'
                )
        return super()._map_values(arr, path, _BINARY if kind == "0/255" else None)


#: name -> (builder class, spec) used by `load_segmentation_dataset`.
SEGMENTATION_BUILDERS: dict[str, tuple[type, Optional[SegmentationSpec]]] = {
    "soda": (SodaBuilder, None),
    "mfnet": (MFNetBuilder, None),
    "scut-seg": (ScutSegBuilder, None),
    "sirst": (SirstBuilder, None),
    "nudt-sirst": (IrstdBuilder, SEGMENTATION_SPECS["nudt-sirst"]),
    "irstd-1k": (IrstdBuilder, SEGMENTATION_SPECS["irstd-1k"]),
    "buffalo-udder": (SplitFolderBuilder, None),
    "massmind": (MassMindBuilder, None),
    "folder": (GenericFolderBuilder, None),
}


def load_segmentation_dataset(
    name: str,
    data_dir: str,
    split: str = "train",
    cache_dir: Optional[str] = None,
    spec: Optional[SegmentationSpec] = None,
    skip_missing: bool = False,
    radiometric: Optional[str] = None,
) -> datasets.Dataset:
    """Build (or reuse from cache) one split of an infrared segmentation set.

    Args:
        name: one of ``soda``, ``mfnet``, ``scut-seg``, ``sirst``, ``nudt-sirst``, ``irstd-1k``,
            ``buffalo-udder``, ``massmind``, ``folder``.
        data_dir: the data set's root folder, in the layout of that data set.
        split: split name (``train``, ``val``, ``test``, ... as the layout provides).
        cache_dir: `datasets` cache folder (default: the HF cache).
        spec: override the class names / palette (mainly for ``folder``).
        skip_missing: skip ids listed in a split file whose files are absent (subsets of a data set)
            instead of raising `FileNotFoundError`.
        radiometric: what FLIR radiometric JPEG images give (``"raw"`` 16-bit counts, ``"celsius"`` temperatures
            stored as float TIFF, ``"preview"``; see `infrared_decoding.load_infrared_image`); needs ``flyr``.

    Raises:
        ValueError: a mask whose size differs from its image, or with values outside the classes (names the file);
            a split in which no pair could be decoded; a split the layout does not provide, or one without pairs.
        FileNotFoundError: a listed image or mask is absent (names the id and the split file).

    Returns:
        A `datasets.Dataset` with ``id``, ``image`` (single-channel) and ``label`` (class ids, 255 ignore);
        its class names, palette and ignore index are in `segmentation_metadata(ds)`, with the pairs skipped
        because a file could not be decoded under ``"skipped"`` (see `SegmentationBuilder`).
    """
    builder = _builder(name, data_dir, cache_dir=cache_dir, spec=spec, skip_missing=skip_missing,
                       radiometric=radiometric)
    splits = builder._splits(builder._root())
    if splits and split not in splits:  # named before anything is built (datasets would say only 'Unknown split')
        raise ValueError(f"the {name} data in {data_dir} has no split {split!r}; available: {', '.join(splits)}")
    try:
        builder.download_and_prepare()
    except datasets.exceptions.DatasetGenerationError as err:
        if isinstance(err.__cause__, (ValueError, FileNotFoundError, ImportError)):  # surface the error naming the file
            raise err.__cause__ from None
        raise
    if not builder.info.splits[split].num_examples:  # else 'Instruction "<split>" corresponds to no data!'
        raise ValueError(f"split {split!r} of the {name} data in {data_dir} holds no image pair (an empty split file "
                         f"or images folder{', or every listed id missing' if skip_missing else ''}); add pairs or "
                         "choose another split")
    return builder.as_dataset(split=split)


def available_splits(name: str, data_dir: str) -> list[str]:
    """The splits a data set folder provides, read from its builder's layout (nothing is built).

    Args:
        name: a name of `SEGMENTATION_BUILDERS` (as for `load_segmentation_dataset`).
        data_dir: the data set's root folder.
    """
    # a fixed `hash`: listing the splits needs no fingerprint of every file (a stat of each; argument checks call this)
    return list(_builder(name, data_dir, hash="available-splits")._splits(os.path.abspath(data_dir)))


def _builder(name: str, data_dir: str, spec: Optional[SegmentationSpec] = None, **kwargs: Any) -> SegmentationBuilder:
    """The builder registered as `name` for `data_dir` (a `ValueError` listing the names when unknown)."""
    key = name.lower().replace("_", "-")
    if key not in SEGMENTATION_BUILDERS:
        raise ValueError(f"unknown segmentation data set {name!r}; choose from {sorted(SEGMENTATION_BUILDERS)}")
    cls, default_spec = SEGMENTATION_BUILDERS[key]
    return cls(data_dir=os.path.abspath(data_dir), spec=spec or default_spec, dataset_name=key.replace("-", "_"),
               **kwargs)


def segmentation_metadata(dataset_or_name: Any) -> dict[str, Any]:
    """Class names and colours of a built segmentation data set (or of a registered name).

    Args:
        dataset_or_name: a `datasets.Dataset` from `load_segmentation_dataset`, or a name in `SEGMENTATION_SPECS`.

    Returns:
        ``{"name", "id2label" (int keys), "label2id", "palette", "ignore_index", ...}``.
    """
    if isinstance(dataset_or_name, str):
        meta = SEGMENTATION_SPECS[dataset_or_name.lower().replace("_", "-")].to_dict()
    else:
        text = getattr(getattr(dataset_or_name, "info", None), "description", "") or ""
        if METADATA_MARKER not in text:
            raise ValueError("this data set carries no segmentation metadata")
        meta = json.loads(text.split(METADATA_MARKER, 1)[1].strip())
    meta["id2label"] = {int(k): v for k, v in meta["id2label"].items()}
    meta["label2id"] = {v: k for k, v in meta["id2label"].items()}
    return meta
