"""`diffkit encode` / `diffkit decode`: data to prior latents and back through the probability-flow ODE.

`encode` writes `--out` (.npz, atomically) with `latents` (float64, `(N, *data_shape)`), `nfe`,
`seconds` and `config` (JSON: model, sde, their options, method, rtol, atol), so `decode` needs
only the latents file; it writes the `diffkit sample` npz format.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Annotated, Any

import numpy as np
import torch
import typer

from diffkit.cli.main import handle_errors, load_registry
from diffkit.encoding import decode, encode
from diffkit.errors import UsageError
from diffkit.io import check_writable, read_array, write_samples, write_with
from diffkit.likelihood_run import build_model, check_data
from diffkit.options import split_key_values


def _opts(target: str) -> typer.Option:
    return typer.Option(metavar="KEY=VALUE", help=f"Option of the {target} (repeatable).")


def _method(method: str) -> str:
    if method not in ("ode", "ddim"):
        raise UsageError(f"--method must be ode or ddim, got {method!r}")
    return method


@handle_errors
def encode_command(
    data: Annotated[Path, typer.Option(help="Data: .npy, or .npz with 'samples'.")],
    sde: Annotated[str, typer.Option("--sde", help="Noise process (`diffkit list process`).")] = "vp",
    model: Annotated[
        str, typer.Option(help="Score model (`diffkit list model`) or checkpoint.")
    ] = "gmm:ring8",
    method: Annotated[
        str, typer.Option(help="ode (probability flow) or ddim (inversion, discrete).")
    ] = "ode",
    rtol: Annotated[float, typer.Option(help="Relative tolerance of the adaptive ODE solver.")] = 1e-7,
    atol: Annotated[float, typer.Option(help="Absolute tolerance of the adaptive ODE solver.")] = 1e-7,
    sde_opt: Annotated[list[str] | None, _opts("process")] = None,
    model_opt: Annotated[list[str] | None, _opts("model")] = None,
    out: Annotated[Path, typer.Option(help="Output .npz with 'latents'.")] = Path("latents.npz"),
) -> None:
    """Encode data into prior latents (t_min -> t_max) with the probability-flow ODE."""
    out = check_writable(out, ".npz")
    points = torch.from_numpy(np.asarray(read_array(data), dtype=np.float64))
    config: dict[str, Any] = {
        "model": model,
        "sde": sde,
        "sde_options": split_key_values(sde_opt or [], "--sde-opt"),
        "model_options": split_key_values(model_opt or [], "--model-opt"),
        "method": _method(method),
        "rtol": rtol,
        "atol": atol,
    }
    process, score_model = build_model(
        load_registry(), sde, model, config["sde_options"], config["model_options"]
    )
    check_data(points, score_model, model)
    start = time.perf_counter()
    coded = encode(score_model, process, points, method=method, rtol=rtol, atol=atol)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start

    def writer(handle: IO[bytes]) -> None:
        np.savez(
            handle,
            latents=coded.x.cpu().numpy(),
            nfe=np.asarray(coded.nfe),
            seconds=np.asarray(seconds),
            config=np.asarray(json.dumps(config, sort_keys=True)),
        )

    write_with(out, writer)
    typer.echo(json.dumps({"out": str(out), "num_samples": len(points), "nfe": coded.nfe}))


def _read_latents(path: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    try:
        with np.load(path) as archive:
            if "latents" not in archive or "config" not in archive:
                raise UsageError(f"{str(path)!r} is not a `diffkit encode` file (no 'latents' and 'config')")
            return torch.from_numpy(np.asarray(archive["latents"], dtype=np.float64)), json.loads(
                str(archive["config"])
            )
    except FileNotFoundError:
        raise UsageError(f"file not found: {str(path)!r}") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {str(path)!r}: {error}") from None


@handle_errors
def decode_command(
    latents: Annotated[Path, typer.Option(help="A `diffkit encode` .npz file.")],
    out: Annotated[Path, typer.Option(help="Output .npz ('samples', as `diffkit sample`).")] = Path(
        "samples.npz"
    ),
) -> None:
    """Decode prior latents back to data (t_max -> t_min) with the settings they were encoded with."""
    out = check_writable(out, ".npz")
    z, config = _read_latents(latents)
    process, model = build_model(
        load_registry(), config["sde"], config["model"], config["sde_options"], config["model_options"]
    )
    check_data(z, model, config["model"])
    start = time.perf_counter()
    coded = decode(model, process, z, method=config["method"], rtol=config["rtol"], atol=config["atol"])
    seconds = time.perf_counter() - start
    write_samples(out, coded.x.cpu().numpy(), coded.nfe, seconds, config | {"decoded_from": str(latents)})
    typer.echo(json.dumps({"out": str(out), "num_samples": len(z), "nfe": coded.nfe}))
