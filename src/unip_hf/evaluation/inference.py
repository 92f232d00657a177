"""Segmentation inference for UNIP models (Zhang et al., ICLR 2025): logits at the input size from one whole-image
pass (padded to the patch size) or from sliding windows (mmseg's "slide" protocol: `sliding_window_positions`,
`merge_window_logits`, `sliding_window_inference`), as `predict_logits` runs them for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unip_hf.choices import EVAL_MODES


def _pad_to_multiple(pixel_values: torch.Tensor, multiple: int) -> torch.Tensor:
    height, width = pixel_values.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    return F.pad(pixel_values, (0, pad_w, 0, pad_h)) if pad_h or pad_w else pixel_values


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    pixel_values: torch.Tensor,
    eval_mode: str = "whole",
    window: int | Sequence[int] = 512,
    stride: int | Sequence[int] | None = None,
    patch_size: int | None = None,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Logits `(B, K, H, W)` at the input size (or `output_size`), by one whole-image pass or by sliding windows.

    Whole image: the input is padded (bottom/right, zeros) to a multiple of the patch size, the logits are upsampled
    (bilinear) to the padded size and cropped. Slide: `sliding_window_inference` with the given window
    and stride (default stride: 2/3 of the window, mmseg's 512/341), windows averaged where they overlap.

    Args:
        model (`nn.Module`): a segmentation model returning an object with `logits` (or a tuple).
        pixel_values (`torch.Tensor`): `(B, C, H, W)` normalised images.
        eval_mode (`str`, *optional*, defaults to `"whole"`): `"whole"` or `"slide"`.
        window (`int` or `(h, w)`, *optional*, defaults to 512): sliding window size.
        stride (`int` or `(h, w)`, *optional*): sliding window stride.
        patch_size (`int`, *optional*): pad multiple; defaults to `model.config.patch_size`.
        output_size (`(h, w)`, *optional*): size the logits are then resized to (bilinear), e.g. the label's size.
    """
    if eval_mode not in EVAL_MODES:
        raise ValueError(f"--eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}")
    patch = patch_size or getattr(getattr(model, "config", None), "patch_size", 16)
    height, width = pixel_values.shape[-2:]

    def forward(x: torch.Tensor) -> torch.Tensor:
        padded = _pad_to_multiple(x, patch)
        output = model(pixel_values=padded)
        logits = output.logits if hasattr(output, "logits") else output[0]
        logits = F.interpolate(logits.float(), size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[:, :, : x.shape[-2], : x.shape[-1]]

    if eval_mode == "whole":
        logits = forward(pixel_values)
    else:
        window = (window, window) if isinstance(window, int) else tuple(window)
        if stride is None:
            stride = (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        logits = sliding_window_inference(forward, pixel_values, window=window, stride=stride)[:, :, :height, :width]
    if output_size is not None and tuple(logits.shape[-2:]) != tuple(output_size):
        logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
    return logits


def sliding_window_positions(height: int, width: int, window: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Window boxes ``(top, left, bottom, right)`` covering an image (mmseg "slide" rule; last window flush).

    Args:
        height / width: image size.
        window: ``(h, w)`` of a window; stride: ``(h, w)`` step.
    """
    wh, ww = window
    sh, sw = stride
    rows = max(height - wh + sh - 1, 0) // sh + 1
    cols = max(width - ww + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh + wh, height), min(c * sw + ww, width)
            y0, x0 = max(y1 - wh, 0), max(x1 - ww, 0)
            boxes.append((y0, x0, y1, x1))
    return boxes


def merge_window_logits(window_logits: Sequence[torch.Tensor], boxes: Sequence[tuple], height: int, width: int) -> torch.Tensor:
    """Average overlapping window logits (each ``(B, K, h, w)``) into ``(B, K, height, width)``."""
    first = window_logits[0]
    total = first.new_zeros(first.shape[0], first.shape[1], height, width)
    count = first.new_zeros(1, 1, height, width)
    for logit, (y0, x0, y1, x1) in zip(window_logits, boxes):
        total[:, :, y0:y1, x0:x1] += logit
        count[:, :, y0:y1, x0:x1] += 1
    if (count == 0).any():
        raise ValueError("the windows do not cover the whole image")
    return total / count


@torch.no_grad()
def sliding_window_inference(model_fn: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor,
                             window=(512, 512), stride=(341, 341)) -> torch.Tensor:
    """Logits of a whole image by sliding windows.

    Args:
        model_fn: maps ``(B, C, h, w)`` to logits ``(B, K, h', w')`` (upsampled here to ``h, w`` if needed).
        pixel_values: ``(B, C, H, W)``; images smaller than the window are padded with 0 and cropped back.
        window / stride: ``(h, w)``.

    Returns:
        ``(B, K, H, W)`` averaged logits.
    """
    _, _, height, width = pixel_values.shape
    ph, pw = max(window[0] - height, 0), max(window[1] - width, 0)
    x = torch.nn.functional.pad(pixel_values, (0, pw, 0, ph)) if ph or pw else pixel_values
    boxes = sliding_window_positions(x.shape[2], x.shape[3], window, stride)
    outs = []
    for y0, x0, y1, x1 in boxes:
        logit = model_fn(x[:, :, y0:y1, x0:x1])
        if logit.shape[-2:] != (y1 - y0, x1 - x0):
            logit = torch.nn.functional.interpolate(logit, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        outs.append(logit)
    return merge_window_logits(outs, boxes, x.shape[2], x.shape[3])[:, :, :height, :width]


__all__ = ["sliding_window_inference"]
