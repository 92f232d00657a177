"""`unip demo`: train, evaluate, save, reload and draw a tiny UNIP segmentation model (the work is in
`unip_hf.studies.demo`, imported when the command runs)."""

from __future__ import annotations

import argparse

from unip_hf.argument_checks import check_model_source, non_negative_int, positive_int
from unip_hf.cli.commands import add_command, flags, load

#: Steps of the default demo: about a minute of wall time on 2 shared CPU cores with one torch thread (README "Set
#: up"); mIoU well above the chance level on the synthetic scenes.
DEMO_STEPS = 120


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` sub-command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    parser = add_command(
        subparsers, "demo",
        help="train, evaluate, save, reload and draw a tiny UNIP segmentation model (offline, CPU)",
        description="Synthetic thermal scenes (or --dataset/--data_dir), a tiny UNIP model trained for about a "
                    "minute, its mIoU next to the chance level, a saved checkpoint reloaded through "
                    "pipeline('image-segmentation') and a PNG of the prediction.",
    )
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument("--dataset", default=None, help="a unip_hf.data builder name (sirst, buffalo-udder, folder...)")
    parser.add_argument(*flags("data_dir"), default=None, help="the data set's folder (with --dataset)")
    parser.add_argument(*flags("max_steps"), type=positive_int, default=DEMO_STEPS,
                        help="optimizer steps (the default takes about a minute on 2 CPU cores, one thread)")
    parser.add_argument(*flags("eval_steps"), type=non_negative_int, default=None,
                        help="evaluate and save a checkpoint every N steps (default: half of --max_steps; 0: at the "
                             "end only)")
    parser.add_argument(*flags("model_name_or_path"), default="none", help="start from a UNIP checkpoint")
    parser.add_argument("--preset", default="unip-tiny", help="model size on real data from scratch")
    parser.add_argument(*flags("crop_size"), type=positive_int, default=None, help="training crop size")
    parser.add_argument(*flags("batch_size"), type=positive_int, default=8, help="images per step")
    parser.add_argument(*flags("learning_rate"), type=float, default=None, help="peak learning rate")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    if args.model_name_or_path not in (None, "", "none"):
        check_model_source("model_name_or_path", args.model_name_or_path)
    return load("unip_hf.studies.demo").command_demo(args)
