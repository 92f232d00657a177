"""Figures of the attention-pattern analysis (UNIP, Zhang et al., ICLR 2025): layer-wise NMI and attention distance
curves of one or several `AttentionReport`s (`plot_layer_curves`) and per-query attention maps over the image
(`plot_attention_maps`, with `default_queries` / `default_map_layers` choosing what to show). Needs matplotlib
(`pip install 'unip-hf[plots]'`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unip_hf.analysis.patterns import AttentionReport, PatternThresholds

_PATTERN_COLOURS = {"local": "#4c72b0", "hybrid": "#55a868", "global": "#c44e52"}


def _pyplot():
    # matplotlib is optional (unip-hf[plots]): imported only when a figure is drawn, with a clear error if missing
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as err:
        raise ImportError(
            "the attention-analysis figures need matplotlib: pip install 'unip-hf[plots]'"
        ) from err
    return plt


def plot_layer_curves(
    reports: AttentionReport | Sequence[AttentionReport],
    path: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    title: str | None = None,
):
    """Layer-wise NMI and mean attention distance of one or several models on one figure.

    Left: NMI per layer (mean ± std over images) over the shaded NMI bands of the labelling rule (global below,
    hybrid between, local above the thresholds); each point is ringed with the colour of its layer's final label
    (which also uses the key concentration), and each model's teacher layer is starred. Right: mean attention
    distance in patches. The x axis is the 0-based layer index; each curve ends at its model's last layer.

    Args:
        reports: One report or several (compared on the same axes).
        path: Where to save a PNG (optional).
        names: Legend names (defaults to each report's `model_name`).
        title: Figure title.

    Returns:
        The matplotlib `Figure`.
    """
    plt = _pyplot()
    reports = [reports] if isinstance(reports, AttentionReport) else list(reports)
    names = list(names) if names is not None else [Path(r.model_name).name or r.model_name for r in reports]
    th = PatternThresholds(**reports[0].thresholds)
    fig, (ax_nmi, ax_dist) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    max_layers = max(r.num_layers for r in reports)
    top = max(0.6, max(max(np.add(r.nmi_mean, r.nmi_std)) for r in reports) * 1.1)
    bands = [(0.0, th.global_below, "global"), (th.global_below, th.local_at_least, "hybrid"), (th.local_at_least, top, "local")]
    for lo, hi, name in bands:
        ax_nmi.axhspan(lo, hi, color=_PATTERN_COLOURS[name], alpha=0.10, lw=0)
        ax_nmi.text(1.01, (lo + min(hi, top)) / 2, name, ha="left", va="center", fontsize=9, rotation=90,
                    color=_PATTERN_COLOURS[name], fontweight="bold", transform=ax_nmi.get_yaxis_transform())
    markers = "osD^vP*X"
    for k, (rep, name) in enumerate(zip(reports, names)):
        x = np.arange(rep.num_layers)
        line = ax_nmi.errorbar(x, rep.nmi_mean, yerr=rep.nmi_std, marker=markers[k % len(markers)], ms=5, capsize=2,
                               lw=1.6, label=name)
        colour = line[0].get_color()
        ax_nmi.scatter(x, rep.nmi_mean, s=70, facecolors="none", linewidths=1.6, zorder=3,
                       edgecolors=[_PATTERN_COLOURS[lab] for lab in rep.labels])
        ax_dist.errorbar(x, rep.distance_mean, yerr=rep.distance_std, marker=markers[k % len(markers)], ms=5,
                         capsize=2, lw=1.6, color=colour, label=name)
        if rep.teacher_layer is not None:
            t = rep.teacher_layer
            ax_nmi.plot([t], [rep.nmi_mean[t]], marker="*", ms=17, color=colour, mec="black", mew=0.8, ls="none",
                        label=f"{name}: teacher layer {t}")
    ax_nmi.set_ylim(0, top)
    ax_nmi.set_xlim(-0.5, max_layers - 0.5)
    ax_nmi.set_xlabel("layer (0-based)")
    ax_nmi.set_ylabel("NMI (CLS excluded)")
    ax_nmi.set_title("Query-key NMI per layer: high = local, low = global")
    ax_nmi.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 1.0), framealpha=0.85)
    ax_dist.set_xlim(-0.5, max_layers - 0.5)
    ax_dist.set_xlabel("layer (0-based)")
    ax_dist.set_ylabel("mean attention distance (patches)")
    ax_dist.set_title("Mean attention distance per layer")
    ax_dist.legend(fontsize=8, loc="best", framealpha=0.85)
    for ax in (ax_nmi, ax_dist):
        ax.set_xticks(np.arange(max_layers))
        ax.grid(alpha=0.3)
    detail = f"{reports[0].num_images} images, {reports[0].grid_size[0]}x{reports[0].grid_size[1]} patches"
    fig.suptitle(title or f"Attention patterns by layer ({detail}; mean ± std over images)", fontsize=12)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def default_queries(grid_size: Sequence[int], count: int = 4) -> list[tuple[int, int]]:
    """Query patches spread over the image: centre, then the centres of the four quadrants (up to `count`)."""
    rows, cols = int(grid_size[0]), int(grid_size[1])
    candidates = [(rows // 2, cols // 2), (rows // 4, cols // 4), (rows // 4, (3 * cols) // 4),
                  ((3 * rows) // 4, cols // 4), ((3 * rows) // 4, (3 * cols) // 4)]
    out: list[tuple[int, int]] = []
    for q in candidates:
        if q not in out:
            out.append(q)
    return out[:count]


def default_map_layers(report: AttentionReport, count: int = 4) -> list[int]:
    """Layers worth showing: one of each pattern present (the first local, the teacher layer, the last layer), then
    evenly spaced others, in increasing order."""
    chosen: list[int] = []
    labels = report.labels
    if "local" in labels:
        chosen.append(labels.index("local"))
    if report.teacher_layer is not None:
        chosen.append(report.teacher_layer)
    chosen.append(report.num_layers - 1)
    for i in np.linspace(0, report.num_layers - 1, count).round().astype(int).tolist():
        if len(set(chosen)) >= count:
            break
        chosen.append(i)
    return sorted(set(chosen))[:count]


#: The colour scale of `plot_attention_maps` tops out at the largest attention ratio drawn, but at least here (x
#: uniform): deviations of a few percent from uniform (random initialisation) stay invisible.
MIN_SCALE_TOP = 4.0


def plot_attention_maps(
    maps: np.ndarray,
    intensity: np.ndarray,
    layers: Sequence[int],
    queries: Sequence[tuple[int, int]],
    labels: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    teacher_layer: int | None = None,
):
    """Grid of per-query attention maps overlaid on the input image (rows: layers, columns: queries).

    Each panel shows the grayscale image with the head-averaged attention of one query patch (marked by a cyan
    square) as a heat map of the attention as a multiple of uniform attention (`map * patches`), on one colour scale
    shared by all panels (the colour bar): from uniform (1x, fully transparent) to the largest ratio in the figure
    (at least `MIN_SCALE_TOP`, 4x), opacity growing with the ratio. Attention at or below uniform leaves the image
    untinted, so a model with uniform attention (a randomly initialised one: ratios within a few percent of 1) is
    drawn as the plain image, and a weak map is never stretched to look like a strong one. Each panel also gives its
    peak as a multiple of uniform attention; row titles give the 0-based layer and its pattern label.

    Args:
        maps: `[len(layers), len(queries), rows, cols]` from `query_attention_maps`.
        intensity: `[S, S]` image intensity in [0, 1].
        layers: The 0-based layer of each row.
        queries: `(row, col)` patch of each column.
        labels: Pattern label of each row (optional).
        path: Where to save a PNG (optional).
        title: Figure title.
        teacher_layer: Marks that row as the teacher layer.

    Returns:
        The matplotlib `Figure`.
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle  # noqa: PLC0415  (optional dependency, after _pyplot's check)

    n_rows, n_cols = len(layers), len(queries)
    size = intensity.shape[0]
    cmap = plt.get_cmap("jet")
    grid = maps.shape[-2:]
    cell_h, cell_w = intensity.shape[0] / grid[0], intensity.shape[1] / grid[1]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols + 0.6, 2.4 * n_rows + 0.7), squeeze=False,
                             constrained_layout=True)
    # one scale for every panel: attention as a multiple of uniform (each map sums to 1 over its patches)
    ratios = maps.astype(np.float64) * float(grid[0] * grid[1])
    top = max(float(ratios.max()), MIN_SCALE_TOP)
    for i, layer in enumerate(layers):
        for j, (r, c) in enumerate(queries):
            ax = axes[i, j]
            ax.imshow(intensity, cmap="gray", vmin=0, vmax=1, extent=(0, intensity.shape[1], intensity.shape[0], 0))
            ratio = ratios[i, j]
            norm = np.clip((ratio - 1.0) / (top - 1.0), 0.0, 1.0)
            rgba = cmap(norm)
            rgba[..., 3] = 0.85 * norm  # uniform (or less) transparent: the image stays readable
            ax.imshow(rgba, extent=(0, intensity.shape[1], intensity.shape[0], 0), interpolation="nearest")
            peak = float(ratio.max())
            ax.text(0.03, 0.03, f"peak {peak:.1f}x uniform", transform=ax.transAxes, fontsize=7, color="white",
                    bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "lw": 0})
            ax.add_patch(Rectangle((c * cell_w, r * cell_h), cell_w, cell_h, fill=False, ec="cyan", lw=1.8))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"query patch ({r}, {c})", fontsize=9)
            if j == 0:
                lab = f" · {labels[i]}" if labels is not None else ""
                star = " · teacher" if teacher_layer is not None and layer == teacher_layer else ""
                ax.set_ylabel(f"layer {layer}{lab}{star}", fontsize=9)
    from matplotlib.cm import ScalarMappable  # noqa: PLC0415  (optional dependency)
    from matplotlib.colors import Normalize  # noqa: PLC0415

    bar = fig.colorbar(ScalarMappable(Normalize(1.0, top), cmap), ax=axes, shrink=0.8, pad=0.01)
    bar.set_label("attention / uniform (all panels; 1 = untinted)", fontsize=8)
    fig.suptitle(title or f"Per-query attention (heads averaged, CLS dropped; {size}px, layers 0-based)", fontsize=11)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


__all__ = ["plot_layer_curves"]
