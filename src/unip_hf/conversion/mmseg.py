"""Conversion of mmsegmentation 0.x UNIP segmenters (UNIP, Zhang et al., ICLR 2025: a timm-layout ViT backbone with
the LL-FPN ops, a UPerHead and an FCN auxiliary head) into `UnipForSemanticSegmentation`, and the inverse (our
segmenters under mmseg's key names), which proves the mapping exact."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from unip_hf.conversion.checkpoint_reading import (
    TIMM_NON_BACKBONE,
    ConversionError,
    check_finite,
    infer_config_from_timm,
    load_into_unip,
    unip_to_timm_key,
)

from unip_hf.models.configuration_unip import UnipConfig
from unip_hf.models.modeling_unip_segmentation import UnipForSemanticSegmentation

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


__all__ = ["convert_mmseg_state_dict", "to_mmseg_state_dict"]
