"""ONNX deployment speed and memory of UNIP (Zhang et al., "UNIP", ICLR 2025): UnipForSemanticSegmentation (unip-small,
LL-FPN + UPerNet) and UnipForSmallTargetSegmentation (unip-small backbone + full-resolution detail path), each at
512x512, batch 1, fp32, CPU, exported by `unip export onnx` and run by onnxruntime, against the same model in
PyTorch eager mode, in one run on the same inputs.

Each model (random weights, seed 0) is saved with its processor to a temporary folder and exported with
`unip_hf.deploy.onnx_export.export_onnx` (dynamic batch, height and width, the default: the graph users deploy), which also
checks the logits against PyTorch. Both sides get the same number of threads.

Prints, per model, images/s of both and the ratio onnxruntime / PyTorch (target >= 1.2), the max abs logit
difference on the timed input, and the peak memory of each (fresh child process per runtime, one call after a
warm-up; skipped with --no_memory).

Run: python benchmarks/bench_onnx.py [--models semantic small-target] [--size 512] [--batch 1] [--repeats 10]
     [--threads N] [--static] [--no_memory]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved_times, peak_memory_mib  # noqa: E402

from unip_hf import (  # noqa: E402
    UnipConfig,
    UnipForSemanticSegmentation,
    UnipForSmallTargetSegmentation,
    UnipImageProcessor,
    UnipSmallTargetConfig,
)
from unip_hf.deploy.onnx_export import export_onnx, require_onnx  # noqa: E402
from unip_hf.evaluation.model_saving import make_processor  # noqa: E402

NUM_LABELS = 2
#: model kind -> (class, what it is)
MODELS = {
    "semantic": (UnipForSemanticSegmentation, "UnipForSemanticSegmentation (unip-small, LL-FPN + UPerNet)"),
    "small-target": (UnipForSmallTargetSegmentation, "UnipForSmallTargetSegmentation (unip-small + detail path)"),
}


def save_model(directory: str, size: int, kind: str = "semantic") -> None:
    torch.manual_seed(0)
    if kind == "semantic":
        config = UnipConfig.from_preset("unip-small", image_size=size, num_labels=NUM_LABELS, decode_head="ll_fpn")
        UnipForSemanticSegmentation(config).eval().save_pretrained(directory)
        UnipImageProcessor.from_model_config(config).save_pretrained(directory)
    else:
        config = UnipSmallTargetConfig.from_preset("unip-small", image_size=size)
        UnipForSmallTargetSegmentation(config).eval().save_pretrained(directory)
        make_processor(config).save_pretrained(directory)  # what fine-tuning saves: each image at its own size


def _pixels(size: int, batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def torch_workload(model_dir: str, size: int, batch: int, threads: int, kind: str = "semantic"):
    torch.set_num_threads(threads)
    model = MODELS[kind][0].from_pretrained(model_dir).eval()
    pixels = _pixels(size, batch)

    def run():
        with torch.inference_mode():
            return model(pixel_values=pixels).logits.numpy()

    return run


def onnx_workload(onnx_path: str, size: int, batch: int, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    feed = {"pixel_values": _pixels(size, batch).numpy()}
    return lambda: session.run(["logits"], feed)[0]


def bench_model(kind: str, args: argparse.Namespace, threads: int, tmp: str, ort_version: str) -> None:
    cls, title = MODELS[kind]
    print(f"\n=== {title} ===")
    model_dir, onnx_path = os.path.join(tmp, kind), os.path.join(tmp, f"{kind}.onnx")
    save_model(model_dir, args.size, kind)
    export_onnx(model_dir, onnx_path, dynamic=not args.static)
    shape = "static" if args.static else "dynamic"
    print(f"\ntorch {torch.__version__}, onnxruntime {ort_version}, {threads} threads; batch {args.batch}, "
          f"{args.size}x{args.size}, fp32 inference, {NUM_LABELS} classes, {shape} graph")
    workloads = {"pytorch": torch_workload(model_dir, args.size, args.batch, threads, kind),
                 "onnxruntime": onnx_workload(onnx_path, args.size, args.batch, threads)}
    outputs = {name: fn() for name, fn in workloads.items()}
    diff = float(np.abs(outputs["pytorch"] - outputs["onnxruntime"]).max())
    print(f"logits {outputs['pytorch'].shape}; max |onnxruntime - PyTorch| = {diff:.2e}")
    times = interleaved_times(workloads, warmup=2, repeats=args.repeats)
    ips = {name: args.batch / seconds for name, seconds in times.items()}
    names = {"pytorch": f"{cls.__name__}, PyTorch eager (inference_mode)",
             "onnxruntime": "the same, exported, onnxruntime CPUExecutionProvider"}
    for name in workloads:
        print(f"{names[name]:<66} {ips[name]:6.2f} images/s  ({times[name] * 1000:.0f} ms per call)")
    print(f"speed ratio onnxruntime / PyTorch: {ips['onnxruntime'] / ips['pytorch']:.2f} (target >= 1.2)")
    del workloads, outputs
    if args.no_memory:
        return
    builders = {"pytorch": functools.partial(torch_workload, model_dir, args.size, args.batch, threads, kind),
                "onnxruntime": functools.partial(onnx_workload, onnx_path, args.size, args.batch, threads)}
    peaks = {name: peak_memory_mib(build) for name, build in builders.items()}
    print("peak RSS (fresh process, one call after a warm-up): " + ", ".join(
        f"{name} {peak:.0f} MiB (+{delta:.0f} for the call)" for name, (peak, delta) in peaks.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS),
                        help="which models to benchmark (default: both)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="threads of both runtimes (default: torch's)")
    parser.add_argument("--static", action="store_true", help="export a static-shape graph instead of a dynamic one")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory measurement (a shorter run)")
    args = parser.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    modules = require_onnx(exporter=True)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models:
            bench_model(kind, args, threads, tmp, modules["onnxruntime"].__version__)


if __name__ == "__main__":
    main()
