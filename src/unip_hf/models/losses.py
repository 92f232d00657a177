"""The UNIP losses beyond a plain cross-entropy, outside the modeling files: the semantic segmenter's cross-entropy
with an optional soft-IoU term and per-pixel weights; infrared small-target segmentation (the IRSTD literature: ACM,
DNANet, SCTransNet, SimIRSTD): soft IoU with batch-level sums, binary cross-entropy or focal pixel terms, their sum
with optional deep supervision; and logit / attention-map distillation.

This file imports only torch, so that it travels with saved checkpoints as remote code (the modeling files use it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def soft_iou_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, smooth: float = 1.0) -> torch.Tensor:
    """`1 - soft IoU` between the softmax probabilities of the classes 1..K-1 and their one-hot labels, with the sums
    taken over the whole batch (ignored pixels excluded), averaged over those classes. Class 0 is the background.

    Batch-level sums, as in the infrared small-target literature: a per-image IoU would, on the many crops that hold
    no target, reward predicting no target anywhere.
    """
    valid = (labels != ignore_index).unsqueeze(1)
    probs = logits.softmax(dim=1)[:, 1:] * valid
    onehot = F.one_hot(labels.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:]
    onehot = onehot.to(probs.dtype) * valid
    intersection = (probs * onehot).sum(dim=(0, 2, 3))
    union = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3)) - intersection
    return 1.0 - ((intersection + smooth) / (union + smooth)).mean()


def semantic_segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, loss_type: str = "cross_entropy",
    loss_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of [`UnipForSemanticSegmentation`] (its `loss_function`): `logits` upsampled (bilinear) to the label
    size, cross-entropy ignoring `ignore_index`, plus `1 - soft IoU` of the non-background classes
    ([`soft_iou_loss`]) when `loss_type` is `"cross_entropy+soft_iou"`.

    With `loss_weights` `(batch, h, w)` (resized bilinearly to the labels), the cross-entropy is the weighted mean
    `sum(w * ce) / sum(w)` over the pixels that are not ignored (the soft IoU term stays unweighted)."""
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False).float()
    labels = labels.long()
    if loss_weights is None:
        loss = F.cross_entropy(upsampled, labels, ignore_index=ignore_index)
    else:
        if loss_weights.ndim != 3 or loss_weights.shape[0] != labels.shape[0]:
            raise ValueError(f"loss_weights must have shape (batch, h, w) with batch {labels.shape[0]}, got "
                             f"{tuple(loss_weights.shape)}")
        weights = F.interpolate(loss_weights[:, None].float(), size=labels.shape[-2:], mode="bilinear",
                                align_corners=False)[:, 0] * (labels != ignore_index)
        per_pixel = F.cross_entropy(upsampled, labels, ignore_index=ignore_index, reduction="none")
        loss = (per_pixel * weights).sum() / weights.sum().clamp_min(1e-12)
    if loss_type == "cross_entropy+soft_iou" and upsampled.shape[1] > 1:
        loss = loss + soft_iou_loss(upsampled, labels, ignore_index)
    return loss


