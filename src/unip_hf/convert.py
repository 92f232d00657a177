"""Weight conversion into UNIP models (UNIP, Zhang et al., ICLR 2025): official UNIP pre-training checkpoints and timm
ViT state dicts (timm key layout, `blocks.N.attn.qkv.weight`, ...), transformers `ViTModel`, `ViTMAEModel`,
`DeiTModel`, `Dinov2Model` and CLIP vision checkpoints into `UnipViTModel`, and mmsegmentation 0.x UPerNet segmenters
(the official UNIP fine-tuning code) into `UnipForSemanticSegmentation` (`to_mmseg_state_dict` is the inverse).
Loading is strict: every key must be used and every parameter filled. Checkpoints are read with
`torch.load(weights_only=True)`, only `argparse.Namespace` allowed besides tensors and plain containers. `convert`
recognises the layout (`auto`), `save_conversion` writes the folder with a card that names the source and its licence.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from .commands.convert import SOURCES, unsupported_family
from .configuration_unip import UnipConfig
from .hub import make_model_card, push_to_hub
from .image_processing_unip import UnipImageProcessor
from .modeling_unip import UnipForSemanticSegmentation, UnipViTModel
from .segmentation_saving import make_processor
from .vit_family import vision_config, vision_tower

logger = logging.getLogger(__name__)

# Heads of the standard ViT widths, used when a timm-layout state dict does not say (heads are not visible in shapes).
DEFAULT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# Keys of timm / official checkpoints that are not part of the backbone (classifier heads, pooled norms, ...).
TIMM_NON_BACKBONE = ("head.", "head_dist.", "fc_norm.", "pre_logits.", "decoder", "mask_token")
TRANSFORMERS_NON_BACKBONE = ("pooler.", "classifier.", "decoder.", "embeddings.mask_token", "visual_projection.")


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
    for the saved head counts, which the timm layout does not store."""
    if key.endswith(".head_count"):
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


