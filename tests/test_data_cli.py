"""Tests of the data CLI of unip_hf (UNIP, Zhang et al., ICLR 2025): ``unip infmix build`` (arrow, parquet,
push with a patched HfApi) and ``unip data inspect``."""

import argparse
import json
import os

import datasets
import numpy as np
import pytest
from PIL import Image

from unip_hf.cli.commands import data as commands
from unip_hf.data import write_synthetic_dataset


def _run(argv):
    parser = argparse.ArgumentParser(prog="unip")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    for mod, src, n in (("infrared", "ir1", 3), ("rgb", "vis", 2)):
        (r / mod / src).mkdir(parents=True)
        for i in range(n):
            arr = np.random.default_rng(i + n).integers(0, 256, (8, 8, 3) if mod == "rgb" else (8, 8), dtype=np.uint8)
            Image.fromarray(arr).save(r / mod / src / f"{i}.png")
    (r / "infrared" / "ir1" / "bad.png").write_bytes(b"\x89PNG broken")
    return r


def test_infmix_build_arrow(root, tmp_path, capsys):
    out = tmp_path / "arrow"
    assert _run(["infmix", "build", str(root), "--config", "no_grayscale", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ir1" in text and "vis" in text and "skipped (unreadable): 1" in text and "bad.png" in text
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 5


def test_infmix_build_parquet_and_push(root, tmp_path, capsys, monkeypatch):
    from huggingface_hub import HfApi

    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, **kw: calls.setdefault("create", kw))

    def fake_upload(self, **kw):
        calls["upload"] = kw
        calls["files"] = sorted(os.path.relpath(os.path.join(d, f), kw["folder_path"])
                                for d, _, fs in os.walk(kw["folder_path"]) for f in fs)
        return "https://hub/commit/1"

    monkeypatch.setattr(HfApi, "upload_folder", fake_upload)
    out = tmp_path / "pq"
    _run(["infmix", "build", str(root), "--config", "full", "--exclude-sources", "vis", "--output", str(out),
          "--format", "parquet", "--push-to-hub", "me/infmix"])
    assert calls["create"] == {"repo_id": "me/infmix", "repo_type": "dataset", "private": False, "exist_ok": True}
    assert calls["upload"]["repo_id"] == "me/infmix" and calls["upload"]["repo_type"] == "dataset"
    name = "full.exclude-vis"
    assert calls["files"] == ["README.md", f"{name}/report.json", f"{name}/train-00000-of-00001.parquet"]
    readme = (out / "README.md").read_text()
    assert f"config_name: {name}" in readme and "| ir1 | infrared | 4 | 3 | 0 | 1 |" in readme
    ds = datasets.load_dataset(str(out), name, split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == 3 and set(ds["source"]) == {"ir1"}
    assert "pushed to me/infmix" in capsys.readouterr().out


def test_data_inspect(tmp_path, capsys):
    syn = tmp_path / "syn"
    write_synthetic_dataset(str(syn), num_train=5, num_val=0, height=48, width=64, return_dataset=False)
    out = tmp_path / "inspect"
    _run(["data", "inspect", "folder", "--data_dir", str(syn), "--split", "train", "--out", str(out), "--cache-dir", str(tmp_path / "c")])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_examples"] == 5 and summary["sizes"] == {"64x48": 5}
    assert "background" in summary["class_histogram"]
    assert abs(sum(v["fraction"] for v in summary["class_histogram"].values()) - 1) < 1e-3
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.mode == "RGB" and sheet.size[0] > 0
    assert "class histogram" in capsys.readouterr().out


def test_registered_in_unip_cli():
    from unip_hf.cli import build_parser

    args = build_parser().parse_args(["data", "inspect", "sirst", "--data_dir", "x"])
    assert args.func is commands._run_data_inspect


def test_data_inspect_sirst_shows_targets_and_original_modes(tmp_path, capsys):
    """On the real SIRST test split: the white "target" class is drawn in a visible colour where the masks are, and
    the modes of the original files are reported (the stored images are all L intensity)."""
    from conftest import data_path

    sirst = data_path("sirst")
    ids = [line.split()[0] for line in (sirst / "test.txt").read_text().splitlines() if line.strip()]
    root = tmp_path / "sirst"  # the test split alone (links to the shared files), so only it is built
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in ids:
        (root / "images" / f"{i}.png").symlink_to(sirst / "images" / f"{i}.png")
        (root / "masks" / f"{i}_pixels0.png").symlink_to(sirst / "masks" / f"{i}_pixels0.png")
    (root / "test.txt").write_text("\n".join(ids) + "\n")
    out = tmp_path / "inspect"
    _run(["data", "inspect", "sirst", "--data_dir", str(root), "--split", "test", "--out", str(out),
          "--max-images", "4", "--cache-dir", str(tmp_path / "c")])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_examples"] == 86 and summary["modes"] == {"L": 86}
    assert summary["source_modes"] == {"RGB": 76, "L": 4, "P": 3, "RGBA": 3}
    printed = capsys.readouterr().out
    assert "modes of the original files: RGB (76), L (4), P (3), RGBA (3); stored as their intensity: L (86)" in printed
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB")).astype(int)
    coloured = (sheet[..., 0] - np.maximum(sheet[..., 1], sheet[..., 2])) > 60  # red overlay / ring, not gray
    tile = 160
    for k, i in enumerate(ids[:4]):
        mask = np.asarray(Image.open(sirst / "masks" / f"{i}_pixels0.png").convert("L")) > 0
        height, width = mask.shape
        scale = min(tile / width, tile / height)
        tw, th = round(width * scale), round(height * scale)
        left, top = (k % 4) * tile + (tile - tw) // 2, (k // 4) * tile + (tile - th) // 2
        near = np.zeros(coloured.shape, bool)
        ys, xs = np.nonzero(mask)
        for y, x in zip(ys, xs):
            cy, cx = int(top + y * scale), int(left + x * scale)
            near[max(cy - 9, 0):cy + 10, max(cx - 9, 0):cx + 10] = True
        cell = np.zeros(coloured.shape, bool)
        cell[top:top + th, left:left + tw] = True
        assert coloured[near & cell].any(), f"{i}: no coloured pixel where its mask is"
        assert not coloured[cell & ~near].any(), f"{i}: coloured pixels away from its targets"


def test_infmix_build_bad_manifest_is_one_error_line(root, tmp_path, capsys):
    """Guards issue 24 items 13 and 17: `unip infmix build` on a manifest with `every: 0`, invalid YAML or a path that
    matches nothing used to print a traceback (or build with "every" meaning "all"); it now prints one `error:` line
    naming the manifest and exits 2."""
    cases = {"every.yaml": f"sources:\n  - {{name: ir1, paths: [{root}/infrared/ir1], every: 0}}\n",
             "syntax.yaml": "sources:\n  - name: ir1\n    paths: [x/\n  every: 2\n",
             "typo.yaml": "sources:\n  - {name: ir1, paths: [nowhere/*.png]}\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        code = _run(["infmix", "build", str(tmp_path / name), "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert len(err.splitlines()) == 1 and err.startswith("unip infmix build: error: manifest "), err
        assert str(tmp_path / name) in err
    assert not (tmp_path / "out").exists()


def test_data_inspect_unknown_or_empty_split_is_one_error_line(tmp_path, capsys):
    """Guards issue 24 item 17: `unip data inspect --split` of a split the folder lacks, or of an empty one, ended in a
    `datasets` traceback ('Unknown split', 'Instruction "val" corresponds to no data!'); one `error:` line, exit 2."""
    syn = tmp_path / "syn"
    write_synthetic_dataset(str(syn), num_train=2, num_val=1, height=16, width=16, return_dataset=False)
    for name in os.listdir(syn / "images" / "val"):
        os.remove(syn / "images" / "val" / name)
    for split, message in (("nosuch", "has no split 'nosuch'; available: train, val"),
                           ("val", "split 'val' of the folder data in")):
        code = _run(["data", "inspect", "folder", "--data_dir", str(syn), "--split", split,
                     "--out", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "c")])
        err = capsys.readouterr().err.strip()  # (the build's progress bars come before the error line)
        assert code == 2 and message in err.splitlines()[-1] and "Traceback" not in err, err
        assert err.splitlines()[-1].startswith("unip data inspect: error: ")
