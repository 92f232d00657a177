"""What a fine-tuned or evaluated UNIP segmentation model (Zhang et al., ICLR 2025) is saved and pushed with: its
`UnipImageProcessor` (`make_processor`, `processor_size`), the evaluation as a `hub.BenchmarkResult`
(`benchmark_result`), `eval_results.json`, the model card (`card_for`), `save_segmentation_model` and
`push_saved_model`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .finetuning_data import rescale_size
from .image_processing_unip import INFRARED_MEAN, INFRARED_STD, load_infrared_image


BEST_MODEL_DIR = "best_model"


def make_processor(config, size: tuple[int, int] | None = None):
    """The `UnipImageProcessor` saved with a segmentation model.

    Args:
        config (`UnipConfig`): the model's configuration (channels; square `image_size` when `size` is not given).
        size (`tuple[int, int]`, *optional*): `(height, width)` the processor resizes to: the evaluation resolution,
            so that `pipeline("image-segmentation")` sees images at the scale the model was trained and evaluated on.
    """
    from .image_processing_unip import UnipImageProcessor

    channels = config.num_channels
    kwargs = {"size": {"height": int(size[0]), "width": int(size[1])}} if size else {}
    return UnipImageProcessor.from_model_config(config, image_mean=[INFRARED_MEAN] * channels,
                                                image_std=[INFRARED_STD] * channels, **kwargs)


def processor_size(dataset: "EvalSegmentationDataset", patch_size: int) -> tuple[int, int] | None:
    """Evaluation resolution of the first image of `dataset`, rounded to multiples of the patch size."""
    if len(dataset) == 0:
        return None
    width, height = load_infrared_image(dataset.dataset[0]["image"]).size
    if dataset.img_scale is not None:
        height, width = rescale_size(width, height, dataset.img_scale)
    return (max(patch_size, round(height / patch_size) * patch_size),
            max(patch_size, round(width / patch_size) * patch_size))


def benchmark_result(dataset: str, split: str, task: str, metrics: dict[str, Any], mode: str, eval_mode: str,
                     crop_size: int, stride: int | None, hub_dataset_id: str | None = None):
    """A `unip_hf.hub.BenchmarkResult` for one evaluation (the notes record the protocol)."""
    from .hub import BenchmarkResult

    if eval_mode == "slide":
        protocol = f"slide {crop_size}/{stride or max(1, crop_size * 2 // 3)}, single scale"
    else:
        protocol = "whole image, single scale"
    kind = "irstd" if task == "irstd" else ("linear-probe" if mode == "linear_probe" else "semantic-segmentation")
    return BenchmarkResult(dataset_id=hub_dataset_id or dataset, dataset_name=dataset, dataset_split=split,
                           task=kind, metrics=dict(metrics), notes=protocol)


def save_segmentation_model(model, output_dir: str, results: Sequence[Any] = (), training: dict[str, Any] | None = None,
                            base_model: str | None = None, hub_model_id: str | None = None,
                            datasets: Sequence[str] = (), size: tuple[int, int] | None = None) -> None:
    """`save_pretrained` of the model and its processor (remote code included), `eval_results.json` and
    `.eval_results/*.yaml`, and the model card `README.md`."""
    from .hub import write_eval_results

    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    make_processor(model.config, size).save_pretrained(output_dir)
    if results:
        write_eval_results(output_dir, list(results))
    card_for(model, output_dir, results, training, base_model, hub_model_id, datasets).save(
        os.path.join(output_dir, "README.md"))


def card_for(model, output_dir: str, results: Sequence[Any] = (), training: dict[str, Any] | None = None,
             base_model: str | None = None, hub_model_id: str | None = None, datasets: Sequence[str] = ()):
    """The model card of a saved segmentation model."""
    from .hub import make_model_card

    config = model.config
    labels = [config.id2label[i] for i in sorted(config.id2label)] if config.id2label else None
    hub_like = bool(base_model) and not os.path.exists(base_model) and base_model.count("/") == 1
    return make_model_card(
        hub_model_id or os.path.basename(os.path.normpath(output_dir)),
        repo_id=hub_model_id,
        results=list(results),
        datasets=[d for d in datasets if d and d.count("/") == 1 and not os.path.exists(d)],
        base_model=base_model if hub_like else None,
        training=training,
        labels=labels,
        decode_head=config.decode_head,
    )


def push_saved_model(output_dir: str, hub_model_id: str | None, results: Sequence[Any], private: bool = False,
                     message: str | None = None):
    """Push a saved segmentation folder (model, processor, remote code, card, results and the small training logs;
    not the checkpoints, nor `best_model/`, which the saved model already is or was chosen over)."""
    from .hub import DEFAULT_PUSH_IGNORE_PATTERNS, push_to_hub

    if not hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/unip-tiny-sirst)")
    return push_to_hub(output_dir, hub_model_id, results=list(results), private=private or None,
                       commit_message=message,
                       ignore_patterns=[*DEFAULT_PUSH_IGNORE_PATTERNS, f"{BEST_MODEL_DIR}/*", "hf_cache/*"])


__all__ = [
    "benchmark_result",
    "BEST_MODEL_DIR",
    "card_for",
    "make_processor",
    "processor_size",
    "push_saved_model",
    "save_segmentation_model",
]