def _transformers_to_unip_keys(
    state: Mapping[str, torch.Tensor], ignore_prefixes: Iterable[str], num_special_tokens: int
) -> tuple[dict, list[str]]:
    """Rename transformers ViT/ViTMAE/DeiT/Dinov2/CLIP-vision keys to UNIP keys, fusing query/key/value into one qkv
    projection (CLIP's class embedding and position table take UNIP's `(1, 1, C)` / `(1, N, C)` shapes)."""
    prefixes = ("vit.", "deit.", "dinov2.", "vision_model.", "model.")
    state = {next((k[len(p):] for p in prefixes if k.startswith(p)), k): v for k, v in state.items()}
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    qkv_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    # transformers 5 names (`layers.N.attention.q_proj`, `mlp.fc1`), the on-disk names of older checkpoints
    # (`encoder.layer.N.attention.attention.query`, `intermediate.dense`), DINOv2's (`norm1`, `layer_scale1.lambda1`)
    # and CLIP's (`encoder.layers.N.self_attn.q_proj`, `layer_norm1`) are all accepted
    qkv_names = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "query": "query", "key": "key", "value": "value"}
    layer_map = {
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "norm1": "norm1",
        "norm2": "norm2",
        "layer_norm1": "norm1",
        "layer_norm2": "norm2",
        "attention.o_proj": "attention.proj",
        "attention.output.dense": "attention.proj",
        "self_attn.out_proj": "attention.proj",
        "mlp.fc1": "mlp.fc1",
        "intermediate.dense": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "output.dense": "mlp.fc2",
        "layer_scale1": "layer_scale1",
        "layer_scale2": "layer_scale2",
    }
    # CLIP's embeddings and norms: (UNIP key, reshape of the value)
    clip_map = {
        "embeddings.class_embedding": ("embeddings.cls_token", lambda v: v.reshape(1, 1, -1)),
        "embeddings.patch_embedding.weight": ("embeddings.patch_embeddings.projection.weight", None),
        "embeddings.position_embedding.weight": ("embeddings.position_embeddings", lambda v: v.unsqueeze(0)),
        "pre_layrnorm.weight": ("embeddings.pre_layernorm.weight", None),
        "pre_layrnorm.bias": ("embeddings.pre_layernorm.bias", None),
        "post_layernorm.weight": ("layernorm.weight", None),
        "post_layernorm.bias": ("layernorm.bias", None),
    }
    for key, value in state.items():
        if any(key.startswith(p) for p in ignore_prefixes) or key == "embeddings.distillation_token":
            dropped.append(key)
            continue
        block = re.match(r"(?:encoder\.layers?|layers)\.(\d+)\.(.+)\.(weight|bias|lambda1)$", key)
        if key == "embeddings.position_embeddings":
            if num_special_tokens > 1:  # DeiT: keep the CLS position, drop the distillation token's
                value = torch.cat([value[:, :1], value[:, num_special_tokens:]], dim=1)
            renamed[key] = value
        elif key in clip_map:
            name, reshape = clip_map[key]
            renamed[name] = reshape(value) if reshape else value
        elif key == "embeddings.cls_token" or key.startswith(("embeddings.patch_embeddings.projection.", "layernorm.")):
            renamed[key] = value
        elif block and (qkv := re.fullmatch(
                r"(?:attention|self_attn)\.(?:attention\.)?(q_proj|k_proj|v_proj|query|key|value)", block.group(2))):
            index, kind = block.group(1), block.group(3)
            qkv_parts.setdefault((index, kind), {})[qkv_names[qkv.group(1)]] = value
        elif block and block.group(2) in layer_map:
            index, module, kind = block.groups()
            renamed[f"encoder.layer.{index}.{layer_map[module]}.{kind}"] = value
        else:
            renamed[key] = value
    for (index, kind), parts in qkv_parts.items():
        if set(parts) != {"query", "key", "value"}:
            raise ConversionError(f"layer {index}: incomplete query/key/value {kind} (found {sorted(parts)})")
        renamed[f"encoder.layer.{index}.attention.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    return renamed, dropped


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
        if key.endswith(".head_count") and key not in state:
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


def unip_config_from_transformers(cfg, num_channels: int | None = None) -> UnipConfig:
    """The `UnipConfig` of a transformers vision config of one of `commands.convert.TRANSFORMERS_FAMILIES` (for CLIP: its vision
    config): sizes, activation, norms, and the family's options (DINOv2: layer scale; CLIP vision: no patch bias,
    `pre_layernorm`, `layernorm_pooled_only`). Raises `ConversionError` for what UNIP cannot represent (DINOv2's
    SwiGLU MLP, non-square sizes)."""
    model_type = getattr(cfg, "model_type", "")
    if getattr(cfg, "use_swiglu_ffn", False):
        raise ConversionError(f"{model_type}: use_swiglu_ffn=True (a SwiGLU MLP, as DINOv2 ViT-g) cannot be converted: "
                              "UnipViTModel's MLP is fc1 -> activation -> fc2")
    sizes = {}
    for name in ("image_size", "patch_size"):
        value = getattr(cfg, name)
        if not isinstance(value, int):
            if len(set(value)) != 1:
                raise ConversionError(f"{model_type}: {name}={value} is not square; UnipViTModel needs a square {name}")
            value = value[0]
        sizes[name] = int(value)
    hidden = cfg.hidden_size
    intermediate = getattr(cfg, "intermediate_size", None)
    fields = dict(
        **sizes,
        num_channels=num_channels or cfg.num_channels,
        hidden_size=hidden,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        mlp_ratio=intermediate / hidden if intermediate else float(cfg.mlp_ratio),
        hidden_act=cfg.hidden_act,
        qkv_bias=getattr(cfg, "qkv_bias", True),
        layer_norm_eps=cfg.layer_norm_eps,
        position_embedding_type="learned",
    )
    if model_type == "dinov2":
        fields["layer_scale_init_value"] = float(cfg.layerscale_value)
    if model_type == "clip_vision_model":
        fields.update(patch_embedding_bias=False, pre_layernorm=True, layernorm_pooled_only=True)
    return UnipConfig(**fields)


def convert_transformers_model(
    source: str | os.PathLike | torch.nn.Module,
    num_channels: int | None = None,
    ignore_prefixes: Iterable[str] = TRANSFORMERS_NON_BACKBONE,
) -> UnipViTModel:
    """Convert a transformers `ViTModel`, `ViTMAEModel`, `DeiTModel`, `Dinov2Model`, `CLIPVisionModel` or `CLIPModel`
    (its vision tower) into a `UnipViTModel` (instance or checkpoint directory/id; the families of
    `commands.convert.TRANSFORMERS_FAMILIES`).

    The converted model computes the same `last_hidden_state` as the source (for ViTMAE: with masking disabled;
    for DeiT: without the distillation token, which UNIP has no slot for; for DINOv2: without the mask token, used
    only in pre-training; for CLIP: the raw output of the last block, the final norm on the pooled CLS token only,
    as in `CLIPVisionModel`). Position embeddings are interpolated bicubically at other sizes, as transformers'
    `Dinov2Model` and CLIP (`interpolate_pos_encoding=True`) do. Dinov2 with registers and SwiGLU MLPs are refused.
    """
    if isinstance(source, torch.nn.Module):
        model = source
    else:
        config = AutoConfig.from_pretrained(str(source))
        reason = unsupported_family(getattr(config, "model_type", None))
        if reason:
            raise ConversionError(f"{source}: {reason}")
        model = AutoModel.from_pretrained(str(source), config=config)
    reason = unsupported_family(getattr(model.config, "model_type", None))
    if reason:
        raise ConversionError(reason)
    tower = vision_tower(model)  # CLIPModel: its vision model
    config = unip_config_from_transformers(vision_config(model.config), num_channels)
    special = 2 if model.config.model_type == "deit" else 1
    renamed, dropped = _transformers_to_unip_keys(tower.state_dict(), tuple(ignore_prefixes), special)
    if dropped:
        logger.info("Dropped %d non-backbone keys: %s", len(dropped), sorted(dropped)[:20])
    return load_into_unip(UnipViTModel(config), renamed).eval()


# ---------------------------------------------------------------------------------------------------------------------
# mmsegmentation 0.x segmenters (the official UNIP fine-tuning code): backbone.* (timm-layout ViT, with the feature
# pyramid ops fpn1..fpn4 inside the backbone, or under neck.*), decode_head.* (UPerHead), auxiliary_head.* (FCNHead)
# ---------------------------------------------------------------------------------------------------------------------

#: mmcv's ConvModule names its parts; `UnipConvModule` is a Sequential (0: conv, 1: batch norm, 2: ReLU).
_CONV_MODULE_PARTS = {"0": "conv", "1": "bn"}
_CONV_MODULE_NAMES = {"conv": "0", "bn": "1"}
#: What the official UNIP backbone and ours cannot share: relative position bias (BEiT-style, per block or shared).
_MMSEG_UNSUPPORTED = {
    "relative_position_bias_table": "relative position bias (use_rel_pos_bias / use_shared_rel_pos_bias): "
                                    "UnipViTModel has absolute position embeddings only",
    "relative_position_index": "relative position bias (use_rel_pos_bias / use_shared_rel_pos_bias): "
                               "UnipViTModel has absolute position embeddings only",
}


def mmseg_key(key: str) -> str | None:
    """The mmsegmentation 0.x name of a `UnipForSemanticSegmentation` state-dict key, as the official UNIP code lays a
    segmenter out (`backbone.` timm-layout ViT with `fpn1`..`fpn4` inside it, `decode_head.` UPerHead,
    `auxiliary_head.` FCNHead, mmcv ConvModule `conv`/`bn` parts); `None` for what mmseg does not store (the saved
    head counts)."""
    if key.startswith("unip."):
        name = unip_to_timm_key(key[len("unip."):])
        return None if name is None else "backbone." + name
    if m := re.fullmatch(r"neck\.fpn2\.(weight|bias)", key):
        return f"backbone.fpn2.0.{m.group(1)}"
    if key.startswith("neck.fpn"):
        return "backbone." + key[len("neck."):]
    rules = (
        (r"decode_head\.psp\.stages\.(\d+)\.1\.([01])\.(.+)", lambda m: f"decode_head.psp_modules.{m[1]}.1.{_CONV_MODULE_PARTS[m[2]]}.{m[3]}"),
        (r"decode_head\.(bottleneck|fpn_bottleneck)\.([01])\.(.+)", lambda m: f"decode_head.{m[1]}.{_CONV_MODULE_PARTS[m[2]]}.{m[3]}"),
        (r"decode_head\.(lateral_convs|fpn_convs)\.(\d+)\.([01])\.(.+)", lambda m: f"decode_head.{m[1]}.{m[2]}.{_CONV_MODULE_PARTS[m[3]]}.{m[4]}"),
        (r"(decode_head|auxiliary_head)\.classifier\.(.+)", lambda m: f"{m[1]}.conv_seg.{m[2]}"),
        (r"auxiliary_head\.conv\.([01])\.(.+)", lambda m: f"auxiliary_head.convs.0.{_CONV_MODULE_PARTS[m[1]]}.{m[2]}"),
    )
    for pattern, name in rules:
        if m := re.fullmatch(pattern, key):
            return name(m)
    raise ConversionError(f"{key}: no mmsegmentation name for this UnipForSemanticSegmentation key")


def to_mmseg_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A `UnipForSemanticSegmentation` (LL-FPN or multi-level FPN with UPerNet) under mmsegmentation 0.x key names:
    every key, as the official UNIP segmentation code names it (the inverse of `convert_mmseg_state_dict`)."""
    if getattr(model.config, "decode_head", None) == "linear_probe":
        raise ConversionError("a linear probe has no mmsegmentation UPerNet layout; only ll_fpn and multilevel_fpn")
    return {name: value.detach().clone() for key, value in model.state_dict().items()
            if (name := mmseg_key(key)) is not None}


def to_mmseg_checkpoint(model: torch.nn.Module) -> dict[str, Any]:
    """An mmsegmentation 0.x checkpoint of a `UnipForSemanticSegmentation`: `{'meta': {CLASSES, PALETTE, config},
    'state_dict': to_mmseg_state_dict(model), 'optimizer': {}}`; `meta['config']` is config text with the settings
    that weights do not show (`num_heads`, `out_indices`, `pool_scales`), as mmseg stores its config's text."""
    config = model.config
    labels = [config.id2label[i] for i in range(config.num_labels)]
    indices = [config.num_hidden_layers - 1] * 4 if config.decode_head == "ll_fpn" else config.feature_indices
    text = (f"model = dict(\n    type='EncoderDecoder',\n    backbone=dict(\n        type='MAE',\n"
            f"        num_heads={config.num_attention_heads},\n"
            + (f"        last_layer_num_heads={config.last_block_heads},\n"
               if config.last_block_heads != config.num_attention_heads else "")
            + f"        out_indices={indices},\n        use_norm=False),\n"
            f"    decode_head=dict(type='UPerHead', pool_scales={tuple(config.pool_scales)}, "
            f"num_classes={config.num_labels}))\n")
    meta = {"CLASSES": tuple(labels), "config": text, "mmcv_version": "1.3.0"}
    palette = getattr(config, "palette", None)
    if palette:
        meta["PALETTE"] = [list(colour) for colour in palette]
    return {"meta": meta, "state_dict": to_mmseg_state_dict(model), "optimizer": {}}


def parse_mmseg_config(text: str | None) -> dict[str, Any]:
    """The settings weights do not show, read (by pattern, nothing is executed) from the config text an mmseg 0.x
    checkpoint keeps in `meta['config']`: the backbone's `num_heads`, `out_indices`, `use_norm`, the decode head's
    `pool_scales`, `img_norm_cfg`'s mean/std and the test `img_scale`. Missing ones are left out."""
    found: dict[str, Any] = {}
    if not isinstance(text, str):
        return found

    def numbers(group: str) -> list[float]:
        return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", group)]

    if m := re.search(r"\bnum_heads\s*=\s*(\d+)", text):
        found["num_heads"] = int(m.group(1))
    if m := re.search(r"\blast_layer_num_heads\s*=\s*(\d+)", text):  # ours: a distilled last block's heads
        found["last_layer_num_heads"] = int(m.group(1))
    if m := re.search(r"\bout_indices\s*=\s*[\[(]([^\])]*)[\])]", text):
        found["out_indices"] = [int(x) for x in numbers(m.group(1))]
    if m := re.search(r"\buse_norm\s*=\s*(True|False)", text):
        found["use_norm"] = m.group(1) == "True"
    if m := re.search(r"\bpool_scales\s*=\s*[\[(]([^\])]*)[\])]", text):
        found["pool_scales"] = [int(x) for x in numbers(m.group(1))]
    if m := re.search(r"img_norm_cfg\s*=\s*dict\(\s*mean\s*=\s*\[([^\]]*)\]\s*,\s*std\s*=\s*\[([^\]]*)\]", text):
        found["mean"], found["std"] = numbers(m.group(1)), numbers(m.group(2))
    if m := re.search(r"MultiScaleFlipAug['\"]?\s*,\s*img_scale\s*=\s*\((\d+)\s*,\s*(\d+)\)", text):
        found["img_scale"] = (int(m.group(1)), int(m.group(2)))
    return found


def is_mmseg_checkpoint(state: Mapping) -> bool:
    """Whether a checkpoint is an mmsegmentation segmenter: a `state_dict` (or top level) with `backbone.` keys and a
    `decode_head.`."""
    inner = state.get("state_dict") if isinstance(state.get("state_dict"), Mapping) else state
    keys = [k[len("module."):] if k.startswith("module.") else k for k in inner if isinstance(k, str)]
    return any(k.startswith("backbone.") for k in keys) and any(k.startswith("decode_head.") for k in keys)


def convert_mmseg_state_dict(
    checkpoint: Mapping,
    where: str = "checkpoint",
    out_indices: Sequence[int] | None = None,
    **config_overrides,
) -> tuple[torch.nn.Module, list[str]]:
    """Convert an mmsegmentation 0.x UNIP segmenter (`{'meta', 'state_dict', 'optimizer'}`, or its state dict) into a
    `UnipForSemanticSegmentation`; returns `(model, notes)`. Strict: every key is mapped or named in the error.

    What weights show is read from them: the backbone (as `infer_config_from_timm`), the classes (`conv_seg`), the
    decoder and auxiliary channels, the number of pooling scales. What they do not show comes from
    `meta['config']` (`parse_mmseg_config`: `num_heads`, `out_indices`, `pool_scales`), else from
    `config_overrides` / `out_indices`, else the defaults (LL-FPN, pool scales 1, 2, 3, 6), said in the notes.
    Class names come from `meta['CLASSES']`, colours from `meta['PALETTE']`.
    """
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), Mapping) else {}
    state = checkpoint["state_dict"] if isinstance(checkpoint.get("state_dict"), Mapping) else checkpoint
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    notes: list[str] = []
    # the pyramid ops: inside the backbone (official UNIP) or under neck.; fpn2 a Sequential or a bare ConvTranspose
    normalised = {}
    for key, value in state.items():
        key = re.sub(r"^neck\.(fpn\d)\.", r"backbone.\1.", key)
        key = re.sub(r"^backbone\.fpn2\.(weight|bias)$", r"backbone.fpn2.0.\1", key)
        normalised[key] = value
    state = normalised
    check_finite(state, where)
    unsupported = sorted({reason for key in state for name, reason in _MMSEG_UNSUPPORTED.items() if name in key})
    if unsupported:
        keys = [key for key in state if any(name in key for name in _MMSEG_UNSUPPORTED)]
        raise ConversionError(f"{where}: cannot convert {'; '.join(unsupported)} ({len(keys)} keys, e.g. {keys[0]})")
    if "backbone.fpn1.0.weight" in state and "backbone.fpn1.1.weight" not in state:
        raise ConversionError(f"{where}: its pyramid is the official patch-8 variant (fpn1 a single x2 transposed "
                              "convolution, fpn3/fpn4 pooling); UnipFeaturePyramid has the patch-16 ops (x4, x2, "
                              "identity, /2)")
    for required in ("decode_head.conv_seg.weight", "decode_head.psp_modules.0.1.conv.weight"):
        if required not in state:
            raise ConversionError(f"{where}: no {required}: not an mmseg UPerNet (UPerHead) segmenter")
    settings = parse_mmseg_config(meta.get("config"))
    if settings.get("use_norm"):
        raise ConversionError(f"{where}: its config has use_norm=True (the final norm on every tapped map); "
                              "UnipForSemanticSegmentation's pyramids take the raw block outputs")
    backbone = {k[len("backbone."):]: v for k, v in state.items()
                if k.startswith("backbone.") and not re.match(r"backbone\.fpn\d\.", k)}
    if "num_heads" in settings and "num_attention_heads" not in config_overrides:
        config_overrides["num_attention_heads"] = settings["num_heads"]
        notes.append(f"heads {settings['num_heads']} (every block) from meta['config']")
    elif "num_attention_heads" not in config_overrides:
        notes.append("heads not recorded in meta['config']: the standard count for the width (--num_heads to set)")
    if "last_layer_num_heads" in settings and "last_layer_num_attention_heads" not in config_overrides:
        config_overrides["last_layer_num_attention_heads"] = settings["last_layer_num_heads"]
        notes.append(f"last block heads {settings['last_layer_num_heads']} from meta['config']")
    base = infer_config_from_timm(backbone, **config_overrides)
    depth = base.num_hidden_layers
    indices = list(out_indices) if out_indices is not None else settings.get("out_indices")
    if indices is None:
        indices = [depth - 1] * 4
        notes.append("out_indices not recorded in meta['config']: assumed LL-FPN (--out_indices to set)")
    indices = [i % depth for i in indices]
    if len(indices) != 4:
        raise ConversionError(f"{where}: out_indices {indices}: the UPerNet pyramid takes 4 maps")
    decode_head = "ll_fpn" if indices == [depth - 1] * 4 else "multilevel_fpn"
    scales = sorted({int(m.group(1)) for k in state if (m := re.match(r"decode_head\.psp_modules\.(\d+)\.", k))})
    pool_scales = settings.get("pool_scales") or [1, 2, 3, 6]
    if len(pool_scales) != len(scales):
        raise ConversionError(f"{where}: {len(scales)} pyramid pooling modules but pool_scales {pool_scales}; "
                              "the pooling scales are not visible in the weights")
    classifier = state["decode_head.conv_seg.weight"]
    auxiliary = state.get("auxiliary_head.convs.0.conv.weight")
    fields = base.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "out_features", "out_indices",
                "stage_names", "_out_features", "_out_indices", "id2label", "label2id"):
        fields.pop(key, None)
    fields.update(
        decode_head=decode_head, out_indices=indices, pool_scales=pool_scales, num_labels=int(classifier.shape[0]),
        decoder_hidden_size=int(classifier.shape[1]), use_auxiliary_head=auxiliary is not None,
        auxiliary_channels=int(auxiliary.shape[0]) if auxiliary is not None else 256,
    )
    classes = meta.get("CLASSES")
    if classes is not None and len(classes) == classifier.shape[0]:
        fields["id2label"] = {i: str(name) for i, name in enumerate(classes)}
        fields["label2id"] = {str(name): i for i, name in enumerate(classes)}
    elif classes is not None:
        notes.append(f"meta['CLASSES'] names {len(classes)} classes but conv_seg has {classifier.shape[0]}: "
                     "generic labels kept")
    palette = meta.get("PALETTE")
    if palette is not None and len(palette) == classifier.shape[0]:
        fields["palette"] = [[int(c) for c in colour] for colour in palette]
    config = UnipConfig(**fields)
    model = UnipForSemanticSegmentation(config)
    by_mmseg = {name: key for key in model.state_dict() if (name := mmseg_key(key)) is not None}
    dropped = [k for k in state if k.startswith("backbone.") and k[len("backbone."):].startswith(TIMM_NON_BACKBONE)]
    missing = sorted(set(by_mmseg) - set(state))
    unexpected = sorted(set(state) - set(by_mmseg) - set(dropped))
    if missing or unexpected:  # named as the checkpoint names them
        lines = ([f"missing keys ({len(missing)}): {missing}"] if missing else []) + (
            [f"unexpected keys ({len(unexpected)}): {unexpected}"] if unexpected else [])
        raise ConversionError(f"{where}: the mmseg state dict does not match a UnipForSemanticSegmentation "
                              f"({decode_head}, {config.num_labels} classes):\n  " + "\n  ".join(lines))
    renamed = {by_mmseg[k]: v for k, v in state.items() if k not in dropped}
    if dropped:
        notes.append(f"dropped {len(dropped)} non-backbone keys ({', '.join(sorted(dropped)[:5])})")
    load_into_unip(model, renamed)
    return model.eval(), notes


