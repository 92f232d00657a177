"""Adapters that let the package run any transformers ViT-family model the same way: `UnipViTModel`, `ViTModel`,
`ViTMAEModel`, `DeiTModel`, `Dinov2Model` / `Dinov2WithRegistersModel`, CLIP-like vision towers and models laid
out like them. Used by the attention analysis and by the NMI-HAD teacher, so both read a model identically.

One owner for each adaptation: the vision part of a config (`require_vision_config`), the module that takes pixel
values (`vision_tower`), loading without an unused pooler (`load_vision_backbone`), the forward arguments (position
embeddings interpolated, ViT-MAE masking switched off and its patch order kept), the special tokens before the
patches (`num_prefix_tokens`, `select_tokens`: CLS kept or not, distillation and register tokens dropped), eager
attention for attention weights (`eager_attention`, `model_attentions`) and where the blocks and their query/key
projections live (`transformer_blocks`, `first_attribute`).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

logger = logging.getLogger(__name__)

# Where the blocks, their pre-attention norm, their attention module and its query/key projections live, by family.
LAYER_LISTS = ("encoder.layer", "encoder.layers", "layers", "layer", "blocks")
NORMS = ("norm1", "layernorm_before", "layer_norm1", "ln_1", "norm")
ATTENTIONS = ("attention.attention", "attention", "self_attn", "attn")
QUERIES = ("q_proj", "query", "q")
KEYS = ("k_proj", "key", "k")
# Families whose embeddings interpolate their position embeddings at any input size without being asked.
_ALWAYS_INTERPOLATE = ("unip", "dinov2", "dinov2_with_registers")


# ---------------------------------------------------------------------------------------------------------------------
# Configs and towers
# ---------------------------------------------------------------------------------------------------------------------


def vision_config(config) -> Any:
    """The vision part of a config: a CLIP-like config's `vision_config`, else the config itself."""
    return getattr(config, "vision_config", None) or config


def require_vision_config(config, name: str = "the model") -> Any:
    """The vision part of a model config (a CLIP-like config's `vision_config`, else the config itself); a
    `ValueError` naming `name` when it is no ViT-family vision model (no `patch_size`: BERT, GPT-2, ...)."""
    vision = vision_config(config)
    if getattr(vision, "patch_size", None) is None:
        raise ValueError(
            f"{name} is a {getattr(config, 'model_type', '?')!r} model ({type(config).__name__}), not a ViT-family "
            "vision model (its config has no patch_size); use a vision transformer such as UNIP, ViT, ViT-MAE, DeiT, "
            "DINOv2 or a CLIP vision tower"
        )
    return vision


def vision_tower(model: nn.Module) -> nn.Module:
    """The module to call with pixel values: the `vision_model` of a model whose config is composite (has a
    `vision_config`: CLIPModel, SiglipModel, ...), else the model itself.

    The rule keys on the config, not on which attributes happen to exist, so the module returned is always the one
    whose config `vision_config(model.config)` is (a vision model that keeps its tower in a `vision_model`
    attribute, such as `OwlViTVisionModel`, is called as a whole, and a dual encoder is unwrapped even when it also
    has text `embeddings` at its top level).
    """
    config = getattr(model, "config", None)
    if getattr(config, "vision_config", None) is None:
        return model
    tower = getattr(model, "vision_model", None)
    if tower is None:
        raise TypeError(
            f"{type(model).__name__} has a vision_config but no vision_model attribute; pass its vision tower "
            "(the module that takes pixel_values) instead"
        )
    return tower


def patch_size_of(config, name: str = "the model") -> int:
    """The (square) patch side of a vision config; a `ValueError` naming `name` when the config has none."""
    patch = getattr(config, "patch_size", None)
    if patch is None:
        raise ValueError(f"{name} has no patch_size in its config; cannot infer the patch grid")
    return int(patch if isinstance(patch, int) else patch[0])


def image_size_of(config) -> tuple[int, int] | None:
    """`(height, width)` the config was built for, `None` when it names none."""
    size = getattr(config, "image_size", None)
    if not size:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def forward_parameters(module: nn.Module) -> set[str]:
    """Names of the parameters of `module.forward` (empty when its signature cannot be read)."""
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return set()


