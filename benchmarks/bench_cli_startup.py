"""Start-up cost of the `unip` command (issue 15, item 2) and of `import unip_hf` (issue 21): CPU seconds (user +
system, of the child process) of `unip --help`, `unip finetune --help` and `unip predict --help`, against the baseline
`python -c "import torch, transformers"` (what every `--help` paid before the commands were made light); and of a
plain `import unip_hf` (the package as a library: the Auto-class registration waits for transformers' Auto modules)
against `import transformers`, plus the cost of the first Auto import with and without UNIP registered. Measured in
the same run, interleaved, median of `--repeats` fresh processes each.

    python benchmarks/bench_cli_startup.py [--repeats 5]

Prints one line per command and the ratio baseline / command (higher is better; the targets: `unip --help` under
1 s of CPU, `import unip_hf` no more than `import transformers`).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
UNIP = "import sys; from unip_hf.cli import main; sys.exit(main())"  # what the `unip` console script runs
COMMANDS = {
    "python -c pass (interpreter floor)": ["-c", "pass"],
    "unip --help": ["-c", UNIP, "--help"],
    "unip finetune --help": ["-c", UNIP, "finetune", "--help"],
    "unip predict --help": ["-c", UNIP, "predict", "--help"],
    "baseline: import torch, transformers": ["-c", "import torch, transformers"],
    "baseline: import transformers": ["-c", "import transformers"],
    "import unip_hf (library use)": ["-c", "import unip_hf"],
    "from transformers import AutoModel": ["-c", "from transformers import AutoModel"],
    "import unip_hf; ... import AutoModel": ["-c", "import unip_hf\nfrom transformers import AutoModel"],
}


def cpu_seconds(arguments: list[str]) -> float:
    """User + system CPU seconds of one fresh `python arguments...` process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(SRC), os.environ.get("PYTHONPATH")] if p)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, *arguments], env=env, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpu_seconds(COMMANDS["unip --help"])  # warm the file cache once
    for _ in range(args.repeats):
        for name, arguments in COMMANDS.items():
            samples[name].append(cpu_seconds(arguments))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline = medians["baseline: import torch, transformers"]
    print(f"CPU seconds per fresh process (median of {args.repeats}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}):")
    for name, value in medians.items():
        print(f"  {name:40s} {value:6.2f} s   baseline / this: {baseline / max(value, 1e-9):5.1f}x")
    print(f"unip --help: {medians['unip --help']:.2f} s of CPU "
          f"({'under' if medians['unip --help'] < 1.0 else 'OVER'} the 1 s target), "
          f"{baseline / medians['unip --help']:.1f}x less than importing torch + transformers")
    library, transformers_only = medians["import unip_hf (library use)"], medians["baseline: import transformers"]
    print(f"import unip_hf: {library:.2f} s of CPU vs import transformers {transformers_only:.2f} s "
          f"({'within' if library <= transformers_only else 'OVER'} the target, ratio {transformers_only / library:.1f}x)")


if __name__ == "__main__":
    main()
