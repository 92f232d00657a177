"""The output folder of a UNIP training run: the lock a run holds on it, the check for an earlier run's files, and
what `--overwrite_output_dir` deletes (everything the earlier run wrote, never what this run reads)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time

from unip_hf.training.checkpoints import (
    list_checkpoints,
)

from unip_hf.recipe_arguments import (
    TrainingLoopArguments,
)

logger = logging.getLogger(__name__)
_HELD_LOCKS: dict[str, str] = {}  # absolute lock path -> its text, for the locks this process holds


class OutputDirError(RuntimeError):
    """An `--output_dir` a run cannot use: locked by another live run, or holding an earlier run's checkpoints."""


LOCK_NAME = ".unip-run.lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def lock_output_dir(output_dir: str) -> str:
    """Take `output_dir/.unip-run.lock` (created exclusively; it holds the owner's pid, host, start time and command)
    for the run's lifetime. A lock held by a live process is an `OutputDirError` naming the lock file and the owner's
    pid; a lock left by a process that no longer runs (same host) is replaced, with a warning. A lock this process
    already holds (an earlier run in the same process that stopped with an exception) is taken over. Returns the lock
    path; `unlock_output_dir` (or the exit of the process) releases it."""
    import atexit
    import socket

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(output_dir, LOCK_NAME))
    host = socket.gethostname()
    text = json.dumps({"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "command": " ".join(sys.argv)})
    for _ in range(3):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as existing:
                    owner = json.load(existing)
                pid, owner_host = int(owner["pid"]), owner.get("host")
            except (OSError, ValueError, KeyError, TypeError):
                try:
                    age = time.time() - os.path.getmtime(path)
                except OSError:
                    continue  # removed meanwhile: try again
                if age < 10:  # being written by a run that is starting now
                    raise OutputDirError(
                        f"--output_dir {output_dir} is in use by another run that is starting (lock file {path}); "
                        "wait for it to finish or choose another --output_dir") from None
                pid, owner_host = None, host
            if pid == os.getpid() and owner_host == host:
                with open(path, "w", encoding="utf-8") as mine:
                    mine.write(text)
                break
            if pid is not None and (owner_host != host or _process_alive(pid)):
                where = f"pid {pid}" + (f" on {owner_host}" if owner_host != host else "")
                raise OutputDirError(
                    f"--output_dir {output_dir} is in use by another run ({where}, started "
                    f"{owner.get('started', '?')}; lock file {path}). Wait for it to finish or choose another --output_dir; if no such run is alive "
                    f"(e.g. on another machine sharing the folder), delete {path}")
            stale = f"{path}.stale-{os.getpid()}"
            try:
                os.replace(path, stale)  # only one of several starting runs gets the stale lock
                os.remove(stale)
            except OSError:
                continue
            logger.warning("--output_dir %s: removed the stale lock %s of %s, which no longer runs", output_dir, path,
                           f"pid {pid}" if pid is not None else "a run that never wrote its pid")
            continue
        else:
            with os.fdopen(handle, "w", encoding="utf-8") as mine:
                mine.write(text)
            break
    else:
        raise OutputDirError(f"--output_dir {output_dir}: could not take the lock file {path}; another run is starting "
                             "there: choose another --output_dir")
    if not _HELD_LOCKS:
        atexit.register(_release_all_locks)
    _HELD_LOCKS[path] = text
    return path


def unlock_output_dir(output_dir: str | None) -> None:
    """Release the lock `lock_output_dir` took (only if this process still owns it)."""
    if not output_dir:
        return
    path = os.path.abspath(os.path.join(output_dir, LOCK_NAME))
    text = _HELD_LOCKS.pop(path, None)
    if text is None:
        return
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() != text:
                return
        os.remove(path)
    except OSError:
        pass


def _release_all_locks() -> None:
    for path in list(_HELD_LOCKS):
        unlock_output_dir(os.path.dirname(path))


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
            "--overwrite_output_dir (everything the earlier run wrote is deleted); or choose another --output_dir")


#: What a run writes into `--output_dir` (names, or `fnmatch` patterns): checkpoints and their leftovers, the step
#: log, the run lineage, the evaluation log, `best_model/`, the saved model with its processor, remote code, card and
#: evaluation results, plots, summaries and the trackers' folders (accelerate names them after the project); with
#: the remote-code files of `configuration_unip.REMOTE_CODE_FILES`.
#: `--overwrite_output_dir` deletes these; a recipe that writes a new kind of file into `--output_dir` adds it here.
RUN_OUTPUTS = (
    "checkpoint-*", ".tmp-checkpoint-*", ".old-checkpoint-*", ".trash-checkpoint-*",
    "trainer_state.json", "trainer_state.json.tmp", "run_lineage.json", "run_lineage.json.tmp",
    "eval_log.json", "eval_log.json.tmp", "best_model", "eval_results.json", ".eval_results", "README.md",
    "config.json", "model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
    "preprocessor_config.json", "processor_config.json", "generation_config.json",
    "configuration_*.py", "modeling_*.py", "image_processing_*.py", "__pycache__",
    "training_curves.png", "tmt_maps.png", "pd_fa_curve.png", "pretraining_summary.json",
    "unip-finetune", "unip-pretrain", "unip-pretrain-mae", "runs", "logs",
)


def run_output_holding(output_dir: str, path: str | None) -> str | None:
    """The entry of `output_dir` that `clear_output_dir` would delete and that is or holds `path` (None when the
    overwrite leaves `path` alone; `path` equal to `output_dir` itself counts when it holds run outputs, e.g. a model
    saved there)."""
    import fnmatch

    from unip_hf.models.configuration_unip import REMOTE_CODE_FILES

    if not path or not os.path.exists(path) or not os.path.isdir(output_dir):
        return None
    root, target = os.path.realpath(output_dir), os.path.realpath(path)
    outputs = (*RUN_OUTPUTS, *REMOTE_CODE_FILES)
    if target == root:
        held = [name for name in sorted(os.listdir(root))
                if any(fnmatch.fnmatchcase(name, pattern) for pattern in outputs)]
        return f"the folder itself, holding {', '.join(held[:4])}" if held else None
    if not target.startswith(root + os.sep):
        return None
    first = os.path.relpath(target, root).split(os.sep)[0]
    return first if any(fnmatch.fnmatchcase(first, pattern) for pattern in outputs) else None


def clear_output_dir(output_dir: str) -> list[str]:
    """What `--overwrite_output_dir` deletes before a new run: everything an earlier run wrote (`RUN_OUTPUTS`: the
    `checkpoint-N` folders complete or not and their leftovers, the step log and lineage, `eval_log.json`,
    `best_model/`, the saved model, card, `.eval_results/`, plots, tracker logs), so that nothing of it is carried
    into the new run or its resumes. Files it did not write are kept and named. Returns the deleted paths."""
    import fnmatch

    if not os.path.isdir(output_dir):
        return []
    from unip_hf.models.configuration_unip import REMOTE_CODE_FILES  # the code files a saved model carries

    outputs = (*RUN_OUTPUTS, *REMOTE_CODE_FILES)
    removed, kept = [], []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name == LOCK_NAME:
            continue
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in outputs):
            kept.append(name)
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(name)
    if removed:
        logger.warning("--overwrite_output_dir: deleted what the earlier run wrote in %s: %s%s", output_dir,
                       ", ".join(removed), f" (kept, not written by a run: {', '.join(kept)})" if kept else "")
    return [os.path.join(output_dir, name) for name in removed]
