"""Fine-tuning and linear probing of UNIP segmentation models (Zhang et al., "UNIP: Rethinking Pre-trained Attention
Patterns for Infrared Semantic Segmentation", ICLR 2025) under `accelerate`: the recipe behind `recipes/finetune.py`
and `unip demo`.

This file holds the checks across its arguments (`ModelArguments`, `DataArguments`, `FinetuningArguments`, defined
in `recipe_arguments.py` so that parsing them is light), the model to train
(`build_model`, `freeze_unused_backbone_parameters`), `run_finetuning` (periodic evaluation, best-checkpoint keeping,
saving, pushing, `training_curves.png`) and `finetune_main` / `finetune_from_arguments` (`unip finetune`). The step loop is `training.train_loop`; the other jobs have their own files:
`layer_decay.py`, `finetuning_data.py` (data sets and splits), `inference.py` (whole-image / sliding-window logits),
`evaluation.py` (metrics, `run_evaluation`, `evaluate_main`) and `segmentation_saving.py` (processor, card, push).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import PartialState
from torch.utils.data import DataLoader
from transformers import AutoConfig

from unip_hf.argument_checks import check_choice, check_multiple_of, parse_img_scale
from unip_hf.choices import DECODE_HEAD_CHOICES, MODES
from unip_hf.models.configuration_unip import UNIP_PRESETS, UnipConfig, UnipSmallTargetConfig
from unip_hf.data import SegmentationTrainTransform, segmentation_metadata
from unip_hf.evaluation.evaluator import SegmentationEvaluator, evaluate_model, format_metric, format_metrics_table
from unip_hf.data.finetuning_data import (
    EvalSegmentationDataset,
    HardNegativePool,
    KeyedSegmentationDataset,
    check_split,
    dataset_splits,
    dataset_task,
    load_negative_frames,
    load_split,
        resolve_eval_split,
)
from unip_hf.training.layer_decay import layer_decay_scale
from unip_hf.evaluation.metrics import RANKED_METRICS, to_builtin
from unip_hf.evaluation.metrics.irstd.pd_fa_curve import OPERATING_THRESHOLDS, choose_threshold
from unip_hf.models.modeling_unip_small_target import UnipForSmallTargetSegmentation
from unip_hf.models.modeling_unip import UnipDropPath, UnipSelfAttention
from unip_hf.models.modeling_unip_segmentation import UnipForSemanticSegmentation
from unip_hf.training.small_target_distillation import SmallTargetDistiller
from unip_hf.models.vit_family import load_reported
from unip_hf.evaluation.model_saving import (
    BEST_MODEL_DIR,
    benchmark_result,
    push_saved_model,
    save_segmentation_model,
)
from unip_hf.recipe_arguments import DataArguments, FinetuningArguments, ModelArguments
from unip_hf.training.transferability import (
    TRANSFERABILITY_SCORES,
    TransferabilityAwareSegmenter,
    TransferabilityEstimator,
    loss_weights_from_map,
    transferability_contact_sheet,
)
from unip_hf.training.loop import create_accelerator, finish_run, run_recipe, train_loop
from unip_hf.recipe_arguments import parse_recipe_args
from unip_hf.training.output_dir import check_output_dir
from unip_hf.training.checkpoints import on_lineage, read_run_lineage
from unip_hf.training.optimization import checked_total_batch, create_optimizer, create_scheduler, num_warmup_steps
from unip_hf.training.sampler import EpochSampler
from unip_hf.training.state_files import write_json_atomic
from unip_hf.training.curves import write_training_curves

logger = logging.getLogger(__name__)


#: `--decode_head`, `--mode`, `--architecture` (`auto` is `small_target` for small-target (irstd) data sets,
#: `semantic` otherwise): in the light `unip_hf.choices`, so that a typo is refused before anything loads.
EVAL_LOG_NAME = "eval_log.json"


def parse_tmt_blocks(text: str | None, depth: int) -> list[int]:
    """`--tmt_blocks "8,9,10,11"` -> `[8, 9, 10, 11]`; empty: the last third of the blocks (at least one)."""
    if not text:
        return list(range(depth - max(1, depth // 3), depth))
    try:
        blocks = sorted({int(part) % depth if -depth <= int(part) < depth else int(part) for part in text.split(",")})
    except ValueError:
        raise ValueError(f"--tmt_blocks must be comma-separated block indices such as 8,9,10,11; got {text!r}") from None
    if any(not 0 <= b < depth for b in blocks):
        raise ValueError(f"--tmt_blocks {text!r} has blocks outside 0..{depth - 1}")
    return blocks


def tmt_active(model_args: "ModelArguments") -> bool:
    """Whether anything uses a transferability map: TMA, or loss weighting. `--tmt --no_tmt_attention
    --tmt_loss_weight 0` (both off) is vanilla fine-tuning: no estimator is built."""
    return model_args.tmt and (model_args.tmt_attention or model_args.tmt_loss_weight > 0)


def build_transferability_estimator(model_args: "ModelArguments", model) -> TransferabilityEstimator:
    """ACTE for `model` before it trains (its backbone now is the pre-trained reference), from the TMT options."""
    config = model.config
    source = (config.tmt_blocks or parse_tmt_blocks(model_args.tmt_blocks, config.num_hidden_layers))[0]
    return TransferabilityEstimator.for_model(
        model, source_layer=source, regions=model_args.tmt_regions, score=model_args.tmt_score,
        max_clusters=model_args.tmt_max_clusters, explained_variance=model_args.tmt_explained_variance,
        spatial_weight=model_args.tmt_spatial_weight, window=model_args.tmt_window)


def check_finetuning_args(model_args: ModelArguments, data_args: DataArguments,
                          training_args: FinetuningArguments) -> None:
    """Checks across the fine-tuning dataclasses, before any model or data is loaded (`ValueError` naming the
    argument): each dataclass's own checks again (a caller may have changed a field since), the data folder exists
    (`FileNotFoundError`), `--metric_for_best_model` is a metric of the data set's task, `--train_split` and
    `--eval_split` are splits of the data set, and for the semantic model `--crop_size` is a multiple of its patch
    size and, with the UPerNet head, `--per_device_train_batch_size` is at least 2 (its BatchNorm)."""
    for part in (model_args, data_args, training_args):
        part.__post_init__()
    check_output_dir(training_args)
    if not data_args.data_dir:
        raise ValueError("--data_dir is required (the data set's root folder)")
    if not os.path.isdir(data_args.data_dir):
        raise FileNotFoundError(f"--data_dir {data_args.data_dir!r} is not a folder")
    check_choice("tmt_score", model_args.tmt_score, sorted(TRANSFERABILITY_SCORES))  # a registry: not in choices
    task = dataset_task(data_args.dataset, data_args.task)
    ranked = RANKED_METRICS["irstd" if task == "irstd" else "mean_iou"]
    if training_args.metric_for_best_model is not None and training_args.metric_for_best_model not in ranked:
        raise ValueError(f"--metric_for_best_model must be one of {', '.join(ranked)} for the {task} task of "
                         f"--dataset {data_args.dataset}; got {training_args.metric_for_best_model!r}")
    # the splits, and what the model's layers need of the views: checked before any data is built
    splits = dataset_splits(data_args.dataset, data_args.data_dir)
    if splits:  # (a folder without any split is named by the build)
        check_split(data_args.dataset, data_args.data_dir, data_args.train_split, "train_split", splits)
        resolve_eval_split(data_args.dataset, data_args.data_dir, data_args.eval_split)
    if resolve_architecture(model_args, task) == "semantic":
        planned = _planned_model_config(model_args)
        patch = int(getattr(planned, "patch_size", 1))
        check_multiple_of("crop_size", data_args.crop_size, patch,
                          f"the model's patch size {patch} (a training crop is cut into whole patches)")
        batch = training_args.per_device_train_batch_size
        if model_args.mode == "finetune" and 1 in getattr(planned, "pool_scales", ()) and batch < 2:
            raise ValueError(
                f"--per_device_train_batch_size must be >= 2 for the UPerNet head, got {batch}: BatchNorm needs more "
                "than one value per channel in training, and the head's 1x1 pyramid-pooling cell holds one per sample "
                "on each process (with one process or several under DDP; gradient accumulation does not help). Use "
                "2 or more per device, or --mode linear_probe")


def _planned_model_config(model_args: ModelArguments) -> UnipConfig:
    """The configuration `build_model` will give the semantic model's backbone and head (patch size, pool scales), read
    from `--preset` / `--patch_size` / `--config_overrides` or the checkpoint's `config.json`: no weights loaded."""
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    if model_args.model_name_or_path in (None, "", "none"):
        if model_args.patch_size:
            overrides["patch_size"] = model_args.patch_size
        patch = overrides.get("patch_size", UnipConfig.from_preset(model_args.preset).patch_size)
        overrides.setdefault("image_size", patch)  # build_model sizes it from the crop; any multiple will do here
        return UnipConfig.from_preset(model_args.preset, **overrides)
    saved = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    for key in ("patch_size", "pool_scales"):
        if key in overrides:
            setattr(saved, key, overrides[key])
    return saved


