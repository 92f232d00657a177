"""`unip convert`: official UNIP / timm / transformers ViT weights -> a UnipViTModel checkpoint (the work is in
`unip_hf.convert`, imported when the command runs)."""

from __future__ import annotations

import argparse

from ..argument_checks import check_model_source, positive_int
from . import add_command, flags, load

SOURCES = ("unip", "timm", "transformers")
# The transformers `model_type`s that `--from transformers` converts (ViT, ViT-MAE, DeiT, DINOv2, and CLIP: a CLIP
# model's vision tower or a CLIP vision model). The one list, read by `unip_hf.convert` and `unip benchmark`.
TRANSFORMERS_FAMILIES = ("vit", "vit_mae", "deit", "dinov2", "clip", "clip_vision_model")


def unsupported_family(model_type: str | None) -> str | None:
    """Why a transformers checkpoint of `model_type` cannot be converted into a UnipViTModel; `None` when it can."""
    if model_type in TRANSFORMERS_FAMILIES:
        return None
    if model_type == "dinov2_with_registers":
        return ("model_type 'dinov2_with_registers' cannot be converted: UnipViTModel has a CLS token and no register "
                "tokens, and dropping the registers would change every output (use a Dinov2Model checkpoint)")
    return (f"model_type {model_type!r} cannot be converted; the transformers conversion supports "
            f"{', '.join(TRANSFORMERS_FAMILIES)}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` sub-command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    parser = add_command(
        subparsers, "convert",
        help="convert official UNIP / timm / transformers ViT weights into a UnipViTModel checkpoint",
        description="Convert weights into a UnipViTModel checkpoint (strict: every key must map). --from transformers "
                    "takes a ViT, ViT-MAE, DeiT, DINOv2 (not with registers, not SwiGLU) or CLIP (its vision tower) "
                    "folder or Hub id.",
    )
    parser.add_argument("source", help="checkpoint file (.pth/.bin/.safetensors) or transformers directory / Hub id "
                                       "(model_type " + ", ".join(TRANSFORMERS_FAMILIES) + ")")
    parser.add_argument("output", help="output directory (save_pretrained layout)")
    parser.add_argument("--from", dest="source_format", choices=SOURCES, required=True, help="source layout")
    parser.add_argument(*flags("num_heads"), type=positive_int,
                        help="heads of every block (default: standard for the width)")
    parser.add_argument(*flags("last_layer_heads"), type=int,
                        help="heads of the last block (a UNIP student: the teacher's head count)")
    parser.add_argument(*flags("num_channels"), type=int, choices=(1, 3), help="input channels of the converted model")
    parser.add_argument(*flags("ignore_prefix"), action="append", default=None,
                        help="extra key prefix to drop on purpose (repeatable)")
    parser.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    check_model_source("SOURCE", args.source, hub_file=None, folder=False)  # a checkpoint file is fine here
    return load("unip_hf.convert").command_convert(args)
