"""The `unip` command of UNIP (Zhang et al., ICLR 2025): gathers the sub-commands of the feature modules, so that
`unip --help` lists everything the package can do.

Every module in `COMMAND_MODULES` follows one convention:

- it defines `register(subparsers: argparse._SubParsersAction) -> None` (documented with an `Args:` section), which
  adds its commands with `subparsers.add_parser(name, help=..., description=...)`;
- a command with actions (`unip infmix build`, `unip data inspect`) adds them with
  `add_subparsers(dest="<command>_command", metavar="ACTION", required=True)`, so a missing action is a usage error;
- each runnable (leaf) parser names its handler with `parser.set_defaults(func=_run_<command>)`, a private function
  of the same module taking the parsed `argparse.Namespace` and returning the exit status (`int`);

- the module is light: importing it loads no torch, transformers, datasets or accelerate (nor numpy or PIL); the
  handler imports the module that does the work when the command runs (`unip_hf.cli.commands.load("unip_hf.conversion.convert")`), so
  `unip --help` and every `unip X --help` start in a fraction of a second. Argument dataclasses of the training
  recipes live in the light `unip_hf.recipe_arguments`.

`main` calls `args.func(args)` and returns its status; a `unip_hf.argument_checks.UsageError` raised by a handler (a bad
path, choice or number, checked before anything heavy loads) becomes one line `unip X: error: ...` and status 2; `tests/test_cli.py` checks the convention for every module and
`tests/test_cli_startup.py` that building the parser imports none of the heavy packages."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from unip_hf import __version__
from unip_hf.argument_checks import UsageError
from unip_hf.cli.commands import add_thread_option, set_thread_policy

# Modules that define `register(subparsers)`; each adds one or more sub-commands.
COMMAND_MODULES: tuple[str, ...] = (
    "unip_hf.cli.commands.training",
    "unip_hf.cli.commands.predict",
    "unip_hf.cli.commands.plot",
    "unip_hf.cli.commands.convert",
    "unip_hf.cli.commands.analysis",
    "unip_hf.cli.commands.data",
    "unip_hf.cli.commands.demo",
    "unip_hf.cli.commands.space",
    "unip_hf.cli.commands.export",
    "unip_hf.cli.commands.benchmark",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unip", description="UNIP infrared vision tools (Hugging Face native).")
    parser.add_argument("--version", action="version", version=f"unip {__version__} (unip_hf, {_location()})")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _add_thread_options(parser, [])
    return parser


def _add_thread_options(parser: argparse.ArgumentParser, path: list[str]) -> None:
    """`--num_threads` on every runnable command (one thread policy for all: `unip_hf.cli.commands.thread_policy`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _add_thread_options(sub, [*path, name])
    if path and parser.get_default("func") is not None:
        add_thread_option(parser, path[0])


def _location() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    set_thread_policy(args)
    try:
        result = args.func(args)
    except UsageError as err:  # a mistake in what was typed: one line, status 2, no traceback
        print(f"{getattr(args, 'command_prog', parser.prog)}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None  # as argparse's own usage errors
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