def _valid_and_target(labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    valid = labels != ignore_index
    return valid.float(), ((labels > 0) & valid).float()


def soft_iou_loss_binary(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                         smooth: float = 1.0) -> torch.Tensor:
    """`1 - (sum p*y + smooth) / (sum p + sum y - sum p*y + smooth)` with `p = sigmoid(logits)`, the sums taken over
    the whole batch (ignored pixels excluded). Batch-level sums: a per-image IoU would, on crops without a target,
    reward predicting nothing.

    Args:
        logits (`torch.Tensor`): target logits `(B, H, W)` or `(B, 1, H, W)`.
        labels (`torch.Tensor`): `(B, H, W)`, 0 background, > 0 target, `ignore_index` ignored.
        ignore_index (`int`, *optional*, defaults to 255), smooth (`float`, *optional*, defaults to 1.0).
    """
    logits = logits.reshape(labels.shape).float()
    valid, target = _valid_and_target(labels, ignore_index)
    probs = torch.sigmoid(logits) * valid
    intersection = (probs * target).sum()
    union = probs.sum() + target.sum() - intersection
    return 1.0 - (intersection + smooth) / (union + smooth)


def binary_cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean binary cross-entropy of the target logits over the pixels that are not ignored."""
    logits = logits.reshape(labels.shape).float()
    valid, target = _valid_and_target(labels, ignore_index)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, gamma: float = 2.0,
               alpha: float = 0.75) -> torch.Tensor:
    """Binary focal loss (Lin et al., 2017): `-a_t (1 - p_t)^gamma log p_t`, `a_t = alpha` on target pixels and
    `1 - alpha` on background, averaged over the pixels that are not ignored. `gamma = 0, alpha = 0.5` is half the
    binary cross-entropy."""
    logits = logits.reshape(labels.shape).float()
    valid, target = _valid_and_target(labels, ignore_index)
    log_p_t = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = log_p_t.exp()
    alpha_t = alpha * target + (1.0 - alpha) * (1.0 - target)
    per_pixel = -alpha_t * (1.0 - p_t).pow(gamma) * log_p_t
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0)


def small_target_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, pixel_loss: str = "bce",
                      soft_iou_weight: float = 1.0, pixel_loss_weight: float = 1.0, focal_gamma: float = 2.0,
                      focal_alpha: float = 0.75) -> torch.Tensor:
    """`soft_iou_weight * soft IoU + pixel_loss_weight * (BCE or focal)` of target logits at the label size.

    Args:
        logits (`torch.Tensor`): `(B, H, W)` or `(B, 1, H, W)` target logits; resized (bilinear) to the label size
            when they differ.
        labels (`torch.Tensor`): `(B, H, W)` labels.
        pixel_loss (`str`, *optional*, defaults to `"bce"`): `"bce"` or `"focal"`.
    """
    if logits.dim() == 3:
        logits = logits.unsqueeze(1)
    if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if pixel_loss == "bce":
        pixel = binary_cross_entropy_loss(logits, labels, ignore_index)
    elif pixel_loss == "focal":
        pixel = focal_loss(logits, labels, ignore_index, focal_gamma, focal_alpha)
    else:
        raise ValueError(f"pixel_loss must be 'bce' or 'focal', got {pixel_loss!r}")
    return soft_iou_weight * soft_iou_loss_binary(logits, labels, ignore_index) + pixel_loss_weight * pixel


def deep_supervision_loss(main_logits: torch.Tensor, auxiliary_logits: Sequence[torch.Tensor], labels: torch.Tensor,
                          auxiliary_weight: float = 0.5, **loss_kwargs) -> torch.Tensor:
    """`small_target_loss(main) + auxiliary_weight * sum small_target_loss(aux)` (each auxiliary output upsampled to
    the label size)."""
    loss = small_target_loss(main_logits, labels, **loss_kwargs)
    for aux in auxiliary_logits:
        loss = loss + auxiliary_weight * small_target_loss(aux, labels, **loss_kwargs)
    return loss


def logit_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                            temperature: float = 1.0) -> torch.Tensor:
    """Binary knowledge distillation on target logits: the mean over pixels of the cross-entropy between the
    teacher's tempered probability `sigmoid(t / T)` and the student's `sigmoid(s / T)`, minus its minimum (the
    teacher's entropy), times `T^2`; i.e. the per-pixel KL divergence between the two Bernoulli distributions.

    Args:
        student_logits, teacher_logits (`torch.Tensor`): target logits of the same shape (the teacher is resized by
            the caller).
        temperature (`float`, *optional*, defaults to 1.0): softening temperature `T`.
    """
    student = student_logits.float() / temperature
    teacher = teacher_logits.float().detach() / temperature
    p_teacher = torch.sigmoid(teacher)
    cross = F.binary_cross_entropy_with_logits(student, p_teacher, reduction="mean")
    entropy = F.binary_cross_entropy_with_logits(teacher, p_teacher, reduction="mean")
    return (cross - entropy) * temperature**2


def attention_map(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Spatial attention map of a feature map (Zagoruyko & Komodakis, 2017): the channel mean of squared
    activations, flattened and L2-normalised per image, `(B, H*W)`. Independent of the channel count, so a student and
    a teacher of different widths compare without a projection."""
    energy = features.float().pow(2).mean(dim=1).flatten(1)
    return energy / energy.norm(dim=1, keepdim=True).clamp_min(eps)


def attention_transfer_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the attention maps of two feature maps (the teacher's resized, bilinear, to the
    student's size when they differ)."""
    teacher = teacher_features.detach().float()
    if teacher.shape[-2:] != student_features.shape[-2:]:
        teacher = F.interpolate(teacher, size=student_features.shape[-2:], mode="bilinear", align_corners=False)
    return (attention_map(student_features) - attention_map(teacher)).pow(2).sum(dim=1).mean()


__all__ = [
    "soft_iou_loss_binary", "binary_cross_entropy_loss", "focal_loss", "small_target_loss", "deep_supervision_loss",
    "logit_distillation_loss", "attention_transfer_loss",
]
