"""`unip ablation`: the NMI-HAD / InfMix ablation study of UNIP (Zhang et al., ICLR 2025) at one budget, over seeds.

Each arm (`ARMS`, `arm_plan`) pre-trains a student (`pretraining.run_pretraining`) from one teacher on one InfMix
composition, or skips pre-training (`scratch`); the student is then scored on every downstream set by fine-tuning
and linear probing (`benchmark.run_benchmark` machinery), seed by seed (the seed drives pre-training and the
downstream runs). Arms:

- `nmi_had`: NMI-HAD on the full InfMix, teacher layer chosen by NMI (`attention_patterns.choose_teacher_layer`);
- `scratch`: no pre-training; `feature_distill`: the same layer's features instead of its attention (cosine);
- `layer_local` / `layer_global`: NMI-HAD from the teacher's shallowest local / deepest global layer (by the
  labels of the teacher's attention report; the most / least local layer when no layer has that label);
- `no_grayscale`: RGB sources kept in colour; `infrared_only`, `rgb_only`; `without_<source>`: each source left out.

Results go to `OUT/results.json` (one entry per arm, data set, protocol and seed; resumable, atomic, as for
`unip benchmark`), `OUT/results.md` (mean ± std per arm, plus the paired comparison of every arm with `nmi_had`
on the same seeds: mean difference, its spread, the sign test and a bootstrap interval, `statistics`), and the
teacher's `OUT/teacher_attention.json`. Pre-trained students (for `scratch`, the initialised one) stay in
`OUT/students/<arm>/seed<k>` (reused on resume; written under a temporary name, so never half there).
No torch import at module import.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from unip_hf.studies.benchmark import (
    Budget,
    ModelSource,
    check_budget_settings,
    reset_accelerate_state,
    resolve_budget,
    run_training_protocol,
)
from unip_hf.studies.results import ResultStore, seed_values, table_columns, write_reports
from unip_hf.studies.statistics import paired_comparison

logger = logging.getLogger(__name__)

BASE_ARMS = ("nmi_had", "scratch", "feature_distill", "layer_local", "layer_global", "no_grayscale",
             "infrared_only", "rgb_only")
REFERENCE_ARM = "nmi_had"
DOWNSTREAM_PROTOCOLS = ("finetune", "linear_probe")


def infmix_sources(infmix_root: str) -> list[dict[str, Any]]:
    """The InfMix sources (`data.infmix.discover_sources`: a root with `infrared/<source>/` and `rgb/<source>/`,
    or a manifest) as `{"name", "modality", "root", "files"}` dicts; each source is pre-trained on from its root."""
    from unip_hf.data.infmix import discover_sources

    return [{"name": s["name"], "modality": s["modality"], "root": s["root"], "files": len(s["files"])}
            for s in discover_sources(infmix_root)]


def all_arms(sources: Sequence[dict[str, Any]]) -> list[str]:
    """The base arms and one `without_<modality>-<source>` arm per source."""
    return list(BASE_ARMS) + [f"without_{s['modality']}-{s['name']}" for s in sources]


def pick_layers(report) -> dict[str, int]:
    """The teacher layers of the layer arms from its `AttentionReport`: `nmi` (`choose_teacher_layer`), `local`
    (the shallowest layer labelled local, else the highest-NMI layer) and `global` (the deepest layer labelled
    global, else the lowest-NMI layer)."""
    from unip_hf.analysis.patterns import choose_teacher_layer

    nmi, labels = report.nmi_mean, report.labels
    local = [i for i, lab in enumerate(labels) if lab == "local"]
    global_ = [i for i, lab in enumerate(labels) if lab == "global"]
    return {"nmi": choose_teacher_layer(report),
            "local": local[0] if local else max(range(len(nmi)), key=lambda i: nmi[i]),
            "global": global_[-1] if global_ else min(range(len(nmi)), key=lambda i: nmi[i])}


def arm_plan(arm: str, sources: Sequence[dict[str, Any]], layers: dict[str, int]) -> dict[str, Any]:
    """What an arm pre-trains: `distill_target` (`attention`, `features` or `none`: no pre-training),
    `teacher_layer`, `grayscale`, and the source roots (`train_data`).

    Raises:
        ValueError: an unknown arm, or one that leaves no source (named).
    """
    every = list(sources)
    plan = {"distill_target": "attention", "teacher_layer": layers["nmi"], "grayscale": True, "sources": every}
    if arm == "nmi_had":
        pass
    elif arm == "scratch":  # the student as initialised (run_pretraining with distill_target none saves it)
        plan.update(distill_target="none", teacher_layer=None)
    elif arm == "feature_distill":
        plan["distill_target"] = "features"
    elif arm in ("layer_local", "layer_global"):
        plan["teacher_layer"] = layers[arm.split("_", 1)[1]]
    elif arm == "no_grayscale":
        plan["grayscale"] = False
    elif arm in ("infrared_only", "rgb_only"):
        plan["sources"] = [s for s in every if s["modality"] == arm.split("_", 1)[0]]
    elif arm.startswith("without_") and arm[len("without_"):] in {f"{s['modality']}-{s['name']}" for s in every}:
        plan["sources"] = [s for s in every if f"{s['modality']}-{s['name']}" != arm[len("without_"):]]
    else:
        raise ValueError(f"--arms: unknown arm {arm!r}; choose among {', '.join(all_arms(sources))}")
    if not plan["sources"]:
        raise ValueError(f"arm {arm!r} leaves no InfMix source to pre-train on")
    plan["train_data"] = [s["root"] for s in plan["sources"]]
    plan["sources"] = [f"{s['modality']}/{s['name']}" for s in plan["sources"]]
    return plan


def teacher_report(teacher: str, sources: Sequence[dict[str, Any]], budget: Budget, path: str):
    """The teacher's attention report on InfMix images (reused from `path` when there)."""
    from unip_hf.analysis.patterns import AttentionReport

    if os.path.isfile(path):
        return AttentionReport.load(path)
    from unip_hf.analysis.attention_analysis import analyze_attention
    from unip_hf.data.files import find_images
    from unip_hf.models.vit_family import load_vision_backbone

    files = [f for s in sources for f in find_images(s["root"])]
    model = load_vision_backbone(teacher, f"--teacher {teacher!r}")
    report = analyze_attention(model, files, image_size=budget.attention_size, num_images=budget.attention_images,
                               progress=False, model_name=teacher)
    tmp = f"{path}.tmp-{os.getpid()}"
    report.save(tmp)
    os.replace(tmp, path)
    return report


