"""The light half of the `unip` command (UNIP, Zhang et al., ICLR 2025): one module per command group, each with
`register(subparsers)` and its `_run_<command>` handlers (the convention is written in `unip_hf.cli`).

The rule: importing a module of this package loads no torch, transformers, datasets or accelerate (nor numpy or
PIL), so that `unip --help` and every `unip X --help` start in a fraction of a second. Argument definitions live here
(or in `unip_hf.recipe_arguments` for the training recipes); each handler imports the module that does the work when
the command runs, through `load`. `tests/test_cli_startup.py` checks the rule for every registered module.
"""

from __future__ import annotations

import argparse
import importlib
import os
from types import ModuleType

from unip_hf.argument_checks import positive_int


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` that shows each option's default (unless it is unset: `None`, or `False` for a switch), as the
    training recipes' help does."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or "(default" in text or action.default in (None, False, argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def flags(name: str) -> list[str]:
    """The option strings of `name`: `--name_with_underscores` first, then its dashed alias `--name-with-underscores`
    (one argument style across `unip`, as the recipes' dataclass options)."""
    return [f"--{name}", f"--{name.replace('_', '-')}"] if "_" in name else [f"--{name}"]


def add_command(subparsers: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    """`subparsers.add_parser(name, **kwargs)` with the `unip` help formatter."""
    kwargs.setdefault("formatter_class", HelpFormatter)
    parser = subparsers.add_parser(name, **kwargs)
    parser.set_defaults(command_prog=parser.prog)  # how `unip` names the command in a one-line usage error
    return parser


#: Commands whose default is one torch thread (tiny models, where extra threads only fight other processes for
#: shared cores: `benchmarks/bench_threads.py`).
ONE_THREAD_COMMANDS = ("demo",)
#: Commands that print their thread count in the run header.
TRAINING_COMMANDS = ("demo", "pretrain", "pretrain-mae", "finetune", "evaluate", "benchmark", "ablation")

_threads: dict[str, object] = {"count": None, "source": None, "report": False}


def add_thread_option(parser: argparse.ArgumentParser, command: str) -> None:
    """`--num_threads N` on a runnable command (`unip_hf.cli.build_parser` adds it to every one). The policy, applied
    by `thread_policy`: `--num_threads` if given, else `OMP_NUM_THREADS` if set (torch reads it), else one thread
    for the commands of `ONE_THREAD_COMMANDS`, else torch's default (one per core)."""
    default = "1" if command in ONE_THREAD_COMMANDS else "torch's one per core"
    parser.add_argument(*flags("num_threads"), type=positive_int, default=None,
                        help=f"torch CPU threads (default: OMP_NUM_THREADS if set, else {default})")
    parser.set_defaults(command_name=command)


def thread_policy(args: argparse.Namespace) -> tuple[int | None, str]:
    """The torch thread count a command runs with and where it comes from (`None`: torch's default)."""
    if getattr(args, "num_threads", None):
        return int(args.num_threads), "--num_threads"
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    if getattr(args, "command_name", None) in ONE_THREAD_COMMANDS:
        return 1, f"the default of unip {args.command_name}; --num_threads N for more"
    return None, "torch's default, one per core; --num_threads N or OMP_NUM_THREADS to change it"


def set_thread_policy(args: argparse.Namespace) -> None:
    """Remember the command's thread policy; `load` applies it once torch is imported."""
    count, source = thread_policy(args)
    _threads.update(count=count, source=source, report=getattr(args, "command_name", None) in TRAINING_COMMANDS)


def load(module_name: str) -> ModuleType:
    """Import the module that does a command's work (`"unip_hf.conversion.convert"`, ...), once the command runs, after
    registering UNIP with the transformers Auto classes (which the light start of `unip` skipped), and apply the
    command's thread policy (`set_thread_policy`; printed in the run header of the training commands)."""
    import unip_hf

    unip_hf.register_auto_classes()
    module = importlib.import_module(module_name)
    import torch

    if _threads["count"]:
        torch.set_num_threads(int(_threads["count"]))
    if _threads["report"]:
        print(f"threads: {torch.get_num_threads()} torch CPU threads ({_threads['source']})", flush=True)
        _threads["report"] = False
    return module


__all__: list[str] = []  # internal to the `unip` command
