"""`unip pretrain-mae`: masked-autoencoder pre-training (He et al., CVPR 2022) of a transformers `ViTMAEForPreTraining`
on your own images, to build an NMI-HAD teacher where no pre-trained one can be downloaded (the Hub is out of reach,
or no checkpoint fits your data). The saved folder loads with `AutoModel.from_pretrained` as a `ViTMAEModel`, so
`unip analyze-attention`, `unip pretrain --teacher_name_or_path` and `unip ablation --teacher` take it as they take
`facebook/vit-mae-*`.

The data, view and training loop are the NMI-HAD recipe's (`pretraining_data`, `data.transforms.PretrainTransform`:
grayscale InfMix views, RandomResizedCrop + flip, unreadable files counted and skipped; `training.train_loop`:
checkpoints without pickle, exact resume, NaN guards, Ctrl-C saves); only the model and its loss (MAE's masked-patch
reconstruction, computed by transformers) differ. The random masks come from torch's generator, whose state the
checkpoints keep, so a resumed run is the uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import torch

from unip_hf.models.configuration_unip import respect_umask
from unip_hf.recipe_arguments import MAE_PRETRAINING_ARGUMENTS, MaeArguments, PretrainDataArguments, PretrainingArguments
from unip_hf.training.loop import create_accelerator, finish_run, run_recipe, train_loop
from unip_hf.recipe_arguments import parse_recipe_args
from unip_hf.training.output_dir import check_output_dir
from unip_hf.training.curves import write_training_curves

logger = logging.getLogger(__name__)


@dataclass
class MaePretrainingResult:
    """What `run_mae_pretraining` returns."""

    output_dir: str
    global_step: int
    first_loss: float | None
    final_loss: float | None
    losses: list[float]
    images: int
    skipped_images: int


def mae_config(mae: MaeArguments, data: PretrainDataArguments):
    """The `ViTMAEConfig` of the run (the view's size and channels); sizes checked by `check_mae_pretraining_args`."""
    from transformers import ViTMAEConfig

    return ViTMAEConfig(
        hidden_size=mae.hidden_size, num_hidden_layers=mae.num_hidden_layers,
        num_attention_heads=mae.num_attention_heads, intermediate_size=mae.intermediate_size or 4 * mae.hidden_size,
        image_size=data.image_size, patch_size=mae.patch_size, num_channels=data.num_channels,
        decoder_hidden_size=mae.decoder_hidden_size, decoder_num_hidden_layers=mae.decoder_num_hidden_layers,
        decoder_num_attention_heads=mae.decoder_num_attention_heads,
        decoder_intermediate_size=4 * mae.decoder_hidden_size, mask_ratio=mae.mask_ratio,
        norm_pix_loss=mae.norm_pix_loss,
    )


def check_mae_pretraining_args(mae: MaeArguments, data: PretrainDataArguments, train: PretrainingArguments) -> None:
    """Checks before any data is read (`ValueError` naming the argument)."""
    for part in (mae, data, train):
        part.__post_init__()
    check_output_dir(train)
    if not data.train_data:
        raise ValueError("--train_data is required: image folders, an InfMix folder or a Hub data set id")
    if data.image_size % mae.patch_size:
        raise ValueError(f"--image_size {data.image_size} must be a multiple of --patch_size {mae.patch_size}")


def run_mae_pretraining(mae: MaeArguments, data: PretrainDataArguments, train: PretrainingArguments,
                        on_step_end: Callable[[int, dict], None] | None = None) -> MaePretrainingResult:
    """Pre-train a ViT-MAE under `accelerate` and save it.

    Writes to `output_dir`: `checkpoint-{step}/`, `trainer_state.json`, `training_curves.png`, and at the end the
    `ViTMAEForPreTraining` (`save_pretrained`; `AutoModel` loads its encoder), a `ViTImageProcessor` with the view's
    statistics (grayscale mean / std on every channel) and `pretraining_summary.json`.
    """
    from transformers import ViTMAEForPreTraining

    from unip_hf.pretraining.nmi_had import build_pretraining_data, build_pretraining_optimization

    check_mae_pretraining_args(mae, data, train)
    accelerator, trackers = create_accelerator(train, {"--train_data": list(data.train_data)})
    dataset, skipped, total_batch = build_pretraining_data(data, train, accelerator)
    torch.manual_seed(train.seed)
    model = ViTMAEForPreTraining(mae_config(mae, data))
    loader, sampler, optimizer, scheduler, max_steps, learning_rate, warmup = build_pretraining_optimization(
        model, dataset, train, accelerator.num_processes)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    if trackers:
        accelerator.init_trackers("unip-pretrain-mae", config={"learning_rate": learning_rate, "max_steps": max_steps})
    accelerator.print(f"ViT-MAE {mae.hidden_size}x{mae.num_hidden_layers} blocks, patch {mae.patch_size}, "
                      f"{data.image_size} px, mask {mae.mask_ratio}: {max_steps} steps, total batch {total_batch}, "
                      f"peak lr {learning_rate:.3g}, warm-up {warmup}")

    def loss_fn(batch):
        with accelerator.autocast():
            return model(pixel_values=batch["pixel_values"]).loss

    result = train_loop(accelerator, model, optimizer, scheduler, loader, sampler, loss_fn, max_steps,
                        train.output_dir, **train.loop_options(), on_step_end=on_step_end, description="ViT-MAE",
                        run_settings={"dataset": ", ".join(str(source) for source in data.train_data),
                                      "architecture": (f"ViTMAEForPreTraining (hidden {mae.hidden_size}, "
                                                       f"{mae.num_hidden_layers} blocks, patch {mae.patch_size}, "
                                                       f"{data.image_size} px, mask ratio {mae.mask_ratio})")})
    losses = result.step_log.losses()
    accelerator.wait_for_everyone()
    summary = {"objective": "mae", "train_data": list(data.train_data), "images": len(dataset),
               "skipped_images": skipped + dataset.skipped_at_load, "steps": result.global_step,
               "total_batch_size": total_batch, "image_size": data.image_size, "mask_ratio": mae.mask_ratio,
               "first_loss": losses[0] if losses else None, "final_loss": result.final_loss}
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(train.output_dir)
        respect_umask(train.output_dir)
        processor = _vit_image_processor()(size={"height": data.image_size, "width": data.image_size},
                                           image_mean=[data.image_mean] * data.num_channels,
                                           image_std=[data.image_std] * data.num_channels)
        processor.save_pretrained(train.output_dir)
        with open(os.path.join(train.output_dir, "pretraining_summary.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        write_training_curves(train.output_dir)
    model = None  # the DDP wrapper is freed in finish_run, by every process at once, not as this returns
    finish_run(accelerator, train.output_dir)
    return MaePretrainingResult(train.output_dir, result.global_step, summary["first_loss"], summary["final_loss"],
                                losses, len(dataset), summary["skipped_images"])


def _vit_image_processor():
    """transformers' PIL-backed ViT processor (the default one wants torchvision, which this package avoids)."""
    import transformers

    return getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor


def parse_mae_pretraining_args(argv: Sequence[str] | None = None):
    """Parse command-line arguments into `(MaeArguments, PretrainDataArguments, PretrainingArguments)`."""
    return parse_recipe_args(MAE_PRETRAINING_ARGUMENTS, argv, check=check_mae_pretraining_args)


def mae_pretrain_from_arguments(arguments: tuple) -> int:
    """Run ViT-MAE pre-training on parsed and checked arguments (`unip pretrain-mae`); returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code, result = run_recipe(run_mae_pretraining, arguments)
    if result is not None:
        print(f"ViT-MAE saved to {result.output_dir}: {result.global_step} steps, loss {result.first_loss} -> "
              f"{result.final_loss}, {result.images} images ({result.skipped_images} unreadable skipped)")
    return code


__all__ = ["run_mae_pretraining"]
