"""`unip convert`: official UNIP / timm / transformers ViT weights -> a UnipViTModel checkpoint (the work is in
`unip_hf.convert`, imported when the command runs)."""

from __future__ import annotations

import argparse

from ..argument_checks import positive_int
from . import add_command, flags, load

SOURCES = ("unip", "timm", "transformers")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` sub-command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    parser = add_command(
        subparsers, "convert",
        help="convert official UNIP / timm / transformers ViT weights into a UnipViTModel checkpoint",
        description="Convert weights into a UnipViTModel checkpoint (strict: every key must map).",
    )
    parser.add_argument("source", help="checkpoint file (.pth/.bin/.safetensors) or transformers directory / Hub id")
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
    return load("unip_hf.convert").command_convert(args)
