"""Configuration of UNIP vision transformers (Zhang et al., "UNIP: Rethinking Pre-trained Attention Patterns for
Infrared Semantic Segmentation", ICLR 2025): the ViT backbone distilled with NMI-HAD and its segmentation heads
(LL-FPN / multi-level FPN + UPerNet, or a linear probe).

This file imports only `transformers` so that it travels with saved checkpoints as remote code.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, ClassVar

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

# Named size presets. The width/depth/heads of the ViT-T/S/B/L family used by the paper.
UNIP_PRESETS: dict[str, dict[str, Any]] = {
    "unip-tiny": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3},
    "unip-small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "unip-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "unip-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
}

# The remote code of a checkpoint: these files travel with every saved model and processor, and `auto_map` names
# the Auto classes they provide.
REMOTE_CODE_FILES = ("configuration_unip.py", "modeling_unip.py", "modeling_unip_segmentation.py",
                     "modeling_unip_small_target.py", "image_processing_unip.py", "infrared_decoding.py", "losses.py")
AUTO_MAP = {
    "AutoConfig": "configuration_unip.UnipConfig",
    "AutoModel": "modeling_unip.UnipViTModel",
    "AutoModelForSemanticSegmentation": "modeling_unip_segmentation.UnipForSemanticSegmentation",
    "AutoBackbone": "modeling_unip.UnipBackbone",
    "AutoImageProcessor": "image_processing_unip.UnipImageProcessor",
}
# The Auto classes of a small-target checkpoint (`UnipForSmallTargetSegmentation`, its own config class so that
# `AutoModelForSemanticSegmentation` and `pipeline("image-segmentation")` build the right model).
SMALL_TARGET_AUTO_MAP = {
    "AutoConfig": "configuration_unip.UnipSmallTargetConfig",
    "AutoModelForSemanticSegmentation": "modeling_unip_small_target.UnipForSmallTargetSegmentation",
    "AutoImageProcessor": "image_processing_unip.UnipImageProcessor",
}


def respect_umask(folder: str | os.PathLike, suffix: str = ".safetensors") -> None:
    """Give the `suffix` files in `folder` the mode an ordinary `open()` would (0666 minus the umask).

    safetensors (0.8) writes through a private temporary file and renames it, so `model.safetensors` came out 0600
    beside 0644 JSON files and a model folder shared with a group was unreadable to it (issue 22). Every folder the
    package writes weights into passes here once, after saving.
    """
    mask = os.umask(0)
    os.umask(mask)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.endswith(suffix) and os.path.isfile(path) and not os.path.islink(path):
            os.chmod(path, 0o666 & ~mask)


def write_remote_code(save_directory: str | os.PathLike, json_name: str = "config.json",
                      auto_map: dict[str, Any] | None = None) -> None:
    """The one way UNIP objects save their remote code (models and the processor alike): copy the three UNIP files
    into `save_directory` and write `auto_map` into its `json_name`.

    transformers' `register_for_auto_class` would name only the saved class (a segmentation checkpoint would lose
    `AutoModel`, `AutoBackbone` and `AutoImageProcessor`) and copy only that class's file, so the package does it
    here, once.

    Args:
        save_directory: the folder written by `save_pretrained`.
        json_name: the JSON file that gets the `auto_map` (`config.json`, or `preprocessor_config.json`).
        auto_map: the entries to write (default: every Auto class the copied files provide).
    """
    respect_umask(save_directory)
    here = os.path.dirname(os.path.abspath(__file__))
    for name in REMOTE_CODE_FILES:
        source = os.path.join(here, name)
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(save_directory, name))
    if auto_map is None:
        auto_map = {key: value for key, value in AUTO_MAP.items()
                    if os.path.isfile(os.path.join(save_directory, value.split(".")[0] + ".py"))}
    path = os.path.join(save_directory, json_name)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        data["auto_map"] = auto_map
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")


DECODE_HEADS = ("ll_fpn", "multilevel_fpn", "linear_probe")
LOSS_TYPES = ("cross_entropy", "cross_entropy+soft_iou")
POSITION_EMBEDDINGS = ("sincos", "learned")


def default_out_indices(num_hidden_layers: int) -> list[int]:
    """Blocks tapped by the multi-level FPN and the linear probe when `out_indices` is not given.

    `[3, 5, 7, 11]` for 12 blocks (as in the paper), `[7, 11, 15, 23]` for 24 blocks (the usual choice for
    ViT-L), otherwise four blocks evenly spaced and ending with the last one (0-based indices).
    """
    if num_hidden_layers == 12:
        return [3, 5, 7, 11]
    if num_hidden_layers == 24:
        return [7, 11, 15, 23]
    if num_hidden_layers < 4:
        return list(range(num_hidden_layers))
    return [round(num_hidden_layers * f) - 1 for f in (0.25, 0.5, 0.75, 1.0)]


class UnipConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a [`UnipViTModel`] or a [`UnipForSemanticSegmentation`]. The defaults give a `unip-small`
    backbone (ViT-S/16) with an LL-FPN + UPerNet segmentation head. Named sizes are available through
    [`UnipConfig.from_preset`]. All layer indices are 0-based.

    Args:
        image_size (`int`, *optional*, defaults to 224):
            Resolution the position embeddings are built for. Other sizes that are multiples of `patch_size` work
            through interpolation.
        patch_size (`int`, *optional*, defaults to 16):
            Side of the square patches.
        num_channels (`int`, *optional*, defaults to 3):
            Input channels, 1 (intensity) or 3 (intensity replicated, as the paper does).
        hidden_size (`int`, *optional*, defaults to 384):
            Width of the transformer (embedding dimension).
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of transformer blocks.
        num_attention_heads (`int`, *optional*, defaults to 6):
            Attention heads of every block except, possibly, the last.
        last_layer_num_attention_heads (`int`, *optional*):
            Attention heads of the last block. NMI-HAD distils a teacher layer into the student's last block head by
            head, so that block has as many heads as the teacher. `None` means `num_attention_heads`. Must divide
            `hidden_size`.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Hidden width of the MLP as a multiple of `hidden_size`.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            MLP activation.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Bias on the query/key/value projection.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the embeddings and after the attention and MLP projections.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth rate, increasing linearly from 0 at the first block to this value at the last.
        layer_scale_init_value (`float`, *optional*):
            Initial value of per-channel layer scale on both residual branches; `None` disables layer scale.
        patch_embedding_bias (`bool`, *optional*, defaults to `True`):
            Bias on the patch projection (`False` for CLIP vision towers).
        pre_layernorm (`bool`, *optional*, defaults to `False`):
            A layer norm on the embeddings (CLS, patches and positions) before the first block, as CLIP's
            `pre_layrnorm`. Every path into the blocks applies it.
        layernorm_pooled_only (`bool`, *optional*, defaults to `False`):
            Apply the final layer norm to the pooled CLS token only, as CLIP's `post_layernorm`: `last_hidden_state`
            is then the raw output of the last block and `pooler_output` its normalised CLS token. `False`: the
            norm is applied to every token (ViT, DINOv2, MAE, UNIP).
        position_embedding_type (`str`, *optional*, defaults to `"sincos"`):
            `"sincos"`: fixed 2-D sine-cosine embeddings (not trained, as in MAE); `"learned"`: trained embeddings.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the layer norms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation.
        decode_head (`str`, *optional*, defaults to `"ll_fpn"`):
            Segmentation head of [`UnipForSemanticSegmentation`]: `"ll_fpn"` (feature pyramid built from the last
            block only), `"multilevel_fpn"` (the same four scale operations on the blocks in `out_indices`) or
            `"linear_probe"` (frozen backbone, blocks in `out_indices` concatenated, one 1x1 convolution).
        out_indices (`list[int]`, *optional*):
            Blocks tapped by `multilevel_fpn`, `linear_probe` and [`UnipBackbone`] (0-based, in block order; a block
            may repeat). `None` (with `out_features` also `None`) gives [`default_out_indices`]: `[3, 5, 7, 11]` for
            12 blocks.
        out_features (`list[str]`, *optional*):
            The same blocks by stage name (transformers' backbone convention): `stage_names` is
            `["stage1", ..., f"stage{num_hidden_layers}"]`, `"stageK"` being the output of block `K - 1` (the same
            names as DINOv2's stages). Give `out_indices` or `out_features`; the other is derived.
        decoder_hidden_size (`int`, *optional*):
            Channels of the UPerNet head; `None` means `hidden_size`.
        pool_scales (`list[int]`, *optional*, defaults to `[1, 2, 3, 6]`):
            Pooling scales of the UPerNet pyramid pooling module.
        decoder_dropout (`float`, *optional*, defaults to 0.1):
            Dropout before the classifier of the decode and auxiliary heads.
        use_auxiliary_head (`bool`, *optional*, defaults to `True`):
            Add an FCN head on the 1/16 map whose loss is weighted by `auxiliary_loss_weight` (training only).
        auxiliary_channels (`int`, *optional*, defaults to 256):
            Channels of the auxiliary FCN head.
        auxiliary_loss_weight (`float`, *optional*, defaults to 0.4):
            Weight of the auxiliary loss.
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
            Label value ignored by the loss.
        semantic_loss_type (`str`, *optional*, defaults to `"cross_entropy"`):
            `"cross_entropy"`, or `"cross_entropy+soft_iou"`, which adds `1 - soft IoU` of every non-background
            class (sums over the batch, then averaged over classes; the usual loss of infrared small-target detection, where a few target
            pixels are lost in a cross-entropy dominated by the background).
        tmt_blocks (`list[int]`, *optional*, defaults to `[]`):
            Blocks (0-based, in order) whose attention takes the transferable masked attention (TMA) bias of TMT
            (arXiv 2504.05774): with a per-patch transferability map `T` in [0, 1] given to the forward, the logits
            of every query to patch key `k` get `+ tmt_strength * (1 - T[k])` (the CLS key gets 0), so attention
            leans towards the regions that transfer least. The map is read from the input of the first listed block
            (see `unip_hf.training.transferability`). Empty: TMA off, the model is the plain ViT (no extra cost).
        tmt_strength (`float`, *optional*, defaults to 1.0):
            The strength `lambda` of the TMA bias (logits units; 0 makes the bias zero).

    Example:

    ```python
    >>> from unip_hf import UnipConfig, UnipViTModel

    >>> config = UnipConfig.from_preset("unip-tiny", last_layer_num_attention_heads=6, num_channels=1)
    >>> model = UnipViTModel(config)
    >>> model.config.last_layer_num_attention_heads
    6
    ```"""

    model_type = "unip"
    presets: ClassVar[dict[str, dict[str, Any]]] = UNIP_PRESETS

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    last_layer_num_attention_heads: int | None = None
    mlp_ratio: float = 4.0
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.0
    layer_scale_init_value: float | None = None
    patch_embedding_bias: bool = True
    pre_layernorm: bool = False
    layernorm_pooled_only: bool = False
    position_embedding_type: str = "sincos"
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    # segmentation
    decode_head: str = "ll_fpn"
    # set through `out_indices` / `out_features` (BackboneConfigMixin keeps them aligned)
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None
    decoder_hidden_size: int | None = None
    pool_scales: list[int] | tuple[int, ...] = (1, 2, 3, 6)
    decoder_dropout: float = 0.1
    use_auxiliary_head: bool = True
    auxiliary_channels: int = 256
    auxiliary_loss_weight: float = 0.4
    semantic_loss_ignore_index: int = 255
    semantic_loss_type: str = "cross_entropy"
    # transferability-aware fine-tuning (TMT): the blocks that take the TMA bias, and its strength
    tmt_blocks: list[int] | tuple[int, ...] = ()
    tmt_strength: float = 1.0

    def __post_init__(self, **kwargs):
        self.pool_scales = list(self.pool_scales)
        self.tmt_blocks = [int(i) for i in (self.tmt_blocks or ())]
        # Stage k (1-based) is the output of block k - 1; there is no "stem" stage, so that `out_indices` are block
        # indices, as everywhere in UNIP (and `"stage4"` names the same block as in DINOv2).
        self.stage_names = [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]
        out_indices, out_features = kwargs.pop("out_indices", None), kwargs.pop("out_features", None)
        if out_indices is None and out_features is None:
            out_indices = default_out_indices(self.num_hidden_layers)
        if out_indices is not None:
            out_indices = [int(i) for i in out_indices]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        super().__post_init__(**kwargs)
        self.validate_unip()

    def verify_out_features_out_indices(self) -> None:
        """transformers' checks of `out_indices` / `out_features` (known stages, in stage order, naming the same
        stages), except that a block may repeat: the multi-level FPN takes four maps, and a model with fewer blocks
        feeds one block to several scales."""
        depth = len(self.stage_names)
        if self._out_indices is not None:
            if not isinstance(self._out_indices, list):
                raise ValueError(f"out_indices must be a list, got {type(self._out_indices).__name__}")
            bad = [i for i in self._out_indices if not -depth <= i < depth]
            if bad:
                raise ValueError(f"out_indices {bad} out of range for {depth} blocks (0-based block indices)")
            positive = [i % depth for i in self._out_indices]
            if positive != sorted(positive):
                raise ValueError(f"out_indices must be in block order, got {self._out_indices}")
        if self._out_features is not None:
            if not isinstance(self._out_features, list):
                raise ValueError(f"out_features must be a list, got {type(self._out_features).__name__}")
            unknown = [name for name in self._out_features if name not in self.stage_names]
            if unknown:
                raise ValueError(f"out_features {unknown} are not stages of this model: {self.stage_names}")
            order = [self.stage_names.index(name) for name in self._out_features]
            if order != sorted(order):
                raise ValueError(f"out_features must be in stage order, got {self._out_features}")
        if self._out_features is not None and self._out_indices is not None:
            if self._out_features != [self.stage_names[i] for i in self._out_indices]:
                raise ValueError(
                    f"out_features {self._out_features} and out_indices {self._out_indices} name different blocks"
                )

    def validate_unip(self) -> None:
        """Raise a `ValueError` naming the field when the configuration cannot build a model."""
        if self.num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {self.num_channels}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_size % self.last_block_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by last_layer_num_attention_heads "
                f"{self.last_layer_num_attention_heads}"
            )
        if self.position_embedding_type not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding_type must be one of {POSITION_EMBEDDINGS}, got {self.position_embedding_type!r}")
        if self.semantic_loss_type not in LOSS_TYPES:
            raise ValueError(f"semantic_loss_type must be one of {LOSS_TYPES}, got {self.semantic_loss_type!r}")
        if self.decode_head not in DECODE_HEADS:
            raise ValueError(f"decode_head must be one of {DECODE_HEADS}, got {self.decode_head!r}")
        if self.decode_head == "multilevel_fpn" and len(self.out_indices) != 4:
            raise ValueError(f"multilevel_fpn needs 4 out_indices (one per scale), got {self.out_indices}")
        bad = [i for i in self.tmt_blocks if not 0 <= i < self.num_hidden_layers]
        if bad or self.tmt_blocks != sorted(set(self.tmt_blocks)):
            raise ValueError(f"tmt_blocks must be distinct 0-based block indices in increasing order, below "
                             f"num_hidden_layers={self.num_hidden_layers}; got {self.tmt_blocks}")
        if not isinstance(self.tmt_strength, (int, float)) or self.tmt_strength != self.tmt_strength:
            raise ValueError(f"tmt_strength must be a number, got {self.tmt_strength!r}")

    @property
    def last_block_heads(self) -> int:
        """Number of attention heads of the last block (resolving `None`)."""
        return self.last_layer_num_attention_heads or self.num_attention_heads

    @property
    def feature_indices(self) -> list[int]:
        """The non-negative `out_indices`."""
        return [i % self.num_hidden_layers for i in self.out_indices]

    def num_heads_of_layer(self, layer_idx: int) -> int:
        """Attention heads of block `layer_idx` (0-based)."""
        return self.last_block_heads if layer_idx == self.num_hidden_layers - 1 else self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "UnipConfig":
        """Build a configuration from a named size (`unip-tiny`, `unip-small`, `unip-base`, `unip-large`).

        Args:
            name (`str`): preset name; the `unip-` prefix may be omitted (`"tiny"`).
            **overrides: any other field, e.g. `num_channels=1` or `last_layer_num_attention_heads=16`.
        """
        key = name if name in cls.presets else f"unip-{name}"
        if key not in cls.presets:
            raise ValueError(f"Unknown UNIP preset {name!r}; available: {sorted(cls.presets)}")
        return cls(**{**cls.presets[key], **overrides})


