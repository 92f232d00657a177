"""Inference speed and peak memory of UnipForSmallTargetSegmentation (issue 11: full-resolution detail path + UNIP
ViT context, logits at the input resolution) against the model it replaces for small targets,
UnipForSemanticSegmentation (LL-FPN + UPerNet, 1/4-resolution logits), with the same backbone, at 256x256 and 512x512,
batch 1, fp32, CPU, in one run (interleaved timing, so machine noise hits both alike; peak memory of each in a fresh
child process).

Defaults: the backbone of the README's SIRST command (unip-tiny width, 4 blocks, patch 16) and its detail path
(8-16-32 channels). Prints images/s, GFLOPs/image and the ratio small-target / semantic per size.

Run: python benchmarks/bench_small_target.py [--sizes 256 512] [--layers 4] [--detail_channels 8 16 32]

Large frames (issue 23): `--large 1280x1024 2560x2048 [--tile_size 512]` compares, for the small-target model alone,
the whole-frame forward with `tiled_target_logits` (the ViT context once on the whole frame, the full-resolution
detail path and decoder tile by tile with a halo): peak RSS of each in a fresh process, seconds per frame, their
ratios, and the largest difference of the two outputs (0 expected: the tiled result is identical).
"""

from __future__ import annotations

import argparse
import functools

import torch

from common import count_flops, interleaved_times, peak_memory_mib

from unip_hf import UnipConfig, UnipForSemanticSegmentation, UnipForSmallTargetSegmentation, UnipSmallTargetConfig


def build(name: str, size: int, layers: int, patch: int, detail_channels: tuple[int, ...]):
    common = dict(num_hidden_layers=layers, patch_size=patch, image_size=size, num_labels=2)
    if name == "small_target":
        config = UnipSmallTargetConfig.from_preset("unip-tiny", detail_channels=list(detail_channels), **common)
        return UnipForSmallTargetSegmentation(config).eval()
    config = UnipConfig.from_preset("unip-tiny", decode_head="ll_fpn", **common)
    return UnipForSemanticSegmentation(config).eval()


def workload(name: str, size: int, layers: int = 4, patch: int = 16, detail_channels=(8, 16, 32)):
    torch.manual_seed(0)
    model = build(name, size, layers, patch, tuple(detail_channels))
    pixels = torch.randn(1, 3, size, size)

    def run():
        with torch.inference_mode():
            return model(pixel_values=pixels).logits

    return run


def large_workload(mode: str, height: int, width: int, layers: int = 4, patch: int = 16, detail_channels=(8, 16, 32),
                   tile_size: int = 512):
    torch.manual_seed(0)
    model = build("small_target", 224, layers, patch, tuple(detail_channels))
    pixels = torch.randn(1, 3, height, width)

    def run():
        with torch.inference_mode():
            if mode == "tiled":
                return model.tiled_target_logits(pixels, tile_size)
            return model(pixel_values=pixels).target_logits

    return run


def large_frames(sizes: list[str], args) -> None:
    options = dict(layers=args.layers, patch=args.patch, detail_channels=tuple(args.detail_channels),
                   tile_size=args.tile_size)
    print(f"large frames, UnipForSmallTargetSegmentation: whole frame vs tiles of {args.tile_size} (halo included), "
          f"{args.large_repeats} timed run(s) each after one warm-up")
    for text in sizes:
        width, height = (int(v) for v in text.lower().split("x"))
        workloads = {mode: large_workload(mode, height, width, **options) for mode in ("whole", "tiled")}
        difference = float((workloads["whole"]() - workloads["tiled"]()).abs().max())
        times = interleaved_times(workloads, warmup=0, repeats=args.large_repeats)
        peaks = {mode: peak_memory_mib(functools.partial(large_workload, mode, height, width, **options))
                 for mode in workloads}
        for mode in workloads:
            peak, delta = peaks[mode]
            print(f"  {width}x{height} {mode:<5}: {times[mode]:7.2f} s/frame, peak RSS {peak:6.0f} MiB "
                  f"(+{delta:.0f} for the forward)")
        print(f"  {width}x{height} ratio tiled / whole: time {times['tiled'] / times['whole']:.2f}, forward memory "
              f"{peaks['tiled'][1] / max(peaks['whole'][1], 1e-9):.2f}, peak RSS "
              f"{peaks['tiled'][0] / peaks['whole'][0]:.2f}; max |logit difference| {difference:g}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--detail_channels", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--large", nargs="+", default=None, metavar="WxH",
                        help="large frames (e.g. 1280x1024 2560x2048): whole-frame vs tiled small-target inference "
                             "only")
    parser.add_argument("--tile_size", type=int, default=512)
    parser.add_argument("--large_repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.large:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 1, fp32 inference; backbone "
              f"unip-tiny width, {args.layers} blocks, patch {args.patch}, detail {args.detail_channels}")
        large_frames(args.large, args)
        return
    names = {"small_target": f"UnipForSmallTargetSegmentation (detail {args.detail_channels} + ViT context)",
             "semantic": "UnipForSemanticSegmentation (LL-FPN + UPerNet, baseline)"}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 1, fp32 inference; backbone unip-tiny "
          f"width, {args.layers} blocks, patch {args.patch}")
    for size in args.sizes:
        options = dict(layers=args.layers, patch=args.patch, detail_channels=tuple(args.detail_channels))
        workloads = {name: workload(name, size, **options) for name in names}
        shapes = {name: tuple(fn().shape) for name, fn in workloads.items()}
        times = interleaved_times(workloads, warmup=1, repeats=args.repeats)
        flops = {name: count_flops(fn) / 1e9 for name, fn in workloads.items()}
        peaks = {name: peak_memory_mib(functools.partial(workload, name, size, **options)) for name in names}
        print(f"{size}x{size}:")
        for name in names:
            peak, delta = peaks[name]
            print(f"  {names[name]:<68} logits {shapes[name]}  {1 / times[name]:6.2f} images/s  "
                  f"{flops[name]:6.1f} GFLOPs/image  peak RSS {peak:.0f} MiB (+{delta:.0f} for the forward)")
        print(f"  ratio small-target / semantic at {size}: speed {times['semantic'] / times['small_target']:.2f}, "
              f"GFLOPs {flops['small_target'] / flops['semantic']:.2f}, "
              f"forward memory {peaks['small_target'][1] / max(peaks['semantic'][1], 1e-9):.2f}")


if __name__ == "__main__":
    main()
