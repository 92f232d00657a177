"""Tests of checkpoint and training-state trust (`unip_hf.training.loop`): no non-finite checkpoint, atomic saves and a
`latest` that skips incomplete ones, a pickle-free format that never unpickles what it finds, Ctrl-C, resuming with
other settings, and fine-tuning evaluations redone after an interruption. Tiny models, seconds each."""

import json
import logging
import os
import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from test_training import KeyedNoise, Tiny, fresh_accelerator
from unip_hf.training.loop import TrainingInterrupted, train_loop
from unip_hf.training.checkpoints import CheckpointManager, list_checkpoints
from unip_hf.training.state_files import CheckpointError
from unip_hf.training.optimization import create_optimizer, create_scheduler
from unip_hf.training.sampler import EpochSampler
from unip_hf.training.nan_guard import NonFiniteLossError, NonFiniteStateError
from unip_hf.training.state_files import file_sha256


def tiny_run(out, max_steps, *, lr=0.05, bs=2, sgd=False, lr_lambda=None, checkpointing_steps=0, total_limit=None,
             resume=None, loss_hook=None, on_step_end=None, accumulation=1, **loop):
    """Train `Tiny` on `KeyedNoise`; returns (result, final weights). `loss_hook(call, loss)` may replace a loss."""
    from accelerate.utils import set_seed

    accelerator = fresh_accelerator()
    set_seed(0)
    model = Tiny()
    dataset = KeyedNoise()
    sampler = EpochSampler(len(dataset), seed=1)
    loader = DataLoader(dataset, batch_size=bs, sampler=sampler, drop_last=True)
    if sgd:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda or (lambda step: 1.0))
    else:
        optimizer = create_optimizer(model, lr, weight_decay=0.05)
        scheduler = create_scheduler("cosine", optimizer, 2, 10)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    calls = {"n": 0}

    def loss_fn(batch):
        calls["n"] += 1
        x, y = batch
        loss = nn.functional.mse_loss(model(x), y)
        return loss_hook(calls["n"], loss) if loss_hook else loss

    result = train_loop(accelerator, model, optimizer, scheduler, loader, sampler, loss_fn, max_steps, str(out),
                        checkpointing_steps=checkpointing_steps, checkpoints_total_limit=total_limit,
                        resume_from_checkpoint=resume, on_step_end=on_step_end,
                        gradient_accumulation_steps=accumulation, **loop)
    weights = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    return result, weights


def checkpoint_tensors(path):
    from safetensors.torch import load_file

    return {f"{name}:{key}": value for name in os.listdir(path) if name.endswith(".safetensors")
            for key, value in load_file(os.path.join(path, name)).items()}


def assert_all_finite(path):
    for key, value in checkpoint_tensors(path).items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"{path}: {key} is not finite"


def names(out):
    return [os.path.basename(p) for p in list_checkpoints(str(out))]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)


# ------------------------------------------------------------------------------------------------- item 1: NaN guard
def scaled(call, loss):
    return loss * 1e3  # big gradients, so that a learning rate near the float32 limit overflows the weights


def test_huge_learning_rate_never_saves_non_finite_parameters(tmp_path):
    # lr 3e38: the first update makes the weights infinite while the loss of that step was finite. Before the fix the
    # loss was checked before optimizer.step(), so checkpoint-1 held inf weights and the error of step 2 named it.
    with pytest.raises(NonFiniteStateError, match="step 1.*no checkpoint was saved yet"):
        tiny_run(tmp_path, 4, sgd=True, lr=3e38, loss_hook=scaled, checkpointing_steps=1)
    assert names(tmp_path) == []


def test_nan_guard_names_a_checkpoint_that_is_finite(tmp_path):
    # the learning rate jumps to 3e38 at step 3: steps 1-2 are fine, step 3 makes the weights non-finite
    out = tmp_path / "sgd"
    with pytest.raises(NonFiniteLossError, match="checkpoint-2") as error:
        tiny_run(out, 6, sgd=True, lr=3e38, lr_lambda=lambda step: 1.0 if step >= 2 else 1e-42, loss_hook=scaled,
                 checkpointing_steps=1)
    assert isinstance(error.value, NonFiniteStateError) and "--resume_from_checkpoint" in str(error.value)
    assert names(out) == ["checkpoint-1", "checkpoint-2"]
    for path in list_checkpoints(str(out)):
        assert_all_finite(path)
    result, _ = tiny_run(out, 2, sgd=True, lr=1.0, resume="latest")  # the named checkpoint resumes
    assert result.resumed_from.endswith("checkpoint-2")


def test_save_refuses_non_finite_optimizer_state(tmp_path):
    accelerator = fresh_accelerator()
    model = Tiny()
    optimizer = create_optimizer(model, 0.01)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    next(iter(optimizer.state.values()))["exp_avg_sq"].fill_(float("inf"))
    manager = CheckpointManager(accelerator, str(tmp_path), model=model, optimizer=optimizer)
    with pytest.raises(NonFiniteStateError, match="optimizer state"):
        manager.save(1)
    assert not [n for n in os.listdir(tmp_path) if "checkpoint" in n]


