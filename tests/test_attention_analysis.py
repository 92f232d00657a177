"""Tests of the attention-pattern analysis (UNIP, Zhang et al., ICLR 2025): the measures against constructed attention
maps with known answers, the local / hybrid / global rule and the teacher-layer choice, every supported model
family (tiny random configs), the JSON report, image inputs, figures and the `unip analyze-attention` command."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import data_path
from unip_hf.analysis.attention_analysis import analyze_attention, query_attention_maps
from unip_hf.analysis.measures import (
    attention_entropy,
    attention_measures,
    mean_attention_distance,
    normalized_mutual_information,
    patch_distance_matrix,
)
from unip_hf.analysis.patterns import (
    AttentionReport,
    PatternThresholds,
    choose_teacher_layer,
    label_heads,
    label_layer,
    label_pattern,
)
from unip_hf.analysis.plots import plot_attention_maps, plot_layer_curves
from unip_hf.data.files import find_images
from unip_hf.models.vit_family import eager_attention, model_attentions

GRID = 14
P = GRID * GRID


# ------------------------------------------------------------------ constructed attention maps (14x14 grid)
def gaussian_windows(sigma: float, grid: int = GRID) -> torch.Tensor:
    d = patch_distance_matrix(grid)
    a = torch.exp(-(d**2) / (2 * sigma**2))
    return a / a.sum(-1, keepdim=True)


def foreground_map(grid: int = GRID) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    fg = torch.exp(-((yy - 8.0) ** 2 + (xx - 5.0) ** 2) / (2 * 2.0**2)).reshape(-1)
    return fg / fg.sum()


def shared_map(grid: int = GRID) -> torch.Tensor:
    return foreground_map(grid).expand(grid * grid, grid * grid).clone()


def mixture(weight_local: float) -> torch.Tensor:
    return weight_local * gaussian_windows(1.0) + (1 - weight_local) * shared_map()


def with_cls(patch_attn: torch.Tensor, cls_share: float = 0.1) -> torch.Tensor:
    """[1, 1, 1+P, 1+P] map: patch rows give `cls_share` to CLS, CLS attends uniformly."""
    n = patch_attn.shape[-1] + 1
    full = torch.zeros(n, n)
    full[1:, 1:] = patch_attn * (1 - cls_share)
    full[1:, 0] = cls_share
    full[0, :] = 1.0 / n
    return full[None, None]


def layer_measures(patch_attn: torch.Tensor) -> dict[str, float]:
    return {k: float(v) for k, v in attention_measures(with_cls(patch_attn), GRID, 1).items()}


# ------------------------------------------------------------------ measures
def test_nmi_identity_is_one_and_shared_map_is_zero():
    identity = torch.eye(P)[None, None]
    shared = shared_map()[None, None]
    assert abs(float(normalized_mutual_information(identity, num_prefix_tokens=0)) - 1.0) < 1e-6
    assert abs(float(normalized_mutual_information(shared, num_prefix_tokens=0))) < 1e-6
    # the same through the batched path, with a CLS token that is removed and rows renormalised
    assert abs(layer_measures(torch.eye(P))["nmi"] - 1.0) < 1e-6
    assert abs(layer_measures(shared_map())["nmi"]) < 1e-6
    # uniform attention is a shared map too
    assert abs(layer_measures(torch.full((P, P), 1.0 / P))["nmi"]) < 1e-6
    # CLS kept: an identity over all N tokens is still 1
    assert abs(float(normalized_mutual_information(torch.eye(P + 1)[None, None], 1, include_cls=True)) - 1) < 1e-6


def test_nmi_decreases_with_window_width_and_shared_weight():
    widths = [layer_measures(gaussian_windows(s))["nmi"] for s in (0.5, 1.0, 2.0, 3.0)]
    assert widths == sorted(widths, reverse=True)
    mixes = [layer_measures(mixture(w))["nmi"] for w in (0.8, 0.5, 0.35, 0.2)]
    assert mixes == sorted(mixes, reverse=True)


@pytest.mark.parametrize("prefix", [0, 1, 2, 5])
def test_batched_measures_match_reference_functions_and_are_finite(prefix):
    torch.manual_seed(prefix)
    n = prefix + 16
    attn = torch.softmax(torch.randn(3, 4, n, n) * 4, dim=-1)
    attn[0, 0, prefix + 1] = 0.0
    attn[0, 0, prefix + 1, prefix + 1] = 1.0  # one-hot row
    attn[1, 2, 0] = 0.0
    attn[1, 2, 0, -1] = 1.0
    if prefix:
        attn[2, 1, prefix + 3] = 0.0
        attn[2, 1, prefix + 3, 0] = 1.0  # all mass on CLS: an empty row once CLS is dropped
        attn[2, 2, prefix + 4] = 1e-39  # a denormal trace left on the patches (seen on a real ViT-MAE): 1/mass = inf
        attn[2, 2, prefix + 4, 0] = 1.0
    out = attention_measures(attn.double().float(), (4, 4), prefix)
    for value in out.values():
        assert value.shape == (3, 4) and value.dtype == torch.float32 and torch.isfinite(value).all()
    torch.testing.assert_close(out["nmi"], normalized_mutual_information(attn, prefix), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["entropy"], attention_entropy(attn, prefix), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["distance"], mean_attention_distance(attn, (4, 4), prefix), atol=1e-5, rtol=0)
    if prefix:
        torch.testing.assert_close(
            out["nmi_with_cls"], normalized_mutual_information(attn, prefix, include_cls=True), atol=1e-6, rtol=0
        )
    assert ((out["nmi"] >= 0) & (out["nmi"] <= 1)).all()


def test_measures_accept_half_precision_and_compute_in_float32():
    attn = torch.softmax(torch.randn(2, 2, 17, 17), -1)
    out = attention_measures(attn.to(torch.bfloat16), 4, 1)
    assert out["nmi"].dtype == torch.float32 and torch.isfinite(out["nmi"]).all()


def test_distance_and_entropy_known_values():
    grid = 3
    d = patch_distance_matrix(grid)
    assert d.shape == (9, 9) and float(d[0, 8]) == pytest.approx(math.sqrt(8))
    uniform = torch.full((1, 1, 9, 9), 1 / 9)
    assert float(mean_attention_distance(uniform, grid, 0)) == pytest.approx(float(d.mean()), abs=1e-6)
    assert float(attention_entropy(uniform, 0)) == pytest.approx(math.log(9), abs=1e-6)
    assert float(attention_entropy(uniform, 0, normalized=True)) == pytest.approx(1.0, abs=1e-6)
    # every query attends to its right neighbour (or itself on the last column): distance = 6/9 patches
    right = torch.zeros(9, 9)
    for q in range(9):
        r, c = divmod(q, 3)
        right[q, r * 3 + min(c + 1, 2)] = 1.0
    assert float(mean_attention_distance(right[None, None], grid, 0)) == pytest.approx(6 / 9, abs=1e-6)
    assert float(mean_attention_distance(torch.eye(9)[None, None], grid, 0)) == 0.0
    assert float(attention_entropy(torch.eye(9)[None, None], 0)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="patch tokens"):
        attention_measures(uniform, 4, 0)


# ------------------------------------------------------------------ labelling rule and teacher choice
@pytest.mark.parametrize(
    "name, attn, expected",
    [
        ("identity", torch.eye(P), "local"),
        ("gaussian sigma 0.5", gaussian_windows(0.5), "local"),
        ("gaussian sigma 1", gaussian_windows(1.0), "local"),
        ("broad gaussian sigma 3 (no shared component)", gaussian_windows(3.0), "local"),
        ("one shared map", shared_map(), "global"),
        ("uniform", torch.full((P, P), 1.0 / P), "global"),
        ("mostly shared (0.2 local)", mixture(0.2), "global"),
        ("window + foreground 0.65/0.35", mixture(0.65), "hybrid"),
        ("window + foreground 0.5/0.5", mixture(0.5), "hybrid"),
        ("window + foreground 0.35/0.65", mixture(0.35), "hybrid"),
    ],
)
def test_labelling_rule_on_constructed_maps(name, attn, expected):
    m = layer_measures(attn)
    assert label_pattern(m["nmi"], m["key_concentration"]) == expected, (name, m)


def test_label_pattern_thresholds_and_errors():
    assert label_pattern(0.5) == "local" and label_pattern(0.01) == "global" and label_pattern(0.2) == "hybrid"
    assert label_pattern(0.2, key_concentration=0.0) == "local"
    th = PatternThresholds(global_below=0.3, local_at_least=0.6)
    assert label_pattern(0.5, thresholds=th) == "hybrid"
    with pytest.raises(ValueError):
        PatternThresholds(global_below=0.5, local_at_least=0.2)
    with pytest.raises(ValueError):
        label_pattern(float("nan"))


def make_report(nmi, concentration=None, **kwargs) -> AttentionReport:
    n = len(nmi)
    zeros = [0.0] * n
    return AttentionReport(
        model_name=kwargs.pop("model_name", "constructed"), model_type="test", num_layers=n, num_heads=[2] * n,
        grid_size=[14, 14], num_prefix_tokens=1, image_size=[224, 224], num_images=4,
        nmi_mean=list(nmi), nmi_std=[0.01] * n, nmi_with_cls_mean=list(nmi), nmi_with_cls_std=zeros,
        distance_mean=[1.0 + 4 * (1 - v) for v in nmi], distance_std=[0.1] * n, entropy_mean=zeros,
        entropy_std=zeros, key_concentration_mean=list(concentration or [0.05] * n), key_concentration_std=zeros,
        head_nmi_mean=[[v, v] for v in nmi], head_nmi_std=[[0.0, 0.0]] * n,
        head_distance_mean=[[1.0, 1.0]] * n, head_distance_std=[[0.0, 0.0]] * n,
        head_entropy_mean=[[0.0, 0.0]] * n, head_entropy_std=[[0.0, 0.0]] * n, **kwargs,
    )


def test_choose_teacher_layer_is_deepest_clearly_hybrid():
    # local, local, hybrid, hybrid, hybrid (on the edge), global, global: like MAE/DINO-type models
    report = make_report([0.6, 0.4, 0.25, 0.15, 0.085, 0.03, 0.02])
    assert report.labels == ["local", "local", "hybrid", "hybrid", "hybrid", "global", "global"]
    assert choose_teacher_layer(report) == 3  # layer 4 sits within the margin of the global threshold
    assert report.teacher_layer == 3 and "clearly hybrid" in report.teacher_reason
    # only an edge hybrid layer: still chosen
    assert choose_teacher_layer(make_report([0.6, 0.085, 0.02])) == 1
    # custom thresholds
    assert choose_teacher_layer(report, PatternThresholds(global_below=0.2, local_at_least=0.5)) == 2


def test_choose_teacher_layer_without_hybrid_layer_falls_back():
    report = make_report([0.6, 0.5, 0.02, 0.01])
    assert "hybrid" not in report.labels
    # closest to the centre of the hybrid band (0.19) is layer 2 (|0.02-0.19| < |0.5-0.19|)
    assert choose_teacher_layer(report) == 2
    assert "no hybrid layer" in report.teacher_reason
    # ties go to the deeper layer
    assert choose_teacher_layer(make_report([0.0, 0.0, 0.0])) == 2


def test_report_json_round_trip(tmp_path):
    report = make_report([0.6, 0.25, 0.03], skipped_images=["bad.png: UnidentifiedImageError"])
    path = report.save(tmp_path / "sub" / "report.json")
    data = json.loads(path.read_text())
    assert data["layer_indexing"] == "0-based" and data["labels"] == ["local", "hybrid", "global"]
    loaded = AttentionReport.load(path)
    assert loaded == report
    assert AttentionReport.from_dict({**data, "future_field": 1}) == report
    loaded.relabel(PatternThresholds(global_below=0.3, local_at_least=0.7))
    assert loaded.labels == ["hybrid", "global", "global"] and loaded.teacher_layer == 0
    assert "<- teacher" in report.format_table()


# ------------------------------------------------------------------ model families (tiny random configs)
def tiny_models():
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        DeiTConfig,
        DeiTModel,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        ViTConfig,
        ViTMAEConfig,
        ViTMAEModel,
        ViTModel,
    )

    from unip_hf import UnipConfig, UnipViTModel

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8)
    return {
        # name: (model, expected special tokens before the patches)
        "vit": (ViTModel(ViTConfig(**common)), 1),
        "vit_mae": (ViTMAEModel(ViTMAEConfig(**common, mask_ratio=0.75)), 1),
        "deit": (DeiTModel(DeiTConfig(**common)), 2),
        "dinov2": (Dinov2Model(Dinov2Config(**common)), 1),
        "dinov2_registers": (Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**common, num_register_tokens=3)), 4),
        "clip": (CLIPVisionModel(CLIPVisionConfig(**common)), 1),
        "unip": (
            UnipViTModel(UnipConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                    last_layer_num_attention_heads=2, image_size=32, patch_size=8)),
            1,
        ),
    }


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return tiny_models()


def sharpen(model):
    """Scale the weights so that random attention is far from uniform (non-trivial NMI values)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and any(k in name for k in ("query", "key", "q_proj", "k_proj", "qkv")):
                p.mul_(8.0)
    return model


