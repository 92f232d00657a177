"""The step log of UNIP training (trainer_state.json, one entry per logged step) and the trackers it reports to."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from unip_hf.training.state_files import write_json_atomic

from unip_hf.recipe_arguments import (
    TRACKER_PACKAGES,
)

logger = logging.getLogger(__name__)


STEP_LOG_NAME = "trainer_state.json"


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
