"""Benchmark of the attention-pattern analysis of UNIP (Zhang et al., ICLR 2025): the time spent outside the model
forward (NMI, distance, entropy and key-concentration measures plus aggregation) as a fraction of the forward time.

64 images through a randomly initialised unip-small (ViT-S/16) at 224 px on CPU, batches of 8. Real infrared images
from `$UNIP_DATA_DIR/infrared-pool` (default `<repo>/../shared/data`) are used when present, random pixels
otherwise. Target: fraction <= 0.2.

Usage: python benchmarks/bench_attention_analysis.py [--num-images 64] [--image-size 224] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from unip_hf import UnipConfig, UnipViTModel
from unip_hf.analysis.attention_analysis import analyze_attention
from unip_hf.data.files import find_images

__all__ = ["main"]


def main() -> None:
    """Run the benchmark and print the timings and the fraction."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = UnipViTModel(UnipConfig.from_preset("unip-small", image_size=args.image_size)).eval()
    data = Path(os.environ.get("UNIP_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    pool = data / "infrared-pool"
    if pool.exists():
        images = find_images(pool)
        source = f"{args.num_images} real images from {pool}"
    else:
        images = torch.randn(args.num_images, 3, args.image_size, args.image_size)
        source = f"{args.num_images} random tensors"
    # warm-up (allocator, first-call overheads), not timed
    analyze_attention(model, torch.randn(2, 3, args.image_size, args.image_size), progress=False)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    report = analyze_attention(model, images, image_size=args.image_size, num_images=args.num_images,
                               batch_size=args.batch_size, progress=False, timings=timings)
    total = time.perf_counter() - start
    fraction = timings["measure_s"] / timings["forward_s"]
    print(f"unip-small @ {args.image_size}px, {source}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{report.num_layers} layers x {report.num_heads[0]} heads")
    print(f"forward (eager, output_attentions): {timings['forward_s']:.2f} s")
    print(f"measures + aggregation:             {timings['measure_s']:.2f} s")
    print(f"image loading + preprocessing:      {timings['preprocess_s']:.2f} s")
    print(f"total analyze_attention:            {total:.2f} s")
    print(f"fraction outside the forward (measures / forward): {fraction:.3f}  (target <= 0.2: "
          f"{'met' if fraction <= 0.2 else 'NOT met'})")


if __name__ == "__main__":
    main()
