"""`unip predict` (issue 15, item 1): a saved segmentation model on real SIRST images, a 16-bit PNG and a float TIFF
written here, a glob, a folder and a corrupt file (named, skipped, counted); masks at the image size, overlays, the
`targets.csv` of a binary model (connected components: centroid, area, bounding box, peak score), none for a
three-class model."""

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from unip_hf import UnipConfig, UnipForSemanticSegmentation
from unip_hf.cli import main
from unip_hf.prediction import TARGET_COLUMNS, collect_images, find_targets, predict_images
from unip_hf.segmentation_saving import make_processor
from conftest import data_path

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32,
            decoder_hidden_size=16, auxiliary_channels=8)


def _save_model(folder, num_labels):
    config = UnipConfig(num_labels=num_labels, id2label={i: f"class{i}" for i in range(num_labels)}, **TINY)
    torch.manual_seed(0)  # the same random model whatever ran before
    model = UnipForSemanticSegmentation(config).eval()
    model.save_pretrained(folder)
    make_processor(config, (64, 48)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two real SIRST images (one in a sub-folder), a 16-bit PNG, a float TIFF and a corrupt PNG."""
    root = tmp_path_factory.mktemp("images")
    sirst = data_path("sirst", "images")
    (root / "sub").mkdir()
    shutil.copy(sirst / "Misc_1.png", root / "Misc_1.png")
    shutil.copy(sirst / "Misc_10.png", root / "sub" / "Misc_10.png")
    raw = np.random.default_rng(0).integers(7000, 9000, (40, 56)).astype(np.uint16)
    Image.fromarray(raw).save(root / "frame16.png")
    assert Image.open(root / "frame16.png").mode == "I;16"
    Image.fromarray(np.linspace(0, 1, 30 * 44, dtype=np.float32).reshape(30, 44), mode="F").save(root / "float.tif")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    return root


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("binary"), 2)


def test_find_targets_lists_connected_components():
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:3, 2:5] = True  # 2 x 3 target
    mask[6, 9] = mask[7, 10] = True  # diagonal neighbours: one 8-connected target
    probability = np.where(mask, 0.7, 0.1)
    probability[2, 4] = 0.95
    targets = find_targets(probability, mask)
    assert [(t["target"], t["area"], t["centroid_x"], t["centroid_y"]) for t in targets] == [
        (1, 6, 3.0, 1.5), (2, 2, 9.5, 6.5)]
    assert (targets[0]["bbox_x0"], targets[0]["bbox_y0"], targets[0]["bbox_x1"], targets[0]["bbox_y1"]) == (2, 1, 4, 2)
    assert targets[0]["max_score"] == 0.95 and targets[1]["max_score"] == 0.7
    assert find_targets(probability, np.zeros_like(mask)) == []


def test_predict_writes_masks_overlays_and_targets(binary_model, images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", str(binary_model), str(images), "--out", str(out), "--threshold", "0.5",
                 "--no_progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "4 image(s) segmented" in text and "skipped 1 file(s)" in text and "corrupt.png" in text
    for name, source in [("Misc_1", "Misc_1.png"), ("sub/Misc_10", "sub/Misc_10.png"), ("frame16", "frame16.png"),
                         ("float", "float.tif")]:
        mask = Image.open(out / f"{name}_mask.png")
        assert mask.size == Image.open(images / source).size, name
        assert set(np.unique(np.asarray(mask))) <= {0, 1}
        assert Image.open(out / f"{name}_overlay.png").mode == "RGB"
    with open(out / "targets.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
        assert tuple(csv.DictReader(open(out / "targets.csv")).fieldnames) == TARGET_COLUMNS
    for row in rows:  # every listed target lies in its image's predicted mask
        mask = np.asarray(Image.open(out / f"{_stem(row['image'], images)}_mask.png"))
        x0, y0, x1, y1 = (int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
        assert mask[y0:y1 + 1, x0:x1 + 1].sum() >= int(row["area"]) and 0.5 <= float(row["max_score"]) <= 1  # rounded
    assert f"{len(rows)} target(s) listed" in text


def _stem(path, root):
    from pathlib import Path

    return str(Path(path).relative_to(root).with_suffix(""))


def test_predict_takes_files_and_globs_and_disambiguates_names(images, tmp_path):
    skipped = []
    (tmp_path / "other").mkdir()
    shutil.copy(images / "Misc_1.png", tmp_path / "other" / "Misc_1.png")
    found = collect_images([str(images / "Misc_1.png"), str(images / "**" / "Misc_1*.png"),
                            str(tmp_path / "other" / "Misc_1.png"), str(images / "sub")], skipped)
    # each real file once (the glob finds Misc_1.png again); another file of the same name gets "-2"
    assert [name for _, name in found] == ["Misc_1", "Misc_10", "Misc_1-2"] and not skipped
    with pytest.raises(FileNotFoundError, match="no image file matches"):
        collect_images([str(images / "*.jpeg")], [])


def test_multiclass_model_writes_no_targets_and_radiometric_is_passed_only_when_given(images, tmp_path, monkeypatch):
    model = _save_model(tmp_path / "three", 3)
    seen = []
    from unip_hf import prediction

    real = prediction.load_infrared_image
    monkeypatch.setattr(prediction, "load_infrared_image", lambda path, **kw: seen.append(kw) or real(path))
    result = predict_images(str(model), [str(images / "frame16.png")], tmp_path / "out", progress=False)
    assert result.targets_csv is None and not (tmp_path / "out" / "targets.csv").exists()
    assert set(np.unique(np.asarray(Image.open(tmp_path / "out" / "frame16_mask.png")))) <= {0, 1, 2}
    predict_images(str(model), [str(images / "frame16.png")], tmp_path / "out2", progress=False, radiometric="raw")
    assert seen == [{}, {"radiometric": "raw"}]


def test_only_unreadable_files_is_an_error(binary_model, images, tmp_path, capsys):
    assert main(["predict", str(binary_model), str(images / "corrupt.png"), "--out", str(tmp_path / "o"),
                 "--no_progress"]) == 1
    assert "no readable image" in capsys.readouterr().out


def test_bad_threshold_is_a_usage_error(binary_model, images, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["predict", str(binary_model), str(images), "--out", str(tmp_path / "o"), "--threshold", "1.5"])
    assert caught.value.code == 2 and "--threshold" in capsys.readouterr().err
