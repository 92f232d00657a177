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
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel

from unip_hf.conversion.checkpoint_reading import (
    CHECKPOINT_SUFFIXES,
    STATE_DICT_KEYS,
    TIMM_NON_BACKBONE,
    ConversionError,
    check_finite,
    convert_timm_state_dict,
    load_into_unip,
    read_checkpoint,
    state_dict_entry,
    unwrap_state_dict,
)
from unip_hf.conversion.mmseg import convert_mmseg_state_dict, is_mmseg_checkpoint, parse_mmseg_config

from unip_hf.choices import CONVERT_SOURCES, unsupported_family
from unip_hf.models.configuration_unip import UnipConfig
from unip_hf.hub.cards import make_model_card
from unip_hf.hub.upload import push_to_hub
from unip_hf.models.image_processing_unip import UnipImageProcessor
from unip_hf.models.modeling_unip import UnipViTModel
from unip_hf.evaluation.model_saving import make_processor
from unip_hf.models.vit_family import vision_config, vision_tower

logger = logging.getLogger(__name__)

TRANSFORMERS_NON_BACKBONE = ("pooler.", "classifier.", "decoder.", "embeddings.mask_token", "visual_projection.")


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


def unip_config_from_transformers(cfg, num_channels: int | None = None) -> UnipConfig:
    """The `UnipConfig` of a transformers vision config of one of `choices.TRANSFORMERS_FAMILIES` (for CLIP: its vision
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
    `choices.TRANSFORMERS_FAMILIES`).

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
    if source_format not in CONVERT_SOURCES:
        raise ValueError(f"source format must be one of {CONVERT_SOURCES}, got {source_format!r}")
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


__all__ = ["convert", "convert_transformers_model"]
