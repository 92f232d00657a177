"""Distillation into a small-target segmentation model from a fine-tuned teacher (SimIRSTD's observation, Zhang et
al., ACM MM 2024, that a distilled small student can beat its fine-tuned teacher): `recipes/finetune.py
--distill_from CHECKPOINT`. The teacher's target logits supervise the student beside the labels (binary KL,
`unip_hf.models.losses.logit_distillation_loss`), optionally with attention transfer on the finest decoder maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSemanticSegmentation

from unip_hf.models.losses import attention_transfer_loss, logit_distillation_loss
from unip_hf.models.modeling_unip_small_target import UnipForSmallTargetSegmentation


def target_logits_of(output) -> torch.Tensor:
    """`(B, 1, h, w)` target logits of a segmentation output: `target_logits` of a small-target model, else
    `logit(softmax(logits)[:, 1])` (the log-odds of the target class) of any 2-class model."""
    target = getattr(output, "target_logits", None)
    if target is not None:
        return target
    logits = output.logits if hasattr(output, "logits") else output[0]
    if logits.shape[1] != 2:
        raise ValueError(f"the distillation teacher predicts {logits.shape[1]} classes; a 2-class (background, "
                         "target) model is needed")
    log_probs = logits.float().log_softmax(dim=1)
    return (log_probs[:, 1:] - log_probs[:, :1])


class SmallTargetDistiller:
    """Loss of a student batch with a frozen teacher: `labels loss + weight * KL(teacher || student) on the target
    logits (+ feature_weight * attention transfer on the finest decoder maps)`.

    Args:
        teacher (`nn.Module`): a fine-tuned segmentation model with 2 classes (kept in eval mode, no gradients).
        weight (`float`, *optional*, defaults to 1.0): weight of the logit term.
        temperature (`float`, *optional*, defaults to 1.0): distillation temperature.
        feature_weight (`float`, *optional*, defaults to 0.0): weight of the attention-transfer term (both models
            must be `UnipForSmallTargetSegmentation`).
    """

    def __init__(self, teacher: nn.Module, weight: float = 1.0, temperature: float = 1.0, feature_weight: float = 0.0):
        if feature_weight > 0 and not isinstance(teacher, UnipForSmallTargetSegmentation):
            raise ValueError(f"--distill_feature_weight needs a small-target teacher (UnipForSmallTargetSegmentation); "
                             f"got {type(teacher).__name__}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature, self.feature_weight = float(weight), float(temperature), float(feature_weight)

    @classmethod
    def from_arguments(cls, model_args, device=None) -> "SmallTargetDistiller":
        """The teacher of `--distill_from` with the weights of `--distill_weight`, `--distill_temperature` and
        `--distill_feature_weight`."""
        teacher = AutoModelForSemanticSegmentation.from_pretrained(
            model_args.distill_from, trust_remote_code=model_args.trust_remote_code)
        if device is not None:
            teacher.to(device)
        return cls(teacher, model_args.distill_weight, model_args.distill_temperature,
                   model_args.distill_feature_weight)

    def loss(self, student: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The student's own loss on `labels` plus the distillation terms."""
        features = self.feature_weight > 0
        output = student(pixel_values=pixel_values, labels=labels, output_hidden_states=features)
        with torch.no_grad():
            teacher_output = self.teacher(pixel_values=pixel_values, output_hidden_states=features)
        student_logits = target_logits_of(output)
        teacher_logits = target_logits_of(teacher_output)
        if teacher_logits.shape[-2:] != student_logits.shape[-2:]:
            teacher_logits = F.interpolate(teacher_logits.float(), size=student_logits.shape[-2:], mode="bilinear",
                                           align_corners=False)
        loss = output.loss + self.weight * logit_distillation_loss(student_logits, teacher_logits, self.temperature)
        if features:
            loss = loss + self.feature_weight * attention_transfer_loss(output.decoder_hidden_states[-1],
                                                                        teacher_output.decoder_hidden_states[-1])
        return loss


__all__ = ["SmallTargetDistiller"]
