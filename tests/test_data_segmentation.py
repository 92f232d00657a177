"""Tests of the infrared segmentation builders for UNIP (Zhang et al., ICLR 2025): SODA, MFNet, SCUT-Seg layouts on
tiny written files; SIRST, IRSTD-1K, NUDT-SIRST, buffalo-udder and MassMIND on real files; mask checks."""

import os

import numpy as np
import pytest
from PIL import Image

from conftest import data_path
from unip_hf.data import SEGMENTATION_SPECS, available_splits, load_segmentation_dataset, segmentation_metadata
from unip_hf.data.segmentation import MASSMIND_CLASSES, MFNET_CLASSES, SCUT_SEG_CLASSES, SODA_CLASSES


def _rng_img(h, w, c=None, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w) if c is None else (h, w, c), dtype=np.uint8)


def _labels(ds):
    return np.concatenate([np.asarray(ex["label"]).ravel() for ex in ds])


def _load(name, root, split, tmp_path, **kw):
    return load_segmentation_dataset(name, str(root), split, cache_dir=str(tmp_path / "cache"), **kw)


def test_class_lists():
    assert len(SODA_CLASSES) == 21 and len(MFNET_CLASSES) == 9 and len(SCUT_SEG_CLASSES) == 10
    for spec in SEGMENTATION_SPECS.values():
        assert len(spec.palette) == len(spec.class_names)


def test_soda_layout(tmp_path):
    root = tmp_path / "SODA"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassPNG").mkdir()
    for i in range(3):
        Image.fromarray(_rng_img(20, 30, 3, i)).save(root / "JPEGImages" / f"{i:05d}.jpg")
        m = Image.fromarray((np.arange(600).reshape(20, 30) % 21).astype(np.uint8), "P")
        m.putpalette(sum(SEGMENTATION_SPECS["soda"].palette, ()))
        m.save(root / "SegmentationClassPNG" / f"{i:05d}.png")
    (root / "train_infrared.txt").write_text("00000\n00001\n")
    (root / "test_infrared.txt").write_text("00002.jpg\n")
    ds = _load("soda", root, "train", tmp_path)
    assert len(ds) == 2 and ds[0]["image"].mode == "L" and ds[0]["image"].size == (30, 20)
    assert set(np.unique(_labels(ds))) == set(range(21))
    assert len(_load("soda", root, "test", tmp_path)) == 1
    meta = segmentation_metadata(ds)
    assert meta["id2label"][14] == "traffic_cone" and meta["ignore_index"] == 255
    assert sorted(available_splits("soda", str(root))) == ["test", "train"]


def test_split_handling_stays_with_the_builders():
    """Outside `unip_hf/data/`, the splits of a data set come from the public `available_splits`, never from a
    builder's private `_splits`."""
    package = os.path.join(os.path.dirname(__file__), os.pardir, "src", "unip_hf")
    callers = []
    for folder, _, names in os.walk(package):
        if os.path.basename(folder) == "data":
            continue
        for name in names:
            if name.endswith(".py") and "._splits(" in open(os.path.join(folder, name), encoding="utf-8").read():
                callers.append(name)
    assert callers == []
    with pytest.raises(ValueError, match="unknown segmentation data set 'nope'"):
        available_splits("nope", ".")


def test_mfnet_thermal_channel(tmp_path):
    root = tmp_path / "MFNet"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rgbt = _rng_img(12, 16, 4, 1)
    Image.fromarray(rgbt, "RGBA").save(root / "images" / "00001D.png")
    Image.fromarray((np.arange(192).reshape(12, 16) % 9).astype(np.uint8)).save(root / "labels" / "00001D.png")
    for s in ("train", "val", "test"):
        (root / f"{s}.txt").write_text("00001D\n")
    ds = _load("mfnet", root, "val", tmp_path)
    np.testing.assert_array_equal(np.asarray(ds[0]["image"]), rgbt[..., 3])  # thermal = 4th channel
    assert segmentation_metadata(ds)["id2label"][8] == "bump"
    Image.fromarray(rgbt[..., :3]).save(root / "images" / "00001D.png")
    with pytest.raises(Exception, match="4 channels"):
        _load("mfnet", root, "test", tmp_path / "other")


def test_scut_seg_layout(tmp_path):
    root = tmp_path / "SCUT-Seg"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(2):
        Image.fromarray(_rng_img(16, 16, 3, i)).save(root / "images" / f"img_{i}.jpg")
        lab = np.full((16, 16), i * 9, np.uint8)
        lab[0, 0] = 255
        Image.fromarray(lab).save(root / "labels" / f"img_{i}.png")
    (root / "train.txt").write_text("img_0\n")
    (root / "test.txt").write_text("img_1\n")
    assert set(np.unique(_labels(_load("scut-seg", root, "test", tmp_path)))) == {9, 255}


