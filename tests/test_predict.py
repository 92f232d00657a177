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
from unip_hf.deploy.predict import TARGET_COLUMNS, collect_images, find_targets, predict_images
from unip_hf.evaluation.model_saving import make_processor
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
    from unip_hf.deploy import predict as prediction

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


# ---------------------------------------------------------------- issue 24: nothing lost, nothing silently wrong


def _bytes_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _two_inputs(folder):
    """`foo.png` and an input whose name looks like an output of it, `foo_overlay.png` (both real SIRST images)."""
    folder.mkdir()
    sirst = data_path("sirst", "images")
    shutil.copy(sirst / "Misc_1.png", folder / "foo.png")
    shutil.copy(sirst / "Misc_10.png", folder / "foo_overlay.png")
    return folder


def test_out_that_is_or_holds_an_input_is_refused_before_anything_is_written(binary_model, tmp_path, capsys):
    """Issue 24 item 1: `unip predict MODEL DIR --out DIR` replaced the input foo_overlay.png by foo's overlay and then
    segmented it; now an --out that is (or holds) an input folder, file or glob base is refused, exit 2, one line, and
    no input changes."""
    folder = _two_inputs(tmp_path / "dir")
    before = _bytes_of(folder)
    for sources, out in [([str(folder)], folder), ([str(folder / "foo.png")], folder),
                         ([str(folder / "*.png")], folder), ([str(folder)], tmp_path)]:
        with pytest.raises(SystemExit) as caught:
            main(["predict", str(binary_model), *sources, "--out", str(out), "--no_progress"])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert "--out" in err and "holds no input" in err and "Traceback" not in err
        assert _bytes_of(folder) == before


def test_output_that_links_to_an_input_is_refused(binary_model, tmp_path, capsys):
    """Issue 24 item 1: an output path that resolves to an input (a link in --out) would overwrite the input."""
    folder = _two_inputs(tmp_path / "dir")
    out = tmp_path / "out"
    out.mkdir()
    (out / "foo_mask.png").symlink_to(folder / "foo_overlay.png")
    before = _bytes_of(folder)
    with pytest.raises(SystemExit) as caught:
        main(["predict", str(binary_model), str(folder), "--out", str(out), "--no_progress"])
    assert caught.value.code == 2 and "would replace the input" in capsys.readouterr().err
    assert _bytes_of(folder) == before


def test_out_inside_the_input_folder_is_never_searched(binary_model, tmp_path, capsys):
    """Issue 24 item 1: a second run segmented the first run's outputs (foo_overlay_overlay.png); an --out inside an
    input folder (or under a glob's base) is now never searched, so both runs segment the same two inputs, and the
    input foo_overlay.png is never replaced."""
    folder = _two_inputs(tmp_path / "dir")
    inputs = _bytes_of(folder)
    out = folder / "predictions"
    runs = []
    for sources in ([str(folder)], [str(folder)], [str(folder / "**" / "*.png")]):
        result = predict_images(str(binary_model), sources, out, progress=False)
        runs.append(sorted(image for image, _, _ in result.written))
    assert runs[0] == runs[1] == runs[2] == [str(folder / "foo.png"), str(folder / "foo_overlay.png")]
    assert sorted(p.name for p in out.iterdir()) == [
        "foo_mask.png", "foo_overlay.png", "foo_overlay_mask.png", "foo_overlay_overlay.png", "targets.csv"]
    assert {k: v for k, v in _bytes_of(folder).items() if not k.startswith("predictions/")} == inputs
    main(["predict", str(binary_model), str(folder), "--out", str(out), "--no_progress"])
    assert "not read: 4 file(s) under --out" in capsys.readouterr().out


def _backbone(folder):
    from unip_hf import UnipViTModel

    config = UnipConfig(**{k: v for k, v in TINY.items() if k not in ("decoder_hidden_size", "auxiliary_channels")})
    UnipViTModel(config).save_pretrained(folder)
    return folder


