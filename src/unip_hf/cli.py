"""The `unip` command. Each feature module contributes its sub-commands through a `register(subparsers)`
function; this file only gathers them, so that `unip --help` lists everything the package can do."""

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
    "unip_hf.onnx_export",
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
