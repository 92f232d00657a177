"""Small targets in real frames (issue 23): training views that teach "not a target" (full-frame views,
`--negative_data`, hard-negative mining), tiled full-resolution inference identical to the whole-frame pass, and an
operating point chosen on the validation split, saved with the model and used by `unip predict` and the pipeline.
Tiny configs throughout."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from unip_hf import UnipForSmallTargetSegmentation, UnipSmallTargetConfig
from unip_hf.data import SegmentationTrainTransform
from unip_hf.training.finetuning import DataArguments, FinetuningArguments, ModelArguments, run_finetuning
from unip_hf.data.finetuning_data import HardNegativePool, KeyedSegmentationDataset, load_negative_frames
from unip_hf.evaluation.metrics.irstd.pd_fa_curve import choose_threshold
from unip_hf.deploy.predict import class_probabilities, predict_images, tiling_for
from conftest import data_path, reset_accelerate

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "detail_channels": [4, 8]}
TRAIN, VAL = ["Misc_1", "Misc_2", "Misc_3", "Misc_4"], ["Misc_5", "Misc_6"]


def tiny_model(detail_channels=(8, 16, 32), seed=0) -> UnipForSmallTargetSegmentation:
    torch.manual_seed(seed)
    config = UnipSmallTargetConfig.from_preset("unip-tiny", num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                               intermediate_size=64, patch_size=8, image_size=64,
                                               detail_channels=list(detail_channels))
    model = UnipForSmallTargetSegmentation(config).eval()
    for module in model.modules():  # batch-norm statistics that are not the identity, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model


# ---------------------------------------------------------------------------------------------------------- tiling
@pytest.mark.parametrize("batch,height,width,tile", [(1, 256, 320, 128), (2, 96, 128, 32), (1, 300, 404, 128)])
def test_tiled_inference_is_identical_to_whole_frame(batch, height, width, tile):
    """Guards the tiling design: a halo covering the receptive field of the detail path and decoder, tile origins on
    the coarsest stage's grid, the ViT context run once on the whole frame and the last tile moved back (no thin
    strip that would run another convolution kernel): logits and probabilities equal bit for bit."""
    model = tiny_model()
    pixel_values = torch.randn(batch, 3, height, width)
    with torch.no_grad():
        whole = model(pixel_values).target_logits
    tiled = model.tiled_target_logits(pixel_values, tile)
    assert tiled.shape == whole.shape
    assert torch.equal(tiled, whole)
    assert torch.equal(tiled.sigmoid() > 0.5, whole.sigmoid() > 0.5)


def test_tiled_inference_checks_its_inputs():
    model = tiny_model()
    with pytest.raises(ValueError, match="multiple of 4"):
        model.tiled_target_logits(torch.randn(1, 3, 64, 64), 30)
    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        model.tiled_target_logits(torch.randn(1, 3, 64, 64), 32)
    assert tiny_model(detail_channels=(4, 8)).tile_multiple == 2
    assert tiny_model().tile_halo % 4 == 0 and tiny_model().tile_halo >= 37  # the 3-stage receptive field radius


def test_predict_tiles_large_frames_with_the_same_result():
    """`class_probabilities` (what `unip predict` runs) tiles a small-target model's large frames automatically
    only where the result is exact; forced tiling gives the whole-frame probabilities."""
    from unip_hf.evaluation.model_saving import make_processor

    model = tiny_model()
    processor = make_processor(model.config)
    assert tiling_for(model, 2048, 2560) == 512 and tiling_for(model, 512, 640) is None
    assert tiling_for(model, 2048, 2561) is None and tiling_for(model, 64, 64, 0) is None
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 320), dtype=np.uint8), mode="L")
    whole = class_probabilities(model, processor, image, tile_size=0)
    tiled = class_probabilities(model, processor, image, tile_size=128)
    np.testing.assert_array_equal(whole, tiled)


# ------------------------------------------------------------------------------------------------ operating point
def test_choose_threshold_takes_the_lowest_threshold_within_the_target_fa():
    curve = {"thresholds": [0.1, 0.5, 0.9, 0.99], "pd": [1.0, 0.98, 0.9, 0.5], "fa": [500.0, 120.0, 40.0, 5.0],
             "iou": [0.3, 0.5, 0.6, 0.4]}
    point = choose_threshold(curve, 100.0)
    assert point["threshold"] == 0.9 and point["reached"] and point["fa"] == 40.0
    assert choose_threshold(curve, 1000.0)["threshold"] == 0.1
    missed = choose_threshold(curve, 1.0)
    assert missed["threshold"] == 0.99 and not missed["reached"]


def test_saved_threshold_is_used_by_predict_and_the_pipeline(tmp_path):
    """Guards the operating point: a plain config attribute that survives save/load, is the default of `unip
    predict` (an explicit --threshold still wins) and of the infrared pipeline's masks."""
    from transformers import pipeline

    from unip_hf.evaluation.model_saving import make_processor

    model = tiny_model(detail_channels=(4, 8))
    with torch.no_grad():
        model.classifier.bias.fill_(0.0)  # probabilities spread around 0.5
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64), dtype=np.uint8), mode="L")
    processor = make_processor(model.config)
    probability = class_probabilities(model, processor, image)[1]
    threshold = float(np.quantile(probability, 0.8))
    model.config.target_threshold = threshold
    model.config.operating_point = {"target_fa": 100.0, "split": "val"}
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["target_threshold"] == threshold
    assert UnipSmallTargetConfig.from_pretrained(folder).operating_point["split"] == "val"
    image.save(tmp_path / "frame.png")

    predict_images(str(folder), [str(tmp_path / "frame.png")], tmp_path / "out", progress=False)
    mask = np.asarray(Image.open(tmp_path / "out" / "frame_mask.png"))
    np.testing.assert_array_equal(mask, (probability > threshold).astype(np.uint8))
    predict_images(str(folder), [str(tmp_path / "frame.png")], tmp_path / "out05", threshold=0.5, progress=False)
    assert np.asarray(Image.open(tmp_path / "out05" / "frame_mask.png")).sum() == (probability > 0.5).sum()

    segmenter = pipeline("infrared-image-segmentation", model=str(folder))
    segments = segmenter(str(tmp_path / "frame.png"))
    target = next(s["mask"] for s in segments if s["label"] == model.config.id2label[1])
    np.testing.assert_array_equal(np.asarray(target) > 0, probability > threshold)
    with pytest.raises(ValueError, match="target_threshold"):
        UnipSmallTargetConfig(target_threshold=1.5)