def _error_text(excinfo):
    err, parts = excinfo.value, []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__
    return " | ".join(parts)


def test_mask_errors_name_the_file(tmp_path):
    root = tmp_path / "bad"
    for split in ("train",):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
    Image.fromarray(_rng_img(10, 10)).save(root / "images" / "train" / "x.png")
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(root / "masks" / "train" / "x.png")
    with pytest.raises(ValueError) as e:
        _load("buffalo-udder", root, "train", tmp_path / "c1")
    assert "x.png" in _error_text(e) and "differs" in _error_text(e)
    Image.fromarray(np.full((10, 10), 7, np.uint8)).save(root / "masks" / "train" / "x.png")
    with pytest.raises(ValueError) as e:
        _load("buffalo-udder", root, "train", tmp_path / "c2")
    assert "x.png" in _error_text(e) and "[7]" in _error_text(e)


def test_generic_folder_and_16bit(tmp_path):
    root = tmp_path / "generic"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    img16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(img16).save(root / "images" / "a.png")
    Image.fromarray((np.arange(64).reshape(8, 8) % 3).astype(np.uint8)).save(root / "masks" / "a.png")
    (root / "classes.txt").write_text("bg\nwarm\nhot\n")
    ds = _load("folder", root, "train", tmp_path)
    assert ds[0]["image"].mode == "I;16"
    np.testing.assert_array_equal(np.asarray(ds[0]["image"]), img16)  # 16-bit kept
    assert segmentation_metadata(ds)["id2label"] == {0: "bg", 1: "warm", 2: "hot"}


def _symlink_subset(src, dst, names):
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        os.symlink(src / n, dst / n)


def test_sirst_real(tmp_path):
    src = data_path("sirst")
    ids = [l.strip() for l in (src / "test.txt").read_text().split()][:8]
    root = tmp_path / "sirst"
    _symlink_subset(src / "images", root / "images", [f"{i}.png" for i in ids])
    _symlink_subset(src / "masks", root / "masks", [f"{i}_pixels0.png" for i in ids])
    (root / "test.txt").write_text("\n".join(ids))
    ds = _load("sirst", root, "test", tmp_path)
    assert len(ds) == 8 and {ex["image"].mode for ex in ds} == {"L"}
    assert set(np.unique(_labels(ds))) == {0, 1}
    # all splits listed in the real folder are found; missing ids are an error unless skip_missing
    (root / "val.txt").write_text("Misc_1\n")  # listed but absent from the subset
    with pytest.raises(FileNotFoundError, match="skip_missing"):
        _load("sirst", root, "val", tmp_path / "c")


def test_irstd1k_stray_value_real(tmp_path):
    src = data_path("irstd-samples", "IRSTD-1K")
    raw = sum(int((np.asarray(Image.open(p)) == 64).sum()) for p in sorted((src / "masks").iterdir()))
    assert raw > 0
    tr, te = _load("irstd-1k", src, "train", tmp_path), _load("irstd-1k", src, "test", tmp_path)
    assert len(tr) + len(te) == 6
    labels = np.concatenate([_labels(tr), _labels(te)])
    assert set(np.unique(labels)) <= {0, 1, 255} and int((labels == 255).sum()) == raw
    counts = segmentation_metadata(te).get("stray_counts") or segmentation_metadata(tr).get("stray_counts")
    assert sum(counts.values()) == raw


def test_nudt_sirst_real(tmp_path):
    src = data_path("irstd-samples", "NUDT-SIRST")
    root = tmp_path / "nudt"
    _symlink_subset(src / "images", root / "images", ["000001.png", "000002.png"])
    _symlink_subset(src / "masks", root / "masks", ["000001.png", "000002.png"])
    (root / "img_idx").mkdir()
    (root / "img_idx" / "train_NUDT-SIRST.txt").write_text("000001\n000002\n000973\n")
    ds = _load("nudt-sirst", root, "train", tmp_path, skip_missing=True)
    assert len(ds) == 2 and set(np.unique(_labels(ds))) == {0, 1}


def test_buffalo_udder_real(tmp_path):
    src = data_path("buffalo-udder")
    root = tmp_path / "udder"
    for split, n in (("train", 4), ("val", 2)):
        names = sorted(os.listdir(src / "images" / split))[:n]
        _symlink_subset(src / "images" / split, root / "images" / split, names)
        _symlink_subset(src / "masks" / split, root / "masks" / split, names)
    tr, va = _load("buffalo-udder", root, "train", tmp_path), _load("buffalo-udder", root, "val", tmp_path)
    assert (len(tr), len(va)) == (4, 2)
    assert set(np.unique(_labels(tr))) == {0, 1} and tr[0]["image"].size == (640, 480)