def test_backbone_without_a_segmentation_head_is_refused(images, tmp_path, capsys):
    """Issue 24 item 11: predict and evaluate on a backbone-only folder (UnipViTModel) ran a random head and wrote
    results; both now refuse, exit 2, naming the backbone (from config.json, before weights load) or the missing
    parts (a config without `architectures`: from the weights)."""
    import json

    backbone = _backbone(tmp_path / "backbone")
    anonymous = _backbone(tmp_path / "anonymous")
    config = json.loads((anonymous / "config.json").read_text())
    del config["architectures"]
    (anonymous / "config.json").write_text(json.dumps(config))
    sirst = str(data_path("sirst"))
    for model, expected in [(backbone, "holds a backbone (UnipViTModel) without a segmentation head"),
                            (anonymous, "decode_head")]:
        with pytest.raises(SystemExit) as caught:
            main(["predict", str(model), str(images / "Misc_1.png"), "--out", str(tmp_path / "o"), "--no_progress"])
        assert caught.value.code == 2 and expected in capsys.readouterr().err
        evaluate = ["evaluate", "--model_name_or_path", str(model), "--dataset", "sirst", "--data_dir", sirst,
                    "--split", "test", "--max_eval_samples", "2", "--output_dir", str(tmp_path / "eval")]
        try:
            code = main(evaluate)
        except SystemExit as exit_:
            code = exit_.code
        assert code == 2 and expected in capsys.readouterr().err
        assert not (tmp_path / "o").exists() and not (tmp_path / "eval" / "eval_results.json").exists()


def test_temperatures_need_an_intensity_range(binary_model, tmp_path, capsys):
    """Issue 24 item 12: `--radiometric celsius` (and a float TIFF of temperatures) clipped every value to 1.0 and
    predicted on a constant image. Now predict refuses what the processor refuses (celsius without a range, an
    inverted range), skips a float image outside [0, 1] without --intensity_range (naming the option), and with
    --intensity_range the model sees the temperatures' variation."""
    from unip_hf import UnipImageProcessor

    temperatures = tmp_path / "temperatures.tif"
    values = 20 + 20 * np.random.default_rng(0).random((40, 48))
    Image.fromarray(values.astype(np.float32), mode="F").save(temperatures)
    with pytest.raises(ValueError, match="intensity_range"):
        UnipImageProcessor(radiometric="celsius")  # the processor's own refusal ...
    for options in (["--radiometric", "celsius"], ["--intensity_range", "40", "20"]):
        with pytest.raises(SystemExit) as caught:  # ... is predict's, before anything is read
            main(["predict", str(binary_model), str(temperatures), "--out", str(tmp_path / "o"), *options,
                  "--no_progress"])
        assert caught.value.code == 2 and "--intensity_range" in capsys.readouterr().err
    assert main(["predict", str(binary_model), str(temperatures), "--out", str(tmp_path / "o"),
                 "--no_progress"]) == 1
    assert "temperatures.tif: float values from 20" in capsys.readouterr().out
    result = predict_images(str(binary_model), [str(temperatures)], tmp_path / "ok", intensity_range=(15, 45),
                            progress=False)
    assert len(result.written) == 1
    shown = np.asarray(Image.open(result.written[0][2]))[22:62, 8:56]  # the overlay's input panel: what the model saw
    assert shown.std() > 20


