"""unip_hf: UNIP (NMI-guided hybrid attention distillation, InfMix, LL-FPN) for the Hugging Face ecosystem.

Importing the package registers the UNIP classes with the transformers Auto classes.
"""

from transformers import AutoConfig

from .configuration_unip import UNIP_PRESETS, UnipConfig

__version__ = "0.1.0"

AutoConfig.register("unip", UnipConfig, exist_ok=True)

__all__ = ["UnipConfig", "UNIP_PRESETS", "__version__"]
