"""Shared helpers of the benchmarks: interleaved timing, FLOP counting, the machine's fp32 matmul peak, and peak
memory of a workload measured in a fresh child process."""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """fp32 GFLOP/s of a large square `torch.matmul` on this machine (best of `repeats`)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn`, counted by torch's FlopCounterMode (matmuls, convolutions, SDPA)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def interleaved_times(workloads: dict[str, Callable[[], object]], warmup: int = 2, repeats: int = 10) -> dict[str, float]:
    """Median seconds per call of each workload, running them in alternation so that machine noise hits all alike."""
    for fn in workloads.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(repeats):
        for name, fn in workloads.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: writing 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _child(build: Callable[[], Callable[[], object]], queue) -> None:
    fn = build()
    fn()  # warm-up: allocator pools and lazy initialisation are not the workload's peak
    if _reset_peak():
        before = _read_status_kib("VmRSS")
        fn()
        after = _read_status_kib("VmHWM")
    else:  # fall back to the lifetime peak
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((before / 1024, after / 1024))


def peak_memory_mib(build: Callable[[], Callable[[], object]]) -> tuple[float, float]:
    """Run `build()` (which returns a zero-argument workload) in a fresh process and call the workload once.

    Returns `(peak RSS in MiB, increase of the peak caused by the workload)`. `build` must be a module-level function
    (it is pickled into the child).
    """
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(build, queue))
    process.start()
    before, after = queue.get(timeout=600)
    process.join()
    return after, after - before
