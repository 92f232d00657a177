"""Optimisation of UNIP training: AdamW parameter groups (no weight decay on biases, norms, position embeddings and
tokens), warm-up + cosine / linear / poly schedules, the learning rate scaled by the total batch, and the total-batch
check against the data size."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from unip_hf.recipe_arguments import (
    TrainingLoopArguments,
)

NO_DECAY_NAME_PATTERNS = ("bias", "norm", "position_embedding", "pos_embed", "cls_token", "register_tokens",
                          "mask_token", "distillation_token", "layer_scale", "lambda1")


def is_no_decay(name: str, parameter: torch.Tensor) -> bool:
    """Whether a parameter is excluded from weight decay (1-D tensors, biases, norms, embeddings of positions, tokens)."""
    lowered = name.lower()
    return parameter.ndim <= 1 or any(pattern in lowered for pattern in NO_DECAY_NAME_PATTERNS)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr_scale_fn: Callable[[str], float] | None = None,
    extra_no_decay: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices only, optional per-parameter learning-rate multipliers.

    Args:
        model (`nn.Module`): the model (or any module, e.g. a student plus a projection head).
        weight_decay (`float`): decay of the decayed group.
        lr_scale_fn (`Callable[[str], float]`, *optional*): maps a parameter name to a learning-rate multiplier
            (stored as `lr_scale` in the group; `create_scheduler` honours it). Used for layer-wise decay.
        extra_no_decay (`Sequence[str]`, *optional*): more name fragments excluded from decay.
    """
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = is_no_decay(name, parameter) or any(fragment in name for fragment in extra_no_decay)
        scale = float(lr_scale_fn(name)) if lr_scale_fn is not None else 1.0
        key = (no_decay, scale)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": scale}
        groups[key]["params"].append(parameter)
        groups[key]["names"].append(name)
    return list(groups.values())


def create_optimizer(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    lr_scale_fn: Callable[[str], float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, weight_decay, lr_scale_fn)`; each group starts at `learning_rate * lr_scale`.

    Args:
        model (`nn.Module`): module whose trainable parameters are optimised.
        learning_rate (`float`): peak learning rate.
        weight_decay (`float`, *optional*, defaults to 0.05): decay of weight matrices.
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.95)`): AdamW betas (the paper's).
        eps (`float`, *optional*, defaults to 1e-8): AdamW epsilon.
        lr_scale_fn (`Callable[[str], float]`, *optional*): per-parameter learning-rate multiplier.
    """
    groups = param_groups(model, weight_decay, lr_scale_fn)
    for group in groups:
        group["lr"] = learning_rate * group["lr_scale"]
        group.pop("names", None)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)


def schedule_factor(
    step: int, name: str, num_warmup_steps: int, num_training_steps: int, power: float = 1.0, min_lr_ratio: float = 0.0
) -> float:
    """Multiplier of the peak learning rate at `step` (linear warm-up, then the named decay)."""
    if num_warmup_steps > 0 and step < num_warmup_steps:
        return (step + 1) / num_warmup_steps
    if name == "constant":
        return 1.0
    span = max(1, num_training_steps - num_warmup_steps)
    progress = min(1.0, max(0.0, (step - num_warmup_steps) / span))
    if name == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif name == "linear":
        decay = 1.0 - progress
    elif name == "poly":
        decay = (1.0 - progress) ** power
    else:
        raise ValueError(f"Unknown lr_scheduler_type {name!r}; use cosine, poly, linear or constant")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def create_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    power: float = 1.0,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A warm-up + decay `LambdaLR` (one lambda per group, so `lr_scale` multipliers are kept).

    Args:
        name (`str`): `cosine`, `poly`, `linear` or `constant`.
        optimizer (`torch.optim.Optimizer`): the optimizer (its groups' initial `lr` are the peaks).
        num_warmup_steps (`int`): steps of linear warm-up from ~0 to the peak.
        num_training_steps (`int`): total optimizer steps.
        power (`float`, *optional*, defaults to 1.0): exponent of the `poly` decay.
        min_lr_ratio (`float`, *optional*, defaults to 0.0): floor of the decay as a fraction of the peak.
    """
    schedule_factor(num_warmup_steps, name, num_warmup_steps, num_training_steps, power, min_lr_ratio)  # validates

    def factor(step: int) -> float:
        return schedule_factor(step, name, num_warmup_steps, num_training_steps, power, min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor] * len(optimizer.param_groups))


def checked_total_batch(train: TrainingLoopArguments, num_processes: int, dataset_size: int, what: str,
                        hint: str) -> int:
    """The total batch (per device x processes x accumulation); a `ValueError` naming all three when it is larger
    than the `dataset_size` images of `what` ("the data set", "the training split"), ending with `hint`."""
    total = train.per_device_train_batch_size * num_processes * train.gradient_accumulation_steps
    if dataset_size < total:
        raise ValueError(
            f"The total batch ({train.per_device_train_batch_size} per device x {num_processes} process(es) x "
            f"{train.gradient_accumulation_steps} accumulation = {total}) is larger than {what} ({dataset_size} "
            f"images{hint}"
        )
    return total


def resolve_learning_rate(learning_rate: float | None, base_learning_rate: float, total_batch_size: int) -> float:
    """`learning_rate` if given, else `base_learning_rate * total_batch_size / 256` (the MAE/UNIP scaling rule)."""
    if learning_rate is not None:
        return float(learning_rate)
    return float(base_learning_rate) * total_batch_size / 256.0


def num_warmup_steps(warmup_steps: int | None, warmup_ratio: float, num_training_steps: int) -> int:
    """Explicit warm-up steps, or `warmup_ratio` of the training steps (rounded)."""
    if warmup_steps is not None:
        return int(warmup_steps)
    return int(round(warmup_ratio * num_training_steps))
