"""`unip convert`: official UNIP / timm / transformers ViT weights -> a UnipViTModel checkpoint, mmsegmentation UNIP
segmenters -> a UnipForSemanticSegmentation checkpoint (the work is in
`unip_hf.conversion.convert`, imported when the command runs)."""

from __future__ import annotations

import argparse

from unip_hf.argument_checks import check_model_source, positive_int
from unip_hf.choices import CONVERT_SOURCES, TRANSFORMERS_FAMILIES
from unip_hf.cli.commands import add_command, flags, load

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` sub-command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    parser = add_command(
        subparsers, "convert",
        help="convert official UNIP / timm / transformers ViT weights (or an mmseg UNIP segmenter) into a UNIP checkpoint",
        description="Convert weights into a UnipViTModel checkpoint, or an mmseg UPerNet segmenter into a "
                    "UnipForSemanticSegmentation checkpoint (strict: every key must map), with a model card naming "
                    "the source and its licence. --from auto recognises the layout. --from transformers takes a ViT, "
                    "ViT-MAE, DeiT, DINOv2 (not with registers, not SwiGLU) or CLIP (its vision tower) folder or Hub "
                    "id. Checkpoints are read with weights_only=True (only argparse.Namespace allowed).",
    )
    parser.add_argument("source", help="checkpoint file (.pth/.bin/.safetensors), mmseg checkpoint, or transformers "
                                       "directory / Hub id (model_type " + ", ".join(TRANSFORMERS_FAMILIES) + ")")
    parser.add_argument("output", help="output directory (save_pretrained layout); must be new or empty unless "
                                       "--overwrite")
    parser.add_argument("--from", dest="source_format", choices=CONVERT_SOURCES, default="auto",
                        help="source layout: unip (official UNIP pre-training .pth), timm, mmseg (an mmsegmentation "
                             "0.x UPerNet segmenter -> UnipForSemanticSegmentation), transformers; auto recognises "
                             "it and says which it chose")
    parser.add_argument(*flags("num_heads"), type=positive_int,
                        help="heads of every block (default: mmseg meta config, else standard for the width)")
    parser.add_argument(*flags("last_layer_heads"), type=positive_int,
                        help="heads of the last block (a UNIP student: the teacher's head count; official "
                             "checkpoints: their args.last_heads)")
    parser.add_argument(*flags("num_channels"), type=int, choices=(1, 3), help="input channels of the converted model")
    parser.add_argument(*flags("ignore_prefix"), action="append", default=None,
                        help="extra key prefix to drop on purpose (repeatable)")
    parser.add_argument(*flags("checkpoint_key"), default=None,
                        help="the checkpoint entry to convert (e.g. model_ema, teacher; default: the first of model, "
                             "state_dict, module, student, teacher, model_ema, state_dict_ema, ema)")
    parser.add_argument(*flags("out_indices"), type=_block_list, default=None,
                        help="mmseg: the 4 blocks the pyramid taps, e.g. 3,5,7,11 (default: meta['config'], else "
                             "LL-FPN on the last block)")
    parser.add_argument("--license", default=None,
                        help="licence of the source weights (a Hub licence id such as apache-2.0 or cc-by-nc-4.0), "
                             "written to the card; required with --push_to_hub (official UNIP: cc-by-nc-4.0)")
    parser.add_argument(*flags("push_to_hub"), default=None, metavar="REPO_ID",
                        help="push the converted folder (with its card) to this Hub repo")
    parser.add_argument("--private", action="store_true", help="with --push_to_hub: create the repo private")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty output folder (everything in it is deleted first)")
    parser.set_defaults(func=_run_convert, command_parser=parser)


def _block_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be comma-separated block indices, got {text!r}") from err
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"must name 4 blocks (one per pyramid scale), got {text!r}")
    return values


def _run_convert(args: argparse.Namespace) -> int:
    check_model_source("SOURCE", args.source, hub_file=None, folder=False)  # a checkpoint file is fine here
    module = load("unip_hf.conversion.convert")
    try:
        return module.command_convert(args)
    except (ValueError, FileNotFoundError) as err:  # ConversionError and bad files: "error: ...", exit status 2
        args.command_parser.error(str(err))
