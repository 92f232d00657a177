"""Generic accelerate training machinery shared by the UNIP recipes (Zhang et al., "UNIP: Rethinking Pre-trained
Attention Patterns for Infrared Semantic Segmentation", ICLR 2025): NMI-HAD pre-training uses it, and so can
fine-tuning. Nothing here knows about distillation or segmentation.

API (all names are in `__all__`):

- `TrainingLoopArguments`: a dataclass for `HfArgumentParser` with the arguments every recipe shares (output dir,
  batch size, accumulation, learning rate or base learning rate scaled by total batch / 256, AdamW, scheduler,
  warm-up, epochs / max steps, mixed precision, checkpointing, resume, seed, trackers, hub). Recipes subclass it to
  change defaults or add fields.
- `param_groups(model, weight_decay)` / `create_optimizer(model, ...)`: AdamW with no weight decay on norms,
  biases, 1-D parameters, position embeddings and CLS/register/mask tokens; parameters may carry a learning-rate
  multiplier through `lr_scale_fn` (for layer-wise decay).
- `create_scheduler(name, optimizer, num_warmup_steps, num_training_steps, ...)`: `cosine`, `poly`, `linear` or
  `constant`, each with linear warm-up (a `LambdaLR`; register it with `accelerator.register_for_checkpointing`
  rather than `accelerator.prepare`, so that it advances once per optimizer step whatever the process count).
- `resolve_learning_rate(learning_rate, base_learning_rate, total_batch_size)`.
- `EpochSampler`: a sampler whose order depends only on `(seed, epoch)` and that yields `(epoch, index)` keys, so a
  dataset can seed each sample's augmentation from `(seed, epoch, index)`; with it, resumed and multi-process runs
  see exactly the samples and augmentations of an uninterrupted single-process run.
- `CheckpointManager`: `save(step)` writes `output_dir/checkpoint-{step}` with `accelerator.save_state` plus a
  `training_state.json`, keeps the last `total_limit` checkpoints; `resolve(resume_from_checkpoint)` turns a path or
  `"latest"` into a checkpoint directory; `load(path)` restores model, optimizer, scheduler, RNG and returns the
  global step.
- `StepLog`: the `trainer_state.json`-like JSON log (`log_history` of per-step dicts), written by the main process.
- `resolve_report_to(report_to)`: tracker names for `Accelerator(log_with=...)`; `"none"`, `"all"`, or a comma list;
  trackers whose package is missing are dropped with a warning.
- `NonFiniteLossError` and `check_finite(value, step, checkpoint)`: the NaN guard.
- `train_loop(accelerator, model, optimizer, scheduler, dataloader, sampler, loss_fn, ...)`: the step loop
  (gradient accumulation with `no_sync`, clipping, NaN guard, tqdm with loss / lr / images per second on the main
  process, tracker logging, step log, periodic checkpoints, exact resume by skipping the data already consumed
  with `accelerator.skip_first_batches`). Returns a `TrainLoopResult`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Sampler

from .argument_checks import check_choice, check_range

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_NAME = "training_state.json"
STEP_LOG_NAME = "trainer_state.json"
SCHEDULER_TYPES = ("cosine", "poly", "linear", "constant")
MIXED_PRECISION_TYPES = ("no", "fp16", "bf16", "fp8")
NO_DECAY_NAME_PATTERNS = ("bias", "norm", "position_embedding", "pos_embed", "cls_token", "register_tokens",
                          "mask_token", "distillation_token", "layer_scale", "lambda1")


@dataclass
class TrainingLoopArguments:
    """Arguments shared by the UNIP training recipes (parse with `transformers.HfArgumentParser`)."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Where checkpoints, logs and the final model go."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Absolute learning rate; if unset, base_learning_rate * total batch / 256."}
    )
    base_learning_rate: float = field(default=1.5e-4, metadata={"help": "Learning rate per 256 images."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on norms/biases/tokens)."})
    adam_beta1: float = field(default=0.9)
    adam_beta2: float = field(default=0.95)
    adam_epsilon: float = field(default=1e-8)
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients to this norm if set."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "cosine, poly, linear or constant."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Final learning rate as a fraction of the peak."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Warm-up steps (overrides warmup_ratio)."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Warm-up as a fraction of all steps (paper: 5/100)."})
    num_train_epochs: float = field(default=100.0, metadata={"help": "Epochs (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Total optimizer steps; overrides num_train_epochs."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (accelerate)."})
    checkpointing_steps: int = field(default=500, metadata={"help": "Save state every N steps (0: never)."})
    checkpoints_total_limit: int | None = field(default=3, metadata={"help": "Keep the last K checkpoints (0: all)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "Checkpoint path or 'latest'."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N steps."})
    seed: int = field(default=0)
    report_to: str = field(default="none", metadata={"help": "Trackers: none, all, or a comma list (tensorboard)."})
    dataloader_num_workers: int = field(default=0)
    push_to_hub: bool = field(default=False)
    hub_model_id: str | None = field(default=None)
    hub_private_repo: bool = field(default=False)

    def __post_init__(self):
        """Refuse values outside their range now, naming the argument, rather than mid-run or never."""
        check_range("per_device_train_batch_size", self.per_device_train_batch_size, 1)
        check_range("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        check_range("learning_rate", self.learning_rate, 0, low_open=True, optional=True)
        check_range("base_learning_rate", self.base_learning_rate, 0, low_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("adam_beta1", self.adam_beta1, 0, 1, high_open=True)
        check_range("adam_beta2", self.adam_beta2, 0, 1, high_open=True)
        check_range("adam_epsilon", self.adam_epsilon, 0, low_open=True)
        check_range("max_grad_norm", self.max_grad_norm, 0, low_open=True, optional=True)
        check_choice("lr_scheduler_type", self.lr_scheduler_type, SCHEDULER_TYPES)
        check_range("min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_range("warmup_steps", self.warmup_steps, 0, optional=True)
        check_range("warmup_ratio", self.warmup_ratio, 0, 1)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"--max_steps must be >= 1, or -1 to train for --num_train_epochs; got {self.max_steps}")
        if self.max_steps == -1:
            check_range("num_train_epochs", self.num_train_epochs, 0, low_open=True,
                        note="or set --max_steps to a number of steps")
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION_TYPES)
        check_range("checkpointing_steps", self.checkpointing_steps, 0, note="0 saves no intermediate checkpoint")
        check_range("checkpoints_total_limit", self.checkpoints_total_limit, 0, optional=True,
                    note="unset or 0 keeps every checkpoint")
        check_range("logging_steps", self.logging_steps, 1)
        check_range("seed", self.seed, 0, 2**32 - 1)
        check_range("dataloader_num_workers", self.dataloader_num_workers, 0)
        names = [n.strip() for n in (self.report_to or "none").split(",") if n.strip()]
        if names not in ([], ["none"], ["all"]):
            for name in names:
                check_choice("report_to", name, ("none", "all", *TRACKER_PACKAGES))
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/unip-small-run), checked now rather "
                             "than after the training")

    def loop_options(self) -> dict[str, Any]:
        """The keyword arguments of `train_loop` that come straight from these arguments."""
        return {
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_grad_norm": self.max_grad_norm,
            "checkpointing_steps": self.checkpointing_steps,
            "checkpoints_total_limit": self.checkpoints_total_limit,
            "resume_from_checkpoint": self.resume_from_checkpoint,
            "logging_steps": self.logging_steps,
        }


def create_accelerator(train: TrainingLoopArguments):
    """The recipes' `Accelerator` (mixed precision, trackers from `--report_to`, project dir), the seed set and the
    output directory made. Returns `(accelerator, tracker names)`."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    trackers = resolve_report_to(train.report_to)
    accelerator = Accelerator(mixed_precision=train.mixed_precision, log_with=trackers or None,
                              project_dir=train.output_dir)
    set_seed(train.seed)
    os.makedirs(train.output_dir, exist_ok=True)
    return accelerator, trackers


def parse_recipe_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None,
                      check: Callable[..., None] | None = None) -> tuple:
    """Parse a recipe's command line (`argv`, default `sys.argv[1:]`) into its argument dataclasses with
    `transformers.HfArgumentParser`; a single `.json` / `.yaml` / `.yml` argument is read as a file of arguments.

    A `ValueError` (or `FileNotFoundError`) from a dataclass's `__post_init__` or from `check(*parsed)` (checks
    across dataclasses, run before any model or data is loaded) ends the program like an argparse error: usage,
    `error: <message>` on stderr, exit status 2, no traceback.
    """
    import sys
    from pathlib import Path

    from transformers import HfArgumentParser

    parser = HfArgumentParser(list(dataclass_types))
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) == 1 and args[0].endswith((".json", ".yaml", ".yml")):
            path = Path(args[0])
            parsed = tuple(parser.parse_json_file(str(path)) if path.suffix == ".json"
                           else parser.parse_yaml_file(str(path)))
        else:
            parsed = tuple(parser.parse_args_into_dataclasses(args=args))
        if check is not None:
            check(*parsed)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return parsed


# ----------------------------------------------------------------------------------------------------------------
# Optimizer and schedulers
# ----------------------------------------------------------------------------------------------------------------


def is_no_decay(name: str, parameter: torch.Tensor) -> bool:
    """Whether a parameter is excluded from weight decay (1-D tensors, biases, norms, embeddings of positions, tokens)."""
    lowered = name.lower()
    return parameter.ndim <= 1 or any(pattern in lowered for pattern in NO_DECAY_NAME_PATTERNS)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr_scale_fn: Callable[[str], float] | None = None,
    extra_no_decay: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices only, optional per-parameter learning-rate multipliers.

    Args:
        model (`nn.Module`): the model (or any module, e.g. a student plus a projection head).
        weight_decay (`float`): decay of the decayed group.
        lr_scale_fn (`Callable[[str], float]`, *optional*): maps a parameter name to a learning-rate multiplier
            (stored as `lr_scale` in the group; `create_scheduler` honours it). Used for layer-wise decay.
        extra_no_decay (`Sequence[str]`, *optional*): more name fragments excluded from decay.
    """
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = is_no_decay(name, parameter) or any(fragment in name for fragment in extra_no_decay)
        scale = float(lr_scale_fn(name)) if lr_scale_fn is not None else 1.0
        key = (no_decay, scale)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": scale}
        groups[key]["params"].append(parameter)
        groups[key]["names"].append(name)
    return list(groups.values())


