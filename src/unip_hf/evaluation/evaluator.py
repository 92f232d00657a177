"""Evaluation of UNIP segmentation models (Zhang et al., ICLR 2025) with the data set's metrics (mIoU, or IoU / nIoU /
Pd / Fa for small targets): the streaming, process-parallel `SegmentationEvaluator`, `evaluate_model` over a split,
chance levels (`chance_metrics`, `class_frequencies`), the printed table, the protocol checks shared with
fine-tuning (`check_eval_protocol`), and the evaluation of any checkpoint (`run_evaluation` on `EvaluationArguments`,
`evaluate_main`, which `recipes/eval_segmentation.py` calls, and `evaluate_from_arguments`, which `unip evaluate`
calls).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from accelerate import Accelerator
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from unip_hf.argument_checks import parse_img_scale
from unip_hf.data import segmentation_metadata
from unip_hf.data.finetuning_data import (
    EvalSegmentationDataset,
    check_split,
    dataset_task,
    load_split,
    resolve_eval_split,
)
from unip_hf.hub.results import METRIC_DISPLAY, headline_metrics, read_eval_results, write_eval_results
from unip_hf.models.infrared_decoding import load_infrared_image
from unip_hf.evaluation.inference import predict_logits
from unip_hf.evaluation.metrics import (
    MAIN_METRIC,
    confusion_matrix,
    image_statistics,
    irstd_from_counters,
    mean_iou_from_confusion_matrix,
    to_builtin,
)
from unip_hf.evaluation.metrics.irstd.pd_fa_curve import DEFAULT_THRESHOLDS, PdFaCurveAccumulator
from unip_hf.recipe_arguments import EvaluationArguments
from unip_hf.evaluation.model_saving import (
    MissingTaskHeadError,
    benchmark_result,
    card_for,
    load_segmentation_model,
    make_processor,
    push_saved_model,
    task_head_problem,
    write_pd_fa_plot,
)
from unip_hf.recipe_arguments import parse_recipe_args


class SegmentationEvaluator:
    """Streaming metrics of one evaluation, summed over processes at the end.

    Semantic sets accumulate a confusion matrix (`unip_hf.evaluation.metrics.confusion_matrix`; memory independent of the
    number of images) and report `mean_iou` and the rest of the `mean_iou` metric; small-target sets accumulate the
    `irstd` metric's per-image counters (`unip_hf.evaluation.metrics.image_statistics`) on the target-class probability and
    report `iou`, `niou`, `pd`, `fa` (x 1e6) and `pd_fa_curve` (Pd, Fa and IoU at each of `curve_thresholds`, the
    threshold-free report). Both are the numbers of the shipped `evaluate` modules.

    Args:
        task (`str`): `"semantic"` or `"irstd"`.
        num_labels (`int`): classes, background included.
        ignore_index (`int`, *optional*, defaults to 255): ignored label.
        threshold (`float`, *optional*, defaults to 0.5): IRSTD probability threshold.
        fa_rule (`str`, *optional*, defaults to `"correct"`): IRSTD false-alarm rule.
        curve_thresholds (`Sequence[float]`, *optional*): thresholds of the IRSTD Pd-Fa curve (default
            `DEFAULT_THRESHOLDS`, 0.01 to 0.99; empty: no curve).
    """

    def __init__(self, task: str, num_labels: int, ignore_index: int = 255, threshold: float = 0.5,
                 fa_rule: str = "correct", curve_thresholds: Sequence[float] | None = DEFAULT_THRESHOLDS):
        if task not in ("semantic", "irstd"):
            raise ValueError(f"task must be semantic or irstd, got {task!r}")
        self.task, self.num_labels, self.ignore_index = task, int(num_labels), int(ignore_index)
        self.threshold, self.fa_rule = threshold, fa_rule
        self.confusion = np.zeros((self.num_labels + 1, self.num_labels + 1), dtype=np.int64)
        self.counters = {"intersection": 0, "union": 0, "num_targets": 0, "num_detected": 0, "false_alarm_pixels": 0,
                         "total_pixels": 0, "niou_sum": 0.0, "niou_images": 0, "num_images": 0}
        self.curve = (PdFaCurveAccumulator(curve_thresholds, fa_rule=fa_rule)
                      if task == "irstd" and curve_thresholds else None)

    @property
    def main_metric(self) -> str:
        """The key ranked for the best checkpoint (higher is better)."""
        return MAIN_METRIC["irstd" if self.task == "irstd" else "mean_iou"]

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: `logits (B, K, H, W)` at the label size, `labels (B, H, W)`."""
        labels_np = labels.cpu().numpy()
        if self.task == "semantic":
            # max(1).indices: the same first-maximum class as argmax(1), ~50x faster on CPU for [B, K, H, W]
            predictions = logits.max(1).indices.cpu().numpy()
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
            if self.curve is not None:
                self.curve.add(probability, reference)
            if stats["union"] > 0:
                self.counters["niou_sum"] += stats["intersection"] / stats["union"]
                self.counters["niou_images"] += 1

    def compute(self, accelerator=None) -> dict[str, Any]:
        """Final metrics (summed over processes when `accelerator` runs several)."""
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
        results = irstd_from_counters(counters)
        if self.curve is not None:
            state = torch.from_numpy(self.curve.state().astype(np.float64))
            if accelerator is not None and accelerator.num_processes > 1:
                state = accelerator.reduce(state.to(accelerator.device), reduction="sum").cpu()
            self.curve.load_state(state.tolist())
            results["pd_fa_curve"] = self.curve.compute()
        return results


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
    curve_thresholds: Sequence[float] | None = DEFAULT_THRESHOLDS,
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
        curve_thresholds (`Sequence[float]`, *optional*): thresholds of the IRSTD Pd-Fa curve (default
            `DEFAULT_THRESHOLDS`; `OPERATING_THRESHOLDS` when an operating point is chosen from it).
    """
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    evaluator = SegmentationEvaluator(task, num_labels, ignore_index, threshold, fa_rule, curve_thresholds)
    was_training = model.training
    model.eval()
    indices = range(rank, len(dataset), world)
    main = accelerator is None or accelerator.is_local_main_process
    try:
        with torch.random.fork_rng(devices=[]):
            # only on a terminal: in a log, a bar nested under the training bar writes `[A` cursor codes
            bar = tqdm(indices, desc="eval", disable=not (show_progress and main and sys.stderr.isatty()), leave=False,
                       dynamic_ncols=True)
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
    raw = dataset.cast_column("label", datasets.Image(decode=False))
    for index in range(min(len(raw), max_images)):
        label = np.asarray(load_infrared_image(raw[index]["label"]), dtype=np.int64)
        label = label[label != ignore_index]
        counts += np.bincount(label[label < num_labels], minlength=num_labels)[:num_labels]
    return (counts / max(counts.sum(), 1.0)).tolist()


def _percent(value) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return f"{'-':>10}" if missing else f"{value * 100:>10.2f}"


def format_metric(key: str, value: float) -> str:
    """One metric as the tables show it (`IoU 0.03`: the display name, percent where the table uses percent), so a
    progress line never prints a fraction beside a table in percent."""
    name, percent = METRIC_DISPLAY.get(key, (key, False))
    return f"{name} {(value * 100 if percent else value):.2f}{' %' if percent else ''}"


def format_metrics_table(metrics: dict[str, Any], id2label: dict[int, str] | None = None) -> str:
    """A plain-text table of the headline metrics (percent) and, for semantic sets, per-class IoU / accuracy."""
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
    problem = task_head_problem(args.model_name_or_path)
    if problem:
        raise ValueError(f"--model_name_or_path {problem}")
    if args.split:  # an unknown split is named before the model is loaded
        check_split(args.dataset, args.data_dir, args.split, "split")


def run_evaluation(args: EvaluationArguments) -> dict[str, Any]:
    """Evaluate a segmentation checkpoint on one split; print a table; write `eval_results.json` and
    `.eval_results/*.yaml` (results of other data sets already there are kept) and, with `--push_to_hub`, push the
    model with an updated card.

    Args:
        args (`EvaluationArguments`): checkpoint, data set, protocol, output.

    Returns:
        `dict` with `metrics`, `task`, `split`, `output_dir` and the written `files`.
    """
    check_evaluation_args(args)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    model = load_segmentation_model(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    model.to(accelerator.device).eval()
    split = resolve_eval_split(args.dataset, args.data_dir, args.split, argument="split")
    with accelerator.main_process_first():
        dataset = load_split(args.dataset, args.data_dir, split, args.cache_dir, args.max_eval_samples)
    meta = segmentation_metadata(dataset)
    id2label = meta["id2label"]
    if model.config.num_labels != len(id2label):
        raise ValueError(f"{args.model_name_or_path} predicts {model.config.num_labels} classes but {args.dataset} "
                         f"({args.data_dir}) has {len(id2label)}: {list(id2label.values())}")
    task = dataset_task(args.dataset, args.task)
    crop = args.crop_size or int(getattr(model.config, "image_size", 512))
    # a small-target model is evaluated at each image's full resolution unless --img_scale says otherwise
    full_resolution = getattr(model.config, "model_type", None) == "unip_small_target" and not args.img_scale
    if full_resolution or (args.img_scale and args.img_scale.lower() == "none"):
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
        files += write_pd_fa_plot(output_dir, results)
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


def parse_evaluation_args(argv: Sequence[str] | None = None) -> EvaluationArguments:
    """Parse command-line arguments (or one JSON/YAML file) into `EvaluationArguments`."""
    return parse_recipe_args((EvaluationArguments,), argv, check=check_evaluation_args)[0]


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `recipes/eval_segmentation.py`."""
    return evaluate_from_arguments((parse_evaluation_args(argv),))


def evaluate_from_arguments(arguments: tuple) -> int:
    """Run the evaluation on parsed and checked `(EvaluationArguments,)` (what `recipes/eval_segmentation.py` and
    `unip evaluate` run); returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_evaluation(*arguments)
    except MissingTaskHeadError as err:  # found when the weights load (a Hub id, a config without architectures)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


__all__ = ["SegmentationEvaluator", "evaluate_model", "run_evaluation", "evaluate_main"]
