"""`unip export onnx`: a dynamic-shape ONNX graph of a UNIP segmentation model (`UnipForSemanticSegmentation` or
`UnipForSmallTargetSegmentation`), checked against PyTorch (the work is in `unip_hf.deploy.onnx_export`, imported when the
command runs; it needs the [onnx] extra)."""

from __future__ import annotations

import argparse

from unip_hf.argument_checks import check_model_source, positive_float
from unip_hf.choices import DEFAULT_OPSET, DEFAULT_TOLERANCE, INSTALL_HINT, MAX_OPSET, MIN_OPSET
from unip_hf.cli.commands import add_command, load

def opset_version(text: str) -> int:
    """argparse `type=` for `--opset`: an integer in [MIN_OPSET, MAX_OPSET] (argparse names the option, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from {MIN_OPSET} to {MAX_OPSET}, got {text!r}") from None
    if not MIN_OPSET <= value <= MAX_OPSET:
        raise argparse.ArgumentTypeError(
            f"ONNX opset {value} is not supported: give {MIN_OPSET} to {MAX_OPSET} (torch's exporter writes opset "
            f"{MIN_OPSET} for anything lower; default {DEFAULT_OPSET})")
    return value


opset_version.__name__ = "ONNX opset"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `unip export onnx` to the `unip` command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    export = add_command(subparsers, "export", help="export a UNIP model for deployment (onnx)",
                         description="Export a UNIP model for deployment.")
    formats = export.add_subparsers(dest="export_command", metavar="ACTION", required=True)
    parser = add_command(
        formats, "onnx",
        help="a UNIP segmentation model (UnipForSemanticSegmentation or UnipForSmallTargetSegmentation) as ONNX, "
             "checked with onnxruntime (needs the [onnx] extra)",
        description="unip export onnx MODEL_DIR OUT.onnx [--opset N] [--static] [--images IMG...]: export (dynamic "
                    "batch, height and width unless --static), check the logits against PyTorch with onnxruntime "
                    "(max abs difference < --tolerance), then write OUT.onnx and OUT.preprocessor.json together (a "
                    "graph that fails the check replaces nothing). unip export onnx --check OUT.onnx IMAGE "
                    "[--out overlay.png]: run one image through onnxruntime and draw the overlay. Needs "
                    f"{INSTALL_HINT}.",
    )
    parser.add_argument("source", metavar="MODEL_DIR|OUT.onnx",
                        help="the saved model (export), or the .onnx file (with --check)")
    parser.add_argument("target", metavar="OUT.onnx|IMAGE", help="the .onnx file to write, or the image (with --check)")
    parser.add_argument("--check", action="store_true", help="run IMAGE through OUT.onnx and write the overlay")
    parser.add_argument("--opset", type=opset_version, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--static", action="store_true",
                       help="batch 1 at one fixed size (the settings then resize every image to it, ignoring its "
                            "aspect ratio); default: dynamic batch, height and width, as the saved processor needs")
    shape.add_argument("--dynamic", action="store_true", help=argparse.SUPPRESS)  # the default; old command lines
    parser.add_argument("--images", nargs="+", default=None, metavar="IMG",
                        help="images to check the export on (default: two synthetic thermal scenes)")
    parser.add_argument("--tolerance", type=positive_float, default=DEFAULT_TOLERANCE,
                        help="largest accepted max-abs logit difference")
    parser.add_argument("--out", default=None, help="with --check: the overlay PNG (default: IMAGE.onnx_overlay.png)")
    parser.add_argument("--settings", default=None,
                        help="with --check: the settings file (default: OUT.preprocessor.json next to OUT.onnx)")
    parser.set_defaults(func=_run_export_onnx, command_parser=parser)


def _run_export_onnx(args: argparse.Namespace) -> int:
    if not args.check:  # with --check the source is an .onnx file, which the export module checks
        check_model_source("MODEL_DIR", args.source, hub_file=None)
    return load("unip_hf.deploy.onnx_export").command_export_onnx(args)
