"""Layer-wise learning-rate decay for fine-tuning UNIP models (Zhang et al., ICLR 2025; BEiT's rule): the depth of
each parameter (`layer_id`), its learning-rate multiplier (`layer_decay_scale`: patch embedding, CLS and positions
`decay ** (L + 1)`, block `i` `decay ** (L - i)`, neck and heads 1) and the AdamW groups (`layer_decay_groups`).
"""

from __future__ import annotations

from torch import nn

from unip_hf.training.optimization import param_groups


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise decay: 0 for the embeddings (patch projection, CLS token, positions),
    `i + 1` for block `i`, `num_layers + 1` for everything else (final norm, neck, decode and auxiliary heads).

    Args:
        name (`str`): parameter name in a `UnipForSemanticSegmentation` (`unip.encoder.layer.3.mlp.fc1.weight`) or a
            `UnipViTModel` (`encoder.layer.3...`).
        num_layers (`int`): number of transformer blocks.
    """
    parts = name.split(".")
    if parts and parts[0] == "unip":
        parts = parts[1:]
    if parts and parts[0] == "embeddings":
        return 0
    if len(parts) > 2 and parts[0] == "encoder" and parts[1] == "layer":
        return int(parts[2]) + 1
    return num_layers + 1


def layer_decay_scale(name: str, num_layers: int, decay: float) -> float:
    """Learning-rate multiplier of a parameter: `decay ** (num_layers + 1 - layer_id(name))`.

    Patch embedding, CLS token and positions get `decay ** (L + 1)`, block `i` gets `decay ** (L - i)`, the rest 1.

    Args:
        name (`str`): parameter name.
        num_layers (`int`): number of transformer blocks `L`.
        decay (`float`): the decay per block (0.85 in UNIP's fine-tuning).
    """
    return float(decay) ** (num_layers + 1 - layer_id(name, num_layers))


def layer_decay_groups(model: nn.Module, weight_decay: float, decay: float, num_layers: int | None = None):
    """AdamW parameter groups with layer-wise decay (`lr_scale`) and no weight decay on norms, biases, tokens and
    positions: `unip_hf.training.optimization.param_groups` with `layer_decay_scale` as the multiplier.

    Args:
        model (`nn.Module`): a `UnipForSemanticSegmentation` or `UnipViTModel`.
        weight_decay (`float`): decay of weight matrices.
        decay (`float`): layer-wise decay (1.0 turns it off).
        num_layers (`int`, *optional*): number of blocks; defaults to `model.config.num_hidden_layers`.
    """
    layers = num_layers if num_layers is not None else model.config.num_hidden_layers
    return param_groups(model, weight_decay, lambda name: layer_decay_scale(name, layers, decay))


__all__: list[str] = []  # nothing here is documented API; the package's own modules import what they need
