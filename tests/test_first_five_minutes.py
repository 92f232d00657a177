"""Regression tests of issue 22 ("the first five minutes and every command after"): what a newcomer meets in the
first commands (the demo, mistyped paths, bad choices, one-seed ablations, noisy logs, file modes, budgets). Tiny
models and subprocesses of the `unip` command; no timing assertions."""

import os
import stat
import subprocess
import sys

import pytest

from test_checkpoints import tiny_run
from unip_hf import UnipConfig, UnipViTModel


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask_mode():
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# -- item 8: weights written with the umask's mode ---------------------------------------------------------------


def test_saved_model_weights_have_the_same_mode_as_the_other_files(tmp_path):
    """Guards issue 22 item 8: safetensors writes through a private temporary file, so `model.safetensors` came out
    0600 next to 0644 JSON files (a shared model folder unreadable to the group)."""
    model = UnipViTModel(UnipConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64))
    model.save_pretrained(tmp_path)
    assert _mode(tmp_path / "model.safetensors") == _mode(tmp_path / "config.json") == _umask_mode()


def test_checkpoint_files_have_the_umask_mode(tmp_path):
    """Guards issue 22 item 8 for training checkpoints (model, optimizer and scheduler state files)."""
    tiny_run(tmp_path, 2, checkpointing_steps=2)
    folder = tmp_path / "checkpoint-2"
    weights = [name for name in os.listdir(folder) if name.endswith(".safetensors")]
    assert weights
    assert {_mode(folder / name) for name in weights} == {_umask_mode()}


# -- item 5: no verdict from one seed ----------------------------------------------------------------------------


def test_one_paired_seed_gives_no_verdict_and_says_why():
    """Guards issue 22 item 5: a one-seed ablation printed `| scratch | ... | 1 | +0.1 | ... | better |`; one
    difference has no spread, so no verdict, with the reason in the table."""
    from unip_hf.studies.ablation import paired_markdown
    from unip_hf.studies.statistics import paired_comparison

    one = paired_comparison({0: 0.5}, {0: 0.4})
    assert one["verdict"] == "no verdict" and "1 paired seed" in one["verdict_reason"]
    assert paired_comparison({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.4})["verdict"] == "better"
    entries = [{"model": arm, "seed": 0, "dataset": "sirst", "eval_split": "test", "protocol": "finetune",
                "value": value} for arm, value in (("nmi_had", 0.4), ("scratch", 0.5))]
    row = next(line for line in paired_markdown(entries).splitlines() if line.startswith("| scratch"))
    assert "better" not in row and "no verdict" in row and "at least 2" in row


# -- item 6: quiet, consistent output ----------------------------------------------------------------------------


def _all_parsers():
    import argparse

    from unip_hf.cli import build_parser

    def walk(parser, name):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")

    return list(walk(build_parser(), "unip"))


def test_no_option_help_states_its_default_twice():
    """Guards issue 22 item 6: `--student_preset` read `(default unip-tiny) (default: unip-tiny)` and the recipes'
    options `(default: val, else test). (default: None)`."""
    doubled = []
    for name, parser in _all_parsers():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.option_strings and action.help:
                text = formatter._expand_help(action) if "%" in action.help else formatter._get_help_string(action)
                text = text % {"default": action.default} if "%(default)" in text else text
                if text.count("(default") > 1:
                    doubled.append(f"{name} {action.option_strings[0]}: {text}")
    assert not doubled, doubled


def _unip(*args, cwd=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "unip_hf.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def test_finetune_from_a_backbone_logs_one_line_and_one_scale(tmp_path):
    """Guards issue 22 item 6: a fine-tune from a backbone printed transformers' 40-line MISSING table, `[A` cursor
    codes from the eval bar nested under the training bar, and `eval mean_iou = 0.0442` beside a table in percent."""
    from unip_hf.data import write_synthetic_dataset

    UnipViTModel(UnipConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64)).save_pretrained(tmp_path / "backbone")
    write_synthetic_dataset(str(tmp_path / "data"), num_train=4, num_val=2, seed=0, return_dataset=False, height=32,
                            width=32)
    run = _unip("finetune", "--model_name_or_path", tmp_path / "backbone", "--dataset", "folder", "--data_dir",
                tmp_path / "data", "--max_steps", 2, "--eval_steps", 1, "--crop_size", 32,
                "--per_device_train_batch_size", 2, "--output_dir", tmp_path / "run")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "MISSING" not in output and "LOAD REPORT" not in output and "\x1b[A" not in output
    assert "decode head initialised fresh: 79 tensors" in output
    table_value = next(line.split()[-1] for line in run.stdout.splitlines() if line.startswith("mIoU "))
    # the kept (best) evaluation: its progress line, the table and the closing line all in percent
    assert f": eval mIoU {table_value} %" in output and f"done: 2 steps, mIoU {table_value} %" in output


