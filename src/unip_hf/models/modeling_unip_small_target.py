"""UNIP for infrared small-target segmentation (IRSTD): `UnipForSmallTargetSegmentation`, a full-resolution
convolutional detail path fused with the context of a UNIP ViT block, decoded to one target logit per pixel, with
tiled full-resolution inference that equals the whole-frame result. Travels with saved checkpoints as remote code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils.generic import can_return_tuple

from .configuration_unip import SMALL_TARGET_AUTO_MAP, UnipSmallTargetConfig
from .losses import deep_supervision_loss
from .modeling_unip import UnipPreTrainedModel, UnipViTModel
from .modeling_unip_segmentation import UnipConvModule


class UnipDetailBlock(nn.Sequential):
    """Two 3x3 convolutions, each with batch norm and ReLU: a stage of the full-resolution detail path."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UnipTargetClassifier(nn.Conv2d):
    """1x1 convolution to one target logit; its bias starts at the logit of `config.target_prior`."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels, 1, 1)


@dataclass
class UnipSmallTargetOutput(SemanticSegmenterOutput):
    """[`UnipForSmallTargetSegmentation`] outputs: `logits` `(B, 2, H, W)` at the input resolution (background
    logit 0, target logit z, so that the softmax target probability is `sigmoid(z)`), `target_logits` `(B, 1, H, W)`
    (z), `auxiliary_logits` (deep-supervision logits of the coarser decoder stages, at their own resolution, training
    only), `decoder_hidden_states` (the decoder maps, coarse to fine, with `output_hidden_states`)."""

    target_logits: torch.Tensor | None = None
    auxiliary_logits: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None


def _rounded_ratio(numerator: int, denominator: int) -> int:
    """`round(numerator / denominator)` (ties to even, as Python's `round`) in integer arithmetic only, so that
    `torch.export` traces it with symbolic sizes (no float, no branch) and the exported graph keeps any input size."""
    quotient = (2 * numerator + denominator) // (2 * denominator)
    tie = 1 - torch.sym_min((2 * numerator - denominator) % (2 * denominator), 1)
    return quotient - tie * (quotient % 2)


class UnipForSmallTargetSegmentation(UnipPreTrainedModel):
    """Infrared small-target segmentation: a UNIP ViT backbone for context plus a light full-resolution detail path,
    fused U-Net style, with logits at the input resolution.

    Why: a patch-16 ViT with 1/4-resolution logits cannot place 1-5 px targets; the small-target literature (ACM,
    DNANet, SimIRSTD) keeps full resolution and fuses fine detail with context. Here a small CNN encoder (stages of
    `config.detail_channels` channels at 1/1, 1/2, 1/4, ...) keeps the detail; the output of backbone block
    `config.context_layer` (a 1/patch map, from [`UnipViTModel.forward_intermediates`]) is projected to the coarsest
    stage's width, resized to it and fused there; a U-Net decoder goes back up with skip connections to one target
    logit per input pixel. Any size works: the backbone sees the input padded to a multiple of the patch size, the
    poolings use ceil mode, every skip is resized to its encoder stage. Any UNIP (or converted ViT) backbone
    checkpoint initialises `unip`; the detail path and decoder start from scratch.

    The loss (`unip_hf.models.losses`): soft IoU (batch sums) plus BCE or focal loss of the target logit, plus
    `deep_supervision_weight` x the same on each coarser decoder stage with `deep_supervision`.

    Example:

    ```python
    >>> import torch
    >>> from unip_hf import UnipSmallTargetConfig, UnipForSmallTargetSegmentation
    >>> config = UnipSmallTargetConfig.from_preset("unip-tiny", num_hidden_layers=2, patch_size=8, image_size=64)
    >>> model = UnipForSmallTargetSegmentation(config)
    >>> model(torch.randn(1, 3, 37, 53)).logits.shape
    torch.Size([1, 2, 37, 53])
    ```
    """

    config_class = UnipSmallTargetConfig
    config: UnipSmallTargetConfig
    remote_code_auto_map = SMALL_TARGET_AUTO_MAP

    def __init__(self, config: UnipSmallTargetConfig):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"UnipForSmallTargetSegmentation is binary (background, target): num_labels must be 2, "
                             f"got {config.num_labels}")
        self.unip = UnipViTModel(config)
        channels = list(config.detail_channels)
        self.detail_stages = nn.ModuleList(
            UnipDetailBlock(config.num_channels if i == 0 else channels[i - 1], c) for i, c in enumerate(channels))
        self.context_projection = UnipConvModule(config.hidden_size, channels[-1])
        self.fusion = UnipDetailBlock(2 * channels[-1], channels[-1])
        # decoder stage i (from coarse to fine) takes the previous decoder map and encoder stage len - 2 - i
        self.decoder_stages = nn.ModuleList(
            UnipDetailBlock(channels[i + 1] + channels[i], channels[i]) for i in reversed(range(len(channels) - 1)))
        self.classifier = UnipTargetClassifier(channels[0])
        self.auxiliary_classifiers = nn.ModuleList(
            UnipTargetClassifier(c) for c in reversed(channels[1:])) if config.deep_supervision else None
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The UNIP initialisation; convolutions of the detail path Kaiming-normal (a CNN trained from scratch);
        target classifiers start at `config.target_prior`."""
        super()._init_weights(module)
        if isinstance(module, UnipTargetClassifier):
            prior = self.config.target_prior
            init.normal_(module.weight, mean=0.0, std=0.01)
            init.constant_(module.bias, float(torch.logit(torch.tensor(float(prior)))))
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _tapped_layers(self) -> list[int]:
        return [self.config.context_block]

    @property
    def tile_multiple(self) -> int:
        """Tile origins are multiples of this (the coarsest detail stage's stride, `2 ** (len(detail_channels) - 1)`),
        so that every pooling window and every 2x upsampling of a tile lines up with the whole frame's."""
        return 2 ** (len(self.config.detail_channels) - 1)

    @property
    def tile_halo(self) -> int:
        """Input pixels on each side of a tile's kept region that its output can depend on (the receptive field of
        the detail path, fusion and decoder: two 3x3 convolutions per stage at its stride, each pooling and bilinear
        2x upsampling), rounded up to `tile_multiple`. The ViT context is global and is not tiled (see
        `tiled_target_logits`)."""
        stages = len(self.config.detail_channels)
        radius = 0
        for index in range(stages):  # encoder: pooling (index > 0) then two 3x3 convolutions at stride 2**index
            radius += (2 ** (index - 1) if index else 0) + 2 * 2 ** index
        radius += 2 * 2 ** (stages - 1)  # fusion stage
        for index in reversed(range(stages - 1)):  # decoder: bilinear 2x from stride 2**(index+1), two 3x3 convs
            radius += 2 ** (index + 1) + 2 * 2 ** index
        multiple = self.tile_multiple
        return -(-radius // multiple) * multiple

    def coarse_context(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The projected ViT context at the coarsest detail stage's resolution, `(B, C, ceil(H / m), ceil(W / m))`
        with `m = tile_multiple`: the backbone block `config.context_layer` on the input padded to the patch size,
        projected, resized to the padded extent of the coarsest stage and cropped to it."""
        height, width = pixel_values.shape[-2:]
        patch = self.config.patch_size
        padded = F.pad(pixel_values, (0, (-width) % patch, 0, (-height) % patch))
        context = self.unip.forward_intermediates(padded, self._tapped_layers())[0]
        # the coarsest stage's size: ceil-mode 2x2 poolings, one per stage after the first
        coarse_h, coarse_w = height, width
        for _ in range(len(self.config.detail_channels) - 1):
            # ceil(n / 2) as (n + 1) // 2: ONNX integer Div truncates, so a negative floor division would export wrong
            coarse_h, coarse_w = (coarse_h + 1) // 2, (coarse_w + 1) // 2
        extent = (torch.sym_max(coarse_h, _rounded_ratio(padded.shape[-2] * coarse_h, height)),
                  torch.sym_max(coarse_w, _rounded_ratio(padded.shape[-1] * coarse_w, width)))
        context = self.context_projection(context)
        return F.interpolate(context, size=extent, mode="bilinear", align_corners=False)[..., :coarse_h, :coarse_w]

    def _decode(self, pixel_values: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Detail path on `pixel_values`, fusion with `context` (its coarsest-stage map), decoder: the target logits
        `(B, 1, H, W)` and the decoder maps, coarse to fine."""
        skips = []
        x = pixel_values
        for index, stage in enumerate(self.detail_stages):
            if index:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = stage(x)
            skips.append(x)
        x = self.fusion(torch.cat([x, context], dim=1))
        decoder_maps = [x]
        for stage, skip in zip(self.decoder_stages, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
            decoder_maps.append(x)
        return self.classifier(x), decoder_maps

    @torch.no_grad()
    def tiled_target_logits(self, pixel_values: torch.Tensor, tile_size: int = 512) -> torch.Tensor:
        """The target logits `(B, 1, H, W)` of a large frame, with the full-resolution part run tile by tile.

        The ViT context runs once on the whole frame (a 1/patch token map: with SDPA attention its memory grows
        linearly with the frame); the detail path, fusion and decoder, whose activations at full resolution dominate
        the memory, run on `tile_size` x `tile_size` regions (origins multiples of `tile_multiple`) widened by
        `tile_halo` pixels on each side, and only each tile's own region is kept. The peak memory is the frame-sized
        input, output and coarse context plus one tile's activations.

        Identical (`torch.equal`) to `forward(pixel_values).target_logits` in eval mode when the frame's height and
        width are multiples of `tile_multiple` (4 for the default three detail stages) and the tiles are large enough
        for PyTorch to pick the convolution kernels it picks for the frame (on CPU: oneDNN, taken for a batch above 1
        or a convolution input above 20480 values; `tile_size` 128 or more with the default widths; small inputs take
        another kernel whose sums are ordered differently): every output pixel then sees exactly the same inputs,
        pooling windows, bilinear weights and arithmetic. For other sizes the whole-frame decoder
        upsamples by size-dependent ratios (e.g. 10 -> 19 px) that a tile cannot reproduce: the results then differ
        by small amounts near the far edges and along the whole frame (tests bound it); pad such frames to a
        multiple of `tile_multiple` when exact equality matters.
        """
        if self.training:
            raise RuntimeError("tiled_target_logits is an inference path: call model.eval() first (batch norm in "
                               "training mode depends on the whole batch)")
        multiple = self.tile_multiple
        if tile_size < multiple or tile_size % multiple:
            raise ValueError(f"tile_size must be a positive multiple of {multiple} (2 ** (len(detail_channels) - 1)),"
                             f" got {tile_size}")
        height, width = pixel_values.shape[-2:]
        context = self.coarse_context(pixel_values)
        halo = self.tile_halo
        output = pixel_values.new_empty((pixel_values.shape[0], 1, height, width))

        def origins(extent: int) -> list[int]:
            # the last tile is moved back to end at the frame's edge (its origin still a multiple of `multiple`), so
            # that no tile is a thin strip: every tile runs the convolution kernels the whole frame runs
            starts = list(range(0, max(1, extent - tile_size + 1), tile_size))
            if starts[-1] + tile_size < extent:
                starts.append(max(0, extent - tile_size) // multiple * multiple)
            return starts

        for top in origins(height):
            for left in origins(width):
                bottom, right = min(top + tile_size, height), min(left + tile_size, width)
                y0, x0 = max(0, top - halo), max(0, left - halo)
                y1, x1 = min(height, bottom + halo), min(width, right + halo)
                region = pixel_values[..., y0:y1, x0:x1]
                c0y, c0x = y0 // multiple, x0 // multiple
                region_context = context[..., c0y:c0y + -(-(y1 - y0) // multiple), c0x:c0x + -(-(x1 - x0) // multiple)]
                logits, _ = self._decode(region, region_context)
                output[..., top:bottom, left:right] = logits[..., top - y0:bottom - y0, left - x0:right - x0]
        return output

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> UnipSmallTargetOutput:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images, any height and width.
            labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
                0 background, > 0 target, `config.semantic_loss_ignore_index` (255) ignored.
            output_hidden_states (`bool`, *optional*): also return the decoder maps (`decoder_hidden_states`).
            return_dict (`bool`, *optional*): return a `UnipSmallTargetOutput` instead of a tuple (its `to_tuple()`).
        """
        if pixel_values is None or pixel_values.dim() != 4:
            raise ValueError("pixel_values must be a (batch, channels, height, width) tensor")
        target_logits, decoder_maps = self._decode(pixel_values, self.coarse_context(pixel_values))
        logits = torch.cat([torch.zeros_like(target_logits), target_logits], dim=1)
        auxiliary = None
        if self.auxiliary_classifiers is not None and self.training:
            auxiliary = tuple(head(m) for head, m in zip(self.auxiliary_classifiers, decoder_maps[:-1]))

        loss = None
        if labels is not None:
            loss = self.compute_loss(target_logits, labels, auxiliary or ())
        hidden = tuple(decoder_maps) if output_hidden_states else None
        return UnipSmallTargetOutput(loss=loss, logits=logits, target_logits=target_logits,
                                     auxiliary_logits=auxiliary, decoder_hidden_states=hidden)

    def compute_loss(self, target_logits: torch.Tensor, labels: torch.Tensor,
                     auxiliary_logits: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Soft IoU + the configured pixel term of the target logits at the label size, plus the weighted
        deep-supervision terms."""
        config = self.config
        return deep_supervision_loss(
            target_logits, auxiliary_logits, labels.long(), config.deep_supervision_weight,
            ignore_index=config.semantic_loss_ignore_index, pixel_loss=config.pixel_loss,
            soft_iou_weight=config.soft_iou_weight, pixel_loss_weight=config.pixel_loss_weight,
            focal_gamma=config.focal_gamma, focal_alpha=config.focal_alpha)


__all__ = ["UnipForSmallTargetSegmentation"]
