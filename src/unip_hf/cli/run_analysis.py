"""`unip analyze-attention`: the attention-pattern analysis of UNIP (Zhang et al., ICLR 2025) from the command line.

Loads a checkpoint (local folder or Hub id) with `AutoModel`, measures NMI, attention distance and entropy per layer on
a set of images, labels each layer local / hybrid / global, chooses the NMI-HAD teacher layer and writes
`report.json`, `nmi_by_layer.png` and `attention_maps.png`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from transformers import AutoImageProcessor

from unip_hf.argument_checks import check_model_source
from unip_hf.analysis.attention_analysis import analyze_attention, query_attention_maps
from unip_hf.analysis.plots import default_map_layers, default_queries, plot_attention_maps, plot_layer_curves
from unip_hf.data.files import find_images
from unip_hf.models.infrared_decoding import InfraredImageError, load_infrared_image
from unip_hf.models.vit_family import load_vision_backbone

__all__: list[str] = []  # the command is registered by unip_hf.cli.commands


def _load_model(name: str, trust_remote_code: bool):
    """The model (a ViT-family vision model, without an unused pooler) and its image processor, if it has one; a
    missing local path or a model that is no vision transformer ends the command with an error naming MODEL."""
    try:
        check_model_source("MODEL", name)
        model = load_vision_backbone(name, f"MODEL {name!r}", trust_remote_code=trust_remote_code)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    try:
        processor = AutoImageProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001  (no preprocessor_config.json: the analysis uses its default)
        processor = None
    return model, processor


def command_analyze_attention(args: argparse.Namespace) -> int:
    """Run `unip analyze-attention`; returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = _load_model(args.model, args.trust_remote_code)
    model.to(device)
    scan_skipped: list[str] = []  # bad names, FIFOs, broken links: named in the report with the unreadable ones
    paths = find_images(args.images, skipped=scan_skipped)
    if not paths:
        raise SystemExit(f"error: no image files found in {' '.join(args.images)}")
    try:
        report = analyze_attention(
            model, paths, image_size=args.image_size, num_images=args.num_images, batch_size=args.batch_size,
            image_processor=processor, progress=not args.no_progress, model_name=args.model,
        )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    report.skipped_images = scan_skipped + list(report.skipped_images)
    report.save(out / "report.json")
    print(report.format_table())
    if report.skipped_images:
        print(f"skipped {len(report.skipped_images)} unreadable or unusable file(s):")
        for item in report.skipped_images:
            print(f"  {item}")
    plot_layer_curves(report, out / "nmi_by_layer.png", names=[Path(args.model).name or args.model])
    layers = args.map_layers if args.map_layers else default_map_layers(report)
    bad = [i for i in layers if not 0 <= i < report.num_layers]
    if bad:
        raise SystemExit(f"error: --map_layers {bad} out of range 0..{report.num_layers - 1}")
    queries = default_queries(report.grid_size)
    example, (maps, intensity) = _first_readable(
        paths, lambda image: query_attention_maps(model, image, layers, queries, image_size=args.image_size,
                                                  image_processor=processor))
    plot_attention_maps(maps, intensity, layers, queries, labels=[report.labels[i] for i in layers],
                        path=out / "attention_maps.png", teacher_layer=report.teacher_layer,
                        title=f"{Path(args.model).name or args.model}: per-query attention on {Path(str(example.filename or 'image')).name}")
    print(f"teacher layer (0-based): {report.teacher_layer} ({report.teacher_layer + 1} of {report.num_layers}, "
          f"1-based) - {report.teacher_reason}")
    print(f"wrote {out / 'report.json'}, {out / 'nmi_by_layer.png'}, {out / 'attention_maps.png'}")
    return 0


def _first_readable(paths, measure):
    """The first of `paths` that decodes (skipping those the analysis skipped) and `measure` of it."""
    for path in paths:
        try:
            image = load_infrared_image(path)
            return image, measure(image)
        except InfraredImageError:  # unreadable, truncated, non-finite, too large: named in the report already
            continue
    raise SystemExit("error: none of the images could be read")
