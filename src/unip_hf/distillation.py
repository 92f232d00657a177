"""NMI-guided hybrid attention distillation (NMI-HAD) of UNIP (Zhang et al., "UNIP: Rethinking Pre-trained Attention
Patterns for Infrared Semantic Segmentation", ICLR 2025): a teacher adapter that returns one layer's per-head
attention of any transformers ViT-family model, the KL loss into the student's last layer, the feature-regression
and no-pre-training ablations, the pre-training data set, and `run_pretraining`, which `recipes/pretrain.py` calls.

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

import contextlib
import dataclasses
import inspect
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .argument_checks import check_choice, check_model_source, check_range
from .configuration_unip import UNIP_PRESETS, UnipConfig
from .files import IMAGE_EXTENSIONS, FileScan, scan_files
from .image_processing_unip import INFRARED_MEAN, INFRARED_STD, UnipImageProcessor
from .modeling_unip import UnipViTModel
from .training import (
    EpochSampler,
    NonFiniteLossError,
    TrainingLoopArguments,
    create_accelerator,
    create_optimizer,
    create_scheduler,
    interrupted_exit_code,
    parse_recipe_args,
    num_warmup_steps,
    resolve_learning_rate,
    train_loop,
)

logger = logging.getLogger(__name__)

DISTILL_TARGETS = ("attention", "features", "none")
FEATURE_LOSSES = ("cosine", "smooth_l1")

# Where the blocks, their pre-attention norm, their attention module and its query/key projections live, by family.
_LAYER_LISTS = ("encoder.layer", "encoder.layers", "layers", "layer", "blocks")
_NORMS = ("norm1", "layernorm_before", "layer_norm1", "ln_1", "norm")
_ATTENTIONS = ("attention.attention", "attention", "self_attn", "attn")
_QUERIES = ("q_proj", "query", "q")
_KEYS = ("k_proj", "key", "k")


class _StopForward(Exception):
    """Raised by a hook to end a teacher forward at the chosen block."""

    def __init__(self, hidden_states: torch.Tensor):
        super().__init__("stop")
        self.hidden_states = hidden_states


def _get(module: nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _first(module: nn.Module, names: Sequence[str]) -> tuple[str | None, Any]:
    for name in names:
        found = _get(module, name)
        if found is not None:
            return name, found
    return None, None


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
        if hasattr(model, "vision_model") and not hasattr(model, "embeddings"):
            model = model.vision_model  # CLIPModel / SiglipModel: the vision tower
        self.model = model
        self.config = getattr(model, "config", None)
        self.family = getattr(self.config, "model_type", type(model).__name__)
        _, layers = _first(model, _LAYER_LISTS + tuple("vision_model." + n for n in _LAYER_LISTS))
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise TypeError(
                f"{type(model).__name__} has no accessible list of transformer blocks (looked for "
                f"{', '.join(_LAYER_LISTS)}); supported teachers: UnipViTModel, ViTModel, ViTMAEModel, DeiTModel, "
                "Dinov2Model, CLIPVisionModel"
            )
        self.layers = layers
        depth = len(layers)
        if not -depth <= int(teacher_layer) < depth:
            raise ValueError(f"teacher_layer={teacher_layer} is out of range for a teacher with {depth} blocks")
        self.teacher_layer = int(teacher_layer) % depth
        block = layers[self.teacher_layer]
        self._norm_name, self.norm = _first(block, _NORMS)
        self._attention_name, attention = _first(block, _ATTENTIONS)
        if self.norm is None or attention is None:
            raise TypeError(
                f"Block {self.teacher_layer} of {type(model).__name__} ({type(block).__name__}) exposes no pre-attention "
                f"norm ({'/'.join(_NORMS)}) or attention module ({'/'.join(_ATTENTIONS)}); its attention is not "
                "accessible to NMI-HAD"
            )
        self.attention = attention
        self.fused_qkv = getattr(attention, "qkv", None)
        _, self.query = _first(attention, _QUERIES)
        _, self.key = _first(attention, _KEYS)
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
        self.patch_size = int(patch if isinstance(patch, int) else patch[0])
        size = getattr(self.config, "image_size", None)
        self.image_size = tuple(size) if isinstance(size, (list, tuple)) else (size, size) if size else None
        self.num_channels = int(getattr(self.config, "num_channels", 3))
        self.resize_to_student_grid = resize_to_student_grid
        try:
            self._forward_params = set(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            self._forward_params = set()
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
        """Load a teacher with `attention_analysis.load_vision_backbone` (`AutoModel.from_pretrained` of a local folder
        or Hub id, checked to be a ViT-family vision model, without the unused pooler) and pick its layer.

        Args:
            name_or_path (`str`): checkpoint.
            teacher_layer (`int` or `"auto"`, *optional*, defaults to `"auto"`): the block; `"auto"` runs
                `attention_analysis.choose_teacher_layer` on `sample_pixel_values`.
            sample_pixel_values (`torch.Tensor`, *optional*): normalised images for `"auto"`.
            resize_to_student_grid (`bool`, *optional*, defaults to `True`): see the class docstring.
            **from_pretrained_kwargs: passed to `AutoModel.from_pretrained` (e.g. `trust_remote_code`).
        """
        from .attention_analysis import load_vision_backbone

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
        kwargs: dict[str, Any] = {}
        if self.image_size is not None and (height, width) != self.image_size:
            if "interpolate_pos_encoding" in self._forward_params:
                kwargs["interpolate_pos_encoding"] = True
            elif not isinstance(self.model, UnipViTModel) and self.family not in ("dinov2", "dinov2_with_registers"):
                raise ValueError(
                    f"the teacher ({self.family}) was built for a {self.image_size[0] // patch}x"
                    f"{self.image_size[1] // patch} token grid and cannot interpolate its position embeddings to the "
                    f"{grid[0]}x{grid[1]} grid of {height}x{width} inputs"
                )
        if "noise" in self._forward_params:  # ViTMAE: increasing noise keeps the patch order
            kwargs["noise"] = torch.arange(grid[0] * grid[1], device=pixel_values.device, dtype=torch.float32).expand(
                pixel_values.shape[0], -1
            )
        return pixel_values, kwargs

    @contextlib.contextmanager
    def _no_masking(self):
        ratio = getattr(self.config, "mask_ratio", None)
        if ratio:
            self.config.mask_ratio = 0.0
        try:
            yield
        finally:
            if ratio:
                self.config.mask_ratio = ratio

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
            with self._no_masking():
                self.model(pixel_values=pixel_values, **kwargs)
        except _StopForward as stop:
            return stop.hidden_states, grid
        finally:
            handle.remove()
        raise RuntimeError(f"the teacher's forward never reached block {self.teacher_layer}")

    def _select_tokens(self, tensor: torch.Tensor, grid: tuple[int, int], dims: Sequence[int]) -> torch.Tensor:
        num_tokens = tensor.shape[dims[0]]
        prefix = num_tokens - grid[0] * grid[1]
        if prefix < 1:
            raise RuntimeError(f"{num_tokens} tokens for a {grid[0]}x{grid[1]} grid: no CLS token or patches dropped")
        if prefix == 1:
            return tensor
        index = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(prefix, num_tokens)]).to(tensor.device)
        for dim in dims:
            tensor = tensor.index_select(dim, index)
        return tensor

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
        logits = self._select_tokens(logits, grid, dims=(2, 3))
        return F.log_softmax(logits.float(), dim=-1) if log_probs else logits

    @torch.no_grad()
    def features(self, pixel_values: torch.Tensor, student_grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Output tokens `[CLS, patches]` of the teacher layer, shape `(batch, N, hidden)` (feature ablation)."""
        self.model.eval()
        hidden, grid = self._run_until(pixel_values, student_grid, capture_output=True)
        return self._select_tokens(hidden, grid, dims=(1,))

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
    from .attention_analysis import analyze_attention
    from .attention_patterns import _choose_teacher_layer

    report = analyze_attention(model, sample_pixel_values, batch_size=min(8, len(sample_pixel_values)), progress=False)
    layer, reason = _choose_teacher_layer(report)
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


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def is_saved_dataset(path: str) -> bool:
    """A `datasets` `save_to_disk` folder (Dataset or DatasetDict)."""
    return any(os.path.isfile(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json"))


def contains_parquet(path: str) -> bool:
    """Whether `path` holds ``.parquet`` files at any depth (the package's walker: link loops are not followed)."""
    return bool(scan_files(path, extensions=(".parquet",)).files)


class PretrainImageDataset(Dataset):
    """Pre-training images from files and/or `datasets` data sets, each turned into the same augmented view for
    teacher and student. Keys are `(epoch, index)` from an `EpochSampler`; the view depends only on
    `(seed, epoch, index)`. An image that cannot be decoded is skipped (the next one is used) and counted once,
    however often it is drawn (`skipped_at_load` counts distinct images; with DataLoader workers each worker
    process counts its own).

    Args:
        sources (`list`): entries are file paths (`str`) or `(datasets.Dataset, image_column)` pairs.
        transform (`Callable`): `transform(image, index=...)` with a `seed` and an `epoch` attribute
            (`data.transforms.PretrainTransform`).
        skipped_at_scan (`int`, *optional*): unreadable files already dropped when scanning folders.
    """

    def __init__(self, sources: list, transform: Callable, skipped_at_scan: int = 0):
        self.files: list[str] = [s for s in sources if isinstance(s, str)]
        self.tables = [s for s in sources if not isinstance(s, str)]
        self.offsets = [len(self.files)]
        for table, _column in self.tables:
            self.offsets.append(self.offsets[-1] + len(table))
        self.transform = transform
        self.skipped_at_scan = skipped_at_scan
        self.unreadable: set[int] = set()  # indices found undecodable; not tried again

    @property
    def skipped_at_load(self) -> int:
        """Distinct images that could not be decoded so far (in this process)."""
        return len(self.unreadable)

    def __len__(self) -> int:
        return self.offsets[-1]

    def _raw(self, index: int) -> Any:
        if index < len(self.files):
            return self.files[index]
        for part, (table, column) in enumerate(self.tables):
            if index < self.offsets[part + 1]:
                return table[index - self.offsets[part]][column]
        raise IndexError(index)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        self.transform.epoch = epoch
        for attempt in range(min(len(self), 100)):
            current = (index + attempt) % len(self)
            if current in self.unreadable:
                continue
            try:
                return {"pixel_values": self.transform(self._raw(current), index=index)}
            except Exception as error:  # noqa: BLE001 - any decoding failure: skip the image
                self.unreadable.add(current)
                logger.warning("skipping unreadable image %s: %s", self.files[current] if current < len(self.files)
                               else f"#{current}", error)
        raise RuntimeError("100 consecutive images could not be read; check the training data")


def scan_image_folder(folder: str, verify: bool = True, scan: FileScan | None = None) -> tuple[list[str], int]:
    """Image files under `folder` (recursive, following symbolic links, sorted, each real file once) and how many
    distinct files were skipped: names that are not UTF-8, broken links, FIFOs and other non-regular files (see
    `unip_hf.files`), and, when `verify`, files whose header PIL cannot parse.

    Args:
        folder: the folder to scan.
        verify: parse each header with PIL.
        scan: a `FileScan` shared by several folders, so that a file reached from two of them is listed once.
    """
    from PIL import Image

    scan = scan if scan is not None else FileScan()
    start_files, start_skipped = len(scan.files), len(scan.skipped)
    scan.add(folder, IMAGE_EXTENSIONS)
    files = scan.files[start_files:]
    bad = 0
    for item in scan.skipped[start_skipped:]:
        logger.warning("skipping %s", item)
        bad += item.kind not in ("loop", "same-file")  # a second path to a listed file is not a lost image
    if not verify:
        return files, bad
    readable = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - header parsed
            readable.append(path)
        except Exception:  # noqa: BLE001
            bad += 1
            logger.warning("skipping unreadable image %s", path)
    return readable, bad


def load_training_sources(train_data: Sequence[str], image_column: str = "image") -> tuple[list, int, list[str]]:
    """Resolve `--train_data` entries: image folders (recursive), `save_to_disk` folders, parquet folders or Hub ids.

    Returns:
        `(sources, skipped, descriptions)` for `PretrainImageDataset`.
    """
    import datasets

    if isinstance(train_data, str):
        train_data = [train_data]
    if not train_data:
        raise ValueError("--train_data is required: image folders, an InfMix folder or a Hub data set id")
    sources: list = []
    skipped = 0
    described = []
    scan = FileScan()  # one scan for all entries: a file named twice is used once
    for entry in train_data:
        if os.path.isdir(entry):
            if is_saved_dataset(entry):
                table = datasets.load_from_disk(entry)
            elif contains_parquet(entry):
                table = datasets.load_dataset(entry, split="train")
            else:
                first_skip = len(scan.skipped)
                files, bad = scan_image_folder(entry, scan=scan)
                if not files and any(s.kind == "same-file" for s in scan.skipped[first_skip:]):
                    described.append(f"{entry} (no new images: all already listed)")
                    continue
                if not files:
                    raise ValueError(f"no readable image found under {entry} (extensions {', '.join(IMAGE_EXTENSIONS)})"
                                     + (f"; {bad} skipped, see the warnings above" if bad else ""))
                sources.extend(files)
                skipped += bad
                described.append(f"{entry} ({len(files)} images{f', {bad} unreadable skipped' if bad else ''})")
                continue
        elif os.path.isfile(entry):
            if scan.add_file(entry):
                sources.append(entry)
                described.append(entry)
            else:
                logger.warning("skipping %s", scan.skipped[-1])
                skipped += scan.skipped[-1].kind != "same-file"
            continue
        elif os.path.exists(entry):
            raise ValueError(f"training data {entry!r} is neither a folder nor a regular file (a FIFO or a device?)")
        elif entry.startswith((".", "/")):
            raise FileNotFoundError(f"training data {entry!r} does not exist")
        else:
            table = datasets.load_dataset(entry, split="train")
        if isinstance(table, datasets.DatasetDict):
            table = table["train"] if "train" in table else next(iter(table.values()))
        column = image_column if image_column in table.column_names else next(
            (name for name, feature in table.features.items() if isinstance(feature, datasets.Image)), None)
        if column is None:
            raise ValueError(f"{entry} has no image column (columns: {table.column_names})")
        if len(table) == 0:
            raise ValueError(f"{entry} is empty")
        sources.append((table, column))
        described.append(f"{entry} ({len(table)} images)")
    return sources, skipped, described


# ----------------------------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DistillationArguments:
    """Teacher, student and target of NMI-HAD pre-training."""

    teacher_name_or_path: str | None = field(default=None, metadata={"help": "Teacher checkpoint (folder or Hub id)."})
    teacher_layer: str = field(default="auto", metadata={"help": "0-based teacher block, or 'auto'."})
    teacher_layer_num_images: int = field(default=16, metadata={"help": "Images measured for teacher_layer=auto."})
    student_preset: str = field(default="unip-small", metadata={"help": "unip-tiny/small/base/large."})
    student_config: str | None = field(default=None, metadata={"help": "A UnipConfig json/folder instead of a preset."})
    distill_target: str = field(default="attention", metadata={"help": "attention (NMI-HAD), features or none."})
    feature_loss: str = field(default="cosine", metadata={"help": "features target: cosine or smooth_l1."})
    drop_path_rate: float = field(default=0.1)
    trust_remote_code: bool = field(default=False)

    def __post_init__(self):
        check_choice("distill_target", self.distill_target, DISTILL_TARGETS)
        if self.distill_target != "none" and not self.teacher_name_or_path:
            raise ValueError("--teacher_name_or_path is required unless --distill_target none")
        check_model_source("teacher_name_or_path", self.teacher_name_or_path)
        layer = str(self.teacher_layer)
        if layer != "auto" and not layer.lstrip("-").isdigit():
            raise ValueError(f"--teacher_layer must be a 0-based block index (negative counts from the end) or auto; "
                             f"got {self.teacher_layer!r}")
        check_range("teacher_layer_num_images", self.teacher_layer_num_images, 1)
        if self.student_config:
            if not os.path.exists(self.student_config):
                raise ValueError(f"--student_config {self.student_config!r}: no such file or folder (a UnipConfig "
                                 "json file or a folder with config.json)")
        else:
            check_choice("student_preset", self.student_preset, UNIP_PRESETS)
        check_choice("feature_loss", self.feature_loss, FEATURE_LOSSES)
        check_range("drop_path_rate", self.drop_path_rate, 0, 1, high_open=True)


@dataclass
class PretrainDataArguments:
    """Training images and the pre-training view."""

    train_data: list[str] = field(default_factory=list, metadata={"help": "Image folders, InfMix folder or Hub id."})
    image_column: str = field(default="image")
    image_size: int = field(default=224)
    crop_min_scale: float = field(default=0.2)
    image_mean: float = field(default=INFRARED_MEAN)
    image_std: float = field(default=INFRARED_STD)
    num_channels: int = field(default=3)

    def __post_init__(self):
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        for entry in self.train_data:
            check_model_source("train_data", entry, hub_file=None)
        check_range("image_size", self.image_size, 1)
        check_range("crop_min_scale", self.crop_min_scale, 0, 1, low_open=True,
                    note="the smallest crop as a fraction of the image area")
        check_range("image_mean", self.image_mean)
        check_range("image_std", self.image_std, 0, low_open=True)
        check_range("num_channels", self.num_channels, 1)


@dataclass
class PretrainingArguments(TrainingLoopArguments):
    """Optimisation arguments with the paper's pre-training defaults (AdamW 0.9/0.95, wd 0.05, lr 1.5e-4 x batch /
    256, cosine with 5 of 100 epochs of warm-up)."""

    output_dir: str = field(default="outputs/unip-pretrain")
    checkpointing_steps: int = field(default=1000)


@dataclass
class PretrainingResult:
    """What `run_pretraining` returns."""

    output_dir: str
    global_step: int
    final_loss: float | None
    first_loss: float | None
    teacher_layer: int | None
    losses: list[float]
    images: int
    skipped_images: int


def _student_config(args: DistillationArguments, data: PretrainDataArguments, teacher_heads: int | None) -> UnipConfig:
    overrides = {"image_size": data.image_size, "num_channels": data.num_channels, "drop_path_rate": args.drop_path_rate}
    if args.student_config:
        path = args.student_config
        config = UnipConfig.from_pretrained(path) if os.path.isdir(path) else UnipConfig.from_json_file(path)
        for key, value in overrides.items():
            setattr(config, key, value)
        if teacher_heads is not None and args.distill_target == "attention":
            check_student_heads(config, teacher_heads)
        return config
    if teacher_heads is not None and args.distill_target == "attention":
        overrides["last_layer_num_attention_heads"] = teacher_heads
    return UnipConfig.from_preset(args.student_preset, **overrides)


def _sample_views(dataset: PretrainImageDataset, count: int) -> torch.Tensor:
    count = min(count, len(dataset))
    step = max(1, len(dataset) // count)
    return torch.stack([dataset[(0, i * step)]["pixel_values"] for i in range(count)])


def check_pretraining_args(distill_args: DistillationArguments, data_args: PretrainDataArguments,
                           training_args: PretrainingArguments) -> None:
    """Checks before any model or data is loaded (`ValueError` naming the argument): each dataclass's own checks
    again (a caller may have changed a field since), `--train_data` given, and a teacher whose config (read, not its
    weights) is a ViT-family vision model with a block `--teacher_layer`."""
    for part in (distill_args, data_args, training_args):
        part.__post_init__()
    if not data_args.train_data:
        raise ValueError("--train_data is required: image folders, an InfMix folder or a Hub data set id")
    if distill_args.distill_target == "none":
        return
    from transformers import AutoConfig

    from .attention_analysis import require_vision_config

    name = distill_args.teacher_name_or_path
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=distill_args.trust_remote_code)
    except OSError as err:
        raise ValueError(f"--teacher_name_or_path {name!r}: cannot read its config ({err})") from err
    vision = require_vision_config(config, f"--teacher_name_or_path {name!r}")
    depth = getattr(vision, "num_hidden_layers", None)
    layer = str(distill_args.teacher_layer)
    if depth and layer != "auto" and not -depth <= int(layer) < depth:
        raise ValueError(f"--teacher_layer {layer} is out of range for the teacher {name!r} with {depth} blocks "
                         f"(0..{depth - 1}, or negative counting from the end)")


def run_pretraining(
    distill_args: DistillationArguments,
    data_args: PretrainDataArguments,
    training_args: PretrainingArguments,
    on_step_end: Callable[[int, dict], None] | None = None,
) -> PretrainingResult:
    """Pre-train a UNIP student by NMI-HAD (or an ablation) under `accelerate`, then save it.

    Writes to `output_dir`: `checkpoint-{step}/` (the last `checkpoints_total_limit`), `trainer_state.json`, and at the
    end the student (`save_pretrained`, a `UnipViTModel` loadable with `AutoModel`), its `UnipImageProcessor`, a model
    card `README.md` and `pretraining_summary.json`; pushes them with `--push_to_hub`.

    Args:
        distill_args (`DistillationArguments`): teacher, layer, student and target.
        data_args (`PretrainDataArguments`): training data and view.
        training_args (`PretrainingArguments`): optimisation, checkpoints, logging, hub.
        on_step_end (`Callable`, *optional*): called after every optimizer step (and its checkpoint) as
            `on_step_end(step, logs)`.
    """

    from .data.transforms import PretrainTransform

    args, data, train = distill_args, data_args, training_args
    check_pretraining_args(args, data, train)
    accelerator, trackers = create_accelerator(train)

    sources, skipped, described = load_training_sources(data.train_data, data.image_column)
    transform = PretrainTransform(size=data.image_size, scale=(data.crop_min_scale, 1.0), mean=data.image_mean,
                                  std=data.image_std, num_channels=data.num_channels, seed=train.seed)
    dataset = PretrainImageDataset(sources, transform, skipped)
    accelerator.print(f"Training data: {'; '.join(described)}; {len(dataset)} images"
                      + (f", {skipped} unreadable skipped" if skipped else ""))
    total_batch = train.per_device_train_batch_size * accelerator.num_processes * train.gradient_accumulation_steps
    if len(dataset) < train.per_device_train_batch_size * accelerator.num_processes * train.gradient_accumulation_steps:
        raise ValueError(
            f"The total batch ({train.per_device_train_batch_size} per device x {accelerator.num_processes} process(es)"
            f" x {train.gradient_accumulation_steps} accumulation = {total_batch}) is larger than the data set "
            f"({len(dataset)} images); lower --per_device_train_batch_size or add data."
        )

    teacher = None
    teacher_heads = None
    if args.distill_target != "none":
        sample = None
        if args.teacher_layer == "auto":
            sample = _sample_views(dataset, args.teacher_layer_num_images)
        teacher = AttentionTeacher.from_pretrained(args.teacher_name_or_path, args.teacher_layer, sample,
                                                   trust_remote_code=args.trust_remote_code)
        teacher_heads = teacher.num_heads
        accelerator.print(f"Teacher {args.teacher_name_or_path} ({teacher.family}): distilling block "
                          f"{teacher.teacher_layer} (0-based) with {teacher.num_heads} heads"
                          + (" [chosen by teacher_layer=auto]" if args.teacher_layer == "auto" else ""))
        teacher.to(accelerator.device)

    config = _student_config(args, data, teacher_heads)
    student = UnipViTModel(config)
    module = NmiHadStudent(student, args.distill_target, teacher.hidden_size if teacher is not None else None)
    grid = (data.image_size // config.patch_size, data.image_size // config.patch_size)

    first_loss = final_loss = None
    losses: list[float] = []
    global_step = 0
    if args.distill_target != "none":
        sampler = EpochSampler(len(dataset), seed=train.seed)
        loader = DataLoader(dataset, batch_size=train.per_device_train_batch_size, sampler=sampler, drop_last=True,
                            num_workers=train.dataloader_num_workers, pin_memory=torch.cuda.is_available(),
                            persistent_workers=False)
        per_epoch = len(dataset) // (train.per_device_train_batch_size * accelerator.num_processes)
        per_epoch //= train.gradient_accumulation_steps
        max_steps = train.max_steps if train.max_steps > 0 else max(1, math.ceil(train.num_train_epochs * per_epoch))
        learning_rate = resolve_learning_rate(train.learning_rate, train.base_learning_rate, total_batch)
        optimizer = create_optimizer(module, learning_rate, train.weight_decay, (train.adam_beta1, train.adam_beta2),
                                     train.adam_epsilon)
        warmup = num_warmup_steps(train.warmup_steps, train.warmup_ratio, max_steps)
        scheduler = create_scheduler(train.lr_scheduler_type, optimizer, warmup, max_steps,
                                     min_lr_ratio=train.min_lr_ratio)
        module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
        accelerator.register_for_checkpointing(scheduler)
        if trackers:
            accelerator.init_trackers("unip-pretrain", config=_tracker_config(args, data, train, learning_rate,
                                                                             max_steps, teacher))
        accelerator.print(f"{max_steps} steps, total batch {total_batch}, peak lr {learning_rate:.3g}, warm-up {warmup}")

        def loss_fn(batch):
            pixel_values = batch["pixel_values"]
            with accelerator.autocast():
                if args.distill_target == "attention":
                    target = teacher(pixel_values, student_grid=grid)
                    return nmi_had_loss(module(pixel_values), target)
                target = teacher.features(pixel_values, student_grid=grid)
                return feature_distillation_loss(module(pixel_values), target, args.feature_loss)

        result = train_loop(
            accelerator, module, optimizer, scheduler, loader, sampler, loss_fn, max_steps, train.output_dir,
            **train.loop_options(), on_step_end=on_step_end, description=f"NMI-HAD ({args.distill_target})",
        )
        losses = result.step_log.losses()
        first_loss = losses[0] if losses else None
        final_loss = result.final_loss
        global_step = result.global_step
        student = accelerator.unwrap_model(module).student
    accelerator.wait_for_everyone()
    summary = {
        "teacher": args.teacher_name_or_path,
        "teacher_layer": teacher.teacher_layer if teacher is not None else None,
        "teacher_heads": teacher_heads,
        "distill_target": args.distill_target,
        "student": args.student_config or args.student_preset,
        "train_data": list(data.train_data),
        "images": len(dataset),
        "skipped_images": skipped + dataset.skipped_at_load,
        "steps": global_step,
        "total_batch_size": total_batch,
        "first_loss": first_loss,
        "final_loss": final_loss,
    }
    if accelerator.is_main_process:
        save_pretrained_student(student, train.output_dir, summary, data, train)
    accelerator.wait_for_everyone()
    if train.push_to_hub and accelerator.is_main_process:
        push_pretrained_student(train.output_dir, train.hub_model_id, summary, data, train)
    accelerator.end_training()
    return PretrainingResult(train.output_dir, global_step, final_loss, first_loss, summary["teacher_layer"], losses,
                             len(dataset), summary["skipped_images"])


def _tracker_config(args, data, train, learning_rate, max_steps, teacher) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for part in (args, data, train):
        for key, value in dataclasses.asdict(part).items():
            if isinstance(value, (int, float, str, bool)):
                flat[key] = value
            elif isinstance(value, list):
                flat[key] = ",".join(map(str, value))
    flat.update({"peak_learning_rate": learning_rate, "total_steps": max_steps,
                 "resolved_teacher_layer": teacher.teacher_layer if teacher is not None else -1})
    return flat


def _model_card(output_dir: str, summary: dict[str, Any], data: PretrainDataArguments, train: PretrainingArguments):
    from .hub import PretrainingSummary, make_model_card

    teacher = summary["teacher"]
    hub_like = lambda name: bool(name) and not os.path.exists(name) and name.count("/") == 1  # noqa: E731
    pretraining = PretrainingSummary(
        teacher=teacher or "none (no pre-training)",
        teacher_layer=(summary["teacher_layer"] + 1) if summary["teacher_layer"] is not None else 0,
        data=", ".join(summary["train_data"]),
        steps=summary["steps"],
        final_loss=summary["final_loss"],
        student=summary["student"],
        batch_size=summary["total_batch_size"],
        image_size=data.image_size,
        extra={"distill target": summary["distill_target"], "teacher layer (0-based)": summary["teacher_layer"],
               "first loss": None if summary["first_loss"] is None else f"{summary['first_loss']:.4f}",
               "images": summary["images"]},
    )
    pretraining.extra = {k: v for k, v in pretraining.extra.items() if v is not None}
    name = train.hub_model_id or os.path.basename(os.path.normpath(output_dir))
    return make_model_card(
        name,
        repo_id=train.hub_model_id,
        pretraining=pretraining,
        datasets=[d for d in summary["train_data"] if hub_like(d)],
        base_model=teacher if hub_like(teacher) else None,
    )


def save_pretrained_student(student: UnipViTModel, output_dir: str, summary: dict[str, Any],
                            data: PretrainDataArguments, train: PretrainingArguments) -> None:
    """Save the student backbone, its image processor, `pretraining_summary.json` and the model card."""
    student.save_pretrained(output_dir)
    processor = UnipImageProcessor.from_model_config(student.config, image_mean=[data.image_mean] * data.num_channels,
                                                     image_std=[data.image_std] * data.num_channels)
    processor.save_pretrained(output_dir)
    with open(os.path.join(output_dir, "pretraining_summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    _model_card(output_dir, summary, data, train).save(os.path.join(output_dir, "README.md"))


def push_pretrained_student(output_dir: str, hub_model_id: str | None, summary: dict[str, Any],
                            data: PretrainDataArguments, train: PretrainingArguments):
    """Push the saved student folder (not the checkpoints) to the Hub with its card."""
    from .hub import push_to_hub

    if not hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/unip-small-infmix)")
    return push_to_hub(output_dir, hub_model_id, card=_model_card(output_dir, summary, data, train),
                       private=train.hub_private_repo or None,
                       commit_message=f"NMI-HAD pre-training: {summary['steps']} steps")


def parse_pretraining_args(argv: Sequence[str] | None = None):
    """Parse command-line arguments into `(DistillationArguments, PretrainDataArguments, PretrainingArguments)`."""
    return parse_recipe_args((DistillationArguments, PretrainDataArguments, PretrainingArguments), argv,
                             check=check_pretraining_args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `recipes/pretrain.py`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    distill_args, data_args, training_args = parse_pretraining_args(argv)
    try:
        result = run_pretraining(distill_args, data_args, training_args)
    except NonFiniteLossError:
        return 1
    except KeyboardInterrupt as interrupt:
        return interrupted_exit_code(interrupt)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    if result.losses:
        print(f"done: {result.global_step} steps, first loss {result.first_loss:.4f}, last loss {result.final_loss:.4f}; "
              f"saved to {result.output_dir}")
    else:
        print(f"done: saved the initialised student to {result.output_dir}")
    return 0


__all__ = [
    "AttentionTeacher",
    "DISTILL_TARGETS",
    "DistillationArguments",
    "NmiHadStudent",
    "PretrainDataArguments",
    "PretrainImageDataset",
    "PretrainingArguments",
    "PretrainingResult",
    "check_pretraining_args",
    "check_student_heads",
    "feature_distillation_loss",
    "load_training_sources",
    "main",
    "nmi_had_loss",
    "parse_pretraining_args",
    "push_pretrained_student",
    "resolve_teacher_layer",
    "run_pretraining",
    "save_pretrained_student",
    "scan_image_folder",
    "student_attention_logits",
    "unused_by_attention_target",
]
