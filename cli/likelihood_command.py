"""`diffkit likelihood`: log-likelihood of data under a model (probability-flow ODE or DDPM bound)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from diffkit.cli.common import given, handle_errors, load_registry
from diffkit.core.errors import UsageError
from diffkit.eval.likelihood_eval import LikelihoodConfig, evaluate_likelihood, load_points, resolved_levels
from diffkit.plugin import validate
from diffkit.plugin.options import split_key_values


def _opts(target: str) -> typer.Option:
    return typer.Option(metavar="KEY=VALUE", help=f"Option of the {target} (repeatable).")


@handle_errors
def likelihood(
    sde: Annotated[str, typer.Option("--sde", help="Noise process (`diffkit list process`).")] = "vp",
    model: Annotated[
        str, typer.Option(help="Score model (`diffkit list model`) or checkpoint.")
    ] = "gmm:ring8",
    data: Annotated[
        str,
        typer.Option(help="'exact' (oracle samples), a dataset name, or a .npy / .npz file with 'samples'."),
    ] = "exact",
    num_samples: Annotated[int, typer.Option(help="Exact samples drawn with --data exact.")] = 2000,
    method: Annotated[str, typer.Option(help="ode (exact log p) or vlb (DDPM bound, VP-family).")] = "ode",
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
    levels: Annotated[
        int | None,
        typer.Option(help="Discrete data: integers 0..K-1 (a dataset: its K-level [-1, 1] grid)."),
    ] = None,
    vlb_steps: Annotated[
        int | None, typer.Option(help="Steps N of the DDPM chain of a vp/subvp model (default 1000).")
    ] = None,
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
        levels=levels,
        vlb_steps=vlb_steps,
        process_options=split_key_values(sde_opt or [], "--sde-opt"),
        model_options=split_key_values(model_opt or [], "--model-opt"),
    )
    _check_flags(config, data)
    registry = load_registry()
    points = load_points(data, registry, resolved_levels(config))
    report = evaluate_likelihood(config, registry=registry, data=points)
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


def _check_flags(config: LikelihoodConfig, data: str) -> None:
    """Numbers in range and no flag that the chosen method ignores (UsageError, before any work)."""
    validate.positive_int("--num-samples", config.num_samples)
    validate.positive_int("--batch-size", config.batch_size)
    validate.positive_int("--probes", config.num_probes)
    validate.seed("--seed", config.seed)
    validate.positive_finite("--rtol", config.rtol)
    validate.positive_finite("--atol", config.atol)
    if data == "exact":  # the exact samples, float64, and the divergence's working copies (D >= 1)
        validate.memory(f"--num-samples {config.num_samples}", 64.0 * config.num_samples)
    if config.vlb_steps is not None:  # the chain's schedule tensors, float64
        validate.memory(f"--vlb-steps {config.vlb_steps}", 64.0 * config.vlb_steps)
    ignored = {
        "num_samples": data != "exact" and "--num-samples applies to --data exact only",
        "variance": config.method != "vlb" and "--variance applies to --method vlb only",
        "rtol": config.method == "vlb" and "--rtol applies to --method ode only",
        "atol": config.method == "vlb" and "--atol applies to --method ode only",
        "divergence": config.method == "vlb" and "--divergence applies to --method ode only",
        "probes": config.divergence == "exact" and "--probes applies to --divergence hutchinson only",
        "probe": config.divergence == "exact" and "--probe applies to --divergence hutchinson only",
    }
    for name in given(*ignored):
        if ignored[name]:
            raise UsageError(str(ignored[name]))
