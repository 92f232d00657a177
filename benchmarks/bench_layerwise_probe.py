"""Benchmark of the layer-wise linear probe of `unip benchmark` (UNIP, Zhang et al., ICLR 2025): probing all 12
blocks of a frozen unip-tiny in one run on cached block features, against (a) one linear probe run on the last
block and (b) 12 separate probe runs, one per block, both computing the backbone features of every training batch
(as a probe run without the cache does). Target: the 12-block run costs at most 2x one probe run.

Real buffalo-udder images (`$UNIP_DATA_DIR/buffalo-udder`, default `<repo>/../shared/data`), crop 96, batch 8,
randomly initialised unip-tiny (the cost does not depend on the weights). Each workload runs once, in one process.

Usage: python benchmarks/bench_layerwise_probe.py [--steps 40] [--train 32] [--eval 16] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from unip_hf import UnipConfig, UnipViTModel
from unip_hf.data.finetuning_data import EvalSegmentationDataset, load_split
from unip_hf.studies.layerwise_probe import layerwise_probe

__all__ = ["main"]


def main() -> None:
    """Run the three workloads and print their times and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--train", type=int, default=32)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(os.environ.get("UNIP_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    root = str(data / "buffalo-udder")
    train = EvalSegmentationDataset(load_split("buffalo-udder", root, "train", max_samples=args.train))
    evaluation = EvalSegmentationDataset(load_split("buffalo-udder", root, "val", max_samples=args.eval))
    torch.manual_seed(0)
    backbone = UnipViTModel(UnipConfig.from_preset("unip-tiny", image_size=args.crop)).eval()
    depth = backbone.config.num_hidden_layers

    def probe(layers, cache):
        start = time.perf_counter()
        out = layerwise_probe(backbone, train, evaluation, "semantic", 2, args.crop, args.steps, 1e-2, 8, seed=0,
                              layers=layers, cache_features=cache)
        return time.perf_counter() - start, out

    one_s, _ = probe([depth - 1], False)
    layerwise_s, out = probe(None, True)
    separate_s = sum(probe([layer], False)[0] for layer in range(depth))
    print(f"unip-tiny, {depth} blocks, {args.train} train / {args.eval} val images, crop {args.crop}, "
          f"{args.steps} steps, batch 8, {torch.get_num_threads()} threads")
    print(f"one probe run (last block, features per batch): {one_s:8.2f} s")
    print(f"{depth} separate probe runs (one per block):       {separate_s:8.2f} s")
    print(f"layer-wise probe, {depth} blocks, cached features:  {layerwise_s:8.2f} s "
          f"(features {out['feature_s']:.2f} s, training {out['train_s']:.2f} s)")
    print(f"ratio layer-wise / one probe: {layerwise_s / one_s:.2f} (target <= 2)")
    print(f"ratio {depth} separate runs / layer-wise: {separate_s / layerwise_s:.2f}")


if __name__ == "__main__":
    main()
