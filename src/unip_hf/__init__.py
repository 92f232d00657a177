"""unip_hf: UNIP (NMI-guided hybrid attention distillation, InfMix, LL-FPN) for the Hugging Face ecosystem.

Importing the package registers the UNIP classes with the transformers Auto classes (AutoBackbone included) and the
"infrared-image-segmentation" pipeline task. The exported names are loaded on first use (PEP 562 `__getattr__`), so
`from unip_hf import UnipConfig` imports only what that name needs.

One exception keeps `unip --help` fast: when the package is imported on the way to the light command-line modules
(`unip_hf.cli`, `unip_hf.cli.commands.*`, `unip_hf.recipe_arguments`, which load no torch / transformers / datasets /
accelerate), the registration waits until a command runs (`unip_hf.cli.commands.load`) or an exported name is used.
`register_auto_classes()` does it at any time (it is idempotent).
"""

from __future__ import annotations

import importlib
import sys

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
# modules whose import must stay light (see the module docstring and README "Architecture")
_LIGHT_MODULES = ("unip_hf.cli", "unip_hf.cli.commands", "unip_hf.recipe_arguments")
_registered = False


def register_auto_classes() -> None:
    """Register the UNIP config, models, backbone and image processor with the transformers Auto classes and add the
    "infrared-image-segmentation" pipeline task (`"image-segmentation"` is left as is). Safe to call again."""
    global _registered
    if _registered:
        return
    from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation

    from unip_hf.models.configuration_unip import UnipConfig, UnipSmallTargetConfig
    from unip_hf.models.image_processing_unip import UnipImageProcessor
    from unip_hf.models.modeling_unip import UnipBackbone, UnipViTModel
    from unip_hf.models.modeling_unip_segmentation import UnipForSemanticSegmentation
    from unip_hf.models.modeling_unip_small_target import UnipForSmallTargetSegmentation
    from unip_hf.models.pipeline_unip import register_pipeline

    AutoConfig.register("unip", UnipConfig, exist_ok=True)
    AutoModel.register(UnipConfig, UnipViTModel, exist_ok=True)
    AutoModelForSemanticSegmentation.register(UnipConfig, UnipForSemanticSegmentation, exist_ok=True)
    AutoBackbone.register(UnipConfig, UnipBackbone, exist_ok=True)
    AutoImageProcessor.register(UnipConfig, image_processor_classes={"pil": UnipImageProcessor}, exist_ok=True)
    AutoConfig.register("unip_small_target", UnipSmallTargetConfig, exist_ok=True)
    AutoModelForSemanticSegmentation.register(UnipSmallTargetConfig, UnipForSmallTargetSegmentation, exist_ok=True)
    AutoImageProcessor.register(UnipSmallTargetConfig, image_processor_classes={"pil": UnipImageProcessor},
                                exist_ok=True)
    register_pipeline()
    _registered = True


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register_auto_classes()
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _imported_for_a_light_module() -> bool:
    """Whether this import of the package is the parent step of importing one of `_LIGHT_MODULES` (read from the
    import machinery's frames: `_find_and_load_unlocked(name, ...)`; any other case, or another Python
    implementation, counts as a normal import)."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_find_and_load_unlocked" and code.co_filename.startswith("<frozen importlib"):
            name = frame.f_locals.get("name")
            if isinstance(name, str) and name != __name__:
                return any(name == light or name.startswith(light + ".") for light in _LIGHT_MODULES)
        frame = frame.f_back
    return False


if not _imported_for_a_light_module():
    register_auto_classes()

__all__ = [
    "UnipBackbone", "UnipConfig", "UnipForSemanticSegmentation", "UnipForSmallTargetSegmentation",
    "UnipSmallTargetConfig", "UnipImageProcessor",
    "UnipImageSegmentationPipeline", "UnipPreTrainedModel", "UnipViTModel", "AttentionTeacher", "nmi_had_loss",
    "run_pretraining", "__version__",
]