def create_optimizer(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    lr_scale_fn: Callable[[str], float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, weight_decay, lr_scale_fn)`; each group starts at `learning_rate * lr_scale`.

    Args:
        model (`nn.Module`): module whose trainable parameters are optimised.
        learning_rate (`float`): peak learning rate.
        weight_decay (`float`, *optional*, defaults to 0.05): decay of weight matrices.
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.95)`): AdamW betas (the paper's).
        eps (`float`, *optional*, defaults to 1e-8): AdamW epsilon.
        lr_scale_fn (`Callable[[str], float]`, *optional*): per-parameter learning-rate multiplier.
    """
    groups = param_groups(model, weight_decay, lr_scale_fn)
    for group in groups:
        group["lr"] = learning_rate * group["lr_scale"]
        group.pop("names", None)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)


def schedule_factor(
    step: int, name: str, num_warmup_steps: int, num_training_steps: int, power: float = 1.0, min_lr_ratio: float = 0.0
) -> float:
    """Multiplier of the peak learning rate at `step` (linear warm-up, then the named decay)."""
    if num_warmup_steps > 0 and step < num_warmup_steps:
        return (step + 1) / num_warmup_steps
    if name == "constant":
        return 1.0
    span = max(1, num_training_steps - num_warmup_steps)
    progress = min(1.0, max(0.0, (step - num_warmup_steps) / span))
    if name == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif name == "linear":
        decay = 1.0 - progress
    elif name == "poly":
        decay = (1.0 - progress) ** power
    else:
        raise ValueError(f"Unknown lr_scheduler_type {name!r}; use cosine, poly, linear or constant")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def create_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    power: float = 1.0,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A warm-up + decay `LambdaLR` (one lambda per group, so `lr_scale` multipliers are kept).

    Args:
        name (`str`): `cosine`, `poly`, `linear` or `constant`.
        optimizer (`torch.optim.Optimizer`): the optimizer (its groups' initial `lr` are the peaks).
        num_warmup_steps (`int`): steps of linear warm-up from ~0 to the peak.
        num_training_steps (`int`): total optimizer steps.
        power (`float`, *optional*, defaults to 1.0): exponent of the `poly` decay.
        min_lr_ratio (`float`, *optional*, defaults to 0.0): floor of the decay as a fraction of the peak.
    """
    schedule_factor(num_warmup_steps, name, num_warmup_steps, num_training_steps, power, min_lr_ratio)  # validates

    def factor(step: int) -> float:
        return schedule_factor(step, name, num_warmup_steps, num_training_steps, power, min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor] * len(optimizer.param_groups))


