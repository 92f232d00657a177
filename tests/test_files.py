"""Tests of the one image-file walker of unip_hf (UNIP, Zhang et al., ICLR 2025) and of its users: file names
that are not UTF-8, symbolic-link loops, FIFOs, stale `datasets` caches and manifests that leave their folder."""

import argparse
import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from unip_hf.data.files import data_fingerprint, printable_path, scan_files

BAD_NAME = b"a\xff.png"


def _png(path, seed=0, size=(8, 8)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)).save(path, format="PNG")


def _bad_name_file(folder, seed=99):
    """A valid PNG whose file name holds the byte 0xff (not UTF-8), created through a bytes path."""
    path = os.path.join(os.fsencode(str(folder)), BAD_NAME)
    Image.fromarray(np.full((8, 8), seed, np.uint8)).save(open(path, "wb"), format="PNG")
    return path


@pytest.fixture
def messy(tmp_path):
    """Two real images, a non-UTF-8 name, a FIFO named .png, a broken link, a loop and a second link."""
    src = tmp_path / "src"
    _png(str(src / "x.png"), 1)
    _png(str(src / "sub" / "y.png"), 2)
    _bad_name_file(src)
    os.mkfifo(src / "pipe.png")
    os.symlink(src / "gone.png", src / "dangling.png")
    os.symlink(".", src / "loop")  # loop -> .
    os.symlink(src / "x.png", src / "again.png")  # a second name of x.png
    return src


