"""Tests of the generic accelerate training machinery (`unip_hf.training.loop`) used by the UNIP recipes."""

import json
import math
import os

import pytest
import torch
from conftest import reset_accelerate
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unip_hf.training.loop import train_loop
from unip_hf.training.checkpoints import CheckpointManager, list_checkpoints
from unip_hf.training.step_log import StepLog, resolve_report_to
from unip_hf.training.optimization import create_optimizer, create_scheduler, param_groups, resolve_learning_rate, schedule_factor
from unip_hf.training.sampler import EpochSampler, sample_seed
from unip_hf.training.nan_guard import NonFiniteLossError


def fresh_accelerator(**kwargs):
    from accelerate import Accelerator

    reset_accelerate()
    return Accelerator(cpu=True, **kwargs)


class KeyedNoise(Dataset):
    """Inputs drawn from a generator seeded by (epoch, index): what a sample looks like depends only on its key."""

    def __init__(self, n=12, dim=4):
        self.n, self.dim = n, dim

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        epoch, index = key
        g = torch.Generator().manual_seed(sample_seed(0, epoch, index))
        x = torch.randn(self.dim, generator=g)
        return x, x.sum(0, keepdim=True)


class Tiny(nn.Module):
    def __init__(self, dropout=0.3):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.norm = nn.LayerNorm(4)
        self.dropout = nn.Dropout(dropout)  # consumes the global RNG: resume must restore it

    def forward(self, x):
        return self.linear(self.dropout(self.norm(x)))


def run(tmp, max_steps, checkpointing_steps=0, resume=None, total_limit=None, nan_at=None, accumulation=1, bs=2,
        dropout=0.3):
    from accelerate.utils import set_seed

    accelerator = fresh_accelerator()
    set_seed(0)
    model = Tiny(dropout)
    dataset = KeyedNoise()
    sampler = EpochSampler(len(dataset), seed=1)
    loader = DataLoader(dataset, batch_size=bs, sampler=sampler, drop_last=True)
    optimizer = create_optimizer(model, 0.05, weight_decay=0.05)
    scheduler = create_scheduler("cosine", optimizer, 2, 10)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    calls = {"n": 0}

    def loss_fn(batch):
        calls["n"] += 1
        x, y = batch
        loss = nn.functional.mse_loss(model(x), y)
        if nan_at is not None and calls["n"] >= nan_at:
            loss = loss * float("nan")
        return loss

    result = train_loop(accelerator, model, optimizer, scheduler, loader, sampler, loss_fn, max_steps, str(tmp),
                        gradient_accumulation_steps=accumulation, checkpointing_steps=checkpointing_steps,
                        checkpoints_total_limit=total_limit, resume_from_checkpoint=resume)
    weights = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    return result, weights


def test_param_groups_exclude_norms_biases_and_tokens():
    class WithTokens(Tiny):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.position_embeddings = nn.Parameter(torch.zeros(1, 3, 4))

    groups = param_groups(WithTokens(), 0.05)
    decayed = [n for g in groups if g["weight_decay"] > 0 for n in g["names"]]
    assert decayed == ["linear.weight"]
    scaled = param_groups(Tiny(), 0.05, lr_scale_fn=lambda name: 0.5 if "linear" in name else 1.0)
    assert {g["lr_scale"] for g in scaled} == {0.5, 1.0}
    optimizer = create_optimizer(Tiny(), 1e-3, lr_scale_fn=lambda name: 0.5 if "linear" in name else 1.0)
    assert sorted(g["lr"] for g in optimizer.param_groups) == [5e-4, 5e-4, 1e-3]
    assert optimizer.defaults["betas"] == (0.9, 0.95)


