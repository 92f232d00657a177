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
  naming `--resume_from_checkpoint latest` and `--overwrite_output_dir`; `create_accelerator` locks the folder for the
  run (`lock_output_dir`, `.unip-run.lock`: a second run is refused with `OutputDirError`) and deletes everything an
  earlier run wrote when `--overwrite_output_dir` is given (`clear_output_dir`, `RUN_OUTPUTS`); `finish_run` ends a
  recipe (the DDP wrapper freed between barriers, `end_training()`, the lock released).
- Checkpoints record sha256 hashes of their files (verified on resume) and their lineage (`run_id`, the checkpoint
  they resumed from; `run_lineage.json` lists the runs), which `"latest"` follows after a rewind; rotation deletes
  through a `.trash-checkpoint-N` rename.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from unip_hf.training.checkpoints import (
    CHECKPOINT_PREFIX,
    CheckpointManager,
    check_resumable,
    read_training_state,
    reconcile_resumed_settings,
)
from unip_hf.training.nan_guard import NonFiniteLossError, NonFiniteStateError, _resume_hint, all_finite, check_finite
from unip_hf.training.output_dir import (
    OutputDirError,
    check_output_dir,
    clear_output_dir,
    lock_output_dir,
    run_output_holding,
    unlock_output_dir,
)
from unip_hf.training.sampler import EpochSampler
from unip_hf.training.state_files import (
    CheckpointError,
    capture_rng_state,
)
from unip_hf.training.step_log import STEP_LOG_NAME, StepLog, _jsonable, resolve_report_to

from unip_hf.recipe_arguments import (
    TrainingLoopArguments,
)

logger = logging.getLogger(__name__)


def create_accelerator(train: TrainingLoopArguments, inputs: dict[str, Any] | None = None):
    """The recipes' `Accelerator` (mixed precision, trackers from `--report_to`, project dir), the seed set and the
    output directory made and locked for the run's lifetime (`lock_output_dir`; released by `finish_run` or at
    exit). Under the lock the earlier-run check (`check_output_dir`) is made again (a run that started after this
    one's argument checks may have written checkpoints since), then `--overwrite_output_dir` deletes what an earlier
    run wrote (`clear_output_dir`), unless that would delete one of `inputs` (`{"--argument": path or paths}`, what
    the run reads, e.g. `--model_name_or_path OUT`). Returns `(accelerator, tracker names)`; an `OutputDirError` when
    the folder is in use, holds an earlier run, or holds an input the overwrite would delete."""
    trackers = resolve_report_to(train.report_to)
    accelerator = Accelerator(mixed_precision=train.mixed_precision, log_with=trackers or None,
                              project_dir=train.output_dir)
    set_seed(train.seed)
    problem = None
    if accelerator.is_main_process:
        try:
            lock_output_dir(train.output_dir)
            try:
                check_output_dir(train)
            except ValueError as error:
                raise OutputDirError(str(error)) from None
            if train.overwrite_output_dir and not train.resume_from_checkpoint:
                for argument, paths in (inputs or {}).items():
                    for path in ([paths] if isinstance(paths, (str, os.PathLike)) else list(paths or [])):
                        if run_output_holding(train.output_dir, path):
                            raise OutputDirError(
                                f"--overwrite_output_dir would delete {argument} {path}, which this run reads (it is "
                                f"{run_output_holding(train.output_dir, path)} of --output_dir {train.output_dir}); "
                                "choose another --output_dir, or move the input out of it")
                clear_output_dir(train.output_dir)
        except OutputDirError as error:
            problem = str(error)
    if accelerator.num_processes > 1:  # every process stops, not only the one that found the problem
        from accelerate.utils import broadcast_object_list

        problem = broadcast_object_list([problem])[0]
    if problem is not None:
        raise OutputDirError(problem)
    accelerator.wait_for_everyone()
    os.makedirs(train.output_dir, exist_ok=True)
    return accelerator, trackers


