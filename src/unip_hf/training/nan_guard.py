"""The NaN guard of UNIP training: a non-finite loss, weight or optimizer state stops the run naming the last good
checkpoint, and nothing non-finite is ever saved."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class NonFiniteLossError(RuntimeError):
    """Raised when the loss is NaN or infinite; the message names the last good checkpoint."""


class NonFiniteStateError(NonFiniteLossError):
    """Raised when the parameters or the optimizer state became NaN/inf (the loss may still have been finite); nothing
    non-finite is ever written to a checkpoint."""


def _resume_hint(last_checkpoint: str | None) -> str:
    if last_checkpoint:
        return f"the last good checkpoint is {last_checkpoint} (resume with --resume_from_checkpoint {last_checkpoint})"
    return "no checkpoint was saved yet"


def check_finite(value: float, step: int, last_checkpoint: str | None = None) -> None:
    """Raise `NonFiniteLossError` if `value` is NaN/inf, naming the step and the last good checkpoint."""
    if math.isfinite(value):
        return
    raise NonFiniteLossError(
        f"Loss became {value} at optimizer step {step}; training stopped without saving this state "
        f"({_resume_hint(last_checkpoint)}). Lower the learning rate, use fp32/bf16 instead of fp16, or check the data."
    )


def all_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor (on the tensors' device, no host sync): whether every floating tensor is free of NaN/inf.
    One fused max-abs reduction per device (`torch._foreach_norm(..., inf)`; NaN and inf propagate through it)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        if tensor.is_floating_point() and tensor.numel():
            by_device.setdefault(tensor.device, []).append(tensor.detach())
    flags = []
    for device, group in by_device.items():
        try:
            norms = torch._foreach_norm(group, math.inf)
        except (RuntimeError, TypeError, NotImplementedError):  # dtypes the fused kernel does not take
            norms = [t.abs().amax() for t in group]
        flags.append(torch.stack([n.float() for n in norms]).isfinite().all())
    if not flags:
        return torch.tensor(True)
    return flags[0] if len(flags) == 1 else torch.stack([flag.cpu() for flag in flags]).all()
