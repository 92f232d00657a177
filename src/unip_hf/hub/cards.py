"""UNIP on the Hugging Face Hub: model and dataset cards, evaluation results, and pushing a folder.

Cards are rendered from the templates in `unip_hf/hub/card_templates/` with `huggingface_hub.ModelCard` /
`DatasetCard`; results go both to the card's `model-index` and to `.eval_results/*.yaml` files.

Example:
    ```python
    >>> from unip_hf.hub.cards import BenchmarkResult, make_model_card, push_to_hub, write_eval_results
    >>> result = BenchmarkResult(dataset_id="unip-hf/sirst", metrics={"iou": 0.71, "niou": 0.69, "pd": 0.95, "fa": 12.3},
    ...                          dataset_name="SIRST", dataset_split="test", task="irstd")
    >>> write_eval_results("out/model", [result])  # .eval_results/unip-hf--sirst-test.yaml + eval_results.json
    >>> card = make_model_card("unip-tiny-sirst", repo_id="me/unip-tiny-sirst", results=[result])
    >>> push_to_hub("out/model", "me/unip-tiny-sirst", card=card)
    ```
"""

from __future__ import annotations

import logging
import numbers
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    ModelCard,
    ModelCardData,
    RepoCard,
)

from unip_hf.hub.results import METRIC_DISPLAY, BenchmarkResult, PretrainingSummary

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


def template_path(name: str) -> Path:
    """Path of a card template shipped in the package.

    Args:
        name (`str`): `"model_card"` or `"dataset_card"` (with or without `.md`).

    Returns:
        `Path` to the template file (works from a source checkout and from an installed package).
    """
    file_name = name if name.endswith(".md") else f"{name}.md"
    path = Path(str(resources.files("unip_hf") / "hub" / "card_templates" / file_name))
    if not path.is_file():
        raise FileNotFoundError(f"no card template {file_name!r} in {path.parent}")
    return path


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


__all__ = ["make_dataset_card", "make_model_card"]
