"""`unip pretrain`, `unip pretrain-mae`, `unip finetune`, `unip evaluate` and `unip plot`: the training recipes as commands. The options
are the recipes' argument dataclasses (`unip_hf.recipe_arguments`, one definition for both); the work is in
`unip_hf.pretraining.nmi_had` / `finetuning` / `evaluation` / `training_curves`, imported when the command runs. The recipes
in `recipes/` stay the entry points for `accelerate launch`."""

from __future__ import annotations

import argparse

from unip_hf.recipe_arguments import (
    EVALUATION_ARGUMENTS,
    FINETUNING_ARGUMENTS,
    MAE_PRETRAINING_ARGUMENTS,
    PRETRAINING_ARGUMENTS,
    ArgumentHelpFormatter,
    add_dataclass_arguments,
    dataclasses_from_namespace,
)
from unip_hf.argument_checks import UsageError
from unip_hf.cli.commands import add_command, load

# command -> (dataclasses, module doing the work, its cross-argument check, its runner, help, description)
RECIPES = {
    "pretrain": (PRETRAINING_ARGUMENTS, "unip_hf.pretraining.nmi_had", "check_pretraining_args", "pretrain_from_arguments",
                 "NMI-HAD pre-training of a UNIP student (what recipes/pretrain.py runs)",
                 "Distil one teacher layer's attention into the last block of a UNIP student. Writes checkpoints, "
                 "trainer_state.json, training_curves.png and the student to --output_dir; "
                 "--resume_from_checkpoint latest continues a run."),
    "pretrain-mae": (MAE_PRETRAINING_ARGUMENTS, "unip_hf.pretraining.mae", "check_mae_pretraining_args",
                     "mae_pretrain_from_arguments",
                     "masked-autoencoder pre-training of a ViT-MAE teacher on your images (transformers ViTMAE)",
                     "Pre-train a transformers ViTMAEForPreTraining on image folders / InfMix (the NMI-HAD recipe's "
                     "grayscale views and training loop), to build an NMI-HAD teacher where no pre-trained one is at "
                     "hand. Writes checkpoints, trainer_state.json, training_curves.png and the model (AutoModel "
                     "loads its ViTMAEModel encoder) to --output_dir; --resume_from_checkpoint latest continues."),
    "finetune": (FINETUNING_ARGUMENTS, "unip_hf.training.finetuning", "check_finetuning_args", "finetune_from_arguments",
                 "fine-tune or linear-probe a UNIP segmentation model (what recipes/finetune.py runs)",
                 "Fine-tune (LL-FPN + UPerNet) or linear-probe a UNIP backbone on a segmentation data set, evaluate "
                 "it and keep the best model. Writes checkpoints, trainer_state.json, eval_log.json, "
                 "training_curves.png and the model to --output_dir; --resume_from_checkpoint latest continues."),
    "evaluate": (EVALUATION_ARGUMENTS, "unip_hf.evaluation.evaluator", "check_evaluation_args", "evaluate_from_arguments",
                 "score a segmentation checkpoint on a data set split (what recipes/eval_segmentation.py runs)",
                 "Evaluate a UNIP segmentation checkpoint (mIoU and per-class IoU, or IoU / nIoU / Pd / Fa for "
                 "small-target sets); writes eval_results.json and .eval_results/*.yaml."),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `unip pretrain`, `unip pretrain-mae`, `unip finetune` and `unip evaluate`.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    handlers = {"pretrain": _run_pretrain, "pretrain-mae": _run_pretrain_mae, "finetune": _run_finetune,
                "evaluate": _run_evaluate}
    for name, (types, _, _, _, help_text, description) in RECIPES.items():
        parser = add_command(subparsers, name, help=help_text, description=description,
                             formatter_class=ArgumentHelpFormatter)
        add_dataclass_arguments(parser, types)
        parser.set_defaults(func=handlers[name], command_parser=parser)


def _run_recipe(name: str, args: argparse.Namespace) -> int:
    types, module_name, check_name, runner_name = RECIPES[name][:4]
    try:
        # the dataclasses' own checks (ranges, choices, paths) are light: they run before torch or any data loads
        arguments = dataclasses_from_namespace(types, args)
        module = load(module_name)
        getattr(module, check_name)(*arguments)  # checks across the arguments (output folder, data folder, ...)
    except (ValueError, FileNotFoundError) as err:  # a user error: one line, exit status 2 (`unip_hf.cli.main`)
        raise UsageError(str(err)) from None
    return getattr(module, runner_name)(arguments)


def _run_pretrain(args: argparse.Namespace) -> int:
    return _run_recipe("pretrain", args)


def _run_pretrain_mae(args: argparse.Namespace) -> int:
    return _run_recipe("pretrain-mae", args)


def _run_finetune(args: argparse.Namespace) -> int:
    return _run_recipe("finetune", args)


def _run_evaluate(args: argparse.Namespace) -> int:
    return _run_recipe("evaluate", args)
