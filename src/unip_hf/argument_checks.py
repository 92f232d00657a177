"""Checks of command-line and recipe arguments for the UNIP tools (Zhang et al., "UNIP", ICLR 2025), so that a value
outside its range stops a run at start with a message naming the `--argument`, its allowed range and the value.

The recipe dataclasses call `check_range`, `check_choice` and `check_model_source` from `__post_init__` (they raise
`UsageError`, a `ValueError`: `unip` prints it as one line with exit status 2, `recipe_arguments.parse_recipe_args` as an
argparse-style `error:`); every command that loads a model calls `check_model_source` before anything heavy loads;
the argparse sub-commands use `positive_int` / `non_negative_int` as `type=` so that argparse reports a bad value
itself. Light: no torch, transformers or datasets.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable
from typing import Any

from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

from unip_hf.choices import EVAL_MODES, TASKS

__all__: list[str] = []  # nothing here is documented API; the package's own modules import what they need


class UsageError(ValueError):
    """A mistake in what the user typed (a bad path, choice or number). `unip` prints it as one line,
    `unip <command>: error: <message>`, and exits with status 2, without a traceback (`unip_hf.cli.main`)."""


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "a finite number"


def _flag(argument: str) -> str:
    """How a message names an argument: `--name` for an option, as given for a positional (`MODEL`) or a flag."""
    return argument if argument.startswith("-") or argument.isupper() else f"--{argument}"


def check_range(argument: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, optional: bool = False, note: str = "") -> None:
    """Raise `UsageError` (a `ValueError`) unless `value` is a finite number in the given interval (`None` passes when `optional`).

    Args:
        argument (`str`): the argument's name without dashes, as the user types it (`layer_decay`).
        value: the received value.
        low, high (`float`, *optional*): bounds; `None` leaves that side unbounded.
        low_open, high_open (`bool`, *optional*): exclude the bound itself.
        optional (`bool`, *optional*): accept `None` (an unset optional argument).
        note (`str`, *optional*): what the argument means or how to fix it, appended to the message.
    """
    if value is None and optional:
        return
    wanted = _interval(low, high, low_open, high_open)
    bad = not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
    if not bad:
        bad = (low is not None and (value <= low if low_open else value < low)) or (
            high is not None and (value >= high if high_open else value > high))
    if bad:
        raise UsageError(f"{_flag(argument)} must be {wanted}, got {value!r}" + (f" ({note})" if note else ""))


def check_choice(argument: str, value: Any, choices: Iterable[Any], optional: bool = False) -> None:
    """Raise `UsageError` (a `ValueError`) unless `value` is one of `choices` (`None` passes when `optional`)."""
    choices = tuple(choices)
    if value is None and optional:
        return
    if value not in choices:
        raise UsageError(f"{_flag(argument)} must be one of {', '.join(map(str, choices))}; got {value!r}")


def looks_local(value: str) -> bool:
    """Whether a model reference is meant as a local path, so that no Hub request should be made for it: it starts
    with `.`, `/` or `~`, has a backslash or more than one `/`, is no valid repository id, or its first part is an
    existing local folder (`demo_out/no-such-model` where `demo_out/` exists)."""
    if value.startswith((".", "/", "~")) or value.count("/") > 1 or "\\" in value:
        return True
    try:
        validate_repo_id(value)
    except HFValidationError:
        return True
    return os.sep in value and os.path.isdir(value.split(os.sep)[0])


def check_model_source(argument: str, value: str | None, hub_file: str | None = "config.json",
                       folder: bool = True) -> None:
    """The one check of a model / teacher / data reference before anything loads it: raise `UsageError` (naming
    the argument and the value) when it names a local path that does not exist, or a file where a folder is needed,
    instead of letting `from_pretrained` turn it into Hub retries and a connection error. A Hub id is left to the
    Hub only when it can be one.

    Args:
        argument (`str`): how the user typed the argument (`model_name_or_path`, `MODEL`).
        value (`str`, *optional*): the received value (`None` passes).
        hub_file (`str`, *optional*, defaults to `"config.json"`): for a repository id that is no local path while
            the Hub is offline (`HF_HUB_OFFLINE`), the file that must be in the local Hub cache (`None` skips this
            lookup, e.g. for data sets).
        folder (`bool`, *optional*, defaults to `True`): a local value must be a folder (a model folder with its
            config); `False` also accepts a file (a checkpoint file to convert, a manifest).
    """
    if value is None:
        return
    path = os.path.expanduser(value)
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        if folder:
            raise UsageError(f"{_flag(argument)} {value!r} is a file; give the folder that holds it (the one with "
                             f"config.json), e.g. {os.path.dirname(value) or '.'!r}")
        return
    if looks_local(value):
        parent = os.path.dirname(path.rstrip(os.sep))
        where = (f"{parent!r} holds no {os.path.basename(path.rstrip(os.sep))!r}; " if parent and os.path.isdir(parent)
                 else "")
        raise UsageError(f"{_flag(argument)} {value!r}: the local path does not exist ({where}a local path, so the "
                         "Hub is not asked); check the path")
    if hub_file is None:
        return
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(value, hub_file), str):
        raise UsageError(f"{_flag(argument)} {value!r}: no such local folder, and the Hub is offline (HF_HUB_OFFLINE) "
                         f"with no cached copy of {value}; check the path or download it first")


def parse_img_scale(text: str | None, crop_size: int) -> tuple[int, int]:
    """`"2048x512"` -> `(2048, 512)` (long, short side targets); empty -> `(4 * crop_size, crop_size)` (mmseg's
    2048x512 for 512 crops)."""
    if not text:
        return (4 * crop_size, crop_size)
    try:
        long_side, short_side = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--img_scale must look like 2048x512 (long x short side), got {text!r}") from None
    if min(long_side, short_side) < 1:
        raise ValueError(f"--img_scale sides must be >= 1 pixel, got {text!r}")
    return (max(long_side, short_side), min(long_side, short_side))


def check_eval_protocol(task: str, eval_mode: str, crop_size: int | None, eval_stride: int | None,
                        img_scale: str | None, irstd_threshold: float) -> None:
    """The evaluation arguments that fine-tuning and evaluation share; `ValueError` naming the first bad one."""
    check_choice("task", task, TASKS)
    check_choice("eval_mode", eval_mode, EVAL_MODES)
    check_range("crop_size", crop_size, 1, optional=True)
    check_range("eval_stride", eval_stride, 1, optional=True)
    if img_scale and img_scale.lower() != "none":
        parse_img_scale(img_scale, crop_size or 1)
    check_range("irstd_threshold", irstd_threshold, 0, 1, low_open=True, high_open=True,
                note="a probability threshold of the target class")


def _int_type(low: int, wanted: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {wanted}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer {wanted}, got {value}")
        return value

    parse.__name__ = f"integer {wanted}"
    return parse


#: argparse `type=` for counts and sizes that must be at least 1 (argparse names the option in its error).
positive_int = _int_type(1, ">= 1")
#: argparse `type=` for counts that may be 0.
non_negative_int = _int_type(0, ">= 0")


def positive_float(text: str) -> float:
    """argparse `type=` for a finite number > 0 (tolerances, thresholds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def check_multiple_of(argument: str, value: int, divisor: int, what: str) -> None:
    """Raise `ValueError` unless `value` is a multiple of `divisor`, naming the `--argument`, `what` the divisor is,
    and the nearest valid values below and above (e.g. a crop size and the model's patch size)."""
    if divisor and value % divisor:
        below, above = value // divisor * divisor, (value // divisor + 1) * divisor
        nearest = f"{below} or {above}" if below else f"{above}"
        raise ValueError(f"{_flag(argument)} {value} must be a multiple of {what}; use {nearest}")
