"""UNIP on the Hugging Face Hub: model and dataset cards, evaluation results, and pushing a folder.

Cards are rendered from the templates in `unip_hf/hub_cards/` with `huggingface_hub.ModelCard` /
`DatasetCard`; results go both to the card's `model-index` and to `.eval_results/*.yaml` files.

Example:
    ```python
    >>> from unip_hf.hub import BenchmarkResult, make_model_card, push_to_hub, write_eval_results
    >>> result = BenchmarkResult(dataset_id="unip-hf/sirst", metrics={"iou": 0.71, "niou": 0.69, "pd": 0.95, "fa": 12.3},
    ...                          dataset_name="SIRST", dataset_split="test", task="irstd")
    >>> write_eval_results("out/model", [result])  # .eval_results/unip-hf--sirst-test.yaml + eval_results.json
    >>> card = make_model_card("unip-tiny-sirst", repo_id="me/unip-tiny-sirst", results=[result])
    >>> push_to_hub("out/model", "me/unip-tiny-sirst", card=card)
    ```
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml
from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    EvalResult,
    EvalResultEntry,
    HfApi,
    ModelCard,
    ModelCardData,
    RepoCard,
    eval_result_entries_to_yaml,
)
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

logger = logging.getLogger(__name__)

UNIP_CITATION = """@inproceedings{zhang2025unip,
  title     = {{UNIP}: Rethinking Pre-trained Attention Patterns for Infrared Semantic Segmentation},
  author    = {Zhang, Tao and Wen, Jinyong and Chen, Zhen and Ding, Kun and Xiang, Shiming and Pan, Chunhong},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025},
  url       = {https://arxiv.org/abs/2502.02257}
}"""

UNIP_PAPER_URL = "https://arxiv.org/abs/2502.02257"
BASE_TAGS = ("infrared", "thermal", "unip")
EVAL_RESULTS_DIR = ".eval_results"
EVAL_RESULTS_JSON = "eval_results.json"

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


def template_path(name: str) -> Path:
    """Path of a card template shipped in the package.

    Args:
        name (`str`): `"model_card"` or `"dataset_card"` (with or without `.md`).

    Returns:
        `Path` to the template file (works from a source checkout and from an installed package).
    """
    file_name = name if name.endswith(".md") else f"{name}.md"
    path = Path(str(resources.files("unip_hf") / "hub_cards" / file_name))
    if not path.is_file():
        raise FileNotFoundError(f"no card template {file_name!r} in {path.parent}")
    return path


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


def _format_value(key: str, value: float) -> str:
    percent = METRIC_DISPLAY.get(key, (key, False))[1]
    return f"{100 * value:.2f}" if percent else f"{value:.2f}" if key == "fa" else f"{value:.4g}"


#: The note under a model card's results table (`make_model_card(..., results_note=...)` replaces it).
RESULTS_NOTE = ("Percentages are fractions x 100; Fa is false-alarm pixels per million pixels; mIoU averages all "
                "classes, background included.")


def _results_rows(results: Iterable[BenchmarkResult]) -> list[dict[str, str]]:
    rows = []
    for result in results:
        name = result.dataset_name or result.dataset_id
        if result.dataset_config:
            name = f"{name} ({result.dataset_config})"
        for key, value in result.headline.items():
            display, percent = METRIC_DISPLAY.get(key, (key, False))
            rows.append(
                {
                    "dataset": name,
                    "split": result.dataset_split or "",
                    "metric": f"{display} (%)" if percent else display,
                    "value": _format_value(key, value),
                }
            )
    return rows


def _render_card(card_class: type[RepoCard], card_data: Any, template: str | Path, overrides: Mapping[str, Any],
                 **variables: Any) -> RepoCard:
    """A model or dataset card from its Jinja template: `variables`, the citation, then a caller's `overrides` (the
    variables of a custom template, which win), with the markdown tidied."""
    variables = {"citation": UNIP_CITATION, **variables, **overrides}
    card = card_class.from_template(card_data, template_path=str(template), **variables)
    return card_class(_tidy(card.content))


def _tidy(markdown: str) -> str:
    """Collapse the runs of blank lines that optional template sections leave behind."""
    return re.sub(r"\n{3,}", "\n\n", markdown).rstrip() + "\n"


def _unique(items: Iterable[str]) -> list[str]:
    seen = []
    for item in items:
        if item and item not in seen:
            seen.append(item)
    return seen


def make_model_card(
    model_name: str,
    *,
    repo_id: str | None = None,
    results: Sequence[BenchmarkResult] = (),
    datasets: Sequence[str] = (),
    base_model: str | None = None,
    backbone: bool = False,
    pretraining: PretrainingSummary | None = None,
    training: Mapping[str, Any] | None = None,
    training_data: Sequence[str] = (),
    labels: Sequence[str] | None = None,
    decode_head: str = "ll_fpn",
    summary: str | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
    pipeline_tag: str | None = None,
    template: str | Path | None = None,
    space_id: str | None = None,
    **template_kwargs: Any,
) -> ModelCard:
    """Model card of a UNIP segmentation model or pre-trained backbone.

    The YAML header carries `library_name: transformers`, the `pipeline_tag`
    (`image-segmentation`, or `image-feature-extraction` for a backbone), the tags `infrared`,
    `thermal`, `unip` (plus `tags`), `datasets` (training data sets and evaluated data sets),
    `base_model`, `metrics`, and `model-index` built from `results`.

    Args:
        model_name (`str`): Title and `model-index` name.
        repo_id (`str`, *optional*): Hub repo id used in the loading snippets; defaults to `model_name`.
        results (`Sequence[BenchmarkResult]`, *optional*): Evaluations for the table and `model-index`.
        datasets (`Sequence[str]`, *optional*): Hub ids of the training data sets.
        base_model (`str`, *optional*): Checkpoint this model was fine-tuned or distilled from.
        backbone (`bool`, *optional*, defaults to `False`): A pre-trained backbone card (implied by `pretraining`).
        pretraining (`PretrainingSummary`, *optional*): Pre-training section (teacher, layer, data, steps, loss).
        training (`Mapping[str, Any]`, *optional*): Fine-tuning (or training) hyperparameters table.
        training_data (`Sequence[str]`, *optional*): Free-text lines for *Training data*; defaults to `datasets`.
        labels (`Sequence[str]`, *optional*): Class names in id order (segmentation models).
        decode_head (`str`, *optional*, defaults to `"ll_fpn"`): `"ll_fpn"`, `"multilevel_fpn"` or `"linear_probe"`.
        summary (`str`, *optional*): First paragraph; a default one is written.
        license (`str`, *optional*, defaults to `"apache-2.0"`): Licence id.
        tags (`Sequence[str]`, *optional*): Extra tags.
        pipeline_tag (`str`, *optional*): Override the pipeline tag.
        template (`str` or `Path`, *optional*): Another Jinja template; defaults to the shipped one.
        space_id (`str`, *optional*): A Space running the model (`unip space push`); the card links to it.
        **template_kwargs: Extra variables for a custom template.

    Returns:
        `huggingface_hub.ModelCard`; `card.save(folder / "README.md")` or pass it to `push_to_hub`.
    """
    backbone = backbone or pretraining is not None
    pipeline_tag = pipeline_tag or ("image-feature-extraction" if backbone else "image-segmentation")
    results = list(results)
    all_tags = _unique([*BASE_TAGS, "vision-transformer", "image-feature-extraction" if backbone else "semantic-segmentation", *tags])
    evaluated = [result.dataset_id for result in results]
    metric_keys = _unique(key for result in results for key in result.headline)
    eval_results = [entry for result in results for entry in result.eval_results()]
    card_data = ModelCardData(
        model_name=model_name if eval_results else None,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=license,
        tags=all_tags,
        datasets=_unique([*datasets, *evaluated]) or None,
        base_model=base_model,
        metrics=metric_keys or None,
        eval_results=eval_results or None,
    )
    heads = {
        "ll_fpn": "last-layer feature pyramid (LL-FPN) and a UPerNet head",
        "multilevel_fpn": "multi-level feature pyramid (blocks 4, 6, 8, 12) and a UPerNet head",
        "linear_probe": "frozen backbone and a linear (1x1 convolution) probe on blocks 4, 6, 8, 12",
    }
    if summary is None:
        summary = (
            f"A UNIP {'backbone' if backbone else 'segmentation model'} for infrared (thermal) images, from "
            f"[UNIP: Rethinking Pre-trained Attention Patterns for Infrared Semantic Segmentation]({UNIP_PAPER_URL}) "
            "(ICLR 2025), built with the `unip_hf` package."
        )
    if base_model:
        summary += f" It starts from [`{base_model}`](https://huggingface.co/{base_model})."
    return _render_card(
        ModelCard,
        card_data,
        template or template_path("model_card"),
        template_kwargs,
        model_name=model_name,
        repo_id=repo_id or model_name,
        summary=summary,
        is_backbone=backbone,
        decode_head_description=heads.get(decode_head, decode_head),
        labels=list(labels) if labels else None,
        training_data_rows=list(training_data) or list(datasets) or ([pretraining.data] if pretraining else []),
        pretraining_rows=pretraining.rows() if pretraining is not None else None,
        training_rows=[(str(key), str(value)) for key, value in training.items()] if training else None,
        results_rows=_results_rows(results),
        results_note=RESULTS_NOTE,
        space_id=space_id,
    )


def make_dataset_card(
    pretty_name: str = "InfMix",
    *,
    repo_id: str | None = None,
    sources: Sequence[Mapping[str, Any]] = (),
    summary: str | None = None,
    license: str = "other",
    task_categories: Sequence[str] = ("image-feature-extraction",),
    configs: Sequence[Mapping[str, Any]] | None = None,
    tags: Sequence[str] = (),
    template: str | Path | None = None,
    **template_kwargs: Any,
) -> DatasetCard:
    """Dataset card of an InfMix build (or another infrared image collection).

    Args:
        pretty_name (`str`, *optional*, defaults to `"InfMix"`): Title and `pretty_name`.
        repo_id (`str`, *optional*): Hub id used in the loading snippet; defaults to `pretty_name`.
        sources (`Sequence[Mapping]`, *optional*): One mapping per source with `name` (or `source`),
            `modality`, `images` (or `kept`, as in an InfMix build report) and optional `license`.
        summary (`str`, *optional*): First paragraph.
        license (`str`, *optional*, defaults to `"other"`): The mix inherits its sources' licences.
        task_categories (`Sequence[str]`, *optional*): Hub task categories.
        configs (`Sequence[Mapping]`, *optional*): YAML `configs:` (parquet files); defaults to one
            `default` config with `data/train-*` as its train split.
        tags (`Sequence[str]`, *optional*): Extra tags.
        template (`str` or `Path`, *optional*): Another Jinja template.
        **template_kwargs: Extra variables for a custom template.

    Returns:
        `huggingface_hub.DatasetCard`.
    """
    rows = []
    for source in sources:
        images = source.get("images", source.get("kept"))
        rows.append(
            {
                "name": source.get("name", source.get("source", "?")),
                "modality": source.get("modality", ""),
                "images": images if images is not None else "",
                "license": source.get("license", "see source"),
            }
        )
    total = sum(int(row["images"]) for row in rows if isinstance(row["images"], numbers.Integral))
    size_category = None
    if total:
        bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
        size_category = next((name for bound, name in bounds if total < bound), "1M<n<10M")
    if configs is None:
        configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    card_data = DatasetCardData(
        pretty_name=pretty_name,
        license=license,
        task_categories=list(task_categories),
        size_categories=size_category,
        tags=_unique([*BASE_TAGS, "pre-training", *tags]),
        configs=[dict(config) for config in configs],
    )
    if summary is None:
        summary = (
            f"{pretty_name}: unlabelled infrared (thermal) images for pre-training, as in "
            f"[UNIP]({UNIP_PAPER_URL}) (ICLR 2025), built with the `unip_hf` package."
        )
    return _render_card(
        DatasetCard, card_data, template or template_path("dataset_card"), template_kwargs,
        pretty_name=pretty_name, repo_id=repo_id or pretty_name, summary=summary, source_rows=rows, total_images=total,
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


__all__ = [
    "BenchmarkResult", "PretrainingSummary", "make_dataset_card", "make_model_card", "push_to_hub",
    "write_eval_results",
]
