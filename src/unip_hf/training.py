"""Generic accelerate training machinery shared by the UNIP recipes (Zhang et al., "UNIP: Rethinking Pre-trained
Attention Patterns for Infrared Semantic Segmentation", ICLR 2025): NMI-HAD pre-training uses it, and so can
fine-tuning. Nothing here knows about distillation or segmentation.

The API the recipes share (imported by `pretraining.py` and `finetuning.py`; `__all__` is kept to what the README
documents, so it is empty here):

- `TrainingLoopArguments` (defined in `recipe_arguments`): a dataclass for `HfArgumentParser` with the arguments every recipe shares (output dir,
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
- `CheckpointManager`: `save(step)` writes `output_dir/checkpoint-{step}` atomically (into `.tmp-checkpoint-{step}`,
  `training_state.json` last as the completion mark, then a rename) in a pickle-free format (model and optimizer
  tensors in safetensors, structure, scheduler, scaler and RNG states in JSON, one RNG file per process), refuses to
  save non-finite parameters or optimizer state, keeps the last `total_limit` complete checkpoints;
  `resolve(resume_from_checkpoint)` turns a path or `"latest"` (the newest complete checkpoint; incomplete ones are
  named and skipped) into a checkpoint directory; `load(path)` restores model, optimizer, scheduler, RNG (nothing is
  unpickled) and returns the `training_state.json`. `checkpoint_format="accelerate"` keeps accelerate's
  `save_state` (pickles) for FSDP / DeepSpeed. `checkpoint_problem(path)` says why a folder cannot be resumed.
- `StepLog`: the `trainer_state.json`-like JSON log (`log_history` of per-step dicts), written by the main process.
- `resolve_report_to(report_to)`: tracker names for `Accelerator(log_with=...)`; `"none"`, `"all"`, or a comma list;
  trackers whose package is missing are dropped with a warning.
- `NonFiniteLossError` (and its `NonFiniteStateError` for NaN/inf weights or optimizer state) and
  `check_finite(value, step, checkpoint)`: the NaN guard; `all_finite(tensors)`: its fused check.
- `TrainingInterrupted`: what `train_loop` raises after Ctrl-C, once the last completed step is saved;
  `interrupted_exit_code` turns it into the recipes' exit code 130.
- `train_loop(accelerator, model, optimizer, scheduler, dataloader, sampler, loss_fn, ...)`: the step loop
  (gradient accumulation with `no_sync`, clipping, NaN guard on the loss and the updated weights, tqdm with loss / lr / images per second on the main
  process, tracker logging, step log, periodic checkpoints, exact resume by skipping the data already consumed
  with `accelerator.skip_first_batches`, a report of the settings that differ from the checkpoint's, Ctrl-C saves).
  Returns a `TrainLoopResult`.
- `check_output_dir(train)`: a new run into an `--output_dir` holding checkpoints of an earlier one is refused,
  naming `--resume_from_checkpoint latest` and `--overwrite_output_dir`; `create_accelerator` clears the earlier
  checkpoints and step log when `--overwrite_output_dir` is given (`clear_output_dir`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from torch.utils.data import Sampler
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .configuration_unip import respect_umask
from .recipe_arguments import (  # noqa: F401  (the shared arguments and their choices, defined where importing is cheap)
    MIXED_PRECISION_TYPES,
    SCHEDULER_TYPES,
    TRACKER_PACKAGES,
    TrainingLoopArguments,
    build_parser,
    dataclasses_from_dict,
    dataclasses_from_namespace,
    read_arguments_file,
)

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_NAME = "training_state.json"
STEP_LOG_NAME = "trainer_state.json"
NO_DECAY_NAME_PATTERNS = ("bias", "norm", "position_embedding", "pos_embed", "cls_token", "register_tokens",
                          "mask_token", "distillation_token", "layer_scale", "lambda1")




def create_accelerator(train: TrainingLoopArguments):
    """The recipes' `Accelerator` (mixed precision, trackers from `--report_to`, project dir), the seed set and the
    output directory made. Returns `(accelerator, tracker names)`."""
    trackers = resolve_report_to(train.report_to)
    accelerator = Accelerator(mixed_precision=train.mixed_precision, log_with=trackers or None,
                              project_dir=train.output_dir)
    set_seed(train.seed)
    if train.overwrite_output_dir and not train.resume_from_checkpoint and accelerator.is_main_process:
        clear_output_dir(train.output_dir)
    accelerator.wait_for_everyone()
    os.makedirs(train.output_dir, exist_ok=True)
    return accelerator, trackers


def check_output_dir(train: TrainingLoopArguments) -> None:
    """Refuse (`ValueError`) to start a new run in an `--output_dir` that holds checkpoints of an earlier run, unless
    `--resume_from_checkpoint` continues it or `--overwrite_output_dir` starts over; the message gives both flags."""
    if train.resume_from_checkpoint or train.overwrite_output_dir:
        return
    found = list_checkpoints(train.output_dir)
    if found:
        complete = list_checkpoints(train.output_dir, complete_only=True, allow_pickle=True)
        newest = os.path.basename((complete or found)[-1])
        raise ValueError(
            f"--output_dir {train.output_dir} already holds {len(found)} checkpoint(s) of an earlier run (newest: "
            f"{newest}). To continue that run add --resume_from_checkpoint latest; to start over add "
            "--overwrite_output_dir (its checkpoints and step log are deleted); or choose another --output_dir")


def clear_output_dir(output_dir: str) -> list[str]:
    """What `--overwrite_output_dir` deletes before a new run: the `checkpoint-N` folders (complete or not) and the
    step log of the earlier run. Returns the deleted paths."""
    if not os.path.isdir(output_dir):
        return []
    removed = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if re.fullmatch(rf"(\.tmp-)?{CHECKPOINT_PREFIX}\d+", name) and os.path.isdir(path):
            shutil.rmtree(path)
            removed.append(path)
        elif name == STEP_LOG_NAME:
            os.remove(path)
            removed.append(path)
    if removed:
        logger.warning("--overwrite_output_dir: deleted %s", ", ".join(removed))
    return removed


def parse_recipe_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None,
                      check: Callable[..., None] | None = None) -> tuple:
    """Parse a recipe's command line (`argv`, default `sys.argv[1:]`) into its argument dataclasses (the options
    `transformers.HfArgumentParser` would give them, built by `unip_hf.recipe_arguments` without importing
    transformers); a single `.json` / `.yaml` / `.yml` argument is read as a file of arguments.

    A `ValueError` (or `FileNotFoundError`) from a dataclass's `__post_init__` or from `check(*parsed)` (checks
    across dataclasses, run before any model or data is loaded) ends the program like an argparse error: usage,
    `error: <message>` on stderr, exit status 2, no traceback.
    """

    parser = build_parser(dataclass_types)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) == 1 and args[0].endswith((".json", ".yaml", ".yml")):
            parsed = dataclasses_from_dict(dataclass_types, read_arguments_file(args[0]))
        else:
            parsed = dataclasses_from_namespace(dataclass_types, parser.parse_args(args))
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


def checked_total_batch(train: TrainingLoopArguments, num_processes: int, dataset_size: int, what: str,
                        hint: str) -> int:
    """The total batch (per device x processes x accumulation); a `ValueError` naming all three when it is larger
    than the `dataset_size` images of `what` ("the data set", "the training split"), ending with `hint`."""
    total = train.per_device_train_batch_size * num_processes * train.gradient_accumulation_steps
    if dataset_size < total:
        raise ValueError(
            f"The total batch ({train.per_device_train_batch_size} per device x {num_processes} process(es) x "
            f"{train.gradient_accumulation_steps} accumulation = {total}) is larger than {what} ({dataset_size} "
            f"images{hint}"
        )
    return total


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


class NonFiniteStateError(NonFiniteLossError):
    """Raised when the parameters or the optimizer state became NaN/inf (the loss may still have been finite); nothing
    non-finite is ever written to a checkpoint."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: incomplete, written in an unsafe format, or holding non-finite tensors."""


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by `train_loop` after Ctrl-C, once the current step is saved; `checkpoint` is where to resume from
    (None when nothing could be saved) and `step` the last completed optimizer step."""

    def __init__(self, message: str, step: int = 0, checkpoint: str | None = None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


def _resume_hint(last_checkpoint: str | None) -> str:
    if last_checkpoint:
        return f"the last good checkpoint is {last_checkpoint} (resume with --resume_from_checkpoint {last_checkpoint})"
    return "no checkpoint was saved yet"


def check_finite(value: float, step: int, last_checkpoint: str | None = None) -> None:
    """Raise `NonFiniteLossError` if `value` is NaN/inf, naming the step and the last good checkpoint."""
    if math.isfinite(value):
        return
    raise NonFiniteLossError(
        f"Loss became {value} at optimizer step {step}; training stopped without saving this state "
        f"({_resume_hint(last_checkpoint)}). Lower the learning rate, use fp32/bf16 instead of fp16, or check the data."
    )


def all_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor (on the tensors' device, no host sync): whether every floating tensor is free of NaN/inf.
    One fused max-abs reduction per device (`torch._foreach_norm(..., inf)`; NaN and inf propagate through it)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        if tensor.is_floating_point() and tensor.numel():
            by_device.setdefault(tensor.device, []).append(tensor.detach())
    flags = []
    for device, group in by_device.items():
        try:
            norms = torch._foreach_norm(group, math.inf)
        except (RuntimeError, TypeError, NotImplementedError):  # dtypes the fused kernel does not take
            norms = [t.abs().amax() for t in group]
        flags.append(torch.stack([n.float() for n in norms]).isfinite().all())
    if not flags:
        return torch.tensor(True)
    return flags[0] if len(flags) == 1 else torch.stack([flag.cpu() for flag in flags]).all()


def write_json_atomic(path: str, data: Any, fsync: bool = False) -> None:
    """Write JSON to `path` through a temporary file and `os.replace`, so a reader never sees a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


