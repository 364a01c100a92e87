"""`diffkit likelihood`: log-likelihood of data under a model (probability-flow ODE or DDPM bound)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from diffkit.cli.main import handle_errors, load_registry
from diffkit.io import read_array
from diffkit.likelihood_run import LikelihoodConfig, evaluate_likelihood
from diffkit.options import split_key_values


def _opts(target: str) -> typer.Option:
    return typer.Option(metavar="KEY=VALUE", help=f"Option of the {target} (repeatable).")


@handle_errors
def likelihood(
    sde: Annotated[str, typer.Option("--sde", help="Noise process (`diffkit list process`).")] = "vp",
    model: Annotated[
        str, typer.Option(help="Score model (`diffkit list model`) or checkpoint.")
    ] = "gmm:ring8",
    data: Annotated[
        str, typer.Option(help="'exact' (oracle samples) or a .npy / .npz file with 'samples'.")
    ] = "exact",
    num_samples: Annotated[int, typer.Option(help="Exact samples drawn with --data exact.")] = 2000,
    method: Annotated[str, typer.Option(help="ode (exact log p) or vlb (DDPM bound, discrete).")] = "ode",
    divergence: Annotated[str, typer.Option(help="exact, hutchinson or auto (exact up to D=64).")] = "auto",
    probes: Annotated[int, typer.Option(help="Hutchinson probes per sample.")] = 1,
    probe: Annotated[
        str, typer.Option(help="Probe distribution: rademacher (lower variance) or gaussian.")
    ] = "rademacher",
    rtol: Annotated[float, typer.Option(help="Relative tolerance of the adaptive ODE solver.")] = 1e-5,
    atol: Annotated[float, typer.Option(help="Absolute tolerance of the adaptive ODE solver.")] = 1e-5,
    variance: Annotated[str, typer.Option(help="vlb reverse variance: beta, beta_tilde, learned.")] = "beta",
    dequantize: Annotated[
        bool, typer.Option(help="Data are 8-bit integers 0..255: dequantize into [-1, 1].")
    ] = False,
    batch_size: Annotated[int | None, typer.Option(help="Samples per batch (default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of exact samples, probes and dequantization.")] = 0,
    sde_opt: Annotated[list[str] | None, _opts("process")] = None,
    model_opt: Annotated[list[str] | None, _opts("model")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Estimate log p(x) in nats, nats/dim and bits/dim, beside the closed form where known."""
    config = LikelihoodConfig(
        process=sde,
        model=model,
        method=method,
        divergence=divergence,
        num_probes=probes,
        probe=probe,
        rtol=rtol,
        atol=atol,
        variance=variance,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
        dequantize=dequantize,
        process_options=split_key_values(sde_opt or [], "--sde-opt"),
        model_options=split_key_values(model_opt or [], "--model-opt"),
    )
    points = None
    if data != "exact":
        points = torch.from_numpy(np.asarray(read_array(Path(data)), dtype=np.float64))
    report = evaluate_likelihood(config, registry=load_registry(), data=points)
    if as_json:
        typer.echo(json.dumps(report))
        return
    table = Table(title="diffkit likelihood", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in report.items():
        if value is not None:
            table.add_row(key.replace("_", " "), f"{value:.6g}" if isinstance(value, float) else str(value))
    Console().print(table)
