"""Checkpoints of UNIP training: the pickle-free format, completeness and sha256 checks, run lineage (which run wrote
a checkpoint and where it resumed from), rotation that a Ctrl-C cannot half-do, resuming, and the report of what a
resumed run changes."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from unip_hf.training.nan_guard import NonFiniteStateError, _resume_hint, all_finite
from unip_hf.training.state_files import (
    CheckpointError,
    capture_rng_state,
    file_sha256,
    load_state_file,
    restore_rng_state,
    save_state_file,
    write_json_atomic,
)
from unip_hf.training.step_log import STEP_LOG_NAME, StepLog

from unip_hf.models.configuration_unip import respect_umask

logger = logging.getLogger(__name__)


CHECKPOINT_PREFIX = "checkpoint-"


TRAINING_STATE_NAME = "training_state.json"


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


def checkpoint_problem(path: str, allow_pickle: bool = False, verify_hashes: bool = False) -> str | None:
    """Why the checkpoint folder `path` cannot be resumed, or None when it is complete.

    A checkpoint is complete when its `training_state.json` (written last, just before the folder is renamed into
    place) exists and every file it lists has the recorded size; with `verify_hashes` every file's sha256 must also
    be the one recorded when it was saved (a file changed in place, e.g. bytes overwritten, keeps its size). Folders
    written by accelerate's `save_state` (older unip-hf versions, or `checkpoint_format="accelerate"`) hold pickles
    and are accepted only with `allow_pickle`.
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
    if verify_hashes:
        for name, expected in (state.get("sha256") or {}).items():
            file = os.path.join(path, name)
            if not os.path.isfile(file):
                return f"is missing {name}"
            if file_sha256(file) != expected:
                return (f"has a corrupted {name}: its sha256 differs from the one recorded when the checkpoint was "
                        f"saved (the file was changed after the save)")
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


LINEAGE_NAME = "run_lineage.json"


TRASH_CHECKPOINT_PREFIX = f".trash-{CHECKPOINT_PREFIX}"


LEFTOVER_PREFIXES = (TMP_CHECKPOINT_PREFIX, f".old-{CHECKPOINT_PREFIX}", TRASH_CHECKPOINT_PREFIX)


def new_run_id() -> str:
    """A short random id for one run (one call of `train_loop`; a resumed run gets a new one)."""
    import uuid

    return uuid.uuid4().hex[:12]