@pytest.mark.parametrize("name", ["vit", "vit_mae", "deit", "dinov2", "dinov2_registers", "clip", "unip"])
def test_analyze_attention_each_family(models, name):
    model, prefix = models[name]
    sharpen(model)
    before = model.config._attn_implementation
    model.train()
    pixels = torch.randn(5, model.config.num_channels, 32, 32, generator=torch.Generator().manual_seed(1))
    report = analyze_attention(model, pixels, batch_size=2, progress=False)
    # restored: attention implementation, training mode, masking ratio
    assert model.config._attn_implementation == before and model.training
    if name == "vit_mae":
        assert model.config.mask_ratio == 0.75
    layers = model.config.num_hidden_layers
    assert report.num_layers == layers and report.num_prefix_tokens == prefix and report.grid_size == [4, 4]
    assert report.num_images == 5 and len(report.labels) == layers
    expected_heads = [4] * layers if name != "unip" else [4, 4, 2]
    assert report.num_heads == expected_heads and [len(h) for h in report.head_nmi_mean] == expected_heads
    assert all(math.isfinite(v) for v in report.nmi_mean + report.distance_mean + report.entropy_mean)
    # equals the measures of a direct eager forward, averaged over heads then images
    model.eval()
    with eager_attention(model), torch.no_grad():
        attentions, got_prefix, grid = model_attentions(model, pixels)
    assert got_prefix == prefix and grid == (4, 4) and attentions[0].shape[-1] == prefix + 16
    for layer, attn in enumerate(attentions):
        m = attention_measures(attn, grid, prefix)
        assert report.nmi_mean[layer] == pytest.approx(float(m["nmi"].mean(-1).mean()), abs=1e-5)
        assert report.nmi_std[layer] == pytest.approx(float(m["nmi"].mean(-1).std(unbiased=False)), abs=1e-5)
        assert report.distance_mean[layer] == pytest.approx(float(m["distance"].mean()), abs=1e-4)
        np.testing.assert_allclose(report.head_entropy_mean[layer], m["entropy"].mean(0).numpy(), atol=1e-4)
    assert max(report.nmi_mean) > 0.01  # sharpened attention is not uniform
    assert json.loads(json.dumps(report.to_dict()))["num_prefix_tokens"] == prefix


