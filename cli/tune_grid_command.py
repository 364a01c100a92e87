"""`diffkit tune-grid`: tune a time grid for one model, process, solver and NFE; write a `table` file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from diffkit.cli.common import handle_errors, load_registry
from diffkit.plugin.options import split_key_values
from diffkit.run.io import check_writable, make_parent, write_with
from diffkit.tune import TuneConfig, grid_file, prepare, tune_grid


def _opts(target: str) -> typer.Option:  # noqa: D401
    return typer.Option(metavar="KEY=VALUE", help=f"Option of the {target} (repeatable).")


@handle_errors
def tune_grid_command(
    model: Annotated[str, typer.Option(help="Score model (`diffkit list model`).")] = "gmm:ring8",
    sde: Annotated[str, typer.Option("--sde", help="Noise process (`diffkit list process`).")] = "vp",
    solver: Annotated[str, typer.Option(help="Fixed-step sampler whose grid is tuned.")] = "dpmpp-2m",
    nfe: Annotated[int, typer.Option(help="Model evaluations of a run (the budget tuned for).")] = 10,
    objective: Annotated[
        str, typer.Option(help="endpoint (error vs the dopri5 ODE solution) or sliced-w2 (vs exact data).")
    ] = "endpoint",
    train_samples: Annotated[int, typer.Option(help="Noise samples the grid is tuned on.")] = 256,
    eval_samples: Annotated[
        int, typer.Option(help="Fresh noise samples for the before/after values.")
    ] = 1024,
    seed: Annotated[int, typer.Option(help="Seed of the training noise (evaluation: a derived seed).")] = 0,
    max_evals: Annotated[
        int, typer.Option(help="Objective evaluations at most (start grids included).")
    ] = 100,
    budget_seconds: Annotated[
        float | None, typer.Option(help="Stop searching after this many seconds.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output grid file (.json, a `table` grid).")] = Path("grid.json"),
    sde_opt: Annotated[list[str] | None, _opts("process")] = None,
    solver_opt: Annotated[list[str] | None, _opts("solver")] = None,
    model_opt: Annotated[list[str] | None, _opts("model")] = None,
) -> None:
    """Tune the time grid of SOLVER at NFE model calls; use it with `--grid table --grid-opt file=OUT`."""
    check_writable(out, ".json")
    config = TuneConfig(
        model=model,
        process=sde,
        solver=solver,
        nfe=nfe,
        objective=objective,
        train_samples=train_samples,
        eval_samples=eval_samples,
        seed=seed,
        max_evals=max_evals,
        budget_seconds=budget_seconds,
        process_options=split_key_values(sde_opt or [], "--sde-opt"),
        solver_options=split_key_values(solver_opt or [], "--solver-opt"),
        model_options=split_key_values(model_opt or [], "--model-opt"),
    )
    registry = load_registry()
    comp = prepare(config, registry)
    result = tune_grid(config, registry, comp)
    text = json.dumps(grid_file(config, result), indent=2) + "\n"
    write_with(make_parent(out), lambda handle: handle.write(text.encode()))
    verdict = "kept the start (no gain on fresh noise)" if result.kept_start else "tuned"
    typer.echo(
        f"{out}: {objective} {result.value_before:.6g} ({result.start_grid}) -> {result.value_after:.6g}, "
        f"{verdict}; {result.seconds:.1f} s, {result.nfe_spent} NFE spent"
    )