def test_massmind_real(tmp_path):
    src = data_path("massmind")
    ds = _load("massmind", src, "train", tmp_path)
    assert len(ds) == 5
    labels = _labels(ds)
    assert set(np.unique(labels)) == set(range(len(MASSMIND_CLASSES)))
    first = np.asarray(ds[0]["label"])
    assert first.shape == (512, 640)
    # the top rows are sky, the bottom rows water, in every scene
    for ex in ds:
        lab = np.asarray(ex["label"])
        assert np.bincount(lab[:20].ravel(), minlength=7).argmax() in (0, 2)  # sky (or a bridge overhead)
        assert np.bincount(lab[-60:].ravel(), minlength=7).argmax() == 1


def _udder_folder(tmp_path, n=3):
    """A `folder`-layout copy (links) of n real buffalo-udder pairs with classes.txt of two classes."""
    src = data_path("buffalo-udder")
    root = tmp_path / "udder_folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in sorted(os.listdir(src / "images" / "train"))[:n]:
        os.symlink(src / "images" / "train" / name, root / "images" / name)
        os.symlink(src / "masks" / "train" / name, root / "masks" / name)
    (root / "classes.txt").write_text("background\nudder\n")
    return root


def test_folder_layout_binary_0_255_masks_map_to_1(tmp_path):
    root = _udder_folder(tmp_path)
    ds = _load("folder", root, "train", tmp_path)
    labels = _labels(ds)
    assert set(np.unique(labels).tolist()) == {0, 1}  # the udder is class 1, not ignore
    ref = _labels(_load("buffalo-udder", data_path("buffalo-udder"), "train", tmp_path))
    assert (labels == 1).sum() > 0 and ref.size > 0


def test_folder_layout_mixed_mask_conventions_stop_naming_files(tmp_path):
    root = _udder_folder(tmp_path, n=2)
    first = sorted(os.listdir(root / "masks"))[1]
    os.remove(root / "masks" / first)
    m = np.zeros((480, 640), np.uint8)
    m[10:20, 10:20] = 1
    Image.fromarray(m).save(root / "masks" / first)  # ids 0/1 while the other mask is 0/255
    with pytest.raises(ValueError, match="0 and 255") as err:
        _load("folder", root, "train", tmp_path)
    assert first in str(err.value) and "value_map" in str(err.value)
    # an explicit value_map in classes.json settles it
    os.remove(root / "classes.txt")
    (root / "classes.json").write_text('{"classes": ["background", "udder"], "value_map": {"0": 0, "1": 1, "255": 1}}')
    assert set(np.unique(_labels(_load("folder", root, "train", tmp_path))).tolist()) == {0, 1}


def test_cache_rebuilt_after_mask_edit_or_image_deletion(tmp_path):
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        Image.fromarray(_rng_img(8, 8, seed=i)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / f"{i}.png")
    (root / "classes.txt").write_text("background\nthing\nother\n")
    assert len(_load("folder", root, "train", tmp_path)) == 4
    os.remove(root / "images" / "3.png")
    ds = _load("folder", root, "train", tmp_path)
    assert len(ds) == 3  # not the cached 4 rows
    m = np.zeros((8, 8), np.uint8)
    m[:2] = 2
    Image.fromarray(m).save(root / "masks" / "0.png")
    ds = _load("folder", root, "train", tmp_path)
    assert int(np.asarray(ds[[e for e in ds["id"]].index("0")]["label"]).max()) == 2  # the edited mask


def test_unknown_and_empty_splits_are_named(tmp_path):
    """Guards issue 24 item 17: a split the layout does not provide used to end in `datasets`' 'Unknown split', and
    a split without pairs (an empty split file, an empty images folder) in 'Instruction "val" corresponds to no
    data!'; both are ValueErrors naming the split and the folder now (the unknown one before anything is built)."""
    root = tmp_path / "scut"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(2):
        Image.fromarray(_rng_img(8, 8, seed=i)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "labels" / f"{i}.png")
    (root / "train.txt").write_text("0\n1\n")
    (root / "val.txt").write_text("\n")  # an empty split file
    with pytest.raises(ValueError, match=rf"no split 'nosuch'; available: train, val") as caught:
        _load("scut-seg", root, "nosuch", tmp_path)
    assert str(root) in str(caught.value) and not list((tmp_path / "cache").rglob("*.arrow"))  # nothing built
    with pytest.raises(ValueError, match=rf"split 'val' of the scut-seg data in {root} holds no image pair"):
        _load("scut-seg", root, "val", tmp_path)
    assert len(_load("scut-seg", root, "train", tmp_path)) == 2
