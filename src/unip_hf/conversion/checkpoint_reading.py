"""Reading weight files safely and the timm-layout ViT weights (the official UNIP checkpoints' layout) into
`UnipViTModel` (UNIP, Zhang et al., ICLR 2025): `torch.load(weights_only=True)` with the smallest allow-list, the
state dict found inside training checkpoints (DDP, EMA, teacher / student), timm keys to UNIP keys and back."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from unip_hf.models.configuration_unip import UnipConfig
from unip_hf.models.modeling_unip import UnipViTModel

logger = logging.getLogger(__name__)


# Heads of the standard ViT widths, used when a timm-layout state dict does not say (heads are not visible in shapes).
DEFAULT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


# Keys of timm / official checkpoints that are not part of the backbone (classifier heads, pooled norms, ...).
TIMM_NON_BACKBONE = ("head.", "head_dist.", "fc_norm.", "pre_logits.", "decoder", "mask_token")


class ConversionError(ValueError):
    """A state dict does not map onto the UNIP backbone (missing, unexpected or mis-shaped keys)."""


#: Classes that the checkpoints read here may hold besides tensors and plain containers: the `args` that a MAE-style
#: `save_model` (the official UNIP pre-training code) stores. Nothing else is unpickled; `weights_only=False` never is.
CHECKPOINT_ALLOWED_GLOBALS = (argparse.Namespace,)


#: File suffixes of checkpoints (a missing path with one of them is a missing file, not a Hub id).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".pkl")


#: Entries of a checkpoint that hold a state dict, in the order they are taken when `checkpoint_key` is not given.
STATE_DICT_KEYS = ("model", "state_dict", "module", "student", "teacher", "model_ema", "state_dict_ema", "ema")


#: Key prefixes of the other parts of an mmsegmentation segmenter (a timm-layout backbone sits under `backbone.`).
MMSEG_PREFIXES = ("decode_head.", "auxiliary_head.", "neck.")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The whole object stored in a `.pth`/`.bin`/`.pt` (torch pickle) or `.safetensors` file, read without running
    any code in it: `torch.load(weights_only=True)` with only `CHECKPOINT_ALLOWED_GLOBALS` allowed. Raises
    `ConversionError` naming the file for an empty, truncated or unreadable file and for a pickle that needs any
    other class (a crafted file is refused before anything in it runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}")
    size = path.stat().st_size
    if size == 0:
        raise ConversionError(f"{path}: the file is empty (0 bytes); download or copy it again")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types; re-raised with the file
            raise ConversionError(f"{path}: not a readable .safetensors file ({size} bytes; {error}); it is probably "
                                  "truncated or not a safetensors file: download or copy it again") from error
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_ALLOWED_GLOBALS)):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(error))
        if found:
            raise ConversionError(
                f"{path}: refused: the pickle needs {found.group(1)!r}, which is not a tensor, a plain container or "
                "argparse.Namespace; loading it could run code, so it is not read (convert the weights to "
                ".safetensors where you trust the file)") from error
        raise ConversionError(f"{path}: cannot read as a torch checkpoint ({str(error).splitlines()[0]})") from error
    except Exception as error:  # noqa: BLE001 - truncated zip archives, non-checkpoint files, ...
        raise ConversionError(f"{path}: cannot read as a torch checkpoint ({size} bytes; {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); it may be truncated or not a "
                              "checkpoint: download or copy it again") from error
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: holds a {type(state).__name__}, not a checkpoint dictionary")
    return state


def load_state_dict_file(path: str | os.PathLike, checkpoint_key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.bin`/`.pt` (torch pickle, weights only) or `.safetensors` file; unwrap `model`/`state_dict`
    (see `unwrap_state_dict`)."""
    return unwrap_state_dict(read_checkpoint(path), str(path), checkpoint_key)


def state_dict_entry(state: Mapping, checkpoint_key: str | None = None, where: str = "checkpoint") -> str | None:
    """The entry of a checkpoint that holds the state dict: `checkpoint_key` when given (an error naming the entries
    there are when it is absent), else the first of `STATE_DICT_KEYS` present, else `None` (a plain state dict)."""
    nested = [key for key, value in state.items() if isinstance(value, Mapping)]
    if checkpoint_key is not None:
        if not isinstance(state.get(checkpoint_key), Mapping):
            raise ConversionError(f"{where}: no state dict under {checkpoint_key!r} (entries with a dictionary: "
                                  f"{sorted(map(str, nested))})")
        return checkpoint_key
    return next((key for key in STATE_DICT_KEYS if isinstance(state.get(key), Mapping)), None)


