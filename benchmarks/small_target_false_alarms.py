"""Label-free false-alarm density of a small-target model (issue 23): on infrared frames known to hold no small
target, every predicted target pixel is a false alarm. Prints, per scene source and over all frames, false-alarm
pixels per megapixel and false targets (8-connected components, as `unip predict` lists them) per frame, at the
model's saved operating point (`config.target_threshold`) unless `--threshold` is given. Large frames are tiled as
`unip predict` tiles them (identical results).

The frames come from a manifest (`benchmarks/small_target_negative_frames.tsv`: path relative to `--data_root`,
scene, check status). Only frames marked `ok` (checked by eye at full resolution) are used unless
`--include_unchecked` is given; numbers from unchecked frames are a pilot, not a result.

Run: python benchmarks/small_target_false_alarms.py --model runs/sirst-small-target \
         [--manifest benchmarks/small_target_negative_frames.tsv] [--data_root ../shared/data] [--include_unchecked]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

from unip_hf.models.infrared_decoding import load_infrared_image
from unip_hf.deploy.predict import class_probabilities, find_targets, load_predictor, operating_threshold

HERE = os.path.dirname(os.path.abspath(__file__))


def read_manifest(path: str, include_unchecked: bool) -> list[tuple[str, str]]:
    """`(relative path, source)` of the manifest's usable frames (`ok`, plus `unchecked` when asked)."""
    frames = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip() or line.startswith("#"):
                continue
            relative, _, status = (line.rstrip("\n").split("\t") + ["", ""])[:3]
            if status == "ok" or (include_unchecked and status == "unchecked"):
                parts = relative.split("/")
                # the source: the data set folder (infrared-pool/<source>/..., else the first folder)
                source = parts[1] if parts[0] == "infrared-pool" and len(parts) > 2 else parts[0]
                frames.append((relative, source if len(parts) > 1 else "frames"))
    return frames


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", default=os.path.join(HERE, "small_target_negative_frames.tsv"))
    parser.add_argument("--data_root", default=os.path.join(HERE, "..", "..", "shared", "data"))
    parser.add_argument("--threshold", type=float, default=None, help="default: the model's operating point")
    parser.add_argument("--include_unchecked", action="store_true", help="pilot: also frames not checked by eye")
    parser.add_argument("--output", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    frames = read_manifest(args.manifest, args.include_unchecked)
    if not frames:
        raise SystemExit(f"error: no usable frame in {args.manifest} (mark checked frames 'ok', or pass "
                         "--include_unchecked for a pilot)")
    model, processor = load_predictor(args.model)
    threshold = operating_threshold(model.config, args.threshold)
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"frames": 0, "pixels": 0, "fa_pixels": 0, "targets": 0})
    for relative, source in frames:
        image = load_infrared_image(os.path.join(args.data_root, relative))
        probability = class_probabilities(model, processor, image)[1]
        mask = probability > threshold
        for key in (source, "all"):
            entry = totals[key]
            entry["frames"] += 1
            entry["pixels"] += mask.size
            entry["fa_pixels"] += int(mask.sum())
            entry["targets"] += len(find_targets(probability, mask))
    print(f"{args.model}: threshold {threshold:g}, {len(frames)} frame(s)"
          + (" (UNCHECKED frames included: a pilot)" if args.include_unchecked else ""))
    report = {}
    for key, entry in sorted(totals.items(), key=lambda item: (item[0] == "all", item[0])):
        density = entry["fa_pixels"] / entry["pixels"] * 1e6
        per_frame = entry["targets"] / entry["frames"]
        report[key] = {**entry, "fa_pixels_per_megapixel": density, "false_targets_per_frame": per_frame}
        print(f"  {key:<14} {entry['frames']:3d} frames  {density:10.1f} false-alarm px / MP  "
              f"{per_frame:7.2f} false targets / frame")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump({"model": args.model, "threshold": threshold, "sources": report}, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
