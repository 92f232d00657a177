"""Image-segmentation pipeline for UNIP infrared models (Zhang et al., "UNIP: Rethinking Pre-trained Attention Patterns
for Infrared Semantic Segmentation", ICLR 2025) that keeps the bit depth of its inputs: 16-bit files and PIL `I;16`
images reach the image processor unclipped, and raw numpy arrays / torch tensors are accepted too.

Why: the stock `ImageSegmentationPipeline.preprocess` decodes every input with `transformers.image_utils.load_image`,
which ends in `image.convert("RGB")`; for 16-bit data that clips every value above 255 to 255. The stock pipeline
still works with UNIP checkpoints (8-bit inputs are unaffected), but 16-bit inputs should go through this class:

    pipeline("image-segmentation", model=path, pipeline_class=UnipImageSegmentationPipeline)

or, after `import unip_hf`, through the task it registers, `pipeline("infrared-image-segmentation", model=path)`.
The standard `"image-segmentation"` task is left untouched for every other model.

This file imports only numpy, PIL, torch, transformers and the image processor next to it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import AutoModelForSemanticSegmentation
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES,
    MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES,
    MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING,
    MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
    MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES,
)
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY, ImageSegmentationPipeline, Pipeline

from unip_hf.models.image_processing_unip import UnipImageProcessor
from unip_hf.models.infrared_decoding import load_infrared_image

INFRARED_SEGMENTATION_TASK = "infrared-image-segmentation"


class UnipImageSegmentationPipeline(ImageSegmentationPipeline):
    """`ImageSegmentationPipeline` whose inputs keep their mode and bit depth.

    Accepts, per image: a local file path (opened without RGB conversion, EXIF orientation applied), a PIL image of
    any mode (`L`, `I;16`, `I`, `F`, `RGB`, `RGBA`, `P`, ...), a numpy array or a torch tensor (any layout the
    [`UnipImageProcessor`] accepts). URLs and base64 strings go through transformers' loader (8-bit RGB). Everything
    else (post-processing into one mask per label present, `subtask`, batching) is the stock pipeline's.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> from unip_hf.models.pipeline_unip import UnipImageSegmentationPipeline

    >>> segmenter = pipeline("image-segmentation", model="path/to/unip-checkpoint",
    ...                      pipeline_class=UnipImageSegmentationPipeline)
    >>> segments = segmenter("frame_16bit.png")  # doctest: +SKIP
    ```
    """

    def __init__(self, *args, **kwargs):
        # The stock __init__ checks the model against the built-in name tables only and logs an error for registered
        # (non-transformers) models such as UNIP; check against the lazy mapping, which includes registered models.
        Pipeline.__init__(self, *args, **kwargs)
        mapping = dict(MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES)
        mapping.update(MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES)
        mapping.update(MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES)
        mapping.update(MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES)
        names = list(mapping.values()) + [
            model.__name__ for model in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING._extra_content.values()
        ]
        self.check_model_type([name for entry in names for name in (entry if isinstance(entry, tuple) else (entry,))])

    @staticmethod
    def _load(image: Any, timeout: float | None = None) -> Any:
        if isinstance(image, str) and (image.startswith(("http://", "https://", "data:image/")) or len(image) > 4096):
            return load_image(image, timeout=timeout)
        if isinstance(image, str):
            return load_infrared_image(image)
        if isinstance(image, (PIL.Image.Image, np.ndarray, torch.Tensor)):
            return image
        raise TypeError(
            f"Received an input of type {type(image).__name__}; expected a file path, a PIL image, a numpy array or a "
            "torch tensor."
        )

    def _image_size(self, image: Any) -> tuple[int, int]:
        """(height, width) of an input, with the UNIP processor's layout rules for arrays."""
        return UnipImageProcessor.image_size_of(image)

    def preprocess(self, image, subtask=None, timeout=None):
        image = self._load(image, timeout=timeout)
        target_size = [self._image_size(image)]
        inputs = self.image_processor(images=[image], return_tensors="pt")
        inputs = inputs.to(self.dtype)
        inputs["target_size"] = target_size
        return inputs


    def _forward(self, model_inputs):
        outputs = super()._forward(model_inputs)
        # a small-target model's operating point (`config.target_threshold`, chosen on a validation split): its
        # logits are (0, z), so a background logit of logit(threshold) makes the argmax read "sigmoid(z) > threshold"
        config = self.model.config
        threshold = float(getattr(config, "target_threshold", 0.5) or 0.5)
        if getattr(config, "model_type", None) == "unip_small_target" and threshold != 0.5:
            logits = outputs["logits"]
            background = torch.full_like(logits[:, 1], float(torch.logit(torch.tensor(threshold))))
            outputs["logits"] = torch.stack([background, logits[:, 1]], dim=1)
        return outputs


class _RegisteredModelCheckFilter(logging.Filter):
    """Drops the stock pipelines' "The model 'Unip...' is not supported for image-segmentation. Supported models are
    [...]" error for UNIP classes.

    `ImageSegmentationPipeline.__init__` (transformers 5.x) passes `check_model_type` a plain copy of the built-in
    name tables (`MODEL_FOR_*_SEGMENTATION_MAPPING_NAMES`); only a lazy `_LazyAutoMapping` would let it see models
    registered with `AutoModelForSemanticSegmentation.register`, so every `pipeline("image-segmentation", ...)` of a
    UNIP checkpoint logs that list although the pipeline then works. transformers offers no registration for that
    check, and adding UNIP to its name tables would make its lazy mappings try to import a `transformers.models.unip`
    module; this filter, on the logger of `transformers.pipelines.base`, removes exactly that message for UNIP
    classes (the message for any other model, and every other record, passes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("The model 'Unip") and " is not supported for " in message)


def _quiet_registered_model_check() -> None:
    base_logger = logging.getLogger("transformers.pipelines.base")
    if not any(isinstance(f, _RegisteredModelCheckFilter) for f in base_logger.filters):
        base_logger.addFilter(_RegisteredModelCheckFilter())


def register_pipeline() -> None:
    """Register the `"infrared-image-segmentation"` task (a new task name; `"image-segmentation"` is left as is), and
    quiet the stock pipelines' "is not supported" message for UNIP models (`_RegisteredModelCheckFilter`)."""
    _quiet_registered_model_check()
    if INFRARED_SEGMENTATION_TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            INFRARED_SEGMENTATION_TASK,
            pipeline_class=UnipImageSegmentationPipeline,
            pt_model=AutoModelForSemanticSegmentation,
            type="image",
        )


__all__ = ["UnipImageSegmentationPipeline"]