def test_vit_mae_token_order_is_preserved(models):
    """With mask_ratio 0 ViTMAE still shuffles patches by its noise: the analysis must see them in raster order."""
    model, _ = models["vit_mae"]
    model.eval()
    pixels = torch.randn(2, 3, 32, 32)
    with eager_attention(model), torch.no_grad():
        ordered, _, _ = model_attentions(model, pixels)
        model.config.mask_ratio = 0.0
        try:
            noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
            out = model(pixel_values=pixels, noise=noise, output_attentions=True)
        finally:
            model.config.mask_ratio = 0.75
    ids = out.ids_restore
    assert not torch.equal(ids, torch.arange(16).expand(2, -1))  # this noise does shuffle
    index = torch.cat([torch.zeros(2, 1, dtype=torch.long), ids + 1], dim=1)
    for a_ordered, a_shuffled in zip(ordered, out.attentions):
        b, h, n, _ = a_shuffled.shape
        restored = a_shuffled.gather(2, index[:, None, :, None].expand(b, h, n, n))
        restored = restored.gather(3, index[:, None, None, :].expand(b, h, n, n))
        torch.testing.assert_close(a_ordered, restored, atol=1e-5, rtol=1e-4)


def test_eager_attention_switch_is_restored_on_error(models):
    model, _ = models["vit"]
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError):
        with eager_attention(model):
            assert model.config._attn_implementation == "eager"
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


