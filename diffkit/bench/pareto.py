"""pareto.png: quality against NFE and against wall seconds, log scales, one line per solver."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from diffkit.bench.report import LABELS, badness, label
from diffkit.run.io import write_with


def _series(cells: list[dict[str, Any]], metric: str) -> dict[str, list[tuple[float, float, float]]]:
    """Per solver label: (nfe, seconds, badness) points with a positive badness, by budget."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    for cell in sorted(cells, key=lambda c: c["budget"]):
        value = cell[metric]
        if value is None or math.isnan(value) or math.isnan(cell["nfe"]):
            continue
        y = badness(metric, value)
        if y > 0:
            series.setdefault(label(cell), []).append((cell["nfe"], cell["seconds"], y))
    return series


def save_pareto(path: Path, summary: dict[str, Any]) -> None:
    """Write the two-panel Pareto plot of `summary`'s metric (atomically) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summary["metric"]
    series = _series(summary["cells"], metric)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    ylabel = "|spread ratio - 1|" if metric == "spread_ratio" else LABELS[metric]
    colors = plt.get_cmap("tab20").colors
    for index, (name, points) in enumerate(sorted(series.items())):
        look = {
            "linestyle": "-" if "/" not in name else "--",  # peers dashed
            "marker": "osD^v"[index % 5],
            "markersize": 3,
            "color": colors[index % len(colors)],
            "label": name,
        }
        nfe, seconds, y = zip(*points, strict=True)
        axes[0].plot(nfe, y, **look)
        axes[1].plot(seconds, y, **look)
    floor = summary["floors"].get(metric)
    if floor is not None and not math.isnan(floor) and badness(metric, floor) > 0:
        spread = summary["floors"].get(f"{metric}_std") or 0.0
        level = badness(metric, floor)
        for ax in axes:
            ax.axhline(level, color="gray", linestyle=":", label="exact (floor)")
            if level - spread > 0:
                ax.axhspan(level - spread, level + spread, color="gray", alpha=0.15, linewidth=0)
    for ax, xlabel in zip(axes, ("NFE", "wall seconds"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.suptitle(f"{summary['model']} | {summary['sde']} | {summary['num_samples']} samples", fontsize=10)
    fig.tight_layout()
    try:
        write_with(path, lambda handle: fig.savefig(handle, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)
