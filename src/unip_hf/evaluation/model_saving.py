"""What a fine-tuned or evaluated UNIP segmentation model (Zhang et al., ICLR 2025) is saved and pushed with: its
`UnipImageProcessor` (`make_processor`: the evaluation protocol), the evaluation as a `hub.BenchmarkResult`
(`benchmark_result`), `eval_results.json`, the model card (`card_for`), `save_segmentation_model` and
`push_saved_model`; and the way back: `load_segmentation_model`, which refuses a folder without its task head (a
backbone saved as `UnipViTModel` would otherwise get a random head and random predictions).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from transformers import AutoModelForSemanticSegmentation

from unip_hf.data.finetuning_data import _protocol_processor
from unip_hf.evaluation.metrics.irstd.pd_fa_curve import save_pd_fa_plot
from unip_hf.hub.cards import RESULTS_NOTE, make_model_card
from unip_hf.hub.upload import DEFAULT_PUSH_IGNORE_PATTERNS, push_to_hub
from unip_hf.hub.results import BenchmarkResult, write_eval_results
from unip_hf.models.vit_family import quiet_transformers_io


BEST_MODEL_DIR = "best_model"


logger = logging.getLogger(__name__)


class MissingTaskHeadError(ValueError):
    """A model folder (or Hub id) that holds no trained segmentation head: predicting or evaluating with it would run
    randomly initialised layers."""


def task_head_problem(model_name_or_path: str) -> str | None:
    """Why a saved model cannot segment, read from its `config.json` alone (no weights loaded), or `None`.

    A local folder whose `architectures` names no segmentation class (e.g. `UnipViTModel`, the backbone that
    `unip convert` and pre-training write) has no decode head. Hub ids and folders without `architectures` are
    checked when the weights load (`load_segmentation_model`)."""
    path = os.path.join(model_name_or_path, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            architectures = json.load(handle).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return None  # an unreadable config is reported by from_pretrained, with its own message
    if not architectures or any(str(name).endswith("Segmentation") for name in architectures):
        return None
    return (f"{model_name_or_path} holds a backbone ({', '.join(map(str, architectures))}) without a segmentation "
            "head: its neck and decode head (LL-FPN + UPerNet) would be randomly initialised and its predictions "
            f"meaningless. Fine-tune it first (unip finetune --model_name_or_path {model_name_or_path} ...) and give "
            "the folder that run writes")


def load_segmentation_model(model_name_or_path: str, trust_remote_code: bool = False, **kwargs):
    """`AutoModelForSemanticSegmentation.from_pretrained`, refusing a checkpoint without its task head.

    Raises:
        MissingTaskHeadError: the config names a backbone class (`task_head_problem`, before any weight loads), or
            weights of the segmentation model are missing from the checkpoint (they would be random); the message
            names the model and the missing parts.
    """
    problem = task_head_problem(model_name_or_path)
    if problem:
        raise MissingTaskHeadError(problem)
    model, info = AutoModelForSemanticSegmentation.from_pretrained(
        model_name_or_path, trust_remote_code=trust_remote_code, output_loading_info=True, **kwargs)
    missing = [key for key in info.get("missing_keys", ()) if not key.endswith("num_batches_tracked")]
    if missing:
        parts = sorted({key.split(".")[0] for key in missing})
        raise MissingTaskHeadError(
            f"{model_name_or_path} lacks {len(missing)} weight tensor(s) of its segmentation model "
            f"({', '.join(parts)}; e.g. {missing[0]}): they would be randomly initialised and the predictions meaningless. Give a folder "
            "written by unip finetune (or a backbone to fine-tune with unip finetune --model_name_or_path)")
    return model


def make_processor(config, img_scale: tuple[int, int] | None = None):
    """The `UnipImageProcessor` saved with a segmentation model: the evaluation protocol of its reported metrics.

    Each image is rescaled keeping its aspect ratio to fit `img_scale` (as `EvalSegmentationDataset` does; `None`:
    kept at its size), normalised, and padded to a multiple of the patch size as `predict_logits` pads; the
    processor's `post_process_semantic_segmentation` crops the padding and resizes the logits to the image size as
    `evaluate_model` does. So `pipeline("image-segmentation")` predicts, image for image, what a whole-image
    evaluation measured (sliding-window metrics, marked "slide" in the card, have no pipeline counterpart).

    Args:
        config (`UnipConfig`): the model's configuration (channels, patch size).
        img_scale (`tuple[int, int]`, *optional*): `(long, short)` side targets of the evaluation.
    """
    return _protocol_processor(img_scale, int(config.num_channels), int(config.patch_size))


def benchmark_result(dataset: str, split: str, task: str, metrics: dict[str, Any], mode: str, eval_mode: str,
                     crop_size: int, stride: int | None, hub_dataset_id: str | None = None):
    """A `unip_hf.hub.results.BenchmarkResult` for one evaluation (the notes record the protocol)."""
    if eval_mode == "slide":
        protocol = f"slide {crop_size}/{stride or max(1, crop_size * 2 // 3)}, single scale"
    else:
        protocol = "whole image, single scale"
    kind = "irstd" if task == "irstd" else ("linear-probe" if mode == "linear_probe" else "semantic-segmentation")
    return BenchmarkResult(dataset_id=hub_dataset_id or dataset, dataset_name=dataset, dataset_split=split,
                           task=kind, metrics=dict(metrics), notes=protocol)


def save_segmentation_model(model, output_dir: str, results: Sequence[Any] = (), training: dict[str, Any] | None = None,
                            base_model: str | None = None, hub_model_id: str | None = None,
                            datasets: Sequence[str] = (), img_scale: tuple[int, int] | None = None) -> None:
    """`save_pretrained` of the model and its processor (remote code included; the evaluation protocol of
    `img_scale`, see `make_processor`), `eval_results.json` and `.eval_results/*.yaml`, and the model card
    `README.md`."""
    os.makedirs(output_dir, exist_ok=True)
    with quiet_transformers_io():  # no "Writing model shards" bar under the training bar
        model.save_pretrained(output_dir)
    make_processor(model.config, img_scale).save_pretrained(output_dir)
    if results:
        write_eval_results(output_dir, list(results))
        write_pd_fa_plot(output_dir, results)
    card_for(model, output_dir, results, training, base_model, hub_model_id, datasets).save(
        os.path.join(output_dir, "README.md"))


PD_FA_PLOT_NAME = "pd_fa_curve.png"


def write_pd_fa_plot(output_dir: str, results: Sequence[Any]) -> list[str]:
    """Draw the Pd-Fa curves of the small-target results that have one (`metrics["pd_fa_curve"]`, from
    `SegmentationEvaluator`) into `output_dir/pd_fa_curve.png`; returns the files written (none without a curve or
    without matplotlib, which is then logged)."""
    curves = {f"{r.dataset_name or r.dataset_id} {r.dataset_split}": r.metrics["pd_fa_curve"] for r in results
              if isinstance(r.metrics.get("pd_fa_curve"), dict)}
    if not curves:
        return []
    path = os.path.join(output_dir, PD_FA_PLOT_NAME)
    try:
        save_pd_fa_plot(curves, path)
    except ImportError as err:
        logger.warning("%s not drawn: %s", path, err)
        return []
    return [path]


def card_for(model, output_dir: str, results: Sequence[Any] = (), training: dict[str, Any] | None = None,
             base_model: str | None = None, hub_model_id: str | None = None, datasets: Sequence[str] = ()):
    """The model card of a saved segmentation model."""
    config = model.config
    labels = [config.id2label[i] for i in sorted(config.id2label)] if config.id2label else None
    hub_like = bool(base_model) and not os.path.exists(base_model) and base_model.count("/") == 1
    protocols = "; ".join(dict.fromkeys(
        f"{r.dataset_name or r.dataset_id} {r.dataset_split}: {r.notes}" for r in results if getattr(r, "notes", None)))
    extra = {}
    if protocols:
        extra["results_note"] = (
            f"{RESULTS_NOTE} Protocol: {protocols}. `pipeline(\"image-segmentation\")` runs whole-image "
            "inference with the saved processor (the evaluation's resize and patch padding), so it reproduces "
            "whole-image results exactly; sliding-window results come from `recipes/eval_segmentation.py --eval_mode slide`.")
    return make_model_card(
        hub_model_id or os.path.basename(os.path.normpath(output_dir)),
        repo_id=hub_model_id,
        results=list(results),
        datasets=[d for d in datasets if d and d.count("/") == 1 and not os.path.exists(d)],
        base_model=base_model if hub_like else None,
        training=training,
        labels=labels,
        decode_head=config.decode_head,
        **extra,
    )


def push_saved_model(output_dir: str, hub_model_id: str | None, results: Sequence[Any], private: bool = False,
                     message: str | None = None):
    """Push a saved segmentation folder (model, processor, remote code, card, results and the small training logs;
    not the checkpoints, nor `best_model/`, which the saved model already is or was chosen over)."""
    if not hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/unip-tiny-sirst)")
    return push_to_hub(output_dir, hub_model_id, results=list(results), private=private or None,
                       commit_message=message,
                       ignore_patterns=[*DEFAULT_PUSH_IGNORE_PATTERNS, f"{BEST_MODEL_DIR}/*", "hf_cache/*"])


__all__: list[str] = []  # nothing here is documented API; the package's own modules import what they need
