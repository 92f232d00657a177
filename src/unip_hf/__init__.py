"""unip_hf: UNIP (NMI-guided hybrid attention distillation, InfMix, LL-FPN) for the Hugging Face ecosystem.

`import unip_hf` imports neither torch nor transformers. The UNIP classes join the transformers Auto classes
(AutoConfig, AutoModel, AutoModelForSemanticSegmentation, AutoBackbone, AutoImageProcessor) and the pipeline registry
(the "infrared-image-segmentation" task) as soon as those transformers modules are imported, before or after this
package (`unip_hf.auto_registration`); `register_auto_classes()` does all of it at once. The exported names load on
first use (PEP 562 `__getattr__`), so `from unip_hf import UnipConfig` imports only what that name needs.
"""

from __future__ import annotations

import importlib

from unip_hf.auto_registration import install as _install_auto_registration
from unip_hf.auto_registration import register_auto_classes

__version__ = "0.1.0"

# exported name -> the submodule that defines it (imported on first access)
_EXPORTS = {
    "UnipConfig": "models.configuration_unip",
    "UNIP_PRESETS": "models.configuration_unip",
    "UnipPreTrainedModel": "models.modeling_unip",
    "UnipViTModel": "models.modeling_unip",
    "UnipForSemanticSegmentation": "models.modeling_unip_segmentation",
    "UnipForSmallTargetSegmentation": "models.modeling_unip_small_target",
    "UnipSmallTargetConfig": "models.configuration_unip",
    "UnipBackbone": "models.modeling_unip",
    "UnipModelOutput": "models.modeling_unip",
    "UnipImageProcessor": "models.image_processing_unip",
    "UnipImageSegmentationPipeline": "models.pipeline_unip",
    "register_pipeline": "models.pipeline_unip",
    "AttentionTeacher": "pretraining.distillation",
    "nmi_had_loss": "pretraining.distillation",
    "run_pretraining": "pretraining.nmi_had",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


_install_auto_registration()

__all__ = [
    "UnipBackbone", "UnipConfig", "UnipForSemanticSegmentation", "UnipForSmallTargetSegmentation",
    "UnipSmallTargetConfig", "UnipImageProcessor",
    "UnipImageSegmentationPipeline", "UnipPreTrainedModel", "UnipViTModel", "AttentionTeacher", "nmi_had_loss",
    "run_pretraining", "__version__",
]
