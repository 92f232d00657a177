"""The UNIP pre-training recipe (Zhang et al., ICLR 2025) that `recipes/pretrain.py` calls (and `unip pretrain`): the
checks run before anything is loaded (the argument dataclasses are in `recipe_arguments.py`), `run_pretraining` (teacher, student and data under `accelerate` with the
package's training loop), saving the student with its processor and model card, pushing it, `training_curves.png`, and `main` / `pretrain_from_arguments`.
The loss, teacher and student are in `distillation.py`, the data in `pretraining_data.py`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from transformers import AutoConfig

from unip_hf.models.configuration_unip import UnipConfig
from unip_hf.pretraining.distillation import (
    AttentionTeacher,
    NmiHadStudent,
    check_student_heads,
    feature_distillation_loss,
    nmi_had_loss,
)
from unip_hf.hub.cards import make_model_card
from unip_hf.hub.upload import push_to_hub
from unip_hf.hub.results import PretrainingSummary
from unip_hf.models.image_processing_unip import UnipImageProcessor
from unip_hf.models.modeling_unip import UnipViTModel
from unip_hf.data.pretraining_data import PretrainImageDataset, load_training_sources
from unip_hf.recipe_arguments import DistillationArguments, PretrainDataArguments, PretrainingArguments
from unip_hf.training.loop import create_accelerator, finish_run, run_recipe, train_loop
from unip_hf.recipe_arguments import parse_recipe_args
from unip_hf.training.output_dir import check_output_dir
from unip_hf.training.optimization import checked_total_batch, create_optimizer, create_scheduler, num_warmup_steps, resolve_learning_rate
from unip_hf.training.sampler import EpochSampler
from unip_hf.training.curves import write_training_curves
from unip_hf.models.vit_family import require_vision_config

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------








@dataclass
class PretrainingResult:
    """What `run_pretraining` returns."""

    output_dir: str
    global_step: int
    final_loss: float | None
    first_loss: float | None
    teacher_layer: int | None
    losses: list[float]
    images: int
    skipped_images: int


def _student_config(args: DistillationArguments, data: PretrainDataArguments, teacher_heads: int | None) -> UnipConfig:
    overrides = {"image_size": data.image_size, "num_channels": data.num_channels, "drop_path_rate": args.drop_path_rate}
    if args.student_config:
        path = args.student_config
        config = UnipConfig.from_pretrained(path) if os.path.isdir(path) else UnipConfig.from_json_file(path)
        for key, value in overrides.items():
            setattr(config, key, value)
        if teacher_heads is not None and args.distill_target == "attention":
            check_student_heads(config, teacher_heads)
        return config
    if teacher_heads is not None and args.distill_target == "attention":
        overrides["last_layer_num_attention_heads"] = teacher_heads
    return UnipConfig.from_preset(args.student_preset, **overrides)


def _sample_views(dataset: PretrainImageDataset, count: int) -> torch.Tensor:
    count = min(count, len(dataset))
    step = max(1, len(dataset) // count)
    return torch.stack([dataset[(0, i * step)]["pixel_values"] for i in range(count)])


def check_pretraining_args(distill_args: DistillationArguments, data_args: PretrainDataArguments,
                           training_args: PretrainingArguments) -> None:
    """Checks before any model or data is loaded (`ValueError` naming the argument): each dataclass's own checks
    again (a caller may have changed a field since), `--train_data` given, and a teacher whose config (read, not its
    weights) is a ViT-family vision model with a block `--teacher_layer`."""
    for part in (distill_args, data_args, training_args):
        part.__post_init__()
    check_output_dir(training_args)
    if not data_args.train_data:
        raise ValueError("--train_data is required: image folders, an InfMix folder or a Hub data set id")
    if distill_args.distill_target == "none":
        return
    name = distill_args.teacher_name_or_path
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=distill_args.trust_remote_code)
    except OSError as err:
        raise ValueError(f"--teacher_name_or_path {name!r}: cannot read its config ({err})") from err
    vision = require_vision_config(config, f"--teacher_name_or_path {name!r}")
    depth = getattr(vision, "num_hidden_layers", None)
    layer = str(distill_args.teacher_layer)
    if depth and layer != "auto" and not -depth <= int(layer) < depth:
        raise ValueError(f"--teacher_layer {layer} is out of range for the teacher {name!r} with {depth} blocks "
                         f"(0..{depth - 1}, or negative counting from the end)")


def build_pretraining_data(data: PretrainDataArguments, train: PretrainingArguments, accelerator):
    """The pre-training views of `data.train_data` (what NMI-HAD and `unip pretrain-mae` train on): the sources,
    the grayscale RandomResizedCrop view, one "Training data: ..." line, and the total batch checked against the data
    set size. Returns `(dataset, skipped files, total batch)`."""
    from unip_hf.data.transforms import PretrainTransform  # lazy: the data package imports `datasets`

    sources, skipped, described = load_training_sources(data.train_data, data.image_column)
    transform = PretrainTransform(size=data.image_size, scale=(data.crop_min_scale, 1.0), mean=data.image_mean,
                                  std=data.image_std, num_channels=data.num_channels, seed=train.seed,
                                  grayscale=data.grayscale)
    dataset = PretrainImageDataset(sources, transform, skipped)
    # one folder or data set already says "(N images, K unreadable skipped)"; the total is added for several sources
    counted = len(described) == 1 and described[0].endswith(")")
    accelerator.print(f"Training data: {'; '.join(described)}" + ("" if counted else (
        f"; {len(dataset)} images in all" + (f", {skipped} unreadable skipped" if skipped else ""))))
    total_batch = checked_total_batch(train, accelerator.num_processes, len(dataset), "the data set",
                                      "); lower --per_device_train_batch_size or add data.")
    return dataset, skipped, total_batch


def build_pretraining_optimization(model: torch.nn.Module, dataset, train: PretrainingArguments, num_processes: int):
    """The loader (an `EpochSampler`: exact resume), AdamW and the warm-up schedule of a pre-training run. Returns
    `(loader, sampler, optimizer, scheduler, max_steps, peak learning rate, warm-up steps)`; nothing is prepared."""
    total_batch = train.per_device_train_batch_size * num_processes * train.gradient_accumulation_steps
    sampler = EpochSampler(len(dataset), seed=train.seed)
    loader = DataLoader(dataset, batch_size=train.per_device_train_batch_size, sampler=sampler, drop_last=True,
                        num_workers=train.dataloader_num_workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=False)
    per_epoch = len(dataset) // (train.per_device_train_batch_size * num_processes) // train.gradient_accumulation_steps
    max_steps = train.max_steps if train.max_steps > 0 else max(1, math.ceil(train.num_train_epochs * per_epoch))
    learning_rate = resolve_learning_rate(train.learning_rate, train.base_learning_rate, total_batch)
    optimizer = create_optimizer(model, learning_rate, train.weight_decay, (train.adam_beta1, train.adam_beta2),
                                 train.adam_epsilon)
    warmup = num_warmup_steps(train.warmup_steps, train.warmup_ratio, max_steps)
    scheduler = create_scheduler(train.lr_scheduler_type, optimizer, warmup, max_steps, min_lr_ratio=train.min_lr_ratio)
    return loader, sampler, optimizer, scheduler, max_steps, learning_rate, warmup


def run_pretraining(
    distill_args: DistillationArguments,
    data_args: PretrainDataArguments,
    training_args: PretrainingArguments,
    on_step_end: Callable[[int, dict], None] | None = None,
) -> PretrainingResult:
    """Pre-train a UNIP student by NMI-HAD (or an ablation) under `accelerate`, then save it.

    Writes to `output_dir`: `checkpoint-{step}/` (the last `checkpoints_total_limit`), `trainer_state.json`, and at the
    end the student (`save_pretrained`, a `UnipViTModel` loadable with `AutoModel`), its `UnipImageProcessor`, a model
    card `README.md` and `pretraining_summary.json`; pushes them with `--push_to_hub`.

    Args:
        distill_args (`DistillationArguments`): teacher, layer, student and target.
        data_args (`PretrainDataArguments`): training data and view.
        training_args (`PretrainingArguments`): optimisation, checkpoints, logging, hub.
        on_step_end (`Callable`, *optional*): called after every optimizer step (and its checkpoint) as
            `on_step_end(step, logs)`.
    """
    args, data, train = distill_args, data_args, training_args
    check_pretraining_args(args, data, train)
    accelerator, trackers = create_accelerator(train, {"--teacher_name_or_path": args.teacher_name_or_path,
                                                       "--train_data": list(data.train_data),
                                                       "--student_config": args.student_config})

    dataset, skipped, total_batch = build_pretraining_data(data, train, accelerator)

    teacher = None
    teacher_heads = None
    if args.distill_target != "none":
        sample = None
        if args.teacher_layer == "auto":
            sample = _sample_views(dataset, args.teacher_layer_num_images)
        teacher = AttentionTeacher.from_pretrained(args.teacher_name_or_path, args.teacher_layer, sample,
                                                   trust_remote_code=args.trust_remote_code)
        teacher_heads = teacher.num_heads
        accelerator.print(f"Teacher {args.teacher_name_or_path} ({teacher.family}): distilling block "
                          f"{teacher.teacher_layer} (0-based) with {teacher.num_heads} heads"
                          + (" [chosen by teacher_layer=auto]" if args.teacher_layer == "auto" else ""))
        teacher.to(accelerator.device)

    config = _student_config(args, data, teacher_heads)
    student = UnipViTModel(config)
    module = NmiHadStudent(student, args.distill_target, teacher.hidden_size if teacher is not None else None)
    grid = (data.image_size // config.patch_size, data.image_size // config.patch_size)

    first_loss = final_loss = None
    losses: list[float] = []
    global_step = 0
    if args.distill_target != "none":
        loader, sampler, optimizer, scheduler, max_steps, learning_rate, warmup = build_pretraining_optimization(
            module, dataset, train, accelerator.num_processes)
        module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
        accelerator.register_for_checkpointing(scheduler)
        if trackers:
            accelerator.init_trackers("unip-pretrain", config=_tracker_config(args, data, train, learning_rate,
                                                                             max_steps, teacher))
        accelerator.print(f"{max_steps} steps, total batch {total_batch}, peak lr {learning_rate:.3g}, warm-up {warmup}")

        def loss_fn(batch):
            pixel_values = batch["pixel_values"]
            with accelerator.autocast():
                if args.distill_target == "attention":
                    target = teacher(pixel_values, student_grid=grid)
                    return nmi_had_loss(module(pixel_values), target)
                target = teacher.features(pixel_values, student_grid=grid)
                return feature_distillation_loss(module(pixel_values), target, args.feature_loss)

        result = train_loop(
            accelerator, module, optimizer, scheduler, loader, sampler, loss_fn, max_steps, train.output_dir,
            **train.loop_options(), on_step_end=on_step_end, description=f"NMI-HAD ({args.distill_target})",
            run_settings={
                "dataset": ", ".join(str(source) for source in data.train_data),
                "architecture": (f"UnipViTModel student (hidden {config.hidden_size}, {config.num_hidden_layers} "
                                 f"blocks, {config.num_attention_heads} heads, patch {config.patch_size}), "
                                 f"{args.distill_target} target from {args.teacher_name_or_path} block "
                                 f"{teacher.teacher_layer}"),
            },
        )
        losses = result.step_log.losses()
        first_loss = losses[0] if losses else None
        final_loss = result.final_loss
        global_step = result.global_step
        student = accelerator.unwrap_model(module).student
    accelerator.wait_for_everyone()
    summary = {
        "teacher": args.teacher_name_or_path,
        "teacher_layer": teacher.teacher_layer if teacher is not None else None,
        "teacher_heads": teacher_heads,
        "distill_target": args.distill_target,
        "student": args.student_config or args.student_preset,
        "train_data": list(data.train_data),
        "images": len(dataset),
        "skipped_images": skipped + dataset.skipped_at_load,
        "steps": global_step,
        "total_batch_size": total_batch,
        "first_loss": first_loss,
        "final_loss": final_loss,
    }
    if accelerator.is_main_process:
        save_pretrained_student(student, train.output_dir, summary, data, train)
        write_training_curves(train.output_dir)
    accelerator.wait_for_everyone()
    if train.push_to_hub and accelerator.is_main_process:
        push_pretrained_student(train.output_dir, train.hub_model_id, summary, data, train)
    module = None  # the DDP wrapper is freed in finish_run, by every process at once, not as this returns
    finish_run(accelerator, train.output_dir)
    return PretrainingResult(train.output_dir, global_step, final_loss, first_loss, summary["teacher_layer"], losses,
                             len(dataset), summary["skipped_images"])


def _tracker_config(args, data, train, learning_rate, max_steps, teacher) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for part in (args, data, train):
        for key, value in dataclasses.asdict(part).items():
            if isinstance(value, (int, float, str, bool)):
                flat[key] = value
            elif isinstance(value, list):
                flat[key] = ",".join(map(str, value))
    flat.update({"peak_learning_rate": learning_rate, "total_steps": max_steps,
                 "resolved_teacher_layer": teacher.teacher_layer if teacher is not None else -1})
    return flat


def _model_card(output_dir: str, summary: dict[str, Any], data: PretrainDataArguments, train: PretrainingArguments):
    teacher = summary["teacher"]
    hub_like = lambda name: bool(name) and not os.path.exists(name) and name.count("/") == 1  # noqa: E731
    pretraining = PretrainingSummary(
        teacher=teacher or "none (no pre-training)",
        teacher_layer=(summary["teacher_layer"] + 1) if summary["teacher_layer"] is not None else 0,
        data=", ".join(summary["train_data"]),
        steps=summary["steps"],
        final_loss=summary["final_loss"],
        student=summary["student"],
        batch_size=summary["total_batch_size"],
        image_size=data.image_size,
        extra={"distill target": summary["distill_target"], "teacher layer (0-based)": summary["teacher_layer"],
               "first loss": None if summary["first_loss"] is None else f"{summary['first_loss']:.4f}",
               "images": summary["images"]},
    )
    pretraining.extra = {k: v for k, v in pretraining.extra.items() if v is not None}
    name = train.hub_model_id or os.path.basename(os.path.normpath(output_dir))
    return make_model_card(
        name,
        repo_id=train.hub_model_id,
        pretraining=pretraining,
        datasets=[d for d in summary["train_data"] if hub_like(d)],
        base_model=teacher if hub_like(teacher) else None,
    )


def save_pretrained_student(student: UnipViTModel, output_dir: str, summary: dict[str, Any],
                            data: PretrainDataArguments, train: PretrainingArguments) -> None:
    """Save the student backbone, its image processor, `pretraining_summary.json` and the model card."""
    student.save_pretrained(output_dir)
    processor = UnipImageProcessor.from_model_config(student.config, image_mean=[data.image_mean] * data.num_channels,
                                                     image_std=[data.image_std] * data.num_channels)
    processor.save_pretrained(output_dir)
    with open(os.path.join(output_dir, "pretraining_summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    _model_card(output_dir, summary, data, train).save(os.path.join(output_dir, "README.md"))


def push_pretrained_student(output_dir: str, hub_model_id: str | None, summary: dict[str, Any],
                            data: PretrainDataArguments, train: PretrainingArguments):
    """Push the saved student folder (not the checkpoints) to the Hub with its card."""
    if not hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/unip-small-infmix)")
    return push_to_hub(output_dir, hub_model_id, card=_model_card(output_dir, summary, data, train),
                       private=train.hub_private_repo or None,
                       commit_message=f"NMI-HAD pre-training: {summary['steps']} steps")


def parse_pretraining_args(argv: Sequence[str] | None = None):
    """Parse command-line arguments into `(DistillationArguments, PretrainDataArguments, PretrainingArguments)`."""
    return parse_recipe_args((DistillationArguments, PretrainDataArguments, PretrainingArguments), argv,
                             check=check_pretraining_args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `recipes/pretrain.py`."""
    return pretrain_from_arguments(parse_pretraining_args(argv))


def pretrain_from_arguments(arguments: tuple) -> int:
    """Run pre-training on parsed and checked `(DistillationArguments, PretrainDataArguments, PretrainingArguments)`
    (what `recipes/pretrain.py` and `unip pretrain` run); prints the summary and returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code, result = run_recipe(run_pretraining, arguments)
    if result is None:
        return code
    if result.losses:
        print(f"done: {result.global_step} steps, first loss {result.first_loss:.4f}, last loss {result.final_loss:.4f}; "
              f"saved to {result.output_dir}")
    else:
        print(f"done: saved the initialised student to {result.output_dir}")
    return 0


__all__ = ["run_pretraining", "main"]
