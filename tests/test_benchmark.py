"""Tests of the benchmark and ablation harness (`unip benchmark`, `unip ablation`; UNIP, Zhang et al., ICLR 2025):
the seed statistics on constructed numbers with hand-computed answers, both commands at the `smoke` budget on tiny
models and real images (buffalo-udder, sirst, the infrared and RGB pools), their files, the resume and an interrupted
run, and the layer-wise probe."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import data_path
from unip_hf import UnipConfig, UnipViTModel
from unip_hf.studies.statistics import (
    bootstrap_interval,
    format_mean_std,
    mean_std,
    paired_comparison,
    sign_test_p_value,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "unip_hf"


# ------------------------------------------------------------------ statistics, by hand
def test_mean_std_and_format():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and math.isclose(std, math.sqrt(5 / 3))  # squares 2.25+0.25+0.25+2.25 = 5, / (n-1) = 3
    assert mean_std([0.7]) == (0.7, 0.0)
    assert format_mean_std([0.5, 0.7]) == "60.0 ± 14.1 (n=2)"  # std = 0.2 / sqrt(2) = 0.1414
    with pytest.raises(ValueError):
        mean_std([])
    with pytest.raises(ValueError):
        mean_std([1.0, float("nan")])


def test_sign_test_exact_values():
    assert sign_test_p_value([1, 2, 3]) == 0.25  # 2 * P[X <= 0], X ~ B(3, 1/2) = 2/8
    assert sign_test_p_value([1, -1, 2, 3]) == 0.625  # 2 * (1 + 4) / 16
    assert sign_test_p_value([0, 1, 1]) == 0.5  # the tie is dropped: 2 * 1/4
    assert sign_test_p_value([0, 0]) == 1.0
    assert sign_test_p_value([1, 1, 1, 1, 1, 1]) == 2 / 64


def test_bootstrap_interval_and_paired_comparison():
    assert bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    # resampling {1, 2} twice: means 1 (p 1/4), 1.5 (1/2), 2 (1/4): the 2.5% and 97.5% points are 1 and 2
    assert bootstrap_interval([1.0, 2.0]) == (1.0, 2.0)
    assert bootstrap_interval([1.0, 2.0, 4.0], seed=3) == bootstrap_interval([1.0, 2.0, 4.0], seed=3)
    better = paired_comparison({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.4, 2: 0.4, 3: 0.9})
    assert better["seeds"] == [0, 1, 2]  # only the shared seeds are paired
    assert [round(d, 10) for d in better["differences"]] == [0.1, 0.2, 0.3]
    assert math.isclose(better["mean_difference"], 0.2) and math.isclose(better["std_difference"], 0.1)
    assert better["sign_test_p"] == 0.25 and better["bootstrap_low"] >= 0.1 - 1e-12 and better["verdict"] == "better"
    mixed = paired_comparison({0: 0.5, 1: 0.3, 2: 0.6}, {0: 0.4, 1: 0.4, 2: 0.4})
    assert mixed["verdict"] == "within noise" and mixed["sign_test_p"] == 1.0  # 2 of 3 positive
    worse = paired_comparison({0: 0.1, 1: 0.2}, {0: 0.4, 1: 0.4})
    assert worse["verdict"] == "worse"
    with pytest.raises(ValueError, match="no seed in common"):
        paired_comparison({0: 0.1}, {1: 0.2})


def test_command_modules_import_nothing_heavy_at_import_time():
    heavy = {"torch", "transformers", "datasets", "accelerate", "numpy", "matplotlib"}
    for name in ("studies/benchmark.py", "studies/ablation.py", "studies/results.py", "studies/statistics.py"):
        tree = ast.parse((SRC / name).read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]} if node.level == 0 else set()
            else:
                continue
            assert not roots & heavy, f"{name} imports {roots & heavy} at module level"


# ------------------------------------------------------------------ tiny models
def tiny_unip(folder: Path, layers: int = 3) -> str:
    torch.manual_seed(0)
    config = UnipConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        mlp_ratio=2.0)
    UnipViTModel(config).save_pretrained(folder)
    return str(folder)


def test_layerwise_probe_matches_separate_runs_and_caches(tmp_path):
    from unip_hf.data.finetuning_data import EvalSegmentationDataset, load_split
    from unip_hf.studies.layerwise_probe import layerwise_probe

    root = str(data_path("buffalo-udder"))
    backbone = UnipViTModel.from_pretrained(tiny_unip(tmp_path / "m")).eval()
    train = EvalSegmentationDataset(load_split("buffalo-udder", root, "train", max_samples=4))
    evaluation = EvalSegmentationDataset(load_split("buffalo-udder", root, "val", max_samples=2))
    before = [p.clone() for p in backbone.parameters()]
    together = layerwise_probe(backbone, train, evaluation, "semantic", 2, 32, steps=5, learning_rate=1e-2,
                               batch_size=2, seed=0, cache_dir=str(tmp_path / "cache"))
    assert together["layers"] == [0, 1, 2] and len(together["values"]) == 3
    assert together["main_metric"] == "mean_iou" and 0.0 <= min(together["values"]) <= max(together["values"]) <= 1.0
    assert (tmp_path / "cache" / "train_features.safetensors").is_file()
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.parameters()))  # the backbone stays frozen
    # one probe trained alone, features recomputed per batch: the same numbers as its column of the joint run
    alone = layerwise_probe(backbone, train, evaluation, "semantic", 2, 32, steps=5, learning_rate=1e-2,
                            batch_size=2, seed=0, layers=[0, 1, 2], cache_features=False)
    assert alone["values"] == pytest.approx(together["values"], abs=1e-3)
    # a second seed reads the cached features
    again = layerwise_probe(backbone, train, evaluation, "semantic", 2, 32, steps=5, learning_rate=1e-2,
                            batch_size=2, seed=1, cache_dir=str(tmp_path / "cache"))
    assert len(again["values"]) == 3


def test_benchmark_smoke_files_and_resume(tmp_path):
    from unip_hf.studies.benchmark import run_benchmark

    root = str(data_path("buffalo-udder"))
    model = tiny_unip(tmp_path / "tiny")
    out = tmp_path / "bench"
    seen = []
    run_benchmark([model], "buffalo-udder", root, str(out), ["layerwise_probe"], [0, 1], "smoke",
                  command="unip benchmark test", on_run_end=seen.append)
    assert [(e["protocol"], e["seed"]) for e in seen] == [("attention", None), ("layerwise_probe", 0),
                                                          ("layerwise_probe", 1)]
    for name in ("results.json", "results.md", "layerwise.png", "nmi_vs_probe.png"):
        assert (out / name).is_file(), name
    assert [p.name.startswith("tiny-") for p in (out / "attention").glob("*.json")] == [True]
    runs = json.loads((out / "results.json").read_text())["runs"]
    layerwise = [r for r in runs if r["protocol"] == "layerwise_probe"]
    assert all(len(r["layerwise"]["values"]) == 3 and r["command"] == "unip benchmark test" and r["wall_s"] > 0
               for r in layerwise)
    assert all(r["eval_split"] == "val" and r["budget"] == "smoke" for r in runs)
    text = (out / "results.md").read_text()
    assert "buffalo-udder (val) layerwise_probe [mean_iou]" in text and "(n=2)" in text and "NMI" in text
    # resume: nothing runs again; a new protocol adds only its runs
    seen.clear()
    run_benchmark([model], "buffalo-udder", root, str(out), ["layerwise_probe"], [0, 1], "smoke",
                  on_run_end=seen.append)
    assert seen == []
    run_benchmark([model], "buffalo-udder", root, str(out), ["layerwise_probe"], [0, 1, 2], "smoke",
                  on_run_end=seen.append)
    assert [(e["protocol"], e["seed"]) for e in seen] == [("layerwise_probe", 2)]  # only the new seed runs
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 4
    assert "(n=3)" in (out / "results.md").read_text()


def test_benchmark_interrupted_run_leaves_no_entry(tmp_path, monkeypatch):
    import unip_hf.studies.benchmark as benchmark

    root = str(data_path("sirst"))
    model = tiny_unip(tmp_path / "tiny", layers=2)
    out = tmp_path / "bench"
    real = benchmark.run_layerwise_protocol

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)  # the run does its work ...
        raise KeyboardInterrupt  # ... and is stopped before it is recorded

    monkeypatch.setattr(benchmark, "run_layerwise_protocol", interrupted)
    with pytest.raises(KeyboardInterrupt):
        benchmark.run_benchmark([model], "sirst", root, str(out), ["layerwise_probe"], [0], "smoke", eval_split="test")
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["protocol"] for r in runs] == ["attention"]  # the finished run only; no partial entry
    assert not list(out.glob("*.tmp*"))
    monkeypatch.setattr(benchmark, "run_layerwise_protocol", real)
    seen = []
    benchmark.run_benchmark([model], "sirst", root, str(out), ["layerwise_probe"], [0], "smoke", eval_split="test",
                            on_run_end=seen.append)
    assert [e["protocol"] for e in seen] == ["layerwise_probe"] and seen[0]["main_metric"] == "iou"


def test_benchmark_cli_finetunes_a_converted_transformers_vit(tmp_path, capsys):
    from transformers import ViTConfig, ViTModel

    from unip_hf import cli

    root = str(data_path("sirst"))
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=8), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    out = tmp_path / "bench"
    code = cli.main(["benchmark", "--models", str(tmp_path / "vit"), "--dataset", "sirst", "--data_dir", root,
                     "--eval_split", "test", "--protocols", "finetune", "--seeds", "0", "--budget", "smoke",
                     "--out", str(out), "--no_attention"])
    assert code == 0
    assert [p.parent.name.startswith("vit-") for p in (out / "converted").glob("*/config.json")] == [True]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["protocol"], r["main_metric"]) for r in runs] == [("finetune", "iou")]
    assert "sirst (test) finetune [iou]" in capsys.readouterr().out


def test_benchmark_converts_dinov2_and_clip_folders_and_probes_one(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model

    from unip_hf.studies.benchmark import resolve_model, run_benchmark

    root = str(data_path("buffalo-udder"))
    torch.manual_seed(0)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    # patch 14, as every released DINOv2: the smoke budget's 32 px crops become 28 px for it
    Dinov2Model(Dinov2Config(**sizes, mlp_ratio=2, image_size=42, patch_size=14)).save_pretrained(tmp_path / "dinov2")
    CLIPVisionModel(CLIPVisionConfig(**sizes, intermediate_size=64, image_size=32, patch_size=8)).save_pretrained(
        tmp_path / "clip")
    out = tmp_path / "bench"
    for name, check in (("dinov2", "layer_scale_init_value"), ("clip", "pre_layernorm")):
        source = resolve_model(str(tmp_path / name), str(out))
        config = json.loads((Path(source.path) / "config.json").read_text())
        assert source.path.startswith(str(out / "converted" / f"{name}-")) and config["model_type"] == "unip"
        assert config[check]  # the family's option is saved with the converted checkpoint
    seen = []
    run_benchmark([str(tmp_path / "dinov2")], "buffalo-udder", root, str(out), ["linear_probe"], [0], "smoke",
                  on_run_end=seen.append)
    assert [e["protocol"] for e in seen] == ["attention", "linear_probe"]
    probe = seen[1]
    assert probe["main_metric"] == "mean_iou" and 0.0 <= probe["value"] <= 1.0 and probe["steps"] == 2
    assert (probe["budget_settings"]["crop_size"], probe["budget_settings"]["attention_size"]) == (28, 28)
    nmi = seen[0]["attention"]["nmi"]  # one value per block of the converted DINOv2
    assert len(nmi) == 2 and all(0.0 <= value <= 1.0 for value in nmi)
    assert "buffalo-udder (val) linear_probe [mean_iou]" in (out / "results.md").read_text()


def test_budget_sides_fit_the_patch_size():
    from unip_hf.studies.benchmark import BUDGETS, fit_budget_to_patch

    sides = {name: (b.crop_size, b.attention_size) for name, b in BUDGETS.items()}
    assert sides == {"smoke": (32, 32), "cpu": (64, 112), "paper": (512, 224)}
    fitted = {name: fit_budget_to_patch(b, 14) for name, b in BUDGETS.items()}
    assert {name: (b.crop_size, b.attention_size) for name, b in fitted.items()} == {
        "smoke": (28, 28), "cpu": (56, 112), "paper": (504, 224)}
    assert fitted["cpu"].finetune_steps == BUDGETS["cpu"].finetune_steps  # only the sides change
    assert all(fit_budget_to_patch(b, patch) == b for b in BUDGETS.values() for patch in (8, 16))
    assert fit_budget_to_patch(BUDGETS["cpu"], 32).attention_size == 96  # CLIP ViT-B/32: 112 px -> 96 px
    assert fit_budget_to_patch(BUDGETS["smoke"], 40).crop_size == 40  # at least one patch


def test_benchmark_refuses_bad_models(tmp_path):
    from unip_hf.studies.benchmark import resolve_model

    assert resolve_model("scratch:unip-tiny", str(tmp_path)).preset == "unip-tiny"
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_model("scratch:unip-huge", str(tmp_path))
    with pytest.raises(ValueError, match="not a model folder"):
        resolve_model(str(tmp_path / "missing"), str(tmp_path))
    from transformers import Dinov2WithRegistersConfig

    Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2).save_pretrained(
        tmp_path / "registers")
    with pytest.raises(ValueError, match="no register tokens"):
        resolve_model(str(tmp_path / "registers"), str(tmp_path))


def test_ablation_smoke_paired_comparison_and_resume(tmp_path):
    from unip_hf.studies.ablation import arm_plan, run_ablation

    pool, rgb, root = data_path("infrared-pool", "tno"), data_path("rgb-pool", "tno"), data_path("buffalo-udder")
    manifest = tmp_path / "infmix.json"
    manifest.write_text(json.dumps({"sources": [
        {"name": "tno", "modality": "infrared", "paths": [str(pool)]},
        {"name": "tno", "modality": "rgb", "paths": [str(rgb)]}]}))
    teacher = tiny_unip(tmp_path / "teacher")
    student = tmp_path / "student.json"
    UnipConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               mlp_ratio=2.0).to_json_file(student)
    out = tmp_path / "abl"
    args = (teacher, "unip-tiny", str(manifest), [("buffalo-udder", str(root), None)], [0, 1], "smoke", str(out))
    store = run_ablation(*args, arms=["nmi_had", "scratch"], protocols=["linear_probe"], student_config=str(student))
    assert sorted((e["model"], e["seed"]) for e in store.entries) == [("nmi_had", 0), ("nmi_had", 1), ("scratch", 0),
                                                                      ("scratch", 1)]
    arms = json.loads((out / "arms.json").read_text())
    assert arms["arms"]["nmi_had"]["sources"] == ["infrared/tno", "rgb/tno"]
    assert arms["arms"]["scratch"]["distill_target"] == "none"
    assert (out / "teacher_attention.json").is_file() and (out / "students" / "nmi_had" / "seed1").is_dir()
    text = (out / "results.md").read_text()
    assert "Paired comparison with nmi_had" in text and "| scratch | buffalo-udder (val) linear_probe | 2 |" in text
    mtime = (out / "results.json").stat().st_mtime_ns
    run_ablation(*args, arms=["nmi_had", "scratch"], protocols=["linear_probe"], student_config=str(student))
    assert (out / "results.json").stat().st_mtime_ns == mtime  # resumed: nothing ran, nothing rewritten
    # the arm plans of the composition arms
    sources = [{"name": "tno", "modality": "infrared", "root": "/i"}, {"name": "tno", "modality": "rgb", "root": "/r"}]
    layers = {"nmi": 1, "local": 0, "global": 2}
    assert arm_plan("rgb_only", sources, layers)["train_data"] == ["/r"]
    assert arm_plan("without_infrared-tno", sources, layers)["train_data"] == ["/r"]
    assert arm_plan("no_grayscale", sources, layers)["grayscale"] is False
    assert arm_plan("layer_global", sources, layers)["teacher_layer"] == 2
    with pytest.raises(ValueError, match="unknown arm"):
        arm_plan("without_rgb-coco", sources, layers)


def test_budget_small_target_img_scale_reaches_the_finetuning_run(tmp_path):
    """`Budget.small_target_img_scale` resizes small-target sets only (the `cpu` budget keeps SIRST near its native
    300x200 instead of 4*crop x crop, which would shrink 2-10 px targets below one patch)."""
    import dataclasses

    from unip_hf.studies.benchmark import BUDGETS, ModelSource, run_training_protocol

    assert BUDGETS["cpu"].small_target_img_scale == "320x256" and BUDGETS["smoke"].small_target_img_scale is None
    budget = dataclasses.replace(BUDGETS["smoke"], small_target_img_scale="96x72")
    source = ModelSource("scratch:unip-tiny", "scratch", preset="unip-tiny")
    scales = {}
    for name, split in (("sirst", "test"), ("buffalo-udder", "val")):
        run_dir = tmp_path / name
        out = run_training_protocol(source, "linear_probe", name, str(data_path(name)), split, budget, 0, str(run_dir))
        assert out["steps"] == budget.probe_steps
        scales[name] = json.loads((run_dir / "preprocessor_config.json").read_text()).get("img_scale")
    assert scales == {"buffalo-udder": [128, 32],  # the recipe's default 4*crop x crop at crop 32
                      "sirst": [96, 72]}
