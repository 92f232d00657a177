"""InfMix, the UNIP pre-training mix (Zhang et al., "UNIP", ICLR 2025), as a `datasets` builder.

Many infrared sources plus grayscale-converted RGB images, with configurable composition. Files are found by
the package's one walker (`unip_hf.data.files`) and decoded by its one decoding path
(`infrared_decoding.load_infrared_image` / `to_intensity_image`: EXIF orientation, pixel limit, NaN refused);
PyYAML, a dependency of `datasets` itself, is imported lazily for YAML manifests.

Usage (datasets 5 refuses loading scripts, so use the class directly)::

    builder = InfMix(config_name="full", data_dir="/data/infmix_root", cache_dir="/tmp/hf")
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")
    print(builder.report["sources"])
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import io
import json
import logging
import os
from typing import Any, Iterator, Optional

import datasets
import yaml

from unip_hf.data.files import IMAGE_EXTENSIONS, FileScan, data_fingerprint, read_text, require_utf8_name
from unip_hf.models.infrared_decoding import load_infrared_image, to_intensity_image

__all__ = ["InfMix", "format_report_table"]

logger = logging.getLogger(__name__)

#: Bumped when the rows built from the same files change, so that older caches are not reused.
_CACHE_FORMAT = "infmix-2"
#: Line that precedes the JSON build report inside ``DatasetInfo.description``.
REPORT_MARKER = "InfMix build report (JSON):"
MODALITIES: tuple[str, ...] = ("infrared", "rgb")

_DESCRIPTION = (
    "InfMix: the UNIP pre-training mix of infrared images and grayscale-converted RGB images "
    "(Zhang et al., ICLR 2025). Each row is one image stored as bytes with its source, modality, original "
    "mode and size and the SHA-256 of the original file; exact duplicates across sources are dropped."
)


@dataclasses.dataclass
class InfMixConfig(datasets.BuilderConfig):
    """Composition of an InfMix build.

    Args:
        grayscale (`bool`, defaults to `True`): convert RGB-modality images to single-channel luma
            (ITU-R 601, PIL ``convert("L")``) and store them as PNG, as in the paper. Infrared images
            are always stored unchanged.
        modalities (`tuple[str, ...]`, defaults to `("infrared", "rgb")`): modalities to include.
        include_sources (`tuple[str, ...]`, *optional*): keep only these sources; a name matches
            ``"<source>"`` (any modality) or ``"<modality>/<source>"``; shell wildcards allowed.
        exclude_sources (`tuple[str, ...]`, *optional*): drop these sources (same matching).
    """

    grayscale: bool = True
    modalities: tuple = MODALITIES
    include_sources: Optional[tuple] = None
    exclude_sources: Optional[tuple] = None


def derive_config_name(
    base: str, include_sources: Optional[list[str]] = None, exclude_sources: Optional[list[str]] = None
) -> str:
    """Config name for a source subset, e.g. ``full.include-hit-uav+msrs`` or ``full.exclude-llvip``.

    Args:
        base: name of the base configuration (``full``, ``no_grayscale``, ``infrared_only``).
        include_sources: sources kept.
        exclude_sources: sources dropped.

    Returns:
        The derived name (``/`` in ``modality/source`` becomes ``~``); ``base`` when both are empty.
    """
    name = base
    if include_sources:
        name += ".include-" + "+".join(sorted(s.replace("/", "~") for s in include_sources))
    if exclude_sources:
        name += ".exclude-" + "+".join(sorted(s.replace("/", "~") for s in exclude_sources))
    return name


def _matches(source: str, modality: str, patterns: Optional[tuple]) -> bool:
    return any(fnmatch.fnmatch(source, p) or fnmatch.fnmatch(f"{modality}/{source}", p) for p in patterns or ())


def _walk_images(root: str, scan: Optional[FileScan] = None) -> list[str]:
    """Image files under `root` (sorted, each real file once); what was skipped goes to ``scan.skipped``."""
    scan = scan if scan is not None else FileScan()
    start = len(scan.files)
    scan.add(root, IMAGE_EXTENSIONS)
    return scan.files[start:]


def _glob_root(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard."""
    parts, kept = pattern.split(os.sep), []
    for part in parts:
        if glob.has_magic(part):
            break
        kept.append(part)
    return os.sep.join(kept) or os.sep


