"""Tests of the UNIP fine-tuning and evaluation recipes (`recipes/finetune.py`, `recipes/eval_segmentation.py`):
argument parsing into the dataclasses, a tiny run through `finetune_main`, `evaluate_main` on the saved checkpoint
(table, `eval_results.json`, `.eval_results/*.yaml`, other data sets' results kept), the recipe scripts as
subprocesses, and the IRSTD task on a small-target layout."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import parse_eval_result_entries
from PIL import Image

from unip_hf.data import write_synthetic_dataset
from unip_hf.evaluation.evaluator import EvaluationArguments, evaluate_main, parse_evaluation_args, run_evaluation
from unip_hf.training.finetuning import DataArguments, FinetuningArguments, ModelArguments, finetune_main, parse_finetuning_args
from unip_hf.hub.results import BenchmarkResult, write_eval_results
from conftest import reset_accelerate

ROOT = Path(__file__).resolve().parents[1]
TINY = '{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "decoder_hidden_size": 16, "auxiliary_channels": 8}'


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny fine-tuning run through the recipe's entry point; its data and output folders."""
    root = tmp_path_factory.mktemp("recipe")
    data = root / "data"
    write_synthetic_dataset(str(data), num_train=4, num_val=2, height=32, width=40, return_dataset=False)
    out = root / "model"
    reset_accelerate()
    code = finetune_main([
        "--model_name_or_path", "none", "--preset", "unip-tiny", "--patch_size", "8", "--config_overrides", TINY,
        "--dataset", "folder", "--data_dir", str(data), "--crop_size", "32", "--img_scale", "40x32",
        "--per_device_train_batch_size", "2", "--max_steps", "2", "--checkpointing_steps", "0",
        "--learning_rate", "1e-3", "--cache_dir", str(root / "cache"), "--output_dir", str(out),
    ])
    assert code == 0
    return data, out, root


def test_parse_finetuning_args_defaults_and_json(tmp_path):
    for name in ("x", "y", "d", "m"):  # paths are checked at parse time
        (tmp_path / name).mkdir()
    model, data, train = parse_finetuning_args(["--dataset", "sirst", "--data_dir", str(tmp_path / "x"),
                                                "--mode", "linear_probe"])
    assert isinstance(model, ModelArguments) and isinstance(data, DataArguments)
    assert isinstance(train, FinetuningArguments)
    assert model.mode == "linear_probe" and model.decode_head == "ll_fpn" and model.model_name_or_path == "none"
    assert train.layer_decay == 0.85 and train.learning_rate == 1e-4 and train.lr_scheduler_type == "poly"
    assert train.weight_decay == 0.05 and train.per_device_train_batch_size == 8 and data.eval_mode == "whole"
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"dataset": "buffalo-udder", "data_dir": str(tmp_path / "y"), "eval_mode": "slide",
                                      "max_steps": 7}))
    _, data, train = parse_finetuning_args([str(config)])
    assert data.dataset == "buffalo-udder" and data.eval_mode == "slide" and train.max_steps == 7
    args = parse_evaluation_args(["--model_name_or_path", str(tmp_path / "m"), "--dataset", "sirst",
                                  "--data_dir", str(tmp_path / "d")])
    assert isinstance(args, EvaluationArguments) and args.fa_rule == "correct" and args.split is None


def test_finetune_main_saves_a_loadable_model(trained):
    from transformers import AutoModelForSemanticSegmentation

    _, out, _ = trained
    model = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert type(model).__name__ == "UnipForSemanticSegmentation" and model.config.num_labels == 5
    assert json.loads((out / "eval_results.json").read_text())["results"][0]["dataset_split"] == "val"


