"""One decoding path for UNIP (Zhang et al., ICLR 2025) inputs: the segmentation builders, the training and evaluation
transforms, the image processor and the attention analysis read every file through
`infrared_decoding.decode_intensity` / `load_infrared_image`, so a float TIFF, an EXIF-rotated photo, a NaN
image, a truncated file or an oversized image is treated the same way everywhere."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from unip_hf import UnipImageProcessor
from unip_hf.models import infrared_decoding as ipu
from unip_hf.data import load_segmentation_dataset, segmentation_metadata
from unip_hf.data.transforms import (
    IndexedTransformDataset,
    PretrainTransform,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
)
from unip_hf.models.image_processing_unip import INFRARED_MEAN, INFRARED_STD
from unip_hf.models.infrared_decoding import MAX_IMAGE_PIXELS, InfraredImageError, decode_intensity, load_infrared_image


def _folder_set(root, images: dict, size=None) -> None:
    """A `folder` segmentation set: `images` maps a file name to a writer `f(path)`; masks are all background."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, write in images.items():
        path = root / "images" / name
        write(path)
        with Image.open(path) as im:
            w, h = size or im.size
        Image.fromarray(np.zeros((h, w), np.uint8)).save(root / "masks" / (os.path.splitext(name)[0] + ".png"))
    (root / "classes.txt").write_text("background\nwarm\n")


def _raw(dataset):
    """The data set with its image column undecoded (bytes), as the training data loaders read it."""
    import datasets

    return dataset.cast_column("image", datasets.Image(decode=False))


def _float_ramp(h=40, w=48) -> np.ndarray:
    return np.linspace(0.0, 1.0, h * w, dtype=np.float32).reshape(h, w)


# ------------------------------------------------------------------ item 3: float TIFFs, NaN
def test_float_tiff_keeps_its_grey_levels_in_builder_transform_and_processor(tmp_path):
    ramp = _float_ramp()
    _folder_set(tmp_path / "set", {"ramp.tif": lambda p: Image.fromarray(ramp, mode="F").save(p)})
    path = tmp_path / "set" / "images" / "ramp.tif"
    expected = UnipImageProcessor().to_intensity(str(path))
    np.testing.assert_allclose(expected, ramp, atol=1e-7)  # float data in [0, 1] keep their values
    assert len(np.unique(expected)) == ramp.size

    ds = load_segmentation_dataset("folder", str(tmp_path / "set"), "train", cache_dir=str(tmp_path / "cache"))
    stored = _raw(ds)[0]["image"]
    built = decode_intensity(stored)
    np.testing.assert_array_equal(built, expected)  # was {0, 1}: clipped and cast to uint16
    assert len(np.unique(built)) > 1000

    norm = (expected - INFRARED_MEAN) / INFRARED_STD
    for source in (stored, str(path)):
        out = SegmentationEvalTransform()(source)["pixel_values"]
        np.testing.assert_allclose(out[0].numpy(), norm, atol=1e-5)
        assert out.shape == (3, 40, 48)
    train = SegmentationTrainTransform(crop_size=(40, 48), base_size=(48, 40), ratio_range=(1.0, 1.0),
                                       cat_max_ratio=1.0, flip_prob=0.0, photometric=False)
    view = IndexedTransformDataset(ds, train, label_key="label")[0]["pixel_values"]
    np.testing.assert_allclose(view[0].numpy(), norm, atol=1e-5)


def test_float_tiff_with_intensity_range_is_scaled_the_same_way(tmp_path):
    celsius = 15.0 + 30.0 * _float_ramp()
    path = tmp_path / "celsius.tif"
    Image.fromarray(celsius, mode="F").save(path)
    processor = UnipImageProcessor(intensity_range=(15.0, 45.0))
    expected = processor.to_intensity(str(path))
    np.testing.assert_allclose(expected, _float_ramp(), atol=1e-6)
    out = SegmentationEvalTransform(image_processor=processor)(str(path))["pixel_values"][0].numpy()
    np.testing.assert_allclose(out, (expected - INFRARED_MEAN) / INFRARED_STD, atol=1e-5)


