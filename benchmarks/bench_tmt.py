"""Training-step overhead of transferability-aware fine-tuning (TMT, arXiv 2504.05774; `unip_hf.training.transferability`)
against vanilla fine-tuning, in one run on the same inputs: one AdamW step (forward with labels, backward, update) of
UnipForSemanticSegmentation (LL-FPN + UPerNet + auxiliary head, fp32, CPU).

Workloads: `vanilla` (the named baseline); `tmt` (ACTE adaptive k-means + feature-agreement score from the frozen
pre-trained backbone run up to the first TMA block, TMA bias on the last third of the blocks: the `--tmt` default);
`tmt_windows` (fixed windows instead of k-means); `acte_loss_only` (no TMA: the fine-tuned backbone is run once more,
without gradients, up to the source block, and the map weights the loss).

Prints the median step time of each, the ratio to vanilla (target for `tmt`: <= 1.3x), and the peak memory of each
(fresh child process per workload).

Run: python benchmarks/bench_tmt.py [--preset unip-tiny] [--size 256] [--batch 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools

import torch

from common import interleaved_times, peak_memory_mib

from unip_hf import UnipConfig, UnipForSemanticSegmentation
from unip_hf.training.transferability import TransferabilityEstimator, loss_weights_from_map

WORKLOADS = ("vanilla", "tmt", "tmt_windows", "acte_loss_only")


def build_step(kind: str, preset: str, size: int, batch: int):
    """A zero-argument training step of the given kind (built in the calling process)."""
    torch.manual_seed(0)
    depth = UnipConfig.from_preset(preset).num_hidden_layers
    blocks = list(range(depth - max(1, depth // 3), depth))
    tma = kind in ("tmt", "tmt_windows")
    config = UnipConfig.from_preset(preset, image_size=size, num_labels=2, drop_path_rate=0.1,
                                    tmt_blocks=blocks if tma else [])
    model = UnipForSemanticSegmentation(config).train()
    model.unip.layernorm.requires_grad_(False)  # unused by LL-FPN, as in fine-tuning
    estimator = None
    if kind != "vanilla":
        estimator = TransferabilityEstimator.for_model(model, source_layer=blocks[0],
                                                       regions="windows" if kind == "tmt_windows" else "acte")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pixels = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 2, (batch, size, size))
    grid = (size // config.patch_size, size // config.patch_size)

    def step():
        extra = {}
        if tma:
            extra["transferability"] = estimator.bind(pixels)
        elif estimator is not None:
            extra["loss_weights"] = loss_weights_from_map(estimator.from_pixels(model.unip, pixels).map, grid, 1.0)
        loss = model(pixel_values=pixels, labels=labels, **extra).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="unip-tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no_memory", action="store_true", help="Skip the peak-memory child processes.")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps = {kind: build_step(kind, args.preset, args.size, args.batch) for kind in WORKLOADS}
    times = interleaved_times(steps, warmup=1, repeats=args.repeats)
    print(f"{args.preset}, {args.size}x{args.size}, batch {args.batch}, one AdamW step (fp32, "
          f"{torch.get_num_threads()} threads), median of {args.repeats}:")
    for kind in WORKLOADS:
        print(f"  {kind:15s} {times[kind] * 1000:8.1f} ms/step   ratio to vanilla {times[kind] / times['vanilla']:.3f}x")
    print(f"TMT / vanilla step time: {times['tmt'] / times['vanilla']:.3f}x (target <= 1.3x)")
    if not args.no_memory:
        peaks = {kind: peak_memory_mib(functools.partial(build_step, kind, args.preset, args.size, args.batch))
                 for kind in WORKLOADS}
        for kind in WORKLOADS:
            print(f"  {kind:15s} peak RSS {peaks[kind][0]:8.1f} MiB (step adds {peaks[kind][1]:7.1f} MiB)   ratio to "
                  f"vanilla {peaks[kind][0] / peaks['vanilla'][0]:.3f}x")
        print(f"TMT / vanilla peak memory: {peaks['tmt'][0] / peaks['vanilla'][0]:.3f}x")


if __name__ == "__main__":
    main()
