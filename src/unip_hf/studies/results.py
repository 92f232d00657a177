"""The results of `unip benchmark` and `unip ablation`: `ResultStore` (the `results.json` of finished runs, one
entry per (model or arm, data set, split, budget, protocol, seed), rewritten atomically after each run, so a
re-run skips what is there and an interrupted run leaves no partial entry), `results_table` / `write_reports`
(`results.md`: mean ± std over seeds per model and protocol, the best of each column in bold; `layerwise.png`;
`nmi_vs_probe.png`). No torch import; matplotlib only when a figure is drawn.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from unip_hf.studies.statistics import format_mean_std, mean_std

KEY_FIELDS = ("model", "dataset", "eval_split", "budget", "protocol", "seed")


def _key(entry: dict[str, Any]) -> tuple:
    return tuple(entry.get(k) for k in KEY_FIELDS)


class ResultStore:
    """The finished runs in a `results.json` file.

    Args:
        path: The file (created on the first `add`).

    Raises:
        ValueError: when the file exists but is not a results file (named).
    """

    def __init__(self, path: str):
        self.path = path
        self.entries: list[dict[str, Any]] = []
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as handle:
                    data = json.load(handle)
                self.entries = list(data["runs"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path} is not a readable results file ({err}); move it away or choose another "
                                 "--out") from err

    def has(self, key: dict[str, Any]) -> bool:
        """Whether a run with these key fields is finished."""
        wanted = _key(key)
        return any(_key(e) == wanted for e in self.entries)

    def add(self, entry: dict[str, Any]) -> None:
        """Store a finished run (replacing one with the same key) and rewrite the file atomically."""
        self.entries = [e for e in self.entries if _key(e) != _key(entry)] + [entry]
        self.save()

    def save(self) -> None:
        """Write the file through a temporary file and `os.replace`, so it is always complete."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"version": 1, "runs": self.entries}, handle, indent=1, allow_nan=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def select(self, **fields: Any) -> list[dict[str, Any]]:
        """The entries whose fields equal the given ones."""
        return [e for e in self.entries if all(e.get(k) == v for k, v in fields.items())]


def seed_values(entries: Sequence[dict[str, Any]], model: str, column: tuple[str, str, str]) -> dict[int, float]:
    """`{seed: value}` of one model in one (dataset, eval_split, protocol) column."""
    dataset, split, protocol = column
    return {e["seed"]: float(e["value"]) for e in entries
            if e["model"] == model and (e["dataset"], e["eval_split"], e["protocol"]) == (dataset, split, protocol)
            and e.get("value") is not None}


