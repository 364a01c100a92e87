"""`diffkit sample`: compose process, model, solver and grid by name; write samples atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from diffkit.api import SampleConfig, SampleRun
from diffkit.api import sample as run_sample
from diffkit.cli.main import handle_errors, load_registry
from diffkit.io import check_writable, read_array, write_samples
from diffkit.metrics import sliced_wasserstein
from diffkit.options import split_key_values
from diffkit.plot import save_plot
from diffkit.provenance import machine, versions
from diffkit.quality import oracle_quality
from diffkit.registry import Registry


def _completer(kind: str):  # noqa: ANN202 - typer completion callback
    def complete(incomplete: str) -> list[str]:
        registry = load_registry()
        names = registry.names(kind) + registry.family_examples(kind)
        return [name for name in names if name.startswith(incomplete)]

    return complete


def _opts(target: str) -> typer.Option:  # noqa: D401
    return typer.Option(
        metavar="KEY=VALUE", help=f"Option of the {target} (repeatable; an unknown KEY lists the valid ones)."
    )


@handle_errors
def sample(
    sde: Annotated[
        str,
        typer.Option(
            "--sde", help="Noise process (`diffkit list process`).", autocompletion=_completer("process")
        ),
    ] = "vp",
    solver: Annotated[
        str,
        typer.Option(help="Sampler, e.g. ode, ode:rk4, em, sde:srk.", autocompletion=_completer("sampler")),
    ] = "ode",
    model: Annotated[
        str, typer.Option(help="Score model (`diffkit list model`).", autocompletion=_completer("model"))
    ] = "gmm:ring8",
    steps: Annotated[int | None, typer.Option(help="Steps (default: the solver's).")] = None,
    grid: Annotated[
        str | None, typer.Option(help="Time grid (default: the solver's).", autocompletion=_completer("grid"))
    ] = None,
    num_samples: Annotated[int, typer.Option(help="Number of samples.")] = 10_000,
    batch_size: Annotated[int | None, typer.Option(help="Samples per batch (default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    solver_opt: Annotated[list[str] | None, _opts("solver")] = None,
    sde_opt: Annotated[list[str] | None, _opts("process")] = None,
    model_opt: Annotated[list[str] | None, _opts("model")] = None,
    grid_opt: Annotated[list[str] | None, _opts("grid")] = None,
    x_init: Annotated[
        Path | None, typer.Option(help="Start from this prior noise (.npy, or .npz with 'samples').")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output .npz (written atomically).")] = Path("samples.npz"),
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Also write a PNG beside --out.")] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    cond: Annotated[int | None, typer.Option(help="Class label of a class-conditional model.")] = None,
    guidance: Annotated[
        str | None, typer.Option(help="Guidance wrapper: cfg (default) or classifier; needs --cond.")
    ] = None,
    guidance_scale: Annotated[
        float | None, typer.Option(help="Guidance scale w (0 unconditional, 1 conditional); needs --cond.")
    ] = None,
) -> None:
    """Draw samples from MODEL by integrating the reverse of process SDE with SOLVER."""
    config = SampleConfig(
        process=sde,
        solver=solver,
        model=model,
        grid=grid,
        steps=steps,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
        device=device,
        dtype=dtype,
        process_options=split_key_values(sde_opt or [], "--sde-opt"),
        solver_options=split_key_values(solver_opt or [], "--solver-opt"),
        model_options=split_key_values(model_opt or [], "--model-opt"),
        grid_options=split_key_values(grid_opt or [], "--grid-opt"),
        cond=cond,
        guidance=guidance,
        guidance_scale=guidance_scale,
    )
    out = check_writable(out, ".npz")
    plot_path = out.with_suffix(".png")
    if plot:
        check_writable(plot_path, ".png")
    noise = None if x_init is None else torch.from_numpy(np.asarray(read_array(x_init), dtype=np.float64))
    registry = load_registry()
    run = _run_with_progress(config, registry, noise)
    samples = run.samples.detach().cpu()
    summary = _summary(run, samples, out, plot_path if plot else None)
    config_record = run.config | {"versions": versions(), "machine": machine(device)}
    write_samples(out, samples.numpy(), run.nfe, run.seconds, config_record)
    if plot:
        log_prob = getattr(run.composition.model, "data_log_prob", None)
        title = f"{model} | {sde} | {solver} | NFE {run.nfe}"
        save_plot(plot_path, samples.numpy(), title=title, log_prob=log_prob)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _print_table(summary)


def _run_with_progress(config: SampleConfig, registry: Registry, noise: torch.Tensor | None) -> SampleRun:
    """Run `diffkit.api.sample` with a progress bar on stderr (only when stderr is a terminal)."""
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("sampling"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    if not console.is_terminal:
        return run_sample(config, registry=registry, x_init=noise)
    with bar:
        task = bar.add_task("sampling", total=1.0)
        return run_sample(
            config,
            registry=registry,
            x_init=noise,
            progress=lambda fraction: bar.update(task, completed=min(fraction, 1.0)),
        )


def _summary(run: SampleRun, samples: torch.Tensor, out: Path, plot_path: Path | None) -> dict:
    cfg = run.config
    summary = {
        "model": cfg["model"],
        "sde": cfg["process"],
        "solver": cfg["solver"],
        "grid": cfg["grid"],
        "steps": run.steps,
        "num_samples": int(samples.shape[0]),
        "nfe": run.nfe,
        "seconds": round(run.seconds, 4),
        "samples_per_second": round(samples.shape[0] / max(run.seconds, 1e-9), 1),
    }
    summary |= {k: round(v, 5) for k, v in _quality(run, samples, cfg).items()}
    summary |= {"out": str(out), "plot": None if plot_path is None else str(plot_path)}
    return summary


def _quality(run: SampleRun, samples: torch.Tensor, cfg: dict) -> dict[str, float]:
    """Oracle quality; with --cond, sliced-W2 against exact samples of that class (and its floor)."""
    model = run.composition.model
    if cfg.get("cond") is None:
        return oracle_quality(model, samples, seed=cfg["seed"])
    base = getattr(model, "base", model)
    if not hasattr(base, "sample_class"):
        return {}
    generator = torch.Generator().manual_seed(cfg["seed"] + 7919)
    n = samples.shape[0]
    reference, other = (
        base.sample_class(cfg["cond"], n, generator=generator, dtype=torch.float64) for _ in range(2)
    )
    samples = samples.to(torch.float64)
    return {
        "sliced_w2_to_class": float(sliced_wasserstein(samples, reference)),
        "sliced_w2_floor": float(sliced_wasserstein(other, reference)),
    }


def _print_table(summary: dict) -> None:
    table = Table(title="diffkit sample", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if value is not None:
            table.add_row(key.replace("_", " "), str(value))
    Console().print(table)
