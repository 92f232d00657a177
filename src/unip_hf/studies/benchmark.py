"""`unip benchmark`: score pre-trained ViTs on an infrared segmentation set, after UNIP's benchmark (Zhang et al.,
ICLR 2025): fine-tuning and linear probing (`finetuning.run_finetuning`), the layer-wise linear probe
(`layerwise_probe.layerwise_probe`, block features cached), the attention analysis of every model
(`attention_analysis.analyze_attention`), over several seeds at a named budget (`BUDGETS`).

Models (`resolve_model`): a UNIP checkpoint folder (backbone or segmentation), a transformers ViT / ViT-MAE / DeiT /
DINOv2 / CLIP (vision) folder or Hub id (converted once with `convert.convert_checkpoint` into `OUT/converted/`), or
`scratch:PRESET` (no pre-training, e.g. `scratch:unip-tiny`).

Every finished run is one entry of `OUT/results.json` (`benchmark_results`), written atomically after the run, so a
re-run with the same `--out` skips finished runs and an interrupted run leaves no entry (its half-written work folder
under `OUT/runs/` is removed and redone). This module imports no torch / transformers at import time (the `unip`
command stays fast); the run functions import them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from unip_hf.argument_checks import UsageError
from unip_hf.studies.results import ResultStore, write_reports

logger = logging.getLogger(__name__)

PROTOCOLS = ("finetune", "linear_probe", "layerwise_probe")


@dataclass(frozen=True)
class Budget:
    """A named compute budget: steps, crop size, batch and learning rates of every protocol (and of the ablation's
    pre-training).

    Args:
        name: Preset name.
        description: What it is for.
        crop_size: Training crop (and layer-wise probe input) side in pixels.
        batch_size: Training images per step (fine-tuning, probes).
        finetune_steps / finetune_lr: Fine-tuning steps and peak learning rate (AdamW, layer decay 0.85, poly).
        probe_steps / probe_lr: Linear probe (blocks 3, 5, 7, 11 concatenated; frozen backbone) steps and lr.
        layerwise_steps / layerwise_lr: Layer-wise probe steps and lr (on cached features).
        max_train_samples / max_eval_samples: Images of the splits used (`None`: all).
        eval_mode: `whole` or `slide` evaluation.
        attention_images / attention_size: Images and input side of the attention analysis.
        pretrain_steps / pretrain_batch_size / pretrain_image_size / pretrain_lr: NMI-HAD pre-training of the
            ablation arms.
        small_target_img_scale: `LONGxSHORT` resize of small-target sets (IRSTD metrics) for fine-tuning and linear
            probing (`None`: the recipe's default `4*crop x crop`, which at small crops shrinks SIRST's 300x200
            frames and their 2-10 px targets below one patch).
    """

    name: str
    description: str
    crop_size: int
    batch_size: int
    finetune_steps: int
    finetune_lr: float
    probe_steps: int
    probe_lr: float
    layerwise_steps: int
    layerwise_lr: float
    max_train_samples: int | None
    max_eval_samples: int | None
    eval_mode: str
    attention_images: int
    attention_size: int
    pretrain_steps: int
    pretrain_batch_size: int
    pretrain_image_size: int
    pretrain_lr: float
    small_target_img_scale: str | None = None


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        "smoke", "tests: seconds per run on tiny models (nothing learnt)", crop_size=32, batch_size=2,
        finetune_steps=2, finetune_lr=1e-4, probe_steps=2, probe_lr=1e-3, layerwise_steps=10, layerwise_lr=1e-2,
        max_train_samples=6, max_eval_samples=3, eval_mode="whole", attention_images=3, attention_size=32,
        pretrain_steps=2, pretrain_batch_size=4, pretrain_image_size=32, pretrain_lr=1e-4),
    "cpu": Budget(
        "cpu", "a shared 2-core CPU: about 20 s per unip-tiny fine-tuning run and a minute per ablation pre-training "
        "(measured in the README), small crops and subsets; large effects only", crop_size=64, batch_size=4,
        finetune_steps=100, finetune_lr=5e-4, probe_steps=100, probe_lr=5e-3, layerwise_steps=200, layerwise_lr=1e-2,
        max_train_samples=64, max_eval_samples=32, eval_mode="whole", attention_images=16, attention_size=112,
        pretrain_steps=150, pretrain_batch_size=32, pretrain_image_size=112, pretrain_lr=5e-4,
        small_target_img_scale="320x256"),
    "paper": Budget(
        "paper", "the paper's schedule (GPUs): 512 crops, batch 8, 160k fine-tuning iterations, 100-epoch "
        "pre-training at 224 px with batch 4096 (set as steps of the InfMix size you use)", crop_size=512,
        batch_size=8, finetune_steps=160_000, finetune_lr=1e-4, probe_steps=160_000, probe_lr=1e-4,
        layerwise_steps=20_000, layerwise_lr=1e-3, max_train_samples=None, max_eval_samples=None, eval_mode="slide",
        attention_images=64, attention_size=224, pretrain_steps=100 * 200, pretrain_batch_size=4096,
        pretrain_image_size=224, pretrain_lr=1.5e-4 * 4096 / 256),
}


def _budget_value(name: str, value: Any, hint: str, where: str) -> Any:
    """`value` as the type of `Budget.<name>` (`hint`: its annotation), or a `UsageError` naming field and value."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if "None" in hint:
            return None
        raise UsageError(f"{where}: {name} must be {hint.split(' |')[0]}, not none")
    kind = hint.split(" |")[0].strip()
    if kind in ("int", "float"):
        try:
            if isinstance(value, bool) or (kind == "int" and isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = (int(value, 10) if isinstance(value, str) else int(value)) if kind == "int" else float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: {name} must be {'an integer' if kind == 'int' else 'a number'}, got "
                             f"{value!r}") from None
        if not number > 0:
            raise UsageError(f"{where}: {name} must be > 0, got {value!r}")
        return number
    if not isinstance(value, str):
        raise UsageError(f"{where}: {name} must be a string, got {value!r}")
    if name == "eval_mode" and value not in ("whole", "slide"):
        raise UsageError(f"{where}: eval_mode must be whole or slide, got {value!r}")
    return value


