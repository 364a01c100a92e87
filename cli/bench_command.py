"""`diffkit bench`: sweep solvers over NFE budgets on an oracle model; tables, files and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from diffkit.bench.compare import head_to_head_table, implementations, peer_markdown
from diffkit.bench.pareto import save_pareto
from diffkit.bench.report import build_summary, quality_table, render_markdown
from diffkit.bench.runner import Runner
from diffkit.bench.spec import DEFAULT_BUDGETS, DEFAULT_NUM_SAMPLES, METRICS, BenchConfig
from diffkit.bench.sweep import SweepResult, run_sweep
from diffkit.cli.common import fail, handle_errors, load_registry
from diffkit.core.errors import UsageError
from diffkit.peers import parse_peers
from diffkit.peers.runners import peer_runners as build_peer_runners
from diffkit.plugin import validate
from diffkit.plugin.options import split_key_values
from diffkit.plugin.registry import Registry
from diffkit.run.api import DTYPES
from diffkit.run.io import check_folder, write_with
from diffkit.run.provenance import jsonable

Opts = Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE")]


def parse_ints(text: str, flag: str, *, minimum: int) -> tuple[int, ...]:
    """Parse comma-separated integers >= `minimum` (e.g. `--nfe 10,20`); UsageError otherwise."""
    try:
        values = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise UsageError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise UsageError(f"{flag} expects comma-separated integers >= {minimum}, got {text!r}")
    if max(values) > validate.SEED_MAX:
        raise UsageError(f"{flag} expects integers up to 2**63-1, got {max(values)}")
    if len(set(values)) != len(values):
        raise UsageError(f"{flag} lists a value twice: {text!r}")
    return values


def split_solver_options(items: list[str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """`KEY=VALUE` for every solver, `SOLVER.KEY=VALUE` (e.g. `ddim.eta=0.5`) for one solver."""
    shared: dict[str, str] = {}
    per_solver: dict[str, dict[str, str]] = {}
    for key, value in split_key_values(items, "--solver-opt").items():
        solver, dot, name = key.rpartition(".")
        if dot and solver:
            per_solver.setdefault(solver, {})[name] = value
        else:
            shared[key] = value
    return shared, per_solver


@handle_errors
def bench(
    model: Annotated[str, typer.Option(help="Oracle model (see `diffkit list model`).")] = "gmm:ring8",
    sde: Annotated[str, typer.Option("--sde", help="Noise process.")] = "vp",
    solvers: Annotated[
        str | None, typer.Option(help="Comma-separated samplers (default: every compatible one).")
    ] = None,
    nfe: Annotated[str, typer.Option(help="Comma-separated NFE budgets.")] = ",".join(
        map(str, DEFAULT_BUDGETS)
    ),
    num_samples: Annotated[int, typer.Option(help="Samples per run.")] = DEFAULT_NUM_SAMPLES,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    out: Annotated[Path, typer.Option(help="Output folder (re-running resumes it).")] = Path("bench-results"),
    grid: Annotated[
        str | None, typer.Option(help="Time grid for every solver (default: each one's).")
    ] = None,
    solver_opt: Annotated[
        list[str] | None, typer.Option(metavar="[SOLVER.]KEY=VALUE", help="Solver option (all or one).")
    ] = None,
    sde_opt: Opts = None,
    model_opt: Opts = None,
    grid_opt: Opts = None,
    metric: Annotated[
        str, typer.Option(help=f"Metric of the table and plot: {', '.join(METRICS)}.")
    ] = "sliced_w2",
    peers: Annotated[
        str | None,
        typer.Option(
            metavar="diffusers,k-diffusion",
            help="Also run these libraries' implementations of the swept solvers (same model and noise).",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    threads: Annotated[
        int, typer.Option(help="CPU threads for torch during the sweep (1: steadiest timings).")
    ] = 1,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write pareto.png.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Measure solver quality against NFE and seconds on an exact model; resumable."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {threads}")
    if num_samples < 2:
        raise UsageError(f"--num-samples must be at least 2, got {num_samples}")
    peer_names = parse_peers(peers) if peers is not None else ()
    shared, per_solver = split_solver_options(solver_opt or [])
    names = tuple(s.strip() for s in solvers.split(",") if s.strip()) if solvers is not None else None
    if names is not None and not names:
        raise UsageError("--solvers is empty")
    config = BenchConfig(
        model=model,
        process=sde,
        solvers=names,
        budgets=parse_ints(nfe, "--nfe", minimum=1),
        num_samples=num_samples,
        seeds=parse_ints(seeds, "--seeds", minimum=0),
        grid=grid,
        device=device,
        dtype=dtype,
        process_options=split_key_values(sde_opt or [], "--sde-opt"),
        model_options=split_key_values(model_opt or [], "--model-opt"),
        grid_options=split_key_values(grid_opt or [], "--grid-opt"),
        solver_options=shared,
        per_solver_options=per_solver,
        metric=metric,
    )
    _check_sizes(config, out)
    registry = load_registry()
    peer_runners: list[Runner] = list(build_peer_runners(peer_names, config, registry))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # restored below: tests run the CLI in-process
    try:
        result = _run_with_progress(config, registry, out, peer_runners)
    except KeyboardInterrupt:
        fail(f"interrupted; finished rows are saved in {str(out)!r}: re-run the same command to resume", 130)
    finally:
        torch.set_num_threads(previous)
    summary = _write_outputs(config, result, out, plot)
    ran = {row["implementation"] for row in result.rows}
    for runner in peer_runners:
        if runner.implementation not in ran:
            message = f"warning: peer {runner.implementation!r} implements none of the swept solvers"
            typer.echo(message, err=True)
    if as_json:
        typer.echo(json.dumps(jsonable(summary)))
    else:
        _print_table(summary)


def _check_sizes(config: BenchConfig, out: Path) -> None:
    """Device, dtype, sizes against memory and the output folder, before any run (UsageError)."""
    validate.device(config.device)
    if config.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {config.dtype!r}; expected one of {', '.join(DTYPES)}")
    largest = max(config.budgets)
    validate.memory(f"--nfe {largest}", 64.0 * (largest + 1))  # its grid and per-step records
    # samples, noise and the reference of one run (float64, >= 1 dimension each)
    validate.memory(f"--num-samples {config.num_samples}", 64.0 * config.num_samples)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; bench writes a folder")
    check_folder(out)


def _run_with_progress(
    config: BenchConfig, registry: Registry, out: Path, peers: list[Runner]
) -> SweepResult:
    """Run the sweep with one progress bar over it on stderr (only when stderr is a terminal)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        return run_sweep(config, registry, out, peers=peers)
    bar = Progress(
        TextColumn("bench"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task("", total=1.0)

        def update(done: float, total: float, text: str) -> None:
            bar.update(task, completed=done / total if total else 1.0, description=text)

        return run_sweep(config, registry, out, peers=peers, progress=update)


def _write_outputs(config: BenchConfig, result: SweepResult, out: Path, plot: bool) -> dict[str, Any]:
    """Write summary.json, report.md and pareto.png into `out`; return the summary."""
    files = {"csv": out / "results.csv", "json": out / "results.json", "report": out / "report.md"}
    if plot:
        files["plot"] = out / "pareto.png"
    summary = build_summary(
        config,
        result.rows,
        result.skipped,
        runs={"computed": result.computed, "reused": result.reused},
        files={name: str(path) for name, path in files.items()},
    )
    text = json.dumps(jsonable(summary), indent=1)
    write_with(out / "summary.json", lambda handle: handle.write(text.encode()))
    report = render_markdown(summary) + peer_markdown(summary)
    write_with(files["report"], lambda handle: handle.write(report.encode()))
    if plot:
        save_pareto(files["plot"], summary)
    return summary


def _print_table(summary: dict[str, Any]) -> None:
    header, rows = quality_table(summary, summary["metric"])
    title = f"diffkit bench: {summary['metric']} on {summary['model']} | {summary['sde']} (* best per budget)"
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="left" if name == "solver" else "right", no_wrap=name == "solver")
    for row in rows:
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))  # logs and pipes: no wrapped cells
    console.print(table)
    if implementations(summary["cells"]):
        header, rows = head_to_head_table(summary, summary["metric"])
        versus = Table(title=f"diffkit against peers: {summary['metric']}")
        for name in header:
            versus.add_column(name, justify="right" if name == "NFE" else "left")
        for row in rows:
            versus.add_row(*row)
        console.print(versus)
    runs = summary["runs"]
    console.print(
        f"{runs['computed']} runs computed, {runs['reused']} reused; results in {summary['files']['csv']}"
    )
