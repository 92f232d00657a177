"""NMI-guided hybrid attention distillation (NMI-HAD) of UNIP (Zhang et al., "UNIP: Rethinking Pre-trained Attention
Patterns for Infrared Semantic Segmentation", ICLR 2025): the KL loss into the student's last layer and the
feature-regression ablation loss, `AttentionTeacher`, which returns one layer's per-head attention of any
transformers ViT-family model (read through `vit_family`), and `NmiHadStudent`, the trainable side. The pre-training
data live in `pretraining_data.py`, the recipe (`run_pretraining`) in `pretraining.py`.

What runs, and what does not:

- Teacher: blocks `0..L-1` run as the model defines them (fused SDPA attention, no attention matrices); a forward
  pre-hook on block `L` captures its input and stops the forward, and the attention logits of block `L` are computed
  from that block's own norm and query/key projections. Blocks after `L`, block `L`'s values/MLP and the final norm
  are never computed. No gradients, eval mode.
- Student (`distill_target="attention"`): blocks `0..depth-2` run in full, then the last block's `norm1` and the
  query/key rows of its fused `qkv` projection give its logits. The last block's value/projection/MLP and the final
  norm do not influence the loss, so they are not computed and are frozen during pre-training (they keep their
  initial values; in the official code they only receive weight decay).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unip_hf.analysis.attention_analysis import analyze_attention
from unip_hf.models.configuration_unip import UnipConfig
from unip_hf.models.modeling_unip import UnipViTModel
from unip_hf.models.vit_family import (
    ATTENTIONS,
    KEYS,
    NORMS,
    QUERIES,
    first_attribute,
    forward_kwargs,
    image_size_of,
    interpolates_position_embeddings,
    load_vision_backbone,
    mae_masking_disabled,
    num_prefix_tokens,
    patch_size_of,
    select_tokens,
    transformer_blocks,
    vision_tower,
)
from unip_hf.choices import DISTILL_TARGETS, FEATURE_LOSSES

logger = logging.getLogger(__name__)



class _StopForward(Exception):
    """Raised by a hook to end a teacher forward at the chosen block."""

    def __init__(self, hidden_states: torch.Tensor):
        super().__init__("stop")
        self.hidden_states = hidden_states



# ----------------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------------


def nmi_had_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_is_log_probs: bool = False
) -> torch.Tensor:
    """NMI-HAD loss: KL(P_teacher || P_student) over the key axis, per head, in float32, averaged over batch, heads
    and query rows.

    Args:
        student_logits (`torch.Tensor` of shape `(batch, heads, queries, keys)`): pre-softmax attention scores of the
            student's last block.
        teacher_logits (`torch.Tensor` of the same shape): the teacher layer's pre-softmax scores (or its
            log-probabilities when `teacher_is_log_probs`).
        teacher_is_log_probs (`bool`, *optional*, defaults to `False`): the teacher tensor already holds
            log-probabilities.

    Returns:
        A scalar float32 tensor.
    """
    if student_logits.ndim != 4 or teacher_logits.ndim != 4:
        raise ValueError(
            f"attention logits must be (batch, heads, queries, keys); got {tuple(student_logits.shape)} (student) and "
            f"{tuple(teacher_logits.shape)} (teacher)"
        )
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(
            f"The student's last block has {student_logits.shape[1]} attention heads but the teacher layer has "
            f"{teacher_logits.shape[1]}; NMI-HAD maps heads one to one. Build the student with "
            f"UnipConfig(..., last_layer_num_attention_heads={teacher_logits.shape[1]}) (the recipe does this from the "
            "teacher's head count)."
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student attention {tuple(student_logits.shape)} and teacher attention {tuple(teacher_logits.shape)} "
            "cover different tokens; the token grids must match (same image size / patch grid)"
        )
    student_log = F.log_softmax(student_logits.float(), dim=-1)
    teacher_log = teacher_logits.float() if teacher_is_log_probs else F.log_softmax(teacher_logits.float(), dim=-1)
    kl = F.kl_div(student_log, teacher_log, reduction="none", log_target=True).sum(dim=-1)
    return kl.mean()


def feature_distillation_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, kind: str = "cosine"):
    """Feature-regression ablation loss between projected student tokens and the teacher layer's tokens.

    Args:
        student_features (`torch.Tensor` of shape `(batch, tokens, teacher_width)`): projected student hidden states.
        teacher_features (`torch.Tensor` of the same shape): the teacher layer's output tokens.
        kind (`str`, *optional*, defaults to `"cosine"`): `"cosine"` (1 - cosine similarity per token) or
            `"smooth_l1"` (on the teacher tokens layer-normalised without affine parameters).
    """
    if student_features.shape != teacher_features.shape:
        raise ValueError(f"feature shapes differ: {tuple(student_features.shape)} vs {tuple(teacher_features.shape)}")
    student_features, teacher_features = student_features.float(), teacher_features.float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student_features, teacher_features, dim=-1)).mean()
    if kind == "smooth_l1":
        target = F.layer_norm(teacher_features, teacher_features.shape[-1:])
        return F.smooth_l1_loss(student_features, target)
    raise ValueError(f"feature_loss must be one of {FEATURE_LOSSES}, got {kind!r}")



# ----------------------------------------------------------------------------------------------------------------
# The teacher
# ----------------------------------------------------------------------------------------------------------------


class AttentionTeacher(nn.Module):
    """One layer's attention (or output tokens) of a frozen ViT-family teacher, computed as cheaply as possible.

    Supports `UnipViTModel` and the transformers `ViTModel`, `ViTMAEModel` (no masking, patch order kept),
    `DeiTModel` (distillation token dropped), `Dinov2Model` / `Dinov2WithRegistersModel` (register tokens dropped),
    `CLIPVisionModel` (or the vision tower of a `CLIPModel`), and other models laid out the same way. Returned
    tokens are `[CLS, patches...]` in raster order, like the student's.

    Args:
        model (`PreTrainedModel`): the teacher (frozen and put in eval mode here).
        teacher_layer (`int`): 0-based block whose attention is distilled (negative counts from the end).
        resize_to_student_grid (`bool`, *optional*, defaults to `True`): when the teacher's patch size gives a
            different token grid than the student's on the same image, resize the teacher's input so that the grids
            match (e.g. patch 14 at 196 px for a patch-16 student at 224 px); if `False`, such a mismatch is an error
            naming both grids.

    Example:

    ```python
    >>> from transformers import AutoModel
    >>> teacher = AttentionTeacher(AutoModel.from_pretrained("facebook/vit-mae-base"), teacher_layer=8)
    >>> logits = teacher(pixel_values, student_grid=(14, 14))  # (batch, 12, 197, 197)
    ```
    """

    def __init__(self, model: nn.Module, teacher_layer: int, resize_to_student_grid: bool = True):
        super().__init__()
        model = vision_tower(model)  # CLIPModel / SiglipModel: the vision tower
        self.model = model
        self.config = getattr(model, "config", None)
        self.family = getattr(self.config, "model_type", type(model).__name__)
        layers = transformer_blocks(model)
        self.layers = layers
        depth = len(layers)
        if not -depth <= int(teacher_layer) < depth:
            raise ValueError(f"teacher_layer={teacher_layer} is out of range for a teacher with {depth} blocks")
        self.teacher_layer = int(teacher_layer) % depth
        block = layers[self.teacher_layer]
        self._norm_name, self.norm = first_attribute(block, NORMS)
        self._attention_name, attention = first_attribute(block, ATTENTIONS)
        if self.norm is None or attention is None:
            raise TypeError(
                f"Block {self.teacher_layer} of {type(model).__name__} ({type(block).__name__}) exposes no pre-attention "
                f"norm ({'/'.join(NORMS)}) or attention module ({'/'.join(ATTENTIONS)}); its attention is not "
                "accessible to NMI-HAD"
            )
        self.attention = attention
        self.fused_qkv = getattr(attention, "qkv", None)
        _, self.query = first_attribute(attention, QUERIES)
        _, self.key = first_attribute(attention, KEYS)
        if self.fused_qkv is None and (self.query is None or self.key is None):
            raise TypeError(
                f"The attention module {type(attention).__name__} of block {self.teacher_layer} has no query/key "
                "projections (q_proj/k_proj, query/key or a fused qkv); its attention is not accessible to NMI-HAD"
            )
        self.num_heads = int(
            getattr(attention, "num_heads", None)
            or getattr(attention, "num_attention_heads", None)
            or getattr(self.config, "num_attention_heads")
        )
        width = self.fused_qkv.out_features // 3 if self.fused_qkv is not None else self.query.out_features
        self.head_dim = width // self.num_heads
        self.scaling = float(getattr(attention, "scaling", None) or getattr(attention, "scale", None)
                             or self.head_dim**-0.5)
        self.hidden_size = int(getattr(self.config, "hidden_size", width))
        patch = getattr(self.config, "patch_size", None)
        if patch is None:
            raise TypeError(f"{type(model).__name__}'s config has no patch_size; cannot match token grids")
        self.patch_size = patch_size_of(self.config)
        self.image_size = image_size_of(self.config)
        self.num_channels = int(getattr(self.config, "num_channels", 3))
        self.resize_to_student_grid = resize_to_student_grid
        self._interpolates = interpolates_position_embeddings(model, self.config)
        model.eval()
        model.requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        teacher_layer: int | str = "auto",
        sample_pixel_values: torch.Tensor | None = None,
        resize_to_student_grid: bool = True,
        **from_pretrained_kwargs: Any,
    ) -> "AttentionTeacher":
        """Load a teacher with `vit_family.load_vision_backbone` (`AutoModel.from_pretrained` of a local folder
        or Hub id, checked to be a ViT-family vision model, without the unused pooler) and pick its layer.

        Args:
            name_or_path (`str`): checkpoint.
            teacher_layer (`int` or `"auto"`, *optional*, defaults to `"auto"`): the block; `"auto"` runs
                `attention_patterns.choose_teacher_layer` on `sample_pixel_values`.
            sample_pixel_values (`torch.Tensor`, *optional*): normalised images for `"auto"`.
            resize_to_student_grid (`bool`, *optional*, defaults to `True`): see the class docstring.
            **from_pretrained_kwargs: passed to `AutoModel.from_pretrained` (e.g. `trust_remote_code`).
        """
        model = load_vision_backbone(name_or_path, f"the teacher {name_or_path!r}", **from_pretrained_kwargs)
        layer = resolve_teacher_layer(model, teacher_layer, sample_pixel_values)
        return cls(model, layer, resize_to_student_grid)

    # -- internals -------------------------------------------------------------------------------------------------

    def _prepare(self, pixel_values: torch.Tensor, student_grid: tuple[int, int] | None) -> tuple[torch.Tensor, dict]:
        channels = pixel_values.shape[1]
        if channels != self.num_channels:
            if channels == 1:
                pixel_values = pixel_values.expand(-1, self.num_channels, -1, -1)
            elif self.num_channels == 1:
                pixel_values = pixel_values.mean(dim=1, keepdim=True)
            else:
                raise ValueError(f"teacher expects {self.num_channels} channels, got {channels}")
        height, width = pixel_values.shape[-2:]
        patch = self.patch_size
        grid = (height // patch, width // patch)
        if student_grid is not None and tuple(student_grid) != grid or height % patch or width % patch:
            target = tuple(student_grid) if student_grid is not None else grid
            if not self.resize_to_student_grid:
                raise ValueError(
                    f"token grids differ: the teacher ({self.family}, patch {patch}) sees a {grid[0]}x{grid[1]} grid on "
                    f"{height}x{width} images, the student a {target[0]}x{target[1]} grid; resize the teacher input "
                    "(resize_to_student_grid=True) or use matching patch sizes"
                )
            pixel_values = F.interpolate(
                pixel_values, size=(target[0] * patch, target[1] * patch), mode="bilinear", align_corners=False,
                antialias=True,
            )
            height, width = pixel_values.shape[-2:]
            grid = target
        if self.image_size is not None and (height, width) != self.image_size and not self._interpolates:
            raise ValueError(
                f"the teacher ({self.family}) was built for a {self.image_size[0] // patch}x"
                f"{self.image_size[1] // patch} token grid and cannot interpolate its position embeddings to the "
                f"{grid[0]}x{grid[1]} grid of {height}x{width} inputs"
            )
        kwargs = forward_kwargs(self.model, self.config, pixel_values, grid)
        return pixel_values, kwargs

    def _run_until(self, pixel_values: torch.Tensor, student_grid, capture_output: bool) -> tuple[torch.Tensor, tuple]:
        """Hidden states entering (or, with `capture_output`, leaving) the teacher block; nothing after it runs."""
        pixel_values, kwargs = self._prepare(pixel_values, student_grid)
        grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
        block = self.layers[self.teacher_layer]

        def pre_hook(module, args, kwargs_):
            hidden = args[0] if args else kwargs_["hidden_states"]
            raise _StopForward(hidden)

        def post_hook(module, args, output):
            raise _StopForward(output[0] if isinstance(output, (tuple, list)) else output)

        handle = block.register_forward_hook(post_hook) if capture_output else block.register_forward_pre_hook(
            pre_hook, with_kwargs=True)
        try:
            with mae_masking_disabled(self.config):
                self.model(pixel_values=pixel_values, **kwargs)
        except _StopForward as stop:
            return stop.hidden_states, grid
        finally:
            handle.remove()
        raise RuntimeError(f"the teacher's forward never reached block {self.teacher_layer}")

    @staticmethod
    def _cls_and_patches(tensor: torch.Tensor, grid: tuple[int, int], dims: Sequence[int]) -> torch.Tensor:
        prefix = num_prefix_tokens(tensor.shape[dims[0]], grid, require_cls=True)
        return select_tokens(tensor, prefix, dims, include_cls=True)

    # -- public ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def forward(
        self, pixel_values: torch.Tensor, student_grid: tuple[int, int] | None = None, log_probs: bool = False
    ) -> torch.Tensor:
        """Per-head attention of the teacher layer over `[CLS, patches]`, shape `(batch, heads, N, N)`.

        Args:
            pixel_values (`torch.Tensor`): the (same) normalised view the student sees.
            student_grid (`tuple[int, int]`, *optional*): the student's patch grid, to match.
            log_probs (`bool`, *optional*, defaults to `False`): return log-probabilities (renormalised over the
                kept keys) instead of pre-softmax logits.
        """
        self.model.eval()
        hidden, grid = self._run_until(pixel_values, student_grid, capture_output=False)
        normed = self.norm(hidden)
        batch, tokens, _ = normed.shape
        if self.fused_qkv is not None:
            width = self.fused_qkv.out_features // 3
            weight, bias = self.fused_qkv.weight[: 2 * width], self.fused_qkv.bias
            qk = F.linear(normed, weight, bias[: 2 * width] if bias is not None else None)
            query, key = qk.split(width, dim=-1)
        else:
            query, key = self.query(normed), self.key(normed)
        query = query.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        key = key.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        logits = torch.matmul(query, key.transpose(-2, -1)) * self.scaling
        logits = self._cls_and_patches(logits, grid, dims=(2, 3))
        return F.log_softmax(logits.float(), dim=-1) if log_probs else logits

    @torch.no_grad()
    def features(self, pixel_values: torch.Tensor, student_grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Output tokens `[CLS, patches]` of the teacher layer, shape `(batch, N, hidden)` (feature ablation)."""
        self.model.eval()
        hidden, grid = self._run_until(pixel_values, student_grid, capture_output=True)
        return self._cls_and_patches(hidden, grid, dims=(1,))

    def extra_repr(self) -> str:
        return f"family={self.family}, teacher_layer={self.teacher_layer}, heads={self.num_heads}"


