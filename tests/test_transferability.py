"""Tests of transferability-aware fine-tuning (TMT, `unip_hf.training.transferability` and the TMA bias of `modeling_unip`):
ACTE's clustering on constructed features, the map's shape and range, the attention bias (off: identical outputs; on:
logits shifted by `strength * (1 - T)`, checked against a hand computation), save/load with TMT on, vanilla
equivalence of the both-off ablation, and the recipe end to end on real buffalo-udder images with both decode heads.
Tiny configs (hidden 32, 2-3 blocks, patch 8, 32-40 px)."""

import json
import os
import shutil

import pytest
import torch
from PIL import Image

from unip_hf import UnipConfig, UnipForSemanticSegmentation
from unip_hf.data import write_synthetic_dataset
from unip_hf.training.finetuning import ModelArguments, finetune_main, parse_tmt_blocks, run_finetuning
from unip_hf.models.modeling_unip import transferability_attention_bias
from unip_hf.training.transferability import (
    TransferabilityEstimator,
    adaptive_kmeans,
    clustering_points,
    kmeans,
    loss_weights_from_map,
    normalise_map,
    region_mean,
    window_regions,
)
from conftest import data_path, reset_accelerate
from test_finetuning import arguments

TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "decoder_hidden_size": 16,
        "auxiliary_channels": 8, "out_indices": [0, 1, 2, 2]}


def tiny_config(**overrides):
    return UnipConfig(image_size=32, patch_size=8, **{"num_labels": 2, **TINY, **overrides})


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two label vectors describe the same partition (up to renaming the clusters)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# ------------------------------------------------------------------------------------------------------ clustering
def test_kmeans_recovers_constructed_clusters_and_adaptive_k_finds_their_number():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    truth = torch.arange(3).repeat_interleave(20)[torch.randperm(60, generator=generator)]
    points = centres[truth] + 0.3 * torch.randn(60, 4, generator=generator)
    labels, sse = kmeans(points[None], 3)
    assert same_partition(labels[0], truth)
    assert sse.shape == (1,) and float(sse) < 0.3**2 * 60 * 4 * 1.5  # about the noise variance
    # two images in one batch, with 2 and 3 true clusters: each gets its own k and its own clusters back
    two = torch.where(truth == 2, 0, truth)
    batch = torch.stack([centres[two] + 0.3 * torch.randn(60, 4, generator=generator), points])
    labels, ks = adaptive_kmeans(batch, max_clusters=8, explained_variance=0.9)
    assert ks.tolist() == [2, 3]
    assert same_partition(labels[0], two) and same_partition(labels[1], truth)
    # deterministic: the same input gives the same labels, without touching the global random state
    state = torch.get_rng_state()
    assert torch.equal(adaptive_kmeans(batch, 8, 0.9)[0], labels) and torch.equal(torch.get_rng_state(), state)


def test_clustering_points_use_centred_features_and_spatial_coordinates():
    # two feature halves (left, right) on a 4x4 grid: the points are centred, unit-norm features + coordinates
    tokens = torch.zeros(1, 16, 8)
    tokens[0, :, 0] = 5.0  # a component common to every token: removed by the centring
    left = (torch.arange(16) % 4) < 2
    tokens[0, left, 1] = 1.0
    points = clustering_points(tokens, (4, 4), spatial_weight=0.5)
    assert points.shape == (1, 16, 10)
    assert torch.allclose(points[0, :, :8].norm(dim=-1), torch.ones(16))
    assert torch.allclose(points[0, 5, 8:], torch.tensor([1 / 3, 1 / 3]) * 0.5)  # row 1, column 1 of 0..3
    labels, ks = adaptive_kmeans(points, max_clusters=4, explained_variance=0.6)
    assert int(ks) == 2 and same_partition(labels[0], left.long())
    with pytest.raises(ValueError, match="tokens must be"):
        clustering_points(tokens, (3, 4))