# ---------------------------------------------------------------------------------------------------------------------
# One entry point: detect, convert, save with a card
# ---------------------------------------------------------------------------------------------------------------------

#: The licence of the official UNIP code and weights since 2025-04 (the Hub card of `casiatao/UNIP` says
#: apache-2.0; the GitHub licence is CC BY-NC 4.0: converted weights carry the licence their source states).
OFFICIAL_UNIP_LICENSE = "cc-by-nc-4.0"
OFFICIAL_UNIP_REPO = "casiatao/UNIP"


@dataclass
class Conversion:
    """What `convert` produced and how: the model and the facts a card and the printed summary need."""

    model: Any
    source: str
    source_format: str
    detected: str | None = None
    entry: str | None = None
    other_entries: list[str] = field(default_factory=list)
    source_dtypes: list[str] = field(default_factory=list)
    official_unip: bool = False
    notes: list[str] = field(default_factory=list)
    img_scale: tuple[int, int] | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    @property
    def description(self) -> str:
        """One line: what was converted (layout, sizes, head counts, channels, classes)."""
        config = self.model.config
        text = (f"width {config.hidden_size}, {config.num_hidden_layers} blocks, {config.num_attention_heads} heads "
                f"(last block {config.last_block_heads}), patch {config.patch_size}, {config.num_channels} "
                f"channel(s)")
        if hasattr(self.model, "decode_head"):
            text += f", {config.decode_head} + UPerNet, {config.num_labels} classes"
        return text