def test_unusable_images_are_skipped_and_the_rest_finish(binary_model, tmp_path, capsys):
    """Issue 24 item 14: a NaN/inf float TIFF, a 1-bit PNG and a 640x32 image (a pooling error, no file named)
    aborted the run with rc 1 and no targets.csv; each is now named and skipped, the others are written."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(data_path("sirst", "images", "Misc_1.png"), folder / "good.png")
    for name, value in (("nan.tif", np.nan), ("inf.tif", np.inf)):
        array = np.full((30, 40), 0.5, dtype=np.float32)
        array[3, 4] = value
        Image.fromarray(array, mode="F").save(folder / name)
    Image.fromarray(np.random.default_rng(0).random((30, 40)) > 0.5).save(folder / "onebit.png")
    assert Image.open(folder / "onebit.png").mode == "1"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 640)).astype(np.uint8)).save(folder / "long.png")
    out = tmp_path / "out"
    assert main(["predict", str(binary_model), str(folder), "--out", str(out), "--no_progress"]) == 0
    text = capsys.readouterr().out
    assert "1 image(s) segmented" in text and "skipped 4 file(s)" in text
    for name, reason in (("nan.tif", "NaN or infinite"), ("inf.tif", "NaN or infinite"), ("onebit.png", "1-bit"),
                         ("long.png", "640x32")):
        assert any(line.strip().startswith(str(folder / name)) and reason in line for line in text.splitlines()), name
    assert (out / "good_mask.png").is_file() and (out / "targets.csv").is_file()
    assert not (out / "long_mask.png").exists()


def test_label_maps_keep_class_ids_above_255(images, tmp_path):
    """Issue 24 item 13: class ids above 255 were stored as uint8 (299 became 43). Every writer of label maps keeps
    them: predict's masks are 16-bit PNGs for a model of more than 256 classes (every mask of the run, whatever its
    largest id), and the segmentation builders store such masks as 16-bit PNGs."""
    import json

    from unip_hf.data import load_segmentation_dataset

    folder = _save_model(tmp_path / "many", 300)
    model = UnipForSemanticSegmentation.from_pretrained(folder)
    with torch.no_grad():  # class 299 wins everywhere
        model.decode_head.classifier.bias[299] = 1e4
    model.save_pretrained(folder)
    result = predict_images(str(folder), [str(images / "Misc_1.png")], tmp_path / "out", progress=False)
    mask = Image.open(result.written[0][1])
    assert mask.mode == "I;16" and set(np.unique(np.asarray(mask))) == {299}
    small = _save_model(tmp_path / "many-small", 300)  # a random head: ids of this image may all lie below 256
    result = predict_images(str(small), [str(images / "Misc_1.png")], tmp_path / "out2", progress=False)
    assert Image.open(result.written[0][1]).mode == "I;16"
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    (data / "classes.json").write_text(json.dumps([f"c{i}" for i in range(300)]))
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(data / "images" / "a.png")
    labels = np.zeros((8, 8), dtype=np.uint16)
    labels[:4], labels[4:, :2], labels[7, 7] = 299, 256, 255
    Image.fromarray(labels).save(data / "masks" / "a.png")
    stored = load_segmentation_dataset("folder", str(data), cache_dir=str(tmp_path / "cache"))[0]["label"]
    assert np.array_equal(np.asarray(stored), labels)


def test_radiometric_celsius_predicts_on_the_temperatures(binary_model, tmp_path, capsys):
    """Issue 24 item 12 on a real FLIR radiometric JPEG: `--radiometric celsius` clipped every temperature to 1.0 (a
    constant image, rc 0); it is now refused without `--intensity_range`, and with it the model sees the scene."""
    pytest.importorskip("flyr", reason="FLIR radiometric reading needs the [radiometric] extra (flyr)")
    jpeg = data_path("flir-radiometric", "flir_example.jpg")
    with pytest.raises(SystemExit) as caught:
        main(["predict", str(binary_model), str(jpeg), "--radiometric", "celsius", "--out", str(tmp_path / "o"),
              "--no_progress"])
    assert caught.value.code == 2 and "--intensity_range LO HI" in capsys.readouterr().err
    result = predict_images(str(binary_model), [str(jpeg)], tmp_path / "ok", radiometric="celsius",
                            intensity_range=(0, 50), progress=False)
    width, height = Image.open(result.written[0][1]).size
    shown = np.asarray(Image.open(result.written[0][2]))[22:22 + height, 8:8 + width]
    assert shown.std() > 10  # the temperatures' variation, not a constant 1.0
