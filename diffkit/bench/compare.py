"""diffkit against peer libraries: best solver per budget, and per-step overhead per algorithm.

Cells come from `report.aggregate` (mean and std over seeds). For each budget the best diffkit
cell is compared with the best cell of any peer (`badness`: lower is better, |ratio - 1| for
the spread ratio); the difference is called *within noise* when it is smaller than the
metric's floor std (how much the metric moves between independent exact sample sets). The
overhead table puts the median per-step overhead (over budgets) of each implementation of the
same solver side by side.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from diffkit.bench.report import FLOORED, LABELS, badness, format_value, label, markdown_table
from diffkit.bench.spec import DIFFKIT

#: metrics of the peer comparison (every floored metric)
COMPARED: tuple[str, ...] = FLOORED


def implementations(cells: list[dict[str, Any]]) -> list[str]:
    """Peer implementations present in `cells`, in first-seen order (diffkit excluded)."""
    seen: list[str] = []
    for cell in cells:
        if cell["implementation"] != DIFFKIT and cell["implementation"] not in seen:
            seen.append(cell["implementation"])
    return seen


def _best(cells: list[dict[str, Any]], metric: str, budget: int, peer: bool) -> dict[str, Any] | None:
    """The cell with the lowest badness of `metric` at `budget` among diffkit's or the peers' cells."""
    candidates = [
        cell
        for cell in cells
        if cell["budget"] == budget
        and (cell["implementation"] != DIFFKIT) == peer
        and not math.isnan(cell[metric])
    ]
    return min(candidates, key=lambda cell: badness(metric, cell[metric]), default=None)


def head_to_head(summary: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """Per budget: best diffkit and best peer cell of `metric`, and whether diffkit is at least as good.

    Returns:
        rows with budget, diffkit / peer (cells or None), floor, floor_std, at_least_as_good
        (bool or None) and within_noise (bool or None).
    """
    cells = summary["cells"]
    floor = summary["floors"].get(metric, math.nan)
    floor_std = summary["floors"].get(f"{metric}_std", math.nan)
    rows = []
    for budget in summary["budgets"]:
        ours, theirs = _best(cells, metric, budget, False), _best(cells, metric, budget, True)
        row: dict[str, Any] = {"budget": budget, "diffkit": ours, "peer": theirs, "floor": floor}
        row |= {"floor_std": floor_std, "at_least_as_good": None, "within_noise": None}
        if ours is not None and theirs is not None:
            gap = badness(metric, ours[metric]) - badness(metric, theirs[metric])
            row["at_least_as_good"] = gap <= 0
            row["within_noise"] = not math.isnan(floor_std) and abs(gap) < floor_std
        rows.append(row)
    return rows


def head_to_head_table(summary: dict[str, Any], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of `head_to_head` (cells as `label: mean±std`)."""

    def show(cell: dict[str, Any] | None) -> str:
        return "-" if cell is None else f"{label(cell)}: {format_value(cell[metric], cell[f'{metric}_std'])}"

    header = ["NFE", "best diffkit", "best peer", "floor", "diffkit at least as good"]
    rows = []
    for row in head_to_head(summary, metric):
        verdict = {None: "-", True: "yes", False: "no"}[row["at_least_as_good"]]
        if row["within_noise"]:
            verdict += " (within floor std)"
        floor = format_value(row["floor"], row["floor_std"])
        rows.append([str(row["budget"]), show(row["diffkit"]), show(row["peer"]), floor, verdict])
    return header, rows


def overhead_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per solver run by diffkit and a peer: median overhead per step (model evaluations) of each."""
    cells = summary["cells"]
    peers = implementations(cells)
    by_solver: dict[str, dict[str, list[float]]] = {}
    for cell in cells:
        value = cell["overhead_per_step"]
        if not math.isnan(value):
            by_solver.setdefault(cell["solver"], {}).setdefault(cell["implementation"], []).append(value)
    header = ["solver", DIFFKIT, *peers]
    rows = []
    for solver, per_impl in by_solver.items():
        if DIFFKIT not in per_impl or not set(peers) & set(per_impl):
            continue
        line = [solver]
        for implementation in (DIFFKIT, *peers):
            values = per_impl.get(implementation)
            line.append(format_value(statistics.median(values)) if values else "")
        rows.append(line)
    return header, rows


def peer_markdown(summary: dict[str, Any]) -> str:
    """The report's peer section (empty without peer cells): head-to-head per metric, overheads."""
    peers = implementations(summary["cells"])
    if not peers:
        return ""
    parts = [
        "",
        f"## diffkit against {', '.join(peers)}",
        "",
        "Best diffkit solver against the best peer solver at each budget, same model and initial "
        "noise (peers run their own default time spacing and end at sigma = 0).",
    ]
    for metric in COMPARED:
        parts += ["", f"### {LABELS[metric]}", "", markdown_table(*head_to_head_table(summary, metric))]
    parts += [
        "",
        "### Overhead per step (model evaluations outside the network, median over budgets)",
        "",
        markdown_table(*overhead_table(summary)),
    ]
    return "\n".join(parts) + "\n"
