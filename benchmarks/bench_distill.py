"""Benchmark of one NMI-HAD optimisation step (UNIP, Zhang et al., ICLR 2025): `unip_hf.pretraining.distillation` against a naive
transformers version.

Step = teacher forward + student forward/backward + AdamW step, unip-small teacher (12 layers, 6 heads, distilled
block 9 of 12, i.e. index 8) and unip-tiny student whose last block has 6 heads, 224x224, batch 16, on CPU.

- ours: `AttentionTeacher` (blocks 0-7 with SDPA, then only block 8's norm and q/k), `NmiHadStudent` (blocks 0-10
  with SDPA, then only the last block's norm and q/k), `nmi_had_loss`.
- naive: transformers `ViTModel`s with eager attention and `output_attentions=True`, full depth for both (a
  `ViTModel` cannot give one block more heads, so the naive student has 6 heads in every block: the same FLOPs),
  the KL computed from the returned probabilities.

Each variant runs in its own process (so that peak resident memory is its own); the fp32 matmul peak of the machine
is measured in the same run. Prints steps/s of both, the ratio (target >= 1.3), peak memory of both and the achieved
GFLOP/s (counted with `torch.utils.flop_counter`) as a fraction of the matmul peak.

    python benchmarks/bench_distill.py [--batch_size 16] [--image_size 224] [--warmup 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from common import matmul_peak_gflops

__all__ = ["main", "run_variant"]

TEACHER_LAYER = 8  # 0-based: block 9 of 12


def _ours(batch_size: int, image_size: int):
    from unip_hf import UnipConfig, UnipViTModel
    from unip_hf.pretraining.distillation import AttentionTeacher, NmiHadStudent, nmi_had_loss
    from unip_hf.training.optimization import create_optimizer

    torch.manual_seed(0)
    teacher = AttentionTeacher(UnipViTModel(UnipConfig.from_preset("unip-small", image_size=image_size)), TEACHER_LAYER)
    student = UnipViTModel(UnipConfig.from_preset("unip-tiny", image_size=image_size, last_layer_num_attention_heads=6,
                                                  drop_path_rate=0.1))
    module = NmiHadStudent(student, "attention").train()
    optimizer = create_optimizer(module, 1e-4)
    grid = (image_size // 16, image_size // 16)

    def step(pixel_values):
        target = teacher(pixel_values, student_grid=grid)
        loss = nmi_had_loss(module(pixel_values), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def _naive(batch_size: int, image_size: int):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    common = dict(image_size=image_size, patch_size=16, num_hidden_layers=12, attn_implementation="eager")
    teacher = ViTModel(ViTConfig(hidden_size=384, num_attention_heads=6, intermediate_size=1536, **common),
                       add_pooling_layer=False).eval()
    teacher.requires_grad_(False)
    student = ViTModel(ViTConfig(hidden_size=192, num_attention_heads=6, intermediate_size=768, **common),
                       add_pooling_layer=False).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def step(pixel_values):
        with torch.no_grad():
            teacher_probs = teacher(pixel_values=pixel_values, output_attentions=True).attentions[TEACHER_LAYER]
        student_probs = student(pixel_values=pixel_values, output_attentions=True).attentions[-1]
        teacher_probs = teacher_probs.float()
        loss = (teacher_probs * (torch.log(teacher_probs + 1e-12) - torch.log(student_probs.float() + 1e-12))).sum(-1)
        loss = loss.mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def run_variant(name: str, batch_size: int, image_size: int, warmup: int, steps: int) -> dict:
    """Time `steps` steps of one variant after `warmup`, count its FLOPs, and report its peak resident memory."""
    from torch.utils.flop_counter import FlopCounterMode

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step = (_ours if name == "ours" else _naive)(batch_size, image_size)
    pixel_values = torch.randn(batch_size, 3, image_size, image_size)
    for _ in range(warmup):
        step(pixel_values)
    times = []
    for _ in range(steps):
        tic = time.perf_counter()
        loss = step(pixel_values)
        times.append(time.perf_counter() - tic)
    counter = FlopCounterMode(display=False)
    with counter:
        step(pixel_values)
    seconds = sorted(times)[len(times) // 2]
    return {
        "variant": name,
        "seconds_per_step": seconds,
        "steps_per_second": 1.0 / seconds,
        "gflop_per_step": counter.get_total_flops() / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": base_rss,
        "loss": float(loss),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variant", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.batch_size, args.image_size, args.warmup, args.steps)))
        return 0
    print(f"NMI-HAD step: unip-small teacher (block {TEACHER_LAYER + 1} of 12) -> unip-tiny student (6-head last "
          f"block), {args.image_size}x{args.image_size}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps (median)")
    peak_before = matmul_peak_gflops()
    results = {}
    for name in ("ours", "naive"):
        command = [sys.executable, os.path.abspath(__file__), "--variant", name, "--batch_size", str(args.batch_size),
                   "--image_size", str(args.image_size), "--warmup", str(args.warmup), "--steps", str(args.steps)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    peak = max(peak_before, matmul_peak_gflops())
    print(f"fp32 matmul peak (2048^3 GEMM, best of 10): {peak:.1f} GFLOP/s")
    for name, label in (("ours", "unip_hf (stop early, q/k only, SDPA)"), ("naive", "naive ViTModel (eager, full)")):
        r = results[name]
        achieved = r["gflop_per_step"] / r["seconds_per_step"]
        print(f"{label:40s} {r['steps_per_second']:.3f} steps/s  ({r['seconds_per_step']:.2f} s/step, "
              f"{r['gflop_per_step']:.1f} GFLOP/step, {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of peak)  "
              f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['peak_rss_mb'] - r['rss_before_mb']:.0f} MB over start)")
    ratio = results["ours"]["steps_per_second"] / results["naive"]["steps_per_second"]
    print(f"speed-up: {ratio:.2f}x (target >= 1.3); memory: {results['ours']['peak_rss_mb']:.0f} MB vs "
          f"{results['naive']['peak_rss_mb']:.0f} MB peak RSS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