def _in_thread(fn, timeout=60):
    """Run fn in a thread so that a hang (a FIFO opened for reading) fails the test instead of blocking it."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "scan hung (a FIFO was opened?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_scan_skips_names_fifos_links_and_loops(messy):
    scan = _in_thread(lambda: scan_files(str(messy)))
    # each real file once (again.png sorts before its target x.png), the loop not followed
    assert [os.path.relpath(f, messy) for f in scan.files] == ["again.png", "sub/y.png"]
    kinds = {s.kind for s in scan.skipped}
    assert kinds == {"name", "special", "broken-link", "loop", "same-file"}
    bad = [s for s in scan.skipped if s.kind == "name"][0]
    assert bad.path.endswith("a\\xff.png") and "UTF-8" in bad.reason
    bad.path.encode("utf-8")  # printable: no lone surrogates left
    assert "FIFO" in [s for s in scan.skipped if s.kind == "special"][0].reason
    assert scan.summary().startswith("5 skipped")


def test_loop_counts_each_real_file_once(tmp_path):
    src = tmp_path / "s"
    for i in range(5):
        _png(str(src / "d" / f"{i}.png"), i)
    os.symlink("..", src / "d" / "up")  # d/up -> s: a loop two levels deep
    os.symlink(src / "d", src / "alias")  # a second name of d
    scan = scan_files(str(src))
    assert len(scan.files) == 5
    assert printable_path(b"a\xff") == "a\\xff"


def test_fingerprint_changes_with_content(tmp_path):
    _png(str(tmp_path / "a.png"), 1)
    before = data_fingerprint([str(tmp_path / "a.png")], str(tmp_path))
    st = os.stat(tmp_path / "a.png")
    _png(str(tmp_path / "a.png"), 2)
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert data_fingerprint([str(tmp_path / "a.png")], str(tmp_path)) != before


# ------------------------------------------------------------------------------------------------ InfMix
def _infmix(data_dir, cache):
    from unip_hf.data import InfMix

    b = InfMix(config_name="full", data_dir=str(data_dir), cache_dir=str(cache))
    b.download_and_prepare()
    return b, b.as_dataset(split="train")


def test_infmix_skips_bad_names_fifo_and_loop(messy, tmp_path):
    root = tmp_path / "root"
    os.makedirs(root / "infrared")
    os.symlink(messy, root / "infrared" / "messy")
    b, ds = _in_thread(lambda: _infmix(root, tmp_path / "cache"))
    assert len(ds) == 2  # x.png (or its second name) and sub/y.png; no loop copies
    assert all(not f.startswith("..") for f in ds["file"])
    skipped = b.report["skipped"]
    assert {s["kind"] for s in skipped} == {"name", "special", "broken-link", "loop", "same-file"}
    assert any(s["file"].endswith("a\\xff.png") for s in skipped)


def test_infmix_cli_names_bad_file(messy, tmp_path, capsys):
    from unip_hf.cli.commands import data as commands

    root = tmp_path / "root"
    os.makedirs(root / "infrared")
    os.symlink(messy, root / "infrared" / "messy")
    parser = argparse.ArgumentParser(prog="unip")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["infmix", "build", str(root), "--output", str(tmp_path / "out")])
    assert _in_thread(lambda: args.func(args)) == 0
    text = capsys.readouterr().out
    assert "skipped while scanning (not opened): 5" in text and "a\\xff.png" in text and "FIFO" in text


def test_infmix_cache_rebuilds_after_data_change(tmp_path):
    root = tmp_path / "root"
    for i in range(3):
        _png(str(root / "infrared" / "s" / f"{i}.png"), i)
    _, ds = _infmix(root, tmp_path / "cache")
    assert len(ds) == 3
    os.remove(root / "infrared" / "s" / "2.png")
    _, ds = _infmix(root, tmp_path / "cache")
    assert len(ds) == 2  # not the cached 3 rows
    _png(str(root / "infrared" / "s" / "0.png"), 7, size=(8, 12))
    _, ds = _infmix(root, tmp_path / "cache")
    assert sorted(ex["width"] for ex in ds) == [8, 12]  # the rewritten image, not the cached one


def test_manifest_file_column_relative_to_source_root(tmp_path):
    from unip_hf.data.infmix import discover_sources

    _png(str(tmp_path / "secret" / "s.png"), 1)
    _png(str(tmp_path / "secret" / "deep" / "t.png"), 2)
    _png(str(tmp_path / "m" / "own" / "o.png"), 3)
    manifest = tmp_path / "m" / "mix.json"
    manifest.write_text(json.dumps({"sources": [
        {"name": "outside", "paths": ["../secret/*.png", "../secret/deep"]},
        {"name": "both", "paths": ["own", "../secret/deep"]},
    ]}))
    srcs = {s["name"]: s for s in discover_sources(str(manifest))}
    assert srcs["outside"]["root"] == str(tmp_path / "secret")
    assert srcs["both"]["root"] == str(tmp_path)
    _, ds = _infmix(manifest, tmp_path / "cache")
    files = dict(zip(ds["file"], ds["source"]))
    # "both" (sorted first) keeps secret/deep/t.png; the same bytes in "outside" are a duplicate
    assert files == {"m/own/o.png": "both", "secret/deep/t.png": "both", "s.png": "outside"}


# ------------------------------------------------------------------------------------------------ segmentation
def test_segmentation_folder_skips_bad_names_and_fifos(tmp_path):
    from unip_hf.data import load_segmentation_dataset
    from unip_hf.data.segmentation import GenericFolderBuilder

    root = tmp_path / "f"
    os.makedirs(root / "masks")
    for i in range(2):
        _png(str(root / "images" / f"{i}.png"), i)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / f"{i}.png")
    _bad_name_file(root / "images")
    _bad_name_file(root / "masks")
    os.mkfifo(root / "images" / "pipe.png")
    ds = _in_thread(lambda: load_segmentation_dataset("folder", str(root), cache_dir=str(tmp_path / "c")))
    assert sorted(ds["id"]) == ["0", "1"]
    b = GenericFolderBuilder(data_dir=str(root), cache_dir=str(tmp_path / "c2"))
    _in_thread(b.download_and_prepare)
    assert sorted(s.kind for s in b.scan_skipped) == ["name", "special"]


def test_segmentation_fifo_mask_refused_by_name(tmp_path):
    from unip_hf.data import load_segmentation_dataset

    root = tmp_path / "f"
    _png(str(root / "images" / "0.png"), 0)
    os.makedirs(root / "masks")
    os.mkfifo(root / "masks" / "0.png")
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        _in_thread(lambda: load_segmentation_dataset("folder", str(root), cache_dir=str(tmp_path / "c")))


# ------------------------------------------------------------------------------------------------ other users
def test_pretraining_sources_skip_bad_names_fifos_and_loops(messy):
    from unip_hf.data.pretraining_data import load_training_sources, scan_image_folder

    sources, skipped, described = _in_thread(lambda: load_training_sources([str(messy), str(messy / "sub")]))
    assert len(sources) == 2  # x.png once (through again.png), sub/y.png once although named twice
    assert skipped == 3 and "3 unreadable skipped" in described[0]  # bad name, FIFO, broken link
    files, bad = _in_thread(lambda: scan_image_folder(str(messy), verify=False))
    assert len(files) == 2 and bad == 3
    with pytest.raises(ValueError, match="neither a folder nor a regular file"):
        load_training_sources([str(messy / "pipe.png")])


def test_attention_find_images_skips_and_names(messy):
    from unip_hf.data.files import find_images

    skipped = []
    found = _in_thread(lambda: find_images(messy, skipped=skipped))
    assert [p.name for p in found] == ["again.png", "y.png"]
    assert len(skipped) == 5 and any("a\\xff.png" in s for s in skipped) and any("FIFO" in s for s in skipped)
    assert find_images(messy / "dangling.png") == []  # a named broken link is skipped, not a crash


def test_data_inspect_reports_scan_skips(tmp_path, capsys):
    from unip_hf.cli.commands import data as commands

    root = tmp_path / "f"
    os.makedirs(root / "masks")
    _png(str(root / "images" / "0.png"), 0)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "0.png")
    _bad_name_file(root / "images")
    parser = argparse.ArgumentParser(prog="unip")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "inspect", "folder", "--data_dir", str(root), "--out", str(tmp_path / "o"),
                              "--cache-dir", str(tmp_path / "c")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "skipped while scanning (not opened): 1" in text and "a\\xff.png" in text
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["skipped_files"][0].endswith("rename the file (e.g. `convmv -t utf-8`)")


def test_bad_folder_names_and_control_files_are_named(tmp_path):
    from unip_hf.data import load_segmentation_dataset
    from unip_hf.data.infmix import discover_sources
    from unip_hf.data.pretraining_data import contains_parquet

    root = tmp_path / "root"
    _png(str(root / "infrared" / "ok" / "a.png"))
    os.makedirs(os.path.join(os.fsencode(str(root / "infrared")), b"src\xff"))
    with pytest.raises(ValueError, match=r"source folder name .*src\\xff is not valid UTF-8"):
        discover_sources(str(root))
    manifest = tmp_path / "m.yaml"
    manifest.write_bytes(b"sources: [{name: caf\xe9, paths: [root]}]\n")  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"manifest .*m\.yaml is not UTF-8"):
        discover_sources(str(manifest))
    seg = tmp_path / "seg"
    _png(str(seg / "images" / "a.png"))
    os.makedirs(seg / "masks")
    (seg / "classes.json").write_text("{not json")
    with pytest.raises(ValueError, match="classes.json is not valid JSON"):
        load_segmentation_dataset("folder", str(seg), cache_dir=str(tmp_path / "c"))
    os.symlink(".", tmp_path / "seg" / "loop")
    assert _in_thread(lambda: contains_parquet(str(seg)), timeout=30) is False