def resolve_teacher_layer(model: nn.Module, teacher_layer: int | str, sample_pixel_values: torch.Tensor | None) -> int:
    """An int layer as given; `"auto"`: `choose_teacher_layer(analyze_attention(model, sample))` (logged)."""
    if isinstance(teacher_layer, int) or (isinstance(teacher_layer, str) and teacher_layer.lstrip("-").isdigit()):
        return int(teacher_layer)
    if teacher_layer != "auto":
        raise ValueError(f"teacher_layer must be an int or 'auto', got {teacher_layer!r}")
    if sample_pixel_values is None:
        raise ValueError("teacher_layer='auto' needs sample images to measure the attention patterns")
    report = analyze_attention(model, sample_pixel_values, batch_size=min(8, len(sample_pixel_values)), progress=False)
    layer, reason = report.teacher_layer, report.teacher_reason  # chosen (and warned about) when the report was made
    logger.info("teacher_layer=auto: chose layer %d (0-based): %s; NMI per layer %s", layer, reason,
                [round(v, 3) for v in report.nmi_mean])
    return layer



# ----------------------------------------------------------------------------------------------------------------
# The student side
# ----------------------------------------------------------------------------------------------------------------


def student_attention_logits(student: UnipViTModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pre-softmax attention logits of the student's last block, `(batch, heads, N, N)`, computing nothing the loss
    does not depend on (blocks `0..depth-2`, then the last block's `norm1` and the query/key rows of its `qkv`)."""
    return student.attention_logits(pixel_values, [-1])[0]


def unused_by_attention_target(student: UnipViTModel) -> list[str]:
    """Parameter names of the student that the attention loss does not reach (frozen during NMI-HAD)."""
    last = f"encoder.layer.{student.config.num_hidden_layers - 1}."
    prefixes = (last + "attention.proj.", last + "norm2.", last + "mlp.", last + "layer_scale1.", last + "layer_scale2.",
                "layernorm.")
    return [name for name, _ in student.named_parameters() if name.startswith(prefixes)]


class NmiHadStudent(nn.Module):
    """The trainable side of pre-training: the UNIP student, plus a projection for the feature ablation.

    Args:
        student (`UnipViTModel`): the student backbone.
        distill_target (`str`, *optional*, defaults to `"attention"`): `attention`, `features` or `none`.
        teacher_hidden_size (`int`, *optional*): teacher width (`features` target).
    """

    def __init__(self, student: UnipViTModel, distill_target: str = "attention", teacher_hidden_size: int | None = None):
        super().__init__()
        if distill_target not in DISTILL_TARGETS:
            raise ValueError(f"distill_target must be one of {DISTILL_TARGETS}, got {distill_target!r}")
        self.student = student
        self.distill_target = distill_target
        self.projection = None
        if distill_target == "features":
            self.projection = nn.Linear(student.config.hidden_size, int(teacher_hidden_size or student.config.hidden_size))
        if distill_target == "attention":
            frozen = set(unused_by_attention_target(student))
            for name, parameter in student.named_parameters():
                if name in frozen:
                    parameter.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.distill_target == "attention":
            return student_attention_logits(self.student, pixel_values)
        hidden = self.student(pixel_values=pixel_values, return_dict=True).last_hidden_state
        return self.projection(hidden)


def check_student_heads(config: UnipConfig, teacher_heads: int) -> None:
    """Error (saying how to configure it) when the student's last block does not have the teacher's head count."""
    heads = config.num_heads_of_layer(config.num_hidden_layers - 1)
    if heads != teacher_heads:
        raise ValueError(
            f"The student's last block has {heads} heads but the teacher layer has {teacher_heads}; NMI-HAD maps heads "
            f"one to one. Set last_layer_num_attention_heads={teacher_heads} in the student config (and a hidden size "
            f"divisible by {teacher_heads})."
        )


__all__ = ["AttentionTeacher", "nmi_had_loss"]