def unwrap_state_dict(state: Mapping, where: str = "checkpoint", checkpoint_key: str | None = None
                      ) -> dict[str, torch.Tensor]:
    """Return the tensor dict inside a checkpoint: under `checkpoint_key`, or the first of `STATE_DICT_KEYS`
    (`model` of the official UNIP / MAE-style checkpoints, `state_dict`, `module`, DINO/iBOT's `student` and
    `teacher`, EMA entries), or the top level. A DistributedDataParallel `module.` prefix and a `torch.compile`
    `_orig_mod.` prefix are removed, and so is a `backbone.` prefix of a DINO/iBOT-style teacher or student (whose
    other keys are its projection `head.`). An mmsegmentation segmenter (`backbone.` with `decode_head.` ...) is
    refused with the way to convert it (`--from mmseg`)."""
    entry = state_dict_entry(state, checkpoint_key, where)
    if entry is not None:
        state = state[entry]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConversionError(f"{where}: no tensors found (top-level keys: {sorted(map(str, state))[:10]})")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    mmseg = sorted({k.split(".", 1)[0] + "." for k in tensors if k.startswith(MMSEG_PREFIXES)})
    if mmseg and any(k.startswith("backbone.") for k in tensors):
        raise ConversionError(
            f"{where} is an mmsegmentation segmenter, not a timm-layout ViT state dict: its backbone is under the "
            f"'backbone.' prefix and it also holds {', '.join(mmseg)}; convert it with --from mmseg (or --from auto)")
    if any(k.startswith("backbone.") for k in tensors) and all(k.startswith(("backbone.", "head.")) for k in tensors):
        tensors = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in tensors.items()}
    return tensors


