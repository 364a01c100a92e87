"""The sampler catalogue: every registered sampler with its declared capabilities.

`diffkit list sampler` prints it and the README embeds its Markdown form (a test keeps the
README in sync), so the table of orders, NFE per step and supported processes always comes
from the registry itself, third-party samplers included.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffkit.core.errors import DiffkitError
from diffkit.core.sampler import Capabilities
from diffkit.core.traits import traits_of
from diffkit.plugin.registry import Component, Family, Registry


@dataclass(frozen=True)
class SamplerRow:
    """One sampler (or family member) as built with default options."""

    name: str
    order: float
    nfe_per_step: int
    stochastic: bool
    adaptive: bool
    default_grid: str
    processes: tuple[str, ...]
    plugin: str
    distribution: str
    summary: str


def _names(registry: Registry) -> list[str]:
    names = registry.names("sampler")
    for item in registry.listing("sampler"):
        if isinstance(item, Family):
            names += [f"{item.prefix}:{method}" for method in item.methods]
    return sorted(set(names))


_FEATURE_LABELS = {"variance-exploding": "VE", "variance-preserving": "VP", "discrete": "discrete"}


def _grid_cell(caps: Capabilities) -> str:
    """`default_grid`, with per-feature overrides in parentheses, e.g. `quadratic (VE: log-snr)`."""
    overrides = [
        f"{_FEATURE_LABELS.get(feature, feature)}: {grid}"
        for feature, grid in caps.grid_by_feature
        if grid != caps.default_grid
    ]
    return caps.default_grid + (f" ({', '.join(overrides)})" if overrides else "")


def _composable(requires: frozenset[str], process: object) -> bool:
    return set(requires) <= traits_of(process).names


def sampler_rows(registry: Registry) -> list[SamplerRow]:
    """Build every sampler with default options and describe it; unbuildable ones are skipped."""
    processes = {name: registry.build("process", name, {}) for name in registry.names("process")}
    rows = []
    for name in _names(registry):
        try:
            component: Component = registry.get("sampler", name)
            sampler = registry.build("sampler", name, {})
        except DiffkitError:
            continue
        caps = sampler.capabilities
        supported = tuple(p for p, process in processes.items() if _composable(caps.requires, process))
        rows.append(
            SamplerRow(
                name,
                caps.order,
                caps.nfe_per_step,
                caps.stochastic,
                caps.adaptive,
                _grid_cell(caps),
                supported,
                component.plugin,
                component.distribution,
                component.summary,
            )
        )
    return rows


def _processes_cell(row: SamplerRow, all_processes: tuple[str, ...]) -> str:
    return "all" if row.processes == all_processes else ", ".join(row.processes)


def render_markdown(rows: list[SamplerRow], all_processes: tuple[str, ...]) -> str:
    """Markdown table: name, order, NFE/step, stochastic, default grid, processes, summary."""
    lines = [
        "| sampler | order | NFE/step | stochastic | default grid | processes | what |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        nfe = "adaptive" if row.adaptive else (str(row.nfe_per_step) if row.nfe_per_step else "varies")
        order = f"{row.order:g}"
        stochastic = "yes" if row.stochastic else "no"
        processes = _processes_cell(row, all_processes)
        cells = [f"`{row.name}`", order, nfe, stochastic, row.default_grid, processes]
        lines.append("| " + " | ".join([*cells, row.summary.replace("|", "/")]) + " |")
    return "\n".join(lines)
