"""FLIR radiometric JPEGs: raw thermal counts and temperatures through `load_infrared_image(radiometric=...)` (flyr),
the processor, the data builders and the transforms, on the three real files of the shared data; the missing-extra
error. And a genuine 16-bit thermal frame (the FLIR raw counts saved as a 16-bit PNG) through both pipelines."""

import logging
import sys

import numpy as np
import pytest
import torch
from conftest import data_path
from PIL import Image

from unip_hf import UnipImageProcessor
from unip_hf.models.infrared_decoding import InfraredImageError, decode_intensity, load_infrared_image, to_intensity_image

pytest.importorskip("flyr", reason="the `radiometric` extra (flyr) is not installed: pip install 'unip-hf[radiometric]'")

#: file -> (thermal width, height), preview (width, height), plausible temperature range of the scene in degrees C
READABLE = {
    "flir_example.jpg": ((240, 320), (480, 640), (20.0, 70.0)),
    "ax8.jpg": ((80, 60), (640, 480), (20.0, 30.0)),
}


def flir(name):
    return str(data_path("flir-radiometric", name))


@pytest.mark.parametrize("name", sorted(READABLE))
def test_raw_counts_and_celsius_from_real_flir_files(name):
    thermal_size, preview_size, (t_lo, t_hi) = READABLE[name]
    raw = load_infrared_image(flir(name), radiometric="raw")
    assert raw.mode == "I;16" and raw.size == thermal_size and raw.filename == flir(name)
    counts = np.asarray(raw)
    assert counts.dtype == np.uint16 and 1000 < counts.min() < counts.max() < 2 ** 16 - 1  # a band of raw counts
    celsius = load_infrared_image(flir(name), radiometric="celsius")
    assert celsius.mode == "F" and celsius.size == thermal_size
    temperatures = np.asarray(celsius)
    assert t_lo < temperatures.min() < temperatures.max() < t_hi  # an indoor / outdoor scene, not Kelvin, not counts
    # the calibration is monotonic: hotter pixels have more counts
    order = np.argsort(counts.ravel(), kind="stable")
    assert np.all(np.diff(temperatures.ravel()[order]) >= -1e-4)
    # the preview is another image (false colour at the camera's display size), not the thermal data
    preview = load_infrared_image(flir(name), radiometric="preview")
    assert preview.mode == "RGB" and preview.size == preview_size
    preview_intensity = np.asarray(
        Image.fromarray(decode_intensity(preview)).resize(thermal_size, Image.BILINEAR), dtype=np.float32
    )
    raw_intensity = decode_intensity(flir(name), radiometric="raw")
    assert raw_intensity.shape == (thermal_size[1], thermal_size[0])
    assert np.abs(preview_intensity - raw_intensity).mean() > 0.05


def test_default_reads_the_preview_and_warns_once(caplog, monkeypatch):
    import unip_hf.models.infrared_decoding as ipu

    monkeypatch.setattr(ipu, "_PREVIEW_WARNED", [])
    with caplog.at_level(logging.WARNING, logger="unip_hf.models.infrared_decoding"):
        first = load_infrared_image(flir("flir_example.jpg"))
        load_infrared_image(flir("ax8.jpg"))
    assert first.mode == "RGB" and first.size == (480, 640)  # today's behaviour, whatever is installed
    warnings = [r.getMessage() for r in caplog.records if "FLIR radiometric JPEG" in r.getMessage()]
    assert len(warnings) == 1 and "flir_example.jpg" in warnings[0] and "radiometric='raw'" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unip_hf.models.infrared_decoding"):
        monkeypatch.setattr(ipu, "_PREVIEW_WARNED", [])
        load_infrared_image(flir("ax8.jpg"), radiometric="preview")  # asked for: no warning
    assert "FLIR radiometric JPEG" not in caplog.text