def interpolates_position_embeddings(module: nn.Module, config) -> bool:
    """Whether the model runs at an input size other than its config's: it takes `interpolate_pos_encoding`, or
    its family always interpolates (UNIP, DINOv2)."""
    return ("interpolate_pos_encoding" in forward_parameters(module)
            or getattr(config, "model_type", None) in _ALWAYS_INTERPOLATE)


def forward_kwargs(module: nn.Module, config, pixel_values: torch.Tensor, grid: tuple[int, int]) -> dict[str, Any]:
    """Keyword arguments that make a ViT-family forward see every patch in raster order at the input's size.

    - `interpolate_pos_encoding=True` when the model takes it and the input size differs from the config's;
    - ViT-MAE: `noise` increasing along the patches, so that its (switched-off, see `mae_masking_disabled`) random
      shuffle is the identity and the patch order is kept.
    """
    params = forward_parameters(module)
    kwargs: dict[str, Any] = {}
    if "interpolate_pos_encoding" in params and image_size_of(config) != tuple(pixel_values.shape[-2:]):
        kwargs["interpolate_pos_encoding"] = True
    if "noise" in params:  # ViTMAE: argsort of increasing noise is the identity, so the patch order is preserved
        kwargs["noise"] = torch.arange(grid[0] * grid[1], device=pixel_values.device, dtype=torch.float32).expand(
            pixel_values.shape[0], -1
        )
    return kwargs


@contextmanager
def mae_masking_disabled(config):
    """Disable the random masking of ViTMAE-style models (`mask_ratio` 0) for the duration of the block."""
    ratio = getattr(config, "mask_ratio", None)
    if ratio:
        config.mask_ratio = 0.0
    try:
        yield
    finally:
        if ratio:
            config.mask_ratio = ratio


# ---------------------------------------------------------------------------------------------------------------------
# Special tokens
# ---------------------------------------------------------------------------------------------------------------------


def num_prefix_tokens(num_tokens: int, grid: tuple[int, int], require_cls: bool = False) -> int:
    """Special tokens before the patches (CLS, distillation, registers) of a sequence of `num_tokens` tokens on a
    `grid` of patches; a `RuntimeError` when patches are missing (masking?) or, with `require_cls`, no CLS exists."""
    prefix = num_tokens - grid[0] * grid[1]
    if prefix < int(require_cls):
        raise RuntimeError(f"{num_tokens} tokens for a {grid[0]}x{grid[1]} patch grid: "
                           + ("no CLS token or " if require_cls else "") + "some patches were dropped (masking?)")
    return prefix


def select_tokens(tensor: torch.Tensor, prefix: int, dims: Sequence[int] = (-2, -1),
                  include_cls: bool = True) -> torch.Tensor:
    """Keep the patch tokens (and CLS, index 0, when `include_cls`) along each of `dims`; the other special tokens
    (DeiT's distillation token, DINOv2's registers) are dropped. Not renormalised."""
    if not include_cls or prefix == 0:
        for dim in dims:
            tensor = tensor.narrow(dim, prefix, tensor.shape[dim] - prefix)
        return tensor
    if prefix == 1:
        return tensor
    keep = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(prefix, tensor.shape[dims[0]])]).to(tensor.device)
    for dim in dims:
        tensor = tensor.index_select(dim, keep)
    return tensor


# ---------------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------------