def table_columns(entries: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The (dataset, eval_split, protocol) columns present, in first-seen order (attention excluded)."""
    columns: list[tuple[str, str, str]] = []
    for e in entries:
        column = (e["dataset"], e["eval_split"], e["protocol"])
        if e["protocol"] != "attention" and column not in columns:
            columns.append(column)
    return columns


def results_table(entries: Sequence[dict[str, Any]], models: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per model (or arm), one column per (data set, split, protocol), cells
    `mean ± std (n=seeds)` of the main metric in percent; the best mean of each column in bold."""
    columns = table_columns(entries)
    if models is None:
        models = list(dict.fromkeys(e["model"] for e in entries if e["protocol"] != "attention"))
    metric = {c: next((e["main_metric"] for e in entries if (e["dataset"], e["eval_split"], e["protocol"]) == c),
                      "") for c in columns}
    best = {}
    for column in columns:
        means = {m: mean_std(list(v.values()))[0] for m in models if (v := seed_values(entries, m, column))}
        best[column] = max(means.values()) if means else None
    header = "| model | " + " | ".join(f"{d} ({s}) {p} [{metric[(d, s, p)]}]" for d, s, p in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for model in models:
        cells = []
        for column in columns:
            values = seed_values(entries, model, column)
            if not values:
                cells.append("—")
                continue
            text = format_mean_std(list(values.values()))
            is_best = best[column] is not None and abs(mean_std(list(values.values()))[0] - best[column]) < 1e-12
            cells.append(f"**{text}**" if is_best and len(models) > 1 else text)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layerwise_curves(entries: Sequence[dict[str, Any]]) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """Mean layer-wise probe value per layer over seeds, per (model, dataset)."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in entries:
        if e["protocol"] == "layerwise_probe" and e.get("layerwise"):
            grouped.setdefault((e["model"], e["dataset"]), []).append(e["layerwise"])
    curves = {}
    for key, runs in grouped.items():
        layers = runs[0]["layers"]
        curves[key] = (layers, [sum(r["values"][i] for r in runs) / len(runs) for i in range(len(layers))])
    return curves


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415 - optional (unip-hf[plots])

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    return plt


def write_reports(store: ResultStore, out_dir: str, extra_markdown: str = "") -> list[str]:
    """Write `results.md`, and with matplotlib `layerwise.png` and `nmi_vs_probe.png` (when layer-wise and
    attention entries exist); each file through a temporary name. Returns the paths written."""
    entries = store.entries
    written = []
    budgets = sorted({e["budget"] for e in entries})
    seeds = sorted({e["seed"] for e in entries if e.get("seed") is not None})
    text = (f"# Results\n\nBudget {', '.join(budgets)}; seeds {seeds}; cells: mean ± sample std over seeds of the "
            "main metric (mIoU for semantic sets, IoU for small-target sets), in percent; best mean per column in "
            "bold. Layer-wise probe: the best block's value.\n\n" + results_table(entries) + "\n")
    curves = layerwise_curves(entries)
    if curves:
        text += "\n## Layer-wise probe (mean over seeds, per block, 0-based)\n\n"
        for (model, dataset), (layers, values) in curves.items():
            points = ", ".join(f"{layer}: {value * 100:.1f}" for layer, value in zip(layers, values))
            text += f"- {model} on {dataset}: {points}\n"
    attention = [e for e in entries if e["protocol"] == "attention"]
    if attention:
        text += "\n## Attention analysis (NMI per block, 0-based; head mix local/hybrid/global)\n\n"
        for e in attention:
            a = e["attention"]
            mix = " ".join(f"{m['local']}/{m['hybrid']}/{m['global']}" for m in a.get("head_mix") or [])
            text += (f"- {e['model']}: NMI " + ", ".join(f"{v:.3f}" for v in a["nmi"]) + f"; labels {a['labels']}; "
                     f"heads {mix}; teacher layer {a['teacher_layer']}\n")
    text += extra_markdown
    path = os.path.join(out_dir, "results.md")
    _write_text(path, text)
    written.append(path)
    plt = _pyplot()
    if plt is None or not curves:
        return written
    figure, axis = plt.subplots(figsize=(6, 4))
    for (model, dataset), (layers, values) in curves.items():
        axis.plot(layers, [v * 100 for v in values], marker="o", label=f"{model} ({dataset})")
    axis.set_xlabel("block (0-based)")
    axis.set_ylabel("layer-wise probe, main metric (%)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    written.append(_save_figure(figure, os.path.join(out_dir, "layerwise.png")))
    plt.close(figure)
    if attention:
        figure, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
        for e in attention:
            top.plot(range(len(e["attention"]["nmi"])), e["attention"]["nmi"], marker="o", label=e["model"])
        for (model, dataset), (layers, values) in curves.items():
            bottom.plot(layers, [v * 100 for v in values], marker="o", label=f"{model} ({dataset})")
        top.set_ylabel("NMI (head mean)")
        top.axhspan(0.08, 0.30, color="green", alpha=0.1)
        bottom.set_ylabel("layer-wise probe (%)")
        bottom.set_xlabel("block (0-based)")
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
        figure.tight_layout()
        written.append(_save_figure(figure, os.path.join(out_dir, "nmi_vs_probe.png")))
        plt.close(figure)
    return written


def _write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _save_figure(figure, path: str) -> str:
    tmp = f"{path}.tmp-{os.getpid()}.png"
    figure.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


__all__: list[str] = []  # the commands' internals; `benchmark.run_benchmark` and `ablation.run_ablation` are the API
