"""`unip plot RUN_DIR`: redraw a run's `training_curves.png` (loss, learning rate, evaluation metric) from its logs
(the work is in `unip_hf.training.curves`, which needs only matplotlib)."""

from __future__ import annotations

import argparse
import importlib

from unip_hf.cli.commands import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `plot` sub-command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    parser = add_command(subparsers, "plot", help="redraw training_curves.png of a pre-training or fine-tuning run",
                         description="Draw loss and learning rate per step (trainer_state.json) and the main "
                                     "evaluation metric per evaluation (eval_log.json) of a run's --output_dir. "
                                     'Needs matplotlib: pip install "unip-hf[plots]".')
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the --output_dir of a run")
    parser.add_argument("--out", default=None, help="the PNG to write (default: RUN_DIR/training_curves.png)")
    parser.set_defaults(func=_run_plot)


def _run_plot(args: argparse.Namespace) -> int:
    curves = importlib.import_module("unip_hf.training.curves")  # matplotlib only: no model code to register
    try:
        path = curves.plot_training_curves(args.run_dir, args.out)
    except (ImportError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 1
    print(f"wrote {path}")
    return 0