def resolve_learning_rate(learning_rate: float | None, base_learning_rate: float, total_batch_size: int) -> float:
    """`learning_rate` if given, else `base_learning_rate * total_batch_size / 256` (the MAE/UNIP scaling rule)."""
    if learning_rate is not None:
        return float(learning_rate)
    return float(base_learning_rate) * total_batch_size / 256.0


def num_warmup_steps(warmup_steps: int | None, warmup_ratio: float, num_training_steps: int) -> int:
    """Explicit warm-up steps, or `warmup_ratio` of the training steps (rounded)."""
    if warmup_steps is not None:
        return int(warmup_steps)
    return int(round(warmup_ratio * num_training_steps))


# ----------------------------------------------------------------------------------------------------------------
# Data order
# ----------------------------------------------------------------------------------------------------------------


class EpochSampler(Sampler):
    """Order of one epoch as a function of `(seed, epoch)` only; yields `(epoch, index)` keys.

    The dataset receives `(epoch, index)` in `__getitem__` and can derive a per-sample augmentation seed from it, so
    that what a sample looks like does not depend on which process loads it, on worker RNG, or on whether the run was
    resumed. Call `set_epoch` before iterating each epoch.

    Args:
        num_samples (`int`): length of the dataset.
        seed (`int`, *optional*, defaults to 0): shuffle seed.
        shuffle (`bool`, *optional*, defaults to `True`): shuffle (else sequential order).
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = range(self.num_samples)
        for index in order:
            yield (self.epoch, int(index))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A deterministic 63-bit seed for one sample of one epoch."""
    value = (int(seed) * 6364136223846793005 + int(epoch) * 1442695040888963407 + int(index) * 2862933555777941757)
    return value % (2**63 - 1)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints, step log, trackers, NaN guard