def _load_manifest(path: str) -> dict:
    """The parsed manifest; a syntax error is a `ValueError` naming the file, the line and the problem."""
    text = read_text(path, "manifest")
    if path.lower().endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"manifest {path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; "
                             "fix that line (JSON allows no trailing commas or comments)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"manifest {path} is not valid YAML: {problem}{where}; fix that line") from None


def _sampling_value(manifest: str, source: str, entry: dict, key: str, low: int, meaning: str) -> Optional[int]:
    """A source's ``every`` / ``max`` as an integer >= `low` (`None` when absent), else a `ValueError` naming it."""
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"manifest {manifest}: source {source!r} has {key}: {value!r}; {key} must be an integer "
                         f">= {low} ({meaning}), or left out")
    return value


def discover_sources(root_or_manifest: str) -> list[dict[str, Any]]:
    """List the sources of an InfMix root folder or manifest, with their files.

    A root folder holds ``infrared/<source>/**`` and ``rgb/<source>/**`` (any depth, symbolic links
    followed, jpg/jpeg/png/bmp/tif). A manifest (``.yaml``/``.yml``/``.json``) holds::

        sources:
          - name: hit-uav              # required
            modality: infrared         # infrared | rgb
            paths: [hit-uav/, "more/*.png"]  # folders (recursive) or globs, relative to the manifest
            every: 5                   # optional: every k-th file of the sorted list (an integer >= 1)
            max: 1000                  # optional: at most n files (after `every`; an integer >= 0)

    A manifest reads what it names: relative paths may leave its folder (``../other``) and absolute paths are
    allowed, so build only manifests you trust. A source's ``root`` is the deepest folder holding all its paths
    (wildcards excluded), so the ``file`` column never starts with ``..``. File names that are not UTF-8,
    non-regular files (FIFOs, devices), broken links and folders reached again through a link loop are skipped
    and listed in the source's ``skipped``; each real file is listed once.

    Args:
        root_or_manifest: folder or manifest file.

    Returns:
        One dict per source: ``name``, ``modality``, ``root`` (for relative file names), ``files``
        (sorted absolute paths after sampling) and ``skipped`` (`unip_hf.data.files.SkippedFile` items), ordered by
        modality then name.

    Raises:
        ValueError: naming the manifest, for invalid YAML/JSON (with the line), a source without ``name`` or
            ``paths``, an unknown modality, a ``every`` that is not an integer >= 1 or a ``max`` not >= 0, and a path
            that matches no file (a typo never shrinks the mix silently).
    """
    if not os.path.exists(root_or_manifest):
        raise FileNotFoundError(f"InfMix root or manifest not found: {root_or_manifest}")
    sources: list[dict[str, Any]] = []
    if os.path.isdir(root_or_manifest):
        for modality in MODALITIES:
            mdir = os.path.join(root_or_manifest, modality)
            if not os.path.isdir(mdir):
                continue
            for name in sorted(os.listdir(mdir)):
                sdir = os.path.join(mdir, name)
                if os.path.isdir(sdir) and not name.startswith("."):
                    require_utf8_name(sdir, "source folder")  # the name becomes the `source` column
                    scan = FileScan()
                    files = _walk_images(sdir, scan)
                    sources.append({"name": name, "modality": modality, "root": sdir, "files": files,
                                    "skipped": scan.skipped})
        if not sources:
            raise ValueError(
                f"{root_or_manifest} has no sources: expected infrared/<source>/ or rgb/<source>/ sub-folders"
            )
        return sources
    manifest = _load_manifest(root_or_manifest) or {}
    base = os.path.dirname(os.path.abspath(root_or_manifest))
    entries = manifest.get("sources") if isinstance(manifest, dict) else None
    if not entries or not isinstance(entries, list):
        raise ValueError(f"manifest {root_or_manifest} has no 'sources' list")
    seen = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"manifest {root_or_manifest}: source #{i} is {entry!r}, not a mapping with 'name' and "
                             "'paths'")
        name, modality = entry.get("name"), entry.get("modality", "infrared")
        if not name:
            raise ValueError(f"manifest {root_or_manifest}: source #{i} has no 'name'")
        if modality not in MODALITIES:
            raise ValueError(f"manifest {root_or_manifest}: source {name!r} has modality {modality!r}, not one of {MODALITIES}")
        if (modality, name) in seen:
            raise ValueError(f"manifest {root_or_manifest}: source {modality}/{name} is listed twice")
        seen.add((modality, name))
        paths = entry.get("paths", entry.get("path"))
        paths = [paths] if isinstance(paths, str) else list(paths or [])
        if not paths:
            raise ValueError(f"manifest {root_or_manifest}: source {name!r} has no 'paths'")
        every = _sampling_value(root_or_manifest, name, entry, "every", 1, "1 keeps every file, k every k-th")
        limit = _sampling_value(root_or_manifest, name, entry, "max", 0, "the most files kept after `every`")
        scan, roots = FileScan(), []
        for given in paths:
            p = os.path.expanduser(given)
            p = os.path.abspath(p if os.path.isabs(p) else os.path.join(base, p))
            before = (len(scan.files), len(scan.skipped))
            if os.path.isdir(p):
                roots.append(p)
                _walk_images(p, scan)
            else:
                roots.append(_glob_root(p))
                for f in sorted(glob.glob(p, recursive=True)):
                    if not os.path.isdir(f):
                        scan.add_file(os.path.abspath(f))
            if (len(scan.files), len(scan.skipped)) == before:  # a typo in a path never shrinks a mix silently
                what = "an image folder without images" if os.path.isdir(p) else "matches no file"
                raise ValueError(f"manifest {root_or_manifest}: source {name!r} path {given!r} ({p}) {what}; "
                                 "fix the path (relative paths start at the manifest's folder) or remove it")
        files = sorted(scan.files)[:: every or 1]
        if limit is not None:
            files = files[:limit]
        root = os.path.commonpath(roots) if roots else base
        root = root if os.path.isdir(root) else os.path.dirname(root)
        sources.append({"name": name, "modality": modality, "root": root, "files": files, "skipped": scan.skipped})
    sources.sort(key=lambda s: (MODALITIES.index(s["modality"]), s["name"]))
    return sources


