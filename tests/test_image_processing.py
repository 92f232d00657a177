"""Tests of UnipImageProcessor: every accepted input kind, exact values, 16-bit scaling, label maps, errors, saving."""

import json

import numpy as np
import pytest
import torch
from conftest import data_path
from PIL import Image
from transformers import AutoImageProcessor

import unip_hf  # noqa: F401  (registers the Auto classes)
from unip_hf import UnipConfig, UnipImageProcessor

MEAN, STD = 0.3801, 0.1871
SIZE = {"height": 32, "width": 32}


def norm(intensity):
    return (np.float64(intensity) - MEAN) / STD


def luma(r, g, b):
    return 0.299 * r + 0.587 * g + 0.114 * b


@pytest.fixture
def processor():
    return UnipImageProcessor(size=SIZE)


@pytest.fixture
def raw_processor():
    """No resize, no normalisation: pixel_values are the [0, 1] intensity, replicated."""
    return UnipImageProcessor(do_resize=False, do_normalize=False)


def uniform(value, shape, dtype):
    return np.full(shape, value, dtype=dtype)


# ---------------------------------------------------------------- accepted inputs and their exact values
PIL_CASES = {
    "L": (lambda: Image.fromarray(uniform(128, (40, 48), np.uint8)), 128 / 255),
    "LA": (lambda: Image.fromarray(uniform(128, (40, 48), np.uint8)).convert("LA"), 128 / 255),
    "RGB": (lambda: Image.new("RGB", (48, 40), (200, 100, 50)), luma(200, 100, 50) / 255),
    "RGBA": (lambda: Image.new("RGBA", (48, 40), (200, 100, 50, 0)), luma(200, 100, 50) / 255),
    "I;16": (lambda: Image.fromarray(uniform(30000, (40, 48), np.uint16)), 30000 / 65535),
    "I": (lambda: Image.fromarray(uniform(30000, (40, 48), np.int32)), 30000 / 65535),
    "F": (lambda: Image.fromarray(uniform(0.25, (40, 48), np.float32)), 0.25),
}


def palette_image():
    image = Image.new("P", (48, 40), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * (256 * 3 - 6))
    return image


@pytest.mark.parametrize("mode", list(PIL_CASES))
def test_pil_modes_exact_value(processor, mode):
    make, intensity = PIL_CASES[mode]
    image = make()
    assert image.mode == mode
    # 16-bit data: fixed scaling gives the documented value (a constant image's percentile stretch falls back to it)
    out = processor(image, bit_depth_scaling="fixed", return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 32, 32) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), norm(intensity), rtol=1e-5, atol=1e-5)


