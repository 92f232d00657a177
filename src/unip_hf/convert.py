"""Weight conversion into `UnipViTModel` (UNIP, Zhang et al., ICLR 2025): from the official UNIP checkpoints and timm
ViT state dicts (timm key layout, `blocks.N.attn.qkv.weight`, ...) and from transformers `ViTModel`, `ViTMAEModel`,
`DeiTModel`, `Dinov2Model` and CLIP vision (`CLIPVisionModel`, a `CLIPModel`'s vision tower) checkpoints. Loading is
strict: every key must be used and every parameter filled.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from .commands.convert import SOURCES, unsupported_family
from .configuration_unip import UnipConfig
from .image_processing_unip import UnipImageProcessor
from .modeling_unip import UnipViTModel
from .vit_family import vision_config, vision_tower

logger = logging.getLogger(__name__)

# Heads of the standard ViT widths, used when a timm-layout state dict does not say (heads are not visible in shapes).
DEFAULT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# Keys of timm / official checkpoints that are not part of the backbone (classifier heads, pooled norms, ...).
TIMM_NON_BACKBONE = ("head.", "head_dist.", "fc_norm.", "pre_logits.", "decoder", "mask_token")
TRANSFORMERS_NON_BACKBONE = ("pooler.", "classifier.", "decoder.", "embeddings.mask_token", "visual_projection.")


class ConversionError(ValueError):
    """A state dict does not map onto the UNIP backbone (missing, unexpected or mis-shaped keys)."""


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.bin`/`.pt` (torch pickle, weights only) or `.safetensors` file; unwrap `model`/`state_dict`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - re-raised with the file name
            raise ConversionError(f"{path}: cannot read as a torch checkpoint ({error})") from error
    return unwrap_state_dict(state, str(path))


def unwrap_state_dict(state: Mapping, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the tensor dict inside a checkpoint (under `model`, `state_dict`, `module` or at the top level)."""
    for key in ("model", "state_dict", "module", "student"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConversionError(f"{where}: no tensors found (top-level keys: {sorted(state)[:10]})")
    # strip a DistributedDataParallel prefix
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
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
    if "blocks.0.ls1.gamma" in state:
        values["layer_scale_init_value"] = 1.0
    values.update(overrides)
    return UnipConfig(**values)


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


def load_into_unip(model: UnipViTModel, state: Mapping[str, torch.Tensor]) -> UnipViTModel:
    """Strictly load a UNIP-keyed state dict into `model`.

    Adapts what has an unambiguous meaning (a 3-channel patch kernel into a 1-channel model: summed over the colour
    axis, as timm does) and raises `ConversionError` listing every missing, unexpected or mis-shaped key otherwise.
    """
    state = dict(state)
    target = model.state_dict()
    kernel_key = "embeddings.patch_embeddings.projection.weight"
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
        raise ConversionError("State dict does not match the UNIP backbone:\n  " + "\n  ".join(lines))
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


def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    source_format: str,
    ignore_prefixes: Iterable[str] | None = None,
    **config_overrides,
) -> UnipViTModel:
    """Convert `source` (a file for `unip`/`timm`, a directory or Hub id for `transformers`) and save the
    `UnipViTModel` with its `UnipImageProcessor` to `output_dir`."""
    if source_format not in SOURCES:
        raise ValueError(f"source format must be one of {SOURCES}, got {source_format!r}")
    if source_format == "transformers":
        kwargs = {"ignore_prefixes": ignore_prefixes} if ignore_prefixes is not None else {}
        model = convert_transformers_model(source, num_channels=config_overrides.get("num_channels"), **kwargs)
    else:
        state = load_state_dict_file(source)
        prefixes = tuple(TIMM_NON_BACKBONE) + tuple(ignore_prefixes or ())
        model = convert_timm_state_dict(state, ignore_prefixes=prefixes, **config_overrides)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    size = model.config.image_size
    UnipImageProcessor(num_channels=model.config.num_channels, size={"height": size, "width": size}).save_pretrained(
        output_dir
    )
    return model


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
    model = convert_checkpoint(args.source, args.output, args.source_format, args.ignore_prefix, **overrides)
    config = model.config
    print(
        f"Converted {args.source} ({args.source_format}) -> {args.output}: width {config.hidden_size}, "
        f"{config.num_hidden_layers} blocks, {config.num_attention_heads} heads "
        f"(last block {config.last_block_heads}), patch {config.patch_size}, {config.num_channels} channel(s), "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
    )
    return 0


__all__ = ["convert_timm_state_dict", "convert_transformers_model"]