def finish_run(accelerator, output_dir: str) -> None:
    """End a recipe's run in a fixed order on every process: wait for all, drop accelerate's references to the
    prepared (DDP-wrapped) model, optimizer and loaders and collect them while the process group is still alive and
    every process is past its last collective, wait again, then `end_training()` (trackers closed, process group
    destroyed where accelerate owns it) and release the `--output_dir` lock. The recipe drops its own references to
    the prepared model first (`prepared = None`): a DDP wrapper freed later, at an arbitrary garbage collection as the
    recipe returns, could deadlock its reducer against gloo's worker thread (2-process runs hanging at exit)."""
    import gc

    accelerator.wait_for_everyone()
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.is_main_process:
        unlock_output_dir(output_dir)


# ----------------------------------------------------------------------------------------------------------------
# Optimizer and schedulers
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Data order
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints, step log, trackers, NaN guard
# ----------------------------------------------------------------------------------------------------------------


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by `train_loop` after Ctrl-C, once the current step is saved; `checkpoint` is where to resume from
    (None when nothing could be saved) and `step` the last completed optimizer step."""

    def __init__(self, message: str, step: int = 0, checkpoint: str | None = None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


# --- pickle-free state files: tensors in `<name>.safetensors`, the structure (and every non-tensor) in `<name>.json`


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
    run_settings: dict[str, Any] | None = None,
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
            restored, before training continues (e.g. to redo an evaluation that the interrupted run did not finish);
            `read_run_lineage(output_dir)[-1]` is then this run, with its lineage.
        checkpoint_format (`str`, *optional*, defaults to `"safetensors"`): `"safetensors"` (pickle-free) or
            `"accelerate"` (accelerate's `save_state`, pickles; for FSDP / DeepSpeed).
        run_settings (`dict`, *optional*): what the recipe trains, recorded in every checkpoint and compared on
            resume: `"dataset"` and `"architecture"` (strings; a change is reported) and `"labels"` (the class
            names by id; a change is refused with a `CheckpointError`, since the head would silently mean other
            classes).
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
        **{key: _jsonable(value) for key, value in (run_settings or {}).items()},
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
        check_resumable(resumed_from, read_training_state(resumed_from) or {}, settings)
        try:
            state = checkpoints.load(resumed_from)
        except CheckpointError as error:
            saved_architecture = ((read_training_state(resumed_from) or {}).get("settings") or {}).get("architecture")
            if saved_architecture and settings.get("architecture") and saved_architecture != settings["architecture"]:
                raise CheckpointError(f"{error}. It was saved by {saved_architecture}; this run builds "
                                      f"{settings['architecture']}: resume with the checkpoint's model options, or "
                                      "start a new run in another --output_dir") from None
            raise
        global_step = int(state["global_step"])
        step_log.load(os.path.join(resumed_from, STEP_LOG_NAME))
        step_log.truncate(global_step)
        accelerator.print(f"Resumed from {resumed_from} at step {global_step}")
        for line in reconcile_resumed_settings(state, settings, groups_now, optimizer, scheduler):
            accelerator.print(line)
            logger.warning(line)
        checkpoints.start(resumed_from, state)
        accelerator.wait_for_everyone()  # run_lineage.json names this run before anyone reads it
        if on_resume is not None:
            on_resume(global_step)
    else:
        checkpoints.start()
        accelerator.wait_for_everyone()

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
    reported by `train_loop`) exits 1, a refused resume (`CheckpointError`: incomplete, corrupted, other labels) or
    output folder (`OutputDirError`: locked by a live run, or holding an earlier run) prints `error: ...` and exits 2,
    Ctrl-C exits as `interrupted_exit_code` says, and the result is `None` on every process but the main one (only
    that one prints the summary)."""
    try:
        result = run(*arguments)
    except NonFiniteLossError:
        return 1, None
    except (CheckpointError, OutputDirError) as error:  # refused before training: a user error, one line
        if PartialState().is_main_process:
            print(f"error: {error}", file=sys.stderr)
        return 2, None
    except KeyboardInterrupt as interrupt:
        return interrupted_exit_code(interrupt), None
    return 0, (result if PartialState().is_main_process else None)


__all__: list[str] = []  # nothing here is documented API; the package's own modules import what they need
