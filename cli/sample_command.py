"""`diffkit sample`: compose process, model, solver and grid by name; write samples atomically."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from diffkit.cli.common import given, handle_errors, load_registry
from diffkit.core.errors import OutputError, UsageError
from diffkit.eval.sample_quality import class_quality, metric_samples, oracle_quality
from diffkit.plugin.options import split_key_values
from diffkit.plugin.registry import Registry
from diffkit.run.api import SampleConfig, SampleRun
from diffkit.run.api import sample as run_sample
from diffkit.run.io import check_writable, make_parent, read_real, write_samples
from diffkit.run.memory import release_free_memory
from diffkit.run.plot import save_plot
from diffkit.run.provenance import machine, versions


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
    timesteps: Annotated[
        str | None,
        typer.Option(
            metavar="K1,K2,...",
            help="Custom timesteps of a discrete process, e.g. 999,850,500 (diffusers-style): "
            "--grid table with these, then a last step to sigma = 0; --steps defaults to their count.",
        ),
    ] = None,
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
        str | None,
        typer.Option(
            help="Guidance method: cfg (default), cfg-rescale, interval, apg, cfg-pp, autoguidance or "
            "classifier; needs --cond."
        ),
    ] = None,
    guidance_scale: Annotated[
        float | None, typer.Option(help="Guidance scale w (0 unconditional, 1 conditional); needs --cond.")
    ] = None,
    guidance_opt: Annotated[list[str] | None, _opts("guidance method")] = None,
    guide_model: Annotated[
        str | None,
        typer.Option(help="The weaker guide model of --guidance autoguidance, built like --model."),
    ] = None,
    final_sigma: Annotated[
        str,
        typer.Option(
            help="Where the grid ends: min (the process's t_min) or zero (the last of --steps goes to "
            "sigma = 0: the x0 prediction, as diffusers' final_sigmas_type='zero')."
        ),
    ] = "min",
    threshold: Annotated[
        str | None,
        typer.Option(
            help="Bound the x0 prediction with this model wrapper: clip or dynamic-threshold.",
            autocompletion=_completer("model_wrapper"),
        ),
    ] = None,
    threshold_opt: Annotated[list[str] | None, _opts("threshold wrapper")] = None,
) -> None:
    """Draw samples from MODEL by integrating the reverse of process SDE with SOLVER."""
    grid, grid_options = _table_grid(grid, split_key_values(grid_opt or [], "--grid-opt"), timesteps)
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
        grid_options=grid_options,
        cond=cond,
        guidance=guidance,
        guidance_scale=guidance_scale,
        guidance_options=split_key_values(guidance_opt or [], "--guidance-opt"),
        guide_model=guide_model,
        final_sigma=final_sigma,
        threshold=threshold,
        threshold_options=split_key_values(threshold_opt or [], "--threshold-opt"),
    )
    noise = None if x_init is None else torch.from_numpy(read_real(x_init, "--x-init"))
    if noise is not None and given("num_samples") and num_samples != noise.shape[0]:
        raise UsageError(
            f"--num-samples {num_samples} contradicts --x-init with {noise.shape[0]} rows "
            "(the rows of --x-init set the number of samples; drop --num-samples)"
        )
    if noise is not None:
        config = replace(config, num_samples=noise.shape[0])
    out = check_writable(out, ".npz")
    plot_path = out.with_suffix(".png")
    if plot:
        check_writable(plot_path, ".png")
    registry = load_registry()
    _refuse_grid_of_adaptive(config, registry)
    config = _table_steps(config, registry)
    run = _run_with_progress(config, registry, noise)
    make_parent(out)
    samples = run.samples.detach().cpu()
    release_free_memory()  # the batches' freed work memory, before the metrics' (flat peak in N)
    summary = _summary(run, samples, out, plot_path if plot else None)
    config_record = run.config | {"versions": versions(), "machine": machine(device)}

    def write_plot() -> None:  # after the npz is complete, before it is published: both or neither
        log_prob = getattr(run.composition.model, "data_log_prob", None)
        title = f"{model} | {sde} | {solver} | NFE {run.nfe}"
        save_plot(plot_path, samples.numpy(), title=title, log_prob=log_prob)

    try:
        write_samples(
            out, samples, run.nfe, run.seconds, config_record, before_publish=write_plot if plot else None
        )
    except OSError as error:
        written = f"{str(out)!r}" + (f" and {str(plot_path)!r}" if plot else "")
        raise OutputError(
            f"cannot write {written}: {error.strerror or error}; no output written, existing files kept"
        ) from None
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _print_table(summary)


def _refuse_grid_of_adaptive(config: SampleConfig, registry: Registry) -> None:
    """UsageError if --grid or --grid-opt is given for an adaptive solver, which uses only the ends."""
    flags = [f"--{name.replace('_', '-')}" for name in given("grid", "grid_opt", "timesteps")]
    if not flags:
        return
    if config.grid is not None:
        registry.get("grid", config.grid)  # an unknown name first: that message lists the valid ones
    if registry.build("sampler", config.solver, config.solver_options).capabilities.adaptive:
        verb = "does" if len(flags) == 1 else "do"
        raise UsageError(
            f"{' and '.join(flags)} {verb} not apply to the adaptive solver {config.solver!r}: it chooses "
            "its own steps between the process's end points (use a fixed-step solver, e.g. ode:rk4)"
        )


def _table_grid(
    grid: str | None, grid_options: dict[str, str], timesteps: str | None
) -> tuple[str | None, dict[str, str]]:
    """(grid, grid options) with `--timesteps` as `--grid table --grid-opt timesteps=...` (UsageError
    with another --grid, or with a timesteps grid option)."""
    if timesteps is None:
        return grid, grid_options
    if grid not in (None, "table"):
        raise UsageError(f"--timesteps sets the grid to 'table'; it cannot be combined with --grid {grid}")
    if any(key.strip().replace("-", "_") == "timesteps" for key in grid_options):
        raise UsageError("--timesteps and --grid-opt timesteps=... both give the timesteps; give one")
    return "table", grid_options | {"timesteps": timesteps}


def _table_steps(config: SampleConfig, registry: Registry) -> SampleConfig:
    """With `--grid table` and no `--steps`, the table's own step count (not the solver's default)."""
    if config.grid != "table" or config.steps is not None:
        return config
    table = registry.build("grid", "table", config.grid_options)
    return replace(config, steps=table.steps)


def _run_with_progress(config: SampleConfig, registry: Registry, noise: torch.Tensor | None) -> SampleRun:
    """Run `diffkit.run.api.sample` with a progress bar on stderr (only when stderr is a terminal)."""
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
    quality = _quality(run, samples, cfg)
    summary |= {k: round(v, 5) for k, v in quality.items()}
    if quality:  # sliced W2 is measured on the first this many samples (all when fewer)
        summary["sliced_w2_samples"] = metric_samples(int(samples.shape[0]))
    summary |= {"out": str(out), "plot": None if plot_path is None else str(plot_path)}
    return summary


def _quality(run: SampleRun, samples: torch.Tensor, cfg: dict) -> dict[str, float]:
    """Oracle quality; with --cond, sliced-W2 against exact samples of that class (and its floor)."""
    model = run.composition.model
    if cfg.get("cond") is None:
        return oracle_quality(model, samples, seed=cfg["seed"])
    return class_quality(model, samples, cfg["cond"], seed=cfg["seed"])


def _print_table(summary: dict) -> None:
    table = Table(title="diffkit sample", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if value is not None:
            table.add_row(key.replace("_", " "), str(value))
    Console().print(table)
