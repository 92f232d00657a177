"""UNIP vision transformers (Zhang et al., "UNIP: Rethinking Pre-trained Attention Patterns for Infrared Semantic
Segmentation", ICLR 2025): the plain ViT backbone that NMI-HAD distils into (its last block may have as many heads
as the teacher), with capture of pre-softmax attention logits of chosen layers and early exit, and the segmentation
model with LL-FPN / multi-level FPN + UPerNet heads or a linear probe. Block features come from one method,
`UnipViTModel.forward_intermediates`, which the segmentation heads and `UnipBackbone` (`AutoBackbone`, hence
transformers' UperNet) share; attention logits are returned by the attention module itself.

This file imports only torch, transformers and the configuration file next to it, so that it travels with saved
checkpoints as remote code (`trust_remote_code=True`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_unip import UnipConfig, write_remote_code

def sincos_position_embedding(embed_dim: int, grid_height: int, grid_width: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (as in MAE), shape `(1, [1 +] grid_height * grid_width, embed_dim)`.

    Half of the channels encode the row and half the column; within each half, sines then cosines of
    geometrically spaced frequencies. The CLS position (when `cls_token`) is all zeros.
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embeddings need hidden_size divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(
        torch.arange(grid_height, dtype=torch.float64), torch.arange(grid_width, dtype=torch.float64), indexing="ij"
    )

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    # MAE's convention: the first half of the channels encodes the column (w), the second half the row (h)
    embedding = torch.cat([encode(cols), encode(rows)], dim=1)
    if cls_token:
        embedding = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), embedding], dim=0)
    return embedding.unsqueeze(0).float()


@dataclass
class UnipModelOutput(BaseModelOutputWithPooling):
    """Output of [`UnipViTModel`]: `BaseModelOutputWithPooling` plus pre-softmax attention logits.

    Args:
        attention_logits (`tuple(torch.Tensor)`, *optional*):
            For each layer listed in `attention_logits_layers` (in that order), the scaled pre-softmax attention
            scores `q k^T / sqrt(d)` of all heads, shape `(batch_size, num_heads, seq_len, seq_len)`, CLS first.
        num_layers_run (`int`, *optional*):
            How many blocks were computed (fewer than the configured depth when `stop_after_layer` was given).
        transferability_map (`torch.Tensor`, *optional*):
            The per-patch transferability map `(batch_size, num_patches)` the TMT blocks attended with (when given).
    """

    attention_logits: tuple[torch.Tensor, ...] | None = None
    num_layers_run: int | None = None
    transferability_map: torch.Tensor | None = None


class UnipPatchEmbeddings(nn.Module):
    """Split an image into non-overlapping patches and project each to `hidden_size` (one strided convolution)."""

    def __init__(self, config: UnipConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.grid_size = config.image_size // config.patch_size
        self.num_patches = self.grid_size**2
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size,
            bias=config.patch_embedding_bias,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must have shape (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
        _, channels, height, width = pixel_values.shape
        if channels != self.num_channels:
            raise ValueError(
                f"pixel_values have {channels} channel(s) but the model is configured with num_channels="
                f"{self.num_channels}; use UnipImageProcessor(num_channels={self.num_channels}) or a matching config."
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Input size {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "resize or pad the image first."
            )
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class UnipEmbeddings(nn.Module):
    """CLS token + patch embeddings + position embeddings (fixed sin-cos or learned), at any input size, then the
    layer norm of `config.pre_layernorm` (CLIP's `pre_layrnorm`) when configured."""

    def __init__(self, config: UnipConfig):
        super().__init__()
        self.config = config
        self.patch_embeddings = UnipPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        table = torch.zeros(1, self.patch_embeddings.num_patches + 1, config.hidden_size)
        if config.position_embedding_type == "learned":
            self.position_embeddings = nn.Parameter(table)
        else:
            # The fixed sin-cos table is a (persistent) buffer, not a frozen parameter: it is saved under the same key
            # as a learned table (older checkpoints load unchanged), but no optimizer or DDP ever sees it, and
            # `from_pretrained` (which re-creates every loaded parameter as trainable) cannot make it trainable.
            self.register_buffer("position_embeddings", table, persistent=True)
        self.pre_layernorm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_layernorm
                              else None)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """Position embeddings for a `grid_height x grid_width` patch grid.

        The stored table is used as is when the grid matches; otherwise sin-cos embeddings are recomputed exactly
        for the new grid, and learned ones are resized bicubically (in float32).
        """
        table = self.position_embeddings
        grid = self.patch_embeddings.grid_size
        if grid_height == grid and grid_width == grid:
            return table
        if self.config.position_embedding_type == "sincos":
            return sincos_position_embedding(table.shape[-1], grid_height, grid_width).to(table.device, table.dtype)
        cls_pos, patch_pos = table[:, :1], table[:, 1:]
        dim = table.shape[-1]
        patch_pos = patch_pos.reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos.float(), size=(grid_height, grid_width), mode="bicubic", align_corners=False
        ).to(table.dtype)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, dim)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        embeddings = self.patch_embeddings(pixel_values)
        cls_tokens = self.cls_token.expand(embeddings.shape[0], -1, -1)
        embeddings = torch.cat([cls_tokens, embeddings], dim=1)
        patch = self.patch_embeddings.patch_size
        embeddings = embeddings + self.interpolate_pos_encoding(height // patch, width // patch)
        if self.pre_layernorm is not None:
            embeddings = self.pre_layernorm(embeddings)
        return self.dropout(embeddings)


def attention_scores(
    query: torch.Tensor, key: torch.Tensor, scaling: float, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Scaled pre-softmax scores `q k^T * scaling` (+ the additive mask), `(batch, heads, seq, seq)`: the attention
    logits [`UnipViTModel`] returns, and the first half of [`eager_attention_forward`]."""
    logits = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        logits = logits + attention_mask
    return logits


def attention_probabilities(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Softmax of the logits over the keys, computed in float32 and returned in `dtype`."""
    return torch.softmax(logits, dim=-1, dtype=torch.float32).to(dtype)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    return_logits: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit attention with transformers' attention-function signature: softmax(q k^T * scaling + mask) v, the
    softmax in float32. Returns the output as `(batch, seq, heads, head_dim)` and the attention probabilities
    `(batch, heads, seq, seq)` (before dropout), or with `return_logits` the pre-softmax logits instead: the scores
    NMI-HAD distils come out of the same computation as the output."""
    logits = attention_scores(query, key, scaling, attention_mask)
    probs = attention_probabilities(logits, value.dtype)
    probs_dropped = F.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs_dropped, value).transpose(1, 2).contiguous()
    return output, (logits if return_logits else probs)


def transferability_attention_bias(
    transferability: torch.Tensor, strength: float, seq_len: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The TMA bias of TMT (arXiv 2504.05774) as an additive attention mask: from a per-patch transferability map
    `T` of shape `(batch, num_patches)` in [0, 1], the bias `(batch, 1, 1, 1 + num_patches)` added to the logits of
    every head and query: `strength * (1 - T[k])` for patch key `k` and 0 for the CLS key. A key in a region that
    transfers poorly (low `T`) gets up to `strength` more logit, i.e. up to `exp(strength)` times more attention
    weight than a fully transferable one; a constant map (all regions alike) changes nothing after the softmax."""
    if transferability.ndim != 2 or transferability.shape[1] != seq_len - 1:
        raise ValueError(
            f"the transferability map must have shape (batch, num_patches) = (batch, {seq_len - 1}) for this input, "
            f"got {tuple(transferability.shape)}"
        )
    bias = strength * (1.0 - transferability.detach().float())
    bias = torch.cat([bias.new_zeros(bias.shape[0], 1), bias], dim=1)
    return bias[:, None, None, :].to(dtype or bias.dtype)


class UnipSelfAttention(nn.Module):
    """Multi-head self-attention with a fused query/key/value projection (timm layout: `qkv`, `proj`).

    Args:
        config (`UnipConfig`): the model configuration.
        num_heads (`int`): heads of this block (the last block may differ from the others).
    """

    def __init__(self, config: UnipConfig, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = config.hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.dropout_prob = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)
        # The weights carry the head count: the qkv/proj shapes do not depend on it, so without it a checkpoint
        # distilled with (say) 16 heads in its last block would load silently into a 3-head block. The buffer's
        # length is the head count, so loading it into a block built with another count is a size mismatch, which
        # transformers' `from_pretrained` and torch's `load_state_dict` both refuse, naming this key.
        self.register_buffer("head_index", torch.arange(num_heads), persistent=True)

    def project(
        self, hidden_states: torch.Tensor, values: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Queries, keys and (when `values`) values, each `(batch, heads, seq, head_dim)`. Without values only the
        query and key rows of the fused projection are applied."""
        batch, seq_len, width = hidden_states.shape
        if values:
            qkv = self.qkv(hidden_states).reshape(batch, seq_len, 3, self.num_heads, self.head_dim)
            query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            return query, key, value
        bias = self.qkv.bias[: 2 * width] if self.qkv.bias is not None else None
        qk = F.linear(hidden_states, self.qkv.weight[: 2 * width], bias)
        query, key = qk.reshape(batch, seq_len, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return query, key, None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_bias: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_attention_logits: bool = False,
        logits_only: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Returns `(output, probabilities or None, logits or None)`.

        One attention call: the configured attention function (`config._attn_implementation` through transformers'
        `ALL_ATTENTION_FUNCTIONS`: SDPA by default, or any registered one), except when the probabilities or the
        logits are asked for: those come from [`eager_attention_forward`] (`return_logits` for the logits; with both,
        the probabilities are the softmax of those logits). `attention_bias` (broadcastable to
        `(batch, heads, seq, seq)`, e.g. [`transferability_attention_bias`]) is the additive mask, included in the
        returned logits. `logits_only` returns `(None, None, logits)` after applying only the query/key rows of the
        projection (what NMI-HAD needs of the student's last block).
        """
        batch, seq_len, _ = hidden_states.shape
        query, key, value = self.project(hidden_states, values=not logits_only)
        mask = attention_bias.to(query.dtype) if attention_bias is not None else None
        if logits_only:
            return None, None, attention_scores(query, key, self.scaling, mask)
        implementation = self.config._attn_implementation or "sdpa"
        explicit = output_attentions or output_attention_logits or implementation == "eager"
        attention: Callable = (
            eager_attention_forward if explicit
            else ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        )
        dropout = self.dropout_prob if self.training else 0.0
        extra = {"return_logits": True} if output_attention_logits else {}
        output, weights = attention(self, query, key, value, mask, scaling=self.scaling, dropout=dropout, **extra)
        logits = weights if output_attention_logits else None
        probs = None
        if output_attentions:
            probs = attention_probabilities(logits, value.dtype) if output_attention_logits else weights
        output = self.proj_dropout(self.proj(output.reshape(batch, seq_len, -1)))
        return output, probs, logits


class UnipMLP(nn.Module):
    """Two-layer MLP of the transformer block."""

    def __init__(self, config: UnipConfig):
        super().__init__()
        hidden = int(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, hidden)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(hidden_states))))


class UnipLayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (CaiT / DINOv2 layer scale)."""

    def __init__(self, config: UnipConfig):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((config.hidden_size,), float(config.layer_scale_init_value)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.lambda1


class UnipDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample during training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep = 1.0 - self.drop_prob
        mask = hidden_states.new_empty((hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)).bernoulli_(keep)
        return hidden_states * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class UnipLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), with optional layer scale and
    stochastic depth."""

    def __init__(self, config: UnipConfig, num_heads: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = UnipSelfAttention(config, num_heads)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = UnipMLP(config)
        use_scale = config.layer_scale_init_value is not None
        self.layer_scale1 = UnipLayerScale(config) if use_scale else nn.Identity()
        self.layer_scale2 = UnipLayerScale(config) if use_scale else nn.Identity()
        self.drop_path = UnipDropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, hidden_states: torch.Tensor, attention_bias: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns `(hidden_states, attention probabilities or None, attention logits or None)`; `kwargs` go to the
        attention (`output_attentions`, `output_attention_logits`)."""
        attended, probs, logits = self.attention(self.norm1(hidden_states), attention_bias, **kwargs)
        hidden_states = hidden_states + self.drop_path(self.layer_scale1(attended))
        hidden_states = hidden_states + self.drop_path(self.layer_scale2(self.mlp(self.norm2(hidden_states))))
        return hidden_states, probs, logits


class UnipEncoder(nn.Module):
    """The stack of blocks. Block `i` has `config.num_heads_of_layer(i)` heads; drop path grows linearly."""

    def __init__(self, config: UnipConfig):
        super().__init__()
        self.config = config
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layer = nn.ModuleList(
            [UnipLayer(config, config.num_heads_of_layer(i), rates[i]) for i in range(depth)]
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        last_layer: int,
        output_attentions: bool = False,
        attention_logits_layers: Sequence[int] = (),
        keep_layers: Sequence[int] = (),
        keep_fn: Callable[[torch.Tensor], object] | None = None,
        transferability: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> UnipEncoderOutput:
        """Run blocks `0..last_layer` (none when `last_layer` is -1); this loop is the only place blocks run. The
        outputs of `keep_layers` are kept (through `keep_fn` as soon as each is computed, when given). Hidden states,
        attention probabilities and the logits of `attention_logits_layers` are not collected here: the blocks
        return them and [`UnipViTModel`] records them (transformers' `capture_outputs`).

        With `config.tmt_blocks` and a `transferability` map `(batch, num_patches)` (or a function returning it from
        the detached patch tokens `(batch, num_patches, hidden)` that enter the first TMT block), those blocks attend
        with [`transferability_attention_bias`]. Without either, nothing is added."""
        kept: dict[int, object] = {}
        wanted, keep = set(attention_logits_layers), set(keep_layers)
        tmt_blocks = set(self.config.tmt_blocks) if transferability is not None else set()
        bias = transferability_map = None
        for index in range(last_layer + 1):
            if index in tmt_blocks and bias is None:
                transferability_map = (transferability(hidden_states[:, 1:].detach()) if callable(transferability)
                                       else transferability)
                bias = transferability_attention_bias(
                    transferability_map, self.config.tmt_strength, hidden_states.shape[1], hidden_states.dtype)
            hidden_states = self.layer[index](
                hidden_states, bias if index in tmt_blocks else None, output_attentions=output_attentions,
                output_attention_logits=index in wanted,
            )[0]
            if index in keep:
                kept[index] = keep_fn(hidden_states) if keep_fn is not None else hidden_states
        return UnipEncoderOutput(last_hidden_state=hidden_states, kept=kept, num_layers_run=last_layer + 1,
                                 transferability_map=transferability_map)


@dataclass
class UnipEncoderOutput(ModelOutput):
    """What the blocks computed: the last block's output, the kept block outputs by block index, the number of blocks
    run, the TMT map; `hidden_states`, `attentions` and `attention_logits` (in block order) are filled in by
    transformers' `capture_outputs` when asked for."""

    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    attention_logits: tuple[torch.Tensor, ...] | None = None
    kept: dict[int, object] | None = None
    num_layers_run: int | None = None
    transferability_map: torch.Tensor | None = None


class UnipPreTrainedModel(PreTrainedModel):
    """Weight initialisation, remote-code saving and loading conventions shared by the UNIP models."""

    config_class = UnipConfig
    config: UnipConfig
    base_model_prefix = "unip"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["UnipEmbeddings", "UnipLayer"]
    # What the tests exercise: eager and SDPA give the same outputs (test_sdpa_and_eager_identical), and a function
    # registered with transformers' AttentionInterface is called with its convention (_supports_attention_backend).
    _supports_sdpa = True
    # False: never run here (FlashAttention needs CUDA and the flash-attn package; the test suite runs on CPU).
    _supports_flash_attn = False
    # False: flex attention (which needs torch.compile) is not tested.
    _supports_flex_attn = False
    _supports_attention_backend = True
    # the `auto_map` `save_pretrained` writes (None: every Auto class of the UNIP files, `AUTO_MAP`)
    remote_code_auto_map: dict[str, str] | None = None
    # checkpoints written before the head count became the length of `head_index` saved it as a scalar `head_count`;
    # a checkpoint without `head_index` (those, or converted weights) gets it from the configuration: not a weight
    _keys_to_ignore_on_load_unexpected = [r"attention\.head_count$"]
    _keys_to_ignore_on_load_missing = [r"attention\.head_index$"]
    # what transformers' `capture_outputs` records while `UnipViTModel._encode` runs: every block's output (after the
    # embeddings), and the probabilities and logits the attention modules return (`None` entries are skipped)
    _can_record_outputs = {
        "hidden_states": UnipLayer,
        "attentions": OutputRecorder(UnipSelfAttention, index=1),
        "attention_logits": OutputRecorder(UnipSelfAttention, index=2),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-normal linear/conv weights, zero biases, unit norms, sin-cos or truncated-normal positions."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
        elif isinstance(module, UnipEmbeddings):
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            if self.config.position_embedding_type == "sincos":
                grid = module.patch_embeddings.grid_size
                init.copy_(module.position_embeddings, sincos_position_embedding(self.config.hidden_size, grid, grid))
            else:
                init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
        elif isinstance(module, UnipLayerScale):
            init.constant_(module.lambda1, self.config.layer_scale_init_value)
        elif isinstance(module, UnipSelfAttention):
            init.copy_(module.head_index, torch.arange(module.num_heads))

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the remote code: the UNIP files (`REMOTE_CODE_FILES`) are copied
        next to the weights and `config.json` gets an `auto_map` naming every Auto class they provide, so the
        checkpoint loads with `trust_remote_code=True` where `unip_hf` is not installed.

        The one override kept: transformers' own route (`register_for_auto_class`, then `custom_object_save` inside
        `save_pretrained`) names one Auto class per saved class and copies only that class's import closure, so a
        segmentation checkpoint would lose `AutoModel` / `AutoBackbone` / `AutoImageProcessor` and the decoding
        file, and registering the classes would mark them as custom code even where the package is installed."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory, auto_map=None if self.remote_code_auto_map is None
                              else dict(self.remote_code_auto_map))
        return result


class UnipViTModel(UnipPreTrainedModel):
    """The UNIP ViT backbone: CLS token, patch embeddings, pre-norm blocks, final layer norm.

    Beyond the usual outputs it can return the pre-softmax attention logits of chosen layers
    (`attention_logits_layers`) and stop after a given block (`stop_after_layer`); only the requested layers build
    an explicit attention matrix, the others run the configured fused kernel (SDPA by default). Feature maps of
    chosen blocks come from [`~UnipViTModel.forward_intermediates`], the one feature path that the segmentation
    heads and [`UnipBackbone`] (hence UperNet) use.

    Example:

    ```python
    >>> import torch
    >>> from unip_hf import UnipConfig, UnipViTModel
    >>> model = UnipViTModel(UnipConfig.from_preset("unip-tiny", last_layer_num_attention_heads=6)).eval()
    >>> out = model(torch.randn(1, 3, 224, 224), attention_logits_layers=[11])
    >>> out.attention_logits[0].shape
    torch.Size([1, 6, 197, 197])
    ```
    """

    _keys_to_ignore_on_load_unexpected = UnipPreTrainedModel._keys_to_ignore_on_load_unexpected + [
        r"^decode_head\.", r"^neck\.", r"^auxiliary_head\."]

    def __init__(self, config: UnipConfig):
        super().__init__(config)
        self.embeddings = UnipEmbeddings(config)
        self.encoder = UnipEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> UnipPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def _resolve_layer(self, index: int, what: str) -> int:
        depth = self.config.num_hidden_layers
        if not -depth <= index < depth:
            raise ValueError(f"{what}={index} is out of range for a model with {depth} blocks (0-based indices)")
        return index % depth

    def _check_pixel_values(self, pixel_values: torch.Tensor | None) -> None:
        if pixel_values is None:
            raise ValueError("pixel_values is required")

    @capture_outputs(tie_last_hidden_states=False)
    def _encode(self, pixel_values: torch.Tensor, last_layer: int, output_attentions: bool = False,
                output_hidden_states: bool = False, output_attention_logits: bool = False,
                attention_logits_layers: Sequence[int] = (), **kwargs) -> UnipEncoderOutput:
        """Embed and run blocks `0..last_layer` ([`UnipEncoder`]), with the hidden states, attention probabilities and
        the logits of `attention_logits_layers` (one per distinct block, in block order) recorded by
        `capture_outputs` (which reads the `output_*` flags); `kwargs`: `keep_layers`, `keep_fn`, `transferability`."""
        return self.encoder(self.embeddings(pixel_values), last_layer, output_attentions=output_attentions,
                            attention_logits_layers=attention_logits_layers, **kwargs)

    def _run(self, pixel_values: torch.Tensor, last_layer: int, output_attentions: bool = False,
             output_hidden_states: bool = False, attention_logits_layers: Sequence[int] = (), **kwargs
             ) -> tuple[UnipEncoderOutput, dict[int, torch.Tensor]]:
        """`_encode` with the recording switched on exactly for what is asked; returns its output and the recorded
        logits by block index."""
        encoded = self._encode(
            pixel_values, last_layer, output_attentions=bool(output_attentions),
            output_hidden_states=bool(output_hidden_states), output_attention_logits=bool(attention_logits_layers),
            attention_logits_layers=attention_logits_layers, return_dict=True, **kwargs,
        )
        recorded = encoded.attention_logits or ()
        return encoded, dict(zip(sorted(set(attention_logits_layers)), recorded))

    def _model_output(self, encoded: UnipEncoderOutput, logits_by_layer: dict[int, torch.Tensor],
                      logits_layers: Sequence[int]) -> UnipModelOutput:
        """The final norm and pooling when every block ran (the norm on the pooled CLS token only with
        `config.layernorm_pooled_only`); the raw output of the last block run otherwise."""
        if encoded.num_layers_run == self.config.num_hidden_layers and self.config.layernorm_pooled_only:
            sequence_output = encoded.last_hidden_state
            pooled = self.layernorm(sequence_output[:, 0])
        elif encoded.num_layers_run == self.config.num_hidden_layers:
            sequence_output = self.layernorm(encoded.last_hidden_state)
            pooled = sequence_output[:, 0]
        else:
            sequence_output, pooled = encoded.last_hidden_state, None
        attention_logits = tuple(logits_by_layer[i] for i in logits_layers) if logits_layers else None
        return UnipModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooled,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
            attention_logits=attention_logits,
            num_layers_run=encoded.num_layers_run,
            transferability_map=encoded.transferability_map,
        )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        attention_logits_layers: Sequence[int] | None = None,
        stop_after_layer: int | None = None,
        transferability: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs,
    ) -> UnipModelOutput:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images; height and width must be multiples of the patch size.
            output_attentions (`bool`, *optional*):
                Return the attention probabilities of every computed layer (computed explicitly, whatever the
                attention implementation). Defaults to `config.output_attentions`.
            output_hidden_states (`bool`, *optional*):
                Return the embeddings and the output of every computed block. Defaults to
                `config.output_hidden_states`.
            return_dict (`bool`, *optional*):
                Return a [`UnipModelOutput`] instead of a tuple (its `to_tuple()`: the fields that are not `None`, in
                order, so `pooler_output` is left out after `stop_after_layer` and `num_layers_run` comes last).
            attention_logits_layers (`Sequence[int]`, *optional*):
                0-based blocks whose pre-softmax attention logits (all heads) are returned in `attention_logits`.
                Negative indices count from the end.
            stop_after_layer (`int`, *optional*):
                Run blocks `0..stop_after_layer` only. `last_hidden_state` is then that block's raw output (no final
                norm) and `pooler_output` is `None`: the same early exit as `forward_intermediates(stop_early=True)`.
            transferability (`torch.Tensor` or callable, *optional*):
                TMT's per-patch transferability map `(batch_size, num_patches)` in [0, 1], or a function computing it
                from the patch tokens entering the first block of `config.tmt_blocks`; those blocks then attend with
                the TMA bias (see [`UnipConfig`]). Ignored when `config.tmt_blocks` is empty.
        """
        self._check_pixel_values(pixel_values)
        logits_layers = [self._resolve_layer(i, "attention_logits_layers") for i in (attention_logits_layers or ())]
        last = self.config.num_hidden_layers - 1
        if stop_after_layer is not None:
            last = self._resolve_layer(stop_after_layer, "stop_after_layer")
            if any(i > last for i in logits_layers):
                raise ValueError(
                    f"attention_logits_layers {logits_layers} asks for layers after stop_after_layer={last}"
                )
        encoded, logits_by_layer = self._run(
            pixel_values, last,
            output_attentions=self.config.output_attentions if output_attentions is None else output_attentions,
            output_hidden_states=(self.config.output_hidden_states if output_hidden_states is None
                                  else output_hidden_states),
            attention_logits_layers=logits_layers, transferability=transferability,
        )
        return self._model_output(encoded, logits_by_layer, logits_layers)

    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        output_fmt: str = "NCHW",
        norm: bool = False,
        stop_early: bool = True,
        return_prefix_tokens: bool = False,
        intermediates_only: bool = True,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        transferability: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list | tuple[UnipModelOutput, list]:
        """Outputs of chosen blocks (in the spirit of timm's `forward_intermediates`): the feature path of the
        LL-FPN and multi-level FPN necks, the linear probe and [`UnipBackbone`].

        Args:
            pixel_values (`torch.Tensor`): normalised images `(batch, channels, height, width)`.
            indices (`int` or `Sequence[int]`, *optional*): 0-based blocks (negative counts from the end, repeats
                allowed, returned in the given order); an int `n` means the last `n` blocks; `None` means all.
            output_fmt (`str`, defaults to `"NCHW"`): `"NCHW"` gives `(batch, hidden, H/p, W/p)` maps, `"NLC"` gives
                the patch tokens `(batch, H/p * W/p, hidden)`.
            norm (`bool`, defaults to `False`): apply the final layer norm to each output (UNIP's necks use the raw
                block outputs).
            stop_early (`bool`, defaults to `True`): run no block after the deepest requested one.
            return_prefix_tokens (`bool`, defaults to `False`): return `(features, cls_token)` pairs, the CLS token
                as `(batch, 1, hidden)`.
            intermediates_only (`bool`, defaults to `True`): return only the list; otherwise
                `(UnipModelOutput, list)`, the output of the run (with the final norm when every block ran, otherwise
                the raw output of the last block run, as with `stop_after_layer`).
            output_attentions, output_hidden_states (`bool`): fill those fields of the `UnipModelOutput`.
            transferability (`torch.Tensor` or callable, *optional*): the TMT map, as in [`~UnipViTModel.forward`].
        """
        depth = self.config.num_hidden_layers
        if indices is None:
            indices = list(range(depth))
        elif isinstance(indices, int):
            if not 0 < indices <= depth:
                raise ValueError(f"indices={indices} asks for the last {indices} of {depth} blocks")
            indices = list(range(depth - indices, depth))
        indices = [self._resolve_layer(i, "indices") for i in indices]
        if not indices:
            raise ValueError("forward_intermediates needs at least one block index")
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        height, width = pixel_values.shape[-2:]
        patch = self.config.patch_size

        def features(hidden: torch.Tensor):
            if norm:
                hidden = self.layernorm(hidden)
            tokens = hidden[:, 1:]
            if output_fmt == "NCHW":
                tokens = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height // patch, width // patch)
            return (tokens, hidden[:, :1]) if return_prefix_tokens else tokens

        last = max(indices) if stop_early else depth - 1
        encoded, _ = self._run(
            pixel_values, last, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            keep_layers=indices, keep_fn=features, transferability=transferability,
        )
        intermediates = [encoded.kept[index] for index in indices]
        if intermediates_only:
            return intermediates
        return self._model_output(encoded, {}, ()), intermediates

    def attention_logits(self, pixel_values: torch.Tensor, layers: Sequence[int] = (-1,)) -> tuple[torch.Tensor, ...]:
        """Pre-softmax attention logits of the given blocks (all heads, CLS first), computing nothing that they do not
        depend on: blocks before the deepest requested one run in full (explicit attention only where logits are
        requested), the deepest runs only its first norm and the query/key part of its projection; its values,
        output projection and MLP, later blocks and the final norm are skipped. This is what NMI-HAD needs from the
        student (the last block's logits), at the cost of `num_hidden_layers - 1` blocks and a fraction of one.

        Args:
            pixel_values (`torch.Tensor`): normalised images `(batch, channels, height, width)`.
            layers (`Sequence[int]`, defaults to `(-1,)`): 0-based blocks (negative counts from the end).

        Returns:
            `tuple[torch.Tensor, ...]`: one `(batch, heads, N, N)` tensor per requested block, in the given order.
        """
        indices = [self._resolve_layer(i, "layers") for i in layers]
        if not indices:
            raise ValueError("attention_logits needs at least one layer index")
        deepest = max(indices)
        encoded, found = self._run(pixel_values, deepest - 1, attention_logits_layers=[i for i in indices if i < deepest])
        block = self.encoder.layer[deepest]
        found[deepest] = block.attention(block.norm1(encoded.last_hidden_state), logits_only=True)[2]
        return tuple(found[i] for i in indices)


class UnipBackbone(BackboneMixin, UnipViTModel):
    """[`UnipViTModel`] as a transformers backbone (`AutoBackbone`): `feature_maps` are the raw outputs of the blocks
    `config.out_indices` / `config.out_features` as `(batch, hidden, H/p, W/p)` maps, from
    [`~UnipViTModel.forward_intermediates`] (no block after the deepest one runs). This is what
    `UperNetForSemanticSegmentation(UperNetConfig(backbone_config=UnipConfig(...)))` builds.

    Example:

    ```python
    >>> import torch
    >>> from transformers import AutoBackbone
    >>> from unip_hf import UnipConfig
    >>> backbone = AutoBackbone.from_config(UnipConfig.from_preset("unip-tiny", out_indices=[3, 5, 7, 11]))
    >>> [tuple(m.shape) for m in backbone(torch.randn(1, 3, 224, 224)).feature_maps][0]
    (1, 192, 14, 14)
    ```
    """

    def __init__(self, config: UnipConfig):
        super().__init__(config)
        self.num_features = [config.hidden_size] * config.num_hidden_layers

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BackboneOutput:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): normalised images.
            output_hidden_states (`bool`, *optional*): also return every hidden state (all blocks then run).
            output_attentions (`bool`, *optional*): also return every layer's attention (all blocks then run).
            return_dict (`bool`, *optional*): return a `BackboneOutput` instead of a tuple.
        """
        self._check_pixel_values(pixel_values)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        outputs, maps = self.forward_intermediates(
            pixel_values,
            self.out_indices,
            stop_early=not (output_attentions or output_hidden_states),  # all blocks run when those are asked for
            intermediates_only=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return BackboneOutput(feature_maps=tuple(maps), hidden_states=outputs.hidden_states,
                              attentions=outputs.attentions)


__all__ = ["UnipPreTrainedModel", "UnipViTModel", "UnipBackbone"]
