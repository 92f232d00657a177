"""Benchmark of the UNIP (Zhang et al., ICLR 2025) data layer: pre-training transform throughput and InfMix build.

Prints images/s of `PretrainTransform` (decode + RandomResizedCrop 224 + flip + gray + normalise) against a bare
PIL decode + resize loop on ``$UNIP_DATA_DIR/infrared-pool`` (ratio ours / bare, target >= 0.8), then the time and
peak memory of building InfMix (``full``) over ``infrared-pool`` + ``rgb-pool``.

    python benchmarks/bench_data.py [--repeats 2] [--skip-build]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

DATA_DIR = Path(os.environ.get("UNIP_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def bare(files: list[str]) -> None:
    for f in files:
        with Image.open(f) as im:
            np.asarray(im.convert("L").resize((224, 224), Image.BILINEAR), dtype=np.float32)


def ours(files: list[str]) -> None:
    from unip_hf.data.transforms import PretrainTransform

    t = PretrainTransform(seed=0)
    for i, f in enumerate(files):
        t(f, index=i)


def timed(fn, files, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(files)
        best = min(best, time.perf_counter() - start)
    return len(files) / best


def build_child(root: str, cache: str) -> None:
    from unip_hf.data.infmix import InfMix, format_report_table

    start = time.perf_counter()
    b = InfMix(config_name="full", data_dir=root, cache_dir=cache)
    b.download_and_prepare()
    seconds = time.perf_counter() - start
    print(format_report_table(b.report))
    print(f"unreadable files: {len(b.report['unreadable'])}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"InfMix build (full): {seconds:.1f} s, {b.report['total_kept'] / seconds:.1f} images/s, peak RSS {peak:.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--build-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_child:
        build_child(*args.build_child)
        return 0
    pool = DATA_DIR / "infrared-pool"
    if not pool.exists():
        print(f"no data at {pool}; set UNIP_DATA_DIR")
        return 1
    import torch

    torch.set_num_threads(1)
    files = sorted(str(p) for p in pool.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    r_bare = r_ours = 0.0
    for _ in range(args.repeats):  # interleaved, best of each, to damp noise from other processes
        r_bare = max(r_bare, timed(bare, files, 1))
        r_ours = max(r_ours, timed(ours, files, 1))
    print(f"infrared-pool: {len(files)} images, one process")
    print(f"bare PIL decode+convert(L)+resize 224: {r_bare:.1f} images/s")
    print(f"PretrainTransform (RRC 224, flip, gray->3ch, normalise, tensor): {r_ours:.1f} images/s")
    print(f"ratio ours / bare: {r_ours / r_bare:.2f} (target >= 0.8)")
    if not args.skip_build:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp, "root")
            root.mkdir()
            os.symlink(pool, root / "infrared")
            os.symlink(DATA_DIR / "rgb-pool", root / "rgb")
            # a fresh process, so that the peak RSS is the build's own
            subprocess.run([sys.executable, __file__, "--build-child", str(root), str(Path(tmp, "cache"))], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