def official_unip_args(args: Any) -> bool:
    """Whether a checkpoint's `args` (an `argparse.Namespace`) are those of the official UNIP pre-training code (its
    `model` is a `unip_vit_*` name, or it records the distilled `last_heads`)."""
    if not isinstance(args, argparse.Namespace):
        return False
    return str(getattr(args, "model", "")).startswith("unip_") or hasattr(args, "last_heads")


def _is_official_source(source: str) -> bool:
    text = str(source).replace("\\", "/")
    return OFFICIAL_UNIP_REPO.lower() in text.lower() or "models--casiatao--unip" in text.lower()


def detect_source_format(source: str | os.PathLike, checkpoint: Mapping | None = None) -> tuple[str, str]:
    """`(format, why)` for `--from auto`: an mmseg segmenter, an official UNIP / timm checkpoint file, a
    transformers folder or Hub id. A UNIP folder is recognised and refused (it needs no conversion)."""
    path = Path(source)
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ConversionError(f"{path}: a folder without config.json is neither a transformers nor a UNIP model "
                                  "folder; give the checkpoint file instead")
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
        if model_type in ("unip", "unip_small_target"):
            raise ConversionError(f"{path} is already a UNIP model folder (model_type {model_type!r}): there is "
                                  "nothing to convert; load it with from_pretrained, or copy the folder")
        reason = unsupported_family(model_type)
        if reason:
            raise ConversionError(f"{path}: {reason}")
        return "transformers", f"a transformers folder (model_type {model_type!r})"
    if path.is_file():
        checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path)
        if is_mmseg_checkpoint(checkpoint):
            return "mmseg", "an mmsegmentation segmenter (backbone.* and decode_head.* keys)"
        if official_unip_args(checkpoint.get("args")) or _is_official_source(str(path)):
            return "unip", "an official UNIP pre-training checkpoint (MAE-style save_model with UNIP args)"
        return "timm", "a timm-layout ViT checkpoint"
    if (re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) and not str(source).startswith((".", "/"))
            and path.suffix not in CHECKPOINT_SUFFIXES):
        return "transformers", "a Hub model id (not a local path)"
    raise FileNotFoundError(f"No checkpoint file or folder at {source}")


