"""`diffkit list [KIND]`: every registered component with the plugin and distribution behind it."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from diffkit.cli.main import fail, handle_errors, load_registry
from diffkit.registry import KINDS, Component

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
    "model_wrapper": "model_wrapper",
    "wrapper": "model_wrapper",
    "wrappers": "model_wrapper",
}


@handle_errors
def list_components(
    kind: Annotated[
        str | None, typer.Argument(help="process|sampler|model|grid|model_wrapper (or sde, solver)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array on stdout.")] = False,
) -> None:
    """List registered components (with their plugin and distribution)."""
    resolved = None
    if kind is not None:
        resolved = ALIASES.get(kind.lower())
        if resolved is None:
            fail(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)} (or sde, solver)")
    registry = load_registry()
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
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="diffkit components", show_lines=False)
    for column in ("kind", "name", "plugin", "distribution", "summary"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(row[c] for c in ("kind", "name", "plugin", "distribution", "summary")))
    Console(width=200).print(table)
