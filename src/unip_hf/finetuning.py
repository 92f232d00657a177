"""Fine-tuning, linear probing and evaluation of UNIP segmentation models (Zhang et al., "UNIP: Rethinking Pre-trained
Attention Patterns for Infrared Semantic Segmentation", ICLR 2025) under `accelerate`.

The logic behind `recipes/finetune.py`, `recipes/eval_segmentation.py` and `unip demo`: layer-wise lr decay, data
set preparation from the `unip_hf.data` builders, whole-image or sliding-window evaluation with the data set's
metrics (mIoU, or IoU / nIoU / Pd / Fa for small targets), best-checkpoint keeping, `eval_results.json`, saving of
model + processor + card, and pushing to the Hub. The step loop itself is `unip_hf.training.train_loop`.

API (all names are in `__all__`):

- `layer_decay_scale(name, num_layers, decay)` / `layer_decay_groups(model, ...)`: per-parameter learning-rate
  multipliers (patch embedding, CLS and positions `decay ** (L + 1)`, block `i` `decay ** (L - i)`, neck and heads 1).
- `dataset_task(name)`: `"irstd"` for small-target sets (SIRST, NUDT-SIRST, IRSTD-1K), else `"semantic"`.
- `SegmentationEvaluator`: streaming, process-parallel accumulation of the metrics of one evaluation.
- `predict_logits(model, pixel_values, ...)`: whole-image or sliding-window logits at the input size.
- `evaluate_model(model, dataset, ...)`: metrics of a model on a data set split (sharded over processes).
- `ModelArguments`, `DataArguments`, `FinetuningArguments`, `EvaluationArguments`: `HfArgumentParser` dataclasses.
- `run_finetuning(model_args, data_args, training_args)` -> `FinetuningResult`; `run_evaluation(args)`.
- `parse_finetuning_args`, `parse_evaluation_args`, `finetune_main`, `evaluate_main`: the recipes' entry points.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .argument_checks import check_choice, check_model_source, check_range
from .image_processing_unip import (
    INFRARED_MEAN,
    INFRARED_STD,
    UnipImageProcessor,
    keep_ratio_size,
    load_infrared_image,
)
from .training import (
    EpochSampler,
    NonFiniteLossError,
    TrainingLoopArguments,
    create_accelerator,
    create_optimizer,
    create_scheduler,
    interrupted_exit_code,
    parse_recipe_args,
    num_warmup_steps,
    train_loop,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

#: Data sets evaluated with the small-target metrics (IoU, nIoU, Pd, Fa).
IRSTD_DATASETS = ("sirst", "nudt-sirst", "irstd-1k")
DECODE_HEAD_CHOICES = ("ll_fpn", "multilevel_fpn")
MODES = ("finetune", "linear_probe")
EVAL_MODES = ("whole", "slide")
TASKS = ("auto", "semantic", "irstd")
BEST_MODEL_DIR = "best_model"
EVAL_LOG_NAME = "eval_log.json"


# ----------------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay
# ----------------------------------------------------------------------------------------------------------------


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise decay: 0 for the embeddings (patch projection, CLS token, positions),
    `i + 1` for block `i`, `num_layers + 1` for everything else (final norm, neck, decode and auxiliary heads).

    Args:
        name (`str`): parameter name in a `UnipForSemanticSegmentation` (`unip.encoder.layer.3.mlp.fc1.weight`) or a
            `UnipViTModel` (`encoder.layer.3...`).
        num_layers (`int`): number of transformer blocks.
    """
    parts = name.split(".")
    if parts and parts[0] == "unip":
        parts = parts[1:]
    if parts and parts[0] == "embeddings":
        return 0
    if len(parts) > 2 and parts[0] == "encoder" and parts[1] == "layer":
        return int(parts[2]) + 1
    return num_layers + 1


def layer_decay_scale(name: str, num_layers: int, decay: float) -> float:
    """Learning-rate multiplier of a parameter: `decay ** (num_layers + 1 - layer_id(name))`.

    Patch embedding, CLS token and positions get `decay ** (L + 1)`, block `i` gets `decay ** (L - i)`, the rest 1.

    Args:
        name (`str`): parameter name.
        num_layers (`int`): number of transformer blocks `L`.
        decay (`float`): the decay per block (0.85 in UNIP's fine-tuning).
    """
    return float(decay) ** (num_layers + 1 - layer_id(name, num_layers))


def layer_decay_groups(model: nn.Module, weight_decay: float, decay: float, num_layers: int | None = None):
    """AdamW parameter groups with layer-wise decay (`lr_scale`) and no weight decay on norms, biases, tokens and
    positions: `unip_hf.training.param_groups` with `layer_decay_scale` as the multiplier.

    Args:
        model (`nn.Module`): a `UnipForSemanticSegmentation` or `UnipViTModel`.
        weight_decay (`float`): decay of weight matrices.
        decay (`float`): layer-wise decay (1.0 turns it off).
        num_layers (`int`, *optional*): number of blocks; defaults to `model.config.num_hidden_layers`.
    """
    from .training import param_groups

    layers = num_layers if num_layers is not None else model.config.num_hidden_layers
    return param_groups(model, weight_decay, lambda name: layer_decay_scale(name, layers, decay))


def freeze_unused_backbone_parameters(model) -> list[str]:
    """Freeze backbone parameters the decode head never uses (the final layer norm, and blocks after the deepest
    tapped one), so that they get no weight decay drift and DDP sees no unused parameters. Returns their names."""
    config = model.config
    deepest = config.num_hidden_layers - 1 if config.decode_head == "ll_fpn" else max(config.feature_indices)
    frozen = []
    for name, parameter in model.named_parameters():
        unused = name.startswith("unip.layernorm.")
        if name.startswith("unip.encoder.layer."):
            unused = unused or int(name.split(".")[3]) > deepest
        if unused and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def dataset_task(name: str, override: str | None = None) -> str:
    """`"irstd"` (IoU, nIoU, Pd, Fa) for the infrared small-target sets, `"semantic"` (mIoU) otherwise.

    Args:
        name (`str`): builder name (`sirst`, `buffalo-udder`, `folder`, ...).
        override (`str`, *optional*): `"semantic"`, `"irstd"` or `"auto"`/None (decide from the name).
    """
    if override and override != "auto":
        if override not in ("semantic", "irstd"):
            raise ValueError(f"--task must be auto, semantic or irstd, got {override!r}")
        return override
    return "irstd" if name.lower().replace("_", "-") in IRSTD_DATASETS else "semantic"