def test_schedules_warmup_then_decay():
    assert schedule_factor(0, "cosine", 4, 20) == pytest.approx(0.25)
    assert schedule_factor(3, "cosine", 4, 20) == pytest.approx(1.0)
    assert schedule_factor(12, "cosine", 4, 20) == pytest.approx(0.5)
    assert schedule_factor(20, "cosine", 4, 20) == pytest.approx(0.0)
    assert schedule_factor(12, "poly", 4, 20, power=2.0) == pytest.approx(0.25)
    assert schedule_factor(12, "linear", 4, 20) == pytest.approx(0.5)
    assert schedule_factor(20, "cosine", 0, 20, min_lr_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="Unknown lr_scheduler_type"):
        create_scheduler("step", torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 1, 2)
    optimizer = create_optimizer(Tiny(), 1.0, lr_scale_fn=lambda name: 0.5 if "linear" in name else 1.0)
    scheduler = create_scheduler("constant", optimizer, 2, 10)
    assert sorted(g["lr"] for g in optimizer.param_groups)[0] == pytest.approx(0.25)
    for _ in range(2):  # optimizer.step() first, as in training (torch warns otherwise)
        optimizer.step()
        scheduler.step()
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([0.5, 0.5, 1.0])


def test_learning_rate_scaling_rule():
    assert resolve_learning_rate(None, 1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert resolve_learning_rate(1e-3, 1.5e-4, 4096) == 1e-3


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert all(epoch == 2 for epoch, _ in a)
    assert sorted(i for _, i in a) == list(range(10))
    b.set_epoch(3)
    assert [i for _, i in a] != [i for _, i in b]


def test_report_to_resolution():
    assert resolve_report_to("none") == []
    assert resolve_report_to(None) == []
    with pytest.raises(ValueError, match="Unknown tracker"):
        resolve_report_to("nonsense")
    import importlib.util

    has_tb = importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    assert resolve_report_to("tensorboard") == (["tensorboard"] if has_tb else [])


def test_resume_continues_exactly(tmp_path):
    _, straight = run(tmp_path / "a", 8)
    run(tmp_path / "b", 4, checkpointing_steps=4)
    result, resumed = run(tmp_path / "b", 8, checkpointing_steps=4, resume="latest")
    assert result.resumed_from.endswith("checkpoint-4")
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-6, atol=1e-7)
    log = json.loads((tmp_path / "b" / "trainer_state.json").read_text())
    assert [e["step"] for e in log["log_history"]] == list(range(1, 9))
    straight_log = json.loads((tmp_path / "a" / "trainer_state.json").read_text())
    assert [e["loss"] for e in log["log_history"]] == pytest.approx([e["loss"] for e in straight_log["log_history"]])


def test_keep_last_k_and_latest(tmp_path):
    run(tmp_path, 7, checkpointing_steps=2, total_limit=2)
    names = [os.path.basename(p) for p in list_checkpoints(str(tmp_path))]
    assert names == ["checkpoint-6", "checkpoint-7"]
    manager = CheckpointManager(None, str(tmp_path))
    assert manager.resolve("latest").endswith("checkpoint-7")
    assert manager.resolve(None) is None
    with pytest.raises(FileNotFoundError):
        manager.resolve(str(tmp_path / "missing"))
    state = json.loads((tmp_path / "checkpoint-7" / "training_state.json").read_text())
    assert state["global_step"] == 7


def test_gradient_accumulation_matches_bigger_batch(tmp_path):
    big_result, big = run(tmp_path / "a", 3, bs=4, dropout=0.0)
    small_result, accumulated = run(tmp_path / "b", 3, bs=2, accumulation=2, dropout=0.0)
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-5, atol=1e-6)
    assert small_result.step_log.losses() == pytest.approx(big_result.step_log.losses(), rel=1e-5)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match="checkpoint-2"):
        run(tmp_path, 6, checkpointing_steps=2, nan_at=4)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["checkpoint-2"]


def test_batch_larger_than_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="batch size is larger than the data set"):
        run(tmp_path, 2, bs=64)


def test_step_log_roundtrip(tmp_path):
    log = StepLog(str(tmp_path / "trainer_state.json"), max_steps=3)
    log.log(1, loss=torch.tensor(2.0))
    log.log(2, loss=1.0)
    log.save()
    other = StepLog(str(tmp_path / "trainer_state.json"))
    other.load()
    assert other.losses() == [2.0, 1.0]
    other.truncate(1)
    assert other.losses() == [2.0] and not math.isnan(other.losses()[0])
