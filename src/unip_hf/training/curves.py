"""Training curves of a UNIP run (Zhang et al., ICLR 2025): `training_curves.png` in the run's output folder, drawn
from the logs the training loop already writes: `trainer_state.json` (loss and learning rate per logged step,
`training_step_log.StepLog`) and, for fine-tuning, `eval_log.json` (every evaluation's metrics, the main one drawn).

The pre-training and fine-tuning recipes call `write_training_curves(output_dir)` at the end of a run, and
`unip plot RUN_DIR` redraws the figure. matplotlib is the optional `plots` extra: without it the recipes say so once
and skip the figure.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

CURVES_NAME = "training_curves.png"
STEP_LOG_NAME = "trainer_state.json"  # training.STEP_LOG_NAME (that module imports torch)
EVAL_LOG_NAME = "eval_log.json"  # finetuning.EVAL_LOG_NAME
PLOTS_HINT = 'pip install "unip-hf[plots]"'
_warned_missing = False


class PlotsUnavailable(ImportError):
    """matplotlib (the `plots` extra) is not installed."""


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is unreadable ({err})") from err
    return data if isinstance(data, dict) else None


def read_run_logs(run_dir: str) -> dict[str, Any]:
    """The curves of a run folder: `steps`, `loss`, `lr_steps`, `learning_rate` (from `trainer_state.json`), and
    `eval_steps`, `eval_values`, `eval_metric` (the main metric of `eval_log.json`; empty without one).

    Raises:
        FileNotFoundError: `run_dir` has no `trainer_state.json` (it is not a run's output folder).
    """
    state = _read_json(os.path.join(run_dir, STEP_LOG_NAME))
    if state is None:
        raise FileNotFoundError(f"{run_dir} has no {STEP_LOG_NAME}: give the --output_dir of a pre-training or "
                                "fine-tuning run")
    history = [entry for entry in state.get("log_history", []) if isinstance(entry, dict) and "step" in entry]
    curves: dict[str, Any] = {
        "steps": [e["step"] for e in history if "loss" in e], "loss": [e["loss"] for e in history if "loss" in e],
        "lr_steps": [e["step"] for e in history if "learning_rate" in e],
        "learning_rate": [e["learning_rate"] for e in history if "learning_rate" in e],
        "eval_steps": [], "eval_values": [], "eval_metric": None,
    }
    evaluations = _read_json(os.path.join(run_dir, EVAL_LOG_NAME))
    if evaluations:
        metric = evaluations.get("main_metric")
        points = [(e["step"], e["metrics"][metric]) for e in evaluations.get("history", [])
                  if isinstance(e, dict) and metric in e.get("metrics", {})]
        curves.update(eval_metric=metric, eval_steps=[s for s, _ in points], eval_values=[v for _, v in points])
    return curves


def plot_training_curves(run_dir: str, out: str | None = None) -> str:
    """Draw `training_curves.png` (default: in `run_dir`): loss per step, learning rate per step and, when the run
    evaluated, its main metric per evaluation. Returns the path written.

    Raises:
        PlotsUnavailable: matplotlib is not installed (the message gives the install command).
        FileNotFoundError: `run_dir` holds no step log.
    """
    curves = read_run_logs(run_dir)
    try:
        import matplotlib  # optional extra: imported only to draw

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise PlotsUnavailable(f"training curves need matplotlib: {PLOTS_HINT}") from err
    panels = 3 if curves["eval_steps"] else 2
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), constrained_layout=True)
    axes[0].plot(curves["steps"], curves["loss"], color="tab:blue", linewidth=1.2)
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    axes[1].plot(curves["lr_steps"], curves["learning_rate"], color="tab:orange", linewidth=1.2)
    axes[1].set(title="learning rate (peak: groups without layer decay)", xlabel="step", ylabel="lr")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if panels == 3:
        axes[2].plot(curves["eval_steps"], curves["eval_values"], marker="o", color="tab:green", linewidth=1.2)
        axes[2].set(title=f"evaluation: {curves['eval_metric']}", xlabel="step", ylabel=curves["eval_metric"])
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.suptitle(os.path.basename(os.path.abspath(run_dir)))
    path = out or os.path.join(run_dir, CURVES_NAME)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_training_curves(run_dir: str) -> str | None:
    """What the recipes call at the end of a run: `plot_training_curves(run_dir)`, or `None` without a step log (a
    run of no steps) or, with one warning per process that gives the install command, without matplotlib."""
    global _warned_missing
    if not os.path.isfile(os.path.join(run_dir, STEP_LOG_NAME)):
        return None
    try:
        path = plot_training_curves(run_dir)
    except PlotsUnavailable as err:
        if not _warned_missing:
            logger.warning("%s; %s not written (`unip plot %s` draws it later)", err, CURVES_NAME, run_dir)
            _warned_missing = True
        return None
    print(f"training curves written to {path}")
    return path


__all__ = ["plot_training_curves"]
