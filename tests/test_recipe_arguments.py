"""The recipes' arguments (issue 15, items 1 and 3): one definition in `unip_hf.recipe_arguments`, parsed by the
recipes and by `unip pretrain / finetune / evaluate` into the same options as `transformers.HfArgumentParser`
(compared here), `--help` showing every default and which learning rate wins, underscores with dashed aliases."""

import argparse

import pytest
from transformers import HfArgumentParser

from unip_hf import cli
from unip_hf.image_processing_unip import INFRARED_MEAN, INFRARED_STD
from unip_hf.recipe_arguments import (
    EVALUATION_ARGUMENTS,
    FINETUNING_ARGUMENTS,
    PRETRAINING_ARGUMENTS,
    FinetuningArguments,
    build_parser,
)

RECIPES = {"pretrain": PRETRAINING_ARGUMENTS, "finetune": FINETUNING_ARGUMENTS, "evaluate": EVALUATION_ARGUMENTS}


def _actions(parser: argparse.ArgumentParser) -> dict:
    return {tuple(a.option_strings): (a.dest, a.default, a.nargs, a.const, a.required, a.choices,
                                      type(a).__name__, getattr(a.type, "__name__", None))
            for a in parser._actions if a.option_strings and a.dest != "help"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_options_are_those_of_hf_argument_parser(name):
    ours, theirs = _actions(build_parser(RECIPES[name])), _actions(HfArgumentParser(list(RECIPES[name])))
    # the choice type of Literal fields is a local function in both; compare everything else
    assert ours.keys() == theirs.keys()
    for options in ours:
        assert ours[options][:-1] == theirs[options][:-1], options
        if theirs[options][-1] in ("int", "float", "str", "string_to_bool"):
            assert ours[options][-1] == theirs[options][-1], options


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_option_has_help_and_shows_its_default(name):
    parser = build_parser(RECIPES[name])
    text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings[0]} has no help text"
    assert "(default:" in text


def _subparser(name: str) -> argparse.ArgumentParser:
    action = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _help_of(parser: argparse.ArgumentParser, dest: str) -> str:
    """The help line of one option as `--help` prints it (default filled in)."""
    action = next(a for a in parser._actions if a.dest == dest and a.option_strings[0] == f"--{dest}")
    return parser._get_formatter()._expand_help(action)


def test_finetune_help_shows_the_defaults_and_which_learning_rate_wins(capsys):
    parser = _subparser("finetune")
    for dest, default in [("max_steps", "2000"), ("output_dir", "outputs/unip-finetune"),
                          ("per_device_train_batch_size", "8"), ("warmup_ratio", "0.1"),
                          ("lr_scheduler_type", "poly"), ("learning_rate", "0.0001"), ("layer_decay", "0.85"),
                          ("checkpointing_steps", "500"), ("seed", "0")]:
        assert _help_of(parser, dest).endswith(f"(default: {default})"), (dest, _help_of(parser, dest))
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "It wins over --base_learning_rate" in text
    assert "Not used by fine-tuning" in text


def test_pretrain_help_says_when_the_base_learning_rate_applies(capsys):
    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "When given it wins: --base_learning_rate is then ignored" in text
    assert "used only when --learning_rate is not given" in text
    assert "(default: 0.00015)" in text and "(default: outputs/unip-pretrain)" in text


@pytest.mark.parametrize("spelling", ["--max_steps", "--max-steps"])
def test_both_spellings_parse_for_the_recipes(spelling, tmp_path):
    args = cli.build_parser().parse_args(["finetune", spelling, "7", "--data-dir", str(tmp_path),
                                          "--no-photometric"])
    assert args.max_steps == 7 and args.data_dir == str(tmp_path) and args.photometric is False


@pytest.mark.parametrize("argv, dest, value", [
    (["analyze-attention", "M", "--images", "x", "--out", "o", "--num_images", "3"], "num_images", 3),
    (["analyze-attention", "M", "--images", "x", "--out", "o", "--num-images", "3"], "num_images", 3),
    (["convert", "a", "b", "--from", "timm", "--num_heads", "3"], "num_heads", 3),
    (["convert", "a", "b", "--from", "timm", "--num-heads", "3"], "num_heads", 3),
    (["infmix", "build", "r", "--output", "o", "--exclude_sources", "llvip"], "exclude_sources", "llvip"),
    (["infmix", "build", "r", "--output", "o", "--exclude-sources", "llvip"], "exclude_sources", "llvip"),
    (["data", "inspect", "sirst", "--max_images", "4"], "max_images", 4),
    (["data", "inspect", "sirst", "--max-images", "4"], "max_images", 4),
    (["demo", "--max-steps", "5"], "max_steps", 5),
    (["predict", "m", "x.png", "--out", "o", "--no-progress"], "no_progress", True),
    (["predict", "m", "x.png", "--out", "o", "--no_progress"], "no_progress", True),
])
def test_both_spellings_parse_for_every_command(argv, dest, value):
    assert getattr(cli.build_parser().parse_args(argv), dest) == value


def test_every_command_option_has_an_underscore_name():
    def leaves(parser, words=()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield words, parser
        for action in subs:
            for name, child in action.choices.items():
                yield from leaves(child, (*words, name))

    for words, parser in leaves(cli.build_parser()):
        for action in parser._actions:
            long = [o for o in action.option_strings if o.startswith("--")]
            dashed = [o for o in long if "-" in o[2:]]
            for option in dashed:
                assert "--" + option[2:].replace("-", "_") in long, (
                    f"unip {' '.join(words)} {option} has no underscore spelling")


def test_defaults_shared_with_the_image_processor():
    from unip_hf.recipe_arguments import PretrainDataArguments

    defaults = PretrainDataArguments.__dataclass_fields__
    assert defaults["image_mean"].default == INFRARED_MEAN and defaults["image_std"].default == INFRARED_STD


def test_a_bad_value_is_a_usage_error_naming_the_argument(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["finetune", "--data_dir", str(tmp_path), "--layer_decay", "-1"])
    assert caught.value.code == 2
    assert "layer_decay" in capsys.readouterr().err
    assert FinetuningArguments().max_steps == 2000
