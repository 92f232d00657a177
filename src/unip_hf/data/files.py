"""Finding the image files of a folder for UNIP (Zhang et al., ICLR 2025): the one walker of the package.

InfMix, the segmentation ``folder`` layouts, the attention analysis (`find_images`) and the pre-training folder scan
list their files through `scan_files`; `data_fingerprint` summarises what a folder holds for the `datasets` cache keys.
Standard library only, so that ``import unip_hf`` stays light.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

__all__ = ["scan_files", "find_images"]

#: File suffixes taken as images when a folder is scanned (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def printable_path(path: str | bytes | os.PathLike) -> str:
    """`path` as text that can always be printed, logged and written to arrow: bytes that are not UTF-8 become
    ``\\xNN`` escapes (``b'a\\xff.jpg'`` -> ``'a\\\\xff.jpg'``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes come back from the OS as lone surrogates
        return False
    return True


def require_utf8_name(path: str, what: str = "folder") -> str:
    """`path` itself, or a `ValueError` naming it (bytes escaped) when its name is not valid UTF-8 (a source or split
    folder name becomes a column value, which must be text)."""
    if not _is_utf8(path):
        raise ValueError(f"{what} name {printable_path(path)} is not valid UTF-8; rename it (e.g. `convmv -t utf-8`)")
    return path


def read_text(path: str, what: str = "file") -> str:
    """The UTF-8 text of a small control file (manifest, split list, class list); errors name the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise FileNotFoundError(f"cannot read {what} {printable_path(path)}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {printable_path(path)} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


@dataclass(frozen=True)
class SkippedFile:
    """A path left out of a scan.

    Args:
        path (`str`): the path, printable (`printable_path`).
        kind (`str`): ``name`` (not UTF-8), ``special`` (FIFO, socket, device), ``broken-link``, ``loop``
            (a folder reached again through a link), ``same-file`` (a second link or hard link to a file already
            listed) or ``unreadable`` (cannot be listed or stat-ed).
        reason (`str`): what is wrong and how to fix it.
    """

    path: str
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class FileScan:
    """Files found by one or more `add` calls, each real file once, and what was skipped, with reasons.

    Files are listed per `add` in sorted order; a file reached twice (two links, a link loop, overlapping folders
    of one scan) is listed the first time only.
    """

    files: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    _files_seen: dict = field(default_factory=dict, repr=False)
    _dirs_seen: set = field(default_factory=set, repr=False)

    def _skip(self, path: str, kind: str, reason: str) -> None:
        self.skipped.append(SkippedFile(printable_path(path), kind, reason))

    def _take(self, path: str, st: os.stat_result) -> bool:
        key = (st.st_dev, st.st_ino)
        first = self._files_seen.get(key)
        if first is not None:
            where = "listed already" if first == path else f"same file as {printable_path(first)}"
            self._skip(path, "same-file", f"{where} (each file is listed once)")
            return False
        self._files_seen[key] = path
        self.files.append(path)
        return True

    def _check(self, path: str, st: Optional[os.stat_result] = None) -> Optional[os.stat_result]:
        """The stat of an acceptable file, else `None` (and the reason recorded)."""
        if not _is_utf8(path):
            self._skip(path, "name", "file name is not valid UTF-8; rename the file (e.g. `convmv -t utf-8`)")
            return None
        if st is None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                kind = "broken-link" if os.path.islink(path) else "unreadable"
                self._skip(path, kind, "broken symbolic link" if kind == "broken-link" else "file vanished")
                return None
            except OSError as err:
                self._skip(path, "unreadable", f"cannot stat the file ({err.strerror or err})")
                return None
        if not stat.S_ISREG(st.st_mode):
            self._skip(path, "special", f"{_file_kind(st.st_mode)}, not a regular file; not opened")
            return None
        return st

    def add_file(self, path: str | os.PathLike) -> bool:
        """Add one named file (any extension). Returns whether it was listed."""
        path = os.fspath(path)
        st = self._check(path)
        return st is not None and self._take(path, st)

    def add(self, root: str | os.PathLike, extensions: Optional[Sequence[str]] = IMAGE_EXTENSIONS,
            recursive: bool = True) -> int:
        """Add the files under folder `root` (or `root` itself when it is a file).

        Symbolic links are followed, but a folder already visited (a loop such as ``loop -> .``) is not entered
        again and a file already listed is not listed again. Names starting with ``.`` are ignored (hidden files,
        ``.ipynb_checkpoints``); names that are not UTF-8, broken links and non-regular files (FIFOs, sockets,
        devices) are skipped and recorded in `skipped`, never opened.

        Args:
            root: a folder or a file.
            extensions: file suffixes to keep (case-insensitive); `None` keeps every file.
            recursive: descend into sub-folders.

        Returns:
            How many files were added.
        """
        root = os.fspath(root)
        if not os.path.isdir(root):
            return int(self.add_file(root))
        suffixes = tuple(e.lower() for e in extensions) if extensions is not None else None
        st = os.stat(root)
        self._dirs_seen.add((st.st_dev, st.st_ino))
        found: list[tuple[str, os.stat_result]] = []
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as err:
                self._skip(folder, "unreadable", f"folder cannot be listed ({err.strerror or err})")
                continue
            subfolders = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = entry.path
                try:
                    est = os.stat(path)
                except OSError:
                    est = None
                if est is not None and stat.S_ISDIR(est.st_mode):
                    if not recursive:
                        continue
                    key = (est.st_dev, est.st_ino)
                    if key in self._dirs_seen:
                        self._skip(path, "loop", "folder already visited (symbolic link loop or second link); "
                                                 "not entered again")
                    elif not _is_utf8(path):
                        self._skip(path, "name", "folder name is not valid UTF-8; rename it")
                    else:
                        self._dirs_seen.add(key)
                        subfolders.append(path)
                    continue
                if suffixes is not None and not entry.name.lower().endswith(suffixes):
                    continue
                if est is None:
                    self._check(path)  # records why (broken link, permission)
                    continue
                est = self._check(path, est)
                if est is not None:
                    found.append((path, est))
            stack.extend(reversed(subfolders))
        found.sort(key=lambda item: item[0])
        return sum(self._take(path, est) for path, est in found)

    def summary(self) -> str:
        """``"3 skipped (2 name, 1 special)"``, or ``""`` when nothing was skipped."""
        if not self.skipped:
            return ""
        kinds = Counter(s.kind for s in self.skipped)
        return f"{len(self.skipped)} skipped ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})"


def scan_files(roots: str | os.PathLike | Iterable[str | os.PathLike],
               extensions: Optional[Sequence[str]] = IMAGE_EXTENSIONS, recursive: bool = True) -> FileScan:
    """Scan folders (and named files) for image files; see `FileScan.add`.

    Args:
        roots: one path or several.
        extensions: suffixes kept (case-insensitive); `None` keeps every file.
        recursive: descend into sub-folders.

    Returns:
        A `FileScan` with ``files`` (each real file once) and ``skipped`` (`SkippedFile` items with reasons).
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    scan = FileScan()
    for root in roots:
        scan.add(root, extensions, recursive)
    return scan


def data_fingerprint(paths: Iterable[str], root: Optional[str] = None, extra: str = "") -> str:
    """SHA-256 (hex, 16 characters) of what `paths` hold now: their names (relative to `root`), sizes and
    modification times (ns). Used in the `datasets` cache keys so that a changed, added or deleted file rebuilds
    the data set.

    Args:
        paths: files (missing ones count as missing).
        root: names are taken relative to this folder (so that a moved copy of a folder keeps its key).
        extra: any text that also selects the build (class names, options, format version).
    """
    h = hashlib.sha256(extra.encode("utf-8"))
    for path in sorted(paths):
        name = os.path.relpath(path, root) if root else path
        try:
            st = os.stat(path)
            h.update(f"\0{printable_path(name)}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8"))
        except OSError:
            h.update(f"\0{printable_path(name)}\0missing".encode("utf-8"))
    return h.hexdigest()[:16]


def find_images(sources: str | os.PathLike | Sequence[str | os.PathLike], skipped: list[str] | None = None) -> list[Path]:
    """Image files named by `sources`: files, or folders searched recursively (following symbolic links).

    Files are taken as given (their readability is checked later); folders contribute files with an image extension,
    sorted, through the package's walker (`unip_hf.data.files`): each real file once, link loops not followed, names that
    are not UTF-8, broken links and non-regular files (FIFOs) skipped, never opened.

    Args:
        sources: A path or a list of paths.
        skipped: Optional list that receives one ``"path: reason"`` line per skipped entry.

    Raises:
        FileNotFoundError: a named path does not exist (a broken link is skipped instead).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    scan = FileScan()
    for src in sources:
        if not os.path.lexists(src):
            raise FileNotFoundError(f"no such image file or folder: {src}")
        scan.add(src, IMAGE_EXTENSIONS)
    for item in scan.skipped:
        logger.warning("skipping %s", item)
        if skipped is not None:
            skipped.append(str(item))
    return [Path(f) for f in scan.files]
