"""unip_hf: UNIP (NMI-guided hybrid attention distillation, InfMix, LL-FPN) for the Hugging Face ecosystem.

Importing the package registers the UNIP classes with the transformers Auto classes (AutoBackbone included).
"""

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation

from .configuration_unip import UNIP_PRESETS, UnipConfig, UnipSmallTargetConfig
from .distillation import AttentionTeacher, nmi_had_loss
from .pretraining import run_pretraining
from .image_processing_unip import UnipImageProcessor
from .modeling_unip import (
    UnipBackbone,
    UnipForSemanticSegmentation,
    UnipForSmallTargetSegmentation,
    UnipModelOutput,
    UnipPreTrainedModel,
    UnipViTModel,
)
from .pipeline_unip import UnipImageSegmentationPipeline, register_pipeline

__version__ = "0.1.0"

AutoConfig.register("unip", UnipConfig, exist_ok=True)
AutoModel.register(UnipConfig, UnipViTModel, exist_ok=True)
AutoModelForSemanticSegmentation.register(UnipConfig, UnipForSemanticSegmentation, exist_ok=True)
AutoBackbone.register(UnipConfig, UnipBackbone, exist_ok=True)
AutoImageProcessor.register(UnipConfig, image_processor_classes={"pil": UnipImageProcessor}, exist_ok=True)
AutoConfig.register("unip_small_target", UnipSmallTargetConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(UnipSmallTargetConfig, UnipForSmallTargetSegmentation, exist_ok=True)
AutoImageProcessor.register(UnipSmallTargetConfig, image_processor_classes={"pil": UnipImageProcessor}, exist_ok=True)
register_pipeline()  # adds the "infrared-image-segmentation" task; "image-segmentation" is untouched

__all__ = [
    "UnipBackbone", "UnipConfig", "UnipForSemanticSegmentation", "UnipForSmallTargetSegmentation",
    "UnipSmallTargetConfig", "UnipImageProcessor",
    "UnipImageSegmentationPipeline", "UnipPreTrainedModel", "UnipViTModel", "AttentionTeacher", "nmi_had_loss",
    "run_pretraining", "__version__",
]