def test_unsupported_flir_layout_and_non_flir_files_are_named():
    # DJI Zenmuse XT-R: little-endian FFF records that flyr 5.1 does not read; refused from the header, at once
    with pytest.raises(InfraredImageError, match=r"zenmuse_xtr\.jpg: its FLIR thermal data cannot be read by flyr"):
        load_infrared_image(flir("zenmuse_xtr.jpg"), radiometric="raw")
    assert load_infrared_image(flir("zenmuse_xtr.jpg"), radiometric="preview").size == (640, 512)
    sirst = str(data_path("sirst", "images", "Misc_1.png"))
    with pytest.raises(InfraredImageError, match=r"Misc_1\.png: holds no FLIR radiometric data"):
        load_infrared_image(sirst, radiometric="celsius")
    with pytest.raises(ValueError, match="`radiometric` must be one of"):
        load_infrared_image(sirst, radiometric="kelvin")


def test_missing_extra_names_the_file_and_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "flyr", None)  # `import flyr` now raises ImportError, as without the extra
    with pytest.raises(ImportError) as info:
        load_infrared_image(flir("ax8.jpg"), radiometric="raw")
    message = str(info.value)
    assert "ax8.jpg" in message and 'pip install "unip-hf[radiometric]"' in message
    assert load_infrared_image(flir("ax8.jpg"), radiometric="preview").mode == "RGB"  # the preview needs no extra


def test_processor_raw_and_celsius_go_through_the_intensity_scaling(tmp_path):
    path = flir("flir_example.jpg")
    counts = np.asarray(load_infrared_image(path, radiometric="raw"))
    raw = UnipImageProcessor(radiometric="raw", do_resize=False, do_normalize=False)
    pixels = raw(path, return_tensors="np")["pixel_values"][0, 0]
    # the 16-bit path: per-image 1-99 percentile stretch of the counts, exactly as for a uint16 array
    np.testing.assert_allclose(pixels, decode_intensity(counts), atol=1e-6)
    lo, hi = np.percentile(counts, [1, 99])
    np.testing.assert_allclose(pixels, np.clip((counts - lo) / (hi - lo), 0, 1), atol=1e-5)
    with pytest.raises(ValueError, match="intensity_range"):
        UnipImageProcessor(radiometric="celsius")
    celsius = UnipImageProcessor(radiometric="celsius", intensity_range=(20, 70), do_resize=False, do_normalize=False)
    temperatures = np.asarray(load_infrared_image(path, radiometric="celsius"))
    np.testing.assert_allclose(celsius(path)["pixel_values"][0, 0], (temperatures - 20) / 50, atol=1e-5)
    # saved with the model, so inference reads what training read
    celsius.save_pretrained(tmp_path)
    assert UnipImageProcessor.from_pretrained(tmp_path).radiometric == "celsius"


def test_builders_and_transforms_read_the_thermal_data(tmp_path):
    from unip_hf.data.segmentation import SegmentationSpec, load_segmentation_dataset
    from unip_hf.data.transforms import PretrainTransform, SegmentationEvalTransform

    path = flir("flir_example.jpg")
    stored = to_intensity_image(path, radiometric="raw")
    assert stored.mode == "I;16" and stored.size == (240, 320)
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "frame.jpg").write_bytes(open(path, "rb").read())
    mask = np.zeros((320, 240), np.uint8)
    mask[100:200, 50:150] = 1
    Image.fromarray(mask).save(root / "masks" / "frame.png")
    spec = SegmentationSpec("flir", ("background", "warm"))
    ds = load_segmentation_dataset("folder", str(root), split="train", cache_dir=str(tmp_path / "cache"), spec=spec,
                                   radiometric="raw")
    assert ds[0]["image"].mode == "I;16" and np.array_equal(np.asarray(ds[0]["image"]), np.asarray(stored))
    processor = UnipImageProcessor(radiometric="raw")
    view = PretrainTransform(size=32, image_processor=processor)(path, index=0)
    assert view.shape == (3, 32, 32) and torch.isfinite(view).all()
    evaluated = SegmentationEvalTransform(image_processor=processor)(path)
    assert evaluated["pixel_values"].shape[-2:] == (320, 240)