def convert(
    source: str | os.PathLike,
    source_format: str = "auto",
    ignore_prefixes: Iterable[str] | None = None,
    checkpoint_key: str | None = None,
    out_indices: Sequence[int] | None = None,
    **config_overrides,
) -> Conversion:
    """Convert `source` (a file for `unip` / `timm` / `mmseg`, a directory or Hub id for `transformers`; `auto`
    recognises which) into a `UnipViTModel` (a `UnipForSemanticSegmentation` from `mmseg`), without saving."""
    if source_format not in SOURCES:
        raise ValueError(f"source format must be one of {SOURCES}, got {source_format!r}")
    checkpoint = None
    if source_format != "transformers" and Path(source).is_file():
        checkpoint = read_checkpoint(source)
    detected = None
    if source_format == "auto":
        source_format, detected = detect_source_format(source, checkpoint)
    result = Conversion(model=None, source=str(source), source_format=source_format, detected=detected,
                        official_unip=_is_official_source(str(source)))
    if source_format == "transformers":
        kwargs = {"ignore_prefixes": ignore_prefixes} if ignore_prefixes is not None else {}
        result.model = convert_transformers_model(source, num_channels=config_overrides.get("num_channels"), **kwargs)
        return result
    if checkpoint is None:
        raise FileNotFoundError(f"No checkpoint file at {source}")
    result.official_unip |= official_unip_args(checkpoint.get("args"))
    if source_format == "mmseg":
        if not is_mmseg_checkpoint(checkpoint):
            raise ConversionError(f"{source}: not an mmsegmentation segmenter (no backbone.* with decode_head.* keys "
                                  "under state_dict); use --from unip/timm for a backbone checkpoint")
        tensors = checkpoint.get("state_dict", checkpoint)
        result.source_dtypes = sorted({str(v.dtype).replace("torch.", "") for v in tensors.values()
                                       if isinstance(v, torch.Tensor) and v.is_floating_point()})
        result.model, result.notes = convert_mmseg_state_dict(checkpoint, str(source), out_indices, **config_overrides)
        meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), Mapping) else {}
        settings = parse_mmseg_config(meta.get("config"))
        result.img_scale = settings.get("img_scale")
        channels = result.model.config.num_channels
        mean, std = settings.get("mean"), settings.get("std")
        if mean and std and len(set(mean)) == 1 and len(set(std)) == 1:  # mmseg normalises 0-255 pixels, ours 0-1
            result.image_mean, result.image_std = [mean[0] / 255.0] * channels, [std[0] / 255.0] * channels
        elif mean and std and len(mean) == channels == len(std):
            result.image_mean, result.image_std = [m / 255.0 for m in mean], [v / 255.0 for v in std]
        return result
    result.entry = state_dict_entry(checkpoint, checkpoint_key, str(source))
    result.other_entries = [key for key in STATE_DICT_KEYS
                            if key != result.entry and isinstance(checkpoint.get(key), Mapping)]
    state = unwrap_state_dict(checkpoint, str(source), checkpoint_key)
    check_finite(state, str(source))
    result.source_dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state.values() if v.is_floating_point()})
    args = checkpoint.get("args")
    if official_unip_args(args) and getattr(args, "last_heads", None) and "last_layer_num_attention_heads" not in config_overrides:
        config_overrides["last_layer_num_attention_heads"] = int(args.last_heads)
        result.notes.append(f"last block heads {int(args.last_heads)} from the checkpoint's args.last_heads")
    prefixes = tuple(TIMM_NON_BACKBONE) + tuple(ignore_prefixes or ())
    result.model = convert_timm_state_dict(state, ignore_prefixes=prefixes, **config_overrides)
    if result.other_entries:
        result.notes.append(f"read {result.entry!r}; the checkpoint also holds {result.other_entries} "
                            "(--checkpoint_key to convert one of them)")
    return result