# ------------------------------------------------------------------ images
def write_images(folder, count, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8), mode="L").save(folder / f"im{i}.png")


def test_image_folders_symlinks_and_unreadable(models, tmp_path, caplog):
    model, _ = models["unip"]
    write_images(tmp_path / "a" / "nested", 2)
    write_images(tmp_path / "elsewhere", 2)
    os.symlink(tmp_path / "elsewhere", tmp_path / "a" / "link")
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    found = find_images(tmp_path / "a")
    assert len(found) == 5 and any("link" in str(p) for p in found)
    report = analyze_attention(model, tmp_path / "a", image_size=32, progress=False)
    assert report.num_images == 4 and len(report.skipped_images) == 1 and "broken.png" in report.skipped_images[0]
    assert "could not be read" in caplog.text
    # num_images picks readable images spread over the list; PIL images and a mixed list work too
    assert analyze_attention(model, tmp_path / "a", image_size=32, num_images=2, progress=False).num_images == 2
    pil = [Image.new("RGB", (50, 20), (10, 200, 30)), Image.new("I;16", (20, 20), 4000)]
    readable = next(p for p in found if p.name != "broken.png")
    assert analyze_attention(model, pil + [readable], image_size=32, progress=False).num_images == 3


def test_no_readable_image_is_a_clear_error(models, tmp_path):
    model, _ = models["unip"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="none of the 1 images could be read"):
        analyze_attention(model, tmp_path / "bad", image_size=32, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        analyze_attention(model, tmp_path / "empty", image_size=32, progress=False)
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")


# ------------------------------------------------------------------ figures
def test_figures_are_written(models, tmp_path):
    pytest.importorskip("matplotlib", reason="figures need the optional 'plots' extra (matplotlib)")
    model, _ = models["unip"]
    a = make_report([0.6, 0.4, 0.25, 0.15, 0.03, 0.02], model_name="mae-like")
    b = make_report([0.5, 0.3, 0.2, 0.05], model_name="dino-like")
    fig = plot_layer_curves([a, b], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and len(fig.axes) == 2
    image = Image.fromarray((np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8))
    maps, intensity = query_attention_maps(model, image, layers=[0, 2], queries=[(0, 0), (2, 3)], image_size=32)
    assert maps.shape == (2, 2, 4, 4) and intensity.shape == (32, 32)
    np.testing.assert_allclose(maps.sum(axis=(-1, -2)), 1.0, atol=1e-5)
    plot_attention_maps(maps, intensity, [0, 2], [(0, 0), (2, 3)], labels=["local", "global"],
                        path=tmp_path / "maps.png", teacher_layer=2)
    assert (tmp_path / "maps.png").stat().st_size > 5_000


def test_missing_matplotlib_gives_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"unip-hf\[plots\]"):
        plot_layer_curves(make_report([0.5, 0.1]))


# ------------------------------------------------------------------ command line on real infrared images
def test_cli_analyze_attention_on_real_images(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="figures need the optional 'plots' extra (matplotlib)")
    pool = data_path("infrared-pool")
    from unip_hf import UnipConfig, UnipViTModel
    from unip_hf.cli import main

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny-unip"
    sharpen(UnipViTModel(UnipConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, image_size=64,
                                    patch_size=8))).save_pretrained(checkpoint)
    out = tmp_path / "out"
    code = main(["analyze-attention", str(checkpoint), "--images", str(pool), "--num-images", "6",
                 "--image-size", "64", "--batch-size", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "layers 0-based" in printed and "teacher layer (0-based):" in printed
    for name in ("report.json", "nmi_by_layer.png", "attention_maps.png"):
        assert (out / name).stat().st_size > 0
    report = AttentionReport.load(out / "report.json")
    assert report.num_images == 6 and report.grid_size == [8, 8] and report.num_layers == 3
    assert report.teacher_layer is not None and 0 <= report.teacher_layer < 3


def test_cli_names_and_counts_scan_skips(tmp_path, capsys):
    """A dangling link, a FIFO named .png and a non-UTF-8 name are skipped and named, never a crash or a hang."""
    pytest.importorskip("matplotlib", reason="figures need the optional 'plots' extra (matplotlib)")
    from unip_hf import UnipConfig, UnipViTModel
    from unip_hf.cli import main

    images = tmp_path / "imgs"
    write_images(images, 3)
    os.symlink(images / "gone.png", images / "dangling.png")
    os.mkfifo(images / "pipe.png")
    with open(os.path.join(os.fsencode(str(images)), b"b\xff.png"), "wb") as handle:
        Image.new("L", (32, 32), 7).save(handle, format="PNG")
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny-unip"
    UnipViTModel(UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                            patch_size=8)).save_pretrained(checkpoint)
    out = tmp_path / "out"
    assert main(["analyze-attention", str(checkpoint), "--images", str(images), "--image-size", "32",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 3 unreadable or unusable file(s)" in printed
    assert "dangling.png: broken symbolic link" in printed and "FIFO" in printed and "b\\xff.png" in printed
    report = AttentionReport.load(out / "report.json")
    assert report.num_images == 3 and len(report.skipped_images) == 3


def test_readme_names_stay_importable_from_attention_analysis():
    """The README's usage block imports these from `unip_hf.analysis.attention_analysis`; they live in their own modules."""
    import unip_hf.analysis.attention_analysis as analysis

    assert analysis.AttentionReport is AttentionReport and analysis.choose_teacher_layer is choose_teacher_layer
    assert analysis.plot_layer_curves is plot_layer_curves and analysis.analyze_attention is analyze_attention
    assert analysis.find_images is find_images and analysis.model_attentions is model_attentions


def _panel_pixels(fig, ax, x=(0.55, 0.95), y=(0.05, 0.65)):
    """RGB pixels of a region of one panel (fractions of its width / height from the top-left), as rendered."""
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    box = ax.get_window_extent()
    height = image.shape[0]
    left, right = int(box.x0 + x[0] * box.width), int(box.x0 + x[1] * box.width)
    top, bottom = int(height - box.y1 + y[0] * box.height), int(height - box.y1 + y[1] * box.height)
    return image[top:bottom, left:right]


def _tint(pixels):
    """How far pixels are from gray (0 for the untinted grayscale image)."""
    return pixels.max(axis=-1) - pixels.min(axis=-1)


def test_uniform_attention_is_drawn_untinted_on_a_shared_scale(tmp_path):
    pytest.importorskip("matplotlib", reason="figures need the optional 'plots' extra (matplotlib)")
    from unip_hf import UnipConfig, UnipViTModel

    config = UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8)
    torch.manual_seed(0)
    near = UnipViTModel(config).eval()  # random initialisation: attention within ~1% of uniform
    exact = UnipViTModel(config).eval()
    with torch.no_grad():
        for layer in exact.encoder.layer:  # queries and keys zero: every logit 0, exactly uniform attention
            layer.attention.qkv.weight[: 2 * config.hidden_size] = 0
            layer.attention.qkv.bias[: 2 * config.hidden_size] = 0
    image = Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8))
    queries = [(0, 0), (3, 0)]
    for model in (near, exact):
        maps, intensity = query_attention_maps(model, image, layers=[0, 1], queries=queries)
        ratios = maps * maps[0, 0].size
        assert np.abs(ratios - 1).max() < 0.05  # uniform (to a few percent)
        fig = plot_attention_maps(maps, intensity, [0, 1], queries, path=tmp_path / "uniform.png")
        for ax in fig.axes[:4]:  # the four panels; the last axes is the shared colour bar
            assert _tint(_panel_pixels(fig, ax)).max() <= 3  # the plain grayscale image
    # a peaked map on the same scale is tinted where the attention is, and only there
    peaked = np.full((2, 2, 4, 4), 1 / 16, dtype=np.float32)
    peaked[0, 0] = 0.0
    peaked[0, 0, 0, 2:] = 0.5  # all attention on two patches of the top row, right half: 8x uniform
    fig = plot_attention_maps(peaked, intensity, [0, 1], queries)
    hot = _tint(_panel_pixels(fig, fig.axes[0], x=(0.55, 0.95), y=(0.05, 0.2)))
    assert (hot > 60).mean() > 0.5
    for ax in fig.axes[1:4]:
        assert _tint(_panel_pixels(fig, ax)).max() <= 3  # uniform panels untinted next to the peaked one