PIXEL_LOSSES = ("bce", "focal")


class UnipSmallTargetConfig(UnipConfig):
    r"""
    Configuration of a [`UnipForSmallTargetSegmentation`]: every [`UnipConfig`] field (the ViT backbone that gives
    context) plus the full-resolution detail path and the small-target loss. Binary: `num_labels` is 2 (background,
    target).

    Args:
        detail_channels (`list[int]`, *optional*, defaults to `[16, 32, 64]`):
            Channels of the convolutional detail path at 1/1, 1/2, 1/4, ... of the input (one stage per entry, each
            stage halving the resolution of the previous one).
        context_layer (`int`, *optional*, defaults to -1):
            Backbone block whose output (1/patch map) is fused into the coarsest detail stage (0-based, negative
            counts from the end). Blocks after it never run.
        deep_supervision (`bool`, *optional*, defaults to `True`):
            Add the loss of a 1x1 classifier on every coarser decoder stage (upsampled to the label size), weighted
            by `deep_supervision_weight` (training only).
        deep_supervision_weight (`float`, *optional*, defaults to 0.5):
            Weight of each deep-supervision loss.
        pixel_loss (`str`, *optional*, defaults to `"bce"`):
            Pixel term added to the soft-IoU loss: `"bce"` (binary cross-entropy) or `"focal"` (focal loss).
        pixel_loss_weight (`float`, *optional*, defaults to 1.0), soft_iou_weight (`float`, *optional*, defaults to
        1.0): weights of the two terms.
        focal_gamma (`float`, *optional*, defaults to 2.0), focal_alpha (`float`, *optional*, defaults to 0.75):
            Focal loss focusing exponent and target-class weight.
        target_prior (`float`, *optional*, defaults to 0.01):
            Initial target probability of the classifiers (their bias is `log(prior / (1 - prior))`), so that training
            starts from "background almost everywhere" instead of 0.5 everywhere.
        target_threshold (`float`, *optional*, defaults to 0.5):
            The operating point: a pixel is a target when its target probability exceeds it. `unip predict`, the
            `"infrared-image-segmentation"` pipeline and the Space use it unless told otherwise; fine-tuning with
            `--target_fa` sets it on the validation split (never on test).
        operating_point (`dict`, *optional*):
            How `target_threshold` was chosen (plain JSON): the requested Fa (`target_fa`, x 1e6), the data set and
            split, and the Pd, Fa and IoU measured there at the chosen threshold. `None`: the default 0.5, not chosen.

    Example:

    ```python
    >>> from unip_hf import UnipSmallTargetConfig
    >>> config = UnipSmallTargetConfig.from_preset("unip-tiny", patch_size=8, detail_channels=[16, 32, 64])
    >>> config.model_type
    'unip_small_target'
    ```"""

    model_type = "unip_small_target"

    detail_channels: list[int] | tuple[int, ...] = (16, 32, 64)
    context_layer: int = -1
    deep_supervision: bool = True
    deep_supervision_weight: float = 0.5
    pixel_loss: str = "bce"
    pixel_loss_weight: float = 1.0
    soft_iou_weight: float = 1.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.75
    target_prior: float = 0.01
    target_threshold: float = 0.5
    operating_point: dict | None = None

    def __post_init__(self, **kwargs):
        self.detail_channels = [int(c) for c in self.detail_channels]
        if "num_labels" not in kwargs and "id2label" not in kwargs:
            kwargs["num_labels"] = 2
        super().__post_init__(**kwargs)

    def validate_unip(self) -> None:
        super().validate_unip()
        if not self.detail_channels or min(self.detail_channels) < 1:
            raise ValueError(f"detail_channels must be a non-empty list of positive channel counts, got "
                             f"{self.detail_channels}")
        if not -self.num_hidden_layers <= self.context_layer < self.num_hidden_layers:
            raise ValueError(f"context_layer {self.context_layer} out of range for {self.num_hidden_layers} blocks")
        if self.pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"pixel_loss must be one of {PIXEL_LOSSES}, got {self.pixel_loss!r}")
        if not 0.0 < self.target_prior < 1.0:
            raise ValueError(f"target_prior must be in (0, 1), got {self.target_prior}")
        if not 0.0 < float(self.target_threshold) < 1.0:
            raise ValueError(f"target_threshold must be a probability in (0, 1), got {self.target_threshold}")

    @property
    def context_block(self) -> int:
        """`context_layer` as a non-negative block index."""
        return self.context_layer % self.num_hidden_layers


__all__ = ["UnipConfig", "UnipSmallTargetConfig"]