def prepare_output_dir(output_dir: str | os.PathLike, source: str | os.PathLike, overwrite: bool = False) -> Path:
    """Make `output_dir` ready for a converted model: a non-empty folder is refused without `overwrite`; with it,
    everything in it is removed first (an old card, eval results, `best_model/`, ... would describe another model).
    An output that holds the source, or is the source, is always refused."""
    output_dir = Path(output_dir)
    source_path = Path(source)
    if source_path.exists():
        resolved_out, resolved_source = output_dir.resolve(), source_path.resolve()
        if resolved_source == resolved_out or resolved_out in resolved_source.parents:
            raise ConversionError(f"output folder {output_dir} holds the source {source}; choose another folder")
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"output {output_dir} is a file, not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        entries = sorted(p.name for p in output_dir.iterdir())
        resolved = output_dir.resolve()
        if overwrite and (resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents
                          or resolved == Path.home().resolve()):
            raise ConversionError(f"--overwrite would delete everything in {output_dir} (the current folder, one "
                                  "above it or your home folder); give a folder of its own")
        if not overwrite:
            raise ConversionError(
                f"output folder {output_dir} is not empty ({len(entries)} entries: {', '.join(entries[:6])}"
                f"{', ...' if len(entries) > 6 else ''}); add --overwrite to replace its contents (everything in "
                "it is deleted first), or choose another folder")
        for entry in output_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        logger.info("--overwrite: removed %d entries of %s", len(entries), output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def save_conversion(result: Conversion, output_dir: str | os.PathLike, license: str | None = None,
                    overwrite: bool = False) -> Path:
    """Save the converted model, its `UnipImageProcessor` and a model card (`conversion_card`) to `output_dir`
    (prepared by `prepare_output_dir`)."""
    card = conversion_card(result, license)  # a licence conflict stops here, before anything is deleted or written
    output_dir = prepare_output_dir(output_dir, result.source, overwrite)
    model, config = result.model, result.model.config
    model.save_pretrained(output_dir)
    if result.source_format == "mmseg":  # the evaluation protocol of the source's test pipeline
        processor = make_processor(config, result.img_scale)
        if result.image_mean:
            processor.image_mean, processor.image_std = result.image_mean, result.image_std
    else:
        processor = UnipImageProcessor.from_model_config(config)
    processor.save_pretrained(output_dir)
    card.save(output_dir / "README.md")
    return output_dir


def conversion_license(result: Conversion, license: str | None) -> str | None:
    """The licence of converted weights: the user's `license`; for a source recognised as official UNIP, CC BY-NC 4.0
    (a different `license` is refused: converted weights carry the licence their source states)."""
    if result.official_unip:
        if license not in (None, OFFICIAL_UNIP_LICENSE):
            raise ConversionError(f"--license {license}: the source is official UNIP, whose weights are licensed "
                                  f"{OFFICIAL_UNIP_LICENSE} (CC BY-NC 4.0, non-commercial); converted weights keep "
                                  "that licence: omit --license or pass cc-by-nc-4.0")
        return OFFICIAL_UNIP_LICENSE
    return license


def conversion_card(result: Conversion, license: str | None = None):
    """The model card of converted weights: the source (`base_model` when it is a Hub id, the file name otherwise),
    the source's licence, and what was converted (layout, head counts, channels) in the metadata and the text."""
    license = conversion_license(result, license)
    source = result.source
    is_hub_id = not Path(source).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None
    cached = re.search(r"models--([\w.-]+)--([\w.-]+)[/\\]snapshots[/\\]", source)  # a file of the Hub cache
    hub_repo = source if is_hub_id else (f"{cached.group(1)}/{cached.group(2)}" if cached else None)
    config = result.model.config
    segmenter = hasattr(result.model, "decode_head")
    facts = {
        "source": source if is_hub_id else Path(source).name,
        "source_format": result.source_format,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "last_layer_num_attention_heads": config.last_block_heads,
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
    }
    if result.entry:
        facts["checkpoint_entry"] = result.entry
    if result.source_dtypes:
        facts["source_dtypes"] = result.source_dtypes
    if segmenter:
        facts.update(decode_head=config.decode_head, num_labels=config.num_labels)
    origin = (f"the Hub model [`{source}`](https://huggingface.co/{source})" if is_hub_id
              else f"the {'folder' if Path(source).is_dir() else 'file'} `{Path(source).name}`"
              + (f" of [`{hub_repo}`](https://huggingface.co/{hub_repo})" if hub_repo else ""))
    licence_text = (f"The source is the official UNIP release, licensed CC BY-NC 4.0 (non-commercial use only); "
                    f"these converted weights carry the same licence (`{OFFICIAL_UNIP_LICENSE}`)."
                    if result.official_unip else
                    f"Licence of the source, as given at conversion: `{license}`." if license else
                    "The licence of the source was not given at conversion (`unip convert --license`); check it "
                    "before using or sharing these weights.")
    summary = (f"Weights converted with `unip convert --from {result.source_format}` from {origin} "
               f"({result.description}). {licence_text}")
    card = make_model_card(
        Path(source).stem if not is_hub_id else source.split("/")[-1] + "-unip",
        base_model=hub_repo,
        backbone=not segmenter,
        labels=[config.id2label[i] for i in range(config.num_labels)] if segmenter else None,
        decode_head=getattr(config, "decode_head", "ll_fpn"),
        summary=summary,
        license=license or "unknown",
        tags=["converted"] + (["official-unip"] if result.official_unip else []),
        training_data=[f"Not recorded by the conversion: see the source ({facts['source']})."],
    )
    card.data.unip_conversion = facts
    return card


def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    source_format: str,
    ignore_prefixes: Iterable[str] | None = None,
    license: str | None = None,
    overwrite: bool = False,
    checkpoint_key: str | None = None,
    out_indices: Sequence[int] | None = None,
    **config_overrides,
):
    """Convert `source` (see `convert`) and save the model with its `UnipImageProcessor` and a card to `output_dir`
    (a non-empty `output_dir` is refused without `overwrite`); returns the model."""
    result = convert(source, source_format, ignore_prefixes, checkpoint_key, out_indices, **config_overrides)
    save_conversion(result, output_dir, license, overwrite)
    return result.model


