"""Training curves and re-runs (issue 15, item 4): `training_curves.png` at the end of pre-training and fine-tuning
(loss, learning rate, evaluation metric, from `trainer_state.json` / `eval_log.json`), `unip plot RUN_DIR`, one
warning and no crash without matplotlib, and a run into an `--output_dir` holding checkpoints refused with the flags
that resume or start over."""

import builtins
import json
import logging

import numpy as np
import pytest
import transformers as T
from PIL import Image

from unip_hf import UnipConfig
from unip_hf.training import curves as training_curves
from unip_hf.cli import main
from unip_hf.data import write_synthetic_dataset
from unip_hf.training.checkpoints import list_checkpoints
from unip_hf.training.curves import plot_training_curves, read_run_logs, write_training_curves
from conftest import reset_accelerate

TINY = '{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "decoder_hidden_size": 16, "auxiliary_channels": 8}'


def _write_logs(folder, with_eval=True):
    folder.mkdir(parents=True, exist_ok=True)
    history = [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-3 * (1 - s / 10)} for s in range(1, 11)]
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10, "log_history": history}))
    if with_eval:
        (folder / "eval_log.json").write_text(json.dumps({"main_metric": "mean_iou", "history": [
            {"step": 5, "metrics": {"mean_iou": 0.3}}, {"step": 10, "metrics": {"mean_iou": 0.4}}]}))
    return folder


def test_curves_from_the_logs(tmp_path):
    run = _write_logs(tmp_path / "run")
    curves = read_run_logs(str(run))
    assert curves["steps"] == list(range(1, 11)) and curves["loss"][0] == 2.0
    assert curves["eval_metric"] == "mean_iou" and curves["eval_steps"] == [5, 10]
    path = plot_training_curves(str(run))
    three = Image.open(path)
    two = Image.open(plot_training_curves(str(_write_logs(tmp_path / "pre", with_eval=False))))
    assert three.size[0] > two.size[0] > 0  # a third panel for the evaluations


def test_unip_plot_redraws_and_names_a_folder_without_logs(tmp_path, capsys):
    run = _write_logs(tmp_path / "run")
    assert main(["plot", str(run)]) == 0
    assert (run / "training_curves.png").is_file() and "wrote" in capsys.readouterr().out
    assert main(["plot", str(tmp_path)]) == 1
    assert "has no trainer_state.json" in capsys.readouterr().out


def test_without_matplotlib_the_run_warns_once_and_goes_on(tmp_path, monkeypatch, caplog):
    run = _write_logs(tmp_path / "run")
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr(training_curves, "_warned_missing", False)
    with caplog.at_level(logging.WARNING, logger="unip_hf.training.curves"):
        assert write_training_curves(str(run)) is None and write_training_curves(str(run)) is None
    warnings = [r.getMessage() for r in caplog.records if "matplotlib" in r.getMessage()]
    assert len(warnings) == 1 and 'pip install "unip-hf[plots]"' in warnings[0]
    assert not (run / "training_curves.png").exists()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg")
    write_synthetic_dataset(str(folder), num_train=4, num_val=2, height=32, width=40, return_dataset=False)
    return folder


def _finetune(data, out, *extra):
    reset_accelerate()
    return main(["finetune", "--model_name_or_path", "none", "--preset", "unip-tiny", "--patch_size", "8",
                 "--config_overrides", TINY, "--dataset", "folder", "--data_dir", str(data), "--crop_size", "32",
                 "--img_scale", "40x32", "--per_device_train_batch_size", "2", "--max_steps", "2",
                 "--checkpointing_steps", "1", "--eval_steps", "1", "--learning_rate", "1e-3",
                 "--cache_dir", str(data / "cache"), "--output_dir", str(out), *extra])


def test_finetune_writes_curves_and_refuses_to_start_over_silently(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _finetune(data, out) == 0
    assert (out / "training_curves.png").is_file()
    assert read_run_logs(str(out))["eval_steps"] == [1, 2]
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        _finetune(data, out)
    assert caught.value.code == 2
    error = " ".join(capsys.readouterr().err.split())
    assert f"--output_dir {out} already holds 2 checkpoint(s) of an earlier run (newest: checkpoint-2)" in error
    assert "add --resume_from_checkpoint latest" in error and "add --overwrite_output_dir" in error
    # resuming continues from step 2; overwriting starts from step 0 again
    assert _finetune(data, out, "--resume_from_checkpoint", "latest", "--max_steps", "3") == 0
    assert [c.rsplit("-", 1)[1] for c in list_checkpoints(str(out))] == ["1", "2", "3"]
    assert _finetune(data, out, "--overwrite_output_dir") == 0
    assert [c.rsplit("-", 1)[1] for c in list_checkpoints(str(out))] == ["1", "2"]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_pretraining_writes_curves(tmp_path):
    teacher = T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                     image_size=32, patch_size=8), add_pooling_layer=False)
    teacher.save_pretrained(tmp_path / "teacher")
    UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, last_layer_num_attention_heads=4,
               image_size=32, patch_size=8).to_json_file(str(tmp_path / "student.json"))
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    reset_accelerate()
    assert main(["pretrain", "--teacher_name_or_path", str(tmp_path / "teacher"), "--teacher_layer", "1",
                 "--student_config", str(tmp_path / "student.json"), "--train_data", str(tmp_path / "images"),
                 "--image_size", "32", "--per_device_train_batch_size", "4", "--max_steps", "2",
                 "--learning_rate", "1e-3", "--output_dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "training_curves.png").is_file()
    assert read_run_logs(str(tmp_path / "out"))["steps"] == [1, 2]
