"""Evaluation and pre-training records of UNIP models for the Hub: `BenchmarkResult` (one score of a model on a data
set split), the Hub's `.eval_results/*.yaml` files and `eval_results.json`, and the pre-training summary."""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from huggingface_hub import (
    EvalResult,
    EvalResultEntry,
    eval_result_entries_to_yaml,
)

EVAL_RESULTS_DIR = ".eval_results"


EVAL_RESULTS_JSON = "eval_results.json"


# Headline metrics, in display order: key -> (display name, shown as percent in the card table).
METRIC_DISPLAY = {
    "mean_iou": ("mIoU", True),
    "mean_accuracy": ("mAcc", True),
    "overall_accuracy": ("aAcc", True),
    "iou": ("IoU", True),
    "niou": ("nIoU", True),
    "pd": ("Pd", True),
    "fa": ("Fa (x 1e-6)", False),
}


# Task of each kind of result: (model-index task type, task name).
TASKS = {
    "semantic-segmentation": ("image-segmentation", "Semantic Segmentation"),
    "irstd": ("image-segmentation", "Infrared Small Target Detection"),
    "linear-probe": ("image-segmentation", "Semantic Segmentation (linear probe)"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar metrics worth publishing, headline ones first.

    Known headline keys (`mean_iou`, `mean_accuracy`, `overall_accuracy`, `iou`, `niou`, `pd`, `fa`)
    come first in that order, then any other finite scalar; per-class arrays and counts
    (`num_*`, `total_*`, `*_pixels`) are left out.

    Args:
        metrics (`Mapping[str, Any]`): A metric's `compute()` output (numpy values accepted).

    Returns:
        `dict[str, float]`.
    """
    selected = {}
    ordered = [key for key in METRIC_DISPLAY if key in metrics] + [key for key in metrics if key not in METRIC_DISPLAY]
    for key in ordered:
        value = metrics[key]
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()
        if not _is_number(value) or math.isnan(float(value)) or math.isinf(float(value)):
            continue
        if key.startswith(("num_", "total_")) or key.endswith("_pixels"):
            continue
        selected[key] = float(value)
    return selected


def _to_builtin(value: Any) -> Any:
    """Plain JSON-able Python values: arrays to lists, numpy scalars to Python, NaN to None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(key): _to_builtin(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--")).strip("-") or "results"


@dataclass
class BenchmarkResult:
    """Metrics of one model on one data set split, ready for `eval_results.json`, cards and the Hub.

    Args:
        dataset_id (`str`): Hub data set id (e.g. `"unip-hf/sirst"`), or a local name.
        metrics (`dict[str, Any]`): A metric's `compute()` output; arrays are kept in
            `eval_results.json`, only `headline_metrics` go to the card and the Hub files.
        dataset_name (`str`, *optional*): Pretty name; defaults to `dataset_id`.
        dataset_config (`str`, *optional*): Data set configuration.
        dataset_split (`str`, *optional*, defaults to `"test"`): Split evaluated.
        dataset_revision (`str`, *optional*): Git revision of the data set on the Hub.
        task (`str`, *optional*, defaults to `"semantic-segmentation"`): `"semantic-segmentation"`,
            `"irstd"` or `"linear-probe"`.
        notes (`str`, *optional*): Protocol details (e.g. `"slide 512/341, single scale"`).
        date (`str`, *optional*): ISO-8601 date of the evaluation.
        source_url (`str`, *optional*): Where the evaluation comes from (log, Space, paper).
        source_name (`str`, *optional*): Display name of the source (needs `source_url`).
    """

    dataset_id: str
    metrics: dict[str, Any]
    dataset_name: str | None = None
    dataset_config: str | None = None
    dataset_split: str | None = "test"
    dataset_revision: str | None = None
    task: str = "semantic-segmentation"
    notes: str | None = None
    date: str | None = None
    source_url: str | None = None
    source_name: str | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        if self.source_name is not None and self.source_url is None:
            raise ValueError("source_name needs source_url")

    @property
    def headline(self) -> dict[str, float]:
        """The published scalar metrics (see `headline_metrics`)."""
        return headline_metrics(self.metrics)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the format of one entry of `eval_results.json`)."""
        data = asdict(self)
        data["metrics"] = _to_builtin(self.metrics)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BenchmarkResult":
        """Inverse of `to_dict`."""
        return cls(**dict(data))

    def eval_results(self) -> list[EvalResult]:
        """The `model-index` entries (one `huggingface_hub.EvalResult` per headline metric)."""
        task_type, task_name = TASKS[self.task]
        return [
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=self.dataset_id,
                dataset_name=self.dataset_name or self.dataset_id,
                dataset_config=self.dataset_config,
                dataset_split=self.dataset_split,
                dataset_revision=self.dataset_revision,
                metric_type=key,
                metric_name=METRIC_DISPLAY.get(key, (key, False))[0],
                metric_value=value,
                source_url=self.source_url,
                source_name=self.source_name,
            )
            for key, value in self.headline.items()
        ]

    def eval_result_entries(self) -> list[EvalResultEntry]:
        """The `.eval_results/*.yaml` entries: one per headline metric, `task_id` = the metric key.

        The Hub's eval-results format names a benchmark task, not a metric; our benchmarks expose
        one task per metric (`mean_iou`, `iou`, `niou`, `pd`, `fa`), and the notes say which split.
        """
        split = f"split={self.dataset_split}" if self.dataset_split else None
        config = f"config={self.dataset_config}" if self.dataset_config else None
        entries = []
        for key, value in self.headline.items():
            notes = "; ".join(part for part in (METRIC_DISPLAY.get(key, (key, False))[0], config, split, self.notes) if part)
            entries.append(
                EvalResultEntry(
                    dataset_id=self.dataset_id,
                    task_id=key,
                    value=value,
                    dataset_revision=self.dataset_revision,
                    date=self.date,
                    source_url=self.source_url,
                    source_name=self.source_name,
                    notes=notes,
                )
            )
        return entries

    def file_stem(self) -> str:
        """Name (without `.yaml`) of this result's file under `.eval_results/`."""
        parts = [self.dataset_id, self.dataset_config, self.dataset_split]
        return _slug("-".join(part for part in parts if part))


def write_eval_results(
    output_dir: str | Path,
    results: Sequence[BenchmarkResult] | BenchmarkResult,
    json_name: str | None = EVAL_RESULTS_JSON,
) -> list[Path]:
    """Write `.eval_results/<dataset>[-<config>][-<split>].yaml` (Hub format) and `eval_results.json`.

    Each YAML file is a list of `huggingface_hub.EvalResultEntry` records (the format
    `huggingface_hub.eval_result_entries_to_yaml` produces); `eval_results.json` keeps every result
    in full (per-class arrays included) as `{"results": [BenchmarkResult.to_dict(), ...]}` and is
    read back by `read_eval_results`.

    Args:
        output_dir (`str` or `Path`): Model folder (created if missing).
        results (`BenchmarkResult` or a sequence of them): The evaluations to record.
        json_name (`str`, *optional*, defaults to `"eval_results.json"`): JSON file name, or None for none.

    Returns:
        `list[Path]`: the files written, YAML files first.
    """
    if isinstance(results, BenchmarkResult):
        results = [results]
    output_dir = Path(output_dir)
    (output_dir / EVAL_RESULTS_DIR).mkdir(parents=True, exist_ok=True)
    grouped: dict[str, list[EvalResultEntry]] = {}
    for result in results:
        grouped.setdefault(result.file_stem(), []).extend(result.eval_result_entries())
    written = []
    for stem, entries in grouped.items():
        path = output_dir / EVAL_RESULTS_DIR / f"{stem}.yaml"
        path.write_text(yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False), encoding="utf-8")
        written.append(path)
    if json_name:
        path = output_dir / json_name
        payload = {"results": [result.to_dict() for result in results]}
        path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


def read_eval_results(output_dir: str | Path, json_name: str = EVAL_RESULTS_JSON) -> list[BenchmarkResult]:
    """Read the results that `write_eval_results` stored in `eval_results.json` (empty list when absent).

    Args:
        output_dir (`str` or `Path`): Model folder.
        json_name (`str`, *optional*, defaults to `"eval_results.json"`): JSON file name.

    Returns:
        `list[BenchmarkResult]`.
    """
    path = Path(output_dir) / json_name
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [BenchmarkResult.from_dict(item) for item in data.get("results", [])]


@dataclass
class PretrainingSummary:
    """What a pre-trained (NMI-HAD) backbone card reports about its pre-training.

    Args:
        teacher (`str`): Teacher checkpoint (Hub id or name).
        teacher_layer (`int`): Distilled teacher layer (1-based, as in the paper: 18 of 24 for MAE-L).
        data (`str`): Pre-training data (e.g. `"InfMix (grayscale RGB included)"` or a Hub id).
        steps (`int`): Optimisation steps.
        final_loss (`float`, *optional*): Distillation loss at the end.
        student (`str`, *optional*): Student preset (e.g. `"unip-small"`).
        epochs (`float`, *optional*): Epochs over the data.
        batch_size (`int`, *optional*): Global batch size.
        image_size (`int`, *optional*, defaults to 224): Training crop size.
        extra (`dict[str, Any]`): Any other setting to list (learning rate, schedule, hardware, ...).
    """

    teacher: str
    teacher_layer: int
    data: str
    steps: int
    final_loss: float | None = None
    student: str | None = None
    epochs: float | None = None
    batch_size: int | None = None
    image_size: int | None = 224
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str]]:
        """`(setting, value)` rows for the card table (unset values are skipped)."""
        rows = [
            ("method", "NMI-HAD: teacher layer attention distilled into the student's last layer (KL, per head)"),
            ("teacher", self.teacher),
            ("teacher layer", str(self.teacher_layer)),
            ("student", self.student),
            ("data", self.data),
            ("image size", self.image_size),
            ("steps", self.steps),
            ("epochs", self.epochs),
            ("batch size", self.batch_size),
            ("final loss", f"{self.final_loss:.4f}" if self.final_loss is not None else None),
        ]
        rows += [(str(key), value) for key, value in self.extra.items()]
        return [(key, str(value)) for key, value in rows if value is not None]


__all__ = ["BenchmarkResult", "PretrainingSummary", "write_eval_results"]