def resolve_budget(spec: str | Budget, overrides: Sequence[str] = ()) -> Budget:
    """The `Budget` of `--budget SPEC [--budget_set FIELD=VALUE ...]`.

    Args:
        spec: A `BUDGETS` name (`smoke`, `cpu`, `paper`), a JSON file of `Budget` fields (fields it leaves out come
            from the preset named by its `"base"`, default `cpu`; its name is its `"name"`, else the file name), or a
            `Budget`.
        overrides: `FIELD=VALUE` strings replacing single fields; the budget's name then records them
            (`cpu+finetune_steps=300`), so results at another budget never share a name with the preset's.

    Raises:
        UsageError: an unknown preset, file, field or a value of the wrong type, named.
    """
    fields = {f.name: str(f.type) for f in dataclasses.fields(Budget)}
    if isinstance(spec, Budget):
        budget = spec
    elif spec in BUDGETS:
        budget = BUDGETS[spec]
    elif spec.endswith(".json") or os.path.isfile(spec):
        if not os.path.isfile(spec):
            raise UsageError(f"--budget {spec!r}: no such file (a budget is {', '.join(BUDGETS)} or a JSON file of "
                             "Budget fields)")
        try:
            with open(spec, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as err:
            raise UsageError(f"--budget {spec!r}: not a readable JSON file ({err})") from None
        if not isinstance(data, dict):
            raise UsageError(f"--budget {spec!r}: expected a JSON object of Budget fields")
        base_name = data.pop("base", "cpu")
        if base_name not in BUDGETS:
            raise UsageError(f"--budget {spec!r}: base must be one of {', '.join(BUDGETS)}, got {base_name!r}")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UsageError(f"--budget {spec!r}: unknown field(s) {', '.join(unknown)}; Budget fields: "
                             f"{', '.join(fields)}")
        values = {name: _budget_value(name, value, fields[name], f"--budget {spec}") for name, value in data.items()}
        values.setdefault("name", os.path.splitext(os.path.basename(spec))[0])
        values.setdefault("description", f"from {spec} (base {base_name})")
        budget = dataclasses.replace(BUDGETS[base_name], **values)
    else:
        raise UsageError(f"--budget {spec!r}: choose {', '.join(BUDGETS)} or a JSON file of Budget fields")
    changes = {}
    for text in overrides:
        name, sep, value = text.partition("=")
        if not sep or name not in fields or name in ("name", "description"):
            raise UsageError(f"--budget_set {text!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(f for f in fields if f not in ('name', 'description'))}")
        changes[name] = _budget_value(name, value, fields[name], f"--budget_set {text}")
    if changes:
        suffix = "+".join(f"{name}={changes[name]}" for name in sorted(changes))
        budget = dataclasses.replace(budget, **changes, name=f"{budget.name}+{suffix}")
    return budget


def check_budget_settings(store: ResultStore, budget: Budget) -> None:
    """Refuse to add runs at `budget` to a results file holding runs under the same budget name with other
    settings (a preset edited since, or a budget file changed): mixing them would average different schedules."""
    wanted = dataclasses.asdict(budget)
    for entry in store.entries:
        recorded = entry.get("budget_requested")
        if entry.get("budget") == budget.name and recorded is not None and recorded != wanted:
            changed = sorted(k for k in wanted if recorded.get(k) != wanted[k])
            raise UsageError(f"{store.path} holds runs at budget {budget.name!r} with other settings "
                             f"({', '.join(f'{k}: {recorded.get(k)!r} there, {wanted[k]!r} now' for k in changed)}); "
                             "choose another --out or give this budget another name")


@dataclass
class ModelSource:
    """A resolved `--models` entry: `name` as given, `slug` (file-safe), `path` (a UNIP folder) or `preset`
    (scratch)."""

    name: str
    slug: str
    path: str | None = None
    preset: str | None = None


def slugify(text: str) -> str:
    """A short file-name-safe name for a model: its last path component and a hash of the whole entry (two
    folders with the same last name do not collide)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(text.rstrip("/")) or text).strip("_") or "model"
    return f"{base}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def resolve_model(spec: str, out_dir: str) -> ModelSource:
    """Turn a `--models` entry into something `run_finetuning` and the probes load.

    - `scratch:PRESET`: a randomly initialised UNIP of that preset (no pre-training);
    - a folder whose `config.json` has `model_type` `unip`: used as is;
    - a transformers ViT / ViT-MAE / DeiT / DINOv2 / CLIP (vision) folder or Hub id (`model_type` in
      `choices.TRANSFORMERS_FAMILIES`): converted once into `OUT/converted/<slug>`.

    Raises:
        ValueError: an unknown preset, or a model family the conversion does not support (named).
    """
    from unip_hf.choices import unsupported_family
    from unip_hf.models.configuration_unip import UNIP_PRESETS

    slug = slugify(spec)
    if spec.startswith("scratch:"):
        preset = spec.split(":", 1)[1]
        if preset not in UNIP_PRESETS:
            raise ValueError(f"--models {spec!r}: unknown preset {preset!r} (one of {', '.join(UNIP_PRESETS)})")
        return ModelSource(spec, slug, preset=preset)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise ValueError(f"--models {spec!r}: not a model folder or reachable Hub id ({err})") from err
    if getattr(config, "model_type", None) == "unip":
        return ModelSource(spec, slug, path=spec)
    reason = unsupported_family(getattr(config, "model_type", None))
    if reason:
        raise ValueError(f"--models {spec!r}: {reason}")
    target = os.path.join(out_dir, "converted", slug)
    if not os.path.isfile(os.path.join(target, "config.json")):
        from unip_hf.conversion.convert import convert_checkpoint

        tmp = f"{target}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        convert_checkpoint(spec, tmp, "transformers")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return ModelSource(spec, slug, path=target)


def model_patch_size(source: ModelSource) -> int:
    """The patch side of a resolved model (its saved config, or its preset's)."""
    from unip_hf.models.configuration_unip import UnipConfig

    if source.preset:
        return UnipConfig.from_preset(source.preset).patch_size
    return UnipConfig.from_pretrained(source.path).patch_size


def fit_budget_to_patch(budget: Budget, patch_size: int) -> Budget:
    """`budget` with its crop and attention sides rounded down to multiples of `patch_size` (at least one patch), so
    that a patch-14 model (DINOv2, CLIP ViT-L/14) runs every protocol: crops of 28 / 56 / 504 px at the smoke / cpu /
    paper budgets. Unchanged when both sides are multiples already (patch 8 or 16 at every budget)."""

    def fit(side: int) -> int:
        return max(patch_size, side // patch_size * patch_size)

    return dataclasses.replace(budget, crop_size=fit(budget.crop_size), attention_size=fit(budget.attention_size))


def load_backbone(source: ModelSource, image_size: int):
    """The `UnipViTModel` of a resolved model (scratch: seeded 0 random init at `image_size`)."""
    import torch

    from unip_hf.models.configuration_unip import UnipConfig
    from unip_hf.models.modeling_unip import UnipViTModel

    if source.preset:
        torch.manual_seed(0)
        return UnipViTModel(UnipConfig.from_preset(source.preset, image_size=image_size)).eval()
    return UnipViTModel.from_pretrained(source.path).eval()


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state between runs of one process (each run builds its `Accelerator`)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_training_protocol(source: ModelSource, protocol: str, dataset: str, data_dir: str, eval_split: str | None,
                          budget: Budget, seed: int, run_dir: str) -> dict[str, Any]:
    """`finetune` (LL-FPN + UPerNet) or `linear_probe` through `finetuning.run_finetuning`; returns the metrics."""
    from unip_hf.training.finetuning import DataArguments, FinetuningArguments, ModelArguments, run_finetuning
    from unip_hf.data.finetuning_data import dataset_task

    mode = "finetune" if protocol == "finetune" else "linear_probe"
    steps = budget.finetune_steps if mode == "finetune" else budget.probe_steps
    lr = budget.finetune_lr if mode == "finetune" else budget.probe_lr
    model_args = ModelArguments(model_name_or_path=source.path or "none", preset=source.preset or "unip-small",
                                mode=mode)
    img_scale = budget.small_target_img_scale if dataset_task(dataset, None) == "irstd" else None
    data_args = DataArguments(dataset=dataset, data_dir=data_dir, eval_split=eval_split, crop_size=budget.crop_size,
                              img_scale=img_scale,
                              max_train_samples=budget.max_train_samples, max_eval_samples=budget.max_eval_samples,
                              eval_mode=budget.eval_mode)
    train_args = FinetuningArguments(output_dir=run_dir, per_device_train_batch_size=budget.batch_size,
                                     learning_rate=lr, max_steps=steps, checkpointing_steps=0, seed=seed,
                                     load_best_model_at_end=False, logging_steps=max(1, steps // 10))
    reset_accelerate_state()
    result = run_finetuning(model_args, data_args, train_args)
    reset_accelerate_state()
    return {"metrics": result.metrics, "main_metric": result.main_metric, "value": result.metrics[result.main_metric],
            "steps": result.global_step}


def _probe_sets(dataset: str, data_dir: str, eval_split: str | None, budget: Budget, num_channels: int):
    from unip_hf.data import segmentation_metadata
    from unip_hf.data.finetuning_data import EvalSegmentationDataset, dataset_task, load_split, resolve_eval_split

    split = resolve_eval_split(dataset, data_dir, eval_split)
    train = load_split(dataset, data_dir, "train", None, budget.max_train_samples)
    evaluation = load_split(dataset, data_dir, split, None, budget.max_eval_samples)
    meta = segmentation_metadata(train)
    return (EvalSegmentationDataset(train, None, num_channels), EvalSegmentationDataset(evaluation, None, num_channels),
            dataset_task(dataset, None), meta, split)


def run_layerwise_protocol(source: ModelSource, dataset: str, data_dir: str, eval_split: str | None, budget: Budget,
                           seed: int, cache_dir: str) -> dict[str, Any]:
    """The layer-wise probe of every block; features cached in `cache_dir` (shared by the seeds)."""
    from unip_hf.studies.layerwise_probe import layerwise_probe

    backbone = load_backbone(source, budget.crop_size)
    train, evaluation, task, meta, _ = _probe_sets(dataset, data_dir, eval_split, budget, backbone.config.num_channels)
    out = layerwise_probe(backbone, train, evaluation, task, len(meta["id2label"]), budget.crop_size,
                          budget.layerwise_steps, budget.layerwise_lr, budget.batch_size, seed,
                          ignore_index=int(meta.get("ignore_index", 255)), cache_dir=cache_dir)
    best = out["values"].index(max(out["values"]))
    return {"metrics": out["metrics"][best], "main_metric": out["main_metric"], "value": out["values"][best],
            "layerwise": {"layers": out["layers"], "values": out["values"], "best_layer": out["best_layer"],
                          "feature_s": out["feature_s"], "train_s": out["train_s"]}}


def run_attention(source: ModelSource, dataset: str, data_dir: str, eval_split: str | None, budget: Budget,
                  report_path: str) -> dict[str, Any]:
    """The attention analysis of a model on the evaluation images (resized to `attention_size`), saved as JSON."""
    import torch
    import torch.nn.functional as F

    from unip_hf.analysis.attention_analysis import analyze_attention

    backbone = load_backbone(source, budget.attention_size)
    _, evaluation, _, _, _ = _probe_sets(dataset, data_dir, eval_split, budget, backbone.config.num_channels)
    count = min(len(evaluation), budget.attention_images)
    size = budget.attention_size
    pixels = torch.stack([F.interpolate(evaluation[i]["pixel_values"][None].float(), size=(size, size),
                                        mode="bilinear", align_corners=False)[0] for i in range(count)])
    report = analyze_attention(backbone, pixels, progress=False, model_name=source.name)
    tmp = f"{report_path}.tmp-{os.getpid()}"
    report.save(tmp)
    os.replace(tmp, report_path)
    return {"nmi": report.nmi_mean, "labels": report.labels, "head_mix": report.head_mix,
            "teacher_layer": report.teacher_layer}


def run_benchmark(models: Sequence[str], dataset: str, data_dir: str, out_dir: str, protocols: Sequence[str],
                  seeds: Sequence[int], budget: str | Budget = "smoke", eval_split: str | None = None,
                  attention: bool = True, command: str | None = None,
                  on_run_end: Callable[[dict[str, Any]], None] | None = None) -> ResultStore:
    """Run every (model, protocol, seed) not yet in `OUT/results.json`, then write the reports.

    Args:
        models: `--models` entries (see `resolve_model`).
        dataset / data_dir / eval_split: the downstream set (builder name, folder, split; default val, else test).
        out_dir: Output folder (`results.json`, `results.md`, `layerwise.png`, `nmi_vs_probe.png`, `attention/`,
            `runs/`, `cache/`, `converted/`).
        protocols: Among `PROTOCOLS`.
        seeds: Seeds; each protocol runs once per seed.
        budget: A `BUDGETS` name or a `Budget`.
        attention: Also run the attention analysis of each model (once; no seed).
        command: The command line recorded with each entry (default: this process's).
        on_run_end: Called with each new entry after it is stored.

    Returns:
        The `ResultStore` of `OUT/results.json`.
    """
    budget = resolve_budget(budget)
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"--protocols {bad}: choose among {', '.join(PROTOCOLS)}")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir!r} is not a folder")
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    os.makedirs(out_dir, exist_ok=True)
    store = ResultStore(os.path.join(out_dir, "results.json"))
    check_budget_settings(store, budget)
    from unip_hf.data.finetuning_data import resolve_eval_split

    sources = [resolve_model(spec, out_dir) for spec in models]
    split_name = resolve_eval_split(dataset, data_dir, eval_split)
    for source in sources:
        base = {"model": source.name, "dataset": dataset, "eval_split": split_name, "budget": budget.name}
        patch = model_patch_size(source)
        model_budget = fit_budget_to_patch(budget, patch)
        if model_budget != budget:
            logger.info("%s: patch %d, so crops of %d px and attention inputs of %d px (budget %s)", source.name,
                        patch, model_budget.crop_size, model_budget.attention_size, budget.name)
        jobs: list[tuple[str, int | None]] = [(p, s) for p in protocols for s in seeds]
        if attention:
            jobs.insert(0, ("attention", None))
        for protocol, seed in jobs:
            key = {**base, "protocol": protocol, "seed": seed}
            if store.has(key):
                logger.info("skipping finished run %s", key)
                continue
            run_dir = os.path.join(out_dir, "runs", source.slug, dataset, protocol, f"seed{seed}")
            shutil.rmtree(run_dir, ignore_errors=True)  # a half-written folder of an interrupted run
            start = time.perf_counter()
            if protocol == "attention":
                os.makedirs(os.path.join(out_dir, "attention"), exist_ok=True)
                out = {"attention": run_attention(source, dataset, data_dir, eval_split, model_budget, os.path.join(
                    out_dir, "attention", f"{source.slug}.json"))}
            elif protocol == "layerwise_probe":
                cache = os.path.join(out_dir, "cache", source.slug, dataset, f"{split_name}-{budget.name}")
                out = run_layerwise_protocol(source, dataset, data_dir, eval_split, model_budget, seed, cache)
            else:
                out = run_training_protocol(source, protocol, dataset, data_dir, eval_split, model_budget, seed,
                                            run_dir)
            entry = {**key, **out, "wall_s": time.perf_counter() - start, "command": command,
                     "budget_settings": dataclasses.asdict(model_budget),
                     "budget_requested": dataclasses.asdict(budget)}
            store.add(entry)
            if on_run_end is not None:
                on_run_end(entry)
    write_reports(store, out_dir)
    return store


__all__ = ["BUDGETS", "Budget", "resolve_budget", "run_benchmark"]
