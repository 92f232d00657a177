"""Tests of the `unip` command (`unip_hf.cli`): every sub-command module follows the one registration convention
written in the `cli` module docstring (typed `register(subparsers)`, `set_defaults(func=_run_<command>)`, handlers
returning the exit status, actions required)."""

import argparse
import importlib
import inspect

import pytest

from unip_hf import cli


def _leaf_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command words, parser) of every parser that has no sub-commands of its own."""
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not actions:
        yield prefix, parser
        return
    for action in actions:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, (*prefix, name))


@pytest.mark.parametrize("module_name", cli.COMMAND_MODULES)
def test_register_has_the_one_signature(module_name):
    register = importlib.import_module(module_name).register
    signature = inspect.signature(register)
    assert list(signature.parameters) == ["subparsers"]
    assert signature.parameters["subparsers"].annotation in ("argparse._SubParsersAction", argparse._SubParsersAction)
    assert signature.return_annotation in ("None", None)
    assert "Args:" in (register.__doc__ or "")


def test_every_command_sets_a_private_handler_returning_the_exit_status():
    leaves = list(_leaf_parsers(cli.build_parser()))
    commands = {" ".join(words) for words, _ in leaves}
    assert {"convert", "analyze-attention", "infmix build", "data inspect", "demo", "pretrain", "finetune", "evaluate",
            "predict", "plot"} <= commands
    for words, parser in leaves:
        handler = parser.get_default("func")
        assert callable(handler), f"`unip {' '.join(words)}` sets no handler with set_defaults(func=...)"
        assert handler.__name__ == "_run_" + "_".join(words).replace("-", "_"), handler.__name__
        assert handler.__module__ in cli.COMMAND_MODULES
        signature = inspect.signature(handler)
        assert list(signature.parameters) == ["args"]
        assert signature.return_annotation in ("int", int)


@pytest.mark.parametrize("group", ["infmix", "data"])
def test_a_command_without_its_action_is_a_usage_error(group, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([group])
    assert exit_info.value.code == 2
    assert "ACTION" in capsys.readouterr().err


def test_no_command_prints_help():
    assert cli.main([]) == 2