def get_attribute(module: nn.Module, dotted: str) -> Any:
    """`module.a.b.c` for `"a.b.c"`, `None` when a part is missing."""
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def first_attribute(module: nn.Module, names: Sequence[str]) -> tuple[str | None, Any]:
    """`(name, attribute)` of the first of the dotted `names` that `module` has, `(None, None)` if none."""
    for name in names:
        found = get_attribute(module, name)
        if found is not None:
            return name, found
    return None, None


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a ViT-family model (or of its `vision_model`); a `TypeError` otherwise."""
    _, layers = first_attribute(model, LAYER_LISTS + tuple("vision_model." + n for n in LAYER_LISTS))
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise TypeError(
            f"{type(model).__name__} has no accessible list of transformer blocks (looked for "
            f"{', '.join(LAYER_LISTS)}); supported models: UnipViTModel, ViTModel, ViTMAEModel, DeiTModel, "
            "Dinov2Model, CLIPVisionModel"
        )
    return layers


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


class _LoadReportFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextmanager
def quiet_transformers_io():
    """Inside: transformers' per-key load report (20-35 lines of MISSING / UNEXPECTED) and its "Loading weights" /
    "Writing model shards" bars stay silent (the bars, nested under a training bar, left `[A` cursor codes in logs).
    Callers say what matters in one line (`load_summary`). Restored on exit."""
    from transformers.utils import logging as hf_logging

    # a filter, not a level: transformers runs a tensor-parallel check (and warns) when that logger's level is raised
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _LoadReportFilter()
    bars = hf_logging.is_progress_bar_enabled()
    report_logger.addFilter(report_filter)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        report_logger.removeFilter(report_filter)
        if bars:
            hf_logging.enable_progress_bar()


def _by_part(keys: Sequence[str]) -> str:
    parts: dict[str, int] = {}
    for key in keys:
        part = key.split(".")[0]
        parts[part] = parts.get(part, 0) + 1
    return ", ".join(f"{part.replace('_', ' ')} {count}" for part, count in parts.items())


def load_summary(info: dict[str, Any]) -> str:
    """One line about a `from_pretrained(..., output_loading_info=True)` load, instead of transformers' table: the
    tensors initialised fresh (missing from the checkpoint; e.g. a decode head on a backbone), those of the checkpoint
    left unused (e.g. a ViT-MAE decoder) and those re-initialised for another shape; empty when everything matched."""
    missing = [key for key in info.get("missing_keys", ()) if not key.endswith("num_batches_tracked")]
    unexpected = list(info.get("unexpected_keys", ()))
    mismatched = [item[0] if isinstance(item, (tuple, list)) else item for item in info.get("mismatched_keys", ())]
    parts = []
    if missing:
        heads = sorted({key.split(".")[0] for key in missing})
        what = "decode head" if set(heads) <= {"decode_head", "auxiliary_head", "neck"} else ", ".join(heads)
        parts.append(f"{what} initialised fresh: {len(missing)} tensors ({_by_part(missing)})")
    if unexpected:
        parts.append(f"not used from the checkpoint: {len(unexpected)} tensors ({_by_part(unexpected)})")
    if mismatched:
        parts.append(f"re-initialised for a new shape: {len(mismatched)} tensors ({_by_part(mismatched)})")
    return "; ".join(parts)


def load_reported(loader: Any, name_or_path: str, **kwargs: Any):
    """`loader(name_or_path, **kwargs)` (a `from_pretrained`) without transformers' load report and bars; returns
    `(model, line)`, `line` from `load_summary` (empty when every tensor matched)."""
    with quiet_transformers_io():
        model, info = loader(name_or_path, output_loading_info=True, **kwargs)
    return model, load_summary(info)


def load_vision_backbone(name_or_path: str, name: str | None = None, **from_pretrained_kwargs: Any):
    """Load a ViT-family model with `AutoModel.from_pretrained` for its attention (teacher of NMI-HAD, subject of the
    analysis): its config is checked first (`require_vision_config`), and a class that takes `add_pooling_layer`
    (transformers' `ViTModel`, `DeiTModel`, ...) is built without its pooler, which no caller uses, unless the
    checkpoint holds pooler weights (loading a backbone checkpoint without them, such as a ViT-MAE or
    classification one, would otherwise report `pooler.dense.*` as missing and newly initialised).

    Args:
        name_or_path (`str`): local folder or Hub id.
        name (`str`, *optional*): how errors name the model (e.g. `"--teacher_name_or_path 'x'"`).
        **from_pretrained_kwargs: passed to `AutoConfig` / `AutoModel.from_pretrained` (e.g. `trust_remote_code`).
    """
    config = AutoConfig.from_pretrained(
        name_or_path, trust_remote_code=from_pretrained_kwargs.get("trust_remote_code", False))
    require_vision_config(config, name or repr(name_or_path))
    try:
        model_class = AutoModel._model_mapping[type(config)]
    except KeyError:  # remote code: the class is only known once loaded
        model_class = None
    if model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        keys = _checkpoint_keys(name_or_path, from_pretrained_kwargs)
        if keys is not None:  # keep a pooler the checkpoint has (dropping it would report its weights as unexpected)
            from_pretrained_kwargs.setdefault("add_pooling_layer",
                                              any(".pooler." in f".{key}" for key in keys))
    model, line = load_reported(AutoModel.from_pretrained, name_or_path, config=config, **from_pretrained_kwargs)
    if line:  # unused tensors (a ViT-MAE decoder) are expected; fresh ones in a backbone are worth a warning
        (logger.warning if "initialised fresh" in line else logger.info)("%s: %s", name or name_or_path, line)
    return model


def _checkpoint_keys(name_or_path: str, kwargs: dict[str, Any]) -> set[str] | None:
    """Parameter names of a safetensors checkpoint (read from its header or index, not its tensors); `None` when
    they cannot be read (e.g. a `pytorch_model.bin` checkpoint)."""
    options = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
    try:
        for filename in (SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME):
            path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False, **options)
            if not path:
                continue
            if filename == SAFE_WEIGHTS_INDEX_NAME:
                with open(path, encoding="utf-8") as handle:
                    return set(json.load(handle).get("weight_map", {}))
            with safe_open(path, framework="pt") as handle:
                return set(handle.keys())
    except (OSError, ValueError) as err:
        logger.debug("could not read the parameter names of %s: %s", name_or_path, err)
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Attention weights
# ---------------------------------------------------------------------------------------------------------------------


@contextmanager
def eager_attention(model):
    """Switch a transformers model to eager attention (which returns weights) for the duration of the block.

    Restores the previous implementation afterwards, also on error. Models that cannot switch (or already return
    explicit attention, like `UnipViTModel`) are left unchanged.

    Args:
        model: A `PreTrainedModel`.
    """
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switched = False
    if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
            switched = True
        except Exception as err:  # noqa: BLE001
            logger.warning("could not switch %s to eager attention (%s)", type(model).__name__, err)
    try:
        yield model
    finally:
        if switched:
            model.set_attn_implementation(previous)


def model_attentions(model, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], int, tuple[int, int]]:
    """Run a model once and return its per-layer attention probabilities with the token layout.

    Handles `UnipViTModel`, ViT, DeiT (CLS + distillation token), ViTMAE (masking disabled and the patch order kept
    by passing increasing noise), Dinov2 (with or without register tokens), CLIP vision towers and any model that
    puts its special tokens before the patches.

    Args:
        model: The model (already in eager attention mode when it is a transformers model; see `eager_attention`).
        pixel_values: `[B, C, H, W]` input.

    Returns:
        `(attentions, num_prefix_tokens, grid_size)`: one `[B, H, N, N]` tensor per layer (0-based order), the number
        of special tokens before the patches, and `(rows, cols)` of the patch grid.
    """
    module = vision_tower(model)
    config = vision_config(model.config)
    patch = patch_size_of(config, type(model).__name__)
    height, width = pixel_values.shape[-2:]
    grid = (height // patch, width // patch)
    kwargs = {"output_attentions": True, "return_dict": True, **forward_kwargs(module, config, pixel_values, grid)}
    with mae_masking_disabled(config):
        outputs = module(pixel_values=pixel_values, **kwargs)
    attentions = getattr(outputs, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise RuntimeError(
            f"{type(model).__name__} returned no attention weights; it needs an eager attention path "
            "(output_attentions=True)"
        )
    ids_restore = getattr(outputs, "ids_restore", None)
    prefix = num_prefix_tokens(attentions[0].shape[-1], grid)
    if ids_restore is not None and not torch.equal(
        ids_restore, torch.arange(ids_restore.shape[1], device=ids_restore.device).expand_as(ids_restore)
    ):
        # The model shuffled the patches: reorder queries and keys back to raster order.
        index = torch.cat([torch.arange(prefix, device=ids_restore.device).expand(ids_restore.shape[0], -1),
                           ids_restore + prefix], dim=1)
        attentions = [_reorder(a, index) for a in attentions]
    return list(attentions), prefix, grid


def _reorder(attn: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    b, h, n, _ = attn.shape
    idx = index[:, None, :, None].expand(b, h, n, n)
    attn = attn.gather(2, idx)
    return attn.gather(3, index[:, None, None, :].expand(b, h, n, n))


__all__: list[str] = []  # nothing here is documented API; the package's own modules import what they need