def test_pil_palette_goes_through_palette(processor):
    out = processor(palette_image(), return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(out, norm(luma(200, 100, 50) / 255), rtol=1e-5, atol=1e-5)


def test_pil_other_colour_modes_via_rgb(raw_processor):
    image = Image.new("RGB", (8, 8), (10, 200, 30))
    ycbcr = image.convert("YCbCr")
    out = raw_processor(ycbcr)["pixel_values"][0, 0]
    expected = luma(*np.asarray(ycbcr.convert("RGB"))[0, 0].astype(float)) / 255
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_eight_bit_pixel_exact(processor):
    image = Image.fromarray(uniform(128, (32, 32), np.uint8))
    value = processor(image, return_tensors="pt")["pixel_values"][0, 0, 0, 0].item()
    assert value == pytest.approx((128 / 255 - 0.3801) / 0.1871, rel=1e-6)


NUMPY_CASES = [
    ((40, 48), np.uint8, 51, 51 / 255),
    ((40, 48, 1), np.uint8, 51, 51 / 255),
    ((1, 40, 48), np.uint8, 51, 51 / 255),
    ((40, 48, 3), np.uint8, 51, 51 / 255),
    ((3, 40, 48), np.uint8, 51, 51 / 255),
    ((40, 48, 4), np.uint8, 51, 51 / 255),
    ((40, 48), np.uint16, 6553.5, 0.1),
    ((40, 48, 1), np.uint16, 13107, 0.2),
    ((40, 48, 3), np.uint16, 13107, 0.2),
    ((40, 48), np.float16, 0.5, 0.5),
    ((40, 48), np.float32, 0.75, 0.75),
    ((40, 48, 3), np.float64, 0.125, 0.125),
    ((1, 40, 48), np.float32, 0.75, 0.75),
]


@pytest.mark.parametrize("shape,dtype,value,intensity", NUMPY_CASES)
def test_numpy_inputs(processor, shape, dtype, value, intensity):
    array = np.full(shape, value, dtype=dtype)
    out = processor(array, bit_depth_scaling="fixed", return_tensors="np")["pixel_values"]
    assert out.shape == (1, 3, 32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, norm(intensity), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "shape,dtype,value,intensity",
    [
        ((40, 48), torch.uint8, 51, 51 / 255),
        ((1, 40, 48), torch.uint8, 51, 51 / 255),
        ((3, 40, 48), torch.uint8, 51, 51 / 255),
        ((40, 48, 3), torch.uint8, 51, 51 / 255),
        ((3, 40, 48), torch.float32, 0.3, 0.3),
        ((40, 48), torch.bfloat16, 0.5, 0.5),
        ((40, 48), torch.uint16, 13107, 0.2),
    ],
)
def test_torch_inputs(processor, shape, dtype, value, intensity):
    tensor = torch.full(shape, value, dtype=dtype)
    out = processor(tensor, bit_depth_scaling="fixed", return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(out.numpy(), norm(intensity), rtol=1e-4, atol=1e-4)


def test_luma_of_varied_rgb_pixels(raw_processor):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    out = raw_processor(rgb)["pixel_values"][0, 0]
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # the same pixels channels-first, as a tensor, and as a PIL RGB image
    np.testing.assert_allclose(raw_processor(torch.from_numpy(rgb).permute(2, 0, 1))["pixel_values"][0, 0], out)
    np.testing.assert_allclose(raw_processor(Image.fromarray(rgb))["pixel_values"][0, 0], out)
    # PIL's own (integer-rounded) RGB->L agrees within one grey level
    pil_l = np.asarray(Image.fromarray(rgb).convert("L")) / 255
    np.testing.assert_allclose(out, pil_l, atol=1 / 255 + 1e-6)


def test_input_data_format_overrides_guess(raw_processor):
    array = np.zeros((3, 4, 3), dtype=np.uint8)
    array[0] = 255  # channels-first: first channel (R) fully on
    guess = raw_processor(array)["pixel_values"]
    forced = raw_processor(array, input_data_format="channels_first")["pixel_values"]
    assert guess.shape[-2:] == (3, 4)  # guessed channels-last: a 3x4 image
    assert forced.shape[-2:] == (4, 3)
    np.testing.assert_allclose(forced[0, 0], 0.299, atol=1e-6)


def test_batches_lists_and_paths(processor, tmp_path):
    batch4d = np.zeros((2, 40, 48, 3), dtype=np.uint8)
    assert processor(batch4d, return_tensors="pt")["pixel_values"].shape == (2, 3, 32, 32)
    mixed = [
        Image.new("L", (20, 30)),
        np.zeros((64, 50), np.uint16),
        torch.rand(1, 33, 33),
        [Image.new("RGB", (10, 10))],
    ]
    assert processor(mixed, return_tensors="pt")["pixel_values"].shape == (4, 3, 32, 32)
    raw = np.linspace(1000, 40000, 40 * 48).reshape(40, 48).astype(np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(raw).save(path)
    from_path = processor(str(path), return_tensors="np")["pixel_values"]
    from_array = processor(raw, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(from_path, from_array)  # the file kept its 16 bits
    np.testing.assert_array_equal(processor(path, return_tensors="np")["pixel_values"], from_array)


# ---------------------------------------------------------------- 16-bit scaling
def test_sixteen_bit_fixed_vs_percentile():
    raw = np.linspace(7000, 9000, 16 * 20).reshape(16, 20).astype(np.uint16)  # 14-bit-like counts, narrow band
    flat = raw.astype(np.float64)
    fixed = UnipImageProcessor(do_resize=False, do_normalize=False, bit_depth_scaling="fixed")
    np.testing.assert_allclose(fixed(raw)["pixel_values"][0, 0], flat / 65535, rtol=1e-6)
    ranged = UnipImageProcessor(
        do_resize=False, do_normalize=False, bit_depth_scaling="fixed", intensity_range=(7500, 8500)
    )
    np.testing.assert_allclose(ranged(raw)["pixel_values"][0, 0], np.clip((flat - 7500) / 1000, 0, 1), atol=1e-6)

    percentile = UnipImageProcessor(do_resize=False, do_normalize=False)  # the default
    assert percentile.bit_depth_scaling == "percentile" and list(percentile.percentiles) == [1.0, 99.0]
    lo, hi = np.percentile(flat, [1, 99])
    out = percentile(raw)["pixel_values"][0, 0]
    np.testing.assert_allclose(out, np.clip((flat - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert out.min() == 0.0 and out.max() == 1.0

    wide = UnipImageProcessor(do_resize=False, do_normalize=False, percentiles=(10, 90))
    lo, hi = np.percentile(flat, [10, 90])
    np.testing.assert_allclose(wide(raw)["pixel_values"][0, 0], np.clip((flat - lo) / (hi - lo), 0, 1), atol=1e-5)

    # a constant 16-bit image has no spread: the stretch falls back to the fixed range
    constant = np.full((8, 8), 8000, np.uint16)
    np.testing.assert_allclose(percentile(constant)["pixel_values"][0, 0], 8000 / 65535, rtol=1e-6)
    # 8-bit data are never stretched
    np.testing.assert_allclose(percentile(np.full((8, 8), 51, np.uint8))["pixel_values"][0, 0], 0.2, rtol=1e-6)


def test_float_inputs_range_and_clipping():
    proc = UnipImageProcessor(do_resize=False, do_normalize=False)
    temps = np.linspace(20.0, 40.0, 64, dtype=np.float32).reshape(8, 8)
    out = proc(temps, intensity_range=(20.0, 40.0))["pixel_values"][0, 0]
    np.testing.assert_allclose(out, (temps - 20) / 20, atol=1e-6)
    clipped = proc(np.array([[-0.5, 0.5], [1.0, 3.0]], np.float32))["pixel_values"][0, 0]
    np.testing.assert_allclose(clipped, [[0.0, 0.5], [1.0, 1.0]])


def test_do_rescale_false_keeps_raw_values():
    proc = UnipImageProcessor(do_resize=False, do_normalize=False, do_rescale=False)
    np.testing.assert_allclose(proc(np.full((4, 4), 1234, np.uint16))["pixel_values"], 1234.0)


# ---------------------------------------------------------------- geometry, channels, normalisation
def test_channel_replication():
    image = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    one = UnipImageProcessor(size=SIZE, num_channels=1)(image, return_tensors="pt")["pixel_values"]
    three = UnipImageProcessor(size=SIZE, num_channels=3)(image, return_tensors="pt")["pixel_values"]
    assert one.shape == (1, 1, 32, 32) and three.shape == (1, 3, 32, 32)
    for channel in range(3):
        torch.testing.assert_close(three[:, channel], one[:, 0])
    # per-call override
    assert UnipImageProcessor(size=SIZE)(image, num_channels=1)["pixel_values"].shape == (1, 1, 32, 32)


def test_per_channel_statistics():
    proc = UnipImageProcessor(do_resize=False, image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.5, 0.25])
    out = proc(np.full((4, 4), 0.5, np.float32))["pixel_values"][0]
    np.testing.assert_allclose(out[:, 0, 0], [(0.5 - 0.1) / 0.5, (0.5 - 0.2) / 0.5, (0.5 - 0.3) / 0.25], rtol=1e-6)
    with pytest.raises(ValueError, match="image_mean"):
        UnipImageProcessor(image_mean=[0.1, 0.2])(np.zeros((4, 4), np.uint8))


def test_resize_bilinear_and_aspect():
    proc = UnipImageProcessor(do_normalize=False, size={"shortest_edge": 32})
    out = proc(np.zeros((40, 80), np.uint8))["pixel_values"]
    assert out.shape == (1, 3, 32, 64)
    # bilinear keeps a constant image constant and a ramp monotonic
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    resized = UnipImageProcessor(size=SIZE, do_normalize=False)(ramp)["pixel_values"][0, 0]
    assert np.all(np.diff(resized[0]) > 0) and resized.min() >= 0 and resized.max() <= 1
    np.testing.assert_allclose(resized[:, 15:17].mean(), 0.5, atol=0.02)
    crop = UnipImageProcessor(
        size={"height": 40, "width": 40}, do_center_crop=True, crop_size={"height": 32, "width": 24}
    )
    assert crop(np.zeros((50, 50), np.uint8))["pixel_values"].shape == (1, 3, 32, 24)


def test_channels_last_output(processor):
    out = processor(np.zeros((40, 40), np.uint8), data_format="channels_last")["pixel_values"]
    assert out.shape == (1, 32, 32, 3)


# ---------------------------------------------------------------- segmentation maps
def test_segmentation_maps_nearest_exact(processor):
    rng = np.random.default_rng(2)
    labels = rng.choice(np.array([0, 1, 2, 255]), size=(16, 16))
    out = processor(np.zeros((16, 16), np.uint8), segmentation_maps=labels, return_tensors="pt")
    assert out["labels"].dtype == torch.int64 and out["labels"].shape == (1, 32, 32)
    np.testing.assert_array_equal(out["labels"][0].numpy(), np.repeat(np.repeat(labels, 2, 0), 2, 1))

    # odd ratios: values untouched (no interpolation) and the same sampling as PIL's NEAREST
    odd = rng.choice(np.array([0, 3, 7, 255]), size=(37, 50))
    got = processor(np.zeros((37, 50), np.uint8), segmentation_maps=odd)["labels"][0]
    assert set(np.unique(got)) <= {0, 3, 7, 255}
    pil = np.asarray(Image.fromarray(odd.astype(np.int32)).resize((32, 32), Image.NEAREST))
    np.testing.assert_array_equal(got, pil)


@pytest.mark.parametrize(
    "make_map",
    [
        lambda m: Image.fromarray(m.astype(np.uint8)),  # L
        lambda m: Image.fromarray(m.astype(np.uint8)).convert("P"),  # P: indices, not palette colours
        lambda m: m.astype(np.int64),
        lambda m: m.astype(np.uint8)[..., None],
        lambda m: torch.from_numpy(m.astype(np.int64))[None],
        lambda m: m.astype(np.float32),  # integral floats
    ],
)
def test_segmentation_map_kinds(processor, make_map):
    labels = np.zeros((32, 32), dtype=np.int64)
    labels[4:10, 4:10] = 1
    labels[20:, :] = 255
    seg = make_map(labels)
    if isinstance(seg, Image.Image) and seg.mode == "P":
        labels = np.asarray(seg).astype(np.int64)  # what a palette map holds are its indices
    out = processor(np.zeros((32, 32), np.uint8), segmentation_maps=seg)
    np.testing.assert_array_equal(out["labels"][0], labels)


def test_segmentation_maps_batch_and_bool(processor):
    images = [np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)]
    maps = np.stack([np.eye(32, dtype=np.int64), np.ones((32, 32), np.int64)])  # a 3-D batch of 2-D maps
    out = processor(images, segmentation_maps=maps, return_tensors="pt")
    assert out["labels"].shape == (2, 32, 32)
    assert out["labels"][1].unique().tolist() == [1]
    one_bit = Image.fromarray(np.eye(32, dtype=bool))
    assert one_bit.mode == "1"
    np.testing.assert_array_equal(processor(images[0], segmentation_maps=one_bit)["labels"][0], np.eye(32))


@pytest.mark.parametrize(
    "seg,message",
    [
        (Image.new("RGB", (32, 32)), "colour-coded"),
        (np.full((32, 32), 0.5, np.float32), "non-integral"),
        ([np.zeros((32, 32, 3), np.int64)], "must be 2-D"),
        (np.zeros((32, 32, 3), np.int64), r"32 segmentation maps \(a numpy array of shape \(32, 32, 3\).*batch"),
        (np.zeros((16, 16), np.int64), r"size \(16, 16\) but its image has size \(32, 32\)"),
        ([np.zeros((32, 32), np.int64)] * 2, "2 segmentation maps for 1 images"),
    ],
)
def test_bad_segmentation_maps(processor, seg, message):
    with pytest.raises(ValueError, match=message):
        processor(np.zeros((32, 32), np.uint8), segmentation_maps=seg)


# ---------------------------------------------------------------- bad images
@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((32, 32, 5), np.uint8), r"shape \(32, 32, 5\).*accepted images"),
        (np.zeros((32, 32, 2), np.uint8), r"2-channel image.*accepted images"),
        (np.zeros((0, 32), np.uint8), "empty image"),
        (np.zeros((32, 0, 3), np.float32), "empty image"),
        (Image.new("L", (0, 0)), "empty image"),
        (np.zeros((32, 32), bool), "boolean array is a mask.*segmentation_maps="),
        (np.zeros((32, 32), np.int64), "int64 arrays are label maps.*segmentation_maps="),
        (np.zeros((32, 32), np.int32), "int32 arrays are label maps.*segmentation_maps="),
        (torch.zeros(32, 32, dtype=torch.int64), "torch tensor.*label maps.*segmentation_maps="),
        (torch.zeros(32, 32, dtype=torch.bool), "boolean array is a mask"),
        (Image.new("1", (32, 32)), "mode '1'.*mask.*segmentation_maps="),
        (np.array([[0.5, np.nan], [0.1, 0.2]], np.float32), "NaN or infinite"),
        (np.array([[0.5, np.inf], [0.1, 0.2]], np.float64), "NaN or infinite"),
        (np.zeros((2, 2, 32, 32, 1), np.uint8), "accepted images"),
        (np.zeros((1, 2, 3, 4, 5), np.float32), "accepted images"),
        ("no/such/file.png", "no such image file"),
        (12, "type int"),
        ([], "empty list"),
    ],
)
def test_bad_images_raise_clear_errors(processor, image, message):
    with pytest.raises(ValueError, match=message) as error:
        processor(image)
    assert "Received" in str(error.value)


def test_five_dimensional_batch_message_names_shape(processor):
    with pytest.raises(ValueError, match=r"shape \(2, 2, 32, 32, 1\).*must be 2-D or 3-D"):
        processor(np.zeros((2, 2, 32, 32, 1), np.uint8))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"bit_depth_scaling": "minmax"}, "bit_depth_scaling"),
        ({"percentiles": (99, 1)}, "percentiles"),
        ({"intensity_range": (10, 10)}, "intensity_range"),
        ({"num_channels": 2}, "num_channels"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UnipImageProcessor(**kwargs)
    with pytest.raises(ValueError, match=message):
        UnipImageProcessor()(np.zeros((8, 8), np.uint8), **kwargs)


# ---------------------------------------------------------------- post-processing
class _Outputs:
    def __init__(self, logits):
        self.logits = logits


def test_post_process_semantic_segmentation(processor):
    logits = torch.randn(2, 3, 8, 8)
    maps = processor.post_process_semantic_segmentation(_Outputs(logits))
    assert len(maps) == 2 and all(m.shape == (8, 8) and m.dtype == torch.int64 for m in maps)
    torch.testing.assert_close(maps[0], logits[0].argmax(0))
    sized = processor.post_process_semantic_segmentation(_Outputs(logits), target_sizes=[(20, 30), (5, 7)])
    assert [tuple(m.shape) for m in sized] == [(20, 30), (5, 7)]
    sizes = torch.tensor([[16, 16]] * 2)
    as_tensor = processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=sizes)
    assert all(m.shape == (16, 16) for m in as_tensor)
    # a constant winning class survives the resize
    constant = torch.zeros(1, 3, 4, 4)
    constant[:, 2] = 5.0
    assert processor.post_process_semantic_segmentation(_Outputs(constant), [(9, 11)])[0].unique().tolist() == [2]
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_semantic_segmentation(_Outputs(logits), target_sizes=[(4, 4)])