def test_nan_tiff_is_an_error_naming_the_file_and_a_skipped_pair_in_a_set(tmp_path, caplog):
    bad = _float_ramp()
    bad[3, 4] = np.nan
    _folder_set(tmp_path / "set", {
        "good.tif": lambda p: Image.fromarray(_float_ramp(), mode="F").save(p),
        "hot_nan.tif": lambda p: Image.fromarray(bad, mode="F").save(p),
    })
    path = str(tmp_path / "set" / "images" / "hot_nan.tif")
    for decode in (decode_intensity, UnipImageProcessor().to_intensity, SegmentationEvalTransform(),
                   lambda p: UnipImageProcessor()(p)):
        with pytest.raises(InfraredImageError, match=r"hot_nan\.tif.*NaN or infinite"):
            decode(path)
    with caplog.at_level(logging.WARNING):
        ds = load_segmentation_dataset("folder", str(tmp_path / "set"), "train", cache_dir=str(tmp_path / "c"))
    assert list(ds["id"]) == ["good"]
    assert "hot_nan.tif" in caplog.text
    skipped = segmentation_metadata(ds)["skipped"]
    assert len(skipped) == 1 and skipped[0]["file"].endswith("hot_nan.tif") and "NaN" in skipped[0]["error"]


# ------------------------------------------------------------------ item 7: EXIF orientation
def _exif_rotated(path, array: np.ndarray, fmt: str) -> None:
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(path, format=fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("fmt,name", [("PNG", "photo.png"), ("JPEG", "photo.jpg")])
def test_exif_orientation_is_applied_in_training_and_in_the_processor(tmp_path, fmt, name):
    yy, xx = np.mgrid[0:24, 0:40]
    array = (xx * 6 + yy * 2).astype(np.uint8)  # 40 wide, 24 high as stored; brighter to the right
    _folder_set(tmp_path / "set", {name: lambda p: _exif_rotated(p, array, fmt)}, size=(24, 40))
    path = tmp_path / "set" / "images" / name
    with Image.open(path) as im:
        im.load()
        upright = np.asarray(im.transpose(Image.Transpose.ROTATE_270))  # what a viewer shows: 24 wide, 40 high
    assert upright.shape == (40, 24)

    processor = UnipImageProcessor()
    expected = processor.to_intensity(str(path))
    np.testing.assert_allclose(expected, upright / 255.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(load_infrared_image(str(path))), upright)

    ds = load_segmentation_dataset("folder", str(tmp_path / "set"), "train", cache_dir=str(tmp_path / "cache"))
    np.testing.assert_allclose(decode_intensity(_raw(ds)[0]["image"]), expected, atol=1e-6)
    norm = (expected - INFRARED_MEAN) / INFRARED_STD
    np.testing.assert_allclose(SegmentationEvalTransform()(str(path))["pixel_values"][0].numpy(), norm, atol=1e-5)
    train = SegmentationTrainTransform(crop_size=(40, 24), base_size=(40, 24), ratio_range=(1.0, 1.0),
                                       cat_max_ratio=1.0, flip_prob=0.0, photometric=False)
    view = IndexedTransformDataset(ds, train, label_key="label")[0]["pixel_values"]
    np.testing.assert_allclose(view[0].numpy(), norm, atol=1e-5)
    # pre-training views crop the upright image (a JPEG is decoded straight to luma, here at full scale) ...
    pretrain = PretrainTransform(size=24, scale=(1.0, 1.0), ratio=(24 / 40, 24 / 40), flip_prob=0.0)
    torch.testing.assert_close(pretrain(str(path), index=0), pretrain(Image.fromarray(upright), index=0))
    # ... also when the JPEG is decoded at reduced scale (1/2 here, for an 8-pixel view)
    small = PretrainTransform(size=8, scale=(1.0, 1.0), ratio=(24 / 40, 24 / 40), flip_prob=0.0)
    view, reference = small(str(path), index=0)[0].numpy(), small(Image.fromarray(upright), index=0)[0].numpy()
    assert np.corrcoef(view.ravel(), reference.ravel())[0, 1] > 0.98
    assert np.abs(view - reference).max() < 0.2 / INFRARED_STD


# ------------------------------------------------------------------ item 10: pixel limit
def test_pixel_limit_is_documented_configurable_and_names_the_file(tmp_path, monkeypatch):
    assert MAX_IMAGE_PIXELS == 64_000_000
    _folder_set(tmp_path / "set", {
        "small.png": lambda p: Image.fromarray(np.zeros((4, 5), np.uint8)).save(p),
        "large.png": lambda p: Image.fromarray(np.zeros((20, 30), np.uint8)).save(p),
    })
    path = str(tmp_path / "set" / "images" / "large.png")
    with pytest.raises(InfraredImageError, match=r"large\.png: 30x20 = 600 pixels exceeds the limit of 100"):
        load_infrared_image(path, max_pixels=100)
    assert load_infrared_image(path, max_pixels=600).size == (30, 20)
    monkeypatch.setattr(ipu, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InfraredImageError, match=r"large\.png.*MAX_IMAGE_PIXELS"):
        UnipImageProcessor()(path)
    with pytest.raises(InfraredImageError, match=r"large\.png"):
        SegmentationEvalTransform()(path)
    ds = load_segmentation_dataset("folder", str(tmp_path / "set"), "train", cache_dir=str(tmp_path / "cache"))
    assert list(ds["id"]) == ["small"]
    assert "exceeds the limit" in segmentation_metadata(ds)["skipped"][0]["error"]


# ------------------------------------------------------------------ item 12: truncated files in segmentation sets
def _truncated_png(path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_truncated_image_in_a_segmentation_set_is_skipped_and_named(tmp_path, capsys):
    good = lambda p: Image.fromarray(np.full((32, 32), 90, np.uint8)).save(p)  # noqa: E731
    _folder_set(tmp_path / "set", {"a.png": good, "b.png": good, "cut.png": good})
    _truncated_png(tmp_path / "set" / "images" / "cut.png")
    with pytest.raises(InfraredImageError, match=r"cut\.png.*truncated or corrupt"):
        load_infrared_image(str(tmp_path / "set" / "images" / "cut.png"))

    from unip_hf.data.segmentation import GenericFolderBuilder

    builder = GenericFolderBuilder(data_dir=str(tmp_path / "set"), cache_dir=str(tmp_path / "c1"))
    builder.download_and_prepare()  # was a bare DatasetGenerationError
    assert len(builder.as_dataset("train")) == 2 and builder.skipped[0]["file"].endswith("cut.png")

    from unip_hf.cli import main

    code = main(["data", "inspect", "folder", "--data_dir", str(tmp_path / "set"), "--out", str(tmp_path / "o"),
                 "--cache-dir", str(tmp_path / "c2")])
    printed = capsys.readouterr().out
    assert code == 0 and "2 examples" in printed and "skipped 1 unreadable pair" in printed and "cut.png" in printed


def test_a_set_whose_every_image_is_unreadable_is_an_error_naming_them(tmp_path):
    _folder_set(tmp_path / "set", {"cut.png": lambda p: Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)})
    _truncated_png(tmp_path / "set" / "images" / "cut.png")
    with pytest.raises(ValueError, match=r"no readable image.*cut\.png"):
        load_segmentation_dataset("folder", str(tmp_path / "set"), "train", cache_dir=str(tmp_path / "cache"))


# ------------------------------------------------------------------ item 11: attention analysis skips bad files
def test_analyze_attention_skips_names_and_counts_dangling_links_and_nan_tiffs(tmp_path, capsys):
    from unip_hf import UnipConfig, UnipViTModel
    from unip_hf.cli import main

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(images / f"ok{i}.png")
    os.symlink(tmp_path / "gone.png", images / "dangling.png")
    bad = _float_ramp(40, 40)
    bad[0, 0] = np.nan
    Image.fromarray(bad, mode="F").save(images / "nan.tif")
    torch.manual_seed(0)
    UnipViTModel(UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                            patch_size=8)).save_pretrained(tmp_path / "tiny")
    code = main(["analyze-attention", str(tmp_path / "tiny"), "--images", str(images), "--num-images", "8",
                 "--image-size", "32", "--out", str(tmp_path / "out"), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped 2 unreadable or unusable file(s)" in printed and "dangling.png" in printed and "nan.tif" in printed

    from unip_hf.analysis.attention_analysis import AttentionReport

    report = AttentionReport.load(tmp_path / "out" / "report.json")
    assert report.num_images == 3 and len(report.skipped_images) == 2
    assert any("NaN" in item for item in report.skipped_images)


def test_analysis_preprocessing_uses_the_processor_decoding():
    """The analysis' own preprocessor (for non-UNIP models) decodes like the processor: 16-bit percentile stretch."""
    from unip_hf.analysis.attention_analysis import SimplePreprocessor

    raw = (7000 + 900 * np.random.default_rng(0).random((32, 32))).astype(np.uint16)
    out = SimplePreprocessor(32, num_channels=1)([Image.fromarray(raw)])[0, 0].numpy()
    expected = (decode_intensity(Image.fromarray(raw)) - INFRARED_MEAN) / INFRARED_STD
    np.testing.assert_allclose(out, expected, atol=1e-5)


# ------------------------------------------------------------------ InfMix and pre-training read the same way
def test_infmix_build_decodes_like_training(tmp_path):
    from unip_hf.data import InfMix

    root = tmp_path / "root"
    (root / "infrared" / "cam").mkdir(parents=True)
    (root / "rgb" / "photos").mkdir(parents=True)
    Image.fromarray(_float_ramp(), mode="F").save(root / "infrared" / "cam" / "ramp.tif")
    bad = _float_ramp()
    bad[1, 1] = np.inf
    Image.fromarray(bad, mode="F").save(root / "infrared" / "cam" / "inf.tif")
    _truncated_png(root / "infrared" / "cam" / "cut.png")
    yy, xx = np.mgrid[0:24, 0:40]
    colour = np.stack([xx * 6, yy * 4, (xx + yy) * 2], axis=-1).astype(np.uint8)
    image = Image.fromarray(colour)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(root / "rgb" / "photos" / "turned.png", exif=exif.tobytes())

    builder = InfMix(config_name="full", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    ds = builder.as_dataset("train")
    unreadable = {os.path.basename(item["file"]): item["error"] for item in builder.report["unreadable"]}
    assert set(unreadable) == {"inf.tif", "cut.png"} and "NaN or infinite" in unreadable["inf.tif"]
    rows = {row["file"]: row for row in _raw(ds)}
    np.testing.assert_array_equal(decode_intensity(rows["ramp.tif"]["image"]), _float_ramp())  # float kept
    turned = rows["turned.png"]
    assert (turned["width"], turned["height"]) == (24, 40)  # as displayed
    expected = decode_intensity(str(root / "rgb" / "photos" / "turned.png"))
    np.testing.assert_allclose(decode_intensity(turned["image"]), expected, atol=0.5 / 255 + 1e-6)  # 8-bit luma


def test_pretraining_skips_an_oversized_image_naming_it(tmp_path, monkeypatch, caplog):
    from unip_hf.data.pretraining_data import PretrainImageDataset

    for name, side in (("a.png", 8), ("huge.png", 40)):
        Image.fromarray(np.full((side, side), 100, np.uint8)).save(tmp_path / name)
    monkeypatch.setattr(ipu, "MAX_IMAGE_PIXELS", 1000)
    dataset = PretrainImageDataset([str(tmp_path / "huge.png"), str(tmp_path / "a.png")],
                                   PretrainTransform(size=8, seed=0))
    with caplog.at_level(logging.WARNING):
        assert dataset[0]["pixel_values"].shape == (3, 8, 8)
    assert dataset.skipped_at_load == 1 and "huge.png" in caplog.text and "exceeds the limit" in caplog.text
