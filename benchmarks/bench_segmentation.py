"""Segmentation inference speed and memory of UNIP (Zhang et al., "UNIP", ICLR 2025): UnipForSemanticSegmentation
(unip-small, LL-FPN + UPerNet, 512x512, batch 2, fp32, CPU) against transformers' UperNetForSemanticSegmentation.

The named baseline is UperNetForSemanticSegmentation over a BEiT ViT backbone (`BeitBackbone`, `add_fpn=True`) of the
same width, depth and heads (384 / 12 / 6, patch 16): transformers' own way of giving UPerNet a plain-ViT feature
pyramid (x4, x2, x1, /2 on blocks 3, 5, 7, 11), the same design and FLOPs as ours; ratio target >= 1.0.
Also measured, against transformers' UperNetForSemanticSegmentation with
a DINOv2-style ViT backbone of the same width, depth and heads (384 / 12 / 6, patch 16, blocks 3, 5, 7, 11 tapped,
random weights, UPerNet channels = 384 as in UNIP), in one run on the same inputs. transformers' BEiT segmenter
(same width/depth, the same four-op feature pyramid on blocks 3, 5, 7, 11 + UPerNet) runs too, as the like-for-like
design.

Both run inference without labels, so neither computes its auxiliary head. Note what differs by design: UNIP's head
sees a four-scale pyramid (1/4 ... 1/32) built from the last block, transformers' UperNet over a plain ViT backbone
gets four maps at 1/16 (it has no pyramid neck); the GFLOPs line makes that visible.

Prints images/s of both and the ratio ours/theirs (target >= 1.0), GFLOPs per image of both, and the peak memory of
each (fresh child process per model).

Run: python benchmarks/bench_segmentation.py [--batch 2] [--size 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools

import torch
from transformers import BeitConfig, BeitForSemanticSegmentation, Dinov2Config, UperNetConfig, UperNetForSemanticSegmentation

from common import count_flops, interleaved_times, peak_memory_mib

from unip_hf import UnipConfig, UnipForSemanticSegmentation

NUM_LABELS = 2


def build_unip(size: int) -> UnipForSemanticSegmentation:
    config = UnipConfig.from_preset("unip-small", image_size=size, num_labels=NUM_LABELS, decode_head="ll_fpn")
    return UnipForSemanticSegmentation(config).eval()


def build_upernet(size: int) -> UperNetForSemanticSegmentation:
    # transformers backbones count the embeddings as stage 0: stages 4, 6, 8, 12 are blocks 3, 5, 7, 11 (0-based)
    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=16,
                            image_size=size, out_indices=[4, 6, 8, 12], layerscale_value=1.0, reshape_hidden_states=True)
    config = UperNetConfig(backbone_config=backbone, hidden_size=384, num_labels=NUM_LABELS, pool_scales=[1, 2, 3, 6],
                           use_auxiliary_head=False)
    return UperNetForSemanticSegmentation(config).eval()


def build_upernet_beit(size: int) -> UperNetForSemanticSegmentation:
    backbone = BeitConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                          patch_size=16, image_size=size, out_indices=[4, 6, 8, 12], add_fpn=True,
                          reshape_hidden_states=True, use_absolute_position_embeddings=True)
    config = UperNetConfig(backbone_config=backbone, hidden_size=384, num_labels=NUM_LABELS, pool_scales=[1, 2, 3, 6],
                           use_auxiliary_head=False)
    return UperNetForSemanticSegmentation(config).eval()


def build_beit(size: int) -> BeitForSemanticSegmentation:
    config = BeitConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        patch_size=16, image_size=size, out_indices=[3, 5, 7, 11], num_labels=NUM_LABELS,
                        use_auxiliary_head=False, use_absolute_position_embeddings=True)
    return BeitForSemanticSegmentation(config).eval()


BUILDERS = {"unip": build_unip, "upernet_beit": build_upernet_beit, "upernet": build_upernet, "beit": build_beit}


def _workload(name: str, size: int, batch: int):
    torch.manual_seed(0)
    model = BUILDERS[name](size)
    pixels = torch.randn(batch, 3, size, size)

    def run():
        with torch.inference_mode():
            return model(pixel_values=pixels).logits

    return run


def unip_workload(size: int = 512, batch: int = 2):
    return _workload("unip", size, batch)


def upernet_beit_workload(size: int = 512, batch: int = 2):
    return _workload("upernet_beit", size, batch)


def upernet_workload(size: int = 512, batch: int = 2):
    return _workload("upernet", size, batch)


def beit_workload(size: int = 512, batch: int = 2):
    return _workload("beit", size, batch)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    workloads = {"unip": unip_workload(args.size, args.batch),
                 "upernet_beit": upernet_beit_workload(args.size, args.batch),
                 "upernet": upernet_workload(args.size, args.batch),
                 "beit": beit_workload(args.size, args.batch)}
    names = {"unip": "UnipForSemanticSegmentation (unip-small, LL-FPN + UPerNet)",
             "upernet_beit": "UperNetForSemanticSegmentation (BEiT 384/12/6 backbone + FPN)",
             "upernet": "UperNetForSemanticSegmentation (Dinov2 384/12/6 backbone, 1/16 maps)",
             "beit": "BeitForSemanticSegmentation (384/12/6, multi-level FPN + UPerNet)"}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, {args.size}x{args.size}, "
          f"fp32 inference, {NUM_LABELS} classes")
    for name, fn in workloads.items():
        print(f"  {name}: logits {tuple(fn().shape)}")
    times = interleaved_times(workloads, warmup=1, repeats=args.repeats)
    ips = {name: args.batch / seconds for name, seconds in times.items()}
    flops = {name: count_flops(fn) / args.batch / 1e9 for name, fn in workloads.items()}
    for name in workloads:
        print(f"{names[name]:<72} {ips[name]:6.2f} images/s  {flops[name]:7.1f} GFLOPs/image  "
              f"{flops[name] * ips[name]:6.1f} GFLOP/s achieved")
    print(f"speed ratio ours/UperNet(BEiT backbone with FPN): {ips['unip'] / ips['upernet_beit']:.2f} "
          f"(target >= 1.0); GFLOPs ratio {flops['unip'] / flops['upernet_beit']:.2f}")
    print(f"speed ratio ours/UperNet(Dinov2, 1/16 maps only): {ips['unip'] / ips['upernet']:.2f}; "
          f"GFLOPs ratio {flops['unip'] / flops['upernet']:.2f}")
    print(f"speed ratio ours/BEiT (same neck + head design): {ips['unip'] / ips['beit']:.2f}; "
          f"GFLOPs ratio {flops['unip'] / flops['beit']:.2f}")
    peaks = {name: peak_memory_mib(functools.partial(globals()[f"{name}_workload"], args.size, args.batch))
             for name in workloads}
    print("peak RSS (fresh process, one forward after a warm-up): " + ", ".join(
        f"{name} {peak:.0f} MiB (+{delta:.0f})" for name, (peak, delta) in peaks.items()))

if __name__ == "__main__":
    main()