# ---------------------------------------------------------------- saving and loading
def test_save_load_round_trip(tmp_path):
    proc = UnipImageProcessor(
        size={"height": 48, "width": 40},
        num_channels=1,
        bit_depth_scaling="fixed",
        intensity_range=(1000, 20000),
        percentiles=(2, 98),
        image_mean=[0.4],
        image_std=[0.2],
    )
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "UnipImageProcessor"
    assert saved["num_channels"] == 1 and saved["bit_depth_scaling"] == "fixed"
    assert saved["intensity_range"] == [1000.0, 20000.0] and saved["percentiles"] == [2.0, 98.0]
    assert saved["size"] == {"height": 48, "width": 40}

    for loaded in (UnipImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is UnipImageProcessor
        for key in ("num_channels", "bit_depth_scaling", "intensity_range", "percentiles", "image_mean", "image_std"):
            assert list(np.ravel(getattr(loaded, key))) == list(np.ravel(getattr(proc, key))), key
        raw = np.linspace(0, 30000, 50 * 60).reshape(50, 60).astype(np.uint16)
        np.testing.assert_array_equal(loaded(raw)["pixel_values"], proc(raw)["pixel_values"])
        assert loaded(raw)["pixel_values"].shape == (1, 1, 48, 40)


def test_from_model_config():
    config = UnipConfig.from_preset("unip-tiny", num_channels=1, image_size=64)
    proc = UnipImageProcessor.from_model_config(config)
    assert proc.num_channels == 1 and (proc.size.height, proc.size.width) == (64, 64)
    assert proc(np.zeros((10, 10), np.uint8))["pixel_values"].shape == (1, 1, 64, 64)


# ---------------------------------------------------------------- real infrared files
def test_real_sirst_images_mixed_modes():
    root = data_path("sirst")
    names = {"L": "Misc_1", "RGBA": "Misc_10", "RGB": "Misc_100", "P": "Misc_138"}
    raw = UnipImageProcessor(do_resize=False, do_normalize=False)
    proc = UnipImageProcessor(size={"height": 64, "width": 64})
    for mode, name in names.items():
        path = root / "images" / f"{name}.png"
        with Image.open(path) as image:
            assert image.mode == mode
            reference = np.asarray(image.convert("L"), dtype=np.float64) / 255
        intensity = raw(str(path))["pixel_values"][0, 0]
        assert intensity.shape == reference.shape
        np.testing.assert_allclose(intensity, reference, atol=1 / 255 + 1e-6)  # PIL rounds its luma
        mask_path = root / "masks" / f"{name}_pixels0.png"
        out = proc(str(path), segmentation_maps=str(mask_path), return_tensors="pt")
        assert out["pixel_values"].shape == (1, 3, 64, 64) and torch.isfinite(out["pixel_values"]).all()
        assert set(out["labels"].unique().tolist()) <= {0, 255}


def test_real_flir_radiometric_jpegs():
    root = data_path("flir-radiometric")
    paths = sorted(str(p) for p in root.glob("*.jpg"))
    assert paths
    out = UnipImageProcessor(size={"height": 64, "width": 64})(paths, return_tensors="pt")
    assert out["pixel_values"].shape == (len(paths), 3, 64, 64)
    assert torch.isfinite(out["pixel_values"]).all()
    assert out["pixel_values"].std() > 0.1  # real thermal content, not a constant


def test_remote_code_load_without_package(tmp_path):
    """A saved processor carries its file: it loads with trust_remote_code where unip_hf cannot be imported."""
    import os
    import subprocess
    import sys
    import textwrap

    proc = UnipImageProcessor(size={"height": 16, "width": 16}, num_channels=1, bit_depth_scaling="fixed")
    proc.save_pretrained(tmp_path)
    # the same mechanism as the models (configuration_unip.write_remote_code): the three files and the auto_map
    for name in ("configuration_unip.py", "modeling_unip.py", "image_processing_unip.py"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoImageProcessor": {"pil": "image_processing_unip.UnipImageProcessor"}}
    raw = np.linspace(0, 60000, 20 * 24).reshape(20, 24).astype(np.uint16)
    np.save(tmp_path / "raw.npy", raw)
    np.save(tmp_path / "expected.npy", proc(raw)["pixel_values"])
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "unip_hf" or name.startswith("unip_hf."):
                    raise ImportError("unip_hf is hidden")
        sys.meta_path.insert(0, Hide())
        import numpy as np
        from transformers import AutoImageProcessor
        directory = sys.argv[1]
        proc = AutoImageProcessor.from_pretrained(directory, trust_remote_code=True)
        assert "transformers_modules" in type(proc).__module__, type(proc).__module__
        out = proc(np.load(directory + "/raw.npy"))["pixel_values"]
        np.testing.assert_array_equal(out, np.load(directory + "/expected.npy"))
        print("remote ok")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote ok" in result.stdout


@pytest.mark.parametrize("byte_order", ["<u2", ">u2"])
def test_percentile_stretch_matches_numpy_for_both_byte_orders(byte_order):
    raw = np.random.default_rng(3).integers(0, 65536, (23, 29)).astype(byte_order)
    mode = "I;16B" if byte_order == ">u2" else "I;16"
    image = Image.frombytes(mode, (29, 23), raw.tobytes())
    assert image.mode == mode
    proc = UnipImageProcessor(do_resize=False, do_normalize=False, percentiles=(2.5, 97.5))
    values = raw.astype(np.float64)
    lo, hi = np.percentile(values, [2.5, 97.5])
    expected = np.clip((values - lo) / (hi - lo), 0, 1)
    for source in (image, raw):
        np.testing.assert_allclose(proc(source)["pixel_values"][0, 0], expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------- evaluation protocol
def test_img_scale_keeps_the_ratio_pads_to_the_divisor_and_post_processing_inverts_it(tmp_path):
    from unip_hf.models.image_processing_unip import keep_ratio_size

    processor = UnipImageProcessor(img_scale=[60, 44], size_divisor=8)
    assert keep_ratio_size(480, 640, (60, 44)) == (44, 59) and keep_ratio_size(222, 338, (44, 60)) == (39, 60)
    image = np.random.default_rng(0).integers(0, 256, (222, 338), dtype=np.uint8)
    mask = np.ones((222, 338), dtype=np.int64)
    out = processor(image, segmentation_maps=mask, return_tensors="pt")
    assert tuple(out["pixel_values"].shape) == (1, 3, 40, 64)  # 39x60 padded to multiples of 8
    unpadded = UnipImageProcessor(img_scale=[60, 44])(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(out["pixel_values"][:, :, :39, :60], unpadded)
    assert (out["pixel_values"][:, :, 39:] == 0).all() and (out["pixel_values"][:, :, :, 60:] == 0).all()
    assert (out["labels"][0, :39, :60] == 1).all() and (out["labels"][0, 39:] == 255).all()

    # logits that are class 1 exactly on the unpadded area come back as class 1 everywhere at the image size
    logits = torch.zeros(1, 2, 40, 64)
    logits[:, 1, :39, :60] = 1.0
    logits[:, 0, 39:, :] = logits[:, 0, :, 60:] = 5.0
    (label_map,) = processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=[(222, 338)])
    assert label_map.shape == (222, 338) and bool((label_map == 1).all())

    processor.save_pretrained(tmp_path)
    reloaded = UnipImageProcessor.from_pretrained(tmp_path)
    assert reloaded.img_scale == [60, 44] and reloaded.size_divisor == 8
    with pytest.raises(ValueError, match="img_scale"):
        UnipImageProcessor(img_scale=[60])
    with pytest.raises(ValueError, match="size_divisor"):
        UnipImageProcessor(size_divisor=0)


def test_gray_stored_as_rgb_decodes_exactly_like_l():
    from unip_hf.models.infrared_decoding import decode_intensity

    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(decode_intensity(np.stack([gray] * 3, -1)), decode_intensity(gray))
    assert np.array_equal(decode_intensity(Image.fromarray(gray).convert("RGB")), decode_intensity(Image.fromarray(gray)))


def test_resize_logits_are_what_post_processing_takes_the_argmax_of():
    """`resize_logits` (class probabilities at the image size, e.g. the Space's threshold) follows the evaluation
    protocol exactly as `post_process_semantic_segmentation` does: padding cropped, then resized."""
    processor = UnipImageProcessor(img_scale=[60, 44], size_divisor=8)
    logits = torch.randn(2, 3, 40, 64, generator=torch.Generator().manual_seed(0))
    sizes = [(222, 338), (30, 50)]
    resized = processor.resize_logits({"logits": logits}, sizes)
    maps = processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=sizes)
    assert [tuple(r.shape) for r in resized] == [(3, 222, 338), (3, 30, 50)]
    assert all(torch.equal(r.argmax(dim=0), m) for r, m in zip(resized, maps))
    with pytest.raises(ValueError, match="target sizes"):
        processor.resize_logits({"logits": logits}, sizes[:1])
