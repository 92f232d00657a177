"""The recipes' arguments (issue 15, items 1 and 3): one definition in `unip_hf.recipe_arguments`, parsed by the
recipes and by `unip pretrain / finetune / evaluate` into the same options as `transformers.HfArgumentParser`
(compared here), `--help` showing every default and which learning rate wins, underscores with dashed aliases."""

import argparse

import pytest
from transformers import HfArgumentParser

from unip_hf import cli
from unip_hf.models.image_processing_unip import INFRARED_MEAN, INFRARED_STD
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


# ------------------------------------------------------------------------------ checks before the data build (issue 24)
TINY_HEADS = ('{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "decoder_hidden_size": 16, '
              '"auxiliary_channels": 8, "out_indices": [0, 1, 1, 1]}')


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from unip_hf.data import write_synthetic_dataset

    root = tmp_path_factory.mktemp("scenes")
    write_synthetic_dataset(str(root), num_train=4, num_val=2, height=40, width=48, return_dataset=False)
    return str(root)


def _finetune_argv(scenes, tmp_path, *extra):
    return ["finetune", "--model_name_or_path", "none", "--preset", "unip-tiny", "--patch_size", "8",
            "--config_overrides", TINY_HEADS, "--dataset", "folder", "--data_dir", scenes, "--img_scale", "48x40",
            "--max_steps", "1", "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize("extra, message", [
    (["--crop_size", "30"], "--crop_size 30 must be a multiple of the model's patch size 8 (a training crop is cut "
                            "into whole patches); use 24 or 32"),
    (["--crop_size", "32", "--per_device_train_batch_size", "1"],
     "--per_device_train_batch_size must be >= 2 for the UPerNet head, got 1: BatchNorm needs more than one value"),
    (["--crop_size", "32", "--train_split", "trian"],
     "--train_split 'trian': the folder data in {scenes} has no such split; available: train, val"),
    (["--crop_size", "32", "--eval_split", "nosuch"],
     "--eval_split 'nosuch': the folder data in {scenes} has no such split; available: train, val"),
], ids=["crop-not-multiple-of-patch", "batch-1-with-batchnorm", "train-split", "eval-split"])
def test_finetune_refuses_before_the_data_build(scenes, tmp_path, capsys, extra, message):
    """Guards issue 24 item 17: a crop that is not a multiple of the patch size failed at the first training step
    ("Input size 30x30 is not a multiple of the patch size 8"), a batch of 1 per device with the UPerNet head's
    BatchNorm at its first step ("Expected more than 1 value per channel when training", with one process or
    several), an unknown split after the build ('Unknown split'); each is now an argparse-style error (exit 2)
    naming the argument, before any data set is built or model made."""
    with pytest.raises(SystemExit) as caught:
        cli.main(_finetune_argv(scenes, tmp_path, *extra))
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert message.format(scenes=scenes) in err
    assert not list((tmp_path / "cache").rglob("*.arrow")) and not (tmp_path / "out").exists()


def test_crop_is_checked_against_a_checkpoint_patch_size(scenes, tmp_path):
    """The patch size of a checkpoint comes from its config.json (no weights loaded); a small-target model, which
    pads its input, and a batch of 1 for it, are not refused."""
    from unip_hf import UnipConfig, UnipViTModel
    from unip_hf.training.finetuning import check_finetuning_args
    from unip_hf.recipe_arguments import DataArguments, ModelArguments

    UnipViTModel(UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=40,
                            patch_size=10)).save_pretrained(tmp_path / "backbone")
    model = ModelArguments(model_name_or_path=str(tmp_path / "backbone"))
    train = FinetuningArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1)
    with pytest.raises(ValueError, match="--crop_size 32 must be a multiple of the model's patch size 10"):
        check_finetuning_args(model, DataArguments(data_dir=scenes, crop_size=32), train)
    with pytest.raises(ValueError, match="--per_device_train_batch_size must be >= 2"):
        check_finetuning_args(model, DataArguments(data_dir=scenes, crop_size=40), train)
    model.architecture = "small_target"
    check_finetuning_args(model, DataArguments(data_dir=scenes, crop_size=32), train)
    model.architecture, model.mode = "semantic", "linear_probe"  # a 1x1 convolution: no BatchNorm
    check_finetuning_args(model, DataArguments(data_dir=scenes, crop_size=40), train)


def test_evaluate_unknown_split_is_named_before_the_model_loads(scenes, tmp_path, capsys):
    """Guards issue 24 item 17: `unip evaluate --split nosuch` loaded the model, built the data set and then failed in
    `datasets` ('Unknown split'); it is refused first, naming the split and the available ones (the "model" here
    is an empty folder, which loading would reject with another error)."""
    (tmp_path / "model").mkdir()
    with pytest.raises(SystemExit) as caught:
        cli.main(["evaluate", "--model_name_or_path", str(tmp_path / "model"), "--dataset", "folder",
                  "--data_dir", scenes, "--split", "nosuch", "--cache_dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert f"--split 'nosuch': the folder data in {scenes} has no such split; available: train, val" in err
    assert not list((tmp_path / "cache").rglob("*.arrow"))