def test_no_hybrid_layer_is_warned_once(caplog):
    import logging

    from unip_hf import UnipConfig, UnipViTModel
    from unip_hf.pretraining.distillation import resolve_teacher_layer

    config = UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8)
    torch.manual_seed(0)
    model = UnipViTModel(config).eval()  # random initialisation: NMI ~ 0 everywhere, no hybrid layer
    with caplog.at_level(logging.WARNING):
        layer = resolve_teacher_layer(model, "auto", torch.randn(2, 3, 32, 32))
    assert 0 <= layer < 2
    assert caplog.text.count("no hybrid layer found") == 1


# ------------------------------------------------------------------ per-head labels (issue 12, item 3)
def _report_from_maps(layers: list[torch.Tensor]) -> AttentionReport:
    """A report built from constructed per-head maps: each layer is `[1, H, P, P]` (no prefix token), measured by
    `attention_measures` as `analyze_attention` does (one image, so means are the values)."""
    per_layer = [attention_measures(a, GRID, num_prefix_tokens=0, with_cls=False) for a in layers]
    n = len(layers)
    zeros = [0.0] * n

    def heads(key):
        return [m[key][0].tolist() for m in per_layer]

    return AttentionReport(
        model_name="maps", model_type="test", num_layers=n, num_heads=[a.shape[1] for a in layers],
        grid_size=[GRID, GRID], num_prefix_tokens=0, image_size=[GRID * 16, GRID * 16], num_images=1,
        nmi_mean=[float(m["nmi"].mean()) for m in per_layer], nmi_std=zeros,
        nmi_with_cls_mean=[float(m["nmi"].mean()) for m in per_layer], nmi_with_cls_std=zeros,
        distance_mean=[float(m["distance"].mean()) for m in per_layer], distance_std=zeros,
        entropy_mean=[float(m["entropy"].mean()) for m in per_layer], entropy_std=zeros,
        key_concentration_mean=[float(m["key_concentration"].mean()) for m in per_layer], key_concentration_std=zeros,
        head_nmi_mean=heads("nmi"), head_nmi_std=[[0.0] * a.shape[1] for a in layers],
        head_distance_mean=heads("distance"), head_distance_std=[[0.0] * a.shape[1] for a in layers],
        head_entropy_mean=heads("entropy"), head_entropy_std=[[0.0] * a.shape[1] for a in layers],
        head_key_concentration_mean=heads("key_concentration"),
        head_key_concentration_std=[[0.0] * a.shape[1] for a in layers],
    )