def test_mae_teacher_loads_for_analysis_without_a_load_report(tmp_path, caplog, capfd):
    """Guards issue 22 item 6: loading the package's own ViT-MAE teacher (`unip pretrain-mae` output) for the
    attention analysis printed a 20-35-line UNEXPECTED table (its decoder); now one info line."""
    import logging

    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from unip_hf.models.vit_family import load_vision_backbone

    ViTMAEForPreTraining(ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64, decoder_hidden_size=32,
                                      decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                      decoder_intermediate_size=64)).save_pretrained(tmp_path / "mae")
    with caplog.at_level(logging.INFO):
        model = load_vision_backbone(str(tmp_path / "mae"))
    text = "\n".join(record.getMessage() for record in caplog.records) + capfd.readouterr().err
    assert type(model).__name__ == "ViTMAEModel"
    assert "UNEXPECTED" not in text and "LOAD REPORT" not in text
    assert "not used from the checkpoint" in text and "decoder" in text


# -- items 2 and 3: usage errors at once, one line, exit 2 -------------------------------------------------------

_PROBE = """
import sys
from unip_hf.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    print("exit", exit.code, "torch loaded" if "torch" in sys.modules else "torch not loaded")
"""


def _usage_error(args, cwd):
    """Run `unip ARGS` in a fresh interpreter: (exit status, stderr lines, whether torch was imported)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=300)
    words = run.stdout.split()
    return (int(words[1]) if words[:1] == ["exit"] else None), run.stderr.strip().splitlines(), "torch loaded" in run.stdout


@pytest.mark.parametrize("command", [
    ["predict", "MODEL", "x.png", "--out", "o"],
    ["evaluate", "--model_name_or_path", "MODEL", "--data_dir", "."],
    ["analyze-attention", "MODEL", "--images", ".", "--out", "o"],
    ["convert", "MODEL", "o", "--from", "unip"],
    ["pretrain", "--teacher_name_or_path", "MODEL", "--train_data", "."],
    ["finetune", "--model_name_or_path", "MODEL", "--data_dir", "."],
    ["space", "create", "MODEL", "o"],
    ["benchmark", "--models", "MODEL", "--dataset", "folder", "--data_dir", ".", "--out", "o"],
    ["ablation", "--teacher", "MODEL", "--infmix_root", ".", "--dataset", "folder", "--data_dir", ".", "--out", "o"],
    ["demo", "--model_name_or_path", "MODEL"],
], ids=lambda c: c[0] if c[0] != "space" else "space-create")
@pytest.mark.parametrize("model", ["demo_out/no-such-model", "./nope", "demo_out/file.txt"])
def test_a_mistyped_local_model_path_is_one_line_at_once(tmp_path, command, model):
    """Guards issue 22 item 2: `unip predict demo_out/no-such-model` made five Hub retries and a traceback (the same
    in evaluate, analyze-attention, convert; pretrain only offline). A path that looks local (its folder `demo_out/`
    exists, or it starts with `.`) and is missing, or a file where a model folder is needed, is now one line naming
    it, exit 2, before torch loads."""
    (tmp_path / "demo_out").mkdir()
    (tmp_path / "demo_out" / "file.txt").write_text("not a model")
    if command[0] == "convert" and model.endswith(".txt"):
        pytest.skip("convert reads checkpoint files: a file is a valid SOURCE")
    status, lines, torch_loaded = _usage_error([model if a == "MODEL" else a for a in command], tmp_path)
    assert status == 2 and len(lines) == 1, lines
    assert model in lines[0] and ("does not exist" in lines[0] or "is a file" in lines[0]), lines
    assert not torch_loaded


@pytest.mark.parametrize("command, named", [
    (["finetune", "--dataset", "sirts", "--data_dir", "."], "--dataset"),
    (["finetune", "--max_steps", "0", "--data_dir", "."], "--max_steps"),
    (["finetune", "--decode_head", "fpn", "--data_dir", "."], "--decode_head"),
    (["finetune", "--architecture", "big", "--data_dir", "."], "--architecture"),
    (["finetune", "--preset", "unip-huge", "--data_dir", "."], "--preset"),
    (["finetune", "--eval_mode", "tiles", "--data_dir", "."], "--eval_mode"),
    (["finetune", "--metric_for_best_model", "dice", "--data_dir", "."], "--metric_for_best_model"),
    (["finetune", "--tmt_regions", "grid", "--data_dir", "."], "--tmt_regions"),
    (["evaluate", "--model_name_or_path", ".", "--dataset", "sirts"], "--dataset"),
    (["evaluate", "--model_name_or_path", ".", "--fa_rule", "paper"], "--fa_rule"),
    (["pretrain", "--distill_target", "logits", "--train_data", "."], "--distill_target"),
    (["pretrain", "--distill_target", "none", "--student_preset", "unip-huge", "--train_data", "."],
     "--student_preset"),
    (["pretrain-mae", "--mask_ratio", "1.5", "--train_data", "."], "--mask_ratio"),
])
def test_choice_and_number_errors_come_before_anything_loads(tmp_path, command, named):
    """Guards issue 22 item 3: `unip finetune --dataset sirts` ended in a 20-line traceback (exit 1) and
    `--max_steps 0` was refused only after 15 s of loading. Every choice is now checked before torch loads: exit 2,
    one line naming the option."""
    status, lines, torch_loaded = _usage_error(command, tmp_path)
    assert status == 2 and len(lines) == 1 and named in lines[0], lines
    assert not torch_loaded


def test_light_choice_copies_match_their_owners():
    """`unip_hf.choices` copies the choices of modules it cannot be imported by (the remote-code config, the metric
    modules, the data builders): they must stay equal."""
    from unip_hf import choices
    from unip_hf.models.configuration_unip import LOSS_TYPES, UNIP_PRESETS
    from unip_hf.data.segmentation import SEGMENTATION_BUILDERS
    from unip_hf.evaluation.metrics import RANKED_METRICS
    from unip_hf.evaluation.metrics.irstd.irstd import FA_RULES
    from unip_hf.training.transferability import REGION_MODES

    assert choices.PRESET_NAMES == tuple(UNIP_PRESETS) and choices.LOSS_TYPES == LOSS_TYPES
    assert choices.RANKED_METRICS == RANKED_METRICS and choices.FA_RULES == FA_RULES
    assert set(choices.SEGMENTATION_DATASETS) == set(SEGMENTATION_BUILDERS) and REGION_MODES is choices.REGION_MODES


# -- item 9: budgets from a file and per-field overrides ---------------------------------------------------------


def test_budget_file_and_overrides_are_resolved_and_named(tmp_path):
    """Guards issue 22 item 9: `--budget` took only smoke / cpu / paper; a budget file and `--budget_set` now
    resolve to a `Budget` whose name records the changes, and unknown fields or bad types are named."""
    import json

    from unip_hf.argument_checks import UsageError
    from unip_hf.studies.benchmark import BUDGETS, resolve_budget

    path = tmp_path / "my_budget.json"
    path.write_text(json.dumps({"base": "cpu", "pretrain_steps": 800, "pretrain_image_size": 128}))
    budget = resolve_budget(str(path))
    assert budget.name == "my_budget" and budget.pretrain_steps == 800 and budget.crop_size == BUDGETS["cpu"].crop_size
    changed = resolve_budget("cpu", ["finetune_steps=300", "pretrain_image_size=128"])
    assert changed.finetune_steps == 300 and changed.pretrain_image_size == 128
    assert changed.name == "cpu+finetune_steps=300+pretrain_image_size=128"
    assert resolve_budget("cpu", ["max_train_samples=none"]).max_train_samples is None
    for spec, overrides, named in [("cpu", ["finetune_step=3"], "finetune_step=3"),
                                   ("cpu", ["finetune_steps=many"], "finetune_steps must be an integer"),
                                   ("cpu", ["finetune_lr=-1"], "finetune_lr must be > 0"),
                                   ("gpu", [], "'gpu'")]:
        with pytest.raises(UsageError, match=named):
            resolve_budget(spec, overrides)
    path.write_text(json.dumps({"finetune_stepz": 3}))
    with pytest.raises(UsageError, match="unknown field.*finetune_stepz"):
        resolve_budget(str(path))


def test_budget_is_recorded_and_another_budget_of_the_same_name_is_refused(tmp_path):
    """Guards issue 22 item 9: results.json records the budget actually used (`budget_requested`), and a re-run into
    the same --out with other settings under the same budget name is refused instead of mixing schedules."""
    import json

    from conftest import data_path
    from test_benchmark import tiny_unip
    from unip_hf.argument_checks import UsageError
    from unip_hf.studies.benchmark import resolve_budget, run_benchmark

    root = str(data_path("buffalo-udder"))
    model = tiny_unip(tmp_path / "tiny")
    out = tmp_path / "bench"
    budget = resolve_budget("smoke", ["layerwise_steps=3"])
    run_benchmark([model], "buffalo-udder", root, str(out), ["layerwise_probe"], [0], budget, attention=False)
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert runs[0]["budget"] == "smoke+layerwise_steps=3" and runs[0]["budget_requested"]["layerwise_steps"] == 3
    edited = budget.__class__(**{**runs[0]["budget_requested"], "layerwise_steps": 4})
    with pytest.raises(UsageError, match="layerwise_steps: 3 there, 4 now"):
        run_benchmark([model], "buffalo-udder", root, str(out), ["layerwise_probe"], [0], edited, attention=False)


def test_budget_errors_on_the_command_line_are_one_line(tmp_path):
    """Guards issue 22 item 9 on the command line: `--budget_set` with an unknown field exits 2 with one line."""
    status, lines, torch_loaded = _usage_error(["benchmark", "--models", "scratch:unip-tiny", "--dataset", "folder",
                                                "--data_dir", ".", "--out", "o", "--budget", "cpu", "--budget_set",
                                                "finetune_step=300"], tmp_path)
    assert status == 2 and len(lines) == 1 and "finetune_step=300" in lines[0] and not torch_loaded


# -- item 1: one thread policy for every command ----------------------------------------------------------------


def test_every_runnable_command_has_num_threads_and_the_policy_is_explicit(monkeypatch):
    """Guards issue 22 item 1: torch's default threads fought other processes on shared cores (40 demo steps: 80 s
    with 2 threads, 29 s with one). Every runnable command takes --num_threads; unset, OMP_NUM_THREADS wins, then
    one thread for `unip demo`, then torch's default."""
    from unip_hf.cli import build_parser
    from unip_hf.cli.commands import thread_policy

    leaves = [(name, parser) for name, parser in _all_parsers() if parser.get_default("func") is not None]
    assert len(leaves) > 10
    missing = [name for name, parser in leaves if "--num_threads" not in parser._option_string_actions]
    assert not missing, missing
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    parser = build_parser()
    assert thread_policy(parser.parse_args(["demo"]))[0] == 1
    assert thread_policy(parser.parse_args(["demo", "--num_threads", "2"])) == (2, "--num_threads")
    assert thread_policy(parser.parse_args(["predict", "m", "x.png", "--out", "o"]))[0] is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_policy(parser.parse_args(["demo"])) == (3, "OMP_NUM_THREADS")


# -- item 7: README blocks stay in demo_out/, extras installed from the checkout -------------------------------


def test_readme_blocks_write_only_under_demo_out_and_extras_come_from_the_checkout():
    """Guards issue 22 item 7: README blocks left my_space/, unip.onnx, unip.preprocessor.json and overlay.png in the
    repository root, and told users `pip install "unip-hf[onnx]"` for a package that is not on the index."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = "\n".join(page.read_text(encoding="utf-8") for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    for name in ("my_space", "unip.onnx", "overlay.png"):
        for block in blocks:
            for token in re.findall(r"\S*" + re.escape(name), block):
                assert token.startswith("demo_out/"), (name, token)
    assert "unip-hf[" not in text and 'pip install -e ".[onnx]"' in text
    assert "--architecture semantic" in text  # the SIRST LL-FPN reference row names the model it measured
