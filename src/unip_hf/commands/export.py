"""`unip export onnx`: a dynamic-shape ONNX graph of a UNIP segmentation model, checked against PyTorch (the work is
in `unip_hf.onnx_export`, imported when the command runs; it needs the [onnx] extra)."""

from __future__ import annotations

import argparse

from ..argument_checks import check_model_source, positive_float, positive_int
from . import add_command, load

DEFAULT_OPSET = 20
#: Largest max-abs logit difference between onnxruntime and PyTorch (fp32) that an export accepts.
DEFAULT_TOLERANCE = 1e-3
INSTALL_HINT = "pip install 'unip-hf[onnx]'"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `unip export onnx` to the `unip` command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    export = add_command(subparsers, "export", help="export a UNIP model for deployment (onnx)",
                         description="Export a UNIP model for deployment.")
    formats = export.add_subparsers(dest="export_command", metavar="ACTION", required=True)
    parser = add_command(
        formats, "onnx", help="UnipForSemanticSegmentation as ONNX, checked with onnxruntime (needs the [onnx] extra)",
        description="unip export onnx MODEL_DIR OUT.onnx [--opset N] [--dynamic] [--images IMG...]: export, check "
                    "the logits against PyTorch with onnxruntime (max abs difference < --tolerance) and write "
                    "OUT.preprocessor.json. unip export onnx --check OUT.onnx IMAGE [--out overlay.png]: run one "
                    f"image through onnxruntime and draw the overlay. Needs {INSTALL_HINT}.",
    )
    parser.add_argument("source", metavar="MODEL_DIR|OUT.onnx",
                        help="the saved model (export), or the .onnx file (with --check)")
    parser.add_argument("target", metavar="OUT.onnx|IMAGE", help="the .onnx file to write, or the image (with --check)")
    parser.add_argument("--check", action="store_true", help="run IMAGE through OUT.onnx and write the overlay")
    parser.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic batch, height and width (default: batch 1 at one fixed size)")
    parser.add_argument("--images", nargs="+", default=None, metavar="IMG",
                        help="images to check the export on (default: two synthetic thermal scenes)")
    parser.add_argument("--tolerance", type=positive_float, default=DEFAULT_TOLERANCE,
                        help="largest accepted max-abs logit difference")
    parser.add_argument("--out", default=None, help="with --check: the overlay PNG (default: IMAGE.onnx_overlay.png)")
    parser.add_argument("--settings", default=None,
                        help="with --check: the settings file (default: OUT.preprocessor.json next to OUT.onnx)")
    parser.set_defaults(func=_run_export_onnx)


def _run_export_onnx(args: argparse.Namespace) -> int:
    if not args.check:  # with --check the source is an .onnx file, which the export module checks
        check_model_source("MODEL_DIR", args.source, hub_file=None)
    return load("unip_hf.onnx_export").command_export_onnx(args)
