"""The arguments of the UNIP training recipes (Zhang et al., ICLR 2025) and the parser that reads them, light to
import (no torch, transformers, datasets or accelerate), so that `unip pretrain --help` and the recipes' `--help`
start at once.

- The argument dataclasses (one definition each): `TrainingLoopArguments` (shared by every recipe),
  `DistillationArguments`, `PretrainDataArguments`, `PretrainingArguments` (NMI-HAD pre-training), `MaeArguments`
  (with the last two: ViT-MAE pre-training of a teacher, `unip pretrain-mae`), `ModelArguments`,
  `DataArguments`, `FinetuningArguments` (fine-tuning, linear probing) and `EvaluationArguments`. Each
  `__post_init__` refuses out-of-range values and unknown choices naming the `--argument`, with no heavy import
  (the choices live in the light `unip_hf.choices`), so `unip finetune` refuses them before torch loads.
- `add_dataclass_arguments(parser, types)` adds their fields to any `argparse` parser exactly as
  `transformers.HfArgumentParser` would (the same `--name` / `--name-with-dashes` options, types, defaults, `nargs`,
  `--no_<flag>` negations; `tests/test_recipe_arguments.py` compares the two), without importing transformers, and
  `dataclasses_from_namespace` / `dataclasses_from_dict` build the dataclasses from what was parsed. The recipes
  (`unip_hf.recipe_arguments.parse_recipe_args`) and `unip pretrain / finetune / evaluate` use them, so both accept the same
  arguments and show the same `--help`, with every default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_type_hints

from unip_hf.argument_checks import check_choice, check_eval_protocol, check_model_source, check_range
from unip_hf.choices import (
    ARCHITECTURES,
    DECODE_HEAD_CHOICES,
    DISTILL_TARGETS,
    FA_RULES,
    FEATURE_LOSSES,
    LOSS_TYPES,
    MODES,
    PRESET_NAMES,
    RANKED_METRICS,
    REGION_MODES,
    SEGMENTATION_DATASETS,
)

SCHEDULER_TYPES = ("cosine", "poly", "linear", "constant")
MIXED_PRECISION_TYPES = ("no", "fp16", "bf16", "fp8")
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "comet_ml": ("comet_ml",),
                    "mlflow": ("mlflow",), "aim": ("aim",), "clearml": ("clearml",), "dvclive": ("dvclive",)}
# the infrared statistics of UnipImageProcessor (image_processing_unip.INFRARED_MEAN / _STD; a test keeps them equal)
INFRARED_MEAN = 0.3801
INFRARED_STD = 0.1871


@dataclass
class TrainingLoopArguments:
    """Arguments shared by the UNIP training recipes (`parse_recipe_args`, or `transformers.HfArgumentParser`)."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Where checkpoints, logs and the final model go."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate. When given it wins: --base_learning_rate is then ignored. "
                                        "Unset: base_learning_rate x total batch / 256."}
    )
    base_learning_rate: float = field(default=1.5e-4, metadata={
        "help": "Learning rate per 256 images, used only when --learning_rate is not given (then learning rate = "
                "base_learning_rate x per-device batch x processes x accumulation / 256)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on norms/biases/tokens)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients to this norm if set."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "cosine, poly, linear or constant."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Final learning rate as a fraction of the peak."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Warm-up steps (overrides warmup_ratio)."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Warm-up as a fraction of all steps (paper: 5/100)."})
    num_train_epochs: float = field(default=100.0, metadata={"help": "Epochs (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Total optimizer steps (-1: train for --num_train_epochs)."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (accelerate)."})
    checkpointing_steps: int = field(default=500, metadata={"help": "Save state every N steps (0: never)."})
    checkpoints_total_limit: int | None = field(default=3, metadata={"help": "Keep the last K checkpoints (0: all)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "Continue a run: a checkpoint-N folder, or 'latest' (the newest complete one in --output_dir)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start over in an --output_dir that holds an earlier run (everything it wrote is deleted: "
                "checkpoints, logs, eval_log.json, best_model/, the saved model and card); without it (or "
                "--resume_from_checkpoint) such a run is refused."})
    checkpoint_format: str = field(default="safetensors", metadata={
        "help": "safetensors (pickle-free, default) or accelerate (accelerate's save_state: pickles, needed under "
                "FSDP/DeepSpeed; resume only checkpoints you trust)."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N steps."})
    seed: int = field(default=0, metadata={"help": "Random seed (data order, augmentation, initialisation)."})
    report_to: str = field(default="none", metadata={"help": "Trackers: none, all, or a comma list (tensorboard)."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes (0: in process)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model folder with its card."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo for --push_to_hub (user/name)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})

    def __post_init__(self):
        """Refuse values outside their range now, naming the argument, rather than mid-run or never."""
        check_range("per_device_train_batch_size", self.per_device_train_batch_size, 1)
        check_range("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        check_range("learning_rate", self.learning_rate, 0, low_open=True, optional=True)
        check_range("base_learning_rate", self.base_learning_rate, 0, low_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("adam_beta1", self.adam_beta1, 0, 1, high_open=True)
        check_range("adam_beta2", self.adam_beta2, 0, 1, high_open=True)
        check_range("adam_epsilon", self.adam_epsilon, 0, low_open=True)
        check_range("max_grad_norm", self.max_grad_norm, 0, low_open=True, optional=True)
        check_choice("lr_scheduler_type", self.lr_scheduler_type, SCHEDULER_TYPES)
        check_range("min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_range("warmup_steps", self.warmup_steps, 0, optional=True)
        check_range("warmup_ratio", self.warmup_ratio, 0, 1)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"--max_steps must be >= 1, or -1 to train for --num_train_epochs; got {self.max_steps}")
        if self.max_steps == -1:
            check_range("num_train_epochs", self.num_train_epochs, 0, low_open=True,
                        note="or set --max_steps to a number of steps")
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION_TYPES)
        check_range("checkpointing_steps", self.checkpointing_steps, 0, note="0 saves no intermediate checkpoint")
        check_range("checkpoints_total_limit", self.checkpoints_total_limit, 0, optional=True,
                    note="unset or 0 keeps every checkpoint")
        check_range("logging_steps", self.logging_steps, 1)
        check_range("seed", self.seed, 0, 2**32 - 1)
        check_range("dataloader_num_workers", self.dataloader_num_workers, 0)
        names = [n.strip() for n in (self.report_to or "none").split(",") if n.strip()]
        if names not in ([], ["none"], ["all"]):
            for name in names:
                check_choice("report_to", name, ("none", "all", *TRACKER_PACKAGES))
        if self.resume_from_checkpoint not in (None, "", "latest") and not os.path.isdir(self.resume_from_checkpoint):
            raise ValueError(f"--resume_from_checkpoint {self.resume_from_checkpoint!r} is not a folder; give a "
                             "checkpoint-N folder of an earlier run, or 'latest' for the newest one in --output_dir")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/unip-small-run), checked now rather "
                             "than after the training")

    def loop_options(self) -> dict[str, Any]:
        """The keyword arguments of `train_loop` that come straight from these arguments."""
        return {
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_grad_norm": self.max_grad_norm,
            "checkpointing_steps": self.checkpointing_steps,
            "checkpoints_total_limit": self.checkpoints_total_limit,
            "resume_from_checkpoint": self.resume_from_checkpoint,
            "logging_steps": self.logging_steps,
            "checkpoint_format": self.checkpoint_format,
        }


@dataclass
class DistillationArguments:
    """Teacher, student and target of NMI-HAD pre-training."""

    teacher_name_or_path: str | None = field(default=None, metadata={"help": "Teacher checkpoint (folder or Hub id)."})
    teacher_layer: str = field(default="auto", metadata={"help": "0-based teacher block, or 'auto'."})
    teacher_layer_num_images: int = field(default=16, metadata={"help": "Images measured for teacher_layer=auto."})
    student_preset: str = field(default="unip-small", metadata={"help": "unip-tiny/small/base/large."})
    student_config: str | None = field(default=None, metadata={"help": "A UnipConfig json/folder instead of a preset."})
    distill_target: str = field(default="attention", metadata={"help": "attention (NMI-HAD), features or none."})
    feature_loss: str = field(default="cosine", metadata={"help": "features target: cosine or smooth_l1."})
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth of the student."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow remote code when loading the teacher."})

    def __post_init__(self):
        check_choice("distill_target", self.distill_target, DISTILL_TARGETS)
        if self.distill_target != "none" and not self.teacher_name_or_path:
            raise ValueError("--teacher_name_or_path is required unless --distill_target none")
        check_model_source("teacher_name_or_path", self.teacher_name_or_path)
        layer = str(self.teacher_layer)
        if layer != "auto" and not layer.lstrip("-").isdigit():
            raise ValueError(f"--teacher_layer must be a 0-based block index (negative counts from the end) or auto; "
                             f"got {self.teacher_layer!r}")
        check_range("teacher_layer_num_images", self.teacher_layer_num_images, 1)
        if self.student_config:
            if not os.path.exists(self.student_config):
                raise ValueError(f"--student_config {self.student_config!r}: no such file or folder (a UnipConfig "
                                 "json file or a folder with config.json)")
        else:
            check_choice("student_preset", self.student_preset, PRESET_NAMES)
        check_choice("feature_loss", self.feature_loss, FEATURE_LOSSES)
        check_range("drop_path_rate", self.drop_path_rate, 0, 1, high_open=True)


@dataclass
class PretrainDataArguments:
    """Training images and the pre-training view."""

    train_data: list[str] = field(default_factory=list, metadata={"help": "Image folders, InfMix folder or Hub id."})
    image_column: str = field(default="image", metadata={"help": "Image column of a data set."})
    image_size: int = field(default=224, metadata={"help": "Side of the square training view in pixels."})
    crop_min_scale: float = field(default=0.2, metadata={"help": "Smallest RandomResizedCrop area fraction."})
    image_mean: float = field(default=INFRARED_MEAN, metadata={"help": "Normalisation mean (infrared statistics)."})
    image_std: float = field(default=INFRARED_STD, metadata={"help": "Normalisation std (infrared statistics)."})
    num_channels: int = field(default=3, metadata={"help": "Input channels of the student."})
    grayscale: bool = field(default=True, metadata={
        "help": "Convert colour images to intensity (the paper); --grayscale false keeps RGB images in colour (the "
                "InfMix no_grayscale ablation; needs --num_channels 3)."})

    def __post_init__(self):
        if not self.grayscale and self.num_channels != 3:
            raise ValueError(f"--grayscale false keeps colour images' 3 channels; it needs --num_channels 3, got "
                             f"{self.num_channels}")
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        for entry in self.train_data:
            check_model_source("train_data", entry, hub_file=None, folder=False)
        check_range("image_size", self.image_size, 1)
        check_range("crop_min_scale", self.crop_min_scale, 0, 1, low_open=True,
                    note="the smallest crop as a fraction of the image area")
        check_range("image_mean", self.image_mean)
        check_range("image_std", self.image_std, 0, low_open=True)
        check_range("num_channels", self.num_channels, 1)


@dataclass
class MaeArguments:
    """The ViT-MAE model of `unip pretrain-mae` (transformers' `ViTMAEForPreTraining`): a teacher built on your own
    images when no pre-trained one is at hand. Defaults: a ViT-Ti-sized encoder (192 wide, 12 blocks, 3 heads)."""

    hidden_size: int = field(default=192, metadata={"help": "Encoder width."})
    num_hidden_layers: int = field(default=12, metadata={"help": "Encoder blocks."})
    num_attention_heads: int = field(default=3, metadata={"help": "Encoder heads."})
    intermediate_size: int | None = field(default=None, metadata={"help": "Encoder MLP width (default 4x width)."})
    patch_size: int = field(default=16, metadata={"help": "Patch size in pixels."})
    decoder_hidden_size: int = field(default=128, metadata={"help": "Decoder width."})
    decoder_num_hidden_layers: int = field(default=2, metadata={"help": "Decoder blocks."})
    decoder_num_attention_heads: int = field(default=4, metadata={"help": "Decoder heads."})
    mask_ratio: float = field(default=0.75, metadata={"help": "Share of patches hidden from the encoder."})
    norm_pix_loss: bool = field(default=False, metadata={
        "help": "Reconstruct per-patch normalised pixels (MAE's ImageNet setting). Off by default: on the 1341-image "
                "sample InfMix at 112 px its loss stayed at 0.99 (the trivial 1.0) for 460 steps, while plain pixels "
                "fell from 1.29 to 0.66 in 150 (README)."})

    def __post_init__(self):
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "decoder_hidden_size",
                     "decoder_num_hidden_layers", "decoder_num_attention_heads"):
            check_range(name, getattr(self, name), 1)
        if self.intermediate_size is not None:
            check_range("intermediate_size", self.intermediate_size, 1)
        for width, heads in (("hidden_size", "num_attention_heads"),
                             ("decoder_hidden_size", "decoder_num_attention_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"--{width} {getattr(self, width)} must be a multiple of --{heads} "
                                 f"{getattr(self, heads)}")
        check_range("mask_ratio", self.mask_ratio, 0, 1, high_open=True)


@dataclass
class PretrainingArguments(TrainingLoopArguments):
    """Optimisation arguments with the paper's pre-training defaults (AdamW 0.9/0.95, wd 0.05, lr 1.5e-4 x batch /
    256, cosine with 5 of 100 epochs of warm-up)."""

    output_dir: str = field(default="outputs/unip-pretrain", metadata={
        "help": "Where checkpoints, logs, training_curves.png and the final student go."})
    checkpointing_steps: int = field(default=1000, metadata={"help": "Save state every N steps (0: never)."})


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
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow remote code when loading the model."})
    architecture: str = field(
        default="auto", metadata={"help": "small_target (UnipForSmallTargetSegmentation: full-resolution detail path + "
                                          "ViT context), semantic (UnipForSemanticSegmentation), or auto (small_target "
                                          "for irstd data sets: sirst, nudt-sirst, irstd-1k, --task irstd)."})
    distill_from: str | None = field(
        default=None, metadata={"help": "A fine-tuned small-target (or any 2-class segmentation) checkpoint to distil "
                                        "from: its target logits (and, with --distill_feature_weight, its decoder "
                                        "attention maps) supervise the model beside the labels."})
    distill_weight: float = field(default=1.0, metadata={"help": "Weight of the logit distillation loss."})
    distill_temperature: float = field(default=1.0, metadata={"help": "Temperature of the logit distillation."})
    distill_feature_weight: float = field(
        default=0.0, metadata={"help": "Weight of the attention-transfer loss on the finest decoder map (0: off; "
                                       "small-target teachers only)."})
    # transferability-aware fine-tuning (TMT, arXiv 2504.05774; see unip_hf.training.transferability and the README)
    tmt: bool = field(default=False, metadata={"help": "Transferability-aware fine-tuning (TMT): ACTE maps + TMA."})
    tmt_blocks: str | None = field(
        default=None, metadata={"help": "Comma-separated 0-based blocks with the TMA bias (default: the last third)."})
    tmt_strength: float = field(default=1.0, metadata={"help": "TMA strength lambda (logits units)."})
    tmt_attention: bool = field(
        default=True, metadata={"help": "TMA on (--no_tmt_attention: the map only weights the loss)."})
    tmt_loss_weight: float = field(
        default=0.0, metadata={"help": "Loss weights 1 + w (1 - T) (only with --no_tmt_attention)."})
    tmt_regions: str = field(default="acte", metadata={"help": "acte (adaptive k-means) or windows (ablation)."})
    tmt_score: str = field(default="feature_agreement",
                           metadata={"help": "Region score: feature_agreement or cluster_cohesion."})
    tmt_max_clusters: int = field(default=8, metadata={"help": "ACTE: largest k tried per image."})
    tmt_explained_variance: float = field(
        default=0.6, metadata={"help": "ACTE: smallest k explaining this share of the variance."})
    tmt_spatial_weight: float = field(default=0.5, metadata={"help": "ACTE: weight of the patch coordinates."})
    tmt_window: int = field(default=4, metadata={"help": "Window side in patches for --tmt_regions windows."})
    tmt_visualize: int = field(default=0, metadata={"help": "Draw the maps of N evaluation images (tmt_maps.png)."})

    def __post_init__(self):
        check_choice("architecture", self.architecture, ARCHITECTURES)
        if self.distill_from:
            check_model_source("distill_from", self.distill_from)
        check_range("distill_weight", self.distill_weight, 0)
        check_range("distill_temperature", self.distill_temperature, 0, low_open=True)
        check_range("distill_feature_weight", self.distill_feature_weight, 0)
        if self.model_name_or_path not in (None, "", "none"):
            check_model_source("model_name_or_path", self.model_name_or_path)
        else:
            check_choice("preset", self.preset, PRESET_NAMES)
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
        check_tmt_args(self)


def check_tmt_args(model_args: ModelArguments) -> None:
    """The TMT options, checked whether or not `--tmt` is given (a typo never waits for a TMT run); `--tmt_score`,
    a registry that code may extend, is checked by `finetuning.check_finetuning_args`."""
    check_choice("tmt_regions", model_args.tmt_regions, REGION_MODES)
    check_range("tmt_loss_weight", model_args.tmt_loss_weight, 0)
    check_range("tmt_max_clusters", model_args.tmt_max_clusters, 1)
    check_range("tmt_explained_variance", model_args.tmt_explained_variance, 0, 1, low_open=True, high_open=True)
    check_range("tmt_spatial_weight", model_args.tmt_spatial_weight, 0)
    check_range("tmt_window", model_args.tmt_window, 1)
    check_range("tmt_visualize", model_args.tmt_visualize, 0)
    if model_args.tmt and model_args.tmt_attention and model_args.tmt_loss_weight:
        raise ValueError("--tmt_loss_weight is the ablation without TMA: use it with --no_tmt_attention (the map then "
                         "only weights the loss)")
    if model_args.tmt_visualize and not model_args.tmt:
        raise ValueError("--tmt_visualize draws the TMT transferability maps: add --tmt")
    if model_args.mode == "linear_probe" and model_args.tmt:
        raise ValueError("--tmt adapts the backbone; it has no effect with --mode linear_probe (frozen backbone)")


def check_dataset(argument: str, value: str) -> None:
    """`--dataset` names a segmentation builder (`unip_hf.choices.SEGMENTATION_DATASETS`; `_` and case ignored)."""
    check_choice(argument, str(value).lower().replace("_", "-"), SEGMENTATION_DATASETS)


@dataclass
class DataArguments:
    """The segmentation data set and its views."""

    dataset: str = field(default="folder",
                         metadata={"help": "Builder name (sirst, buffalo-udder, soda, ...) or folder."})
    data_dir: str | None = field(default=None, metadata={"help": "The data set's root folder."})
    train_split: str = field(default="train", metadata={"help": "Training split."})
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
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N images."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Data set id recorded in the results."})
    # small targets: views that teach "not a target", and the operating point
    full_frame_ratio: float = field(default=0.0, metadata={
        "help": "Share of training views drawn from the whole frame at a random scale of its own size "
                "(--full_frame_scale_min/max) and cropped anywhere, instead of the target-seeking crops."})
    full_frame_scale_min: float = field(default=0.5, metadata={"help": "Full-frame views: resize range, lower end."})
    full_frame_scale_max: float = field(default=2.0, metadata={"help": "Full-frame views: resize range, upper end."})
    negative_data: str | None = field(default=None, metadata={
        "help": "A folder of frames known to hold NO target (you vouch for it: every pixel trains as background), "
                "added to the training views."})
    hard_negative_ratio: float = field(default=0.0, metadata={
        "help": "Share of each batch replaced by earlier views on which the model fired away from any target "
                "(hard-negative mining; small-target models)."})
    hard_negative_pool: int = field(default=512, metadata={"help": "Views kept by hard-negative mining."})
    target_fa: float | None = field(default=None, metadata={
        "help": "Choose the saved target threshold on the evaluation (validation) split: the lowest threshold whose "
                "Fa (x 1e6) is at most this (small-target models)."})

    def __post_init__(self):
        check_dataset("dataset", self.dataset)
        check_range("crop_size", self.crop_size, 1)
        check_range("full_frame_ratio", self.full_frame_ratio, 0, 1)
        check_range("full_frame_scale_min", self.full_frame_scale_min, 0, low_open=True)
        if not self.full_frame_scale_max >= self.full_frame_scale_min:
            raise ValueError(f"--full_frame_scale_max ({self.full_frame_scale_max:g}) must be >= "
                             f"--full_frame_scale_min ({self.full_frame_scale_min:g})")
        check_range("hard_negative_ratio", self.hard_negative_ratio, 0, 1, high_open=True)
        check_range("hard_negative_pool", self.hard_negative_pool, 1)
        check_range("target_fa", self.target_fa, 0, optional=True, note="false-alarm pixels per million")
        if self.negative_data is not None and not os.path.isdir(self.negative_data):
            raise ValueError(f"--negative_data {self.negative_data}: no such folder (a folder of frames that hold no "
                             "target)")
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

    output_dir: str = field(default="outputs/unip-finetune", metadata={
        "help": "Where checkpoints, logs, training_curves.png, eval results and the final model go."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Batch size per process."})
    learning_rate: float | None = field(default=1e-4, metadata={
        "help": "Peak learning rate. It wins over --base_learning_rate, which fine-tuning therefore ignores."})
    base_learning_rate: float = field(default=1.5e-4, metadata={
        "help": "Not used by fine-tuning: --learning_rate always has a value here and wins."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    lr_scheduler_type: str = field(default="poly", metadata={"help": "cosine, poly, linear or constant."})
    poly_power: float = field(default=1.0, metadata={"help": "Exponent of the poly decay."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Warm-up as a fraction of all steps."})
    max_steps: int = field(default=2000, metadata={"help": "Total optimizer steps (-1: train for --num_train_epochs)."})
    checkpointing_steps: int = field(default=500, metadata={"help": "Save state every N steps (0: never)."})
    layer_decay: float = field(default=0.85, metadata={"help": "Layer-wise lr decay per block (1: off)."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps (0: only at the end)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Save the best evaluated model at the end."})
    metric_for_best_model: str | None = field(
        default=None, metadata={"help": "Default: mean_iou (semantic) or iou (irstd); also mean_accuracy, "
                                        "overall_accuracy, niou or pd."})

    def __post_init__(self):
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
    dataset: str = field(default="folder", metadata={"help": "Builder name (sirst, buffalo-udder, soda, ...) or folder."})
    data_dir: str | None = field(default=None, metadata={"help": "The data set's root folder."})
    split: str | None = field(default=None, metadata={"help": "Split (default: val, else test)."})
    task: str = field(default="auto", metadata={"help": "Metrics: auto (from the data set), semantic or irstd."})
    eval_mode: str = field(default="whole", metadata={"help": "whole (one pass) or slide (windows of crop_size)."})
    crop_size: int | None = field(default=None, metadata={"help": "Window size (default: the model's image_size)."})
    eval_stride: int | None = field(default=None, metadata={"help": "Sliding stride (default 2/3 of crop_size)."})
    img_scale: str | None = field(default=None, metadata={"help": "LONGxSHORT resize (default 4*crop x crop; a "
                                                                 "small-target model: none); 'none' keeps the "
                                                                 "original size."})
    irstd_threshold: float = field(default=0.5, metadata={"help": "Probability threshold of the IRSTD metrics."})
    fa_rule: str = field(default="correct", metadata={"help": "correct or reference (IRSTD)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N images."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    output_dir: str | None = field(default=None, metadata={"help": "Where results go (default: the checkpoint folder "
                                                                    "if local, else eval_out)."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Data set id recorded in the results."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow remote code when loading the model."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (accelerate)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push model, processor, card and results."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo for --push_to_hub (user/name)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})

    def __post_init__(self):
        check_model_source("model_name_or_path", self.model_name_or_path)
        check_dataset("dataset", self.dataset)
        check_eval_protocol(self.task, self.eval_mode, self.crop_size, self.eval_stride, self.img_scale,
                            self.irstd_threshold)
        check_choice("fa_rule", self.fa_rule, FA_RULES)
        check_range("max_eval_samples", self.max_eval_samples, 1, optional=True)
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION_TYPES)
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/unip-tiny-sirst)")

# ----------------------------------------------------------------------------------------------------------------
# The parser: dataclass fields -> argparse options, as transformers.HfArgumentParser builds them
# ----------------------------------------------------------------------------------------------------------------


class ArgumentHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows every option's default (`HfArgumentParser`'s formatter shows it only for options with a help
    text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if "(default" in text:  # the help already says what an unset value means: no "(default: None)" after it
            return text
        if isinstance(action, argparse._StoreFalseAction):  # --no_<flag>: its default is the flag's
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def string_to_bool(value: str | bool) -> bool:
    """`--flag true` / `--flag no` ... as `HfArgumentParser` reads them."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"Truthy value expected: got {value} but expected one of yes/no, true/false, "
                                     "t/f, y/n, 1/0 (case insensitive).")


def _field_help(dtype: type, name: str) -> str | None:
    """The field's help, or that of the same field in a parent dataclass (a subclass that only changes a default
    keeps the parent's explanation)."""
    for klass in dtype.__mro__:
        for candidate in dataclasses.fields(klass) if dataclasses.is_dataclass(klass) else ():
            if candidate.name == name and candidate.metadata.get("help"):
                return candidate.metadata["help"]
    return None


def _add_field(parser: argparse._ActionsContainer, dtype: type, item: dataclasses.Field, hint: Any) -> None:
    options = [f"--{item.name}"] + ([f"--{item.name.replace('_', '-')}"] if "_" in item.name else [])
    kwargs: dict[str, Any] = {key: value for key, value in item.metadata.items() if key != "aliases"}
    kwargs["help"] = _field_help(dtype, item.name)
    aliases = item.metadata.get("aliases", [])
    aliases = [aliases] if isinstance(aliases, str) else list(aliases)
    origin = getattr(hint, "__origin__", hint)
    if origin is Union or isinstance(hint, types.UnionType):
        arguments = hint.__args__
        if type(None) in arguments and bool not in arguments:
            hint = next(arg for arg in arguments if arg is not type(None))
            origin = getattr(hint, "__origin__", hint)
    has_default = item.default is not dataclasses.MISSING
    if origin is Literal:
        kwargs["choices"] = hint.__args__
        by_text = {str(choice): choice for choice in hint.__args__}
        kwargs["type"] = lambda text: by_text.get(text, text)
        if has_default:
            kwargs["default"] = item.default
        else:
            kwargs["required"] = True
    elif hint is bool or hint == bool | None:
        kwargs["type"] = string_to_bool
        if hint is bool or (item.default is not None and has_default):
            kwargs.update(default=False if not has_default else item.default, nargs="?", const=True)
    elif isinstance(origin, type) and issubclass(origin, list):
        kwargs["type"] = hint.__args__[0]
        kwargs["nargs"] = "+"
        if item.default_factory is not dataclasses.MISSING:
            kwargs["default"] = item.default_factory()
        elif not has_default:
            kwargs["required"] = True
    else:
        kwargs["type"] = hint
        if has_default:
            kwargs["default"] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            kwargs["default"] = item.default_factory()
        else:
            kwargs["required"] = True
    parser.add_argument(*options, *aliases, **kwargs)
    if item.default is True and (hint is bool or hint == bool | None):
        parser.add_argument(f"--no_{item.name}", f"--no-{item.name.replace('_', '-')}", action="store_false",
                            dest=item.name, default=False, help=f"Turn --{item.name} off.")


def add_dataclass_arguments(parser: argparse.ArgumentParser, dataclass_types: Iterable[type]) -> argparse.ArgumentParser:
    """Add one option per init field of each dataclass to `parser` (what `HfArgumentParser(dataclass_types)` adds)
    and return it."""
    for dtype in dataclass_types:
        hints = get_type_hints(dtype)
        for item in dataclasses.fields(dtype):
            if item.init:
                _add_field(parser, dtype, item, hints[item.name])
    return parser


def build_parser(dataclass_types: Sequence[type], **kwargs) -> argparse.ArgumentParser:
    """A stand-alone parser of `dataclass_types` (the recipes'), with every default in its help."""
    kwargs.setdefault("formatter_class", ArgumentHelpFormatter)
    return add_dataclass_arguments(argparse.ArgumentParser(**kwargs), dataclass_types)


def dataclasses_from_namespace(dataclass_types: Sequence[type], namespace: argparse.Namespace) -> tuple:
    """The dataclasses filled from a parsed namespace (their `__post_init__` checks run)."""
    values = vars(namespace)
    return tuple(dtype(**{item.name: values[item.name] for item in dataclasses.fields(dtype)
                          if item.init and item.name in values}) for dtype in dataclass_types)


def dataclasses_from_dict(dataclass_types: Sequence[type], arguments: Mapping[str, Any]) -> tuple:
    """The dataclasses filled from a dict (a JSON / YAML file of arguments); an unknown key is a `ValueError`."""
    known = {item.name for dtype in dataclass_types for item in dataclasses.fields(dtype) if item.init}
    unknown = sorted(set(arguments) - known)
    if unknown:
        raise ValueError(f"Some keys are not used by the recipe's arguments: {', '.join(unknown)}")
    return tuple(dtype(**{item.name: arguments[item.name] for item in dataclasses.fields(dtype)
                          if item.init and item.name in arguments}) for dtype in dataclass_types)


def read_arguments_file(path: str) -> dict[str, Any]:
    """A `.json` / `.yaml` / `.yml` file of arguments as a dict."""
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".json"):
            data = json.load(handle)
        else:
            import yaml  # light, and only for YAML argument files

            data = yaml.safe_load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values, got {type(data).__name__}")
    return data


PRETRAINING_ARGUMENTS = (DistillationArguments, PretrainDataArguments, PretrainingArguments)
MAE_PRETRAINING_ARGUMENTS = (MaeArguments, PretrainDataArguments, PretrainingArguments)
FINETUNING_ARGUMENTS = (ModelArguments, DataArguments, FinetuningArguments)
EVALUATION_ARGUMENTS = (EvaluationArguments,)

__all__: list[str] = []  # the README documents the arguments as command-line options; the names stay importable


def parse_recipe_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None,
                      check: Callable[..., None] | None = None) -> tuple:
    """Parse a recipe's command line (`argv`, default `sys.argv[1:]`) into its argument dataclasses (the options
    `transformers.HfArgumentParser` would give them, built by `unip_hf.recipe_arguments` without importing
    transformers); a single `.json` / `.yaml` / `.yml` argument is read as a file of arguments.

    A `ValueError` (or `FileNotFoundError`) from a dataclass's `__post_init__` or from `check(*parsed)` (checks
    across dataclasses, run before any model or data is loaded) ends the program like an argparse error: usage,
    `error: <message>` on stderr, exit status 2, no traceback.
    """

    parser = build_parser(dataclass_types)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) == 1 and args[0].endswith((".json", ".yaml", ".yml")):
            parsed = dataclasses_from_dict(dataclass_types, read_arguments_file(args[0]))
        else:
            parsed = dataclasses_from_namespace(dataclass_types, parser.parse_args(args))
        if check is not None:
            check(*parsed)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return parsed
