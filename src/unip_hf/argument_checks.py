"""Checks of command-line and recipe arguments for the UNIP tools (Zhang et al., "UNIP", ICLR 2025), so that a value
outside its range stops a run at start with a message naming the `--argument`, its allowed range and the value.

The recipe dataclasses call `check_range`, `check_choice` and `check_model_source` from `__post_init__` (they raise
`ValueError`, which `recipe_arguments.parse_recipe_args` turns into an argparse-style `error:` with exit status 2); the
argparse sub-commands use `positive_int` / `non_negative_int` as `type=` so that argparse reports a bad value itself.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable
from typing import Any

from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

__all__: list[str] = []  # nothing here is documented API; the package's own modules import what they need


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
    """Raise `ValueError` unless `value` is a finite number in the given interval (`None` passes when `optional`).

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
        raise ValueError(f"{_flag(argument)} must be {wanted}, got {value!r}" + (f" ({note})" if note else ""))


def check_choice(argument: str, value: Any, choices: Iterable[Any], optional: bool = False) -> None:
    """Raise `ValueError` unless `value` is one of `choices` (`None` passes when `optional`)."""
    choices = tuple(choices)
    if value is None and optional:
        return
    if value not in choices:
        raise ValueError(f"{_flag(argument)} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _looks_local(value: str) -> bool:
    """Whether a model/data reference can only be a local path (no Hub id has this form)."""
    if value.startswith((".", "/", "~")) or value.count("/") > 1 or "\\" in value:
        return True
    try:
        validate_repo_id(value)
    except HFValidationError:
        return True
    return False


def check_model_source(argument: str, value: str | None, hub_file: str | None = "config.json") -> None:
    """Raise `ValueError` when `value` names a local path that does not exist, instead of letting `from_pretrained`
    report it as a Hub connection problem.

    A value that can only be a path (starts with `.`, `/` or `~`, has more than one `/`, or is no valid repository
    id) must exist. A valid repository id that is no local folder must, when the Hub is offline (`HF_HUB_OFFLINE`),
    be in the local Hub cache (`hub_file` is the file looked up; `None` skips this lookup, e.g. for data sets).
    """
    if value is None or os.path.exists(os.path.expanduser(value)):
        return
    if _looks_local(value):
        raise ValueError(f"{_flag(argument)} {value!r}: the local path does not exist (and it is not a Hub id)")
    if hub_file is None:
        return
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(value, hub_file), str):
        raise ValueError(f"{_flag(argument)} {value!r}: no such local folder, and the Hub is offline (HF_HUB_OFFLINE) "
                         f"with no cached copy of {value}; check the path or download it first")


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
