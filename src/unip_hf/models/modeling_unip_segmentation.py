"""UNIP semantic segmentation (Zhang et al., ICLR 2025): `UnipForSemanticSegmentation`, a UNIP ViT with the last-layer
feature pyramid (LL-FPN) or the multi-level one, a UPerNet head and an auxiliary FCN head, or a linear probe. Travels
with saved checkpoints as remote code."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils.generic import can_return_tuple

from .configuration_unip import UnipConfig
from .losses import semantic_segmentation_loss
from .modeling_unip import UnipPreTrainedModel, UnipViTModel


class UnipConvModule(nn.Sequential):
    """Convolution + BatchNorm + ReLU (mmseg's ConvModule)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UnipFeaturePyramid(nn.Module):
    """The four scale operations of the ViT feature pyramid, applied to four maps at 1/p resolution.

    Scale 0: x4 upsampling (ConvT 2x2 s2, BN, GELU, ConvT 2x2 s2); scale 1: x2 (ConvT 2x2 s2); scale 2: identity;
    scale 3: /2 (max-pool 2). LL-FPN feeds the last block's map to all four; the multi-level FPN feeds four blocks.
    """

    def __init__(self, config: UnipConfig):
        super().__init__()
        dim = config.hidden_size
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [op(x) for op, x in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), maps)]


