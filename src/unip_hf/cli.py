"""The `unip` command of UNIP (Zhang et al., ICLR 2025): gathers the sub-commands of the feature modules, so that
`unip --help` lists everything the package can do.

Every module in `COMMAND_MODULES` follows one convention:

- it defines `register(subparsers: argparse._SubParsersAction) -> None` (documented with an `Args:` section), which
  adds its commands with `subparsers.add_parser(name, help=..., description=...)`;
- a command with actions (`unip infmix build`, `unip data inspect`) adds them with
  `add_subparsers(dest="<command>_command", metavar="ACTION", required=True)`, so a missing action is a usage error;
- each runnable (leaf) parser names its handler with `parser.set_defaults(func=_run_<command>)`, a private function
  of the same module taking the parsed `argparse.Namespace` and returning the exit status (`int`);

`main` calls `args.func(args)` and returns its status; `tests/test_cli.py` checks the convention for every module."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define `register(subparsers)`; each adds one or more sub-commands.
COMMAND_MODULES: tuple[str, ...] = (
    "unip_hf.convert",
    "unip_hf.analysis_commands",
    "unip_hf.data.commands",
    "unip_hf.demo",
    "unip_hf.space",
    "unip_hf.onnx_export",
    "unip_hf.benchmark",
    "unip_hf.ablation",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unip", description="UNIP infrared vision tools (Hugging Face native).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
