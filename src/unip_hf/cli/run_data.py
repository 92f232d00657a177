"""CLI for the UNIP (Zhang et al., ICLR 2025) data layer: ``unip infmix build`` and ``unip data inspect``.

``infmix build`` builds an InfMix configuration, prints the per-source table and the skipped-file count, saves
it (arrow via ``save_to_disk`` or parquet with a README) and optionally pushes it; ``data inspect`` summarises a data set.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from typing import Any

import datasets
import numpy as np
from PIL import Image, ImageDraw

from unip_hf.models.infrared_decoding import decode_intensity
from unip_hf.data.export import export_parquet, push_to_hub
from unip_hf.data.infmix import InfMix, format_report_table
from unip_hf.data.segmentation import SEGMENTATION_BUILDERS, load_segmentation_dataset, segmentation_metadata

__all__: list[str] = []  # the command is registered by unip_hf.cli.commands


def command_infmix_build(args: argparse.Namespace) -> int:
    """Run `unip infmix build`; returns the exit status."""
    split_list = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    tmp = None if args.cache_dir else tempfile.TemporaryDirectory(prefix="infmix-cache-")
    cache = args.cache_dir or tmp.name
    try:
        try:
            builder = InfMix(config_name=args.config, data_dir=os.path.abspath(args.root_or_manifest),
                             cache_dir=cache, include_sources=split_list(args.include_sources),
                             exclude_sources=split_list(args.exclude_sources))
            builder.download_and_prepare()
        except (ValueError, FileNotFoundError) as err:  # a bad manifest, path or selection: named, no traceback
            return _usage_error("unip infmix build", err)
        report = builder.load_report() or {}
        ds = builder.as_dataset(split="train")
        name = builder.config.name
        print(f"InfMix configuration {name}: {len(ds)} images")
        print(format_report_table(report))
        skipped = report.get("unreadable", [])
        print(f"skipped (unreadable): {len(skipped)}")
        for item in skipped:
            print(f"  {item['file']}: {item['error']}")
        scan_skipped = report.get("skipped", [])
        if scan_skipped:
            print(f"skipped while scanning (not opened): {len(scan_skipped)}")
            for item in scan_skipped:
                print(f"  {item['file']}: {item['reason']}")
        print(f"duplicates dropped: {report.get('total_duplicates', 0)}")
        if args.format == "parquet" or args.push_to_hub:
            out = args.output
            export_parquet(ds, out, name, report=report)
            print(f"parquet export: {out}/{name}/ (load with datasets.load_dataset({out!r}, {name!r}))")
            if args.push_to_hub:
                url = push_to_hub(out, args.push_to_hub, private=args.private)
                print(f"pushed to {args.push_to_hub}: {url}")
        else:
            ds.save_to_disk(args.output)
            print(f"saved with save_to_disk: {args.output} (load with datasets.load_from_disk)")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def _usage_error(command: str, err: Exception) -> int:
    """Print `err` as one `error:` line on stderr (argparse's form) and return its exit status, 2."""
    print(f"{command}: error: {err}", file=sys.stderr)
    return 2


def _load_for_inspect(args: argparse.Namespace):
    key = args.dataset.lower().replace("_", "-")
    if key in SEGMENTATION_BUILDERS:
        if not args.data_dir:
            raise SystemExit(f"unip data inspect {args.dataset}: --data_dir is required")
        return load_segmentation_dataset(key, args.data_dir, args.split, cache_dir=args.cache_dir)
    if os.path.isdir(args.dataset):
        if os.path.exists(os.path.join(args.dataset, "state.json")) or os.path.exists(os.path.join(args.dataset, "dataset_dict.json")):
            ds = datasets.load_from_disk(args.dataset)
            return ds[args.split] if isinstance(ds, datasets.DatasetDict) else ds
        if os.path.isdir(os.path.join(args.dataset, "images")):
            return load_segmentation_dataset("folder", args.dataset, args.split, cache_dir=args.cache_dir)
    raise SystemExit(f"unip data inspect: {args.dataset!r} is neither a known layout nor a data set folder")


#: Overlay colours for classes whose palette colour is gray (e.g. the white "target" of the binary small-target
#: sets), which a blend over a grayscale image would not show: vivid, distinct hues, in order.
VISIBLE_COLOURS = ((255, 40, 40), (40, 220, 40), (255, 200, 0), (0, 160, 255), (255, 0, 255), (0, 255, 255))


def overlay_palette(palette: list) -> np.ndarray:
    """(256, 3) uint8 overlay colours: the palette's, except achromatic (gray or white) classes 1.. get a vivid
    `VISIBLE_COLOURS` hue; 255 (ignore) magenta."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    vivid = iter(VISIBLE_COLOURS * 43)
    for i, c in enumerate(palette[:255]):
        pal[i] = next(vivid) if i > 0 and max(c) - min(c) < 40 else c
    pal[255] = (255, 0, 255)
    return pal


def contact_sheet(images: list, masks: list, palette: list, tile: int = 160, cols: int = 4):
    """A PIL contact sheet: each image as the model sees its intensity, with its mask's classes (mask may be ``None``;
    class 0, the background, is not drawn) blended at 65 % in `overlay_palette` colours; a region that the thumbnail
    would shrink below 6 pixels (an infrared small target) is also ringed in its colour, so that it stays visible."""
    from scipy import ndimage  # noqa: PLC0415  (a dependency; only this drawing needs it)

    rows = max(1, -(-len(images) // cols))
    sheet = Image.new("RGB", (cols * tile, rows * tile), (32, 32, 32))
    pal = overlay_palette(palette)
    for k, im in enumerate(images):
        arr = decode_intensity(im) * 255.0  # as the model sees it (16-bit: percentile stretch)
        rgb = np.repeat(arr[..., None], 3, axis=2)
        m = None if masks[k] is None else np.asarray(masks[k])
        if m is not None:
            colour = pal[m].astype(np.float32)
            overlay = (m > 0)[..., None]
            rgb = np.where(overlay, 0.35 * rgb + 0.65 * colour, rgb)
        t = Image.fromarray(rgb.astype(np.uint8))
        t.thumbnail((tile, tile))
        if m is not None and (m > 0).any():
            scale = t.width / m.shape[1]
            draw = ImageDraw.Draw(t)
            components, count = ndimage.label(m > 0)
            for index, box in enumerate(ndimage.find_objects(components), start=1):
                if max(box[0].stop - box[0].start, box[1].stop - box[1].start) * scale >= 6:
                    continue
                y, x = ((sl.start + sl.stop) / 2 * scale for sl in box)
                value = int(m[box][components[box] == index][0])
                draw.ellipse((x - 6, y - 6, x + 6, y + 6), outline=tuple(int(v) for v in pal[value]), width=2)
        sheet.paste(t, ((k % cols) * tile + (tile - t.width) // 2, (k // cols) * tile + (tile - t.height) // 2))
    return sheet


def command_data_inspect(args: argparse.Namespace) -> int:
    """Run `unip data inspect` (prints, and writes `summary.json` and `contact_sheet.png` under `--out`); returns the
    exit status."""
    try:
        ds = _load_for_inspect(args)
    except (ValueError, FileNotFoundError) as err:  # an unknown or empty split, a bad mask: named, no traceback
        return _usage_error("unip data inspect", err)
    try:
        meta = segmentation_metadata(ds)
    except ValueError:
        meta = {"id2label": {}, "palette": []}
    has_label = "label" in ds.column_names
    sizes, modes, hist, by_source = collections.Counter(), collections.Counter(), collections.Counter(), collections.Counter()
    sheet_images, sheet_masks = [], []
    for idx, ex in enumerate(ds):
        im = ex["image"]
        sizes[f"{im.size[0]}x{im.size[1]}"] += 1
        modes[ex.get("mode") or im.mode] += 1
        if "source" in ex:
            by_source[f"{ex.get('modality', '')}/{ex['source']}"] += 1
        mask = ex["label"] if has_label else None
        if mask is not None:
            vals, counts = np.unique(np.asarray(mask), return_counts=True)
            for v, c in zip(vals.tolist(), counts.tolist()):
                hist[int(v)] += int(c)
        if idx < args.max_images:
            sheet_images.append(im)
            sheet_masks.append(mask)
    names = meta.get("id2label", {})
    source_modes = (meta.get("source_modes") or {}).get(args.split, {})
    total = sum(hist.values()) or 1
    summary: dict[str, Any] = {
        "dataset": args.dataset, "split": args.split, "num_examples": len(ds),
        "sizes": dict(sizes.most_common()), "modes": dict(modes.most_common()),
        # the modes of the original image files (the stored images are their decoded intensity: L, I;16 or F)
        **({"source_modes": source_modes} if source_modes else {}),
        "class_histogram": {(names.get(k, "ignore" if k == 255 else str(k))): {"pixels": v, "fraction": round(v / total, 6)}
                            for k, v in sorted(hist.items())},
    }
    if by_source:
        summary["sources"] = dict(sorted(by_source.items()))
    skipped = meta.get("skipped", [])
    if skipped:
        summary["skipped"] = skipped
    if meta.get("skipped_files"):
        summary["skipped_files"] = meta["skipped_files"]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    sheet = contact_sheet(sheet_images, sheet_masks, meta.get("palette") or [[0, 0, 0], [255, 0, 0]])
    sheet_path = os.path.join(args.out, "contact_sheet.png")
    sheet.save(sheet_path)
    print(f"{args.dataset} [{args.split}]: {len(ds)} examples")
    if skipped:
        print(f"skipped {len(skipped)} unreadable pair(s) while building (image or mask could not be decoded):")
        for item in skipped:
            print(f"  [{item.get('split', '?')}] {item['error']}")
    print("sizes: " + ", ".join(f"{k} ({v})" for k, v in sizes.most_common(8)))
    if source_modes:
        print("modes of the original files: " + ", ".join(f"{k} ({v})" for k, v in source_modes.items())
              + "; stored as their intensity: " + ", ".join(f"{k} ({v})" for k, v in modes.most_common()))
    else:
        print("modes: " + ", ".join(f"{k} ({v})" for k, v in modes.most_common()))
    if hist:
        print("class histogram (pixels):")
        for name, d in summary["class_histogram"].items():
            print(f"  {name:<20}{d['pixels']:>12}  {100 * d['fraction']:6.2f}%")
    if by_source:
        print("sources: " + ", ".join(f"{k} ({v})" for k, v in summary["sources"].items()))
    if meta.get("skipped_files"):
        print(f"skipped while scanning (not opened): {len(meta['skipped_files'])}")
        for line in meta["skipped_files"]:
            print(f"  {line}")
    print(f"wrote {os.path.join(args.out, 'summary.json')} and {sheet_path}")
    return 0