# --- pickle-free state files: tensors in `<name>.safetensors`, the structure (and every non-tensor) in `<name>.json`


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {"tensor": key}
    if isinstance(value, dict):
        return {"dict": [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return {kind: [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"Cannot store a {type(value).__name__} (at {key!r}) in a pickle-free checkpoint")


def _decode(node: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise CheckpointError(f"{where}: malformed entry {node!r}")
    (kind, payload), = node.items()
    if kind == "tensor":
        if payload not in tensors:
            raise CheckpointError(f"{where}: tensor {payload!r} is missing from its .safetensors file")
        return tensors[payload]
    if kind == "dict":
        return {k: _decode(v, tensors, where) for k, v in payload}
    if kind in ("list", "tuple"):
        items = [_decode(v, tensors, where) for v in payload]
        return tuple(items) if kind == "tuple" else items
    if kind == "value":
        return payload
    raise CheckpointError(f"{where}: unknown entry kind {kind!r}")


def save_state_file(folder: str, name: str, state: Any) -> None:
    """Write `state` (nested dicts/lists/tuples of tensors, numbers, strings) as `name.json` (+ `name.safetensors`)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, name, tensors)
    if tensors:
        save_file(tensors, os.path.join(folder, f"{name}.safetensors"))
    with open(os.path.join(folder, f"{name}.json"), "w", encoding="utf-8") as handle:
        json.dump(structure, handle)


def load_state_file(folder: str, name: str) -> Any:
    """Read what `save_state_file` wrote (JSON and safetensors only: nothing is unpickled)."""
    where = os.path.join(folder, f"{name}.json")
    try:
        with open(where, encoding="utf-8") as handle:
            structure = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{where} is missing or unreadable ({error})") from error
    tensor_file = os.path.join(folder, f"{name}.safetensors")
    tensors = load_file(tensor_file) if os.path.isfile(tensor_file) else {}
    return _decode(structure, tensors, where)


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states: python `random`, numpy, torch CPU and (if initialised) every CUDA device."""

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


CHECKPOINT_FORMATS = ("safetensors", "accelerate")
SAFE_FORMAT = "unip-hf-safetensors"
TMP_CHECKPOINT_PREFIX = f".tmp-{CHECKPOINT_PREFIX}"
MODEL_FILE = "model.safetensors"


def read_training_state(path: str) -> dict[str, Any] | None:
    """The `training_state.json` of a checkpoint folder (None when missing or unreadable)."""
    try:
        with open(os.path.join(path, TRAINING_STATE_NAME), encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def checkpoint_problem(path: str, allow_pickle: bool = False) -> str | None:
    """Why the checkpoint folder `path` cannot be resumed, or None when it is complete.

    A checkpoint is complete when its `training_state.json` (written last, just before the folder is renamed into
    place) exists and every file it lists has the recorded size. Folders written by accelerate's `save_state` (older
    unip-hf versions, or `checkpoint_format="accelerate"`) hold pickles and are accepted only with `allow_pickle`.
    """
    if not os.path.isdir(path):
        return "is not a directory"
    if not os.path.isfile(os.path.join(path, TRAINING_STATE_NAME)):
        return (f"has no {TRAINING_STATE_NAME} (it is written last, when a save completes: the save was interrupted "
                "or the folder is not a checkpoint)")
    state = read_training_state(path)
    if state is None or "global_step" not in state:
        return f"has an unreadable {TRAINING_STATE_NAME}"
    files = state.get("files")
    if state.get("format") != SAFE_FORMAT:
        if not allow_pickle:
            return ("was written with accelerate's save_state (pickle files, which can run code when loaded); resume "
                    "it only if you trust its origin, with --checkpoint_format accelerate")
        if files is None:
            return None  # an older unip-hf wrote training_state.json after save_state: as complete as it gets
    for name, size in (files or {}).items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"is missing {name}"
        if os.path.getsize(file) != size:
            return f"has a truncated {name} ({os.path.getsize(file)} bytes, {size} expected)"
    return None


def list_checkpoints(output_dir: str, complete_only: bool = False, allow_pickle: bool = False) -> list[str]:
    """Checkpoint directories `checkpoint-{step}` under `output_dir`, oldest step first (only the complete ones, in
    the sense of `checkpoint_problem`, with `complete_only`)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    paths = [path for _, path in sorted(found)]
    if complete_only:
        paths = [path for path in paths if checkpoint_problem(path, allow_pickle) is None]
    return paths


class CheckpointManager:
    """Atomic, pickle-free checkpoints with keep-last-K rotation and `latest` resolution.

    `save(step)` writes `output_dir/.tmp-checkpoint-{step}/`: the unwrapped model (`model.safetensors`), the
    optimizer (`optimizer.safetensors` + `optimizer.json` for its structure and hyper-parameters), the scheduler
    (`scheduler.json`, its `state_dict`: step count and base learning rates; the schedule itself is rebuilt by the
    recipe), the fp16 grad scaler (`scaler.json`), one `rng_state_{process}.json/.safetensors` per process, the step
    log, and last `training_state.json` (step, run settings, the file list with sizes: the completion mark); then it
    renames the folder to `checkpoint-{step}`. A kill at any moment leaves either no `checkpoint-{step}` or a complete
    one. Nothing non-finite is saved (`NonFiniteStateError`). Loading reads JSON and safetensors only.

    With `checkpoint_format="accelerate"` (needed under FSDP / DeepSpeed, whose sharded states this format does not
    cover) accelerate's `save_state` / `load_state` are used instead, inside the same atomic protocol; those files are
    pickles, so only resume such checkpoints from a trusted source.

    Args:
        accelerator (`accelerate.Accelerator`): the accelerator.
        output_dir (`str`): parent directory of the `checkpoint-{step}` folders.
        total_limit (`int`, *optional*): keep at most this many complete checkpoints (oldest removed first; the one
            just written is always kept).
        model, optimizer, scheduler: what is saved and restored (the prepared objects).
        checkpoint_format (`str`, *optional*, defaults to `"safetensors"`): `"safetensors"` or `"accelerate"`.
        settings (`dict`, *optional*): run settings recorded in `training_state.json` (batch sizes, ...).
    """

    def __init__(self, accelerator, output_dir: str, total_limit: int | None = None, model: nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                 checkpoint_format: str = "safetensors", settings: dict[str, Any] | None = None):
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"--checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
        distributed = str(getattr(getattr(accelerator, "distributed_type", None), "value", ""))
        if checkpoint_format == "safetensors" and distributed in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
            raise ValueError(
                f"Under {distributed} the model and optimizer states are sharded, which the pickle-free checkpoint "
                "format does not cover; pass --checkpoint_format accelerate (accelerate's save_state; its files are "
                "pickles: resume only checkpoints you trust)")
        self.accelerator = accelerator
        self.output_dir = output_dir
        self.total_limit = total_limit
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.checkpoint_format = checkpoint_format
        self.settings = dict(settings or {})
        self.last_saved: str | None = None

    @property
    def allow_pickle(self) -> bool:
        return self.checkpoint_format == "accelerate"

    # ------------------------------------------------------------------------------------------------ finiteness
    def state_is_finite(self) -> tuple[bool, bool]:
        """`(parameters finite, optimizer state finite)`, agreed by every process."""
        params = [p for p in self.model.parameters()] if self.model is not None else []
        moments = [value for state in (self.optimizer.state.values() if self.optimizer is not None else [])
                   for value in state.values() if isinstance(value, torch.Tensor)]
        flags = torch.stack([all_finite(params).cpu(), all_finite(moments).cpu()]).float()
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags.to(self.accelerator.device), reduction="sum").cpu()
            flags = flags >= self.accelerator.num_processes
        return bool(flags[0]), bool(flags[1])

    def check_finite_state(self, step: int) -> None:
        """Raise `NonFiniteStateError` (naming the last good checkpoint) when the state at `step` is not finite."""
        params_ok, moments_ok = self.state_is_finite()
        if params_ok and moments_ok:
            return
        what = "model parameters" if not params_ok else "optimizer state"
        raise NonFiniteStateError(
            f"The {what} became non-finite (NaN/inf) at optimizer step {step}; training stopped without saving this "
            f"state ({_resume_hint(self.last_saved)}). Lower the learning rate, clip gradients (--max_grad_norm), use "
            "fp32/bf16 instead of fp16, or check the data."
        )

    # ------------------------------------------------------------------------------------------------ saving
    def save(self, step: int, extra_state: dict[str, Any] | None = None, step_log: StepLog | None = None,
             rng_state: dict[str, Any] | None = None) -> str:
        """Save the full training state at optimizer step `step` atomically; returns the checkpoint path.

        `rng_state` (from `capture_rng_state`) replaces this process's current RNG state (used when saving after an
        interruption, to store the RNG as it was at the end of the step)."""
        accelerator = self.accelerator
        self.check_finite_state(step)
        path = os.path.join(self.output_dir, f"{CHECKPOINT_PREFIX}{step}")
        tmp = os.path.join(self.output_dir, f"{TMP_CHECKPOINT_PREFIX}{step}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        accelerator.wait_for_everyone()
        if self.checkpoint_format == "accelerate":
            if self.scheduler is not None and self.scheduler not in accelerator._custom_objects:
                accelerator.register_for_checkpointing(self.scheduler)
            accelerator.save_state(tmp)
        else:
            save_state_file(tmp, f"rng_state_{accelerator.process_index}", rng_state or capture_rng_state())
            if accelerator.is_main_process:
                self._save_safe(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if step_log is not None:
                step_log.save(os.path.join(tmp, STEP_LOG_NAME))
            files = {}
            for name in sorted(os.listdir(tmp)):
                file = os.path.join(tmp, name)
                if os.path.isfile(file):
                    with open(file, "rb") as handle:
                        os.fsync(handle.fileno())
                    files[name] = os.path.getsize(file)
            state = {"global_step": int(step), **(extra_state or {}),
                     "format": SAFE_FORMAT if self.checkpoint_format == "safetensors" else "accelerate",
                     "num_processes": accelerator.num_processes, "settings": self.settings, "files": files}
            write_json_atomic(os.path.join(tmp, TRAINING_STATE_NAME), state, fsync=True)
            self._publish(tmp, path)
            self._rotate(path)
        accelerator.wait_for_everyone()
        self.last_saved = path
        return path

    def _save_safe(self, folder: str) -> None:
        if self.model is not None:
            save_model(self.accelerator.unwrap_model(self.model), os.path.join(folder, MODEL_FILE))
        if self.optimizer is not None:
            save_state_file(folder, "optimizer", self.optimizer.state_dict())
        if self.scheduler is not None:
            save_state_file(folder, "scheduler", self.scheduler.state_dict())
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            save_state_file(folder, "scaler", scaler.state_dict())
        respect_umask(folder)

    def _publish(self, tmp: str, path: str) -> None:
        if os.path.exists(path):  # the same step saved again (e.g. after a resume): swap, then drop the old one
            old = os.path.join(self.output_dir, f".old-{os.path.basename(path)}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)

    def _rotate(self, just_saved: str) -> None:
        for name in os.listdir(self.output_dir):  # leftovers of saves that were killed
            if name.startswith((TMP_CHECKPOINT_PREFIX, f".old-{CHECKPOINT_PREFIX}")):
                shutil.rmtree(os.path.join(self.output_dir, name), ignore_errors=True)
        if self.total_limit is None or self.total_limit <= 0:
            return
        complete = [p for p in list_checkpoints(self.output_dir, True, self.allow_pickle) if p != just_saved]
        for old in complete[: max(0, len(complete) - (self.total_limit - 1))]:
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------------------------------------ resuming
    def resolve(self, resume_from_checkpoint: str | None) -> str | None:
        """A checkpoint directory from a path or `"latest"` (the newest complete checkpoint; the incomplete ones
        skipped are named in a warning). None when there is nothing to resume; a `CheckpointError` for a named
        checkpoint that is incomplete or unsafe, `FileNotFoundError` for a missing one."""
        if not resume_from_checkpoint:
            return None
        if resume_from_checkpoint == "latest":
            skipped = []
            for path in reversed(list_checkpoints(self.output_dir)):
                problem = checkpoint_problem(path, self.allow_pickle)
                if problem is None:
                    if skipped:
                        logger.warning("resume_from_checkpoint=latest: skipped %d incomplete or unusable checkpoint(s) "
                                       "newer than %s: %s", len(skipped), os.path.basename(path), "; ".join(skipped))
                    return path
                skipped.append(f"{path} {problem}")
            logger.warning("resume_from_checkpoint=latest but %s has no complete checkpoint%s; starting fresh",
                           self.output_dir, (" (skipped: " + "; ".join(skipped) + ")") if skipped else "")
            return None
        if not os.path.isdir(resume_from_checkpoint):
            raise FileNotFoundError(f"resume_from_checkpoint={resume_from_checkpoint!r} is not a directory")
        problem = checkpoint_problem(resume_from_checkpoint, self.allow_pickle)
        if problem is not None:
            raise CheckpointError(f"--resume_from_checkpoint {resume_from_checkpoint} {problem}; choose a complete "
                                  "checkpoint (or 'latest', which skips incomplete ones)")
        return resume_from_checkpoint

    def load(self, path: str) -> dict[str, Any]:
        """Restore model, optimizer, scheduler, scaler and this process's RNG from `path` (JSON and safetensors only,
        unless it is an accelerate-format checkpoint and `checkpoint_format="accelerate"`); returns its
        `training_state.json`. Refuses incomplete, unsafe or non-finite checkpoints (`CheckpointError`)."""
        problem = checkpoint_problem(path, self.allow_pickle)
        if problem is not None:
            raise CheckpointError(f"Checkpoint {path} {problem}")
        state = read_training_state(path)
        try:
            if state.get("format") == SAFE_FORMAT:
                self._load_safe(path, state)
            else:
                if self.scheduler is not None and self.scheduler not in self.accelerator._custom_objects:
                    self.accelerator.register_for_checkpointing(self.scheduler)
                self.accelerator.load_state(path)
        except CheckpointError:
            raise
        except (RuntimeError, ValueError, KeyError, TypeError, OSError) as error:
            raise CheckpointError(f"Checkpoint {path} does not match this run ({error})") from error
        params_ok, moments_ok = self.state_is_finite()
        if not (params_ok and moments_ok):
            raise CheckpointError(f"Checkpoint {path} holds non-finite "
                                  f"{'model parameters' if not params_ok else 'optimizer state'} (NaN/inf); resume "
                                  "from an earlier checkpoint")
        self.last_saved = path
        return state

    def _load_safe(self, path: str, state: dict[str, Any]) -> None:
        accelerator = self.accelerator
        if self.model is not None:
            load_model(accelerator.unwrap_model(self.model), os.path.join(path, MODEL_FILE), strict=True)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(load_state_file(path, "optimizer"))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(load_state_file(path, "scheduler"))
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None and os.path.isfile(os.path.join(path, "scaler.json")):
            scaler.load_state_dict(load_state_file(path, "scaler"))
        rng_name = f"rng_state_{accelerator.process_index}"
        if os.path.isfile(os.path.join(path, f"{rng_name}.json")):
            restore_rng_state(load_state_file(path, rng_name))
        else:
            logger.warning("%s has RNG states of %s process(es); process %d keeps its freshly seeded RNG", path,
                           state.get("num_processes", "?"), accelerator.process_index)


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
        write_json_atomic(path, self.to_dict())


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


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
    on_resume: Callable[[int], None] | None = None,
    checkpoint_format: str = "safetensors",
) -> TrainLoopResult:
    """Run optimizer steps until `max_steps`, with exact resume.

    `model`, `optimizer` and `dataloader` must already be prepared by `accelerator`; `scheduler` is not prepared (it
    is stepped once per optimizer step here and saved by the `CheckpointManager`). The data order comes from
    `sampler` (an `EpochSampler` in the un-prepared loader), set to the right epoch before each pass.

    Guards: the loss and, after every optimizer step, the trained parameters are checked for NaN/inf (one fused
    reduction); a non-finite state stops the run with `NonFiniteLossError` / `NonFiniteStateError` naming the last
    checkpoint, which is finite (saves check the optimizer state too). Ctrl-C saves the last completed step (unless
    it is non-finite or the interrupt came in the middle of a parameter update), prints the exact
    `--resume_from_checkpoint` to use and raises `TrainingInterrupted` (a `KeyboardInterrupt`).

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
        checkpointing_steps (`int`, *optional*, defaults to 0): save every N steps (0: never, except on Ctrl-C; the
            final state is always saved when N > 0).
        checkpoints_total_limit (`int`, *optional*): keep the last K complete checkpoints.
        resume_from_checkpoint (`str`, *optional*): a checkpoint path or `"latest"` (the newest complete one).
        logging_steps (`int`, *optional*, defaults to 1): log every N steps.
        batch_size_fn (`Callable`, *optional*): images in a batch (for images/s); defaults to the first tensor's
            length.
        on_step_end (`Callable`, *optional*): called on every process after each step (and its checkpoint) as
            `on_step_end(step, logs)`.
        description (`str`, *optional*): progress bar label.
        on_resume (`Callable`, *optional*): called on every process as `on_resume(step)` once a checkpoint is
            restored, before training continues (e.g. to redo an evaluation that the interrupted run did not finish).
        checkpoint_format (`str`, *optional*, defaults to `"safetensors"`): `"safetensors"` (pickle-free) or
            `"accelerate"` (accelerate's `save_state`, pickles; for FSDP / DeepSpeed).
    """
    accumulation = max(1, int(gradient_accumulation_steps))
    per_epoch = steps_per_epoch(len(dataloader), accumulation)
    if per_epoch < 1:
        raise ValueError(
            f"The data loader yields {len(dataloader)} batch(es) per process per epoch, fewer than one optimizer step "
            f"({accumulation} micro-batch(es)); the batch size is larger than the data set allows. Lower "
            "--per_device_train_batch_size / --gradient_accumulation_steps or add data."
        )
    per_device = (getattr(dataloader, "batch_size", None)
                  or getattr(getattr(dataloader, "batch_sampler", None), "batch_size", None))
    settings = {
        "per_device_train_batch_size": per_device,
        "num_processes": accelerator.num_processes,
        "gradient_accumulation_steps": accumulation,
        "total_batch_size": per_device * accelerator.num_processes * accumulation if per_device else None,
        "max_steps": int(max_steps),
        "peak_learning_rates": [float(lr) for lr in getattr(scheduler, "base_lrs", [])],
        "max_grad_norm": max_grad_norm,
    }
    checkpoints = CheckpointManager(accelerator, output_dir, checkpoints_total_limit, model, optimizer, scheduler,
                                    checkpoint_format, settings)
    step_log = StepLog(os.path.join(output_dir, STEP_LOG_NAME), max_steps, accelerator.is_main_process)
    global_step = 0
    resumed_from = checkpoints.resolve(resume_from_checkpoint)
    if resumed_from is not None:
        if not os.path.isfile(os.path.join(resumed_from, STEP_LOG_NAME)):
            raise CheckpointError(f"Checkpoint {resumed_from} has no {STEP_LOG_NAME} (the step log); resuming from it "
                                  "would lose the loss history. Choose another checkpoint.")
        groups_now = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        state = checkpoints.load(resumed_from)
        global_step = int(state["global_step"])
        step_log.load(os.path.join(resumed_from, STEP_LOG_NAME))
        step_log.truncate(global_step)
        accelerator.print(f"Resumed from {resumed_from} at step {global_step}")
        for line in reconcile_resumed_settings(state, settings, groups_now, optimizer, scheduler):
            accelerator.print(line)
            logger.warning(line)
        if on_resume is not None:
            on_resume(global_step)

    def count(batch: Any) -> int:
        if batch_size_fn is not None:
            return int(batch_size_fn(batch))
        tensor = batch if isinstance(batch, torch.Tensor) else next(
            v for v in (batch.values() if isinstance(batch, dict) else batch) if isinstance(v, torch.Tensor))
        return int(tensor.shape[0])

    trained = [p for group in optimizer.param_groups for p in group["params"]]
    progress = tqdm(total=max_steps, initial=global_step, desc=description,
                    disable=not accelerator.is_main_process, dynamic_ncols=True)
    # log records (accelerate's INFO lines on saving / loading state, warnings) go through tqdm.write while the bar
    # runs, so each is a line of its own and the bar is redrawn below it instead of being cut by it
    redirect_logs = logging_redirect_tqdm(loggers=[logging.root, logging.getLogger("transformers")])
    redirect_logs.__enter__()
    final_loss = step_log.losses()[-1] if step_log.losses() else None
    rng_after_step = capture_rng_state()  # the RNG as a checkpoint of `global_step` must hold it
    updating = False
    model.train()
    tic = time.perf_counter()
    try:
        while global_step < max_steps:
            epoch, start_in_epoch = divmod(global_step, per_epoch)
            sampler.set_epoch(epoch)
            if hasattr(dataloader, "set_epoch"):
                dataloader.set_epoch(epoch)
            skip = start_in_epoch * accumulation
            loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
            # Starting a pass draws a base seed from the global RNG (torch DataLoader); keep that draw out of the
            # global stream so that the RNG seen by the model (dropout, drop path) is the same whether or not the run
            # resumed.
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
                updating = True
                # a NaN loss stops the run below, before anything is saved; the step is still taken so that every
                # process runs the same collectives (clipping is one under FSDP)
                if max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                learning_rate = max(group["lr"] for group in optimizer.param_groups)  # the un-decayed groups (layer decay)
                # one reduction for the loss and for the finiteness of the updated parameters
                params_bad = (~all_finite(trained)).float().to(accelerator.device)
                reduced = accelerator.reduce(torch.stack([step_loss, params_bad]), reduction="mean").tolist()
                mean_loss = reduced[0]
                try:
                    check_finite(mean_loss, global_step + 1, checkpoints.last_saved)
                    if reduced[1] > 0:
                        raise NonFiniteStateError(
                            f"The model parameters became non-finite (NaN/inf) in optimizer step {global_step + 1} "
                            f"(loss {mean_loss:.4g}); training stopped without saving this state "
                            f"({_resume_hint(checkpoints.last_saved)}). Lower the learning rate, clip gradients "
                            "(--max_grad_norm), use fp32/bf16 instead of fp16, or check the data.")
                except NonFiniteLossError as error:
                    accelerator.print(f"ERROR: {error}")
                    updating = False
                    accelerator.end_training()
                    raise
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                rng_after_step = capture_rng_state()
                updating = False
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
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{learning_rate:.2e}",
                                     img_s=f"{images_per_second:.1f}")
                if checkpointing_steps and (global_step % checkpointing_steps == 0 or global_step == max_steps):
                    try:
                        checkpoints.save(global_step, {"epoch": global_step / per_epoch}, step_log, rng_after_step)
                    except NonFiniteLossError as error:
                        accelerator.print(f"ERROR: {error}")
                        accelerator.end_training()
                        raise
                if on_step_end is not None:
                    on_step_end(global_step, logs)
    except KeyboardInterrupt:
        progress.close()
        _save_after_interrupt(accelerator, checkpoints, global_step, per_epoch, step_log, rng_after_step, updating)
    finally:
        redirect_logs.__exit__(None, None, None)
    progress.close()
    step_log.save()
    return TrainLoopResult(global_step, final_loss, checkpoints.last_saved, step_log, resumed_from)


def _save_after_interrupt(accelerator, checkpoints: CheckpointManager, step: int, per_epoch: int, step_log: StepLog,
                          rng_state: dict[str, Any], updating: bool) -> None:
    """Ctrl-C: save the last completed step if that is safe, say how to resume, raise `TrainingInterrupted`."""
    saved = checkpoints.last_saved
    path = os.path.join(checkpoints.output_dir, f"{CHECKPOINT_PREFIX}{step}")
    if updating:
        note = ("the interrupt came during a parameter update, so the current state is inconsistent and was not "
                "saved")
    elif step == 0:
        note = "no optimizer step had completed, so there is nothing to save"
    elif saved is not None and os.path.normpath(saved) == os.path.normpath(path):
        note = f"step {step} was already saved"
    else:
        try:
            saved = checkpoints.save(step, {"epoch": step / per_epoch, "interrupted": True}, step_log, rng_state)
            note = f"saved step {step}"
        except NonFiniteLossError as error:
            note = f"not saved: {error}"
    hint = (f"resume with --resume_from_checkpoint {saved}" if saved else "no checkpoint to resume from")
    message = f"Interrupted after optimizer step {step}: {note}; {hint}"
    accelerator.print(message)
    step_log.save()
    accelerator.end_training()
    raise TrainingInterrupted(message, step, saved) from None


def interrupted_exit_code(interrupt: KeyboardInterrupt) -> int:
    """What a recipe's `main()` does with Ctrl-C: no traceback; `train_loop` already said how to resume (other
    interrupts, e.g. while loading data or in the final evaluation, get a short note); returns 130 (128 + SIGINT)."""
    if not isinstance(interrupt, TrainingInterrupted):
        print("Interrupted; resume a run that saved checkpoints with --resume_from_checkpoint latest",
              file=sys.stderr)
    return 130


def run_recipe(run: Callable[..., Any], arguments: Sequence[Any]) -> tuple[int, Any]:
    """Run a recipe's `run(*arguments)` for its `main()`: `(exit status, result)`, where a non-finite loss (already
    reported by `train_loop`) exits 1, Ctrl-C exits as `interrupted_exit_code` says, and the result is `None` on
    every process but the main one (only that one prints the summary)."""
    try:
        result = run(*arguments)
    except NonFiniteLossError:
        return 1, None
    except KeyboardInterrupt as interrupt:
        return interrupted_exit_code(interrupt), None
    return 0, (result if PartialState().is_main_process else None)


def reconcile_resumed_settings(state: dict[str, Any], settings: dict[str, Any], groups_now: list[dict[str, Any]],
                               optimizer: torch.optim.Optimizer, scheduler) -> list[str]:
    """After a resume: compare the run's settings with those recorded in the checkpoint, apply this run's optimizer
    hyper-parameters and peak learning rates (the checkpoint's weights, optimizer moments and step count are kept),
    and return lines that say what changed and what is kept (empty when nothing changed)."""
    saved = state.get("settings") or {}
    names = {"per_device_train_batch_size": "batch size per device", "num_processes": "processes",
             "gradient_accumulation_steps": "gradient accumulation", "total_batch_size": "total batch size",
             "max_steps": "max_steps", "max_grad_norm": "max_grad_norm"}
    changed = [f"{label} {saved[key]} -> {settings[key]}" for key, label in names.items()
               if key in saved and settings.get(key) is not None and saved[key] != settings[key]]
    # the optimizer's groups now hold the checkpoint's hyper-parameters: put this run's back
    applied = []
    for index, (group, wanted) in enumerate(zip(optimizer.param_groups, groups_now)):
        for key, value in wanted.items():
            if key in ("lr", "initial_lr") or key not in group:
                continue
            old = group[key]
            if (list(old) if isinstance(old, tuple) else old) != (list(value) if isinstance(value, tuple) else value):
                applied.append(f"{key} {old} -> {value}" + (f" (group {index})" if len(groups_now) > 1 else ""))
                group[key] = value
    wanted_lrs = settings.get("peak_learning_rates") or []
    base_lrs = list(getattr(scheduler, "base_lrs", []))
    if wanted_lrs and len(wanted_lrs) == len(base_lrs) and any(
            not math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) for a, b in zip(base_lrs, wanted_lrs)):
        applied.append(f"peak learning rate {max(base_lrs):.4g} -> {max(wanted_lrs):.4g}")
        scheduler.base_lrs = list(wanted_lrs)
        for group, lr in zip(optimizer.param_groups, wanted_lrs):
            group["initial_lr"] = lr
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            for group, lr, fn in zip(optimizer.param_groups, wanted_lrs, scheduler.lr_lambdas):
                group["lr"] = lr * fn(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if not changed and not applied:
        return []
    step = int(state.get("global_step", 0))
    lines = ["Resuming with other settings than the checkpoint was saved with:"]
    if changed:
        lines.append("  changed: " + "; ".join(changed)
                     + ("; the learning-rate schedule is rebuilt for this run's steps"
                        if any(c.startswith("max_steps") for c in changed) else ""))
    if applied:
        lines.append("  applied from this run: " + "; ".join(applied)
                     + f" (the schedule continues at step {step} with them)")
    kept = f"  kept from the checkpoint: the weights, the optimizer moments and the step count ({step})"
    if any(c.startswith(("batch size", "processes", "gradient accumulation", "total batch")) for c in changed):
        kept += ("; the data position is recomputed from the step count with the new batch size, so the samples "
                 "after the resume differ from those of an uninterrupted run, and the learning rate is not rescaled "
                 "for the new batch (pass --learning_rate to change it)")
    lines.append(kept)
    return lines


__all__: list[str] = []  # nothing here is documented API; the package's own modules import what they need