# ----------------------------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """Raised when the loss is NaN or infinite; the message names the last good checkpoint."""


def check_finite(value: float, step: int, last_checkpoint: str | None = None) -> None:
    """Raise `NonFiniteLossError` if `value` is NaN/inf, naming the step and the last good checkpoint."""
    if math.isfinite(value):
        return
    where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
    raise NonFiniteLossError(
        f"Loss became {value} at optimizer step {step}; training stopped without saving this state ({where}). "
        "Lower the learning rate, use fp32/bf16 instead of fp16, or check the data; resume with "
        "--resume_from_checkpoint latest."
    )


def list_checkpoints(output_dir: str) -> list[str]:
    """Checkpoint directories `checkpoint-{step}` under `output_dir`, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found)]


class CheckpointManager:
    """Periodic `accelerator.save_state` checkpoints with keep-last-K rotation and `latest` resolution.

    Args:
        accelerator (`accelerate.Accelerator`): the accelerator (scheduler and extra objects must be registered with
            `register_for_checkpointing` before saving/loading).
        output_dir (`str`): parent directory of the `checkpoint-{step}` folders.
        total_limit (`int`, *optional*): keep at most this many checkpoints (oldest removed first).
    """

    def __init__(self, accelerator, output_dir: str, total_limit: int | None = None):
        self.accelerator = accelerator
        self.output_dir = output_dir
        self.total_limit = total_limit
        self.last_saved: str | None = None

    def save(self, step: int, extra_state: dict[str, Any] | None = None, step_log: StepLog | None = None) -> str:
        """Save the full training state at optimizer step `step`; returns the checkpoint path."""
        path = os.path.join(self.output_dir, f"{CHECKPOINT_PREFIX}{step}")
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(path)
        if self.accelerator.is_main_process:
            state = {"global_step": int(step), **(extra_state or {})}
            with open(os.path.join(path, TRAINING_STATE_NAME), "w", encoding="utf-8") as handle:
                json.dump(state, handle, indent=2)
            if step_log is not None:
                step_log.save(os.path.join(path, STEP_LOG_NAME))
            if self.total_limit is not None and self.total_limit > 0:
                for old in list_checkpoints(self.output_dir)[: -self.total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.last_saved = path
        return path

    def resolve(self, resume_from_checkpoint: str | None) -> str | None:
        """A checkpoint directory from a path or `"latest"` (None when nothing to resume; an error if a named path
        does not exist)."""
        if not resume_from_checkpoint:
            return None
        if resume_from_checkpoint == "latest":
            found = list_checkpoints(self.output_dir)
            if not found:
                logger.warning("resume_from_checkpoint=latest but %s has no checkpoint; starting fresh", self.output_dir)
                return None
            return found[-1]
        if not os.path.isdir(resume_from_checkpoint):
            raise FileNotFoundError(f"resume_from_checkpoint={resume_from_checkpoint!r} is not a directory")
        return resume_from_checkpoint

    def load(self, path: str) -> dict[str, Any]:
        """Restore model, optimizer, registered objects and RNG from `path`; returns its `training_state.json`."""
        self.accelerator.load_state(path)
        state_file = os.path.join(path, TRAINING_STATE_NAME)
        if os.path.isfile(state_file):
            with open(state_file, encoding="utf-8") as handle:
                state = json.load(handle)
        else:
            match = re.search(rf"{CHECKPOINT_PREFIX}(\d+)", os.path.basename(os.path.normpath(path)))
            state = {"global_step": int(match.group(1)) if match else 0}
        self.last_saved = path
        return state


class StepLog:
    """A `trainer_state.json`-like log: `{"global_step", "max_steps", "log_history": [{"step", ...}, ...]}`.

    Args:
        path (`str`): file written by `save()` (main process only).
        max_steps (`int`, *optional*): recorded for readers.
        is_main_process (`bool`, *optional*, defaults to `True`): other processes never write.
    """

    def __init__(self, path: str, max_steps: int | None = None, is_main_process: bool = True):
        self.path = path
        self.max_steps = max_steps
        self.is_main_process = is_main_process
        self.history: list[dict[str, Any]] = []
        self.global_step = 0
        self.extra: dict[str, Any] = {}

    def log(self, step: int, **values: Any) -> None:
        self.global_step = int(step)
        self.history.append({"step": int(step), **{k: _jsonable(v) for k, v in values.items()}})

    def truncate(self, step: int) -> None:
        """Drop entries after `step` (used on resume)."""
        self.history = [entry for entry in self.history if entry.get("step", 0) <= step]
        self.global_step = step

    def load(self, path: str | None = None) -> None:
        path = path or self.path
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            self.history = list(data.get("log_history", []))
            self.global_step = int(data.get("global_step", 0))

    def losses(self, key: str = "loss") -> list[float]:
        return [entry[key] for entry in self.history if key in entry]

    def to_dict(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "max_steps": self.max_steps, **self.extra,
                "log_history": self.history}

    def save(self, path: str | None = None) -> None:
        if not self.is_main_process:
            return
        path = path or self.path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)
        os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "comet_ml": ("comet_ml",),
                    "mlflow": ("mlflow",), "aim": ("aim",), "clearml": ("clearml",), "dvclive": ("dvclive",)}


def resolve_report_to(report_to: str | Sequence[str] | None) -> list[str]:
    """Tracker names for `Accelerator(log_with=...)`.

    `"none"`/empty gives `[]`; `"all"` gives every installed tracker; otherwise a comma-separated list (or sequence),
    from which trackers whose package is not installed are dropped with a warning (tensorboard is optional).
    """
    if report_to is None:
        return []
    names = [n.strip() for n in (report_to.split(",") if isinstance(report_to, str) else report_to) if n.strip()]
    if not names or names == ["none"]:
        return []

    def installed(name: str) -> bool:
        return any(importlib.util.find_spec(pkg) is not None for pkg in TRACKER_PACKAGES.get(name, (name,)))

    if names == ["all"]:
        return [name for name in TRACKER_PACKAGES if installed(name)]
    chosen = []
    for name in names:
        if name not in TRACKER_PACKAGES:
            raise ValueError(f"Unknown tracker {name!r}; choose from {sorted(TRACKER_PACKAGES)} or none/all")
        if installed(name):
            chosen.append(name)
        else:
            logger.warning("report_to=%s requested but its package is not installed; skipping it "
                           "(pip install 'unip-hf[tensorboard]' for tensorboard)", name)
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TrainLoopResult:
    """What `train_loop` returns: the final step, the last logged loss, where the last checkpoint is, the log."""

    global_step: int
    final_loss: float | None
    last_checkpoint: str | None
    step_log: StepLog
    resumed_from: str | None = None


def steps_per_epoch(dataloader_length: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps in one pass over a (prepared, per-process) data loader; partial accumulations are dropped."""
    return dataloader_length // max(1, gradient_accumulation_steps)