def test_per_head_labels_on_constructed_mixed_heads():
    # layer 0: one sharp local head + two heads sharing one map: averaged NMI ~0.25 with a concentrated p(k) ->
    #          "hybrid" by the head-averaged rule, but its heads are local, global, global -> global
    # layer 1: three truly hybrid heads (window + shared foreground) -> hybrid
    # layer 2: two hybrid heads + one global head -> hybrid (2 of 3 >= half)
    # layer 3: all heads share one map -> global
    mixed = torch.stack([gaussian_windows(0.5), shared_map(), shared_map()]).unsqueeze(0)
    hybrid = torch.stack([mixture(0.5), mixture(0.5), mixture(0.35)]).unsqueeze(0)
    mostly_hybrid = torch.stack([mixture(0.5), mixture(0.35), shared_map()]).unsqueeze(0)
    global_ = torch.stack([shared_map()] * 3).unsqueeze(0)
    report = _report_from_maps([mixed, hybrid, mostly_hybrid, global_])
    averaged = [label_pattern(v, c) for v, c in zip(report.nmi_mean, report.key_concentration_mean)]
    assert 0.08 <= report.nmi_mean[0] < 0.30 and averaged[0] == "hybrid"  # what the old rule said
    assert report.head_labels[0] == ["local", "global", "global"]
    assert report.head_mix[0] == {"local": 1, "hybrid": 0, "global": 2}
    assert report.head_labels[1] == ["hybrid", "hybrid", "hybrid"]
    assert report.head_mix[2] == {"local": 0, "hybrid": 2, "global": 1}
    assert report.labels == ["global", "hybrid", "hybrid", "global"]
    # the deepest clearly hybrid layer is 2; the mixed layer 0 is never a candidate
    assert choose_teacher_layer(report) == 2
    assert "1/0/2" in report.format_table()
    # a stricter head share drops layer 2 (2 of 3 < 0.9): the teacher becomes layer 1
    assert choose_teacher_layer(report, PatternThresholds(min_hybrid_head_fraction=0.9)) == 1
    # the report keeps the per-head values through JSON
    again = AttentionReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.head_labels == report.head_labels and again.labels == report.labels


