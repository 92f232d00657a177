"""Tests of the InfMix builder (UNIP, Zhang et al., ICLR 2025): configurations, de-duplication, corrupt files,
manifests, streaming, the parquet route and a scale run with peak RSS."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
from PIL import Image

from conftest import data_path
from unip_hf.data import InfMix, export_parquet, read_report
from unip_hf.data.infmix import derive_config_name, discover_sources


def _save(path, mode="L", size=(24, 16), seed=0, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, format=fmt)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    for i in range(4):
        _save(str(r / "infrared" / "alpha" / f"a{i}.png"), seed=i)
    _save(str(r / "infrared" / "alpha" / "deep" / "er" / "a9.tif"), seed=9)  # any depth
    for i in range(2):
        _save(str(r / "infrared" / "beta" / f"b{i}.jpg"), seed=10 + i)
    shutil.copy(r / "infrared" / "alpha" / "a0.png", r / "infrared" / "beta" / "dup_of_a0.png")  # exact duplicate
    (r / "infrared" / "beta" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    (r / "infrared" / "beta" / "notes.txt").write_text("ignored")
    for i in range(3):
        _save(str(r / "rgb_src" / f"c{i}.jpg"), mode="RGB", seed=20 + i)
    os.makedirs(r / "rgb")
    os.symlink(r / "rgb_src", r / "rgb" / "gamma")  # symbolic links are followed
    return r


def _build(root, tmp_path, config="full", **kw):
    b = InfMix(config_name=config, data_dir=str(root), cache_dir=str(tmp_path / "cache"), **kw)
    b.download_and_prepare()
    return b, b.as_dataset(split="train")


def _rows(report):
    return {f"{r['modality']}/{r['source']}": r for r in report["sources"]}


def test_full_config_counts_duplicates_and_corrupt(root, tmp_path):
    b, ds = _build(root, tmp_path)
    rep = read_report(ds)
    rows = _rows(rep)
    assert rows["infrared/alpha"] == {"source": "alpha", "modality": "infrared", "files": 5, "kept": 5, "duplicates": 0, "unreadable": 0}
    assert rows["infrared/beta"]["files"] == 4 and rows["infrared/beta"]["kept"] == 2
    assert rows["infrared/beta"]["duplicates"] == 1 and rows["infrared/beta"]["unreadable"] == 1
    assert rows["rgb/gamma"]["kept"] == 3
    assert len(ds) == 10 == rep["total_kept"] and rep["total_duplicates"] == 1
    assert len(rep["unreadable"]) == 1 and rep["unreadable"][0]["file"].endswith("broken.jpg")
    assert rep["unreadable"][0]["error"]
    rgb = ds.filter(lambda m: m == "rgb", input_columns="modality")
    assert all(ex["image"].mode == "L" and ex["mode"] == "RGB" for ex in rgb)  # converted to grayscale, original recorded
    ex = ds[0]
    assert set(ex) == {"image", "source", "modality", "file", "mode", "width", "height", "content_hash"}
    assert len(set(ds["content_hash"])) == len(ds)
    assert (ex["width"], ex["height"]) == ex["image"].size
    # the stored infrared bytes are the original file
    a0 = [e for e in ds if e["file"] == "a0.png"][0]
    import hashlib
    assert a0["content_hash"] == hashlib.sha256((root / "infrared" / "alpha" / "a0.png").read_bytes()).hexdigest()


def test_no_grayscale_and_infrared_only(root, tmp_path):
    _, ds = _build(root, tmp_path, "no_grayscale")
    rgb = [e for e in ds if e["modality"] == "rgb"]
    assert len(rgb) == 3 and all(e["image"].mode == "RGB" for e in rgb)
    _, ds = _build(root, tmp_path, "infrared_only")
    assert set(ds["modality"]) == {"infrared"} and len(ds) == 7


def test_include_exclude_derived_names(root, tmp_path):
    b, ds = _build(root, tmp_path, include_sources=["alpha", "rgb/gamma"])
    assert b.config.name == "full.include-alpha+rgb~gamma" == derive_config_name("full", ["rgb/gamma", "alpha"])
    assert set(ds["source"]) == {"alpha", "gamma"}
    b, ds = _build(root, tmp_path, "no_grayscale", exclude_sources=["beta"])
    assert b.config.name == "no_grayscale.exclude-beta" and not b.config.grayscale
    assert "beta" not in set(ds["source"]) and len(ds) == 8


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_manifest(root, tmp_path, fmt):
    spec = {"sources": [
        {"name": "alpha", "modality": "infrared", "paths": [str(root / "infrared" / "alpha")], "every": 2},
        {"name": "gamma", "modality": "rgb", "paths": ["root/rgb_src/*.jpg"], "max": 2},
    ]}
    path = tmp_path / f"mix.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(spec))
    else:
        import yaml
        path.write_text(yaml.safe_dump(spec))
    srcs = discover_sources(str(path))
    assert [len(s["files"]) for s in srcs] == [3, 2]  # every 2nd of 5; at most 2
    _, ds = _build(path, tmp_path)
    assert len(ds) == 5


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        discover_sources(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no sources"):
        discover_sources(str(tmp_path / "empty"))
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"sources": [{"name": "x", "modality": "sonar", "paths": ["."]}]}))
    with pytest.raises(ValueError, match="sonar"):
        discover_sources(str(bad))


def test_streaming_and_parquet_route(root, tmp_path, monkeypatch):
    b, ds = _build(root, tmp_path)
    stream = b.as_streaming_dataset(split="train")
    assert sum(1 for _ in stream) == len(ds)
    out = tmp_path / "export"
    export_parquet(ds, str(out), b.config.name, report=b.report)
    readme = (out / "README.md").read_text()
    assert "config_name: full" in readme and "full/train-*.parquet" in readme
    loaded = datasets.load_dataset(str(out), "full", split="train", cache_dir=str(tmp_path / "c2"))
    assert len(loaded) == len(ds) and loaded[0]["image"].size == (loaded[0]["width"], loaded[0]["height"])
    streamed = datasets.load_dataset("parquet", data_files=str(out / "full" / "*.parquet"), split="train", streaming=True)
    assert sum(1 for _ in streamed) == len(ds)


def test_real_pools_subset(tmp_path):
    ir, rgb = data_path("infrared-pool"), data_path("rgb-pool")
    root = tmp_path / "real"
    expected = {}
    for modality, pool in (("infrared", ir), ("rgb", rgb)):
        for src in sorted(p for p in pool.iterdir() if p.is_dir()):
            files = sorted(src.iterdir())[:3]
            (root / modality / src.name).mkdir(parents=True)
            for f in files:
                os.symlink(f, root / modality / src.name / f.name)
            expected[f"{modality}/{src.name}"] = len(files)
    b, ds = _build(root, tmp_path)
    rows = _rows(b.report)
    assert {k: r["files"] for k, r in rows.items()} == expected
    assert sum(r["kept"] + r["duplicates"] + r["unreadable"] for r in rows.values()) == sum(expected.values())
    assert all(m == "L" for m in {e["image"].mode for e in ds.filter(lambda x: x == "rgb", input_columns="modality")})


SCALE_SCRIPT = textwrap.dedent('''
    import os, resource, sys
    from unip_hf.data import InfMix
    b = InfMix(config_name="full", data_dir=sys.argv[1], cache_dir=sys.argv[2])
    b.download_and_prepare()
    print(b.report["total_kept"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
''')


def test_scale_build_memory_flat(tmp_path):
    root = tmp_path / "many"
    n = 2000
    rng = np.random.default_rng(0)
    for s in range(4):
        d = root / "infrared" / f"s{s}"
        d.mkdir(parents=True)
        for i in range(n // 4):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(buf, format="PNG")
            (d / f"{i:05d}.png").write_bytes(buf.getvalue())
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", SCALE_SCRIPT, str(root), str(tmp_path / "cache")],
                         capture_output=True, text=True, env=env, check=True).stdout.split()
    kept, peak_mib = int(out[0]), int(out[1])
    print(f"\nInfMix scale build: {kept} files, peak RSS {peak_mib} MiB")
    assert kept == n
    assert peak_mib < 1500  # loose: the build streams to arrow in batches


# ------------------------------------------------------------------------------------ manifest errors (issue 24)
def _manifest(tmp_path, text, name="mix.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("entry, message", [
    ("max: -1", "max: -1; max must be an integer >= 0"),
    ("every: 0", "every: 0; every must be an integer >= 1"),
    ("every: -2", "every: -2; every must be an integer >= 1"),
    ("every: 1.5", "every: 1.5; every must be"),
    ("max: many", "max: 'many'; max must be"),
])
def test_manifest_sampling_values_are_refused_by_name(root, tmp_path, entry, message):
    """Guards issue 24 item 13: `max: -1` used to drop the last file (`files[:-1]`) and `every: 0` meant "all";
    both are refused now, naming the manifest, the source and the value."""
    path = _manifest(tmp_path, f"""\
        sources:
          - name: alpha
            paths: [root/infrared/alpha]
            {entry}
        """)
    with pytest.raises(ValueError, match=message) as caught:
        discover_sources(str(path))
    assert str(path) in str(caught.value) and "'alpha'" in str(caught.value)


def test_manifest_max_zero_and_every_mean_what_they_say(root, tmp_path):
    """`max: 0` keeps no file and `every`/`max` apply in that order to the sorted files."""
    path = _manifest(tmp_path, """\
        sources:
          - {name: alpha, paths: [root/infrared/alpha], every: 2, max: 2}
          - {name: beta, paths: [root/infrared/beta], max: 0}
        """)
    counts = {s["name"]: len(s["files"]) for s in discover_sources(str(path))}
    assert counts == {"alpha": 2, "beta": 0}


@pytest.mark.parametrize("name, text, where", [
    ("bad.yaml", "sources:\n  - name: a\n    paths: [a/\n  every: 2\n", "line 4, column 8"),
    ("bad.json", '{"sources": [{"name": "a", "paths": ["a/"],}]}', "line 1, column 44"),
])
def test_manifest_syntax_error_names_the_file_and_line(tmp_path, name, text, where):
    """Guards issue 24 item 17: an invalid JSON manifest used to surface as `DatasetGenerationError` ("An error occurred
    while generating the dataset") and an invalid YAML one as a bare yaml error about "<unicode string>"; the build now
    raises a ValueError naming the manifest and the line."""
    path = tmp_path / name
    path.write_text(text)
    builder = InfMix(config_name="full", data_dir=str(path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=f"manifest {path} is not valid {name[4:].upper()}: .* at {where}"):
        builder.download_and_prepare()


def test_manifest_path_matching_nothing_is_named(root, tmp_path):
    """Guards issue 24 item 17: a path or pattern that matches no file used to build nothing and end in `datasets`'
    'Instruction "train" corresponds to no data!'; it is refused naming the source and the path."""
    path = _manifest(tmp_path, """\
        sources:
          - {name: alpha, paths: [root/infrared/alpha]}
          - {name: typo, paths: ["root/infrared/alhpa/*.png"]}
        """)
    with pytest.raises(ValueError, match=r"source 'typo' path 'root/infrared/alhpa/\*\.png' .* matches no file"):
        discover_sources(str(path))
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.txt").write_text("x")
    path = _manifest(tmp_path, "sources:\n  - {name: empty, paths: [no_images]}\n")
    builder = InfMix(config_name="full", data_dir=str(path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="source 'empty' path 'no_images' .* an image folder without images"):
        builder.download_and_prepare()


def test_a_build_that_keeps_nothing_is_named(tmp_path):
    """Guards issue 24 item 17: sources without images, or whose every file is unreadable, used to end in
    'Instruction "train" corresponds to no data!'; the build now names the configuration and the files."""
    (tmp_path / "r1" / "infrared" / "a").mkdir(parents=True)
    builder = InfMix(config_name="full", data_dir=str(tmp_path / "r1"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"has no image file in its sources \(infrared/a\)"):
        builder.download_and_prepare()
    (tmp_path / "r2" / "infrared" / "a").mkdir(parents=True)
    (tmp_path / "r2" / "infrared" / "a" / "b.png").write_bytes(b"not a png")
    builder = InfMix(config_name="full", data_dir=str(tmp_path / "r2"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"kept no image: 1 file\(s\), 1 unreadable.*b\.png"):
        builder.download_and_prepare()