def format_report_table(report: dict) -> str:
    """Per-source count table (plain text) of a build report.

    Args:
        report: the dict in ``InfMix.report`` or returned by `read_report`.

    Returns:
        A fixed-width table with columns source, modality, files, kept, duplicates, unreadable and a total row.
    """
    rows = report.get("sources", [])
    header = ("source", "modality", "files", "kept", "duplicates", "unreadable")
    lines = [f"{header[0]:<24}{header[1]:<10}{header[2]:>8}{header[3]:>8}{header[4]:>12}{header[5]:>12}"]
    tot = [0, 0, 0, 0]
    for r in rows:
        vals = (r["files"], r["kept"], r["duplicates"], r["unreadable"])
        tot = [a + b for a, b in zip(tot, vals)]
        lines.append(f"{r['source']:<24}{r['modality']:<10}{vals[0]:>8}{vals[1]:>8}{vals[2]:>12}{vals[3]:>12}")
    lines.append(f"{'total':<24}{'':<10}{tot[0]:>8}{tot[1]:>8}{tot[2]:>12}{tot[3]:>12}")
    return "\n".join(lines)


def read_report(info_or_dataset: Any) -> Optional[dict]:
    """Recover the build report stored in a data set's info (``None`` when there is none).

    Args:
        info_or_dataset: a `datasets.DatasetInfo`, `Dataset`, `IterableDataset` or a description string.
    """
    text = info_or_dataset
    if not isinstance(text, str):
        info = getattr(info_or_dataset, "info", info_or_dataset)
        text = getattr(info, "description", "") or ""
    if REPORT_MARKER not in text:
        return None
    return json.loads(text.split(REPORT_MARKER, 1)[1].strip())


def _data_hash(data_dir: str, sources: list[dict[str, Any]]) -> str:
    """Fingerprint of an InfMix root or manifest: every discovered file and the manifest itself."""
    files = [f for s in sources for f in s["files"]] + ([] if os.path.isdir(data_dir) else [os.path.abspath(data_dir)])
    skipped = sorted(item.path for s in sources for item in s.get("skipped", ()))
    return data_fingerprint(files, extra=_CACHE_FORMAT + "\0".join(skipped))


