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
from types import ModuleType


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


def load(module_name: str) -> ModuleType:
    """Import the module that does a command's work (`"unip_hf.convert"`, ...), once the command runs, after
    registering UNIP with the transformers Auto classes (which the light start of `unip` skipped)."""
    import unip_hf

    unip_hf.register_auto_classes()
    return importlib.import_module(module_name)


__all__: list[str] = []  # internal to the `unip` command
