"""Arguments outside their range are refused at start, naming the argument (issue 9, item 13), and ViT-family
teachers load without the unused pooler (item 16)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers as T
from PIL import Image

from unip_hf import cli
from unip_hf.cli.run_analysis import _load_model
from unip_hf.pretraining.distillation import AttentionTeacher
from unip_hf.pretraining.nmi_had import (
    DistillationArguments,
    PretrainDataArguments,
    PretrainingArguments,
    main as pretrain_main,
)
from unip_hf.evaluation.evaluator import EvaluationArguments, evaluate_main
from unip_hf.training.finetuning import DataArguments, FinetuningArguments, ModelArguments, finetune_main, run_finetuning

REPO = Path(__file__).resolve().parents[1]


def tiny_vit_config():
    return T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=8)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("arguments")
    # a backbone checkpoint without pooler weights (like a ViT-MAE, DINO or classification checkpoint's backbone)
    T.ViTModel(tiny_vit_config(), add_pooling_layer=False).save_pretrained(root / "vit")
    T.ViTModel(tiny_vit_config()).save_pretrained(root / "vit_with_pooler")
    T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 vocab_size=100).save_pretrained(root / "bert")
    (root / "data").mkdir()
    (root / "images").mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32), 40 * i + 20, dtype=np.uint8)).save(root / "images" / f"{i}.png")
    return root


# ----------------------------------------------------------------------------------------------------------------
# The dataclasses (recipe parser and Python callers alike)
# ----------------------------------------------------------------------------------------------------------------

DATACLASS_CASES = [
    (FinetuningArguments, {"layer_decay": -1}, r"--layer_decay must be in \(0, 1\], got -1"),
    (FinetuningArguments, {"layer_decay": 0.0}, r"--layer_decay must be in \(0, 1\]"),
    (FinetuningArguments, {"metric_for_best_model": "foo"}, r"--metric_for_best_model must be one of mean_iou.*'foo'"),
    (FinetuningArguments, {"metric_for_best_model": "fa"}, r"--metric_for_best_model"),  # lower is better
    (FinetuningArguments, {"checkpointing_steps": -1}, r"--checkpointing_steps must be >= 0, got -1"),
    (FinetuningArguments, {"warmup_steps": -5}, r"--warmup_steps must be >= 0, got -5"),
    (FinetuningArguments, {"max_steps": 0}, r"--max_steps must be >= 1, or -1 .*got 0"),
    (FinetuningArguments, {"resume_from_checkpoint": "no_such_run/checkpoint-3"},
     r"--resume_from_checkpoint 'no_such_run/checkpoint-3' is not a folder"),
    (FinetuningArguments, {"eval_steps": -1}, r"--eval_steps must be >= 0"),
    (FinetuningArguments, {"poly_power": 0}, r"--poly_power must be > 0"),
    (PretrainingArguments, {"per_device_train_batch_size": 0}, r"--per_device_train_batch_size must be >= 1"),
    (PretrainingArguments, {"gradient_accumulation_steps": 0}, r"--gradient_accumulation_steps must be >= 1"),
    (PretrainingArguments, {"learning_rate": -1e-4}, r"--learning_rate must be > 0"),
    (PretrainingArguments, {"base_learning_rate": 0.0}, r"--base_learning_rate must be > 0"),
    (PretrainingArguments, {"learning_rate": float("nan")}, r"--learning_rate must be > 0, got nan"),
    (PretrainingArguments, {"weight_decay": -0.1}, r"--weight_decay must be >= 0"),
    (PretrainingArguments, {"adam_beta2": 1.0}, r"--adam_beta2 must be in \[0, 1\)"),
    (PretrainingArguments, {"max_grad_norm": 0.0}, r"--max_grad_norm must be > 0"),
    (PretrainingArguments, {"lr_scheduler_type": "step"}, r"--lr_scheduler_type must be one of cosine, poly"),
    (PretrainingArguments, {"warmup_ratio": 1.5}, r"--warmup_ratio must be in \[0, 1\]"),
    (PretrainingArguments, {"max_steps": -1, "num_train_epochs": 0}, r"--num_train_epochs must be > 0"),
    (PretrainingArguments, {"mixed_precision": "fp32"}, r"--mixed_precision must be one of no, fp16, bf16"),
    (PretrainingArguments, {"logging_steps": 0}, r"--logging_steps must be >= 1"),
    (PretrainingArguments, {"seed": -1}, r"--seed must be in \[0, 4.29497e\+09\]"),
    (PretrainingArguments, {"dataloader_num_workers": -1}, r"--dataloader_num_workers must be >= 0"),
    (PretrainingArguments, {"checkpoints_total_limit": -2}, r"--checkpoints_total_limit must be >= 0"),
    (PretrainingArguments, {"report_to": "tensorbord"}, r"--report_to must be one of none, all, tensorboard"),
    (PretrainingArguments, {"push_to_hub": True}, r"--push_to_hub needs --hub_model_id"),
    (DataArguments, {"irstd_threshold": 5}, r"--irstd_threshold must be in \(0, 1\), got 5"),
    (DataArguments, {"ratio_min": 2, "ratio_max": 0.5}, r"--ratio_max \(0.5\) must be >= --ratio_min \(2\)"),
    (DataArguments, {"ratio_min": 0}, r"--ratio_min must be > 0"),
    (DataArguments, {"crop_size": 0}, r"--crop_size must be >= 1"),
    (DataArguments, {"cat_max_ratio": 0}, r"--cat_max_ratio must be in \(0, 1\]"),
    (DataArguments, {"eval_mode": "tiles"}, r"--eval_mode must be one of whole, slide"),
    (DataArguments, {"eval_stride": 0}, r"--eval_stride must be >= 1"),
    (DataArguments, {"img_scale": "0x512"}, r"--img_scale sides must be >= 1"),
    (DataArguments, {"max_train_samples": 0}, r"--max_train_samples must be >= 1"),
    (DataArguments, {"task": "detection"}, r"--task must be one of auto, semantic, irstd"),
    (ModelArguments, {"model_name_or_path": "./does_not_exist"}, r"--model_name_or_path './does_not_exist': the local "
                                                                 r"path does not exist"),
    (ModelArguments, {"model_name_or_path": "someone/not-downloaded"}, r"no such local folder, and the Hub is offline"),
    (ModelArguments, {"mode": "probe"}, r"--mode must be one of finetune, linear_probe"),
    (ModelArguments, {"preset": "unip-huge"}, r"--preset must be one of"),
    (ModelArguments, {"drop_path_rate": 1.0}, r"--drop_path_rate must be in \[0, 1\)"),
    (ModelArguments, {"config_overrides": "[1]"}, r"--config_overrides must be a JSON object"),
    (ModelArguments, {"config_overrides": "{bad"}, r"--config_overrides is not valid JSON"),
    (EvaluationArguments, {"model_name_or_path": "./nope"}, r"--model_name_or_path './nope': the local path does not"),
    (EvaluationArguments, {"irstd_threshold": 0}, r"--irstd_threshold must be in \(0, 1\)"),
    (EvaluationArguments, {"fa_rule": "strict"}, r"--fa_rule must be one of correct, reference"),
    (PretrainDataArguments, {"crop_min_scale": 1.5}, r"--crop_min_scale must be in \(0, 1\], got 1.5"),
    (PretrainDataArguments, {"crop_min_scale": 0}, r"--crop_min_scale must be in \(0, 1\]"),
    (PretrainDataArguments, {"image_size": 0}, r"--image_size must be >= 1"),
    (PretrainDataArguments, {"image_std": 0}, r"--image_std must be > 0"),
    (PretrainDataArguments, {"train_data": ["./nope"]}, r"--train_data './nope': the local path does not exist"),
    (DistillationArguments, {"teacher_name_or_path": "./nope"}, r"--teacher_name_or_path './nope': the local path"),
    (DistillationArguments, {}, r"--teacher_name_or_path is required unless --distill_target none"),
    (DistillationArguments, {"teacher_name_or_path": "VIT", "teacher_layer": "last"}, r"--teacher_layer must be"),
    (DistillationArguments, {"teacher_name_or_path": "VIT", "teacher_layer_num_images": 0},
     r"--teacher_layer_num_images must be >= 1"),
    (DistillationArguments, {"teacher_name_or_path": "VIT", "distill_target": "logits"}, r"--distill_target must be"),
    (DistillationArguments, {"teacher_name_or_path": "VIT", "feature_loss": "l2"}, r"--feature_loss must be one of"),
    (DistillationArguments, {"teacher_name_or_path": "VIT", "student_config": "./nope.json"},
     r"--student_config './nope.json': no such file or folder"),
]


@pytest.mark.parametrize("cls, kwargs, message", DATACLASS_CASES,
                         ids=[f"{c.__name__}-{'-'.join(map(str, k.items()))}" for c, k, _ in DATACLASS_CASES])
def test_dataclass_refuses_out_of_range_values(assets, cls, kwargs, message):
    kwargs = {k: str(assets / "vit") if v == "VIT" else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_defaults_and_edge_values_are_accepted(assets):
    FinetuningArguments(layer_decay=1.0, checkpointing_steps=0, warmup_steps=0, max_steps=1,
                        metric_for_best_model="niou")
    PretrainingArguments(max_steps=-1, num_train_epochs=0.5, checkpoints_total_limit=None, report_to="none")
    DataArguments(ratio_min=1.0, ratio_max=1.0, irstd_threshold=0.3)
    PretrainDataArguments(train_data=["some-user/some-dataset"], crop_min_scale=1.0)
    DistillationArguments(teacher_name_or_path=str(assets / "vit"), teacher_layer="-1")
    DistillationArguments(distill_target="none")
    ModelArguments()
    EvaluationArguments(model_name_or_path=str(assets / "vit"))


def test_run_finetuning_checks_fields_changed_after_construction(assets, tmp_path):
    model, data, train = ModelArguments(), DataArguments(data_dir=str(assets / "data")), FinetuningArguments()
    train.layer_decay = -1
    with pytest.raises(ValueError, match="--layer_decay"):
        run_finetuning(model, data, train)


# ----------------------------------------------------------------------------------------------------------------
# The recipes: an argparse-style error and exit status 2, before any model or data is loaded
# ----------------------------------------------------------------------------------------------------------------

RECIPE_CASES = [
    ("finetune", ["--layer_decay", "-1"], r"--layer_decay must be in (0, 1], got -1"),
    ("finetune", ["--metric_for_best_model", "foo"], r"--metric_for_best_model must be one of"),
    ("finetune", ["--dataset", "sirst", "--metric_for_best_model", "mean_iou"],
     r"--metric_for_best_model must be one of iou, niou, pd for the irstd task of --dataset sirst; got 'mean_iou'"),
    ("finetune", ["--max_steps", "0"], r"--max_steps must be >= 1"),
    ("finetune", ["--checkpointing_steps", "-1"], r"--checkpointing_steps must be >= 0"),
    ("finetune", ["--warmup_steps", "-5"], r"--warmup_steps must be >= 0, got -5"),
    ("finetune", ["--irstd_threshold", "5"], r"--irstd_threshold must be in (0, 1), got 5"),
    ("finetune", ["--ratio_min", "2", "--ratio_max", "0.5"], r"--ratio_max (0.5) must be >= --ratio_min (2)"),
    ("finetune", ["--model_name_or_path", "./does_not_exist"], r"the local path does not exist"),
    ("finetune", ["--data_dir", "./no_such_data"], r"--data_dir './no_such_data' is not a folder"),
    ("finetune-json", {"layer_decay": -1}, r"--layer_decay must be in (0, 1]"),
    ("pretrain", ["--crop_min_scale", "1.5"], r"--crop_min_scale must be in (0, 1], got 1.5"),
    ("pretrain", ["--teacher_name_or_path", "./nope"], r"--teacher_name_or_path './nope': the local path does not"),
    ("pretrain", ["--teacher_name_or_path", "BERT", "--teacher_layer", "auto"],
     r"is a 'bert' model (BertConfig), not a ViT-family vision model"),
    ("pretrain", ["--checkpointing_steps", "-1"], r"--checkpointing_steps must be >= 0"),
    ("pretrain", ["--teacher_layer", "2"], r"--teacher_layer 2 is out of range for the teacher"),
    ("evaluate", ["--irstd_threshold", "5"], r"--irstd_threshold must be in (0, 1)"),
    ("evaluate", ["--model_name_or_path", "./nope"], r"--model_name_or_path './nope': the local path does not exist"),
]


def recipe_argv(assets, tmp_path, recipe, extra):
    if recipe == "finetune-json":
        path = tmp_path / "args.json"
        path.write_text(json.dumps({"dataset": "folder", "data_dir": str(assets / "data"), **extra}))
        return finetune_main, [str(path)]
    if recipe == "finetune":
        base = ["--dataset", "folder", "--data_dir", str(assets / "data"), "--output_dir", str(tmp_path / "out")]
        return finetune_main, base + extra
    if recipe == "pretrain":
        base = ["--teacher_name_or_path", str(assets / "vit"), "--teacher_layer", "1", "--train_data",
                str(assets / "images"), "--output_dir", str(tmp_path / "out")]
        return pretrain_main, base + [str(assets / "bert") if v == "BERT" else v for v in extra]
    base = ["--model_name_or_path", str(assets / "vit"), "--dataset", "folder", "--data_dir", str(assets / "data")]
    return evaluate_main, base + extra


@pytest.mark.parametrize("recipe, extra, message", RECIPE_CASES,
                         ids=[f"{r}-{'-'.join(map(str, e))}" for r, e, _ in RECIPE_CASES])
def test_recipe_main_exits_2_with_the_message(assets, tmp_path, capsys, recipe, extra, message):
    main, argv = recipe_argv(assets, tmp_path, recipe, extra)
    with pytest.raises(SystemExit) as caught:
        main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert "error: " in err and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before the run started


def test_recipe_script_exits_2_without_traceback(assets, tmp_path):
    command = [sys.executable, str(REPO / "recipes" / "pretrain.py"), "--teacher_name_or_path", str(assets / "bert"),
               "--teacher_layer", "auto", "--train_data", str(assets / "images"), "--output_dir", str(tmp_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "not a ViT-family vision model" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------------------------------------------
# The argparse sub-commands
# ----------------------------------------------------------------------------------------------------------------

CLI_CASES = [
    (["analyze-attention", "VIT", "--images", "IMAGES", "--out", "OUT", "--num-images", "0"],
     "argument --num_images/--num-images: must be an integer >= 1, got 0"),
    (["analyze-attention", "VIT", "--images", "IMAGES", "--out", "OUT", "--num-images", "-3"],
     "argument --num_images/--num-images: must be an integer >= 1, got -3"),
    (["analyze-attention", "VIT", "--images", "IMAGES", "--out", "OUT", "--image-size", "0"],
     "argument --image_size/--image-size: must be an integer >= 1, got 0"),
    (["analyze-attention", "VIT", "--images", "IMAGES", "--out", "OUT", "--batch-size", "0"],
     "argument --batch_size/--batch-size: must be an integer >= 1"),
    (["analyze-attention", "VIT", "--images", "IMAGES", "--out", "OUT", "--map-layers", "-1"],
     "argument --map_layers/--map-layers: must be an integer >= 0"),
    (["data", "inspect", "sirst", "--data_dir", "IMAGES", "--max-images", "-1"],
     "argument --max_images/--max-images: must be an integer >= 0"),
    (["demo", "--max_steps", "0"], "argument --max_steps/--max-steps: must be an integer >= 1"),
    (["demo", "--batch_size", "0"], "argument --batch_size/--batch-size: must be an integer >= 1"),
    (["convert", "IMAGES", "OUT", "--from", "timm", "--num-heads", "0"], "argument --num_heads/--num-heads: must be an integer"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CLI_CASES])
def test_cli_options_refuse_out_of_range_values(assets, tmp_path, capsys, argv, message):
    names = {"VIT": str(assets / "vit"), "IMAGES": str(assets / "images"), "OUT": str(tmp_path / "out")}
    with pytest.raises(SystemExit) as caught:
        cli.main([names.get(a, a) for a in argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model, message", [
    ("./nope", "error: MODEL './nope': the local path does not exist"),
    ("BERT", "is a 'bert' model (BertConfig), not a ViT-family vision model"),
])
def test_analyze_attention_names_a_bad_model(assets, tmp_path, capsys, model, message):
    model = str(assets / "bert") if model == "BERT" else model
    with pytest.raises(SystemExit) as caught:
        cli.main(["analyze-attention", model, "--images", str(assets / "images"), "--out", str(tmp_path / "out")])
    # a missing path is a usage error (issue 22: one line on stderr, status 2, before anything loads)
    assert message in str(caught.value.code) + capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Teachers: ViT-family only, loaded without the unused pooler (no "pooler.dense.* MISSING" load report)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", ["vit", "vit_with_pooler"])
@pytest.mark.parametrize("loader", ["teacher", "analysis"])
def test_vit_teacher_loads_without_a_pooler_report(assets, capfd, checkpoint, loader):
    path = str(assets / checkpoint)
    capfd.readouterr()
    model = AttentionTeacher.from_pretrained(path, teacher_layer=1).model if loader == "teacher" else \
        _load_model(path, trust_remote_code=False)[0]
    out, err = capfd.readouterr()
    assert "pooler" not in out + err and "MISSING" not in out + err and "UNEXPECTED" not in out + err, out + err
    assert (model.pooler is None) == (checkpoint == "vit")


def test_bert_teacher_with_auto_layer_names_the_problem(assets):
    import torch

    with pytest.raises(ValueError, match="not a ViT-family vision model"):
        AttentionTeacher.from_pretrained(str(assets / "bert"), "auto", torch.zeros(2, 3, 32, 32))
