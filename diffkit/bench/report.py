"""Aggregate bench rows over seeds, pick the best solver per budget, render the tables.

Cells are (implementation, solver, budget) groups of rows with the mean and standard deviation
of every metric over seeds. Lower is better for every metric except `spread_ratio`, which is
ranked by its distance from 1.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from diffkit.bench.spec import METRICS

#: metrics that have a floor (the same metric between independent exact sample sets)
FLOORED: tuple[str, ...] = ("sliced_w2", "mmd2", "mode_tv", "spread_ratio")
LABELS: dict[str, str] = {
    "sliced_w2": "sliced W2",
    "mmd2": "MMD^2 (small bandwidths)",
    "mode_tv": "mode-weight TV",
    "spread_ratio": "within-mode spread ratio (1 = exact)",
    "ref_distance": "mean distance to the reference path",
}


def badness(metric: str, value: float) -> float:
    """The number to minimise for `metric`: the value itself, or |value - 1| for the spread ratio."""
    return abs(value - 1.0) if metric == "spread_ratio" else value


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per (implementation, solver, budget): means and stds over seeds of ok rows."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["implementation"], row["solver"], row["budget"]), []).append(row)
    cells = []
    for (implementation, solver, budget), members in sorted(groups.items()):
        ok = [row for row in members if row["status"] == "ok"]
        cell: dict[str, Any] = {
            "implementation": implementation,
            "solver": solver,
            "budget": budget,
            "seeds": len(members),
            "failed": len(members) - len(ok),
            "tolerance": members[0].get("tolerance"),
        }
        for name in ("nfe", "seconds", "samples_per_second", "overhead_per_step", *METRICS):
            mean, std = _mean_std([row.get(name) for row in ok])
            cell[name], cell[f"{name}_std"] = mean, std
        cells.append(cell)
    return cells


def floors(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Floor of each floored metric, `<metric>` (mean) and `<metric>_std`, averaged over seeds.

    The std is the spread of the metric between independent exact sets: differences between
    solvers smaller than it are chance.
    """
    rows = list(rows)
    out = {}
    for name in FLOORED:
        out[name] = _mean_std([row.get(f"{name}_floor") for row in rows])[0]
        out[f"{name}_std"] = _mean_std([row.get(f"{name}_floor_std") for row in rows])[0]
    return out


def best_per_budget(cells: list[dict[str, Any]], metric: str) -> dict[int, str]:
    """`{budget: "implementation/solver"}` of the cell with the best mean `metric` per budget."""
    best: dict[int, tuple[float, str]] = {}
    for cell in cells:
        value = cell[metric]
        if value is None or math.isnan(value):
            continue
        score = badness(metric, value)
        if cell["budget"] not in best or score < best[cell["budget"]][0]:
            best[cell["budget"]] = (score, label(cell))
    return {budget: name for budget, (_, name) in sorted(best.items())}


def label(cell: dict[str, Any]) -> str:
    """Row label of a cell: the solver, prefixed by the implementation when it is a peer."""
    return (
        cell["solver"]
        if cell["implementation"] == "diffkit"
        else f"{cell['implementation']}/{cell['solver']}"
    )


def format_value(value: float, std: float | None = None) -> str:
    """Compact `mean±std` with 3 significant digits (std only when positive)."""
    if value is None or math.isnan(value):
        return "-"
    text = f"{value:.3g}"
    return f"{text}±{std:.1g}" if std and not math.isnan(std) and std > 0 else text


