"""`unip space create` and `unip space push`: a Gradio Space (live demo) for a UNIP model (the work is in
`unip_hf.deploy.space`, imported when the command runs)."""

from __future__ import annotations

import argparse

from unip_hf.argument_checks import check_model_source
from unip_hf.cli.commands import add_command, flags, load


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `unip space create` and `unip space push` to the `unip` command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    parser = add_command(subparsers, "space", help="write or push a Gradio Space (live demo) for a UNIP model",
                         description="A Gradio Space that gives a UNIP model a live demo on the Hub.")
    commands = parser.add_subparsers(dest="space_command", metavar="ACTION", required=True)
    create = add_command(commands, "create", help="write the Space folder (app.py, requirements, README, examples)")
    create.add_argument("model", metavar="MODEL_DIR_OR_HUB_ID", help="a saved UNIP model folder or a Hub id")
    create.add_argument("out_dir", metavar="OUT_DIR", help="the Space folder to write")
    create.add_argument("--title", default=None, help="Space title (default: the model's name)")
    create.add_argument("--examples", nargs="+", metavar="IMG", default=None, help="example images to copy in")
    create.add_argument("--task", default="auto", choices=("auto", "semantic", "irstd"),
                        help="irstd shows the target list and a threshold (auto: two classes = irstd)")
    create.add_argument("--license", default="apache-2.0", help="the Space's licence")
    create.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty OUT_DIR (never one that is, holds or lies inside MODEL_DIR)")
    create.add_argument(*flags("max_megapixels"), type=float, default=2.0,
                        help="the largest image the app processes (width x height, millions of pixels), checked from "
                             "the file header before decoding")
    create.set_defaults(func=_run_space_create, command_parser=create)
    push = add_command(commands, "push", help="create the Space repo and upload the folder")
    push.add_argument("folder", metavar="OUT_DIR", help="a folder written by `unip space create`")
    push.add_argument("space_id", metavar="user/space-name")
    push.add_argument("--private", action="store_true", help="create the Space as private")
    push.set_defaults(func=_run_space_push)


def _run_space_create(args: argparse.Namespace) -> int:
    check_model_source("MODEL_DIR_OR_HUB_ID", args.model)
    return load("unip_hf.deploy.space").command_space_create(args)


def _run_space_push(args: argparse.Namespace) -> int:
    return load("unip_hf.deploy.space").command_space_push(args)
