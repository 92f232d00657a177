"""Vanilla fine-tuning vs transferability-aware fine-tuning (TMT, arXiv 2504.05774; `--tmt`) on source -> target
pairs built here, at one fixed CPU budget (the same steps, batch and crops for both methods), several seeds:
mean +- std of the target metric and the paired difference (TMT - vanilla, same seed) per pair.

Sources are small UNIP segmentation models trained here from scratch on one infrared set (the "pre-trained"
backbone that TMT's frozen reference copies); targets are the other sets. Pairs (defaults):
  buffalo-udder -> sirst (IoU on SIRST val), sirst -> buffalo-udder (mIoU on val), buffalo-udder -> massmind (mIoU;
  MassMIND's 5 images split 3 train / 2 val in a temporary folder layout). Only validation splits are read; nothing
  is tuned on them (one evaluation at the end of each run).

Every run is appended to OUT/results.jsonl (a rerun skips the runs already there); the table is printed at the end.
`touch OUT/STOP` makes a running evaluation start no new run and print the table of the runs done (pairs of a seed
count only when both methods ran).

Run: flock /work/long.lock python benchmarks/eval_tmt.py --out /tmp/tmt-eval --seeds 0 1 2 --steps 40 --source_steps 100 \
     --max_eval 20   (what the README reports; more steps where the machine allows)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
from PIL import Image

from unip_hf.data import load_segmentation_dataset
from unip_hf.training.finetuning import DataArguments, FinetuningArguments, ModelArguments, run_finetuning

DATA = os.environ.get("UNIP_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
MODEL = {"hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 2, "decoder_hidden_size": 32,
         "auxiliary_channels": 32}
SETS = {"buffalo-udder": ("buffalo-udder", "buffalo-udder"), "sirst": ("sirst", "sirst"),
        "massmind": ("folder", None)}  # name -> (builder, folder under DATA; None: built here)
PAIRS = (("buffalo-udder", "sirst"), ("sirst", "buffalo-udder"), ("buffalo-udder", "massmind"))


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def massmind_folder(out: str) -> str:
    """MassMIND's 5 images as a generic folder data set (ids masks, classes.json): 3 train, 2 val."""
    root = os.path.join(out, "massmind-split")
    if os.path.isdir(root):
        return root
    rows = load_segmentation_dataset("massmind", os.path.join(DATA, "massmind"), "train",
                                     cache_dir=os.path.join(out, "cache"))
    from unip_hf.data import segmentation_metadata

    classes = [name for _, name in sorted(segmentation_metadata(rows)["id2label"].items())]
    for index, row in enumerate(rows):
        split = "train" if index < 3 else "val"
        for kind in ("images", "masks"):
            os.makedirs(os.path.join(root, kind, split), exist_ok=True)
        row["image"].save(os.path.join(root, "images", split, f"{index}.png"))
        Image.fromarray(np.asarray(row["label"], dtype=np.uint8)).save(os.path.join(root, "masks", split, f"{index}.png"))
    with open(os.path.join(root, "classes.json"), "w", encoding="utf-8") as handle:
        json.dump(classes, handle)
    return root


def data_arguments(name: str, out: str, args) -> DataArguments:
    builder, folder = SETS[name]
    data_dir = os.path.join(DATA, folder) if folder else massmind_folder(out)
    return DataArguments(dataset=builder, data_dir=data_dir, crop_size=args.crop, img_scale=args.img_scale,
                         max_eval_samples=args.max_eval, cache_dir=os.path.join(out, "cache"))