def quality_table(summary: dict[str, Any], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the solver x budget table of `metric` (best per budget marked `*`).

    A cell shows mean±std over seeds, and the NFE actually used in brackets where it differs
    from the budget; the last row is the floor (mean±std between independent exact sets).
    """
    budgets = summary["budgets"]
    cells = summary["cells"]
    best = best_per_budget(cells, metric)
    by_row: dict[str, dict[int, dict[str, Any]]] = {}
    for cell in cells:
        by_row.setdefault(label(cell), {})[cell["budget"]] = cell
    header = ["solver", *[f"NFE {b}" for b in budgets]]
    rows = []
    for name, per_budget in by_row.items():
        line = [name]
        for budget in budgets:
            cell = per_budget.get(budget)
            if cell is None:
                line.append("")
                continue
            text = format_value(cell[metric], cell[f"{metric}_std"])
            nfe = cell["nfe"]
            if not math.isnan(nfe) and round(nfe) != budget:
                text += f" [{nfe:.0f}]"
            if cell["failed"]:
                text += f" ({cell['failed']} failed)"
            line.append(text + (" *" if best.get(budget) == name else ""))
        rows.append(line)
    floor = summary["floors"].get(metric)
    if floor is not None:
        text = format_value(floor, summary["floors"].get(f"{metric}_std"))
        rows.append(["exact (floor)", *[text] * len(budgets)])
    return header, rows


def speed_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per solver: seconds and samples/s at the largest budget it ran, overhead per step (median)."""
    header = ["solver", "NFE", "seconds", "samples/s", "overhead/step (model evals)"]
    rows = []
    by_row: dict[str, list[dict[str, Any]]] = {}
    for cell in summary["cells"]:
        by_row.setdefault(label(cell), []).append(cell)
    for name, cells in by_row.items():
        ran = [c for c in cells if not math.isnan(c["seconds"])]
        if not ran:
            continue
        top = max(ran, key=lambda c: c["budget"])
        overheads = [c["overhead_per_step"] for c in ran if not math.isnan(c["overhead_per_step"])]
        overhead = statistics.median(overheads) if overheads else math.nan
        rows.append(
            [
                name,
                f"{top['nfe']:.0f}",
                format_value(top["seconds"]),
                format_value(top["samples_per_second"]),
                format_value(overhead),
            ]
        )
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (a `|` inside a cell becomes `/`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any]) -> str:
    """report.md: setup, the primary-metric table, the other metrics' tables, speed."""
    metric = summary["metric"]
    seeds = ", ".join(map(str, summary["seeds"]))
    parts = [
        f"# diffkit bench: {summary['model']} on {summary['sde']}",
        "",
        f"{summary['num_samples']} samples per run, seeds {seeds}; cells are mean±std over seeds, "
        "[n] is the NFE actually used where it differs from the budget, * marks the best per budget.",
        "",
        f"## {LABELS[metric]}",
        "",
        markdown_table(*quality_table(summary, metric)),
    ]
    for other in METRICS:
        if other != metric:
            parts += ["", f"## {LABELS[other]}", "", markdown_table(*quality_table(summary, other))]
    parts += ["", "## Speed", "", markdown_table(*speed_table(summary))]
    if summary["skipped"]:
        parts += ["", "## Skipped", ""]
        parts += [f"- {s['solver']} at {s['budget']} NFE: {s['reason']}" for s in summary["skipped"]]
    if summary.get("failed"):
        parts += ["", "## Failed runs (retried on the next run of the same command)", ""]
        parts += [
            f"- {label(f)} at {f['budget']} NFE, seed {f['seed']}: {f['error']}" for f in summary["failed"]
        ]
    return "\n".join(parts) + "\n"


def build_summary(
    config: Any, rows: list[dict[str, Any]], skipped: list[Any], **extra: Any
) -> dict[str, Any]:
    """The summary object (`--json`, summary.json): setup, floors, cells, best per budget, skips, failures.

    Args:
        config: the `BenchConfig`.
        rows: this sweep's rows.
        skipped: `Skipped` budgets.
        extra: more top-level fields (e.g. output paths, counts).
    """
    cells = aggregate(rows)
    summary = {
        "model": config.model,
        "sde": config.process,
        "num_samples": config.num_samples,
        "seeds": list(config.seeds),
        "budgets": list(config.budgets),
        "metric": config.metric,
        "floors": floors(rows),
        "cells": cells,
        "skipped": [
            {"implementation": s.implementation, "solver": s.solver, "budget": s.budget, "reason": s.reason}
            for s in skipped
        ],
        "failed": [
            {name: row.get(name) for name in ("implementation", "solver", "budget", "seed", "error")}
            for row in rows
            if row.get("status") != "ok"
        ],
    }
    summary["best"] = {str(b): name for b, name in best_per_budget(cells, config.metric).items()}
    return summary | extra