def test_windows_region_means_and_normalisation():
    regions = window_regions(2, (4, 6), 2)
    assert regions.shape == (2, 24) and regions[0].reshape(4, 6)[3, 5] == 5 and int(regions.max()) == 5
    values = torch.arange(24.0).reshape(1, 24).repeat(2, 1)
    means = region_mean(values, regions)
    assert means[0, 0] == (0 + 1 + 6 + 7) / 4 and means[0, 0] == means[0, 7]
    mapped = normalise_map(means)
    assert float(mapped.min()) == 0 and float(mapped.max()) == 1
    assert torch.equal(normalise_map(torch.full((1, 5), 0.3)), torch.ones(1, 5))  # all alike: no bias
    # a spread below min_spread (0.05) is not stretched: near-equal regions keep a map near 1
    assert torch.allclose(normalise_map(torch.tensor([[0.50, 0.51, 0.49]])), torch.tensor([[0.8, 1.0, 0.6]]))
    weights = loss_weights_from_map(mapped, (4, 6), 2.0)
    assert weights.shape == (2, 4, 6) and float(weights.max()) == 3 and float(weights.min()) == 1


# ----------------------------------------------------------------------------------------------------- estimator
@pytest.mark.parametrize("regions,score", [("acte", "feature_agreement"), ("windows", "feature_agreement"),
                                           ("acte", "cluster_cohesion")])
def test_map_shape_range_and_constant_before_fine_tuning(regions, score):
    torch.manual_seed(0)
    model = UnipForSemanticSegmentation(tiny_config(tmt_blocks=[2])).eval()
    estimator = TransferabilityEstimator.for_model(model, regions=regions, score=score, window=2)
    assert (estimator.reference is None) == (score == "cluster_cohesion")
    if estimator.reference is not None:
        assert len(estimator.reference.encoder.layer) == 2  # only the blocks before the source layer
        assert not any(p.requires_grad for p in estimator.reference.parameters())
    pixels = torch.randn(3, 3, 32, 40)
    estimate = estimator.from_pixels(model.unip, pixels)
    assert estimate.map.shape == (3, 20) and estimate.regions.shape == (3, 20)
    assert float(estimate.map.min()) >= 0 and float(estimate.map.max()) <= 1
    if score == "feature_agreement":  # the model is still the reference: every region agrees, the map is all 1
        assert torch.allclose(estimate.map, torch.ones(3, 20), atol=1e-5)
        with torch.no_grad():  # once the backbone moves, regions differ
            model.unip.encoder.layer[1].mlp.fc2.weight.add_(torch.randn_like(model.unip.encoder.layer[1].mlp.fc2.weight))
        moved = estimator.from_pixels(model.unip, pixels).map
        assert float(moved.min()) == 0 and float(moved.max()) == 1
    else:
        assert float(estimate.map.min()) == 0 and float(estimate.map.max()) == 1
    # the map is constant over each region
    for image in range(3):
        for region in estimate.regions[image].unique():
            assert estimate.map[image][estimate.regions[image] == region].unique().numel() == 1