def train(name: str, model_args: ModelArguments, data: DataArguments, output_dir: str, steps: int, seed: int,
          lr: float):
    reset_accelerate()
    batch = 3 if name == "massmind" else 4  # MassMIND has 3 training images here
    training = FinetuningArguments(output_dir=output_dir, per_device_train_batch_size=batch, max_steps=steps,
                                   checkpointing_steps=0, learning_rate=lr, seed=seed, report_to="none")
    start = time.perf_counter()
    result = run_finetuning(model_args, data, training)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150, help="Target fine-tuning steps (both methods).")
    parser.add_argument("--source_steps", type=int, default=300)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--img_scale", default="256x128")
    parser.add_argument("--max_eval", type=int, default=40, help="First N validation images.")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--tmt_args", default="", help="Extra TMT options, e.g. '--tmt_strength 2'.")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "results.jsonl")
    done = {}
    if os.path.isfile(log_path):
        with open(log_path, encoding="utf-8") as handle:
            for line in handle:
                entry = json.loads(line)
                done[(entry["source"], entry["target"], entry["method"], entry["seed"])] = entry

    def record(entry):
        done[(entry["source"], entry["target"], entry["method"], entry["seed"])] = entry
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    sources = {}
    for source in sorted({s for s, _ in PAIRS}):
        path = os.path.join(args.out, f"source-{source}")
        if not os.path.isfile(os.path.join(path, "config.json")):
            model = ModelArguments(model_name_or_path="none", preset="unip-tiny", patch_size=8,
                                   config_overrides=json.dumps(MODEL))
            _, seconds = train(source, model, data_arguments(source, args.out, args), path, args.source_steps, 1234,
                               1e-3)
            print(f"source {source}: {args.source_steps} steps in {seconds:.0f} s", flush=True)
        sources[source] = path
    extra = dict(zip(args.tmt_args.split()[::2], args.tmt_args.split()[1::2]))
    for seed in args.seeds:  # seeds outermost: a run cut short still covers every pair
        for source, target in PAIRS:
            for method in ("vanilla", "tmt"):
                if (source, target, method, seed) in done:
                    continue
                if os.path.exists(os.path.join(args.out, "STOP")):  # `touch OUT/STOP`: no new run, print the table
                    break
                model = ModelArguments(model_name_or_path=sources[source])
                if method == "tmt":
                    model.tmt = True
                    for key, value in extra.items():
                        setattr(model, key.lstrip("-"), type(getattr(model, key.lstrip("-")))(value))
                out = os.path.join(args.out, f"{source}-to-{target}-{method}-{seed}")
                result, seconds = train(target, model, data_arguments(target, args.out, args), out, args.steps, seed,
                                        args.lr)
                value = result.metrics[result.main_metric]
                record({"source": source, "target": target, "method": method, "seed": seed,
                        "metric": result.main_metric, "value": value, "seconds": seconds, "steps": args.steps})
                print(f"{source} -> {target} {method} seed {seed}: {result.main_metric} {value:.4f} ({seconds:.0f} s)",
                      flush=True)
    print(f"\n{args.steps} steps, batch 4 (MassMIND 3), crop {args.crop}, img_scale {args.img_scale}, first {args.max_eval} val "
          f"images; seeds {args.seeds}; TMT {args.tmt_args or 'defaults'}")
    print(f"{'pair':32s} {'metric':9s} {'vanilla':>15s} {'TMT':>15s} {'TMT - vanilla':>17s}  time ratio")
    for source, target in PAIRS:
        pairs = [(done.get((source, target, "vanilla", s)), done.get((source, target, "tmt", s))) for s in args.seeds]
        pairs = [(v, t) for v, t in pairs if v and t]
        if not pairs:
            continue
        vanilla = [100 * v["value"] for v, _ in pairs]
        tmt = [100 * t["value"] for _, t in pairs]
        diff = [t - v for v, t in zip(vanilla, tmt)]

        def fmt(xs):
            return f"{statistics.mean(xs):6.2f} +- {statistics.stdev(xs) if len(xs) > 1 else 0:5.2f}"

        ratio = statistics.mean(t["seconds"] / v["seconds"] for v, t in pairs)
        print(f"{source + ' -> ' + target:32s} {pairs[0][0]['metric']:9s} {fmt(vanilla):>15s} {fmt(tmt):>15s} "
              f"{fmt(diff):>17s}  {ratio:.2f}x  (n={len(pairs)})")


if __name__ == "__main__":
    main()