# -------------------------------------------------------------------------------------------- negatives and mining
def test_negative_frames_are_background_and_unreadable_files_are_named(tmp_path):
    folder = tmp_path / "negatives"
    folder.mkdir()
    Image.fromarray(np.full((40, 50), 200, dtype=np.uint8), mode="L").save(folder / "street.png")
    (folder / "broken.png").write_bytes(b"not a png")
    frames, skipped = load_negative_frames(str(folder))
    assert frames == [str(folder / "street.png")]
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    (folder / "street.png").unlink()
    with pytest.raises(ValueError, match="no readable image.*broken.png"):
        load_negative_frames(str(folder))
    with pytest.raises(FileNotFoundError, match="--negative_data"):
        load_negative_frames(str(tmp_path / "missing"))

    transform = SegmentationTrainTransform(crop_size=32, base_size=(64, 48), seed=3)
    view = transform(Image.fromarray(np.full((40, 50), 90, dtype=np.uint8)), None, index=0)
    assert view["labels"].shape == (32, 32) and set(view["labels"].unique().tolist()) <= {0, 255}


def test_full_frame_views(tmp_path):
    """`full_frame_ratio=0` draws exactly the views of earlier runs; > 0 draws whole-frame views at their own scale,
    deterministically."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80), dtype=np.uint8), mode="L")
    label = np.zeros((64, 80), dtype=np.uint8)
    label[30:32, 40:42] = 1
    label = Image.fromarray(label)
    plain = SegmentationTrainTransform(crop_size=32, base_size=(80, 64), seed=1)
    zero = SegmentationTrainTransform(crop_size=32, base_size=(80, 64), seed=1, full_frame_ratio=0.0)
    full = SegmentationTrainTransform(crop_size=32, base_size=(80, 64), seed=1, full_frame_ratio=1.0,
                                      full_frame_scale=(0.25, 0.25))
    for index in range(4):
        expected = plain(image, label, index=index)["pixel_values"]
        assert torch.equal(expected, zero(image, label, index=index)["pixel_values"])
    view = full(image, label, index=0)
    # a quarter of 64x80 is 16x20: the whole frame fits, padded with ignore to the 32 crop
    assert (view["labels"][16:] == 255).all() and (view["labels"][:16, :20] != 255).all()
    assert torch.equal(view["pixel_values"], full(image, label, index=0)["pixel_values"])
    with pytest.raises(ValueError, match="full_frame_ratio"):
        SegmentationTrainTransform(full_frame_ratio=1.5)


def test_hard_negative_pool_scores_draws_and_state():
    """Guards the mining rule (false alarms only farther than `margin` from a target), the deterministic
    priority draws and a JSON state that restores the same future draws."""
    pool = HardNegativePool(capacity=2, seed=0, margin=3)
    labels = torch.zeros(3, 16, 16, dtype=torch.long)
    labels[0, 8, 8] = 1
    logits = torch.full((3, 1, 16, 16), -5.0)
    logits[0, 0, 6:11, 6:11] = 5.0  # a target drawn too large: not a false alarm
    logits[1, 0, 0:2, 0:3] = 5.0  # 6 false-alarm pixels on a view without target
    logits[2, 0, 15, 15] = 5.0  # 1 false-alarm pixel
    assert pool.false_alarm_pixels(logits, labels).tolist() == [0, 6, 1]
    pool.mine(torch.tensor([[0, 0], [0, 1], [0, 2]]), logits, labels)
    assert pool.entries == {(0, 1): 6, (0, 2): 1}
    quiet = torch.full((1, 1, 16, 16), -5.0)
    pool.mine(torch.tensor([[0, 2]]), quiet, torch.zeros(1, 16, 16, dtype=torch.long))
    assert pool.entries == {(0, 1): 6}
    pool.mine(torch.tensor([[1, 5], [1, 6]]), logits[1:], labels[1:])
    assert len(pool) == 2 and (0, 1) in pool.entries  # capacity: the highest scores stay
    state = json.loads(json.dumps(pool.state_dict()))
    twin = HardNegativePool(capacity=2, seed=0)
    twin.load_state_dict(state)
    assert [pool.draw(1) for _ in range(5)] == [twin.draw(1) for _ in range(5)]


@pytest.fixture(scope="module")
def mini_sirst(tmp_path_factory):
    """Six real SIRST images in the SIRST layout (4 train, 2 val)."""
    source = data_path("sirst")
    root = tmp_path_factory.mktemp("sirst")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for name in TRAIN + VAL:
        shutil.copy(source / "images" / f"{name}.png", root / "images")
        shutil.copy(source / "masks" / f"{name}_pixels0.png", root / "masks")
    (root / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "val.txt").write_text("\n".join(VAL) + "\n")
    (root / "test.txt").write_text("\n".join(VAL) + "\n")
    return str(root)


def test_finetune_with_negatives_mining_full_frames_and_target_fa(mini_sirst, tmp_path):
    """End to end: target-free frames added (an unreadable one named and skipped), full-frame views, mining with its
    pool saved next to each checkpoint, and the threshold chosen on val for --target_fa saved in config.json."""
    reset_accelerate()
    negatives = tmp_path / "negatives"
    negatives.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 120, (64, 80), dtype=np.uint8), mode="L").save(
        negatives / "wall.png")
    (negatives / "broken.png").write_bytes(b"\x89PNG broken")
    output_dir = str(tmp_path / "run")
    model_args = ModelArguments(model_name_or_path="none", preset="unip-tiny", patch_size=8,
                                config_overrides=json.dumps(TINY))
    data_args = DataArguments(dataset="sirst", data_dir=mini_sirst, crop_size=32, img_scale="320x256",
                              cache_dir=str(tmp_path / "cache"), full_frame_ratio=0.5, negative_data=str(negatives),
                              hard_negative_ratio=0.5, target_fa=1000.0)
    train_args = FinetuningArguments(output_dir=output_dir, per_device_train_batch_size=2, max_steps=4,
                                     checkpointing_steps=2, learning_rate=1e-3, layer_decay=1.0)
    run_finetuning(model_args, data_args, train_args)
    config = json.loads(open(os.path.join(output_dir, "config.json")).read())
    assert 0 < config["target_threshold"] < 1
    point = config["operating_point"]
    assert point["split"] == "val" and point["target_fa"] == 1000.0 and point["threshold"] == config["target_threshold"]
    saved = sorted(os.listdir(os.path.join(output_dir, "hard_negatives")))
    assert saved == ["pool-step2-process0.json", "pool-step4-process0.json"]
    state = json.loads(open(os.path.join(output_dir, "hard_negatives", saved[0])).read())
    assert set(state) == {"capacity", "seed", "margin", "draws", "entries"} and state["draws"] == 2


def test_small_target_options_are_checked(mini_sirst, tmp_path):
    with pytest.raises(ValueError, match="--negative_data"):
        DataArguments(dataset="sirst", data_dir=mini_sirst, negative_data=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="--hard_negative_ratio"):
        DataArguments(dataset="sirst", data_dir=mini_sirst, hard_negative_ratio=1.0)
    with pytest.raises(ValueError, match="--full_frame_scale_max"):
        DataArguments(dataset="sirst", data_dir=mini_sirst, full_frame_scale_min=2.0, full_frame_scale_max=1.0)
    with pytest.raises(ValueError, match="--target_fa"):
        DataArguments(dataset="sirst", data_dir=mini_sirst, target_fa=-1.0)


class Interrupted(RuntimeError):
    pass


def test_hard_negative_mining_resumes_exactly(mini_sirst, tmp_path):
    """Guards the resumable pool: a run with mining stopped after step 2 and resumed from checkpoint-2 (its pool
    restored from hard_negatives/pool-step2-process0.json) ends with the weights and losses of an uninterrupted run.
    `target_prior` 0.6 makes the untrained model fire everywhere, so the pool is not empty."""

    def arguments(output_dir):
        model_args = ModelArguments(model_name_or_path="none", preset="unip-tiny", patch_size=8,
                                    config_overrides=json.dumps({**TINY, "target_prior": 0.6}))
        data_args = DataArguments(dataset="sirst", data_dir=mini_sirst, crop_size=32, img_scale="320x256",
                                  cache_dir=str(tmp_path / "cache"), hard_negative_ratio=0.5, hard_negative_pool=8)
        train_args = FinetuningArguments(output_dir=output_dir, per_device_train_batch_size=2, max_steps=4,
                                         checkpointing_steps=2, learning_rate=1e-3, layer_decay=1.0)
        return model_args, data_args, train_args

    reset_accelerate()
    run_finetuning(*arguments(str(tmp_path / "full")))
    pool = json.loads((tmp_path / "full" / "hard_negatives" / "pool-step2-process0.json").read_text())
    assert pool["entries"], "the pool should hold views after two steps of a model that fires everywhere"

    def stop_at_2(step, logs):
        if step == 2:
            raise Interrupted("killed after step 2")

    model_args, data_args, train_args = arguments(str(tmp_path / "half"))
    reset_accelerate()
    with pytest.raises(Interrupted):
        run_finetuning(model_args, data_args, train_args, on_step_end=stop_at_2)
    train_args.resume_from_checkpoint = "latest"
    reset_accelerate()
    resumed = run_finetuning(model_args, data_args, train_args)
    assert resumed.resumed_from.endswith("checkpoint-2")
    a = UnipForSmallTargetSegmentation.from_pretrained(tmp_path / "full").state_dict()
    b = UnipForSmallTargetSegmentation.from_pretrained(tmp_path / "half").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

    def losses(folder):
        return [e["loss"] for e in json.loads((folder / "trainer_state.json").read_text())["log_history"]]

    assert losses(tmp_path / "half") == losses(tmp_path / "full")


def test_space_starts_at_the_saved_operating_point(tmp_path):
    """The Space's `predict` without a threshold applies the model's `target_threshold` (the slider starts there)."""
    import importlib.util

    from unip_hf.evaluation.model_saving import make_processor
    from unip_hf.deploy.space import create_space

    model = tiny_model(detail_channels=(4, 8))
    with torch.no_grad():
        model.classifier.bias.fill_(0.0)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 48), dtype=np.uint8), mode="L")
    processor = make_processor(model.config)
    probability = class_probabilities(model, processor, image)[1]
    model.config.target_threshold = float(np.quantile(probability, 0.7))
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    image.save(tmp_path / "frame.png")
    space = create_space(str(tmp_path / "model"), tmp_path / "space", task="irstd")
    spec = importlib.util.spec_from_file_location("space_app_operating_point", space / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert app.default_threshold() == 0.5  # nothing loaded yet
    app.load()
    assert app.default_threshold() == model.config.target_threshold
    shares = app.predict(str(tmp_path / "frame.png"))[3]
    explicit = app.predict(str(tmp_path / "frame.png"), model.config.target_threshold)[3]
    assert shares == explicit and shares[1][1] == int((probability > model.config.target_threshold).sum())
    assert app.predict(str(tmp_path / "frame.png"), 0.5)[3][1][1] == int((probability > 0.5).sum())


def test_small_target_options_refused_for_other_models(mini_sirst, tmp_path):
    """--target_fa / --hard_negative_ratio name the model they need, before any model is built."""
    reset_accelerate()
    model_args = ModelArguments(model_name_or_path="none", preset="unip-tiny", patch_size=8, architecture="semantic",
                                config_overrides=json.dumps({"num_hidden_layers": 2}))
    data_args = DataArguments(dataset="sirst", data_dir=mini_sirst, crop_size=32, img_scale="320x256",
                              cache_dir=str(tmp_path / "cache"), target_fa=10.0)
    train_args = FinetuningArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=1,
                                     checkpointing_steps=0)
    with pytest.raises(ValueError, match="--target_fa applies to small-target models"):
        run_finetuning(model_args, data_args, train_args)
