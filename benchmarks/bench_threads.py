"""Why `unip demo` runs one torch thread by default (issue 22): wall time of the same short CPU training with 1 and
with 2 torch threads while another process spins on one core, as on a shared laptop or CI runner.

    python benchmarks/bench_threads.py [--steps 10] [--no_spinner]

Prints the wall time of each thread count and the ratio 2 threads / 1 thread (> 1: the second thread costs time).
Each count runs in a fresh interpreter (torch fixes its pool at start), the tiny demo model, batch 8, 64 px crops.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time

WORK = """
import time, torch
from unip_hf import UnipConfig, UnipForSemanticSegmentation
torch.manual_seed(0)
model = UnipForSemanticSegmentation(UnipConfig(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=4,
    num_attention_heads=2, decoder_hidden_size=64, auxiliary_channels=32, num_labels=5))
optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 5, (8, 64, 64))
start = time.perf_counter()
for _ in range({steps}):
    loss = model(pixel_values=x, labels=y).loss
    loss.backward(); optimizer.step(); optimizer.zero_grad()
print(time.perf_counter() - start, torch.get_num_threads())
"""


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def timed(threads: int, steps: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", WORK.format(steps=steps)], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[1]) == threads, out
    return float(out[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no_spinner", action="store_true", help="measure without the busy process")
    args = parser.parse_args()
    stop = multiprocessing.Event()
    spinner = None if args.no_spinner else multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
    if spinner:
        spinner.start()
    try:
        one = timed(1, args.steps)
        two = timed(2, args.steps)
    finally:
        stop.set()
        if spinner:
            spinner.join()
    print(f"cores: {os.cpu_count()}, spinner on one core: {spinner is not None}, {args.steps} training steps")
    print(f"1 thread: {one:.1f} s, 2 threads: {two:.1f} s, ratio 2/1: {two / one:.2f}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
