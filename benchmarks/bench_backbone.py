"""Backbone speed and memory: UnipViTModel (unip-small, 224x224, batch 8, fp32 inference, CPU) against transformers'
ViTModel of the same width/depth/heads, in one run on the same inputs.

Prints:
  1. images/s of both with their default attention (SDPA) and the ratio ours/theirs (target >= 1.0);
  2. images/s of a forward that returns the last layer's attention logits (`UnipViTModel.attention_logits`, which
     skips what the logits do not depend on) against ViTModel with output_attentions=True (eager attention), and the
     ratio (target >= 1.1);
  3. peak memory of each (fresh child process per model);
  4. achieved GFLOP/s of our forward as a fraction of this machine's fp32 matmul peak measured now.

Run: python benchmarks/bench_backbone.py [--batch 8] [--repeats 10]
"""

from __future__ import annotations

import argparse
import functools

import torch
from transformers import ViTConfig, ViTModel

from common import count_flops, interleaved_times, matmul_peak_gflops, peak_memory_mib

from unip_hf import UnipConfig, UnipViTModel

IMAGE = 224


def build_unip() -> UnipViTModel:
    return UnipViTModel(UnipConfig.from_preset("unip-small", image_size=IMAGE)).eval()


def build_vit(attn_implementation: str = "sdpa") -> ViTModel:
    config = ViTConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=IMAGE,
        patch_size=16, layer_norm_eps=1e-6,
    )
    model = ViTModel(config, add_pooling_layer=False).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def _inputs(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))


def memory_workload(kind: str, batch: int):
    torch.manual_seed(0)
    pixels = _inputs(batch)
    if kind == "unip":
        model = build_unip()
        return lambda: _no_grad(model, pixels)
    if kind == "unip_logits":
        model = build_unip()
        return lambda: _logits(model, pixels)
    model = build_vit("eager" if kind == "vit_attn" else "sdpa")
    if kind == "vit_attn":
        return lambda: _no_grad(model, pixels, output_attentions=True)
    return lambda: _no_grad(model, pixels)


def _no_grad(model, pixels, **kwargs):
    with torch.inference_mode():
        return model(pixels, **kwargs)


def _logits(model, pixels):
    """The forward NMI-HAD runs on the student: the last block's attention logits and nothing they do not need."""
    with torch.inference_mode():
        return model.attention_logits(pixels, [-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {IMAGE}x{IMAGE}, fp32")

    pixels = _inputs(args.batch)
    unip = build_unip()
    vit = build_vit("sdpa")
    vit_eager = build_vit("eager")
    workloads = {
        "unip (sdpa)": lambda: _no_grad(unip, pixels),
        "vit (sdpa)": lambda: _no_grad(vit, pixels),
        "unip last-layer logits": lambda: _logits(unip, pixels),
        "vit eager + output_attentions": lambda: _no_grad(vit_eager, pixels, output_attentions=True),
    }
    times = interleaved_times(workloads, warmup=2, repeats=args.repeats)
    rate = {name: args.batch / seconds for name, seconds in times.items()}
    for name, value in rate.items():
        print(f"  {name:32s} {value:8.2f} images/s  ({times[name] * 1000:.1f} ms/batch)")
    ratio_plain = rate["unip (sdpa)"] / rate["vit (sdpa)"]
    ratio_logits = rate["unip last-layer logits"] / rate["vit eager + output_attentions"]
    print(f"ratio plain forward (ours/theirs):            {ratio_plain:.3f}   (target >= 1.0)")
    print(f"ratio forward with attention (ours/theirs):   {ratio_logits:.3f}   (target >= 1.1)")

    flops = count_flops(lambda: _no_grad(unip, pixels))
    peak = matmul_peak_gflops()
    achieved = flops / times["unip (sdpa)"] / 1e9
    vit_achieved = count_flops(lambda: _no_grad(vit, pixels)) / times["vit (sdpa)"] / 1e9
    print(f"GFLOPs per image: {flops / args.batch / 1e9:.2f}")
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s; unip achieves {achieved:.1f} GFLOP/s = {achieved / peak:.2f} of peak "
          f"(ViTModel: {vit_achieved:.1f} GFLOP/s = {vit_achieved / peak:.2f})")

    for kind in ("unip", "vit", "unip_logits", "vit_attn"):
        total, increase = peak_memory_mib(functools.partial(memory_workload, kind, args.batch))
        print(f"peak memory {kind:12s}: {total:7.1f} MiB RSS (forward adds {increase:6.1f} MiB)")


if __name__ == "__main__":
    main()