def test_genuine_16bit_thermal_frame_through_both_pipelines_and_unip_predict(tmp_path):
    """FLIR raw counts saved as a 16-bit PNG: the 16-bit pipeline feeds the model the counts (percentile stretch);
    the stock pipeline's loader converts to RGB and clips every count above 255, so the model sees a constant image
    (the documented reason for `UnipImageSegmentationPipeline`)."""
    from transformers import pipeline

    from unip_hf import UnipConfig, UnipForSemanticSegmentation
    from unip_hf.models.pipeline_unip import UnipImageSegmentationPipeline

    counts = np.asarray(load_infrared_image(flir("flir_example.jpg"), radiometric="raw"))
    frame = tmp_path / "flir_raw16.png"
    Image.fromarray(counts).save(frame)
    with Image.open(frame) as reread:
        assert reread.mode in ("I;16", "I") and np.array_equal(np.asarray(reread), counts)  # genuinely 16 bits
    assert counts.min() > 255  # 14-bit camera counts: all above the 8-bit range
    config = UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8, num_labels=2, decode_head="linear_probe",
                        id2label={0: "background", 1: "warm"}, label2id={"background": 0, "warm": 1})
    torch.manual_seed(0)
    UnipForSemanticSegmentation(config).save_pretrained(tmp_path / "model")
    processor = UnipImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path / "model")
    unip = pipeline("image-segmentation", model=str(tmp_path / "model"), pipeline_class=UnipImageSegmentationPipeline)
    stock = pipeline("image-segmentation", model=str(tmp_path / "model"))
    kept = unip.preprocess(str(frame))["pixel_values"].numpy()
    np.testing.assert_allclose(kept, processor(counts, return_tensors="np")["pixel_values"], atol=1e-6)
    assert kept.std() > 0.5  # the thermal scene, stretched between its 1st and 99th percentiles
    clipped = stock.preprocess(str(frame))["pixel_values"].numpy()
    np.testing.assert_allclose(clipped, processor(np.full(counts.shape, 255, np.uint8), return_tensors="np")[
        "pixel_values"], atol=1e-6)  # every count clipped to 255: a constant image
    for segmenter in (unip, stock):
        segments = segmenter(str(frame))
        assert segments and {s["mask"].size for s in segments} == {(240, 320)}
        assert {s["label"] for s in segments} <= {"background", "warm"}
    # `unip predict` reads the same 16-bit frame like the 16-bit pipeline, and the radiometric JPEG itself with
    # --radiometric raw gives the same counts, so the same masks
    from unip_hf.cli import main

    assert main(["predict", str(tmp_path / "model"), str(frame), "--out", str(tmp_path / "from_png"),
                 "--no_progress"]) == 0
    assert main(["predict", str(tmp_path / "model"), str(flir("flir_example.jpg")), "--radiometric", "raw",
                 "--out", str(tmp_path / "from_jpeg"), "--no_progress"]) == 0
    from_png = np.asarray(Image.open(tmp_path / "from_png" / "flir_raw16_mask.png"))
    from_jpeg = np.asarray(Image.open(tmp_path / "from_jpeg" / "flir_example_mask.png"))
    assert from_png.shape == counts.shape and np.array_equal(from_png, from_jpeg)
    with torch.no_grad():
        logits = UnipForSemanticSegmentation.from_pretrained(tmp_path / "model")(
            torch.from_numpy(kept)).logits
    expected = torch.nn.functional.interpolate(logits, size=counts.shape, mode="bilinear", align_corners=False)
    agree = (expected.argmax(1)[0].numpy() == from_png).mean()
    assert agree > 0.99  # the pipeline's own prediction, up to resizing at class boundaries