def test_evaluate_main_prints_table_and_writes_results(trained, tmp_path, capsys):
    data, out, root = trained
    target = tmp_path / "eval"
    # results of another data set already in the folder are kept
    write_eval_results(target, [BenchmarkResult(dataset_id="unip-hf/sirst", metrics={"iou": 0.5}, task="irstd")])
    reset_accelerate()
    assert evaluate_main(["--model_name_or_path", str(out), "--dataset", "folder", "--data_dir", str(data),
                          "--img_scale", "40x32", "--eval_mode", "slide", "--crop_size", "32",
                          "--cache_dir", str(root / "cache"), "--output_dir", str(target)]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "background" in printed and "hot_target" in printed
    results = json.loads((target / "eval_results.json").read_text())["results"]
    assert [r["dataset_id"] for r in results] == ["unip-hf/sirst", "folder"]
    assert results[1]["notes"] == "slide 32/21, single scale" and results[1]["dataset_split"] == "val"
    written = sorted(p.name for p in (target / ".eval_results").iterdir())
    assert written == ["folder-val.yaml", "unip-hf--sirst-test.yaml"]
    entries = parse_eval_result_entries(yaml.safe_load((target / ".eval_results" / "folder-val.yaml").read_text()))
    assert {e.task_id for e in entries} >= {"mean_iou", "mean_accuracy", "overall_accuracy"}


def write_small_target_set(root: Path) -> None:
    """A SIRST-layout folder (images/Misc_N.png, masks/Misc_N_pixels0.png, split files) with hand-made targets."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    names = []
    for index in range(1, 5):
        image = rng.integers(40, 80, (32, 32)).astype(np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        y, x = rng.integers(4, 28, 2)
        image[y - 1:y + 2, x - 1:x + 2] = 250
        mask[y - 1:y + 2, x - 1:x + 2] = 255
        Image.fromarray(image).save(root / "images" / f"Misc_{index}.png")
        Image.fromarray(mask).save(root / "masks" / f"Misc_{index}_pixels0.png")
        names.append(f"Misc_{index}")
    (root / "train.txt").write_text("\n".join(names[:2]) + "\n")
    (root / "test.txt").write_text("\n".join(names[2:]) + "\n")


def test_evaluate_small_target_set_reports_irstd_metrics(trained, tmp_path, capsys):
    from unip_hf import UnipConfig, UnipForSemanticSegmentation, UnipImageProcessor

    data_dir = tmp_path / "sirst"
    write_small_target_set(data_dir)
    model_dir = tmp_path / "binary"
    config = UnipConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        num_labels=2, auxiliary_channels=8, decoder_hidden_size=16,
                        id2label={0: "background", 1: "target"}, label2id={"background": 0, "target": 1})
    UnipForSemanticSegmentation(config).save_pretrained(model_dir)
    UnipImageProcessor.from_model_config(config).save_pretrained(model_dir)
    reset_accelerate()
    result = run_evaluation(EvaluationArguments(model_name_or_path=str(model_dir), dataset="sirst",
                                                data_dir=str(data_dir), img_scale="none",
                                                cache_dir=str(tmp_path / "cache")))
    assert result["task"] == "irstd" and result["split"] == "test"  # sirst has no val split here: test is used
    assert set(result["metrics"]) >= {"iou", "niou", "pd", "fa", "num_targets"}
    assert result["metrics"]["num_targets"] == 2 and result["metrics"]["total_pixels"] == 2 * 32 * 32
    printed = capsys.readouterr().out
    assert "Pd" in printed and "Fa (x 1e-6)" in printed
    stored = json.loads((model_dir / "eval_results.json").read_text())["results"][0]
    assert stored["task"] == "irstd" and stored["dataset_id"] == "sirst"


def test_evaluate_refuses_a_class_mismatch(trained, tmp_path):
    data, out, root = trained
    data_dir = tmp_path / "sirst"
    write_small_target_set(data_dir)
    reset_accelerate()
    with pytest.raises(ValueError, match="5 classes but sirst"):
        run_evaluation(EvaluationArguments(model_name_or_path=str(out), dataset="sirst", data_dir=str(data_dir),
                                           cache_dir=str(tmp_path / "cache")))


def test_recipe_scripts_run_as_scripts(trained, tmp_path):
    """`python recipes/eval_segmentation.py` must not shadow the `evaluate` library with itself."""
    data, out, root = trained
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "eval_segmentation.py"), "--model_name_or_path", str(out),
         "--dataset", "folder", "--data_dir", str(data), "--img_scale", "40x32", "--cache_dir", str(root / "cache"),
         "--output_dir", str(tmp_path / "script")],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "mIoU" in run.stdout and (tmp_path / "script" / "eval_results.json").is_file()
    help_run = subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune.py"), "--help"], capture_output=True,
                              text=True, env=env, timeout=60)
    assert help_run.returncode == 0 and "--layer_decay" in help_run.stdout and "--eval_mode" in help_run.stdout


def test_recipes_shadow_no_library_and_leave_sys_path_alone():
    """`python recipes/X.py` puts `recipes/` first on `sys.path`, so a recipe named like a library (`evaluate.py`)
    would be imported in its place; with distinct names the recipes need no `sys.path` surgery."""
    recipes = sorted((ROOT / "recipes").glob("*.py"))
    assert {path.name for path in recipes} == {"eval_segmentation.py", "finetune.py", "pretrain.py"}
    for path in recipes:
        assert importlib.util.find_spec(path.stem) is None, f"{path} shadows the installed module {path.stem!r}"
        assert "sys.path" not in path.read_text(), f"{path} edits sys.path"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = ROOT / "recipes" / "eval_segmentation.py"
    run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and "--split" in run.stdout and "--fa_rule" in run.stdout, run.stderr[-2000:]
    # What the metrics import when a recipe runs: the folder of the script comes first on sys.path.
    probe = f"import sys; sys.path.insert(0, {str(script.parent)!r}); import evaluate; print(evaluate.__file__)"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert Path(run.stdout.strip()).parent.name == "evaluate" and "recipes" not in Path(run.stdout.strip()).parts


def test_evaluate_push_to_hub_sends_model_card_and_results(trained, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, ModelCard

    data, out, root = trained
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append((repo_id, sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*")
                                      if p.is_file())))
        return "commit-info"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    target = tmp_path / "pushed"
    reset_accelerate()
    run_evaluation(EvaluationArguments(model_name_or_path=str(out), dataset="folder", data_dir=str(data),
                                       img_scale="40x32", cache_dir=str(root / "cache"), output_dir=str(target),
                                       push_to_hub=True, hub_model_id="someone/unip-eval"))
    ((repo_id, files),) = calls
    assert repo_id == "someone/unip-eval"
    for name in (".eval_results/folder-val.yaml", "README.md", "config.json", "model.safetensors", "modeling_unip.py",
                 "preprocessor_config.json", "eval_results.json"):
        assert name in files, name
    card = ModelCard.load(target / "README.md")
    assert card.data.pipeline_tag == "image-segmentation" and "mean_iou" in {r.metric_type for r in
                                                                           card.data.eval_results}