def test_resume_refuses_a_non_finite_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_run(tmp_path, 2, checkpointing_steps=2)
    model_file = tmp_path / "checkpoint-2" / "model.safetensors"
    tensors = load_file(str(model_file))
    tensors["linear.weight"][0, 0] = float("nan")
    save_file(tensors, str(model_file))
    state = json.loads((tmp_path / "checkpoint-2" / "training_state.json").read_text())
    state["files"]["model.safetensors"] = model_file.stat().st_size
    state["sha256"]["model.safetensors"] = file_sha256(str(model_file))  # consistent: only the NaN guard can see it
    (tmp_path / "checkpoint-2" / "training_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="non-finite model parameters"):
        tiny_run(tmp_path, 4, resume="latest")


# ------------------------------------------------------------------------------------------------- item 4: atomic saves
def test_latest_skips_empty_and_half_written_checkpoints(tmp_path, caplog):
    tiny_run(tmp_path, 4, checkpointing_steps=2)
    (tmp_path / "checkpoint-25").mkdir()  # empty
    half = tmp_path / "checkpoint-30"  # a copy cut short: truncated weights, no training_state.json
    half.mkdir()
    (half / "model.safetensors").write_bytes((tmp_path / "checkpoint-4" / "model.safetensors").read_bytes()[:50])
    truncated = tmp_path / "checkpoint-40"  # complete marker, but a file shorter than recorded
    os.system(f"cp -r {tmp_path / 'checkpoint-4'} {truncated}")
    data = (truncated / "optimizer.safetensors").read_bytes()
    (truncated / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
    manager = CheckpointManager(None, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="unip_hf.training.loop"):
        assert manager.resolve("latest").endswith("checkpoint-4")
    for skipped in ("checkpoint-25", "checkpoint-30", "checkpoint-40"):
        assert skipped in caplog.text
    assert "truncated optimizer.safetensors" in caplog.text
    for named, why in ((tmp_path / "checkpoint-25", "no training_state.json"),
                       (truncated, "truncated optimizer.safetensors")):
        with pytest.raises(CheckpointError, match=why):
            manager.resolve(str(named))
    result, _ = tiny_run(tmp_path, 6, resume="latest")
    assert result.resumed_from.endswith("checkpoint-4") and result.global_step == 6


def test_killed_save_leaves_no_checkpoint_and_is_cleaned_up(tmp_path, monkeypatch):
    import unip_hf.training.checkpoints as training  # where CheckpointManager calls save_state_file

    real = training.save_state_file

    def dies_on_the_optimizer(folder, name, state):
        if name == "optimizer" and folder.endswith("checkpoint-4"):
            raise SystemExit("killed during the save")
        return real(folder, name, state)

    monkeypatch.setattr(training, "save_state_file", dies_on_the_optimizer)
    with pytest.raises(SystemExit):
        tiny_run(tmp_path, 4, checkpointing_steps=2)
    assert names(tmp_path) == ["checkpoint-2"] and (tmp_path / ".tmp-checkpoint-4").is_dir()
    monkeypatch.setattr(training, "save_state_file", real)
    result, _ = tiny_run(tmp_path, 4, checkpointing_steps=2, resume="latest")
    assert result.resumed_from.endswith("checkpoint-2")
    assert names(tmp_path) == ["checkpoint-2", "checkpoint-4"] and not (tmp_path / ".tmp-checkpoint-4").exists()


def test_rotation_keeps_the_complete_checkpoint_when_newer_folders_are_incomplete(tmp_path):
    (tmp_path / "checkpoint-9").mkdir(parents=True)  # an incomplete folder with a higher step
    # before the fix the oldest-first rotation counted checkpoint-9 and deleted every checkpoint just written
    tiny_run(tmp_path, 4, checkpointing_steps=2, total_limit=1)
    assert names(tmp_path) == ["checkpoint-4", "checkpoint-9"]
    assert CheckpointManager(None, str(tmp_path)).resolve("latest").endswith("checkpoint-4")


# ------------------------------------------------------------------------------------------------- item 17: no pickle
class _Marker:
    """Unpickling this creates a file: proof that code from a checkpoint ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant_pickles(folder, marker):
    payload = pickle.dumps(_Marker(str(marker)))
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "pytorch_model.bin",
                 "scheduler.bin"):
        (folder / name).write_bytes(payload)


def test_checkpoints_are_pickle_free_and_crafted_pickles_never_run(tmp_path):
    _, straight = tiny_run(tmp_path / "a", 6)
    tiny_run(tmp_path / "b", 3, checkpointing_steps=3)
    folder = tmp_path / "b" / "checkpoint-3"
    assert all(name.endswith((".json", ".safetensors")) for name in os.listdir(folder)), os.listdir(folder)
    marker = tmp_path / "code-ran"
    plant_pickles(folder, marker)
    result, resumed = tiny_run(tmp_path / "b", 6, resume="latest")
    assert not marker.exists()
    assert result.resumed_from.endswith("checkpoint-3")
    assert_same(resumed, straight)  # and the resume is still exact


def test_accelerate_format_checkpoint_is_refused_unless_asked_for(tmp_path, caplog):
    tiny_run(tmp_path, 2, checkpointing_steps=2, checkpoint_format="accelerate")
    folder = tmp_path / "checkpoint-2"
    assert (folder / "random_states_0.pkl").is_file()  # accelerate's save_state, kept behind the flag
    marker = tmp_path / "code-ran"
    (folder / "random_states_0.pkl").write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(CheckpointError, match="pickle.*--checkpoint_format accelerate"):
        tiny_run(tmp_path, 4, resume=str(folder))
    with caplog.at_level(logging.WARNING, logger="unip_hf.training.loop"):
        result, _ = tiny_run(tmp_path, 4, resume="latest")  # skipped, so it starts fresh
    assert result.resumed_from is None and "checkpoint-2" in caplog.text
    assert not marker.exists()
    with pytest.raises(ValueError, match="checkpoint_format"):
        tiny_run(tmp_path, 1, checkpoint_format="pickle")


# ------------------------------------------------------------------------------------------------- item 6: step log
def test_checkpoint_without_its_state_files_is_refused(tmp_path):
    tiny_run(tmp_path, 2, checkpointing_steps=2)
    (tmp_path / "checkpoint-2" / "training_state.json").unlink()
    with pytest.raises(CheckpointError, match="no training_state.json"):
        tiny_run(tmp_path, 4, resume=str(tmp_path / "checkpoint-2"))
    # a complete checkpoint saved without a step log: resuming would silently lose the loss history
    accelerator = fresh_accelerator()
    model = Tiny()
    optimizer = create_optimizer(model, 0.01)
    CheckpointManager(accelerator, str(tmp_path / "nolog"), model=model, optimizer=optimizer).save(2)
    with pytest.raises(CheckpointError, match="no trainer_state.json"):
        tiny_run(tmp_path / "nolog", 4, resume="latest")


# ------------------------------------------------------------------------------------------------- item 14: Ctrl-C
@pytest.mark.parametrize("where", ["loss_fn", "on_step_end"])
def test_ctrl_c_saves_the_last_step_and_says_how_to_resume(tmp_path, capsys, where):
    _, straight = tiny_run(tmp_path / "a", 8)
    out = tmp_path / "b"

    def interrupt_loss(call, loss):
        if call == 6:  # the second micro-batch of step 3: steps 1-2 are complete
            raise KeyboardInterrupt
        return loss

    def interrupt_step(step, logs):
        if step == 2:
            raise KeyboardInterrupt

    hooks = {"loss_hook": interrupt_loss} if where == "loss_fn" else {"on_step_end": interrupt_step}
    with pytest.raises(TrainingInterrupted) as error:
        tiny_run(out, 8, accumulation=2, **hooks)  # checkpointing_steps=0: only the interrupt saves
    assert isinstance(error.value, KeyboardInterrupt) and error.value.step == 2
    checkpoint = str(out / "checkpoint-2")
    assert error.value.checkpoint == checkpoint
    assert f"--resume_from_checkpoint {checkpoint}" in capsys.readouterr().out
    assert names(out) == ["checkpoint-2"]
    assert json.loads((out / "checkpoint-2" / "training_state.json").read_text())["interrupted"] is True
    _, resumed = tiny_run(out, 8, accumulation=2, resume=checkpoint)
    _, straight = tiny_run(tmp_path / "c", 8, accumulation=2)
    assert_same(resumed, straight)  # the RNG of the end of step 2 was saved, not that of the interrupted step


def test_ctrl_c_before_the_first_step_saves_nothing(tmp_path):
    def interrupt(call, loss):
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="nothing to save"):
        tiny_run(tmp_path, 4, loss_hook=interrupt)
    assert names(tmp_path) == []


def test_recipe_mains_return_130_without_a_traceback(monkeypatch, capsys, tmp_path):
    import unip_hf.pretraining.nmi_had as pretraining
    import unip_hf.training.finetuning as finetuning

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretraining, "run_pretraining", interrupted)
    monkeypatch.setattr(finetuning, "run_finetuning", interrupted)
    # the start-up checks (paths exist, the teacher's config is a ViT) are tested in test_arguments.py
    monkeypatch.setattr(pretraining, "check_pretraining_args", lambda *args: None)
    monkeypatch.setattr(finetuning, "check_finetuning_args", lambda *args: None)
    assert pretraining.main(["--teacher_name_or_path", str(tmp_path), "--train_data", str(tmp_path)]) == 130
    assert finetuning.finetune_main(["--data_dir", str(tmp_path)]) == 130
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "--resume_from_checkpoint latest" in captured.err


# ------------------------------------------------------------------------------------------------- item 13: settings
def test_resume_with_another_batch_size_and_learning_rate_says_what_changed(tmp_path, capsys):
    tiny_run(tmp_path, 2, checkpointing_steps=2)
    state = json.loads((tmp_path / "checkpoint-2" / "training_state.json").read_text())
    assert state["settings"]["total_batch_size"] == 2 and state["settings"]["peak_learning_rates"][0] == 0.05
    capsys.readouterr()
    result, _ = tiny_run(tmp_path, 3, lr=0.01, bs=4, resume="latest")
    out = capsys.readouterr().out
    assert "total batch size 2 -> 4" in out and "peak learning rate 0.05 -> 0.01" in out
    assert "kept from the checkpoint" in out and "data position is recomputed" in out
    from unip_hf.training.optimization import schedule_factor

    # the new peak is applied from the resumed step on (before the fix the checkpoint's 0.05 silently stayed)
    assert result.step_log.history[-1]["learning_rate"] == pytest.approx(0.01 * schedule_factor(2, "cosine", 2, 10))
    capsys.readouterr()
    tiny_run(tmp_path / "same", 3, checkpointing_steps=2)
    tiny_run(tmp_path / "same", 3, resume=str(tmp_path / "same" / "checkpoint-2"))
    assert "other settings" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- item 6: evaluation
class EvalKilled(RuntimeError):
    pass


def test_finetuning_redoes_an_evaluation_that_did_not_complete(tmp_path, monkeypatch):
    import unip_hf.training.finetuning as finetuning
    from test_finetuning import arguments, reset_accelerate
    from unip_hf.data import write_synthetic_dataset

    scenes = tmp_path / "scenes"
    write_synthetic_dataset(str(scenes), num_train=4, num_val=2, height=40, width=48, return_dataset=False)
    real = finetuning.evaluate_model
    calls = {"n": 0}

    def killed_in_first_evaluation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise EvalKilled("killed during the evaluation of step 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(finetuning, "evaluate_model", killed_in_first_evaluation)
    model, data, train = arguments(str(scenes), str(tmp_path / "ft"), max_steps=4, eval_steps=2,
                                   checkpointing_steps=2)
    reset_accelerate()
    with pytest.raises(EvalKilled):
        finetuning.run_finetuning(model, data, train)
    assert (tmp_path / "ft" / "checkpoint-2").is_dir() and not (tmp_path / "ft" / "eval_log.json").exists()
    train.resume_from_checkpoint = "latest"
    reset_accelerate()
    result = finetuning.run_finetuning(model, data, train)
    assert [entry["step"] for entry in result.eval_history] == [2, 4]
    log = json.loads((tmp_path / "ft" / "eval_log.json").read_text())
    assert [entry["step"] for entry in log["history"]] == [2, 4]


# ------------------------------------------------------------------------------------------------- two processes
def _two_process_save_and_resume(out):
    import faulthandler

    import torch.distributed as dist

    faulthandler.dump_traceback_later(120, exit=True)  # a hung child fails the test instead of blocking it
    torch.set_num_threads(1)
    _, straight = tiny_run(out / "a", 6)
    tiny_run(out / "b", 3, checkpointing_steps=3)
    folder = out / "b" / "checkpoint-3"
    if dist.get_rank() == 0:
        assert sorted(p.name for p in folder.glob("rng_state_*.json")) == ["rng_state_0.json", "rng_state_1.json"]
        plant_pickles(folder, out / "code-ran")
    dist.barrier()
    result, resumed = tiny_run(out / "b", 6, resume="latest")
    assert result.resumed_from.endswith("checkpoint-3") and not (out / "code-ran").exists()
    assert_same(resumed, straight)

    def interrupt(step, logs):  # Ctrl-C reaches every process of the group
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        tiny_run(out / "c", 6, on_step_end=interrupt)
    dist.barrier()
    assert sorted(p.name for p in (out / "c" / "checkpoint-2").glob("rng_state_*.json")) == [
        "rng_state_0.json", "rng_state_1.json"]
    _, resumed = tiny_run(out / "c", 6, resume="latest")
    assert_same(resumed, straight)


def test_two_processes_save_and_resume_exactly(tmp_path, monkeypatch):
    from accelerate import debug_launcher

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    debug_launcher(_two_process_save_and_resume, args=(tmp_path,), num_processes=2)
    assert names(tmp_path / "b") == ["checkpoint-3"] and not list((tmp_path / "b").glob(".tmp-*"))


class Killed(RuntimeError):
    pass


@pytest.mark.parametrize("best_logged_at", [1, 2])
def test_finetuning_resume_never_keeps_a_best_model_of_a_later_step(tmp_path, capsys, best_logged_at):
    # The killed run evaluated steps 1-3 (best_model/ = step 3) but its last checkpoint is step 2. Resumed, the best
    # evaluation up to step 2 is step `best_logged_at` (the log is edited so no later evaluation beats it): the run
    # must not keep best_model/ (the step-3 model of the killed run) under the metrics of another step.
    import unip_hf.training.finetuning as finetuning
    from test_finetuning import arguments, reset_accelerate
    from safetensors.torch import load_file
    from unip_hf.data import write_synthetic_dataset

    scenes = tmp_path / "scenes"
    write_synthetic_dataset(str(scenes), num_train=4, num_val=2, height=40, width=48, return_dataset=False)
    out = tmp_path / "ft"
    model, data, train = arguments(str(scenes), str(out), max_steps=4, eval_steps=1, checkpointing_steps=2)

    def kill_after_step_3(step, logs):
        if step == 3:
            raise Killed()

    reset_accelerate()
    with pytest.raises(Killed):
        finetuning.run_finetuning(model, data, train, on_step_end=kill_after_step_3)
    log = json.loads((out / "eval_log.json").read_text())
    assert [e["step"] for e in log["history"]] == [1, 2, 3]
    log["history"][best_logged_at - 1]["metrics"]["mean_iou"] = 2.0  # unbeatable
    log["best_step"] = 3
    (out / "eval_log.json").write_text(json.dumps(log))
    expected = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    train.resume_from_checkpoint = "latest"
    reset_accelerate()
    capsys.readouterr()
    result = finetuning.run_finetuning(model, data, train)
    if best_logged_at == 2:  # the restored weights are the best model: it is saved again and kept
        assert result.best_step == 2
        kept = load_file(str(out / "model.safetensors"))
        for key in expected:
            torch.testing.assert_close(kept[key], expected[key], msg=key)
    else:  # the step-1 model is gone: the last one is kept, and said so
        assert result.best_step == 4 and "overwritten by an interrupted run" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- issue 24 item 6
class Stop(RuntimeError):
    """A kill in the middle of a run (no Ctrl-C handling, nothing saved)."""


def stop_at(step):
    def callback(done, logs):
        if done == step:
            raise Stop(f"killed after step {step}")
    return callback


def test_latest_follows_the_newest_lineage_after_a_rewind(tmp_path, caplog):
    """Guards issue 24 item 6: a run to step 4, then rewound (`--resume_from_checkpoint checkpoint-2`) and killed at
    step 3. Before, `latest` picked the abandoned branch's checkpoint-4 and the run was "done" with the original
    model; now it resumes from checkpoint-2 (the rewound run's lineage) and names checkpoint-4 as ignored."""
    tiny_run(tmp_path, 4, checkpointing_steps=2)
    first = json.loads((tmp_path / "checkpoint-4" / "training_state.json").read_text())
    assert first["lineage"] == [{"run_id": first["run_id"], "from_step": 0}] and first["resumed_from"] is None
    with pytest.raises(Stop):
        tiny_run(tmp_path, 4, checkpointing_steps=2, resume=str(tmp_path / "checkpoint-2"), on_step_end=stop_at(3))
    runs = json.loads((tmp_path / "run_lineage.json").read_text())["runs"]
    assert [len(run["lineage"]) for run in runs] == [1, 2] and runs[1]["lineage"][1]["from_step"] == 2
    with caplog.at_level(logging.WARNING, logger="unip_hf.training.loop"):
        result, resumed = tiny_run(tmp_path, 4, checkpointing_steps=2, resume="latest")
    assert result.resumed_from.endswith("checkpoint-2") and result.global_step == 4
    assert "ignored 1 checkpoint(s) of a branch it abandoned: checkpoint-4" in caplog.text
    assert "which resumed from checkpoint-2" in caplog.text
    saved = json.loads((tmp_path / "checkpoint-4" / "training_state.json").read_text())
    assert saved["resumed_from"] == "checkpoint-2" and saved["lineage"][0]["run_id"] == first["run_id"]
    assert saved["run_id"] != first["run_id"]
    _, straight = tiny_run(tmp_path / "straight", 4)
    assert_same(resumed, straight)  # the rewound branch, resumed, is the uninterrupted run
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unip_hf.training.loop"):  # the new checkpoint-4 is on the lineage
        assert CheckpointManager(None, str(tmp_path)).resolve("latest").endswith("checkpoint-4")
    assert "abandoned" not in caplog.text


def test_rotation_never_removes_the_checkpoints_of_the_current_lineage_for_an_abandoned_one(tmp_path):
    """Guards issue 24 item 6 (rotation): with a keep-2 limit, a run rewound to checkpoint-2 that saves checkpoint-3
    keeps checkpoint-2 and -3 (its own lineage); the abandoned checkpoint-4 is neither counted nor deleted."""
    tiny_run(tmp_path, 4, checkpointing_steps=2, total_limit=2)
    tiny_run(tmp_path, 3, checkpointing_steps=1, total_limit=2, resume=str(tmp_path / "checkpoint-2"))
    assert names(tmp_path) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]


# ------------------------------------------------------------------------------------------------- issue 24 item 7
DATA_A = {"dataset": "udder (train)", "labels": {"0": "background", "1": "udder"}, "architecture": "Tiny"}


def test_resume_onto_other_labels_is_refused_and_data_set_changes_are_reported(tmp_path, capsys):
    """Guards issue 24 item 7: before, a resume onto another data set reported only `max_steps 2 -> 3` and trained
    the old classes under the new names; now a change of labels is refused (a `CheckpointError`, exit 2 with one
    `error:` line through `run_recipe`), and a change of data set or architecture is in the change report."""
    from unip_hf.training.loop import run_recipe

    tiny_run(tmp_path, 2, checkpointing_steps=2, run_settings=DATA_A)
    state = json.loads((tmp_path / "checkpoint-2" / "training_state.json").read_text())
    assert state["settings"]["labels"] == DATA_A["labels"] and state["settings"]["dataset"] == "udder (train)"
    other = {**DATA_A, "dataset": "sirst (train)", "labels": {"0": "background", "1": "target"}}
    with pytest.raises(CheckpointError, match=r"other labels \(0: background, 1: udder\).*\(0: background, 1: target"):
        tiny_run(tmp_path, 3, resume="latest", run_settings=other)
    capsys.readouterr()
    code, _ = run_recipe(lambda: tiny_run(tmp_path, 3, resume="latest", run_settings=other), ())
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --resume_from_checkpoint") and "Traceback" not in err
    tiny_run(tmp_path, 3, resume="latest", run_settings={**DATA_A, "dataset": "udder-v2 (train)",
                                                         "architecture": "Tiny (dropout 0.3)"})
    out = capsys.readouterr().out
    assert "data set udder (train) -> udder-v2 (train)" in out and "architecture Tiny -> Tiny (dropout 0.3)" in out
    assert "max_steps 2 -> 3" in out


# ------------------------------------------------------------------------------------------------- issue 24 item 8
def test_overwritten_bytes_in_a_checkpoint_are_detected_by_hash(tmp_path, caplog):
    """Guards issue 24 item 8: completeness was checked by size only, so 4000 overwritten bytes resumed silently.
    Every file's sha256 is recorded and verified on resume: a named checkpoint is refused naming the file, and
    `latest` skips it (naming it) for the previous complete checkpoint."""
    tiny_run(tmp_path, 4, checkpointing_steps=2)
    state = json.loads((tmp_path / "checkpoint-4" / "training_state.json").read_text())
    assert set(state["sha256"]) == set(state["files"]) and "model.safetensors" in state["sha256"]
    victim = tmp_path / "checkpoint-4" / "rng_state_0.safetensors"
    data = bytearray(victim.read_bytes())
    assert len(data) > 4500
    data[-4000:] = os.urandom(4000)
    victim.write_bytes(bytes(data))  # same size: the size check passes
    with pytest.raises(CheckpointError, match="corrupted rng_state_0.safetensors"):
        tiny_run(tmp_path, 6, resume=str(tmp_path / "checkpoint-4"))
    with caplog.at_level(logging.WARNING, logger="unip_hf.training.loop"):
        result, _ = tiny_run(tmp_path, 6, resume="latest")
    assert result.resumed_from.endswith("checkpoint-2") and "corrupted rng_state_0.safetensors" in caplog.text
    weights = tmp_path / "checkpoint-2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # one weight changed
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted model.safetensors"):
        CheckpointManager(None, str(tmp_path)).load(str(tmp_path / "checkpoint-2"))


# ------------------------------------------------------------------------------------------------- issue 24 item 10
def test_ctrl_c_during_rotation_leaves_nothing_half_deleted(tmp_path, monkeypatch):
    """Guards issue 24 item 10: Ctrl-C while rotation deleted checkpoint-2 left a half-deleted `checkpoint-2/` (its
    weights gone, its `training_state.json` still there) that no later rotation removed. Rotation now renames a
    folder to `.trash-checkpoint-2` before deleting it, and removes such leftovers at the next start and rotation."""
    import shutil

    from unip_hf.training.checkpoints import checkpoint_problem

    real = shutil.rmtree
    fired = []

    def interrupted_rmtree(path, *args, **kwargs):
        path = str(path)
        if not fired and path.endswith("checkpoint-2") and os.path.isdir(path):
            fired.append(path)
            os.remove(os.path.join(path, "model.safetensors"))
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(TrainingInterrupted):
        tiny_run(tmp_path, 6, checkpointing_steps=2, total_limit=2)
    monkeypatch.setattr(shutil, "rmtree", real)
    assert fired
    assert not (tmp_path / "checkpoint-2").exists()  # never a half-deleted checkpoint under its real name
    result, _ = tiny_run(tmp_path, 8, checkpointing_steps=2, total_limit=2, resume="latest")
    assert result.resumed_from.endswith("checkpoint-6")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-6", "checkpoint-8", "run_lineage.json", "trainer_state.json"]
    assert all(checkpoint_problem(path) is None for path in list_checkpoints(str(tmp_path)))


def test_rotation_removes_an_older_half_deleted_checkpoint(tmp_path):
    """Guards issue 24 item 10 (leftovers of older versions): a `checkpoint-N/` that lost files is never resumed
    (`latest` skips it) and the next rotation removes it when it is older than the checkpoint just saved."""
    tiny_run(tmp_path, 4, checkpointing_steps=2)
    os.remove(tmp_path / "checkpoint-2" / "optimizer.safetensors")
    tiny_run(tmp_path, 6, checkpointing_steps=2, total_limit=2, resume="latest")
    assert names(tmp_path) == ["checkpoint-4", "checkpoint-6"]


# ------------------------------------------------------------------------------------------------- issue 22 item 4
def test_resume_with_other_max_steps_uses_the_new_schedule_from_the_first_resumed_step(tmp_path, capsys):
    """Guards issue 22 item 4 (the loop): the optimizer restored from a checkpoint held the learning rate the old
    schedule had set for the next step, so the first resumed step ran on the old schedule. With a scheduler built
    for 8 steps instead of 4, the first resumed step (3) now logs the new schedule's value."""
    from unip_hf.training.optimization import schedule_factor

    def sched(max_steps):
        return lambda step: schedule_factor(step, "linear", 1, max_steps)

    tiny_run(tmp_path, 4, sgd=True, lr=0.1, lr_lambda=sched(4), checkpointing_steps=2)
    capsys.readouterr()
    result, _ = tiny_run(tmp_path, 8, sgd=True, lr=0.1, lr_lambda=sched(8), resume=str(tmp_path / "checkpoint-2"))
    lrs = {entry["step"]: entry["learning_rate"] for entry in result.step_log.history}
    assert lrs[3] == pytest.approx(0.1 * schedule_factor(2, "linear", 1, 8))  # old schedule: 0.1 * 2/3
    assert lrs[4] == pytest.approx(0.1 * schedule_factor(3, "linear", 1, 8))
    assert "learning rate of step 3 0.06667 -> 0.08571 (this run's schedule)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- recipes
def _scenes(tmp_path):
    from unip_hf.data import write_synthetic_dataset

    scenes = tmp_path / "scenes"
    write_synthetic_dataset(str(scenes), num_train=4, num_val=2, height=40, width=48, return_dataset=False)
    return scenes


def test_overwrite_output_dir_leaves_nothing_of_the_earlier_run(tmp_path):
    """Guards issue 24 item 5: `--overwrite_output_dir` deleted the checkpoints and the step log only; after an
    overwrite and a resume, `eval_log.json` and `best_model/` of the earlier run came back (its mIoU in the card, its
    evaluations in the new run's log). Now everything the earlier run wrote is deleted before the new run starts."""
    import unip_hf.training.finetuning as finetuning
    from test_finetuning import arguments, reset_accelerate

    scenes = _scenes(tmp_path)
    out = tmp_path / "ft"
    reset_accelerate()
    finetuning.run_finetuning(*arguments(str(scenes), str(out), max_steps=3, eval_steps=1, checkpointing_steps=1))
    earlier = set(os.listdir(out))
    assert {"eval_log.json", "best_model", "README.md", ".eval_results", "model.safetensors"} <= earlier
    log = json.loads((out / "eval_log.json").read_text())
    for entry in log["history"]:  # unbeatable: carried into the new run, they would be kept as its best
        entry["metrics"]["mean_iou"] = 2.0
    (out / "eval_log.json").write_text(json.dumps(log))
    model, data, train = arguments(str(scenes), str(out), max_steps=4, eval_steps=2, checkpointing_steps=1,
                                   overwrite_output_dir=True)
    reset_accelerate()
    with pytest.raises(Stop):
        finetuning.run_finetuning(model, data, train, on_step_end=stop_at(1))
    assert set(os.listdir(out)) <= {"checkpoint-1", "run_lineage.json", ".unip-run.lock"}, sorted(os.listdir(out))
    train.overwrite_output_dir, train.resume_from_checkpoint = False, "latest"
    reset_accelerate()
    result = finetuning.run_finetuning(model, data, train)
    assert result.resumed_from.endswith("checkpoint-1")
    assert [entry["step"] for entry in result.eval_history] == [2, 4] and result.metrics["mean_iou"] <= 1.0
    best = json.loads((out / "eval_log.json").read_text())
    assert best["best_value"] <= 1.0 and [entry["step"] for entry in best["history"]] == [2, 4]


def test_overwrite_output_dir_never_deletes_what_the_run_reads(tmp_path):
    """Guards issue 24 item 5 (its risk): with everything an earlier run wrote now deleted, `--overwrite_output_dir`
    into the folder the run fine-tunes from (`--model_name_or_path OUT --output_dir OUT`) would delete the source
    model before it loads. Refused, naming the argument; nothing is deleted. A data folder inside --output_dir that
    is not a run output is kept and allowed."""
    import unip_hf.training.finetuning as finetuning
    from test_finetuning import arguments, reset_accelerate
    from unip_hf.training.output_dir import OutputDirError, run_output_holding

    scenes = _scenes(tmp_path)
    out = tmp_path / "ft"
    reset_accelerate()
    finetuning.run_finetuning(*arguments(str(scenes), str(out), max_steps=1))
    before = sorted(os.listdir(out))
    model, data, train = arguments(str(scenes), str(out), max_steps=1, overwrite_output_dir=True)
    model.model_name_or_path, model.config_overrides, model.patch_size = str(out), None, None
    reset_accelerate()
    with pytest.raises(OutputDirError, match=rf"would delete --model_name_or_path {out}, which this run reads"):
        finetuning.run_finetuning(model, data, train)
    assert sorted(set(os.listdir(out)) - {".unip-run.lock"}) == before  # the lock: held until this process exits
    assert run_output_holding(str(tmp_path), str(scenes)) is None
    assert run_output_holding(str(tmp_path), str(out / "best_model")) is None  # "ft" is not a run output name
    assert run_output_holding(str(out), str(out)).startswith("the folder itself")


def test_a_resume_ignores_the_evaluations_of_an_unrelated_earlier_run(tmp_path, capsys):
    """Guards issue 24 item 5, next to it: an earlier run without checkpoints leaves `eval_log.json` and
    `best_model/` (a new run is allowed there); the new run, killed before its first evaluation and resumed, read
    that log as its own (its evaluations in the history, its best kept). Evaluations now carry the run id, and a
    resume keeps only those of its lineage."""
    import unip_hf.training.finetuning as finetuning
    from test_finetuning import arguments, reset_accelerate

    scenes = _scenes(tmp_path)
    out = tmp_path / "ft"
    reset_accelerate()
    finetuning.run_finetuning(*arguments(str(scenes), str(out), max_steps=2, eval_steps=1))
    log = json.loads((out / "eval_log.json").read_text())
    for entry in log["history"]:
        entry["metrics"]["mean_iou"] = 2.0
    (out / "eval_log.json").write_text(json.dumps(log))
    model, data, train = arguments(str(scenes), str(out), max_steps=4, eval_steps=2, checkpointing_steps=1)
    reset_accelerate()
    with pytest.raises(Stop):
        finetuning.run_finetuning(model, data, train, on_step_end=stop_at(1))
    train.resume_from_checkpoint = "latest"
    reset_accelerate()
    capsys.readouterr()
    result = finetuning.run_finetuning(model, data, train)
    assert "ignored 1 evaluation(s) of another run" in capsys.readouterr().out
    assert [entry["step"] for entry in result.eval_history] == [2, 4] and result.metrics["mean_iou"] <= 1.0
    assert json.loads((out / "eval_log.json").read_text())["best_value"] <= 1.0


def test_a_run_holds_a_lock_and_a_second_run_into_its_output_dir_is_refused(tmp_path, capsys):
    """Guards issue 24 item 9: two runs started into one `--output_dir` within a second both passed the earlier-run
    check and the second crashed on the first's temporary files. A run now holds `.unip-run.lock` for its lifetime;
    another run is refused naming the lock file and the owner's pid (exit 2, one line); a lock whose process is gone
    is replaced."""
    import socket
    import subprocess
    import sys

    import unip_hf.training.finetuning as finetuning
    from test_finetuning import arguments, reset_accelerate
    from unip_hf.recipe_arguments import TrainingLoopArguments
    from unip_hf.training.loop import create_accelerator, finish_run, run_recipe
    from unip_hf.training.output_dir import LOCK_NAME, OutputDirError

    scenes = _scenes(tmp_path)
    out = tmp_path / "ft"
    lock = out / LOCK_NAME
    seen = []

    def check_lock(step, logs):
        seen.append(json.loads(lock.read_text())["pid"])

    reset_accelerate()
    finetuning.run_finetuning(*arguments(str(scenes), str(out), max_steps=2), on_step_end=check_lock)
    assert seen == [os.getpid()] * 2 and not lock.exists()  # held while it ran, released at the end

    other = tmp_path / "other"
    other.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (other / LOCK_NAME).write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname(),
                                                   "started": "2026-12-07 21:00:00"}))
        train = TrainingLoopArguments(output_dir=str(other))
        reset_accelerate()
        with pytest.raises(OutputDirError, match=rf"in use by another run \(pid {owner.pid}.*lock file .*{LOCK_NAME}"):
            create_accelerator(train)
        capsys.readouterr()
        reset_accelerate()
        code, _ = run_recipe(create_accelerator, (train,))
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: --output_dir {other} is in use") and "Traceback" not in err
    finally:
        owner.kill()
        owner.wait()
    reset_accelerate()
    accelerator, _ = create_accelerator(train)  # the owner is gone: its stale lock is replaced
    assert json.loads((other / LOCK_NAME).read_text())["pid"] == os.getpid()
    finish_run(accelerator, str(other))
    assert not (other / LOCK_NAME).exists()