class InfMix(datasets.GeneratorBasedBuilder):
    """InfMix builder over a root folder of sources or a manifest (see `discover_sources`).

    Configurations: ``full`` (all sources, RGB converted to grayscale, as in the paper),
    ``no_grayscale`` (RGB kept in colour) and ``infrared_only``. Any source subset through
    ``include_sources=[...]`` / ``exclude_sources=[...]`` gets a derived name (`derive_config_name`).

    Example::

        b = InfMix(config_name="full", exclude_sources=["llvip"], data_dir=root, cache_dir=tmp)
        b.download_and_prepare(); ds = b.as_dataset("train")   # b.config.name == "full.exclude-llvip"

    Features: ``image`` (bytes), ``source``, ``modality``, ``file`` (path relative to the source folder),
    ``mode`` (of the original file), ``width``, ``height`` (as decoded, EXIF orientation applied) and
    ``content_hash`` (SHA-256 of the original file bytes). Files that the package cannot decode (corrupt, truncated,
    over `MAX_IMAGE_PIXELS`, NaN/inf floats, 1-bit images) are skipped and listed in ``report["unreadable"]``.
    Names that are not UTF-8, non-regular files, broken links and link loops are skipped when scanning and listed
    in ``report["skipped"]``.

    The cache key includes a fingerprint of the discovered files (names, sizes, modification times) and of the
    manifest, so a changed, added or deleted file rebuilds the data set instead of returning the old rows.
    """

    VERSION = datasets.Version("1.1.0")  # 1.1: decoded by image_processing_unip (EXIF before grayscale, NaN refused)
    BUILDER_CONFIG_CLASS = InfMixConfig
    BUILDER_CONFIGS = [
        InfMixConfig(name="full", grayscale=True, description="all sources, RGB converted to grayscale (paper)"),
        InfMixConfig(name="no_grayscale", grayscale=False, description="all sources, RGB kept in colour"),
        InfMixConfig(name="infrared_only", grayscale=True, modalities=("infrared",), description="infrared sources only"),
    ]
    DEFAULT_CONFIG_NAME = "full"
    DEFAULT_WRITER_BATCH_SIZE = 100

    def __init__(self, *args, include_sources=None, exclude_sources=None, **kwargs):
        if include_sources or exclude_sources:
            base_name = kwargs.pop("config_name", None) or (args[1] if len(args) > 1 else None) or "full"
            base = {c.name: c for c in self.BUILDER_CONFIGS}.get(base_name)
            if base is None:
                raise ValueError(f"unknown InfMix configuration {base_name!r}; choose from {[c.name for c in self.BUILDER_CONFIGS]}")
            include = tuple(sorted(include_sources)) if include_sources else None
            exclude = tuple(sorted(exclude_sources)) if exclude_sources else None
            kwargs.update(
                name=derive_config_name(base_name, include, exclude),
                grayscale=base.grayscale,
                modalities=base.modalities,
                include_sources=include,
                exclude_sources=exclude,
            )
        if kwargs.get("hash") is None and kwargs.get("data_dir") and os.path.exists(kwargs["data_dir"]):
            try:
                self._discovered = (kwargs["data_dir"], discover_sources(kwargs["data_dir"]))
                kwargs["hash"] = _data_hash(kwargs["data_dir"], self._discovered[1])
            except ValueError:  # no sources / bad manifest: reported with the file name by the build
                pass
        super().__init__(*args, **kwargs)
        self.report: dict[str, Any] = {}

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=datasets.Features(
                {
                    "image": datasets.Image(),
                    "source": datasets.Value("string"),
                    "modality": datasets.Value("string"),
                    "file": datasets.Value("string"),
                    "mode": datasets.Value("string"),
                    "width": datasets.Value("int32"),
                    "height": datasets.Value("int32"),
                    "content_hash": datasets.Value("string"),
                }
            ),
            homepage="https://github.com/casiatao/UNIP",
            citation="@inproceedings{lu2025unip, title={UNIP: Rethinking Pre-trained Attention Patterns for "
            "Infrared Semantic Segmentation}, booktitle={ICLR}, year={2025}}",
        )

    def _selected_sources(self) -> list[dict[str, Any]]:
        data_dir = self.config.data_dir
        if not data_dir:
            raise ValueError("InfMix needs data_dir=<root folder or manifest file>")
        cfg = self.config
        chosen = []
        found = getattr(self, "_discovered", None)  # the scan whose fingerprint keys the cache
        for s in found[1] if found and found[0] == data_dir else discover_sources(data_dir):
            if s["modality"] not in cfg.modalities:
                continue
            if cfg.include_sources and not _matches(s["name"], s["modality"], cfg.include_sources):
                continue
            if cfg.exclude_sources and _matches(s["name"], s["modality"], cfg.exclude_sources):
                continue
            chosen.append(s)
        if not chosen:
            raise ValueError(f"configuration {cfg.name!r} selects no source under {data_dir}")
        return chosen

    def _split_generators(self, dl_manager):
        # The sources are checked here, outside the generation that `datasets` wraps in DatasetGenerationError, so a
        # bad manifest or an empty selection reaches the caller as the ValueError naming the file.
        chosen = self._selected_sources()
        if not any(s["files"] for s in chosen):
            names = ", ".join(f"{s['modality']}/{s['name']}" for s in chosen)
            raise ValueError(f"configuration {self.config.name!r} under {self.config.data_dir} has no image file in "
                             f"its sources ({names}); add images or choose other sources")
        # No lists in gen_kwargs: the sources must be read by one generator for cross-source de-duplication.
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"split": "train"})]

    def download_and_prepare(self, *args, **kwargs):
        """`datasets.DatasetBuilder.download_and_prepare`, with the build's own errors (a `ValueError` naming the
        manifest, the sources or the unreadable files) raised as such rather than inside `DatasetGenerationError`."""
        try:
            return super().download_and_prepare(*args, **kwargs)
        except datasets.exceptions.DatasetGenerationError as err:
            if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
                raise err.__cause__ from None
            raise

    def _encode(self, data: bytes, modality: str, path: str = "<image bytes>") -> tuple[bytes, str, tuple[int, int]]:
        # full decode with the training-time checks: unreadable, truncated, too large or non-finite files raise here
        image = load_infrared_image(data, name=path)
        intensity = to_intensity_image(image, name=path)
        mode, size = image.mode, image.size
        if modality == "rgb" and self.config.grayscale and mode not in ("L", "I;16", "I;16B", "I", "F"):
            buf = io.BytesIO()
            intensity.save(buf, format="PNG", compress_level=1)  # luma of the upright image
            return buf.getvalue(), mode, size
        return data, mode, size

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        sources = self._selected_sources()
        seen: dict[bytes, str] = {}
        rows, unreadable, skipped = [], [], []
        for s in sources:
            for item in s.get("skipped", ()):
                skipped.append({"source": f"{s['modality']}/{s['name']}", "file": item.path, "kind": item.kind,
                                "reason": item.reason})
                logger.warning("InfMix: skipping %s (%s)", item.path, item.reason)
            row = {"source": s["name"], "modality": s["modality"], "files": len(s["files"]), "kept": 0, "duplicates": 0, "unreadable": 0}
            rows.append(row)
            for path in s["files"]:
                rel = os.path.relpath(path, s["root"])
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                    digest = hashlib.sha256(data).digest()
                    if digest in seen:
                        row["duplicates"] += 1
                        logger.debug("duplicate %s (same bytes as %s)", path, seen[digest])
                        continue
                    payload, mode, (w, h) = self._encode(data, s["modality"], path)
                except Exception as err:  # noqa: BLE001 - any decode failure is reported, never fatal
                    row["unreadable"] += 1
                    unreadable.append({"file": path, "error": f"{type(err).__name__}: {err}"})
                    logger.warning("InfMix: skipping unreadable %s (%s: %s)", path, type(err).__name__, err)
                    continue
                seen[digest] = f"{s['modality']}/{s['name']}/{rel}"
                row["kept"] += 1
                yield seen[digest], {
                    "image": {"bytes": payload, "path": None},
                    "source": s["name"],
                    "modality": s["modality"],
                    "file": rel,
                    "mode": mode,
                    "width": w,
                    "height": h,
                    "content_hash": digest.hex(),
                }
        self.report = {
            "config": self.config.name,
            "grayscale": bool(self.config.grayscale),
            "sources": rows,
            "total_kept": sum(r["kept"] for r in rows),
            "total_duplicates": sum(r["duplicates"] for r in rows),
            "unreadable": unreadable,
            "skipped": skipped,
        }
        logger.info("InfMix %s per-source counts:\n%s", self.config.name, format_report_table(self.report))
        if not self.report["total_kept"]:  # else `datasets` says only 'Instruction "train" corresponds to no data!'
            reasons = "; ".join(f"{item['file']}: {item['error']}" for item in unreadable[:3])
            raise ValueError(
                f"configuration {self.config.name!r} under {self.config.data_dir} kept no image: "
                f"{sum(r['files'] for r in rows)} file(s), {len(unreadable)} unreadable, "
                f"{self.report['total_duplicates']} duplicate(s)" + (f" ({reasons})" if reasons else ""))
        self.info.description = f"{_DESCRIPTION}\n\n{REPORT_MARKER}\n{json.dumps(self.report, indent=1)}"

    def load_report(self) -> Optional[dict]:
        """The build report: from this run, else from the info of the prepared data set."""
        return self.report or read_report(self.info)