# ------------------------------------------------------------------------------------------------- attention bias
def test_attention_bias_off_gives_identical_outputs():
    torch.manual_seed(0)
    plain = UnipForSemanticSegmentation(tiny_config()).eval()
    with_tmt = UnipForSemanticSegmentation(tiny_config(tmt_blocks=[1, 2], tmt_strength=3.0)).eval()
    with_tmt.load_state_dict(plain.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    reference = plain(pixels).logits
    tmap = torch.rand(2, 16)
    assert torch.equal(plain(pixels, transferability=tmap).logits, reference)  # no tmt_blocks: map ignored
    assert torch.equal(with_tmt(pixels).logits, reference)  # no map: nothing added
    out = with_tmt(pixels, transferability=torch.ones(2, 16))  # T = 1 everywhere: zero bias
    assert torch.allclose(out.logits, reference, atol=1e-6) and torch.equal(out.transferability_map, torch.ones(2, 16))
    assert not torch.allclose(with_tmt(pixels, transferability=tmap).logits, reference, atol=1e-6)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attention_bias_on_shifts_logits_as_documented(implementation):
    torch.manual_seed(0)
    config = tiny_config(tmt_blocks=[1], tmt_strength=2.5)
    config._attn_implementation = implementation
    vit = UnipForSemanticSegmentation(config).eval().unip
    pixels = torch.randn(2, 3, 32, 32)
    tmap = torch.rand(2, 16)
    plain = vit(pixels, attention_logits_layers=[1]).attention_logits[0]
    biased_out = vit(pixels, attention_logits_layers=[1], transferability=tmap)
    biased = biased_out.attention_logits[0]
    expected = torch.zeros(2, 1, 1, 17)
    expected[..., 1:] = 2.5 * (1 - tmap)[:, None, None, :]  # CLS key: 0; patch key k: strength * (1 - T[k])
    assert torch.allclose(biased - plain, expected.expand_as(plain), atol=1e-5)
    # by hand: the scores of block 1 from its input and weights
    hidden = vit(pixels, output_hidden_states=True).hidden_states[1]
    block = vit.encoder.layer[1].attention
    q, k, v = block.qkv(vit.encoder.layer[1].norm1(hidden)).reshape(2, 17, 3, 2, 16).permute(2, 0, 3, 1, 4)
    by_hand = q @ k.transpose(-1, -2) / 16**0.5 + expected
    assert torch.allclose(biased, by_hand, atol=1e-5)
    # the fused path (no logits asked for) attends with the same bias: the same last hidden state
    fused = vit(pixels, transferability=tmap).last_hidden_state
    assert torch.allclose(fused, biased_out.last_hidden_state, atol=1e-5)
    assert torch.allclose(torch.softmax(by_hand, -1) @ v, torch.softmax(biased, -1) @ v, atol=1e-5)
    with pytest.raises(ValueError, match="num_patches"):
        vit(pixels, transferability=torch.rand(2, 15))


def test_bias_helper_and_config_checks():
    bias = transferability_attention_bias(torch.tensor([[0.0, 1.0, 0.5]]), 2.0, 4)
    assert bias.shape == (1, 1, 1, 4) and bias.flatten().tolist() == [0.0, 2.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="tmt_blocks"):
        tiny_config(tmt_blocks=[3])
    with pytest.raises(ValueError, match="tmt_blocks"):
        tiny_config(tmt_blocks=[2, 1])
    assert parse_tmt_blocks(None, 12) == [8, 9, 10, 11] and parse_tmt_blocks("-1,5", 12) == [5, 11]
    with pytest.raises(ValueError, match="--tmt_blocks"):
        parse_tmt_blocks("a,b", 12)
    with pytest.raises(ValueError, match="no_tmt_attention"):
        ModelArguments(tmt=True, tmt_loss_weight=1.0)
    with pytest.raises(ValueError, match="tmt_regions"):
        ModelArguments(tmt_regions="grid")
    with pytest.raises(ValueError, match="add --tmt"):
        ModelArguments(tmt_visualize=2)
    with pytest.raises(ValueError, match="linear_probe"):
        ModelArguments(tmt=True, mode="linear_probe")


def test_weighted_loss_with_uniform_weights_is_the_plain_loss():
    torch.manual_seed(0)
    model = UnipForSemanticSegmentation(tiny_config(num_labels=3)).eval()
    logits = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[0, :4] = 255
    plain = model.compute_loss(logits, labels)
    assert torch.allclose(model.compute_loss(logits, labels, torch.full((2, 4, 4), 3.0)), plain, atol=1e-6)
    with pytest.raises(ValueError, match="loss_weights"):
        model.compute_loss(logits, labels, torch.ones(4, 4))


def test_save_and_load_with_tmt_on(tmp_path):
    torch.manual_seed(0)
    model = UnipForSemanticSegmentation(tiny_config(tmt_blocks=[1, 2], tmt_strength=1.5)).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["tmt_blocks"] == [1, 2] and saved["tmt_strength"] == 1.5
    loaded = UnipForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert loaded.config.tmt_blocks == [1, 2] and loaded.config.tmt_strength == 1.5
    pixels, tmap = torch.randn(1, 3, 32, 32), torch.rand(1, 16)
    assert torch.equal(loaded(pixels, transferability=tmap).logits, model(pixels, transferability=tmap).logits)


# ------------------------------------------------------------------------------------------------------ fine-tuning
@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("tmt-scenes")
    write_synthetic_dataset(str(root), num_train=4, num_val=2, height=40, width=48, return_dataset=False)
    return str(root)


def _run(data_dir, output_dir, **model_options):
    model, data, train = arguments(data_dir, str(output_dir), max_steps=2, seed=3)
    for name, value in model_options.items():
        setattr(model, name, value)
    reset_accelerate()
    run_finetuning(model, data, train)
    return UnipForSemanticSegmentation.from_pretrained(output_dir).state_dict()


def test_both_off_is_vanilla_bit_for_bit_and_tma_changes_training(scenes, tmp_path):
    vanilla = _run(scenes, tmp_path / "vanilla")
    both_off = _run(scenes, tmp_path / "off", tmt=True, tmt_attention=False, tmt_loss_weight=0.0, tmt_strength=5.0)
    assert vanilla.keys() == both_off.keys()
    assert all(torch.equal(vanilla[k], both_off[k]) for k in vanilla)
    loss_only = _run(scenes, tmp_path / "loss", tmt=True, tmt_attention=False, tmt_loss_weight=1.0,
                     tmt_score="cluster_cohesion")
    assert any(not torch.equal(vanilla[k], loss_only[k]) for k in vanilla)


@pytest.fixture(scope="module")
def buffalo_subset(tmp_path_factory):
    """Two real buffalo-udder images (and masks) per split, in the data set's layout, in a temporary folder."""
    source = data_path("buffalo-udder")
    root = tmp_path_factory.mktemp("buffalo-udder")
    for split in ("train", "val"):
        for kind in ("images", "masks"):
            (root / kind / split).mkdir(parents=True)
        for name in sorted(os.listdir(source / "images" / split))[:2]:
            for kind in ("images", "masks"):
                shutil.copyfile(source / kind / split / name, root / kind / split / name)
    return root


@pytest.mark.parametrize("head", ["ll_fpn", "multilevel_fpn"])
def test_recipe_end_to_end_on_buffalo_udder(head, tmp_path, buffalo_subset):
    root = buffalo_subset
    tiny = json.dumps({"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "decoder_hidden_size": 16,
                       "auxiliary_channels": 8, "out_indices": [0, 1, 2, 2]})
    out = tmp_path / head
    reset_accelerate()
    code = finetune_main([
        "--model_name_or_path", "none", "--preset", "unip-tiny", "--patch_size", "8", "--config_overrides", tiny,
        "--decode_head", head, "--dataset", "buffalo-udder", "--data_dir", str(root), "--crop_size", "32",
        "--img_scale", "40x32",
        "--per_device_train_batch_size", "2", "--max_steps", "1", "--checkpointing_steps", "0",
        "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(out),
        "--tmt", "--tmt_blocks", "1,2", "--tmt_visualize", "2",
    ])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["tmt_blocks"] == [1, 2] and config["decode_head"] == head
    sheet = Image.open(out / "tmt_maps.png")
    assert sheet.size == (3 * 160, 2 * 160)  # image | map | regions, one row per image
    assert "TMT" in (out / "README.md").read_text()
    assert os.path.isfile(out / "eval_results.json")