def test_finetuning_resumed_with_other_max_steps_runs_its_first_step_on_the_new_schedule(tmp_path):
    """Guards issue 22 item 4 (fine-tuning): a run of 4 steps resumed from checkpoint-2 with --max_steps 3 ran step 3
    at the learning rate of the 4-step schedule; it now logs the 3-step schedule's value."""
    import unip_hf.training.finetuning as finetuning
    from test_finetuning import arguments, reset_accelerate
    from unip_hf.training.optimization import num_warmup_steps, schedule_factor

    scenes = _scenes(tmp_path)
    out = tmp_path / "ft"
    reset_accelerate()
    finetuning.run_finetuning(*arguments(str(scenes), str(out), max_steps=4, checkpointing_steps=2))
    model, data, train = arguments(str(scenes), str(out), max_steps=3, resume_from_checkpoint=str(out / "checkpoint-2"))
    reset_accelerate()
    finetuning.run_finetuning(model, data, train)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = next(entry["learning_rate"] for entry in history if entry["step"] == 3)

    def lr(max_steps):
        warmup = num_warmup_steps(train.warmup_steps, train.warmup_ratio, max_steps)
        return train.learning_rate * schedule_factor(2, train.lr_scheduler_type, warmup, max_steps,
                                                     train.poly_power, train.min_lr_ratio)

    assert lr(3) != pytest.approx(lr(4))
    assert logged == pytest.approx(lr(3))