def infer_config_from_timm(state: Mapping[str, torch.Tensor], **overrides) -> UnipConfig:
    """Build a `UnipConfig` from the shapes of a timm-layout ViT state dict.

    Width, depth, patch size, channels, image size, MLP ratio, qkv and patch biases, the norm before the blocks
    (`norm_pre`, timm's CLIP towers) and layer scale are read from the keys and shapes.
    Head counts are not visible in shapes: `num_attention_heads` defaults to the standard value for the width
    (192: 3, 384: 6, 768: 12, 1024: 16) and `last_layer_num_attention_heads` to `None`; pass them for a UNIP
    student whose last block has the teacher's head count.
    """
    required = ("patch_embed.proj.weight", "pos_embed", "cls_token")
    missing = [k for k in required if k not in state]
    if missing:
        raise ConversionError(f"not a timm-layout ViT state dict: missing {missing}")
    kernel = state["patch_embed.proj.weight"]
    hidden, channels, patch = kernel.shape[0], kernel.shape[1], kernel.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    values = {
        "hidden_size": hidden,
        "num_hidden_layers": depth,
        "num_attention_heads": DEFAULT_HEADS.get(hidden, max(1, hidden // 64)),
        "patch_size": patch,
        "num_channels": channels,
        "image_size": grid * patch,
        "mlp_ratio": mlp_hidden / hidden,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "patch_embedding_bias": "patch_embed.proj.bias" in state,
        "pre_layernorm": "norm_pre.weight" in state,  # timm's CLIP towers
        "position_embedding_type": "learned",
    }
    if "blocks.0.ls1.gamma" in state or "blocks.0.gamma_1" in state:  # timm's / BEiT-style layer scale
        values["layer_scale_init_value"] = 1.0
    values.update(overrides)
    check_head_counts(hidden, values["num_attention_heads"], values.get("last_layer_num_attention_heads"))
    return UnipConfig(**values)


def check_head_counts(width: int, heads: int, last_heads: int | None = None) -> None:
    """Raise `ConversionError` naming the option when a head count is not a positive divisor of the width read from
    the checkpoint (heads are not visible in weight shapes, so they come from the user or the defaults)."""
    divisors = [d for d in range(1, width + 1) if width % d == 0]
    for flag, value in (("--num_heads", heads), ("--last_layer_heads", last_heads)):
        if value is not None and (not isinstance(value, int) or value < 1 or width % value):
            shown = ", ".join(map(str, divisors[:12])) + (", ..." if len(divisors) > 12 else "")
            raise ConversionError(f"{flag} {value} does not divide the width {width} read from the checkpoint; "
                                  f"a head count must be one of its divisors ({shown})")


def _timm_to_unip_keys(state: Mapping[str, torch.Tensor], ignore_prefixes: Iterable[str]) -> tuple[dict, list[str]]:
    """Rename timm keys to UNIP keys; returns (renamed, dropped keys)."""
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    block_map = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attn.qkv": "attention.qkv",
        "attn.proj": "attention.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for key, value in state.items():
        if any(key.startswith(p) for p in ignore_prefixes):
            dropped.append(key)
            continue
        if key == "cls_token":
            renamed["embeddings.cls_token"] = value
        elif key == "pos_embed":
            renamed["embeddings.position_embeddings"] = value
        elif key.startswith("patch_embed.proj."):
            renamed["embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("norm."):
            renamed["layernorm." + key.split(".", 1)[1]] = value
        elif key.startswith("norm_pre."):
            renamed["embeddings.pre_layernorm." + key.split(".", 1)[1]] = value
        elif m := re.match(r"blocks\.(\d+)\.gamma_([12])$", key):  # BEiT-style layer scale (mmseg's MAE backbone)
            renamed[f"encoder.layer.{m.group(1)}.layer_scale{m.group(2)}.lambda1"] = value
        elif (m := re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$", key)) and (
            m.group(2) in block_map or m.group(2) in ("ls1", "ls2")
        ):
            index, module, kind = m.groups()
            if module in ("ls1", "ls2"):
                renamed[f"encoder.layer.{index}.layer_scale{module[-1]}.lambda1"] = value
            else:
                renamed[f"encoder.layer.{index}.{block_map[module]}.{kind}"] = value
        else:
            renamed[key] = value  # left as is: reported as unexpected by the strict load
    return renamed, dropped


def unip_to_timm_key(key: str) -> str | None:
    """The timm / official-UNIP name of a `UnipViTModel` state-dict key (the inverse of the timm conversion); `None`
    for the saved head-count buffers (`head_index`), which the timm layout does not store."""
    if key.endswith(".head_index"):
        return None
    fixed = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed"}
    if key in fixed:
        return fixed[key]
    for ours, theirs in (("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
                         ("embeddings.pre_layernorm.", "norm_pre."), ("layernorm.", "norm.")):
        if key.startswith(ours):
            return theirs + key[len(ours):]
    if m := re.fullmatch(r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", key):
        return f"blocks.{m.group(1)}.ls{m.group(2)}.gamma"
    if m := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", key):
        return f"blocks.{m.group(1)}." + m.group(2).replace("attention.", "attn.", 1)
    raise ConversionError(f"{key}: no timm-layout name for this UnipViTModel key")


def to_timm_state_dict(model: UnipViTModel) -> dict[str, torch.Tensor]:
    """A `UnipViTModel`'s weights under timm / official-UNIP key names (what `convert_timm_state_dict` reads)."""
    return {name: value.detach().clone() for key, value in model.state_dict().items()
            if (name := unip_to_timm_key(key)) is not None}


def check_finite(state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Raise `ConversionError` naming every floating-point tensor of `state` that holds NaN or infinite values (a
    model converted from them would output NaN without saying why)."""
    bad = []
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
            bad.append(f"{key} ({nan} NaN, {inf} inf of {value.numel()})")
    if bad:
        raise ConversionError(f"{where}: {len(bad)} tensor(s) hold NaN or infinite values, refusing to convert: "
                              + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))


def load_into_unip(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """Strictly load a UNIP-keyed state dict into `model`.

    Adapts what has an unambiguous meaning (a 3-channel patch kernel into a 1-channel model: summed over the colour
    axis, as timm does) and raises `ConversionError` listing every missing, unexpected or mis-shaped key otherwise.
    """
    state = dict(state)
    check_finite(state)
    target = model.state_dict()
    for kernel_key in [key for key in target if key.endswith("embeddings.patch_embeddings.projection.weight")]:
        if kernel_key in state and state[kernel_key].shape[1] == 3 and target[kernel_key].shape[1] == 1:
            state[kernel_key] = state[kernel_key].sum(dim=1, keepdim=True)
    # the saved head counts are ours to fill: the source format has none
    for key in target:
        if key.endswith(".head_index") and key not in state:
            state[key] = target[key]
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in set(state) & set(target)
        if state[k].shape != target[k].shape
    )
    if missing or unexpected or mismatched:
        lines = []
        if missing:
            lines.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            lines.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
        raise ConversionError(f"State dict does not match the {type(model).__name__}:\n  " + "\n  ".join(lines))
    model.load_state_dict(state, strict=True)
    return model


def convert_timm_state_dict(
    state: Mapping[str, torch.Tensor],
    config: UnipConfig | None = None,
    ignore_prefixes: Iterable[str] = TIMM_NON_BACKBONE,
    **config_overrides,
) -> UnipViTModel:
    """Convert an official UNIP or timm ViT state dict (timm key layout) into a `UnipViTModel`.

    Args:
        state (`Mapping[str, torch.Tensor]`): the state dict (already unwrapped from `model`/`state_dict`).
        config (`UnipConfig`, *optional*): target configuration; inferred from the shapes when omitted.
        ignore_prefixes (`Iterable[str]`): key prefixes that are not part of the backbone and are dropped on purpose
            (classifier heads, MAE decoders, ...). Anything else that does not map is an error.
        **config_overrides: fields for the inferred configuration, typically `num_attention_heads`,
            `last_layer_num_attention_heads` (a UNIP student's last block has the teacher's head count) or
            `num_channels=1`.
    """
    state = unwrap_state_dict(state)
    config = config or infer_config_from_timm(state, **config_overrides)
    renamed, dropped = _timm_to_unip_keys(state, tuple(ignore_prefixes))
    if dropped:
        logger.info("Dropped %d non-backbone keys: %s", len(dropped), sorted(dropped)[:20])
    return load_into_unip(UnipViTModel(config), renamed).eval()


__all__ = ["convert_timm_state_dict"]