def command_convert(args: argparse.Namespace) -> int:
    """Run `unip convert`; returns the exit status."""
    overrides = {
        key: value
        for key, value in {
            "num_attention_heads": args.num_heads,
            "last_layer_num_attention_heads": args.last_layer_heads,
            "num_channels": args.num_channels,
        }.items()
        if value is not None
    }
    result = convert(args.source, args.source_format, args.ignore_prefix, args.checkpoint_key, args.out_indices,
                     **overrides)
    license = conversion_license(result, args.license)
    if args.push_to_hub and not license:
        raise ConversionError("--push_to_hub of converted weights needs --license (the licence the source states, "
                              "e.g. apache-2.0 or cc-by-nc-4.0): the card must say under which terms they are shared")
    if result.detected:
        print(f"--from auto: {args.source} is {result.detected}; converting it as --from {result.source_format}")
    for note in result.notes:
        print(f"note: {note}")
    output_dir = save_conversion(result, args.output, license, args.overwrite)
    model = result.model
    print(f"Converted {args.source} ({result.source_format}) -> {args.output}: {result.description}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
          + (f"; source tensors {'/'.join(result.source_dtypes)}, saved as float32"
             if result.source_dtypes and result.source_dtypes != ["float32"] else ""))
    if result.official_unip:
        print(f"licence: official UNIP weights are {OFFICIAL_UNIP_LICENSE} (CC BY-NC 4.0, non-commercial); the card "
              "says so")
    if args.push_to_hub:
        push_to_hub(output_dir, args.push_to_hub, private=args.private or None)
        print(f"pushed {output_dir} to {args.push_to_hub}")
    return 0


__all__ = ["convert", "convert_mmseg_state_dict", "convert_timm_state_dict", "convert_transformers_model",
           "to_mmseg_state_dict"]