def test_pretraining_resumed_with_more_steps_runs_its_first_step_on_the_new_schedule(tmp_path):
    """Guards issue 22 item 4 (pre-training): 4 steps, then resumed from checkpoint-4 with --max_steps 6. The old
    cosine schedule had ended at 0, and step 5 ran at lr 0.0; it now runs at the 6-step schedule's value."""
    import numpy as np
    import transformers as T
    from PIL import Image

    from test_finetuning import reset_accelerate
    from unip_hf.pretraining.nmi_had import run_pretraining
    from unip_hf.recipe_arguments import DistillationArguments, PretrainDataArguments, PretrainingArguments
    from unip_hf.training.optimization import schedule_factor

    torch.manual_seed(0)
    T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(tmp_path / "teacher")
    (tmp_path / "student.json").write_text(json.dumps({
        "model_type": "unip", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "last_layer_num_attention_heads": 4, "intermediate_size": 64, "image_size": 32, "patch_size": 8}))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(images / f"im{i}.png")

    def args(max_steps, resume=None):
        return (DistillationArguments(teacher_name_or_path=str(tmp_path / "teacher"), teacher_layer="1",
                                      student_config=str(tmp_path / "student.json"), drop_path_rate=0.0),
                PretrainDataArguments(train_data=[str(images)], image_size=32),
                PretrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                                     max_steps=max_steps, learning_rate=1e-3, warmup_steps=1, checkpointing_steps=2,
                                     seed=0, resume_from_checkpoint=resume))

    reset_accelerate()
    first = run_pretraining(*args(4))
    reset_accelerate()
    run_pretraining(*args(6, str(tmp_path / "out" / "checkpoint-4")))
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    logged = {entry["step"]: entry["learning_rate"] for entry in history}
    assert first.global_step == 4 and schedule_factor(4, "cosine", 1, 4) == 0.0
    assert logged[5] == pytest.approx(1e-3 * schedule_factor(4, "cosine", 1, 6)) and logged[5] > 0
