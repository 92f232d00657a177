"""`unip predict MODEL IMAGES... --out DIR`: a segmentation model on your own images (the work is in
`unip_hf.deploy.predict`, imported when the command runs)."""

from __future__ import annotations

import argparse

from unip_hf.argument_checks import check_model_source, check_range
from unip_hf.cli.commands import add_command, flags, load

RADIOMETRIC_CHOICES = ("raw", "celsius", "preview")


def _probability(text: str) -> float:
    try:
        value = float(text)
        check_range("threshold", value, 0, 1, low_open=True, high_open=True)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be a probability in (0, 1), got {text!r}") from err
    return value


def _tile_size(text: str) -> int:
    try:
        value = int(text)
        check_range("tile_size", value, 0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be 0 (no tiling) or a tile size in pixels, got {text!r}") from err
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `predict` sub-command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    parser = add_command(
        subparsers, "predict",
        help="segment your own images with a saved model: mask and overlay PNGs, targets.csv for binary models",
        description="Run a saved UNIP segmentation model on image files, folders (recursive) or glob patterns (quote "
                    "them: 'data/**/*.png'); any depth or mode (8/16-bit, float, gray, colour, palette). Writes "
                    "<name>_mask.png (class ids) and <name>_overlay.png per image into --out; for a binary "
                    "(2-class, e.g. small-target) model also targets.csv (one row per 8-connected target: image, "
                    "target id, centroid x/y, area, bounding box, max score). Unreadable files, images the processor "
                    "refuses (NaN/inf, 1-bit), float images outside [0, 1] without --intensity_range and images too "
                    "small for the model are named, skipped and counted. --out must not be or hold an input (refused "
                    "before anything loads); an --out inside an input folder is never searched.",
    )
    parser.add_argument("model", metavar="MODEL", help="a saved segmentation model folder or Hub id")
    parser.add_argument("images", metavar="IMAGES", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=_probability, default=None,
                        help="binary models: target probability above which a pixel is a target (default: the "
                             "model's saved operating point, config.target_threshold, else 0.5)")
    parser.add_argument("--tile_size", type=_tile_size, default=None,
                        help="small-target models: run the full-resolution part in tiles of this size (a multiple "
                             "of 4; 0: never; default: 512 for frames above 1 megapixel, where the tiled result is "
                             "identical to the whole-frame one)")
    parser.add_argument("--radiometric", choices=RADIOMETRIC_CHOICES, default=None,
                        help="radiometric FLIR JPEGs: raw counts, celsius (needs --intensity_range) or the preview "
                             "(default: the saved processor's, else the decoder's)")
    parser.add_argument(*flags("intensity_range"), nargs=2, type=float, metavar=("LO", "HI"), default=None,
                        help="float values mapped to 0 and 1 (e.g. -20 120 for degrees Celsius): needed by "
                             "--radiometric celsius and float images outside [0, 1] (default: the saved processor's)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(*flags("trust_remote_code"), action="store_true", help="allow remote code when loading MODEL")
    parser.add_argument(*flags("no_progress"), action="store_true", help="hide the progress bar")
    parser.set_defaults(func=_run_predict, command_parser=parser)


def _run_predict(args: argparse.Namespace) -> int:
    check_model_source("MODEL", args.model)  # a mistyped local path: one line now, not Hub retries
    return load("unip_hf.deploy.predict").command_predict(args)