class UnipPyramidPooling(nn.Module):
    """Pyramid pooling module of UPerNet: adaptive average pooling at several scales, 1x1 conv, upsampling."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int):
        super().__init__()
        self.stages = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(scale), UnipConvModule(in_channels, channels)) for scale in pool_scales]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = x.shape[-2:]
        return [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]


class UnipUperHead(nn.Module):
    """UPerNet decode head (pyramid pooling on the coarsest map + top-down FPN fusion), logits at the finest scale.

    A copy, kept on purpose, of transformers' `UperNetHead` (`models/upernet/modeling_upernet.py`, itself from
    mmseg's `UPerHead`): the same computation, pinned by `tests/test_modeling.py::test_uper_heads_match_transformers`
    (identical logits through a key map), plus mmseg's `Dropout2d` before the classifier that UNIP's configurations
    train with and transformers' copy leaves out. Reusing transformers' class would drop that dropout (changing
    training) and rename every head key of the checkpoints already saved and of the mmseg converter."""

    def __init__(self, config: UnipConfig, in_channels: int):
        super().__init__()
        channels = config.decoder_hidden_size or config.hidden_size
        self.psp = UnipPyramidPooling(config.pool_scales, in_channels, channels)
        self.bottleneck = UnipConvModule(in_channels + len(config.pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList([UnipConvModule(in_channels, channels) for _ in range(3)])
        self.fpn_convs = nn.ModuleList([UnipConvModule(channels, channels, 3) for _ in range(3)])
        self.fpn_bottleneck = UnipConvModule(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(config.decoder_dropout)
        self.classifier = nn.Conv2d(channels, config.num_labels, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        top = features[3]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features[:3])]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp(top)], dim=1)))
        for i in range(3, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:3])] + [laterals[3]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in outs[1:]]
        return self.classifier(self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1))))


class UnipFCNHead(nn.Module):
    """Auxiliary FCN head: 3x3 conv-BN-ReLU, dropout, 1x1 classifier: transformers' `UperNetFCNHead` with one
    convolution and no input concatenation, plus mmseg's dropout (a copy for the reasons given at `UnipUperHead`)."""

    def __init__(self, config: UnipConfig):
        super().__init__()
        self.conv = UnipConvModule(config.hidden_size, config.auxiliary_channels, 3)
        self.dropout = nn.Dropout2d(config.decoder_dropout)
        self.classifier = nn.Conv2d(config.auxiliary_channels, config.num_labels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class UnipLinearProbeHead(nn.Module):
    """Linear probe: the tapped blocks' maps concatenated along channels, one 1x1 convolution."""

    def __init__(self, config: UnipConfig):
        super().__init__()
        self.classifier = nn.Conv2d(config.hidden_size * len(config.feature_indices), config.num_labels, 1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(torch.cat(list(maps), dim=1))


@dataclass
class UnipSemanticSegmenterOutput(SemanticSegmenterOutput):
    """`SemanticSegmenterOutput` plus the TMT transferability map the backbone attended with.

    Args:
        transferability_map (`torch.Tensor`, *optional*):
            `(batch_size, num_patches)` map in [0, 1] (when a `transferability` was given and `config.tmt_blocks` is
            not empty).
    """

    transferability_map: torch.Tensor | None = None


class UnipForSemanticSegmentation(UnipPreTrainedModel):
    """UNIP backbone with a segmentation head chosen by `config.decode_head`:

    - `"ll_fpn"`: LL-FPN, the four-scale pyramid built from the last block alone, UPerNet head, optional auxiliary
      FCN head on the 1/p map;
    - `"multilevel_fpn"`: the same pyramid operations on blocks `config.out_indices` (default `[3, 5, 7, 11]`);
    - `"linear_probe"`: the backbone frozen, blocks `config.out_indices` concatenated, one 1x1 convolution.

    `logits` come at the resolution of the finest pyramid level (1/4 for patch 16) or 1/p for the probe; the loss is
    computed after bilinear upsampling to the label size, with `config.semantic_loss_ignore_index` ignored.

    Example:

    ```python
    >>> import torch
    >>> from unip_hf import UnipConfig, UnipForSemanticSegmentation
    >>> config = UnipConfig.from_preset("unip-tiny", num_labels=2, image_size=64)
    >>> model = UnipForSemanticSegmentation(config)
    >>> out = model(torch.randn(2, 3, 64, 64), labels=torch.randint(0, 2, (2, 64, 64)))
    >>> out.logits.shape
    torch.Size([2, 2, 16, 16])
    ```
    """

    def __init__(self, config: UnipConfig):
        super().__init__(config)
        self.unip = UnipViTModel(config)
        self.neck = None
        self.auxiliary_head = None
        if config.decode_head == "linear_probe":
            self.decode_head = UnipLinearProbeHead(config)
        else:
            self.neck = UnipFeaturePyramid(config)
            self.decode_head = UnipUperHead(config, config.hidden_size)
            if config.use_auxiliary_head:
                self.auxiliary_head = UnipFCNHead(config)
        self.loss_function = semantic_segmentation_loss
        self.post_init()

    def _tapped_layers(self) -> list[int]:
        if self.config.decode_head == "ll_fpn":
            return [self.config.num_hidden_layers - 1]
        return self.config.feature_indices

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        transferability: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
        loss_weights: torch.Tensor | None = None,
        **kwargs,
    ) -> UnipSemanticSegmenterOutput:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images (height and width multiples of the patch size).
            labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
                Class indices; `config.semantic_loss_ignore_index` (255) is ignored by the loss.
            output_attentions (`bool`, *optional*): also return the backbone's attention probabilities.
            output_hidden_states (`bool`, *optional*): also return the backbone's hidden states.
            return_dict (`bool`, *optional*): return a `SemanticSegmenterOutput` instead of a tuple.
            transferability (`torch.Tensor` or callable, *optional*): TMT's per-patch transferability map (or the
                function computing it) for the blocks `config.tmt_blocks`, as in [`~UnipViTModel.forward`]; the map
                used is returned as `transferability_map`.
            loss_weights (`torch.Tensor` of shape `(batch_size, h, w)`, *optional*): per-pixel weights of the
                cross-entropy at any resolution (bilinearly resized to the labels); see [`~UnipForSemanticSegmentation.compute_loss`].
        """
        if labels is not None and self.config.num_labels < 1:
            raise ValueError("num_labels must be at least 1 to compute a segmentation loss")
        backbone_outputs = None
        # the probe's backbone is frozen: no graph is kept for it
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.decode_head != "linear_probe"):
            if output_attentions or output_hidden_states:  # every block runs, for the hidden states / attentions
                backbone_outputs, maps = self.unip.forward_intermediates(
                    pixel_values, self._tapped_layers(), stop_early=False, intermediates_only=False,
                    output_attentions=bool(output_attentions), output_hidden_states=bool(output_hidden_states),
                    transferability=transferability,
                )
            elif transferability is not None and self.config.tmt_blocks:
                backbone_outputs, maps = self.unip.forward_intermediates(
                    pixel_values, self._tapped_layers(), intermediates_only=False, transferability=transferability
                )
            else:
                maps = self.unip.forward_intermediates(pixel_values, self._tapped_layers())

        if self.config.decode_head == "linear_probe":
            logits = self.decode_head(maps)
            aux_input = None
        else:
            if self.config.decode_head == "ll_fpn":
                maps = maps * 4
            logits = self.decode_head(self.neck(maps))
            aux_input = maps[-1] if self.config.decode_head == "ll_fpn" else maps[2]

        loss = None
        if labels is not None:
            loss = self.compute_loss(logits, labels, loss_weights)
            if self.auxiliary_head is not None and aux_input is not None:
                aux_logits = self.auxiliary_head(aux_input)
                loss = loss + self.config.auxiliary_loss_weight * self.compute_loss(aux_logits, labels, loss_weights)

        hidden_states = backbone_outputs.hidden_states if (backbone_outputs is not None and output_hidden_states) else None
        attentions = backbone_outputs.attentions if backbone_outputs is not None else None
        transferability_map = backbone_outputs.transferability_map if backbone_outputs is not None else None
        return UnipSemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states,
                                           attentions=attentions, transferability_map=transferability_map)


    def compute_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[`~unip_hf.models.losses.semantic_segmentation_loss`] with this configuration's ignore index and loss
        type (`self.loss_function`, transformers' hook for a model's loss)."""
        return self.loss_function(logits, labels, ignore_index=self.config.semantic_loss_ignore_index,
                                  loss_type=self.config.semantic_loss_type, loss_weights=loss_weights)


__all__ = ["UnipForSemanticSegmentation"]