def test_issue_example_local_heads_in_the_hybrid_band_are_local():
    # heads at NMI 0.34, 0.11, 0.27, each query attending to its own neighbourhood (no shared map: key
    # concentration ~0): the head-averaged NMI 0.24 sits in the band, but every head is local, so the layer is
    assert label_heads([0.34, 0.11, 0.27], [0.002, 0.001, 0.002]) == ["local", "local", "local"]
    assert label_layer("hybrid", ["local", "local", "local"]) == "local"
    # ties between local and global heads: the averaged label, never hybrid
    assert label_layer("hybrid", ["local", "global"]) == "local"
    assert label_layer("global", ["local", "global", "hybrid", "hybrid"]) == "hybrid"  # half are hybrid
    assert label_layer("global", ["local", "global"]) == "global"
    assert label_layer("local", []) == "local"  # no head labels: the averaged label
    with pytest.raises(ValueError, match="min_hybrid_head_fraction"):
        PatternThresholds(min_hybrid_head_fraction=0.0)


def test_analyze_attention_reports_per_head_key_concentration():
    from unip_hf import UnipConfig, UnipViTModel

    config = UnipConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        mlp_ratio=2.0)
    report = analyze_attention(UnipViTModel(config).eval(), torch.randn(2, 3, 32, 32), progress=False)
    assert len(report.head_key_concentration_mean) == 2 and len(report.head_key_concentration_mean[0]) == 2
    assert len(report.head_labels) == 2 and all(len(h) == 2 for h in report.head_labels)
    assert sum(report.head_mix[0].values()) == 2
