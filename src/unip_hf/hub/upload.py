"""Pushing a UNIP folder to the Hugging Face Hub: which files go (and which never do), the remote code a folder must
carry, and the upload itself."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from huggingface_hub import (
    DatasetCard,
    HfApi,
    ModelCard,
)
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from unip_hf.hub.results import BenchmarkResult, write_eval_results

logger = logging.getLogger(__name__)


# Local training leftovers that never belong in a Hub repo (matched like `upload_folder` patterns:
# `*` also crosses `/`). Pass `ignore_patterns=[]` to `push_to_hub` to upload everything.
DEFAULT_PUSH_IGNORE_PATTERNS = (
    "checkpoint-*",
    ".tmp-checkpoint-*",
    ".old-checkpoint-*",
    ".trash-checkpoint-*",
    ".unip-run.lock",
    "run_lineage.json",
    "checkpoints/*",
    "step_*",
    "epoch_*",
    "runs/*",
    "logs/*",
    "wandb/*",
    "*__pycache__*",
    "*.pyc",
    "optimizer.bin",
    "optimizer.pt",
    "scheduler.bin",
    "scheduler.pt",
    "random_states_*",
    "training_args.bin",
)


def list_upload_files(
    folder: str | Path,
    allow_patterns: Sequence[str] | str | None = None,
    ignore_patterns: Sequence[str] | str | None = DEFAULT_PUSH_IGNORE_PATTERNS,
) -> list[str]:
    """The repo paths `HfApi.upload_folder` would commit for these patterns (same filtering rules).

    Args:
        folder (`str` or `Path`): Local folder.
        allow_patterns (`Sequence[str]`, *optional*): Only files matching one of these.
        ignore_patterns (`Sequence[str]`, *optional*): Files to skip; defaults to
            `DEFAULT_PUSH_IGNORE_PATTERNS` (huggingface_hub's own `.git`/`.cache` rules always apply).

    Returns:
        `list[str]`: sorted POSIX paths relative to `folder`.
    """
    folder = Path(folder)
    ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
    files = sorted(path.relative_to(folder).as_posix() for path in folder.glob("**/*") if path.is_file())
    return list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore + list(DEFAULT_IGNORE_PATTERNS)))


def _auto_map_references(value: Any) -> Iterable[str]:
    """Every `module.Class` string in an `auto_map` value: a string, a list (tokenizers) or a dict
    (transformers 5 image processors map a backend, e.g. `{"pil": "image_processing_unip.UnipImageProcessor"}`)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _auto_map_references(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _auto_map_references(item)


def missing_remote_code(folder: str | Path) -> list[str]:
    """Python files that `auto_map` entries of the folder's `config.json` / `preprocessor_config.json` name but that are absent.

    Args:
        folder (`str` or `Path`): A saved checkpoint folder.

    Returns:
        `list[str]`: missing file names (empty when the remote code is complete or no `auto_map` exists).
    """
    folder = Path(folder)
    missing = []
    for config_name in ("config.json", "preprocessor_config.json"):
        path = folder / config_name
        if not path.is_file():
            continue
        auto_map = json.loads(path.read_text(encoding="utf-8")).get("auto_map") or {}
        for item in _auto_map_references(auto_map):
            if "--" in item:  # code that lives in another repo
                continue
            file_name = item.rsplit(".", 1)[0].replace(".", "/") + ".py"
            if not (folder / file_name).is_file() and file_name not in missing:
                missing.append(file_name)
    return missing


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    card: ModelCard | DatasetCard | None = None,
    results: Sequence[BenchmarkResult] | None = None,
    repo_type: str = "model",
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    allow_patterns: Sequence[str] | str | None = None,
    ignore_patterns: Sequence[str] | str | None = DEFAULT_PUSH_IGNORE_PATTERNS,
    check_remote_code: bool = True,
    api: HfApi | None = None,
    space_sdk: str = "gradio",
):
    """Push a saved model (weights, config, processor, remote code), data set or Space folder to the Hub.

    Writes `card` to `README.md` and `results` to `.eval_results/` + `eval_results.json` in `folder`
    first, checks that the remote code files named by `auto_map` are present, then runs
    `HfApi.create_repo(exist_ok=True)` and one `HfApi.upload_folder` commit.

    Args:
        folder (`str` or `Path`): The folder to upload (e.g. a `save_pretrained` output).
        repo_id (`str`): Target repo, `"user/name"`.
        card (`ModelCard` or `DatasetCard`, *optional*): Card to save as `README.md`.
        results (`Sequence[BenchmarkResult]`, *optional*): Results to write with `write_eval_results`.
        repo_type (`str`, *optional*, defaults to `"model"`): `"model"`, `"dataset"` or `"space"`.
        private (`bool`, *optional*): Create the repo as private.
        token (`str`, *optional*): Hub token; defaults to the logged-in one.
        commit_message (`str`, *optional*): Commit message.
        revision (`str`, *optional*): Branch to push to.
        create_pr (`bool`, *optional*, defaults to `False`): Open a pull request instead of pushing.
        allow_patterns (`Sequence[str]`, *optional*): Only upload matching files.
        ignore_patterns (`Sequence[str]`, *optional*): Skip matching files; defaults to
            `DEFAULT_PUSH_IGNORE_PATTERNS` (checkpoints, optimizer states, logs).
        check_remote_code (`bool`, *optional*, defaults to `True`): Fail when `auto_map` names a missing file.
        api (`HfApi`, *optional*): Client to use; defaults to `HfApi(token=token)`.
        space_sdk (`str`, *optional*, defaults to `"gradio"`): The SDK of a new Space (`repo_type="space"` only).

    Returns:
        The `CommitInfo` returned by `upload_folder`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"nothing to push: {folder} is not a folder")
    if card is not None:
        card.save(folder / "README.md")
    if results:
        write_eval_results(folder, results)
    if check_remote_code and repo_type == "model":
        missing = missing_remote_code(folder)
        if missing:
            raise FileNotFoundError(
                f"{folder} names remote code in auto_map that is not there: {missing}; save the model with "
                "save_pretrained (which copies the UNIP files) before pushing"
            )
    files = list_upload_files(folder, allow_patterns, ignore_patterns)
    if not files:
        raise ValueError(f"no file of {folder} matches the upload patterns")
    if "README.md" not in files:
        logger.warning("%s has no README.md: the repo will have no card", folder)
    logger.info("pushing %d files to %s: %s", len(files), repo_id, ", ".join(files))
    api = api or HfApi(token=token)
    space = {"space_sdk": space_sdk} if repo_type == "space" else {}
    api.create_repo(repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=True, token=token, **space)
    ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type=repo_type,
        commit_message=commit_message or f"Upload {repo_type} with unip_hf",
        revision=revision,
        create_pr=create_pr,
        allow_patterns=list(allow_patterns) if isinstance(allow_patterns, (list, tuple)) else allow_patterns,
        ignore_patterns=ignore,
        token=token,
    )


__all__ = ["push_to_hub"]
