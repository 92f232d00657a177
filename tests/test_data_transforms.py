"""Tests of the UNIP (Zhang et al., ICLR 2025) data transforms and synthetic scenes: shapes, normalisation,
reproducibility across DataLoader workers, crop rules, sliding windows."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from unip_hf.data import (
    UNIP_MEAN,
    UNIP_STD,
    IndexedTransformDataset,
    PretrainTransform,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    make_thermal_scene,
    write_synthetic_dataset,
)
from unip_hf.evaluation.inference import merge_window_logits, sliding_window_inference, sliding_window_positions


def _jpeg(h=300, w=400, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def test_pretrain_transform_output_and_seeding():
    t = PretrainTransform(seed=3)
    x = t(_jpeg(), index=5)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x[0], x[2])
    assert torch.equal(x, PretrainTransform(seed=3)(_jpeg(), index=5))
    assert not torch.equal(x, t(_jpeg(), index=6))
    t.set_epoch(1)
    assert not torch.equal(x, t(_jpeg(), index=5))
    flat = PretrainTransform(scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), flip_prob=0.0)
    const = Image.fromarray(np.full((60, 80), 200, np.uint8))
    val = flat(const, index=0)
    assert torch.allclose(val, torch.full_like(val, (200 / 255 - UNIP_MEAN) / UNIP_STD), atol=1e-5)
    x16 = PretrainTransform(num_channels=1)(Image.fromarray(np.full((64, 64), 65535, np.uint16)), index=0)
    assert x16.shape == (1, 224, 224) and torch.allclose(x16, torch.full_like(x16, (1 - UNIP_MEAN) / UNIP_STD), atol=1e-4)


def test_reproducible_across_workers(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"image": [{"bytes": _jpeg(seed=i), "path": None} for i in range(6)]},
                                    features=datasets.Features({"image": datasets.Image()}))
    wrapped = IndexedTransformDataset(ds, PretrainTransform(seed=1))
    runs = []
    for workers in (0, 2):
        dl = torch.utils.data.DataLoader(wrapped, batch_size=3, num_workers=workers)
        runs.append(torch.cat([b["pixel_values"] for b in dl]))
    assert torch.equal(runs[0], runs[1])


def test_segmentation_train_transform():
    image, mask = make_thermal_scene(120, 160, seed=1)
    t = SegmentationTrainTransform(crop_size=96, base_size=(160, 120), seed=0)
    out = t(Image.fromarray(image), Image.fromarray(mask), index=0)
    assert out["pixel_values"].shape == (3, 96, 96) and out["labels"].shape == (96, 96)
    assert out["labels"].dtype == torch.int64
    again = SegmentationTrainTransform(crop_size=96, base_size=(160, 120), seed=0)(Image.fromarray(image), Image.fromarray(mask), index=0)
    assert torch.equal(out["pixel_values"], again["pixel_values"]) and torch.equal(out["labels"], again["labels"])
    assert set(out["labels"].unique().tolist()) <= set(range(5)) | {255}
    # small images are padded with the ignore index
    small = SegmentationTrainTransform(crop_size=256, base_size=(160, 120), ratio_range=(0.5, 0.5), seed=0)
    o = small(Image.fromarray(image), Image.fromarray(mask), index=0)
    assert o["labels"].shape == (256, 256) and (o["labels"][-1] == 255).all() and (o["labels"][:, -1] == 255).all()
    with pytest.raises(ValueError, match="differs"):
        t(Image.fromarray(image), Image.fromarray(mask[:-1]), index=0)


def test_cat_max_ratio_prefers_mixed_crops():
    mask = np.zeros((200, 200), np.uint8)
    mask[150:, 150:] = 1
    img = Image.fromarray(np.zeros((200, 200), np.uint8))
    mixed = {}
    for ratio in (1.0, 0.75):
        t = SegmentationTrainTransform(crop_size=80, base_size=(200, 200), ratio_range=(1.0, 1.0), cat_max_ratio=ratio,
                                       photometric=False, flip_prob=0.0, seed=0)
        mixed[ratio] = sum(len(t(img, Image.fromarray(mask), index=i)["labels"].unique()) > 1 for i in range(30))
    assert mixed[0.75] > mixed[1.0]


def test_eval_and_sliding_window():
    image, mask = make_thermal_scene(100, 130, seed=2)
    out = SegmentationEvalTransform()(Image.fromarray(image), Image.fromarray(mask))
    assert out["pixel_values"].shape == (3, 100, 130) and torch.equal(out["labels"], torch.from_numpy(mask.astype(np.int64)))
    assert SegmentationEvalTransform(size=50)(Image.fromarray(image))["pixel_values"].shape == (3, 50, 65)
    boxes = sliding_window_positions(100, 130, (64, 64), (40, 40))
    cover = np.zeros((100, 130), int)
    for y0, x0, y1, x1 in boxes:
        assert (y1 - y0, x1 - x0) == (64, 64)
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    x = out["pixel_values"][None]
    model = lambda v: torch.cat([v[:, :1], -v[:, :1]], 1)  # noqa: E731  a per-pixel "model"
    logits = sliding_window_inference(model, x, window=(64, 64), stride=(40, 40))
    assert torch.allclose(logits, model(x), atol=1e-6)
    small = sliding_window_inference(model, x[:, :, :30, :30], window=(64, 64), stride=(40, 40))
    assert small.shape == (1, 2, 30, 30)
    with pytest.raises(ValueError):
        merge_window_logits([torch.zeros(1, 1, 2, 2)], [(0, 0, 2, 2)], 4, 4)


def test_synthetic_scenes(tmp_path):
    a, m = make_thermal_scene(64, 96, seed=4, num_hot_targets=(2, 2))
    b, n = make_thermal_scene(64, 96, seed=4, num_hot_targets=(2, 2))
    assert np.array_equal(a, b) and np.array_equal(m, n)
    assert a.shape == m.shape == (64, 96) and a.dtype == np.uint8 and m.max() <= 4 and (m == 4).any()
    # objects are warmer than the background on average
    assert a[(m > 0) & (m < 4)].mean() > a[m == 0].mean()
    img16, _ = make_thermal_scene(33, 47, seed=5, bit_depth=16)
    assert img16.dtype == np.uint16 and img16.shape == (33, 47)
    dd = write_synthetic_dataset(str(tmp_path / "syn"), num_train=3, num_val=2, height=40, width=50,
                                 cache_dir=str(tmp_path / "cache"))
    assert len(dd["train"]) == 3 and len(dd["val"]) == 2
    assert (tmp_path / "syn" / "images" / "train" / "scene_00000.png").exists()
    assert dd["train"][0]["image"].size == (50, 40)


def test_high_depth_images_scaled_like_the_image_processor():
    """16-bit frames are stretched exactly as UnipImageProcessor does it, before any crop (one owner of decoding)."""
    import numpy as np
    from PIL import Image

    from unip_hf import UnipImageProcessor
    from unip_hf.data.transforms import SegmentationEvalTransform, to_working_image

    rng = np.random.default_rng(0)
    raw = (7000 + 900 * rng.random((48, 64))).astype(np.uint16)  # a 14-bit-camera-like narrow range
    frame = Image.fromarray(raw)
    processor = UnipImageProcessor()
    working = to_working_image(frame)
    assert working.mode == "F"
    np.testing.assert_allclose(np.asarray(working), processor.to_intensity(frame), atol=1e-6)
    assert np.asarray(working).max() > 0.9  # stretched, not divided by 65535
    out = SegmentationEvalTransform()(frame)["pixel_values"][0].numpy()
    expected = (processor.to_intensity(frame) - 0.3801) / 0.1871
    np.testing.assert_allclose(out, expected, atol=1e-5)
    fixed = UnipImageProcessor(bit_depth_scaling="fixed")
    np.testing.assert_allclose(np.asarray(to_working_image(frame, fixed)), raw / 65535.0, atol=1e-6)


def test_crops_keep_small_targets():
    """When no crop meets cat_max_ratio (a 3x3 target in a 200x300 frame), a crop showing the target is preferred."""
    import numpy as np
    from PIL import Image

    from unip_hf.data.transforms import SegmentationTrainTransform

    image = Image.fromarray((np.arange(200 * 300) % 251).astype(np.uint8).reshape(200, 300))
    label = np.zeros((200, 300), dtype=np.uint8)
    label[100:103, 150:153] = 1
    transform = SegmentationTrainTransform(crop_size=64, base_size=(300, 200), ratio_range=(1.0, 1.0), seed=0,
                                           photometric=False, flip_prob=0.0)
    shown = sum(int((transform(image, Image.fromarray(label), index=i)["labels"] == 1).any()) for i in range(40))
    assert shown >= 30  # a random 64x64 crop alone shows it about 1 time in 5


def test_pretrain_transform_keeps_colour_without_grayscale():
    from unip_hf.data.transforms import PretrainTransform

    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red image: luma 0.299 * 200
    image = Image.fromarray(rgb, "RGB")
    gray = PretrainTransform(size=16, seed=3)(image, index=5)
    colour = PretrainTransform(size=16, seed=3, grayscale=False)(image, index=5)
    assert gray.shape == colour.shape == (3, 16, 16)
    assert torch.equal(gray[0], gray[1])  # intensity repeated
    mean, std = 0.3801, 0.1871
    assert torch.allclose(colour[0], torch.full((16, 16), (200 / 255 - mean) / std), atol=1e-5)
    assert torch.allclose(colour[1], torch.full((16, 16), -mean / std), atol=1e-5)
    # an intensity image is the same view either way (same crop and flip draws)
    ramp = Image.fromarray(np.tile(np.arange(60, dtype=np.uint8) * 4, (40, 1)), "L")
    assert torch.allclose(PretrainTransform(size=16, seed=3)(ramp, index=2),
                          PretrainTransform(size=16, seed=3, grayscale=False)(ramp, index=2), atol=1e-6)
    with pytest.raises(ValueError, match="num_channels=3"):
        PretrainTransform(grayscale=False, num_channels=1)