def read_run_lineage(output_dir: str) -> list[dict[str, Any]]:
    """The runs recorded in `output_dir/run_lineage.json`, oldest first (each `{"run_id", "lineage", "resumed_from",
    "started"}`); `[]` when there is none or it is unreadable."""
    try:
        with open(os.path.join(output_dir, LINEAGE_NAME), encoding="utf-8") as handle:
            runs = json.load(handle).get("runs", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [run for run in runs if isinstance(run, dict) and isinstance(run.get("lineage"), list)]


def on_lineage(state: dict[str, Any], lineage: list[dict[str, Any]]) -> bool:
    """Whether the checkpoint whose `training_state.json` is `state` lies on `lineage` (a list of `{"run_id",
    "from_step"}` segments, root first): it was saved by a run of the lineage, at most at the step from which the next
    run of the lineage resumed. Checkpoints that record no lineage (older versions) count as on it."""
    recorded = state.get("lineage")
    if not recorded:
        return True
    saved_by = recorded[-1].get("run_id")
    step = int(state.get("global_step", 0))
    for index, segment in enumerate(lineage):
        if segment.get("run_id") == saved_by:
            return index == len(lineage) - 1 or step <= int(lineage[index + 1].get("from_step", 0))
    return False


class CheckpointManager:
    """Atomic, pickle-free checkpoints with keep-last-K rotation and `latest` resolution.

    `save(step)` writes `output_dir/.tmp-checkpoint-{step}/`: the unwrapped model (`model.safetensors`), the
    optimizer (`optimizer.safetensors` + `optimizer.json` for its structure and hyper-parameters), the scheduler
    (`scheduler.json`, its `state_dict`: step count and base learning rates; the schedule itself is rebuilt by the
    recipe), the fp16 grad scaler (`scaler.json`), one `rng_state_{process}.json/.safetensors` per process, the step
    log, and last `training_state.json` (step, run settings, the file list with sizes and sha256 hashes, the lineage:
    the completion mark); then it renames the folder to `checkpoint-{step}`. A kill at any moment leaves either no
    `checkpoint-{step}` or a complete one. Nothing non-finite is saved (`NonFiniteStateError`). Loading reads JSON and
    safetensors only, after checking every file against its recorded hash.

    Lineage: each run (each `train_loop` call) has a `run_id`; `start(...)` records it in `output_dir/run_lineage.json`
    with its lineage, the chain of `{"run_id", "from_step"}` segments it continues (a fresh run: itself from step 0; a
    resumed one: the checkpoint's lineage plus itself from the checkpoint's step), and every checkpoint records the
    lineage of the run that saved it. `latest` follows the lineage of the newest run, so a rewound run
    (`--resume_from_checkpoint checkpoint-20` after `checkpoint-40` was written) never resumes from the abandoned
    branch; rotation only removes checkpoints of this run's lineage. Rotation moves a folder to
    `.trash-checkpoint-{step}` (an atomic rename) before deleting it, so an interrupted deletion leaves a trash folder,
    never a half-deleted `checkpoint-{step}`; trash and other leftovers are removed at the start of a run and at every
    rotation.

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
        self.run_id = new_run_id()
        self.lineage: list[dict[str, Any]] = [{"run_id": self.run_id, "from_step": 0}]
        self.resumed_from: str | None = None
        self._verified: set[str] = set()

    def start(self, resumed_from: str | None = None, state: dict[str, Any] | None = None) -> None:
        """Begin this run: its lineage continues the restored checkpoint's (`resumed_from`, whose `training_state.json`
        is `state`), and the main process records it in `run_lineage.json` and removes leftovers of interrupted saves
        and rotations."""
        if resumed_from is not None and state is not None:
            parent = state.get("lineage") or [{"run_id": state.get("run_id", "unrecorded"), "from_step": 0}]
            self.lineage = [*parent, {"run_id": self.run_id, "from_step": int(state.get("global_step", 0))}]
            self.resumed_from = os.path.normpath(resumed_from)
        if self.accelerator.is_main_process:
            os.makedirs(self.output_dir, exist_ok=True)
            self.remove_leftovers()
            runs = read_run_lineage(self.output_dir)
            runs.append({"run_id": self.run_id, "lineage": self.lineage, "resumed_from": self.resumed_from,
                         "started": time.strftime("%Y-%m-%d %H:%M:%S")})
            write_json_atomic(os.path.join(self.output_dir, LINEAGE_NAME), {"runs": runs})

    def remove_leftovers(self) -> list[str]:
        """Delete what interrupted saves and rotations left (`.tmp-`, `.old-` and `.trash-checkpoint-*` folders)."""
        removed = []
        if not os.path.isdir(self.output_dir):
            return removed
        for name in os.listdir(self.output_dir):
            if name.startswith(LEFTOVER_PREFIXES):
                shutil.rmtree(os.path.join(self.output_dir, name), ignore_errors=True)
                removed.append(name)
        return removed

    def discard(self, path: str) -> None:
        """Delete a checkpoint folder safely: rename it to `.trash-checkpoint-{step}` first (atomic), so that an
        interruption during the deletion never leaves a half-deleted `checkpoint-{step}`."""
        trash = os.path.join(self.output_dir, f".trash-{os.path.basename(path)}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

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
            files, hashes = {}, {}
            for name in sorted(os.listdir(tmp)):
                file = os.path.join(tmp, name)
                if os.path.isfile(file):
                    with open(file, "rb") as handle:
                        os.fsync(handle.fileno())
                    files[name] = os.path.getsize(file)
                    hashes[name] = file_sha256(file)
            state = {"global_step": int(step), **(extra_state or {}),
                     "format": SAFE_FORMAT if self.checkpoint_format == "safetensors" else "accelerate",
                     "num_processes": accelerator.num_processes, "settings": self.settings, "files": files,
                     "sha256": hashes, "run_id": self.run_id, "lineage": self.lineage,
                     "resumed_from": os.path.basename(self.resumed_from) if self.resumed_from else None,
                     "saved_at": time.strftime("%Y-%m-%d %H:%M:%S")}
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
        self.remove_leftovers()  # of saves and rotations that were interrupted
        if self.total_limit is None or self.total_limit <= 0:
            return
        step = int(os.path.basename(just_saved)[len(CHECKPOINT_PREFIX):])
        mine = []
        for path in list_checkpoints(self.output_dir):
            if path == just_saved:
                continue
            if checkpoint_problem(path, self.allow_pickle) is not None:
                # never resumable: an older one is the remains of an interrupted deletion or save (newer ones are
                # left alone: they may be a save in progress elsewhere or something to look at)
                if int(os.path.basename(path)[len(CHECKPOINT_PREFIX):]) < step:
                    self.discard(path)
                continue
            state = read_training_state(path) or {}
            if on_lineage(state, self.lineage):  # the checkpoints of other branches are not this run's to rotate
                mine.append(path)
        for old in mine[: max(0, len(mine) - (self.total_limit - 1))]:
            self.discard(old)

    # ------------------------------------------------------------------------------------------------ resuming
    def resolve(self, resume_from_checkpoint: str | None) -> str | None:
        """A checkpoint directory from a path or `"latest"`: the newest complete checkpoint (sizes and sha256 hashes
        as recorded) on the lineage of the newest run in `run_lineage.json` (checkpoints of an abandoned branch, and
        incomplete or corrupted ones, are skipped and named in a warning). None when there is nothing to resume; a
        `CheckpointError` for a named checkpoint that is incomplete, corrupted or unsafe, `FileNotFoundError` for a
        missing one."""
        if not resume_from_checkpoint:
            return None
        if resume_from_checkpoint == "latest":
            runs = read_run_lineage(self.output_dir)
            newest = runs[-1] if runs else None
            lineage = newest["lineage"] if newest else None
            skipped, ignored = [], []
            for path in reversed(list_checkpoints(self.output_dir)):
                state = read_training_state(path)
                if lineage and state is not None and not on_lineage(state, lineage):
                    recorded = state.get("lineage") or [{}]
                    ignored.append(f"{os.path.basename(path)} (run {recorded[-1].get('run_id', '?')})")
                    continue
                problem = checkpoint_problem(path, self.allow_pickle, verify_hashes=True)
                if problem is None:
                    self._verified.add(os.path.normpath(path))
                    break
                skipped.append(f"{path} {problem}")
            else:
                path = None
            if ignored:
                branch = newest.get("resumed_from")
                logger.warning(
                    "resume_from_checkpoint=latest follows the lineage of the newest run in %s (run %s%s); ignored "
                    "%d checkpoint(s) of a branch it abandoned: %s", self.output_dir, newest.get("run_id"),
                    f", which resumed from {os.path.basename(branch)}" if branch else "", len(ignored),
                    ", ".join(ignored))
            if path is not None:
                if skipped:
                    logger.warning("resume_from_checkpoint=latest: skipped %d incomplete or unusable checkpoint(s) "
                                   "newer than %s: %s", len(skipped), os.path.basename(path), "; ".join(skipped))
                return path
            logger.warning("resume_from_checkpoint=latest but %s has no complete checkpoint%s; starting fresh",
                           self.output_dir, (" (skipped: " + "; ".join(skipped) + ")") if skipped else "")
            return None
        if not os.path.isdir(resume_from_checkpoint):
            raise FileNotFoundError(f"resume_from_checkpoint={resume_from_checkpoint!r} is not a directory")
        problem = checkpoint_problem(resume_from_checkpoint, self.allow_pickle, verify_hashes=True)
        if problem is not None:
            raise CheckpointError(f"--resume_from_checkpoint {resume_from_checkpoint} {problem}; choose a complete "
                                  "checkpoint (or 'latest', which skips incomplete ones)")
        self._verified.add(os.path.normpath(resume_from_checkpoint))
        return resume_from_checkpoint

    def load(self, path: str) -> dict[str, Any]:
        """Restore model, optimizer, scheduler, scaler and this process's RNG from `path` (JSON and safetensors only,
        unless it is an accelerate-format checkpoint and `checkpoint_format="accelerate"`); returns its
        `training_state.json`. Refuses incomplete, unsafe or non-finite checkpoints (`CheckpointError`)."""
        problem = checkpoint_problem(path, self.allow_pickle,
                                     verify_hashes=os.path.normpath(path) not in self._verified)
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


def check_resumable(path: str, state: dict[str, Any], settings: dict[str, Any]) -> None:
    """Before a checkpoint is restored: a `CheckpointError` when it was trained for other labels (class names by id)
    than this run's data set has: its classifier would silently predict the old classes under the new names."""
    saved = (state.get("settings") or {}).get("labels")
    wanted = settings.get("labels")
    if saved is None or wanted is None or saved == wanted:
        return
    def show(labels):
        return ", ".join(f"{k}: {v}" for k, v in labels.items()) if isinstance(labels, dict) else str(labels)
    raise CheckpointError(
        f"--resume_from_checkpoint {path} was trained for other labels ({show(saved)}) than this run's data set has "
        f"({show(wanted)}; data set {(state.get('settings') or {}).get('dataset', '?')} -> "
        f"{settings.get('dataset', '?')}). Resuming would train the old classes under new names: resume on the "
        "checkpoint's data set, or start a new run in another --output_dir (e.g. --model_name_or_path a saved model)")


def reconcile_resumed_settings(state: dict[str, Any], settings: dict[str, Any], groups_now: list[dict[str, Any]],
                               optimizer: torch.optim.Optimizer, scheduler) -> list[str]:
    """After a resume: compare the run's settings with those recorded in the checkpoint, apply this run's optimizer
    hyper-parameters and peak learning rates (the checkpoint's weights, optimizer moments and step count are kept),
    and return lines that say what changed and what is kept (empty when nothing changed)."""
    saved = state.get("settings") or {}
    names = {"dataset": "data set", "architecture": "architecture",
             "per_device_train_batch_size": "batch size per device", "num_processes": "processes",
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
        # the restored optimizer holds the learning rate the checkpoint's schedule set for the next step; this run's
        # schedule (rebuilt for its max_steps, warm-up and peak) decides it from the first resumed step on
        before = max(group["lr"] for group in optimizer.param_groups)
        for group, lr, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = lr * fn(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        after = max(group["lr"] for group in optimizer.param_groups)
        if not math.isclose(before, after, rel_tol=1e-9, abs_tol=1e-30):
            applied.append(f"learning rate of step {scheduler.last_epoch + 1} {before:.4g} -> {after:.4g} (this "
                           "run's schedule)")
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
