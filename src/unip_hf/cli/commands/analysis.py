"""`unip analyze-attention`: layer-wise attention patterns of a ViT and the NMI-HAD teacher layer (the work is in
`unip_hf.cli.run_analysis`, imported when the command runs)."""

from __future__ import annotations

import argparse

from unip_hf.argument_checks import check_model_source, non_negative_int, positive_int
from unip_hf.cli.commands import add_command, flags, load


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `analyze-attention` sub-command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    p = add_command(
        subparsers, "analyze-attention",
        help="layer-wise attention patterns (NMI, distance, local/hybrid/global) and the NMI-HAD teacher layer",
        description="Measure the attention patterns of every layer of a ViT on a set of images. Layers are 0-based.",
    )
    p.add_argument("model", metavar="MODEL", help="local checkpoint folder or Hub id (loaded with AutoModel)")
    p.add_argument("--images", nargs="+", required=True, metavar="DIR_OR_FILES",
                   help="image files and/or folders (searched recursively, following symbolic links)")
    p.add_argument(*flags("num_images"), type=positive_int, default=64, help="images to use, spread over the list")
    p.add_argument(*flags("image_size"), type=positive_int, default=224, help="square input side in pixels")
    p.add_argument(*flags("batch_size"), type=positive_int, default=8, help="images per forward pass")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument(*flags("map_layers"), type=non_negative_int, nargs="*", default=None,
                   help="0-based layers for attention_maps.png (default: first local, teacher, last)")
    p.add_argument(*flags("trust_remote_code"), action="store_true", help="allow remote code when loading MODEL")
    p.add_argument(*flags("no_progress"), action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_analyze_attention)


def _run_analyze_attention(args: argparse.Namespace) -> int:
    check_model_source("MODEL", args.model)  # before anything loads: a mistyped path is one line, no Hub retries
    return load("unip_hf.cli.run_analysis").command_analyze_attention(args)