def parse_img_scale(text: str | None, crop_size: int) -> tuple[int, int]:
    """`"2048x512"` -> `(2048, 512)` (long, short side targets); empty -> `(4 * crop_size, crop_size)` (mmseg's
    2048x512 for 512 crops)."""
    if not text:
        return (4 * crop_size, crop_size)
    try:
        long_side, short_side = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--img_scale must look like 2048x512 (long x short side), got {text!r}") from None
    if min(long_side, short_side) < 1:
        raise ValueError(f"--img_scale sides must be >= 1 pixel, got {text!r}")
    return (max(long_side, short_side), min(long_side, short_side))


def rescale_size(width: int, height: int, img_scale: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image rescaled, ratio kept, to fit `img_scale` (mmseg `keep_ratio` rule; the processor's
    `keep_ratio_size`, which owns it)."""
    return keep_ratio_size(height, width, img_scale)


def available_splits(name: str, data_dir: str) -> list[str]:
    """Splits a data set folder provides (read from its builder, without building)."""
    from .data.segmentation import SEGMENTATION_BUILDERS

    key = name.lower().replace("_", "-")
    if key not in SEGMENTATION_BUILDERS:
        raise ValueError(f"unknown --dataset {name!r}; choose from {sorted(SEGMENTATION_BUILDERS)}")
    cls, spec = SEGMENTATION_BUILDERS[key]
    builder = cls(data_dir=os.path.abspath(data_dir), spec=spec, dataset_name=key.replace("-", "_"))
    return list(builder._splits(os.path.abspath(data_dir)))


def resolve_eval_split(name: str, data_dir: str, split: str | None) -> str:
    """The evaluation split: `split` if given, else `val` when the data set has one, else `test`."""
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir!r} is not a folder")
    if split:
        return split
    splits = available_splits(name, data_dir)
    for candidate in ("val", "test"):
        if candidate in splits:
            return candidate
    raise ValueError(f"{data_dir} has no val or test split (found {splits}); pass --eval_split")


def load_split(name: str, data_dir: str, split: str, cache_dir: str | None = None, max_samples: int | None = None):
    """One split of a segmentation data set (`unip_hf.data.load_segmentation_dataset`), optionally truncated."""
    from .data import load_segmentation_dataset

    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir!r} is not a folder")
    dataset = load_segmentation_dataset(name, data_dir, split, cache_dir=cache_dir)
    if max_samples:
        dataset = dataset.select(range(min(int(max_samples), len(dataset))))
    return dataset


class KeyedSegmentationDataset(Dataset):
    """Training views keyed by `(epoch, index)` (from `EpochSampler`): each view's augmentation is drawn from
    `(seed, epoch, index)`, so resumed and multi-process runs see the views of an uninterrupted run.

    Args:
        dataset: a `datasets.Dataset` with `image` and `label` columns.
        transform (`SegmentationTrainTransform`): the augmentation.
    """

    def __init__(self, dataset, transform):
        from .data import IndexedTransformDataset

        self.inner = IndexedTransformDataset(dataset, transform, image_key="image", label_key="label")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        self.transform.set_epoch(epoch)
        return self.inner[int(index)]


def _protocol_processor(img_scale: tuple[int, int] | None, num_channels: int,
                        size_divisor: int | None = None) -> UnipImageProcessor:
    """The evaluation protocol as a `UnipImageProcessor`: rescale to `img_scale` keeping the ratio (`None`: no
    resize), normalise, and (for the saved processor) pad to `size_divisor`. Evaluation and the processor saved with
    a model both use it, so that `pipeline("image-segmentation")` predicts what the reported metrics measured."""
    return UnipImageProcessor(
        do_resize=img_scale is not None, img_scale=list(img_scale) if img_scale is not None else None,
        size_divisor=size_divisor, num_channels=num_channels, image_mean=[INFRARED_MEAN] * num_channels,
        image_std=[INFRARED_STD] * num_channels)


class EvalSegmentationDataset(Dataset):
    """Evaluation samples: the image rescaled to `img_scale` (ratio kept; `None` keeps its size) and normalised by
    the protocol's `UnipImageProcessor` (the one saved with the model, less the padding `predict_logits` adds), and
    the label at full resolution.

    Args:
        dataset: a `datasets.Dataset` with `image` and `label` columns.
        img_scale (`tuple[int, int]`, *optional*): (long, short) side targets.
        num_channels (`int`, *optional*, defaults to 3): model input channels.
    """

    def __init__(self, dataset, img_scale: tuple[int, int] | None = None, num_channels: int = 3):
        import datasets

        self.dataset = dataset.cast_column("image", datasets.Image(decode=False)).cast_column(
            "label", datasets.Image(decode=False))
        self.img_scale = img_scale
        self.num_channels = num_channels
        self.image_processor = _protocol_processor(img_scale, num_channels)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.dataset[int(index)]
        image = load_infrared_image(example["image"])
        pixel_values = self.image_processor(image, return_tensors="pt")["pixel_values"][0]
        label = np.asarray(load_infrared_image(example["label"]), dtype=np.int64)
        return {"pixel_values": pixel_values, "labels": torch.from_numpy(label.copy()),
                "id": example.get("id", str(index))}


# ----------------------------------------------------------------------------------------------------------------
# Inference and metrics
# ----------------------------------------------------------------------------------------------------------------


def _pad_to_multiple(pixel_values: torch.Tensor, multiple: int) -> torch.Tensor:
    height, width = pixel_values.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    return F.pad(pixel_values, (0, pad_w, 0, pad_h)) if pad_h or pad_w else pixel_values


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    pixel_values: torch.Tensor,
    eval_mode: str = "whole",
    window: int | Sequence[int] = 512,
    stride: int | Sequence[int] | None = None,
    patch_size: int | None = None,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Logits `(B, K, H, W)` at the input size (or `output_size`), by one whole-image pass or by sliding windows.

    Whole image: the input is padded (bottom/right, zeros) to a multiple of the patch size, the logits are upsampled
    (bilinear) to the padded size and cropped. Slide: `unip_hf.data.sliding_window_inference` with the given window
    and stride (default stride: 2/3 of the window, mmseg's 512/341), windows averaged where they overlap.

    Args:
        model (`nn.Module`): a segmentation model returning an object with `logits` (or a tuple).
        pixel_values (`torch.Tensor`): `(B, C, H, W)` normalised images.
        eval_mode (`str`, *optional*, defaults to `"whole"`): `"whole"` or `"slide"`.
        window (`int` or `(h, w)`, *optional*, defaults to 512): sliding window size.
        stride (`int` or `(h, w)`, *optional*): sliding window stride.
        patch_size (`int`, *optional*): pad multiple; defaults to `model.config.patch_size`.
        output_size (`(h, w)`, *optional*): size the logits are then resized to (bilinear), e.g. the label's size.
    """
    from .data import sliding_window_inference

    if eval_mode not in EVAL_MODES:
        raise ValueError(f"--eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}")
    patch = patch_size or getattr(getattr(model, "config", None), "patch_size", 16)
    height, width = pixel_values.shape[-2:]

    def forward(x: torch.Tensor) -> torch.Tensor:
        padded = _pad_to_multiple(x, patch)
        output = model(pixel_values=padded)
        logits = output.logits if hasattr(output, "logits") else output[0]
        logits = F.interpolate(logits.float(), size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[:, :, : x.shape[-2], : x.shape[-1]]

    if eval_mode == "whole":
        logits = forward(pixel_values)
    else:
        window = (window, window) if isinstance(window, int) else tuple(window)
        if stride is None:
            stride = (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        logits = sliding_window_inference(forward, pixel_values, window=window, stride=stride)[:, :, :height, :width]
    if output_size is not None and tuple(logits.shape[-2:]) != tuple(output_size):
        logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
    return logits


class SegmentationEvaluator:
    """Streaming metrics of one evaluation, summed over processes at the end.

    Semantic sets accumulate a confusion matrix (`unip_hf.metrics.confusion_matrix`; memory independent of the
    number of images) and report `mean_iou` and the rest of the `mean_iou` metric; small-target sets accumulate the
    `irstd` metric's per-image counters (`unip_hf.metrics.image_statistics`) on the target-class probability and
    report `iou`, `niou`, `pd`, `fa` (x 1e6). Both are the numbers of the shipped `evaluate` modules.

    Args:
        task (`str`): `"semantic"` or `"irstd"`.
        num_labels (`int`): classes, background included.
        ignore_index (`int`, *optional*, defaults to 255): ignored label.
        threshold (`float`, *optional*, defaults to 0.5): IRSTD probability threshold.
        fa_rule (`str`, *optional*, defaults to `"correct"`): IRSTD false-alarm rule.
    """

    def __init__(self, task: str, num_labels: int, ignore_index: int = 255, threshold: float = 0.5,
                 fa_rule: str = "correct"):
        if task not in ("semantic", "irstd"):
            raise ValueError(f"task must be semantic or irstd, got {task!r}")
        self.task, self.num_labels, self.ignore_index = task, int(num_labels), int(ignore_index)
        self.threshold, self.fa_rule = threshold, fa_rule
        self.confusion = np.zeros((self.num_labels + 1, self.num_labels + 1), dtype=np.int64)
        self.counters = {"intersection": 0, "union": 0, "num_targets": 0, "num_detected": 0, "false_alarm_pixels": 0,
                         "total_pixels": 0, "niou_sum": 0.0, "niou_images": 0, "num_images": 0}

    @property
    def main_metric(self) -> str:
        """The key ranked for the best checkpoint (higher is better)."""
        from .metrics import MAIN_METRIC

        return MAIN_METRIC["irstd" if self.task == "irstd" else "mean_iou"]

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: `logits (B, K, H, W)` at the label size, `labels (B, H, W)`."""
        from .metrics import confusion_matrix, image_statistics

        labels_np = labels.cpu().numpy()
        if self.task == "semantic":
            predictions = logits.argmax(1).cpu().numpy()
            for prediction, label in zip(predictions, labels_np):
                self.confusion += confusion_matrix(prediction, label, self.num_labels, self.ignore_index)
            return
        probabilities = logits.float().softmax(1)[:, min(1, logits.shape[1] - 1)].cpu().numpy()
        for probability, label in zip(probabilities, labels_np):
            reference = np.where(label == self.ignore_index, 0, label)
            probability = np.where(label == self.ignore_index, 0.0, probability)
            stats = image_statistics(probability, reference, self.threshold, fa_rule=self.fa_rule)
            for key, value in stats.items():
                self.counters[key] += value
            self.counters["num_images"] += 1
            if stats["union"] > 0:
                self.counters["niou_sum"] += stats["intersection"] / stats["union"]
                self.counters["niou_images"] += 1

    def compute(self, accelerator=None) -> dict[str, Any]:
        """Final metrics (summed over processes when `accelerator` runs several)."""
        from .metrics import irstd_from_counters, mean_iou_from_confusion_matrix

        if self.task == "semantic":
            matrix = torch.from_numpy(self.confusion.astype(np.float64))
            if accelerator is not None and accelerator.num_processes > 1:
                matrix = accelerator.reduce(matrix.to(accelerator.device), reduction="sum").cpu()
            return mean_iou_from_confusion_matrix(matrix.numpy().round().astype(np.int64))
        keys = sorted(self.counters)
        values = torch.tensor([float(self.counters[k]) for k in keys], dtype=torch.float64)
        if accelerator is not None and accelerator.num_processes > 1:
            values = accelerator.reduce(values.to(accelerator.device), reduction="sum").cpu()
        counters = {k: (float(v) if k == "niou_sum" else int(round(float(v)))) for k, v in zip(keys, values.tolist())}
        if counters["num_images"] == 0:
            raise ValueError("no image was evaluated")
        return irstd_from_counters(counters)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    task: str,
    num_labels: int,
    eval_mode: str = "whole",
    crop_size: int = 512,
    stride: int | None = None,
    accelerator=None,
    ignore_index: int = 255,
    threshold: float = 0.5,
    fa_rule: str = "correct",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Metrics of `model` on an `EvalSegmentationDataset` (one image at a time; images are sharded over processes
    and the accumulators summed, so every process returns the same numbers).

    Args:
        model (`nn.Module`): the (unwrapped) segmentation model; put in eval mode here and restored afterwards.
        dataset (`EvalSegmentationDataset`): evaluation samples.
        task (`str`): `"semantic"` or `"irstd"`.
        num_labels (`int`): classes.
        eval_mode (`str`, *optional*, defaults to `"whole"`): `"whole"` or `"slide"`.
        crop_size (`int`, *optional*, defaults to 512): sliding window size.
        stride (`int`, *optional*): sliding window stride (2/3 of the window by default).
        accelerator (`accelerate.Accelerator`, *optional*): shards the images and sums the metrics.
        ignore_index (`int`, *optional*, defaults to 255): ignored label.
        threshold (`float`, *optional*, defaults to 0.5): IRSTD probability threshold.
        fa_rule (`str`, *optional*, defaults to `"correct"`): IRSTD false-alarm rule.
        show_progress (`bool`, *optional*, defaults to `True`): tqdm bar on the main process.
    """
    from tqdm.auto import tqdm

    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    evaluator = SegmentationEvaluator(task, num_labels, ignore_index, threshold, fa_rule)
    was_training = model.training
    model.eval()
    indices = range(rank, len(dataset), world)
    main = accelerator is None or accelerator.is_local_main_process
    try:
        with torch.random.fork_rng(devices=[]):
            bar = tqdm(indices, desc="eval", disable=not (show_progress and main), leave=False, dynamic_ncols=True)
            for index in bar:
                sample = dataset[index]
                pixel_values = sample["pixel_values"].unsqueeze(0).to(device)
                labels = sample["labels"].unsqueeze(0)
                context = accelerator.autocast() if accelerator is not None else torch.autocast("cpu", enabled=False)
                with context:
                    logits = predict_logits(model, pixel_values, eval_mode, crop_size, stride,
                                            output_size=labels.shape[-2:])
                evaluator.add(logits.cpu(), labels)
    finally:
        model.train(was_training)
    return evaluator.compute(accelerator)


def chance_metrics(dataset: Dataset, task: str, num_labels: int, ignore_index: int = 255, seed: int = 0,
                   class_frequencies: Sequence[float] | None = None) -> dict[str, float]:
    """What a model without information scores: the main metric of (a) the majority class everywhere and (b) a
    random per-pixel guess drawn from `class_frequencies` (uniform when not given). Returns
    `{"majority": ..., "random": ..., "chance": max of both}`.

    Args:
        dataset (`EvalSegmentationDataset`): evaluation samples (only the labels are read).
        task (`str`): `"semantic"` or `"irstd"`.
        num_labels (`int`): classes.
        ignore_index (`int`, *optional*, defaults to 255): ignored label.
        seed (`int`, *optional*, defaults to 0): seed of the random guess.
        class_frequencies (`Sequence[float]`, *optional*): probabilities of the random guess.
    """
    rng = np.random.default_rng(seed)
    probabilities = np.asarray(class_frequencies if class_frequencies is not None else [1.0] * num_labels, float)
    probabilities = probabilities / probabilities.sum()
    majority = int(np.argmax(probabilities))
    results = {}
    for kind in ("majority", "random"):
        evaluator = SegmentationEvaluator(task, num_labels, ignore_index)
        for index in range(len(dataset)):
            labels = dataset[index]["labels"].unsqueeze(0)
            if kind == "majority":
                guess = torch.full(labels.shape, majority)
            else:
                guess = torch.from_numpy(rng.choice(num_labels, size=labels.shape, p=probabilities))
            evaluator.add(F.one_hot(guess, num_labels).permute(0, 3, 1, 2).float() * 10, labels)
        results[kind] = float(evaluator.compute()[evaluator.main_metric])
    results["chance"] = max(results.values())
    return results


def class_frequencies(dataset, num_labels: int, ignore_index: int = 255, max_images: int = 64) -> list[float]:
    """Pixel share of each class in (up to `max_images` of) a data set's labels."""
    counts = np.zeros(num_labels, dtype=np.float64)
    import datasets

    raw = dataset.cast_column("label", datasets.Image(decode=False))
    for index in range(min(len(raw), max_images)):
        label = np.asarray(load_infrared_image(raw[index]["label"]), dtype=np.int64)
        label = label[label != ignore_index]
        counts += np.bincount(label[label < num_labels], minlength=num_labels)[:num_labels]
    return (counts / max(counts.sum(), 1.0)).tolist()


def _percent(value) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return f"{'-':>10}" if missing else f"{value * 100:>10.2f}"


def format_metrics_table(metrics: dict[str, Any], id2label: dict[int, str] | None = None) -> str:
    """A plain-text table of the headline metrics (percent) and, for semantic sets, per-class IoU / accuracy."""
    from .hub import METRIC_DISPLAY, headline_metrics

    lines = [f"{'metric':<18}{'value':>10}"]
    for key, value in headline_metrics(metrics).items():
        name, percent = METRIC_DISPLAY.get(key, (key, False))
        lines.append(f"{name:<18}{(value * 100 if percent else value):>10.2f}")
    per_iou, per_acc = metrics.get("per_category_iou"), metrics.get("per_category_accuracy")
    if per_iou is not None and id2label:
        lines.append("")
        lines.append(f"{'class':<18}{'IoU':>10}{'Acc':>10}")
        for index, name in sorted(id2label.items()):
            iou = per_iou[index] if index < len(per_iou) else float("nan")
            acc = per_acc[index] if per_acc is not None and index < len(per_acc) else float("nan")
            lines.append(f"{str(name)[:17]:<18}{_percent(iou)}{_percent(acc)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """The model to fine-tune or probe."""

    model_name_or_path: str = field(
        default="none",
        metadata={"help": "A UNIP backbone or segmentation checkpoint (folder or Hub id), or 'none' with --preset to "
                          "train from scratch."},
    )
    preset: str = field(default="unip-small", metadata={"help": "Size when --model_name_or_path none."})
    mode: str = field(default="finetune", metadata={"help": "finetune or linear_probe (frozen backbone)."})
    decode_head: str = field(default="ll_fpn", metadata={"help": "ll_fpn or multilevel_fpn (finetune mode)."})
    num_channels: int | None = field(default=None, metadata={"help": "Input channels (default: the checkpoint's, 3)."})
    patch_size: int | None = field(default=None, metadata={"help": "Patch size when training from scratch."})
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth of the backbone."})
    semantic_loss_type: str = field(
        default="auto", metadata={"help": "cross_entropy, cross_entropy+soft_iou, or auto (soft IoU added for "
                                          "small-target (irstd) data sets)."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON dict of UnipConfig fields, e.g. '{\"num_hidden_layers\": 4}'."})
    trust_remote_code: bool = field(default=False)

    def __post_init__(self):
        from .configuration_unip import LOSS_TYPES, UNIP_PRESETS

        if self.model_name_or_path not in (None, "", "none"):
            check_model_source("model_name_or_path", self.model_name_or_path)
        else:
            check_choice("preset", self.preset, UNIP_PRESETS)
        check_choice("mode", self.mode, MODES)
        check_choice("decode_head", self.decode_head, DECODE_HEAD_CHOICES)
        check_range("num_channels", self.num_channels, 1, optional=True)
        check_range("patch_size", self.patch_size, 1, optional=True)
        check_range("drop_path_rate", self.drop_path_rate, 0, 1, high_open=True)
        check_choice("semantic_loss_type", self.semantic_loss_type, ("auto", *LOSS_TYPES))
        if self.config_overrides:
            try:
                overrides = json.loads(self.config_overrides)
            except json.JSONDecodeError as err:
                raise ValueError(f"--config_overrides is not valid JSON ({err}): {self.config_overrides!r}") from None
            if not isinstance(overrides, dict):
                raise ValueError(f"--config_overrides must be a JSON object such as '{{\"num_hidden_layers\": 4}}', "
                                 f"got {self.config_overrides!r}")


def check_eval_protocol(task: str, eval_mode: str, crop_size: int | None, eval_stride: int | None,
                        img_scale: str | None, irstd_threshold: float) -> None:
    """The evaluation arguments that fine-tuning and evaluation share; `ValueError` naming the first bad one."""
    check_choice("task", task, TASKS)
    check_choice("eval_mode", eval_mode, EVAL_MODES)
    check_range("crop_size", crop_size, 1, optional=True)
    check_range("eval_stride", eval_stride, 1, optional=True)
    if img_scale and img_scale.lower() != "none":
        parse_img_scale(img_scale, crop_size or 1)
    check_range("irstd_threshold", irstd_threshold, 0, 1, low_open=True, high_open=True,
                note="a probability threshold of the target class")


@dataclass
class DataArguments:
    """The segmentation data set and its views."""

    dataset: str = field(default="folder",
                         metadata={"help": "Builder name (sirst, buffalo-udder, soda, ...) or folder."})
    data_dir: str | None = field(default=None, metadata={"help": "The data set's root folder."})
    train_split: str = field(default="train")
    eval_split: str | None = field(default=None, metadata={"help": "Evaluation split (default: val, else test)."})
    task: str = field(default="auto", metadata={"help": "Metrics: auto (from the data set), semantic or irstd."})
    crop_size: int = field(default=512, metadata={"help": "Training crop and sliding window size."})
    img_scale: str | None = field(
        default=None, metadata={"help": "Resize target 'LONGxSHORT' before random scaling and for evaluation "
                                        "(default 4*crop x crop, i.e. 2048x512 for 512 crops)."})
    ratio_min: float = field(default=0.5, metadata={"help": "Random resize range, lower end."})
    ratio_max: float = field(default=2.0, metadata={"help": "Random resize range, upper end."})
    cat_max_ratio: float = field(default=0.75, metadata={"help": "Max share of one class in a crop (retries)."})
    photometric: bool = field(default=True, metadata={"help": "Brightness/contrast jitter."})
    eval_mode: str = field(default="whole", metadata={"help": "whole (one pass) or slide (windows of crop_size)."})
    eval_stride: int | None = field(default=None, metadata={"help": "Sliding stride (default 2/3 of crop_size)."})
    irstd_threshold: float = field(default=0.5, metadata={"help": "Probability threshold of the IRSTD metrics."})
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Data set id recorded in the results."})

    def __post_init__(self):
        check_range("crop_size", self.crop_size, 1)
        check_eval_protocol(self.task, self.eval_mode, self.crop_size, self.eval_stride, self.img_scale,
                            self.irstd_threshold)
        check_range("ratio_min", self.ratio_min, 0, low_open=True)
        if not self.ratio_max >= self.ratio_min:
            raise ValueError(f"--ratio_max ({self.ratio_max:g}) must be >= --ratio_min ({self.ratio_min:g}): they are "
                             "the random resize range")
        check_range("ratio_max", self.ratio_max, 0, low_open=True)
        check_range("cat_max_ratio", self.cat_max_ratio, 0, 1, low_open=True)
        check_range("max_train_samples", self.max_train_samples, 1, optional=True)
        check_range("max_eval_samples", self.max_eval_samples, 1, optional=True)


@dataclass
class FinetuningArguments(TrainingLoopArguments):
    """Optimisation with UNIP's fine-tuning defaults: AdamW lr 1e-4, betas (0.9, 0.999), wd 0.05, layer decay 0.85,
    linear warm-up then poly decay, batch 8 (the paper's 160k-iteration schedule is for 8 GPUs; set --max_steps)."""

    output_dir: str = field(default="outputs/unip-finetune")
    per_device_train_batch_size: int = field(default=8)
    learning_rate: float | None = field(default=1e-4, metadata={"help": "Peak learning rate."})
    adam_beta2: float = field(default=0.999)
    lr_scheduler_type: str = field(default="poly")
    poly_power: float = field(default=1.0, metadata={"help": "Exponent of the poly decay."})
    warmup_ratio: float = field(default=0.1)
    max_steps: int = field(default=2000)
    checkpointing_steps: int = field(default=500)
    layer_decay: float = field(default=0.85, metadata={"help": "Layer-wise lr decay per block (1: off)."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps (0: only at the end)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Save the best evaluated model at the end."})
    metric_for_best_model: str | None = field(
        default=None, metadata={"help": "Default: mean_iou (semantic) or iou (irstd); also mean_accuracy, "
                                        "overall_accuracy, niou or pd."})

    def __post_init__(self):
        from .metrics import RANKED_METRICS

        super().__post_init__()
        check_range("poly_power", self.poly_power, 0, low_open=True)
        check_range("layer_decay", self.layer_decay, 0, 1, low_open=True,
                    note="the learning-rate multiplier per block; 1 turns layer-wise decay off")
        check_range("eval_steps", self.eval_steps, 0, note="0 evaluates only at the end")
        check_choice("metric_for_best_model", self.metric_for_best_model,
                     [name for names in RANKED_METRICS.values() for name in names], optional=True)


@dataclass
class EvaluationArguments:
    """`recipes/eval_segmentation.py`: a checkpoint, a data set split, the protocol, where results go."""

    model_name_or_path: str = field(default=None, metadata={"help": "Segmentation checkpoint (folder or Hub id)."})
    dataset: str = field(default="folder")
    data_dir: str | None = field(default=None)
    split: str | None = field(default=None, metadata={"help": "Split (default: val, else test)."})
    task: str = field(default="auto")
    eval_mode: str = field(default="whole")
    crop_size: int | None = field(default=None, metadata={"help": "Window size (default: the model's image_size)."})
    eval_stride: int | None = field(default=None)
    img_scale: str | None = field(default=None, metadata={"help": "LONGxSHORT resize (default 4*crop x crop); "
                                                                 "'none' keeps the original size."})
    irstd_threshold: float = field(default=0.5)
    fa_rule: str = field(default="correct", metadata={"help": "correct or reference (IRSTD)."})
    max_eval_samples: int | None = field(default=None)
    cache_dir: str | None = field(default=None)
    output_dir: str | None = field(default=None, metadata={"help": "Where results go (default: the checkpoint folder "
                                                                    "if local, else eval_out)."})
    hub_dataset_id: str | None = field(default=None)
    trust_remote_code: bool = field(default=False)
    mixed_precision: str = field(default="no")
    push_to_hub: bool = field(default=False, metadata={"help": "Push model, processor, card and results."})
    hub_model_id: str | None = field(default=None)
    hub_private_repo: bool = field(default=False)

    def __post_init__(self):
        from .metrics import FA_RULES
        from .training import MIXED_PRECISION_TYPES

        check_model_source("model_name_or_path", self.model_name_or_path)
        check_eval_protocol(self.task, self.eval_mode, self.crop_size, self.eval_stride, self.img_scale,
                            self.irstd_threshold)
        check_choice("fa_rule", self.fa_rule, FA_RULES)
        check_range("max_eval_samples", self.max_eval_samples, 1, optional=True)
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION_TYPES)
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/unip-tiny-sirst)")


def check_finetuning_args(model_args: ModelArguments, data_args: DataArguments,
                          training_args: FinetuningArguments) -> None:
    """Checks across the fine-tuning dataclasses, before any model or data is loaded (`ValueError` naming the
    argument): each dataclass's own checks again (a caller may have changed a field since), the data folder exists
    (`FileNotFoundError`) and `--metric_for_best_model` is a metric of the data set's task."""
    from .metrics import RANKED_METRICS

    for part in (model_args, data_args, training_args):
        part.__post_init__()
    if not data_args.data_dir:
        raise ValueError("--data_dir is required (the data set's root folder)")
    if not os.path.isdir(data_args.data_dir):
        raise FileNotFoundError(f"--data_dir {data_args.data_dir!r} is not a folder")
    task = dataset_task(data_args.dataset, data_args.task)
    ranked = RANKED_METRICS["irstd" if task == "irstd" else "mean_iou"]
    if training_args.metric_for_best_model is not None and training_args.metric_for_best_model not in ranked:
        raise ValueError(f"--metric_for_best_model must be one of {', '.join(ranked)} for the {task} task of "
                         f"--dataset {data_args.dataset}; got {training_args.metric_for_best_model!r}")


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


# ----------------------------------------------------------------------------------------------------------------
# Model construction, saving, results
# ----------------------------------------------------------------------------------------------------------------


def build_model(model_args: ModelArguments, id2label: dict[int, str], crop_size: int, task: str = "semantic"):
    """A `UnipForSemanticSegmentation` for the data set's classes: from scratch (`--model_name_or_path none`), from a
    backbone checkpoint (heads newly initialised) or from a segmentation checkpoint (classifier re-initialised when
    the classes differ). `task` ("semantic" or "irstd") resolves `--semantic_loss_type auto`."""
    from transformers import AutoConfig

    from .configuration_unip import UnipConfig
    from .modeling_unip import UnipForSemanticSegmentation

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
    if model_args.num_channels:
        overrides["num_channels"] = model_args.num_channels
    if model_args.model_name_or_path in (None, "", "none"):
        if model_args.patch_size:
            overrides["patch_size"] = model_args.patch_size
        patch = overrides.get("patch_size", UnipConfig.from_preset(model_args.preset).patch_size)
        overrides.setdefault("image_size", max(patch, crop_size // patch * patch))
        config = UnipConfig.from_preset(model_args.preset, **labels, **overrides)
        return UnipForSemanticSegmentation(config)
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
    return UnipForSemanticSegmentation.from_pretrained(
        source, **labels, **overrides, ignore_mismatched_sizes=not (same_labels and same_head),
        trust_remote_code=model_args.trust_remote_code,
    )


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
                            datasets: Sequence[str] = (), img_scale: tuple[int, int] | None = None) -> None:
    """`save_pretrained` of the model and its processor (remote code included; the evaluation protocol of
    `img_scale`, see `make_processor`), `eval_results.json` and `.eval_results/*.yaml`, and the model card
    `README.md`."""
    from .hub import write_eval_results

    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    make_processor(model.config, img_scale).save_pretrained(output_dir)
    if results:
        write_eval_results(output_dir, list(results))
    card_for(model, output_dir, results, training, base_model, hub_model_id, datasets).save(
        os.path.join(output_dir, "README.md"))


def card_for(model, output_dir: str, results: Sequence[Any] = (), training: dict[str, Any] | None = None,
             base_model: str | None = None, hub_model_id: str | None = None, datasets: Sequence[str] = ()):
    """The model card of a saved segmentation model."""
    from .hub import RESULTS_NOTE, make_model_card

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


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning
# ----------------------------------------------------------------------------------------------------------------


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

    from .data import SegmentationTrainTransform, segmentation_metadata

    train, data = training_args, data_args
    check_finetuning_args(model_args, data_args, training_args)
    accelerator, trackers = create_accelerator(train)

    eval_split = resolve_eval_split(data.dataset, data.data_dir, data.eval_split)
    with accelerator.main_process_first():
        train_set = load_split(data.dataset, data.data_dir, data.train_split, data.cache_dir, data.max_train_samples)
        eval_set = load_split(data.dataset, data.data_dir, eval_split, data.cache_dir, data.max_eval_samples)
    meta = segmentation_metadata(train_set)
    id2label = meta["id2label"]
    task = dataset_task(data.dataset, data.task)
    ignore_index = int(meta.get("ignore_index", 255))

    model = build_model(model_args, id2label, data.crop_size, task)
    model.freeze_fixed_parts()  # a probe's backbone: requires_grad False before the optimizer and DDP see it
    frozen = freeze_unused_backbone_parameters(model) if model_args.mode == "finetune" else []
    config = model.config
    img_scale = parse_img_scale(data.img_scale, data.crop_size)
    transform = SegmentationTrainTransform(
        crop_size=data.crop_size, base_size=img_scale, ratio_range=(data.ratio_min, data.ratio_max),
        cat_max_ratio=data.cat_max_ratio, photometric=data.photometric, num_channels=config.num_channels,
        ignore_index=ignore_index, seed=train.seed,
    )
    dataset = KeyedSegmentationDataset(train_set, transform)
    eval_dataset = EvalSegmentationDataset(eval_set, img_scale, config.num_channels)
    total_batch = train.per_device_train_batch_size * accelerator.num_processes * train.gradient_accumulation_steps
    if len(dataset) < total_batch:
        raise ValueError(
            f"The total batch ({train.per_device_train_batch_size} per device x {accelerator.num_processes} process(es)"
            f" x {train.gradient_accumulation_steps} accumulation = {total_batch}) is larger than the training split "
            f"({len(dataset)} images in {data.data_dir}); lower --per_device_train_batch_size."
        )
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
    if trackers:
        flat = {k: v for part in (model_args, data, train) for k, v in dataclasses.asdict(part).items()
                if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("unip-finetune", config=flat)
    # what trains is what the optimizer holds: the parameters that require a gradient and are used (the frozen
    # ones, a probe's backbone or the unused blocks, are neither in the optimizer nor seen by DDP)
    trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    accelerator.print(
        f"{model_args.mode} {config.decode_head} ({trainable:,} trainable parameters of "
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

    def evaluate_now(step: int) -> dict[str, Any]:
        metrics = evaluate_model(unwrapped, eval_dataset, task, len(id2label), data.eval_mode, data.crop_size, stride,
                                 accelerator, ignore_index, data.irstd_threshold)
        from .metrics import to_builtin

        metrics = to_builtin(metrics)
        value = metrics.get(main_metric)
        if value is None:
            raise KeyError(f"--metric_for_best_model {main_metric!r} is not among the metrics {sorted(metrics)}")
        history[:] = [entry for entry in history if entry["step"] < step]
        history.append({"step": step, "metrics": metrics})
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
        accelerator.print(f"step {step}: eval {main_metric} = {value:.4f}"
                          + (" (best)" if improved else f" (best {best['value']:.4f} at step {best['step']})"))
        return metrics

    def save_best_model(step: int, metrics: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            result = benchmark_result(data.dataset, eval_split, task, metrics, model_args.mode, data.eval_mode,
                                      data.crop_size, stride, data.hub_dataset_id)
            save_segmentation_model(unwrapped, os.path.join(train.output_dir, BEST_MODEL_DIR), [result],
                                    {**training_table, "best step": step}, model_args.model_name_or_path,
                                    train.hub_model_id, img_scale=img_scale)
        best["on_disk"] = True

    def evaluation_due(step: int) -> bool:
        return bool(train.eval_steps) and step % train.eval_steps == 0 and step < max_steps

    def step_callback(step: int, logs: dict[str, float]) -> None:
        if evaluation_due(step):
            evaluate_now(step)
        if on_step_end is not None:
            on_step_end(step, logs)

    def on_resume(step: int) -> None:
        # the evaluations of the steps up to the checkpoint; one that was due at the checkpoint's own step but did
        # not complete (the run stopped during it) is done again before training continues
        logged, logged_best_step = read_eval_log(eval_log_path)
        history[:] = [entry for entry in logged if entry["step"] <= step]
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
        with accelerator.autocast():
            return prepared(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss

    result = train_loop(
        accelerator, prepared, optimizer, scheduler, loader, sampler, loss_fn, max_steps, train.output_dir,
        **train.loop_options(), on_step_end=step_callback, description=f"{model_args.mode} ({data.dataset})",
        on_resume=on_resume,
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
            from .modeling_unip import UnipForSemanticSegmentation

            to_save = UnipForSemanticSegmentation.from_pretrained(os.path.join(train.output_dir, BEST_MODEL_DIR))
            accelerator.print(f"keeping the best model (step {kept_step}, {main_metric} {best['value']:.4f})")
        save_segmentation_model(to_save, train.output_dir, results, {**training_table, "kept step": kept_step},
                                model_args.model_name_or_path, train.hub_model_id, img_scale=img_scale)
        accelerator.print(f"{data.dataset} {eval_split} ({data.eval_mode}), step {kept_step}:\n"
                          + format_metrics_table(kept_metrics, id2label))
    accelerator.wait_for_everyone()
    if train.push_to_hub and accelerator.is_main_process:
        push_saved_model(train.output_dir, train.hub_model_id, results, private=train.hub_private_repo,
                         message=f"UNIP {model_args.mode} on {data.dataset}: {max_steps} steps")
    accelerator.end_training()
    return FinetuningResult(train.output_dir, result.global_step, result.final_loss, kept_metrics, kept_step,
                            main_metric, task, list(history), result.resumed_from)


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


# ----------------------------------------------------------------------------------------------------------------
# Evaluation of any checkpoint
# ----------------------------------------------------------------------------------------------------------------


def check_evaluation_args(args: EvaluationArguments) -> None:
    """What `run_evaluation` needs before it loads anything: valid arguments (checked again, a caller may have
    changed a field since), a checkpoint and a data folder (`FileNotFoundError`)."""
    args.__post_init__()
    if not args.model_name_or_path:
        raise ValueError("--model_name_or_path is required")
    if not args.data_dir:
        raise ValueError("--data_dir is required")
    if not os.path.isdir(args.data_dir):
        raise FileNotFoundError(f"--data_dir {args.data_dir!r} is not a folder")


def run_evaluation(args: EvaluationArguments) -> dict[str, Any]:
    """Evaluate a segmentation checkpoint on one split; print a table; write `eval_results.json` and
    `.eval_results/*.yaml` (results of other data sets already there are kept) and, with `--push_to_hub`, push the
    model with an updated card.

    Args:
        args (`EvaluationArguments`): checkpoint, data set, protocol, output.

    Returns:
        `dict` with `metrics`, `task`, `split`, `output_dir` and the written `files`.
    """
    from accelerate import Accelerator
    from transformers import AutoModelForSemanticSegmentation

    from .data import segmentation_metadata
    from .hub import read_eval_results, write_eval_results
    from .metrics import to_builtin

    check_evaluation_args(args)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    model = AutoModelForSemanticSegmentation.from_pretrained(args.model_name_or_path,
                                                             trust_remote_code=args.trust_remote_code)
    model.to(accelerator.device).eval()
    split = resolve_eval_split(args.dataset, args.data_dir, args.split)
    with accelerator.main_process_first():
        dataset = load_split(args.dataset, args.data_dir, split, args.cache_dir, args.max_eval_samples)
    meta = segmentation_metadata(dataset)
    id2label = meta["id2label"]
    if model.config.num_labels != len(id2label):
        raise ValueError(f"{args.model_name_or_path} predicts {model.config.num_labels} classes but {args.dataset} "
                         f"({args.data_dir}) has {len(id2label)}: {list(id2label.values())}")
    task = dataset_task(args.dataset, args.task)
    crop = args.crop_size or int(getattr(model.config, "image_size", 512))
    if args.img_scale and args.img_scale.lower() == "none":
        img_scale = None
    else:
        img_scale = parse_img_scale(args.img_scale, crop)
    eval_dataset = EvalSegmentationDataset(dataset, img_scale, int(getattr(model.config, "num_channels", 3)))
    metrics = evaluate_model(model, eval_dataset, task, len(id2label), args.eval_mode, crop, args.eval_stride,
                             accelerator, int(meta.get("ignore_index", 255)), args.irstd_threshold, args.fa_rule)
    metrics = to_builtin(metrics)
    output_dir = args.output_dir or (args.model_name_or_path if os.path.isdir(args.model_name_or_path) else "eval_out")
    result = benchmark_result(args.dataset, split, task, metrics, "linear_probe"
                              if getattr(model.config, "decode_head", "") == "linear_probe" else "finetune",
                              args.eval_mode, crop, args.eval_stride, args.hub_dataset_id)
    files: list[str] = []
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        previous = [r for r in read_eval_results(output_dir) if r.file_stem() != result.file_stem()]
        results = previous + [result]
        files = [str(p) for p in write_eval_results(output_dir, results)]
        print(f"{args.model_name_or_path} on {args.dataset} {split} ({args.eval_mode}, {len(eval_dataset)} images):")
        print(format_metrics_table(metrics, id2label))
        print(f"results written to {', '.join(files)}")
        if args.push_to_hub:
            if os.path.abspath(output_dir) != os.path.abspath(args.model_name_or_path):
                model.save_pretrained(output_dir)
                make_processor(model.config, img_scale).save_pretrained(output_dir)
            card_for(model, output_dir, results, hub_model_id=args.hub_model_id).save(
                os.path.join(output_dir, "README.md"))
            push_saved_model(output_dir, args.hub_model_id, results, private=args.hub_private_repo,
                             message=f"Evaluation on {args.dataset} {split}")
    accelerator.wait_for_everyone()
    return {"metrics": metrics, "task": task, "split": split, "output_dir": output_dir, "files": files}


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------


def parse_finetuning_args(argv: Sequence[str] | None = None):
    """Parse command-line arguments (or one JSON/YAML file) into `(ModelArguments, DataArguments,
    FinetuningArguments)`."""
    return parse_recipe_args((ModelArguments, DataArguments, FinetuningArguments), argv, check=check_finetuning_args)


def parse_evaluation_args(argv: Sequence[str] | None = None) -> EvaluationArguments:
    """Parse command-line arguments (or one JSON/YAML file) into `EvaluationArguments`."""
    return parse_recipe_args((EvaluationArguments,), argv, check=check_evaluation_args)[0]


def finetune_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `recipes/finetune.py`."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_args, data_args, training_args = parse_finetuning_args(argv)
    try:
        result = run_finetuning(model_args, data_args, training_args)
    except NonFiniteLossError:
        return 1
    except KeyboardInterrupt as interrupt:
        return interrupted_exit_code(interrupt)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    value = result.metrics.get(result.main_metric)
    print(f"done: {result.global_step} steps, {result.main_metric} {value:.4f} (step {result.best_step}); "
          f"saved to {result.output_dir}")
    return 0


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `recipes/eval_segmentation.py`."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_evaluation(parse_evaluation_args(argv))
    return 0


__all__ = [
    "BEST_MODEL_DIR",
    "DataArguments",
    "EVAL_MODES",
    "EvalSegmentationDataset",
    "EvaluationArguments",
    "FinetuningArguments",
    "FinetuningResult",
    "IRSTD_DATASETS",
    "KeyedSegmentationDataset",
    "ModelArguments",
    "SegmentationEvaluator",
    "available_splits",
    "benchmark_result",
    "build_model",
    "card_for",
    "chance_metrics",
    "check_eval_protocol",
    "check_evaluation_args",
    "check_finetuning_args",
    "class_frequencies",
    "dataset_task",
    "evaluate_main",
    "evaluate_model",
    "finetune_main",
    "format_metrics_table",
    "freeze_unused_backbone_parameters",
    "layer_decay_groups",
    "layer_decay_scale",
    "layer_id",
    "load_split",
    "make_processor",
    "parse_evaluation_args",
    "parse_finetuning_args",
    "parse_img_scale",
    "predict_logits",
    "push_saved_model",
    "rescale_size",
    "resolve_eval_split",
    "run_evaluation",
    "run_finetuning",
    "save_segmentation_model",
]
