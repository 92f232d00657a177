"""The choice-valued options of the UNIP tools (Zhang et al., ICLR 2025) in one light module (plain tuples, no
imports), so that `unip finetune --dataset sirts` or `--decode_head fpn` is refused before torch, transformers or a
data set loads (issue 22).

The modules that use a choice import it from here. Three live where this module cannot be imported and are copied
here, kept equal by `tests/test_first_five_minutes.py`: the preset names and loss types of `configuration_unip` (a
remote-code file that imports only torch, transformers and its siblings), the metric names of the `metrics` modules
(loaded by path) and the data set builders of `unip_hf.data.segmentation`.
"""

from __future__ import annotations

#: `--distill_target` of NMI-HAD pre-training (`unip_hf.distillation`).
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
#: `--tmt_regions` (TMT's region proposals, `unip_hf.transferability`).
REGION_MODES = ("acte", "windows")

# copies (see the module docstring)
#: `UNIP_PRESETS` of `configuration_unip`: `--preset`, `--student_preset`.
PRESET_NAMES = ("unip-tiny", "unip-small", "unip-base", "unip-large")
#: `LOSS_TYPES` of `configuration_unip`: `--semantic_loss_type` (besides `auto`).
LOSS_TYPES = ("cross_entropy", "cross_entropy+soft_iou")
#: `RANKED_METRICS` of `unip_hf.metrics`: `--metric_for_best_model` per task.
RANKED_METRICS = {"mean_iou": ("mean_iou", "mean_accuracy", "overall_accuracy"), "irstd": ("iou", "niou", "pd")}
#: `FA_RULES` of the IRSTD metric: `--fa_rule`.
FA_RULES = ("correct", "reference")
#: the builders of `unip_hf.data.segmentation.SEGMENTATION_BUILDERS`: `--dataset` of fine-tuning and evaluation.
SEGMENTATION_DATASETS = ("buffalo-udder", "folder", "irstd-1k", "massmind", "mfnet", "nudt-sirst", "scut-seg", "sirst",
                         "soda")

__all__: list[str] = []  # internal: the README documents these as the options' values
