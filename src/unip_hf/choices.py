"""The choice-valued options of the UNIP tools (Zhang et al., ICLR 2025) in one light module (plain tuples, no
imports), so that `unip finetune --dataset sirts` or `--decode_head fpn` is refused before torch, transformers or a
data set loads (issue 22).

The modules that use a choice import it from here, and so do the command modules and the library modules behind them
for the values both need (the default opset, the tolerance and install hint of `unip export onnx`, the layouts and
model families of `unip convert`): the library never imports the command line. Three live where this module cannot be imported and are copied
here, kept equal by `tests/test_first_five_minutes.py`: the preset names and loss types of `configuration_unip` (a
remote-code file that imports only torch, transformers and its siblings), the metric names of the `metrics` modules
(loaded by path) and the data set builders of `unip_hf.data.segmentation`.
"""

from __future__ import annotations

#: `--distill_target` of NMI-HAD pre-training (`unip_hf.pretraining.distillation`).
DISTILL_TARGETS = ("attention", "features", "none")
#: `--feature_loss` of the `features` distillation target.
FEATURE_LOSSES = ("cosine", "smooth_l1")
#: `--decode_head` of fine-tuning.
DECODE_HEAD_CHOICES = ("ll_fpn", "multilevel_fpn")
#: `--mode` of fine-tuning.
MODES = ("finetune", "linear_probe")
#: `--architecture` of fine-tuning.
ARCHITECTURES = ("auto", "small_target", "semantic")
#: `--task` of fine-tuning and evaluation.
TASKS = ("auto", "semantic", "irstd")
#: `--eval_mode`.
EVAL_MODES = ("whole", "slide")
#: `--tmt_regions` (TMT's region proposals, `unip_hf.training.transferability`).
REGION_MODES = ("acte", "windows")

# values that a command and the library module doing its work both need (the library imports them from here)
#: `unip export onnx --opset` (default).
DEFAULT_OPSET = 20
#: Opsets that torch's exporter writes as asked (torch 2.13: below 18 it silently writes 18; above 23 it has no
#: translations); the TorchScript fallback stops at 20.
MIN_OPSET, MAX_OPSET = 18, 23
#: Largest max-abs logit difference between onnxruntime and PyTorch (fp32) that an export accepts.
DEFAULT_TOLERANCE = 1e-3
INSTALL_HINT = 'pip install -e ".[onnx]" (from the repository folder)'
#: `unip convert --from`.
CONVERT_SOURCES = ("auto", "unip", "timm", "mmseg", "transformers")
#: The transformers `model_type`s that `--from transformers` converts (ViT, ViT-MAE, DeiT, DINOv2, and CLIP: a CLIP
#: model's vision tower or a CLIP vision model); read by `unip_hf.conversion.convert`, `unip convert` and `unip benchmark`.
TRANSFORMERS_FAMILIES = ("vit", "vit_mae", "deit", "dinov2", "clip", "clip_vision_model")


def unsupported_family(model_type: str | None) -> str | None:
    """Why a transformers checkpoint of `model_type` cannot be converted into a UnipViTModel; `None` when it can."""
    if model_type in TRANSFORMERS_FAMILIES:
        return None
    if model_type == "dinov2_with_registers":
        return ("model_type 'dinov2_with_registers' cannot be converted: UnipViTModel has a CLS token and no register "
                "tokens, and dropping the registers would change every output (use a Dinov2Model checkpoint)")
    return (f"model_type {model_type!r} cannot be converted; the transformers conversion supports "
            f"{', '.join(TRANSFORMERS_FAMILIES)}")


# copies (see the module docstring)
#: `UNIP_PRESETS` of `configuration_unip`: `--preset`, `--student_preset`.
PRESET_NAMES = ("unip-tiny", "unip-small", "unip-base", "unip-large")
#: `LOSS_TYPES` of `configuration_unip`: `--semantic_loss_type` (besides `auto`).
LOSS_TYPES = ("cross_entropy", "cross_entropy+soft_iou")
#: `RANKED_METRICS` of `unip_hf.evaluation.metrics`: `--metric_for_best_model` per task.
RANKED_METRICS = {"mean_iou": ("mean_iou", "mean_accuracy", "overall_accuracy"), "irstd": ("iou", "niou", "pd")}
#: `FA_RULES` of the IRSTD metric: `--fa_rule`.
FA_RULES = ("correct", "reference")
#: the builders of `unip_hf.data.segmentation.SEGMENTATION_BUILDERS`: `--dataset` of fine-tuning and evaluation.
SEGMENTATION_DATASETS = ("buffalo-udder", "folder", "irstd-1k", "massmind", "mfnet", "nudt-sirst", "scut-seg", "sirst",
                         "soda")

__all__: list[str] = []  # internal: the README documents these as the options' values