def train_loop(
    accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    dataloader,
    sampler: EpochSampler,
    loss_fn: Callable[[Any], torch.Tensor | tuple[torch.Tensor, dict[str, float]]],
    max_steps: int,
    output_dir: str,
    gradient_accumulation_steps: int = 1,
    max_grad_norm: float | None = None,
    checkpointing_steps: int = 0,
    checkpoints_total_limit: int | None = None,
    resume_from_checkpoint: str | None = None,
    logging_steps: int = 1,
    batch_size_fn: Callable[[Any], int] | None = None,
    on_step_end: Callable[[int, dict[str, float]], None] | None = None,
    description: str = "train",
) -> TrainLoopResult:
    """Run optimizer steps until `max_steps`, with exact resume.

    `model`, `optimizer` and `dataloader` must already be prepared by `accelerator`; `scheduler` must be registered
    with `accelerator.register_for_checkpointing` (it is stepped once per optimizer step here). The data order comes
    from `sampler` (an `EpochSampler` in the un-prepared loader), set to the right epoch before each pass.

    Args:
        accelerator (`accelerate.Accelerator`): the accelerator.
        model (`nn.Module`): the prepared model whose gradients are synchronised (`no_sync` on accumulation steps).
        optimizer (`torch.optim.Optimizer`): prepared optimizer.
        scheduler (`LRScheduler`): per-step scheduler (not prepared).
        dataloader: prepared data loader.
        sampler (`EpochSampler`): the sampler inside `dataloader`.
        loss_fn (`Callable`): `batch -> loss` or `batch -> (loss, extra_logs)`; the loss is the per-process mean.
        max_steps (`int`): total optimizer steps.
        output_dir (`str`): where `checkpoint-*` and `trainer_state.json` go.
        gradient_accumulation_steps (`int`, *optional*, defaults to 1): micro-batches per step.
        max_grad_norm (`float`, *optional*): gradient clipping norm.
        checkpointing_steps (`int`, *optional*, defaults to 0): save every N steps (0: never; the final state is
            always saved when N > 0).
        checkpoints_total_limit (`int`, *optional*): keep the last K checkpoints.
        resume_from_checkpoint (`str`, *optional*): a checkpoint path or `"latest"`.
        logging_steps (`int`, *optional*, defaults to 1): log every N steps.
        batch_size_fn (`Callable`, *optional*): images in a batch (for images/s); defaults to the first tensor's
            length.
        on_step_end (`Callable`, *optional*): called on every process after each step (and its checkpoint) as
            `on_step_end(step, logs)`.
        description (`str`, *optional*): progress bar label.
    """
    from tqdm.auto import tqdm

    accumulation = max(1, int(gradient_accumulation_steps))
    per_epoch = steps_per_epoch(len(dataloader), accumulation)
    if per_epoch < 1:
        raise ValueError(
            f"The data loader yields {len(dataloader)} batch(es) per process per epoch, fewer than one optimizer step "
            f"({accumulation} micro-batch(es)); the batch size is larger than the data set allows. Lower "
            "--per_device_train_batch_size / --gradient_accumulation_steps or add data."
        )
    checkpoints = CheckpointManager(accelerator, output_dir, checkpoints_total_limit)
    step_log = StepLog(os.path.join(output_dir, STEP_LOG_NAME), max_steps, accelerator.is_main_process)
    global_step = 0
    resumed_from = checkpoints.resolve(resume_from_checkpoint)
    if resumed_from is not None:
        state = checkpoints.load(resumed_from)
        global_step = int(state["global_step"])
        step_log.load(os.path.join(resumed_from, STEP_LOG_NAME))
        step_log.truncate(global_step)
        accelerator.print(f"Resumed from {resumed_from} at step {global_step}")

    def count(batch: Any) -> int:
        if batch_size_fn is not None:
            return int(batch_size_fn(batch))
        tensor = batch if isinstance(batch, torch.Tensor) else next(
            v for v in (batch.values() if isinstance(batch, dict) else batch) if isinstance(v, torch.Tensor))
        return int(tensor.shape[0])

    progress = tqdm(total=max_steps, initial=global_step, desc=description,
                    disable=not accelerator.is_main_process, dynamic_ncols=True)
    final_loss = step_log.losses()[-1] if step_log.losses() else None
    model.train()
    tic = time.perf_counter()
    while global_step < max_steps:
        epoch, start_in_epoch = divmod(global_step, per_epoch)
        sampler.set_epoch(epoch)
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(epoch)
        skip = start_in_epoch * accumulation
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        # Starting a pass draws a base seed from the global RNG (torch DataLoader); keep that draw out of the global
        # stream so that the RNG seen by the model (dropout, drop path) is the same whether or not the run resumed.
        with torch.random.fork_rng(devices=[]):
            iterator = iter(loader)
            first = next(iterator)
        iterator = itertools.chain([first], iterator)
        for _ in range(start_in_epoch, per_epoch):
            if global_step >= max_steps:
                break
            step_loss = torch.zeros((), device=accelerator.device)
            extra_sums: dict[str, float] = {}
            images = 0
            for micro in range(accumulation):
                batch = next(iterator)
                images += count(batch)
                sync = micro == accumulation - 1
                context = contextlib.nullcontext() if sync else accelerator.no_sync(model)
                with context:
                    output = loss_fn(batch)
                    loss, extra = (output if isinstance(output, tuple) else (output, {}))
                    accelerator.backward(loss / accumulation)
                step_loss += loss.detach().float() / accumulation
                for key, value in extra.items():
                    extra_sums[key] = extra_sums.get(key, 0.0) + float(value) / accumulation
            mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
            try:
                check_finite(mean_loss, global_step + 1, checkpoints.last_saved)
            except NonFiniteLossError as error:
                accelerator.print(f"ERROR: {error}")
                accelerator.end_training()
                raise
            if max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            learning_rate = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            final_loss = mean_loss
            toc = time.perf_counter()
            images_per_second = images * accelerator.num_processes / max(toc - tic, 1e-9)
            tic = toc
            logs = {"loss": mean_loss, "learning_rate": learning_rate, "images_per_second": images_per_second,
                    "epoch": global_step / per_epoch, **extra_sums}
            if global_step % max(1, logging_steps) == 0 or global_step == max_steps:
                step_log.log(global_step, **logs)
                accelerator.log(logs, step=global_step)
            progress.update(1)
            progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{learning_rate:.2e}", img_s=f"{images_per_second:.1f}")
            if checkpointing_steps and (global_step % checkpointing_steps == 0 or global_step == max_steps):
                checkpoints.save(global_step, {"epoch": global_step / per_epoch}, step_log)
            if on_step_end is not None:
                on_step_end(global_step, logs)
    progress.close()
    step_log.save()
    return TrainLoopResult(global_step, final_loss, checkpoints.last_saved, step_log, resumed_from)


__all__ = [
    "create_accelerator",
    "parse_recipe_args",
    "CheckpointManager",
    "EpochSampler",
    "NonFiniteLossError",
    "StepLog",
    "TrainLoopResult",
    "TrainingLoopArguments",
    "check_finite",
    "create_optimizer",
    "create_scheduler",
    "is_no_decay",
    "list_checkpoints",
    "num_warmup_steps",
    "param_groups",
    "resolve_learning_rate",
    "resolve_report_to",
    "sample_seed",
    "schedule_factor",
    "steps_per_epoch",
    "train_loop",
]