@dataclass
class FinetuningResult:
    """What `run_finetuning` returns."""

    output_dir: str
    global_step: int
    final_loss: float | None
    metrics: dict[str, Any]
    best_step: int | None
    main_metric: str
    task: str
    eval_history: list[dict[str, Any]]
    resumed_from: str | None = None


def resolve_architecture(model_args: ModelArguments, task: str) -> str:
    """`"small_target"` or `"semantic"`: `--architecture`, with `auto` meaning small-target for the irstd task (a
    linear probe, `--mode linear_probe`, is always the semantic model's 1x1 head on the frozen backbone)."""
    if model_args.architecture == "auto":
        return "small_target" if task == "irstd" and model_args.mode == "finetune" else "semantic"
    if model_args.architecture == "small_target" and model_args.mode == "linear_probe":
        raise ValueError("--mode linear_probe trains the semantic model's 1x1 head; use --architecture semantic (or auto)")
    return model_args.architecture


def build_small_target_model(model_args: ModelArguments, id2label: dict[int, str], crop_size: int,
                             overrides: dict[str, Any]) -> UnipForSmallTargetSegmentation:
    """A `UnipForSmallTargetSegmentation`: from scratch (`--preset`), from a small-target checkpoint, or with its
    backbone from any UNIP checkpoint (a `UnipViTModel` or a segmentation model; detail path and decoder new)."""
    if len(id2label) != 2:
        raise ValueError(f"--architecture small_target is binary (background, target); the data set has "
                         f"{len(id2label)} classes: {list(id2label.values())}. Use --architecture semantic")
    labels = {"id2label": {int(k): v for k, v in id2label.items()}, "label2id": {v: int(k) for k, v in id2label.items()}}
    overrides = {k: v for k, v in overrides.items() if k not in ("decode_head", "semantic_loss_type")}
    if model_args.model_name_or_path in (None, "", "none"):
        if model_args.patch_size:
            overrides["patch_size"] = model_args.patch_size
        patch = overrides.get("patch_size", UnipConfig.from_preset(model_args.preset).patch_size)
        overrides.setdefault("image_size", max(patch, crop_size // patch * patch))
        return UnipForSmallTargetSegmentation(UnipSmallTargetConfig.from_preset(model_args.preset, **labels,
                                                                                **overrides))
    source = model_args.model_name_or_path
    saved = AutoConfig.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)
    model_type = getattr(saved, "model_type", None)
    if model_type == "unip_small_target":
        return _load_segmenter(UnipForSmallTargetSegmentation, source, **labels, **overrides,
                               trust_remote_code=model_args.trust_remote_code)
    if model_type != "unip":
        raise ValueError(f"{source} is a {model_type!r} checkpoint; convert it first with `unip convert {source} OUT` "
                         "and fine-tune OUT")
    fields = {k: v for k, v in saved.to_dict().items()
              if k not in ("model_type", "architectures", "auto_map", "transformers_version", "id2label", "label2id",
                           "num_labels", "decode_head", "semantic_loss_type")}
    config = UnipSmallTargetConfig(**{**fields, **labels, **overrides})
    return _load_segmenter(UnipForSmallTargetSegmentation, source, config=config,
                           trust_remote_code=model_args.trust_remote_code)


def build_model(model_args: ModelArguments, id2label: dict[int, str], crop_size: int, task: str = "semantic"):
    """A `UnipForSmallTargetSegmentation` when `--architecture` resolves to `small_target` (`build_small_target_model`),
    else a `UnipForSemanticSegmentation` for the data set's classes: from scratch (`--model_name_or_path none`), from a
    backbone checkpoint (heads newly initialised) or from a segmentation checkpoint (classifier re-initialised when
    the classes differ); a linear probe's backbone frozen (`freeze_probe_backbone`). `task` ("semantic" or "irstd")
    resolves `--semantic_loss_type auto`."""

    if model_args.mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {model_args.mode!r}")
    if model_args.decode_head not in DECODE_HEAD_CHOICES:
        raise ValueError(f"--decode_head must be one of {DECODE_HEAD_CHOICES}, got {model_args.decode_head!r}")
    decode_head = "linear_probe" if model_args.mode == "linear_probe" else model_args.decode_head
    labels = {
        "num_labels": len(id2label),
        "id2label": {int(k): v for k, v in id2label.items()},
        "label2id": {v: int(k) for k, v in id2label.items()},
    }
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    if not isinstance(overrides, dict):
        raise ValueError("--config_overrides must be a JSON object")
    loss_type = model_args.semantic_loss_type
    if loss_type == "auto":
        loss_type = "cross_entropy+soft_iou" if task == "irstd" else "cross_entropy"
    overrides = {"decode_head": decode_head, "drop_path_rate": model_args.drop_path_rate,
                 "semantic_loss_type": loss_type, **overrides}
    if tmt_active(model_args):  # TMA's blocks and strength are saved in the config; without TMA the config has none
        depth = overrides.get("num_hidden_layers")
        if depth is None:
            depth = (UNIP_PRESETS[model_args.preset if model_args.preset in UNIP_PRESETS else f"unip-{model_args.preset}"]
                     ["num_hidden_layers"] if model_args.model_name_or_path in (None, "", "none")
                     else AutoConfig.from_pretrained(model_args.model_name_or_path,
                                                     trust_remote_code=model_args.trust_remote_code).num_hidden_layers)
        blocks = parse_tmt_blocks(model_args.tmt_blocks, depth)
        overrides.update(tmt_blocks=blocks if model_args.tmt_attention else [], tmt_strength=model_args.tmt_strength)
    if model_args.num_channels:
        overrides["num_channels"] = model_args.num_channels
    if resolve_architecture(model_args, task) == "small_target":
        return build_small_target_model(model_args, id2label, crop_size, overrides)
    if model_args.model_name_or_path in (None, "", "none"):
        if model_args.patch_size:
            overrides["patch_size"] = model_args.patch_size
        patch = overrides.get("patch_size", UnipConfig.from_preset(model_args.preset).patch_size)
        overrides.setdefault("image_size", max(patch, crop_size // patch * patch))
        config = UnipConfig.from_preset(model_args.preset, **labels, **overrides)
        model = UnipForSemanticSegmentation(config)
        freeze_probe_backbone(model)
        return model
    source = model_args.model_name_or_path
    saved = AutoConfig.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)
    if getattr(saved, "model_type", None) != "unip":
        raise ValueError(
            f"{source} is a {getattr(saved, 'model_type', '?')!r} checkpoint; convert it first with "
            f"`unip convert {source} OUT` and fine-tune OUT"
        )
    same_labels = getattr(saved, "num_labels", None) == len(id2label) and (
        {int(k): v for k, v in (getattr(saved, "id2label", None) or {}).items()} == labels["id2label"])
    # a new class list or another head re-initialises the mismatched head weights (reported by transformers)
    same_head = getattr(saved, "decode_head", decode_head) == decode_head
    model = _load_segmenter(UnipForSemanticSegmentation, source, **labels, **overrides,
                            ignore_mismatched_sizes=not (same_labels and same_head),
                            trust_remote_code=model_args.trust_remote_code)
    freeze_probe_backbone(model)
    return model


def _load_segmenter(model_class: type, source: str, **kwargs: Any):
    """`model_class.from_pretrained(source, **kwargs)` saying in one line what was initialised fresh (a backbone's
    new decode head) instead of transformers' per-key table (`vit_family.load_reported`)."""
    model, line = load_reported(model_class.from_pretrained, source, **kwargs)
    if line and PartialState().is_main_process:
        print(f"{source}: {line}")
    return model


def freeze_probe_backbone(model) -> bool:
    """A linear probe (`decode_head="linear_probe"`) trains only its 1x1 head: its backbone gets `requires_grad=False`
    (before the optimizer and DDP see it) and no randomness (dropout, attention dropout and drop path set to 0), so
    that in training mode it computes exactly what it computes in eval mode (a ViT has no batch norm). Returns
    whether the model is a probe. The recipe's job, not the model's: a probe's checkpoint loads as a plain model."""
    if getattr(model.config, "decode_head", None) != "linear_probe":
        return False
    backbone = model.unip
    backbone.requires_grad_(False)
    for module in backbone.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(module, UnipDropPath):
            module.drop_prob = 0.0
        elif isinstance(module, UnipSelfAttention):
            module.dropout_prob = 0.0
    return True


def freeze_unused_backbone_parameters(model) -> list[str]:
    """Freeze backbone parameters the decode head never uses (the final layer norm, and blocks after the deepest
    tapped one), so that they get no weight decay drift and DDP sees no unused parameters. Returns their names."""
    deepest = max(model._tapped_layers())
    frozen = []
    for name, parameter in model.named_parameters():
        unused = name.startswith("unip.layernorm.")
        if name.startswith("unip.encoder.layer."):
            unused = unused or int(name.split(".")[3]) > deepest
        if unused and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def _gather_training_table(model_args, data_args, train, total_batch, max_steps, learning_rate) -> dict[str, Any]:
    source = model_args.model_name_or_path
    return {
        "initialisation": f"from scratch ({model_args.preset})" if source in (None, "", "none") else source,
        "mode": model_args.mode,
        "decode head": "linear_probe" if model_args.mode == "linear_probe" else model_args.decode_head,
        "data set": f"{data_args.dataset} ({data_args.train_split})",
        "steps": max_steps,
        "total batch size": total_batch,
        "crop size": data_args.crop_size,
        "optimizer": f"AdamW ({train.adam_beta1}, {train.adam_beta2}), wd {train.weight_decay}",
        "learning rate": f"{learning_rate:g}, {train.lr_scheduler_type}, warm-up ratio {train.warmup_ratio}",
        "layer decay": train.layer_decay if model_args.mode == "finetune" else "n/a (frozen backbone)",
        "evaluation": data_args.eval_mode,
    }


def _run_settings(model, data_args: DataArguments, id2label: dict[int, str]) -> dict[str, Any]:
    """What a checkpoint records about what it trains, compared on resume (`train_loop`'s `run_settings`): the data
    set, its labels (a change is refused) and the architecture."""
    config = model.config
    head = None if isinstance(model, UnipForSmallTargetSegmentation) else getattr(config, "decode_head", None)
    return {
        "dataset": f"{data_args.dataset} ({data_args.train_split}) in {os.path.abspath(data_args.data_dir)}",
        "labels": {str(int(k)): v for k, v in id2label.items()},
        "architecture": (f"{type(model).__name__} ({(head + ', ') if head else ''}hidden {config.hidden_size}, "
                         f"{config.num_hidden_layers} blocks, {config.num_attention_heads} heads, patch "
                         f"{config.patch_size}, {config.num_channels} channel(s))"),
    }


def run_finetuning(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: FinetuningArguments,
    on_step_end: Callable[[int, dict], None] | None = None,
) -> FinetuningResult:
    """Fine-tune (or linearly probe) a UNIP segmentation model under `accelerate`, evaluate it, keep the best
    checkpoint and save it.

    Writes to `output_dir`: `checkpoint-{step}/` (full training state, the last `checkpoints_total_limit`),
    `trainer_state.json` (loss log), `eval_log.json` (every evaluation), `best_model/` (the best evaluated model so
    far, by `metric_for_best_model`), and at the end the model to keep (the best one with `load_best_model_at_end`,
    else the last) with its `UnipImageProcessor`, remote code, `eval_results.json`, `.eval_results/*.yaml` and card;
    pushed with `--push_to_hub`.

    Args:
        model_args (`ModelArguments`): model, mode and decode head.
        data_args (`DataArguments`): data set, views and evaluation protocol.
        training_args (`FinetuningArguments`): optimisation, evaluation cadence, checkpoints, trackers, hub.
        on_step_end (`Callable`, *optional*): called after every optimizer step as `on_step_end(step, logs)`.
    """

    train, data = training_args, data_args
    check_finetuning_args(model_args, data_args, training_args)
    accelerator, trackers = create_accelerator(train, {"--model_name_or_path": model_args.model_name_or_path,
                                                       "--data_dir": data.data_dir,
                                                       "--distill_from": model_args.distill_from})

    eval_split = resolve_eval_split(data.dataset, data.data_dir, data.eval_split)
    with accelerator.main_process_first():
        train_set = load_split(data.dataset, data.data_dir, data.train_split, data.cache_dir, data.max_train_samples)
        eval_set = load_split(data.dataset, data.data_dir, eval_split, data.cache_dir, data.max_eval_samples)
    meta = segmentation_metadata(train_set)
    id2label = meta["id2label"]
    task = dataset_task(data.dataset, data.task)
    ignore_index = int(meta.get("ignore_index", 255))

    # refused before any model is built
    check_small_target_options(data, resolve_architecture(model_args, task) == "small_target",
                               bool(model_args.distill_from))
    model = build_model(model_args, id2label, data.crop_size, task)  # a probe's backbone comes frozen
    frozen = freeze_unused_backbone_parameters(model) if model_args.mode == "finetune" else []
    config = model.config
    small_target = isinstance(model, UnipForSmallTargetSegmentation)
    if small_target and tmt_active(model_args):
        raise ValueError("--tmt adapts UnipForSemanticSegmentation's attention; the small-target model has no TMA "
                         "blocks: add --architecture semantic, or drop --tmt")
    # TMT: the frozen pre-trained reference is copied now, before any step (and before a resumed state is loaded)
    estimator = build_transferability_estimator(model_args, model).to(accelerator.device) if tmt_active(model_args) \
        else None
    img_scale = parse_img_scale(data.img_scale, data.crop_size)
    # the small-target model is evaluated (and its saved processor predicts) at each image's full resolution
    eval_scale = None if small_target else img_scale
    distiller = SmallTargetDistiller.from_arguments(model_args, accelerator.device) if model_args.distill_from else None
    transform = SegmentationTrainTransform(
        crop_size=data.crop_size, base_size=img_scale, ratio_range=(data.ratio_min, data.ratio_max),
        cat_max_ratio=data.cat_max_ratio, photometric=data.photometric, num_channels=config.num_channels,
        ignore_index=ignore_index, seed=train.seed, full_frame_ratio=data.full_frame_ratio,
        full_frame_scale=(data.full_frame_scale_min, data.full_frame_scale_max),
    )
    negatives: list[str] = []
    if data.negative_data:
        negatives, skipped_negatives = load_negative_frames(data.negative_data)
        accelerator.print(f"--negative_data {data.negative_data}: {len(negatives)} target-free frame(s) added"
                          + (f"; skipped {len(skipped_negatives)} unreadable file(s): {'; '.join(skipped_negatives)}"
                             if skipped_negatives else ""))
    pool = (HardNegativePool(data.hard_negative_pool, seed=train.seed + accelerator.process_index)
            if data.hard_negative_ratio > 0 else None)
    dataset = KeyedSegmentationDataset(train_set, transform, negatives, with_keys=pool is not None)
    eval_dataset = EvalSegmentationDataset(eval_set, eval_scale, config.num_channels)
    total_batch = checked_total_batch(train, accelerator.num_processes, len(dataset), "the training split",
                                      f" in {data.data_dir}); lower --per_device_train_batch_size.")
    sampler = EpochSampler(len(dataset), seed=train.seed)
    loader = DataLoader(dataset, batch_size=train.per_device_train_batch_size, sampler=sampler, drop_last=True,
                        num_workers=train.dataloader_num_workers, persistent_workers=False)
    per_epoch = max(1, len(dataset) // (train.per_device_train_batch_size * accelerator.num_processes)
                    // train.gradient_accumulation_steps)
    max_steps = train.max_steps if train.max_steps > 0 else max(1, math.ceil(train.num_train_epochs * per_epoch))
    learning_rate = float(train.learning_rate if train.learning_rate is not None
                          else train.base_learning_rate * total_batch / 256)
    decay = train.layer_decay if model_args.mode == "finetune" else 1.0
    layers = config.num_hidden_layers
    optimizer = create_optimizer(model, learning_rate, train.weight_decay, (train.adam_beta1, train.adam_beta2),
                                 train.adam_epsilon, lr_scale_fn=lambda name: layer_decay_scale(name, layers, decay))
    warmup = num_warmup_steps(train.warmup_steps, train.warmup_ratio, max_steps)
    scheduler = create_scheduler(train.lr_scheduler_type, optimizer, warmup, max_steps, power=train.poly_power,
                                 min_lr_ratio=train.min_lr_ratio)
    prepared, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    training_table = _gather_training_table(model_args, data, train, total_batch, max_steps, learning_rate)
    if estimator is not None:
        training_table["TMT"] = (f"TMA on blocks {config.tmt_blocks}, strength {config.tmt_strength:g}"
                                 if config.tmt_blocks else f"TMA off, loss weight {model_args.tmt_loss_weight:g}")
        training_table["TMT maps"] = estimator.describe()
        accelerator.print(f"TMT: {training_table['TMT']}; {training_table['TMT maps']}")
    if trackers:
        flat = {k: v for part in (model_args, data, train) for k, v in dataclasses.asdict(part).items()
                if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("unip-finetune", config=flat)
    # what trains is what the optimizer holds: the parameters that require a gradient and are used (the frozen
    # ones, a probe's backbone or the unused blocks, are neither in the optimizer nor seen by DDP)
    trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    accelerator.print(
        # "linear_probe" is both a mode and the probe's decode head: name it once
        f"{' '.join(dict.fromkeys((model_args.mode, 'small-target' if small_target else config.decode_head)))} "
        f"({trainable:,} trainable parameters of "
        f"{sum(p.numel() for p in model.parameters()):,}"
        + (f"; unused and frozen: {', '.join(sorted({n.rsplit('.', 1)[0] for n in frozen}))}" if frozen else "")
        + f") on {data.dataset}: {len(dataset)} train / {len(eval_dataset)} {eval_split} images, task {task}; "
        f"{max_steps} steps, total batch {total_batch}, peak lr {learning_rate:.3g}, warm-up {warmup}, "
        f"layer decay {decay}"
    )

    main_metric = train.metric_for_best_model or SegmentationEvaluator(task, len(id2label)).main_metric
    eval_log_path = os.path.join(train.output_dir, EVAL_LOG_NAME)
    history: list[dict[str, Any]] = []  # filled from eval_log.json when a checkpoint is restored (on_resume)
    best = {"value": None, "step": None}
    unwrapped = accelerator.unwrap_model(prepared)
    stride = data.eval_stride

    # a TMA model is evaluated as it trained: every evaluated image (or window) gets its own map
    evaluated = TransferabilityAwareSegmenter(unwrapped, estimator) if estimator is not None and config.tmt_blocks \
        else unwrapped

    def evaluate_now(step: int) -> dict[str, Any]:
        metrics = evaluate_model(evaluated, eval_dataset, task, len(id2label), data.eval_mode, data.crop_size, stride,
                                 accelerator, ignore_index, data.irstd_threshold)
        metrics = to_builtin(metrics)
        value = metrics.get(main_metric)
        if value is None:
            raise KeyError(f"--metric_for_best_model {main_metric!r} is not among the metrics {sorted(metrics)}")
        history[:] = [entry for entry in history if entry["step"] < step]
        history.append({"step": step, "metrics": metrics, "run_id": this_run().get("run_id")})
        improved = best["value"] is None or value > best["value"]
        if improved:
            best.update(value=value, step=step)
        accelerator.wait_for_everyone()
        if improved:
            save_best_model(step, metrics)
        if accelerator.is_main_process:
            write_json_atomic(eval_log_path, {"main_metric": main_metric, "best_step": best["step"],
                                              "best_value": best["value"], "history": history})
        accelerator.wait_for_everyone()
        scalars = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        accelerator.log(scalars, step=step)
        accelerator.print(f"step {step}: eval {format_metric(main_metric, value)}"
                          + (" (best)" if improved else
                             f" (best {format_metric(main_metric, best['value'])} at step {best['step']})"))
        return metrics

    def save_best_model(step: int, metrics: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            result = benchmark_result(data.dataset, eval_split, task, metrics, model_args.mode, data.eval_mode,
                                      data.crop_size, stride, data.hub_dataset_id)
            save_segmentation_model(unwrapped, os.path.join(train.output_dir, BEST_MODEL_DIR), [result],
                                    {**training_table, "best step": step}, model_args.model_name_or_path,
                                    train.hub_model_id, img_scale=eval_scale)
        best["on_disk"] = True

    def this_run() -> dict[str, Any]:  # this run's record (run id, lineage), written by train_loop as it starts
        runs = read_run_lineage(train.output_dir)
        return runs[-1] if runs else {}

    def evaluation_due(step: int) -> bool:
        return bool(train.eval_steps) and step % train.eval_steps == 0 and step < max_steps

    pool_dir = os.path.join(train.output_dir, HARD_NEGATIVES_DIR)

    def pool_path(step: int) -> str:
        return os.path.join(pool_dir, f"pool-step{step}-process{accelerator.process_index}.json")

    def step_callback(step: int, logs: dict[str, float]) -> None:
        if pool is not None and train.checkpointing_steps and step % train.checkpointing_steps == 0:
            # the pool as it is after this step: what a resume from checkpoint-{step} restores (plain JSON)
            os.makedirs(pool_dir, exist_ok=True)
            write_json_atomic(pool_path(step), pool.state_dict())
        if evaluation_due(step):
            evaluate_now(step)
        if on_step_end is not None:
            on_step_end(step, logs)

    def on_resume(step: int) -> None:
        if pool is not None:
            if os.path.isfile(pool_path(step)):
                with open(pool_path(step), encoding="utf-8") as handle:
                    pool.load_state_dict(json.load(handle))
            else:
                accelerator.print(f"hard-negative mining: no saved pool for step {step} ({pool_path(step)}); it "
                                  "starts empty, so the batches differ from an uninterrupted run's")
        # the evaluations of the steps up to the checkpoint; one that was due at the checkpoint's own step but did
        # not complete (the run stopped during it) is done again before training continues
        logged, logged_best_step = read_eval_log(eval_log_path)
        # only the evaluations of this run's lineage: not those of a branch it abandoned, nor of an unrelated earlier
        # run whose eval_log.json is still in --output_dir (entries without a run id, of older versions, are kept)
        lineage = this_run().get("lineage")
        history[:] = [entry for entry in logged if entry["step"] <= step and (
            not lineage or not entry.get("run_id")
            or on_lineage({"lineage": [{"run_id": entry["run_id"]}], "global_step": entry["step"]}, lineage))]
        if len(history) < sum(entry["step"] <= step for entry in logged):
            accelerator.print(f"{EVAL_LOG_NAME}: ignored {sum(e['step'] <= step for e in logged) - len(history)} "
                              "evaluation(s) of another run (not on this run's lineage)")
        best.update(value=None, step=None)
        for entry in history:
            value = entry["metrics"].get(main_metric)
            if value is not None and (best["value"] is None or value > best["value"]):
                best.update(value=value, step=entry["step"])
        if best["step"] is not None and best["step"] != logged_best_step:
            # best_model/ holds the model of a later evaluation of the interrupted run (or a half-written one)
            if best["step"] == step:  # the restored weights are that model
                save_best_model(step, next(e["metrics"] for e in history if e["step"] == step))
            else:
                best["on_disk"] = False
                accelerator.print(f"{BEST_MODEL_DIR}/ no longer holds the best evaluated model up to step {step} "
                                  f"(step {best['step']}); unless a later evaluation beats it, the last model is kept")
        if evaluation_due(step) and not any(entry["step"] == step for entry in history):
            accelerator.print(f"step {step}: its evaluation did not complete before the run stopped; evaluating again")
            evaluate_now(step)

    def loss_fn(batch):
        pixel_values = batch["pixel_values"]
        extra = {}
        if estimator is not None and config.tmt_blocks:
            extra["transferability"] = estimator.bind(pixel_values)
        elif estimator is not None:  # ACTE without TMA: the map only weights the loss
            grid = (pixel_values.shape[-2] // config.patch_size, pixel_values.shape[-1] // config.patch_size)
            estimate = estimator.from_pixels(unwrapped.unip, pixel_values)
            extra["loss_weights"] = loss_weights_from_map(estimate.map, grid, model_args.tmt_loss_weight)
        labels = batch["labels"]
        if pool is not None:
            keys = batch["sample_key"]
            drawn = pool.draw(max(1, round(data.hard_negative_ratio * pixel_values.shape[0])))
            if drawn:  # the last len(drawn) views of the batch make room for earlier views that raised false alarms
                views = [dataset.view(epoch, index) for epoch, index in drawn]
                keep = pixel_values.shape[0] - len(views)
                pixel_values = torch.cat([pixel_values[:keep], torch.stack([v["pixel_values"] for v in views]).to(
                    pixel_values.device, pixel_values.dtype)])
                labels = torch.cat([labels[:keep], torch.stack([v["labels"] for v in views]).to(labels.device)])
                keys = torch.cat([keys[:keep].cpu(), torch.stack([v["sample_key"] for v in views])])
        with accelerator.autocast():
            if distiller is not None:
                return distiller.loss(prepared, pixel_values, labels)
            outputs = prepared(pixel_values=pixel_values, labels=labels, **extra)
        if pool is not None:
            pool.mine(keys, outputs.target_logits, labels, ignore_index)
        return outputs.loss

    result = train_loop(
        accelerator, prepared, optimizer, scheduler, loader, sampler, loss_fn, max_steps, train.output_dir,
        **train.loop_options(), on_step_end=step_callback, description=f"{model_args.mode} ({data.dataset})",
        on_resume=on_resume, run_settings=_run_settings(model, data, id2label),
    )
    final = next((entry["metrics"] for entry in history if entry["step"] == result.global_step), None)
    if final is None:
        final = evaluate_now(result.global_step)
    keep_best = train.load_best_model_at_end and best["step"] is not None and best["step"] != result.global_step
    if keep_best and not best.get("on_disk", True):
        accelerator.print(f"the best model (step {best['step']}) was overwritten by an interrupted run; keeping the "
                          f"last model (step {result.global_step})")
        keep_best = False
    kept_step = best["step"] if keep_best else result.global_step
    kept_metrics = next(entry["metrics"] for entry in history if entry["step"] == kept_step)
    accelerator.wait_for_everyone()
    results = [benchmark_result(data.dataset, eval_split, task, kept_metrics, model_args.mode, data.eval_mode,
                                data.crop_size, stride, data.hub_dataset_id)]
    if accelerator.is_main_process:
        to_save = unwrapped
        if keep_best:
            to_save = type(unwrapped).from_pretrained(os.path.join(train.output_dir, BEST_MODEL_DIR))
            accelerator.print(f"keeping the best model (step {kept_step}, {main_metric} {best['value']:.4f})")
        if data.target_fa is not None:
            point = set_operating_point(to_save, eval_dataset, data, eval_split, ignore_index)
            training_table["operating point"] = (
                f"threshold {point['threshold']:g} on {data.dataset} {eval_split} for Fa <= {data.target_fa:g}e-6: "
                f"Pd {100 * point['pd']:.2f}, Fa {point['fa']:.2f}e-6, IoU {100 * point['iou']:.2f}"
                + ("" if point["reached"] else " (the target Fa is not reached: the lowest Fa of the grid)"))
            accelerator.print(f"operating point: {training_table['operating point']}")
        save_segmentation_model(to_save, train.output_dir, results, {**training_table, "kept step": kept_step},
                                model_args.model_name_or_path, train.hub_model_id, img_scale=eval_scale)
        if model_args.tmt_visualize and model_args.tmt:
            path = draw_transferability_maps(to_save, estimator or build_transferability_estimator(model_args, to_save),
                                             eval_dataset, model_args.tmt_visualize, train.output_dir)
            accelerator.print(f"transferability maps of {model_args.tmt_visualize} image(s): {path}")
        accelerator.print(f"{data.dataset} {eval_split} ({data.eval_mode}), step {kept_step}:\n"
                          + format_metrics_table(kept_metrics, id2label))
        write_training_curves(train.output_dir)
    accelerator.wait_for_everyone()
    if train.push_to_hub and accelerator.is_main_process:
        push_saved_model(train.output_dir, train.hub_model_id, results, private=train.hub_private_repo,
                         message=f"UNIP {model_args.mode} on {data.dataset}: {max_steps} steps")
    prepared = None  # the DDP wrapper is freed in finish_run, by every process at once, not as this returns
    finish_run(accelerator, train.output_dir)
    return FinetuningResult(train.output_dir, result.global_step, result.final_loss, kept_metrics, kept_step,
                            main_metric, task, list(history), result.resumed_from)


TMT_MAPS_NAME = "tmt_maps.png"
#: Folder (in the output folder) of the hard-negative pools saved with each checkpoint (plain JSON).
HARD_NEGATIVES_DIR = "hard_negatives"


def check_small_target_options(data: DataArguments, small_target: bool, distilling: bool) -> None:
    """The options that only a small-target model takes (`--hard_negative_ratio`, `--target_fa`), and mining's
    need for the model's own outputs (not available under `--distill_from`)."""
    active_options = (("hard_negative_ratio", data.hard_negative_ratio > 0), ("target_fa", data.target_fa is not None))
    for name, active in active_options:
        if active and not small_target:
            raise ValueError(f"--{name} applies to small-target models (--architecture small_target, or an irstd data "
                             "set); drop it for this model")
    if data.hard_negative_ratio > 0 and distilling:
        raise ValueError("--hard_negative_ratio with --distill_from is not supported (mining reads the student's own "
                         "outputs, which the distillation loss does not return); drop one of them")


def set_operating_point(model, eval_dataset, data: DataArguments, split: str, ignore_index: int) -> dict[str, Any]:
    """Choose the target threshold of `model` on `eval_dataset` (the validation split: never the test split that is
    reported) for `data.target_fa` (`choose_threshold` over `OPERATING_THRESHOLDS`) and store it in the config
    (`target_threshold`, `operating_point`), which `save_pretrained` writes. Returns the chosen point."""
    metrics = evaluate_model(model, eval_dataset, "irstd", 2, ignore_index=ignore_index,
                             curve_thresholds=OPERATING_THRESHOLDS, show_progress=False)
    point = choose_threshold(metrics["pd_fa_curve"], data.target_fa)
    model.config.target_threshold = point["threshold"]
    model.config.operating_point = {"dataset": data.dataset, "split": split, **point}
    return point


def draw_transferability_maps(model, estimator: TransferabilityEstimator, eval_dataset, count: int,
                              output_dir: str) -> str:
    """`output_dir/tmt_maps.png`: the first `count` evaluation images, their transferability maps (from `model`'s
    backbone as trained and the estimator's reference) and their regions. Returns the path."""
    device = next(model.parameters()).device
    estimator = estimator.to(device)
    images, estimates, grids = [], [], []
    was_training = model.training
    model.eval()
    try:
        for index in range(min(count, len(eval_dataset))):
            pixel_values = eval_dataset[index]["pixel_values"][None].to(device)
            patch = model.config.patch_size
            height, width = (pixel_values.shape[-2] // patch * patch, pixel_values.shape[-1] // patch * patch)
            pixel_values = pixel_values[..., :height, :width]
            estimates.append(estimator.from_pixels(model.unip, pixel_values))
            grids.append((height // patch, width // patch))
            plane = pixel_values[0, 0].float().cpu().numpy()
            images.append(255 * (plane - plane.min()) / max(float(plane.max() - plane.min()), 1e-6))
    finally:
        model.train(was_training)
    path = os.path.join(output_dir, TMT_MAPS_NAME)
    transferability_contact_sheet(images, estimates, grids).save(path)
    return path


def read_eval_log(path: str) -> tuple[list[dict[str, Any]], int | None]:
    """The `history` and `best_step` of an `eval_log.json` (`([], None)` when there is none); a clear error when it
    is unreadable."""
    if not os.path.isfile(path):
        return [], None
    try:
        with open(path, encoding="utf-8") as handle:
            log = json.load(handle)
        history = [entry for entry in log.get("history", []) if isinstance(entry.get("step"), int) and "metrics" in entry]
        return history, log.get("best_step")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{path} is unreadable ({error}); move it away to resume without the earlier evaluations")


def parse_finetuning_args(argv: Sequence[str] | None = None):
    """Parse command-line arguments (or one JSON/YAML file) into `(ModelArguments, DataArguments,
    FinetuningArguments)`."""
    return parse_recipe_args((ModelArguments, DataArguments, FinetuningArguments), argv, check=check_finetuning_args)


def finetune_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `recipes/finetune.py`."""
    return finetune_from_arguments(parse_finetuning_args(argv))


def finetune_from_arguments(arguments: tuple) -> int:
    """Run fine-tuning on parsed and checked `(ModelArguments, DataArguments, FinetuningArguments)` (what
    `recipes/finetune.py` and `unip finetune` run); prints the summary and returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code, result = run_recipe(run_finetuning, arguments)
    if result is None:
        return code
    value = result.metrics.get(result.main_metric)
    print(f"done: {result.global_step} steps, {format_metric(result.main_metric, value)} (step {result.best_step}); "
          f"saved to {result.output_dir}")
    return 0


__all__ = ["build_model", "run_finetuning", "finetune_main"]
