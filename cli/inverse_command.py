"""`diffkit inpaint` and `diffkit colorize`: inverse problems with any sampler (Song et al. 2021, App. I)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from diffkit.cli.common import handle_errors, load_registry
from diffkit.plugin.options import split_key_values
from diffkit.run.api import SampleConfig, SampleRun
from diffkit.run.api import sample as run_sample
from diffkit.run.io import check_writable, make_parent, read_real, write_samples
from diffkit.run.provenance import machine, versions
from diffkit.wrappers.colour import colorize_input, colour_scores

_OPT = typer.Option(metavar="KEY=VALUE", help="Option (repeatable).")


def _tensor(path: Path, flag: str) -> torch.Tensor:
    return torch.from_numpy(read_real(path, flag))


def _run(
    task: str,
    data: Path,
    mask: Path | None,
    common: dict,
    out: Path,
    as_json: bool,
    measured: torch.Tensor | None = None,
    truth: torch.Tensor | None = None,
) -> None:
    """Compose with the `task` wrapper, sample, write `out` atomically and print a summary.

    `measured` replaces reading `data`; with `truth` (colour images) the summary scores the colours.
    """
    config = SampleConfig(inverse=task, **common)
    measured = _tensor(data, "--data") if measured is None else measured
    known = None if mask is None else _tensor(mask, "--mask")
    out = check_writable(out, ".npz")
    run: SampleRun = run_sample(config, registry=load_registry(), data=measured, mask=known)
    make_parent(out)
    samples = run.samples.detach().cpu()
    write_samples(
        out,
        samples.numpy(),
        run.nfe,
        run.seconds,
        run.config
        | {"versions": versions()}
        | {"machine": machine(config.device), "data": str(data), "mask": None if mask is None else str(mask)},
    )
    summary = {
        "task": task,
        "model": config.model,
        "solver": config.solver,
        "num_samples": int(samples.shape[0]),
        "nfe": run.nfe,
        "seconds": round(run.seconds, 4),
        "out": str(out),
    }
    if truth is not None:
        summary |= {key: round(value, 4) for key, value in colour_scores(samples, truth).items()}
    typer.echo(json.dumps(summary) if as_json else " ".join(f"{k}={v}" for k, v in summary.items()))


Model = Annotated[str, typer.Option(help="Score model (`diffkit list model`).")]
Sde = Annotated[str, typer.Option("--sde", help="Noise process.")]
Solver = Annotated[
    str,
    typer.Option(
        help="Sampler (default em: replacement is exact in distribution only with stochastic samplers)."
    ),
]
Steps = Annotated[int | None, typer.Option(help="Steps (default: the solver's).")]
Method = Annotated[str, typer.Option(help="replace (fresh forward-marginal noise) or project.")]
Opts = Annotated[list[str] | None, _OPT]


def _common(
    model: str,
    sde: str,
    solver: str,
    steps: int | None,
    seed: int,
    batch_size: int | None,
    dtype: str,
    device: str,
    method: str,
    solver_opt: list[str] | None,
    model_opt: list[str] | None,
) -> dict:
    return {
        "model": model,
        "process": sde,
        "solver": solver,
        "steps": steps,
        "seed": seed,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
        "inverse_options": {"method": method, "seed": str(seed)},
        "solver_options": split_key_values(solver_opt or [], "--solver-opt"),
        "model_options": split_key_values(model_opt or [], "--model-opt"),
    }


Seed = Annotated[int, typer.Option(help="Random seed.")]
BatchSize = Annotated[int | None, typer.Option(help="Samples per batch.")]
DType = Annotated[str, typer.Option(help="float32 or float64.")]
Device = Annotated[str, typer.Option(help="cpu or cuda.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


@handle_errors
def inpaint(
    data: Annotated[Path, typer.Option(help="Measured data (N, *data_shape), .npy or .npz 'samples'.")],
    mask: Annotated[Path, typer.Option(help="Mask, nonzero = known: data_shape or (N, *data_shape).")],
    model: Model = "gmm:d64",
    sde: Sde = "vp",
    solver: Solver = "em",
    steps: Steps = None,
    method: Method = "replace",
    seed: Seed = 0,
    batch_size: BatchSize = None,
    dtype: DType = "float32",
    device: Device = "cpu",
    solver_opt: Opts = None,
    model_opt: Opts = None,
    out: Annotated[Path, typer.Option(help="Output .npz.")] = Path("inpainted.npz"),
    as_json: JsonFlag = False,
) -> None:
    """Fill in the unknown coordinates of DATA (mask 0) by sampling MODEL with the known ones fixed."""
    common = _common(
        model, sde, solver, steps, seed, batch_size, dtype, device, method, solver_opt, model_opt
    )
    _run("inpaint", data, mask, common, out, as_json)


@handle_errors
def colorize(
    data: Annotated[
        str,
        typer.Option(
            help="Gray images (N, H, W) or (N, 1, H, W) (channel means), .npy or .npz 'samples'; "
            "colour images (N, 3, H, W) or a dataset (e.g. photos) are made gray and scored."
        ),
    ],
    model: Model = "gmm:rgb",
    sde: Sde = "vp",
    solver: Solver = "em",
    steps: Steps = None,
    method: Method = "replace",
    seed: Seed = 0,
    batch_size: BatchSize = None,
    dtype: DType = "float32",
    device: Device = "cpu",
    solver_opt: Opts = None,
    model_opt: Opts = None,
    data_opt: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", help="Dataset option.")] = None,
    out: Annotated[Path, typer.Option(help="Output .npz.")] = Path("colorized.npz"),
    as_json: JsonFlag = False,
) -> None:
    """Colour gray images with a 3-channel MODEL: the channel mean of every output equals the input."""
    common = _common(
        model, sde, solver, steps, seed, batch_size, dtype, device, method, solver_opt, model_opt
    )
    options = split_key_values(data_opt or [], "--data-opt")
    gray, truth = colorize_input(load_registry(), data, options)
    _run("colorize", Path(data), None, common, out, as_json, measured=gray, truth=truth)
