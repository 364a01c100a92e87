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

from diffkit.cli.common import given, handle_errors, load_registry
from diffkit.core.errors import UsageError
from diffkit.core.process import NoiseProcess, discrete_process
from diffkit.eval.encoding import decode, encode
from diffkit.eval.likelihood_eval import build_model, check_data
from diffkit.plugin import validate
from diffkit.plugin.options import split_key_values
from diffkit.run.io import check_writable, make_parent, read_real, write_samples, write_with

LATENT_KEYS = ("model", "sde", "sde_options", "model_options", "method", "rtol", "atol")


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
    _method(method)
    if method == "ddim" and given("rtol", "atol"):
        raise UsageError("--rtol and --atol apply to --method ode only; DDIM inversion has fixed steps")
    validate.positive_finite("--rtol", rtol)
    validate.positive_finite("--atol", atol)
    points = torch.from_numpy(read_real(data, "--data"))
    config: dict[str, Any] = {
        "model": model,
        "sde": sde,
        "sde_options": split_key_values(sde_opt or [], "--sde-opt"),
        "model_options": split_key_values(model_opt or [], "--model-opt"),
        "method": method,
        "rtol": rtol,
        "atol": atol,
    }
    process, score_model = build_model(
        load_registry(), sde, model, config["sde_options"], config["model_options"]
    )
    _check_method(method, process, sde)
    check_data(points, score_model, model)
    out = check_writable(out, ".npz")
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

    write_with(make_parent(out), writer)
    typer.echo(json.dumps({"out": str(out), "num_samples": len(points), "nfe": coded.nfe}))


def _check_method(method: str, process: NoiseProcess, sde: str) -> None:
    """UsageError unless `method` can run on `process` (DDIM inversion needs a discrete one)."""
    if method == "ddim" and discrete_process(process) is None:
        raise UsageError(f"--method ddim needs a discrete process (ddpm, ddpm-cosine), not {sde!r}")


def _read_latents(path: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """The latents `(N, *data_shape)` and the checked config of a `diffkit encode` file."""
    name = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise UsageError(f"{name!r} is a single array, not a `diffkit encode` .npz file")
        with archive:
            if not {"latents", "config"} <= set(archive.files):
                raise UsageError(f"{name!r} is not a `diffkit encode` .npz file (no 'latents' and 'config')")
            latents, text = archive["latents"], str(archive["config"])
    except FileNotFoundError:
        raise UsageError(f"file not found: {name!r}") from None
    except UsageError:
        raise
    except Exception as error:  # numpy and zipfile raise many types for a damaged file
        raise UsageError(f"cannot read {name!r}: corrupt or not a numpy file ({error})") from None
    try:
        config = json.loads(text)
    except ValueError:
        raise UsageError(f"{name!r}: its config is not valid JSON") from None
    return torch.from_numpy(validate.real_array(latents, f"--latents {name!r}")), _check_config(config, name)


def _check_config(config: Any, name: str) -> dict[str, Any]:
    """The config of a latents file if every field `decode` reads has the right type and range."""
    if not isinstance(config, dict):
        raise UsageError(f"{name!r}: its config must be a JSON object, got {type(config).__name__}")
    missing = [key for key in LATENT_KEYS if key not in config]
    if missing:
        raise UsageError(f"{name!r}: its config lacks {', '.join(missing)}")
    for key in ("model", "sde"):
        if not isinstance(config[key], str):
            raise UsageError(f"{name!r}: config {key!r} must be a string, got {config[key]!r}")
    for key in ("sde_options", "model_options"):
        if not isinstance(config[key], dict):
            raise UsageError(f"{name!r}: config {key!r} must be an object, got {config[key]!r}")
    if config["method"] not in ("ode", "ddim"):
        raise UsageError(f"{name!r}: config 'method' must be ode or ddim, got {config['method']!r}")
    for key in ("rtol", "atol"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{name!r}: config {key!r} must be a number, got {value!r}")
        validate.positive_finite(f"{name!r}: config {key!r}", float(value))
    return config


@handle_errors
def decode_command(
    latents: Annotated[Path, typer.Option(help="A `diffkit encode` .npz file.")],
    out: Annotated[Path, typer.Option(help="Output .npz ('samples', as `diffkit sample`).")] = Path(
        "samples.npz"
    ),
) -> None:
    """Decode prior latents back to data (t_max -> t_min) with the settings they were encoded with."""
    z, config = _read_latents(latents)
    process, model = build_model(
        load_registry(), config["sde"], config["model"], config["sde_options"], config["model_options"]
    )
    _check_method(config["method"], process, config["sde"])
    check_data(z, model, config["model"])
    out = check_writable(out, ".npz")
    start = time.perf_counter()
    coded = decode(model, process, z, method=config["method"], rtol=config["rtol"], atol=config["atol"])
    seconds = time.perf_counter() - start
    record = config | {"decoded_from": str(latents)}
    write_samples(make_parent(out), coded.x.cpu().numpy(), coded.nfe, seconds, record)
    typer.echo(json.dumps({"out": str(out), "num_samples": len(z), "nfe": coded.nfe}))
