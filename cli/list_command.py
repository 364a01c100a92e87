"""`diffkit list [KIND]`: every registered component with the plugin and distribution behind it."""

from __future__ import annotations

import inspect
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from diffkit.cli.common import fail, handle_errors, load_registry
from diffkit.plugin.catalog import render_markdown, sampler_rows
from diffkit.plugin.registry import KINDS, Component, Family, Registry

ALIASES = {
    "process": "process",
    "processes": "process",
    "sde": "process",
    "sdes": "process",
    "sampler": "sampler",
    "samplers": "sampler",
    "solver": "sampler",
    "solvers": "sampler",
    "model": "model",
    "models": "model",
    "grid": "grid",
    "grids": "grid",
    "network": "network",
    "networks": "network",
    "net": "network",
    "loss": "loss",
    "losses": "loss",
    "dataset": "dataset",
    "datasets": "dataset",
    "data": "dataset",
    "model_wrapper": "model_wrapper",
    "wrapper": "model_wrapper",
    "wrappers": "model_wrapper",
    "parameterization": "parameterization",
    "parameterizations": "parameterization",
}


@handle_errors
def list_components(
    kind: Annotated[
        str | None, typer.Argument(help="process|sampler|model|grid|model_wrapper (or sde, solver)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array on stdout.")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="With `sampler`: print the sampler table as Markdown.")
    ] = False,
) -> None:
    """List registered components (with their plugin and distribution); samplers with capabilities."""
    resolved = None
    if kind is not None:
        resolved = ALIASES.get(kind.lower())
        if resolved is None:
            fail(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)} (or sde, solver)")
    registry = load_registry()
    if resolved == "sampler" and not as_json:
        _print_samplers(registry, markdown)
        return
    if markdown:
        fail("--markdown is available for `diffkit list sampler` only")
    rows = []
    for item in registry.listing(resolved):
        if isinstance(item, Component):
            name = item.name
        else:
            name = f"{item.prefix}:<method>  ({', '.join(item.methods)})"
        rows.append(
            {
                "kind": item.kind,
                "name": name,
                "plugin": item.plugin,
                "distribution": item.distribution,
                "summary": item.summary,
                "options": _options(registry, item),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="diffkit components", show_lines=False)
    columns = ("kind", "name", "plugin", "distribution", "summary", "options")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    Console(width=200).print(table)


def _options(registry: Registry, item: Component | Family) -> str:
    """`name=default, ...` for each option of a component (`-` for none; families: per method)."""
    if not isinstance(item, Component):
        return "see each method"
    specs = registry.options(item.kind, item.name).values()
    return ", ".join(f"{spec.name}={_default(spec.default)}" for spec in specs) or "-"


def _default(value: object) -> str:
    """An option default as typed on the command line (`required` when there is none)."""
    if value is inspect.Parameter.empty:
        return "required"
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def _print_samplers(registry: Registry, markdown: bool) -> None:
    """The sampler catalogue: capabilities, supported processes and provenance."""
    rows = sampler_rows(registry)
    all_processes = tuple(registry.names("process"))
    if markdown:
        typer.echo(render_markdown(rows, all_processes))
        return
    table = Table(title="diffkit samplers")
    for column in ("name", "order", "NFE/step", "stochastic", "grid", "processes", "plugin", "distribution"):
        table.add_column(column, overflow="fold")
    for row in rows:
        nfe = "adaptive" if row.adaptive else str(row.nfe_per_step or "varies")
        processes = "all" if row.processes == all_processes else ", ".join(row.processes)
        table.add_row(
            row.name,
            f"{row.order:g}",
            nfe,
            "yes" if row.stochastic else "no",
            row.default_grid,
            processes,
            row.plugin,
            row.distribution,
        )
    Console(width=200).print(table)