def pretrain_student(plan: dict[str, Any], teacher: str, student_preset: str, budget: Budget, seed: int,
                     out: str, student_config: str | None = None) -> str:
    """Pre-train one arm's student into `out` (reused when complete); returns the folder."""
    if os.path.isfile(os.path.join(out, "pretraining_summary.json")):
        return out
    from unip_hf.pretraining.nmi_had import DistillationArguments, PretrainDataArguments, PretrainingArguments, run_pretraining

    tmp = f"{out}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    layer = plan["teacher_layer"]
    distill = DistillationArguments(teacher_name_or_path=teacher, teacher_layer="auto" if layer is None else str(layer),
                                    student_preset=student_preset, student_config=student_config,
                                    distill_target=plan["distill_target"])
    data = PretrainDataArguments(train_data=list(plan["train_data"]), image_size=budget.pretrain_image_size,
                                 grayscale=plan["grayscale"])
    train = PretrainingArguments(output_dir=tmp, per_device_train_batch_size=budget.pretrain_batch_size,
                                 learning_rate=budget.pretrain_lr, max_steps=budget.pretrain_steps,
                                 checkpointing_steps=0, seed=seed, logging_steps=max(1, budget.pretrain_steps // 10))
    reset_accelerate_state()
    run_pretraining(distill, data, train)
    reset_accelerate_state()
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # the folder appears complete or not at all
    return out


def run_ablation(teacher: str, student_preset: str, infmix_root: str, datasets: Sequence[tuple[str, str, str | None]],
                 seeds: Sequence[int], budget: str | Budget, out_dir: str, arms: Sequence[str] | None = None,
                 protocols: Sequence[str] = DOWNSTREAM_PROTOCOLS, command: str | None = None,
                 student_config: str | None = None) -> ResultStore:
    """Run every (arm, seed) pre-training and its downstream runs that `OUT/results.json` lacks, then the reports.

    Args:
        teacher: A ViT-family teacher (folder or Hub id) for the distillation arms.
        student_preset: UNIP preset of the student (e.g. `unip-tiny`).
        student_config: A `UnipConfig` json file or folder instead of the preset (optional).
        infmix_root: InfMix root folder or manifest (`data.infmix.discover_sources`).
        datasets: `(name, data_dir, eval_split or None)` of each downstream set.
        seeds: Seeds (pre-training and downstream).
        budget: A `BUDGETS` name or a `Budget`.
        out_dir: Output folder.
        arms: Arms to run (default: `all_arms`).
        protocols: Downstream protocols among `finetune`, `linear_probe`.
        command: The command line recorded in the entries.
    """
    from unip_hf.data.finetuning_data import resolve_eval_split

    budget = resolve_budget(budget)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    bad = [p for p in protocols if p not in DOWNSTREAM_PROTOCOLS]
    if bad:
        raise ValueError(f"--protocols {bad}: the ablation scores students by {', '.join(DOWNSTREAM_PROTOCOLS)}")
    for name, data_dir, _ in datasets:
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"--data_dir {data_dir!r} (for {name}) is not a folder")
    os.makedirs(out_dir, exist_ok=True)
    sources = infmix_sources(infmix_root)
    arms = list(arms or all_arms(sources))
    report = teacher_report(teacher, sources, budget, os.path.join(out_dir, "teacher_attention.json"))
    layers = pick_layers(report)
    plans = {arm: arm_plan(arm, sources, layers) for arm in arms}  # every arm checked before anything runs
    _write_json(os.path.join(out_dir, "arms.json"), {"teacher": teacher, "teacher_layers": layers,
                                                     "teacher_labels": report.labels, "teacher_nmi": report.nmi_mean,
                                                     "head_mix": report.head_mix, "arms": plans})
    store = ResultStore(os.path.join(out_dir, "results.json"))
    check_budget_settings(store, budget)
    splits = [(name, data_dir, resolve_eval_split(name, data_dir, split)) for name, data_dir, split in datasets]
    for seed in seeds:
        for arm in arms:
            plan = plans[arm]
            keys = [{"model": arm, "dataset": name, "eval_split": split, "budget": budget.name, "protocol": p,
                     "seed": seed} for name, _, split in splits for p in protocols]
            if all(store.has(k) for k in keys):
                continue
            start = time.perf_counter()
            folder = pretrain_student(plan, teacher, student_preset, budget, seed,
                                      os.path.join(out_dir, "students", arm, f"seed{seed}"), student_config)
            source = ModelSource(arm, arm, path=folder)
            pretrain_s = time.perf_counter() - start
            for (name, data_dir, split), key in zip([s for s in splits for _ in protocols], keys):
                if store.has(key):
                    continue
                run_dir = os.path.join(out_dir, "runs", arm, name, key["protocol"], f"seed{seed}")
                shutil.rmtree(run_dir, ignore_errors=True)
                begin = time.perf_counter()
                out = run_training_protocol(source, key["protocol"], name, data_dir, split, budget, seed, run_dir)
                store.add({**key, **out, "wall_s": time.perf_counter() - begin, "pretrain_s": pretrain_s,
                           "command": command, "arm": plan, "teacher": teacher,
                           "budget_settings": dataclasses.asdict(budget), "budget_requested": dataclasses.asdict(budget)})
    write_reports(store, out_dir, extra_markdown=paired_markdown(store.entries))
    return store


def paired_markdown(entries: Sequence[dict[str, Any]]) -> str:
    """The paired comparison of every arm with `nmi_had`, per (data set, split, protocol), as Markdown."""
    arms = list(dict.fromkeys(e["model"] for e in entries))
    if REFERENCE_ARM not in arms:
        return ""
    lines = ["", f"## Paired comparison with {REFERENCE_ARM} (same seeds; differences in points of the main metric)",
             "", "| arm | column | seeds | mean diff | std diff | sign test p | 95% bootstrap | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for column in table_columns(entries):
        reference = seed_values(entries, REFERENCE_ARM, column)
        for arm in arms:
            values = seed_values(entries, arm, column)
            if arm == REFERENCE_ARM or not values or not set(values) & set(reference):
                continue
            c = paired_comparison(values, reference)
            lines.append(f"| {arm} | {column[0]} ({column[1]}) {column[2]} | {len(c['seeds'])} | "
                         f"{c['mean_difference'] * 100:+.1f} | {c['std_difference'] * 100:.1f} | "
                         f"{c['sign_test_p']:.3f} | [{c['bootstrap_low'] * 100:+.1f}, {c['bootstrap_high'] * 100:+.1f}]"
                         f" | {c['verdict']}{' (' + c['verdict_reason'] + ')' if c['verdict_reason'] else ''} |")
    lines.append("")
    lines.append("Verdict: better / worse only when the bootstrap interval excludes 0 and every seed agrees in sign; "
                 "with 3 seeds the sign test's smallest p is 0.25, so read the differences with their spread.")
    return "\n".join(lines) + "\n"


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)


__all__ = ["run_ablation"]
