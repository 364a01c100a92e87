"""`diffusers:<PATH>` models: a local diffusers `UNet2DModel` folder as a diffkit `ScoreModel`.

diffusers trains on a discrete DDPM table `alphas_cumprod[k]`, k = 0..N-1, which is diffkit's
knot alpha_bar at t = (k + 1) / N on the `ddpm` (linear betas) or `ddpm-cosine`
(`squaredcos_cap_v2`, s = 0.008) process. The model is therefore evaluated at the fractional
timestep `k = t N - 1` (exact on the knots; continuous solvers in between see the UNet's
sinusoidal embedding at a fractional k, as in k-diffusion's `DiscreteEpsDDPMDenoiser`).

The schedule and parameterization come from the folder's `scheduler_config.json` if present
(`beta_schedule`, `beta_start`, `beta_end`, `num_train_timesteps`, `prediction_type`,
`variance_type`), else diffusers' defaults (linear 1e-4..0.02, N = 1000, epsilon); the model
options `prediction_type` (eps|v|x0|flow_prediction) and `beta_schedule` (linear|squaredcos_cap_v2)
override them. `--sde` must be the process of that schedule: a mismatch is refused, naming both.
A UNet with twice the input channels and `variance_type="learned_range"` is improved DDPM's
learned variance (Nichol & Dhariwal 2021, eq. 15, with v = (raw + 1) / 2), used by `ancestral`.

Flow-matching models (a `FlowMatch*` scheduler, or `prediction_type="flow_prediction"`) run on
the `flow` process (alpha = 1 - sigma): the UNet sees timestep sigma N and predicts
w = eps - x0 = dx/dsigma, diffkit's `velocity` up to the factor dsigma/dt of a shifted time
(`shift`: SD3's sigma' = s sigma / (1 + (s - 1) sigma), from the config's `shift` or `flow_shift`,
or the model option `shift`). `--sde` must be `flow` with that shift (with
`use_dynamic_shifting`, any shift: it depends on the resolution, `--sde-opt mu=...`).

Nothing is downloaded: the folder is read with `local_files_only=True`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffkit import NoiseProcess, Registrar, ScoreModel, UsageError, hookimpl
from diffkit.peers import diffusers_config

PREFIX = "diffusers"
_KINDS = {"epsilon": "eps", "eps": "eps", "v_prediction": "v", "v": "v", "sample": "x0", "x0": "x0"}
_SCHEDULES = ("linear", "squaredcos_cap_v2")
_DEFAULTS: dict[str, Any] = {
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
}


class UNetNetwork(nn.Module):
    """A diffusers `UNet2DModel` as a diffkit network `(x, k, cond) -> output` (k: fractional timestep)."""

    def __init__(self, unet: nn.Module, *, learned_range: bool = False) -> None:
        super().__init__()
        self.unet = unet
        self.learned_range = learned_range

    def forward(self, x: torch.Tensor, time_input: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """UNet output `(B, C or 2C, H, W)` in `x`'s dtype; the UNet runs in its own dtype."""
        weight = next(self.unet.parameters())
        if weight.device != x.device:
            self.unet.to(x.device)
        inputs = x.to(weight.dtype)
        output = self.unet(inputs, time_input.to(weight.dtype), class_labels=cond, return_dict=False)[0]
        if self.learned_range:  # improved DDPM's raw variance output in [-1, 1] -> v in [0, 1]
            mean, raw = output.chunk(2, dim=1)
            output = torch.cat([mean, (raw + 1.0) / 2.0], dim=1)
        return output.to(x.dtype)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {str(path)!r}: {error}") from None
    if not isinstance(record, dict):
        raise UsageError(f"{str(path)!r} is not a JSON object")
    return record


def scheduler_settings(folder: Path, overrides: dict[str, str | None]) -> dict[str, Any]:
    """The schedule and prediction settings of a diffusers folder, with option overrides applied."""
    settings = dict(_DEFAULTS)
    config = folder / "scheduler_config.json"
    if not config.is_file():
        config = folder.parent / "scheduler" / "scheduler_config.json"  # a pipeline's unet/ folder
    if config.is_file():
        settings.update({k: v for k, v in _read_json(config).items() if k in _DEFAULTS})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings["prediction_type"] not in _KINDS:
        raise UsageError(
            f"unsupported prediction_type {settings['prediction_type']!r}; "
            "expected eps, v, x0 or flow_prediction"
        )
    if settings["beta_schedule"] not in _SCHEDULES:
        raise UsageError(
            f"unsupported beta_schedule {settings['beta_schedule']!r}; diffkit maps {' or '.join(_SCHEDULES)}"
        )
    return settings


def _describe(config: dict[str, Any]) -> str:
    n = config["num_train_timesteps"]
    if config["beta_schedule"] == "linear":
        return f"ddpm (linear betas {config['beta_start']:g}..{config['beta_end']:g}, N={n})"
    return f"ddpm-cosine (squaredcos_cap_v2, N={n})"


def check_process(settings: dict[str, Any], process: NoiseProcess) -> None:
    """Refuse a process whose discrete table is not the model's training schedule (one line, naming both)."""
    wanted = _describe(settings)
    try:
        given = diffusers_config(process)
    except ValueError:
        given = None
    same = given is not None and given.get("beta_schedule") == settings["beta_schedule"]
    same = same and int(given["num_train_timesteps"]) == int(settings["num_train_timesteps"])
    if same and settings["beta_schedule"] == "linear":
        same = all(
            math.isclose(given[k], float(settings[k]), rel_tol=1e-6) for k in ("beta_start", "beta_end")
        )
    if not same:
        actual = _describe(given) if given is not None else f"{type(process).__name__} (not a discrete DDPM)"
        command = "ddpm" if settings["beta_schedule"] == "linear" else "ddpm-cosine"
        keys = ("beta_start", "beta_end") if command == "ddpm" else ()
        wanted_options = {k: settings[k] for k in keys} | {"num_steps": settings["num_train_timesteps"]}
        defaults = {k: _DEFAULTS[k] for k in keys} | {"num_steps": _DEFAULTS["num_train_timesteps"]}
        options = "".join(
            f" --sde-opt {k}={float(v):g}" for k, v in wanted_options.items() if float(v) != defaults[k]
        )
        raise UsageError(
            f"the UNet was trained on {wanted}, but --sde is {actual}; "
            f"sample it with --sde {command}{options}"
        )


def flow_settings(folder: Path, prediction_type: str | None, shift: float | None) -> dict[str, Any] | None:
    """The flow-matching settings of a diffusers folder (scheduler, shift, dynamic), None if it is not one.

    A flow-matching model has a `FlowMatch*` scheduler or `prediction_type="flow_prediction"`
    (UniPC / DPM-Solver with `use_flow_sigmas`); the option `prediction_type` overrides both.
    """
    config = folder / "scheduler_config.json"
    if not config.is_file():
        config = folder.parent / "scheduler" / "scheduler_config.json"
    record = _read_json(config) if config.is_file() else {}
    scheduler = str(record.get("_class_name", "scheduler"))
    wanted = prediction_type or record.get("prediction_type")
    flow = wanted == "flow_prediction" if wanted is not None else scheduler.startswith("FlowMatch")
    if not flow:
        return None
    given = shift if shift is not None else record.get("shift", record.get("flow_shift", 1.0))
    if not (isinstance(given, (int, float)) and math.isfinite(given) and given > 0):
        raise UsageError(f"shift must be a positive number, got {given!r}")
    dynamic = bool(record.get("use_dynamic_shifting", False)) and shift is None
    n = int(record.get("num_train_timesteps", _DEFAULTS["num_train_timesteps"]))
    return {"scheduler": scheduler, "shift": float(given), "dynamic": dynamic, "num_train_timesteps": n}


def check_flow_process(settings: dict[str, Any], process: NoiseProcess) -> None:
    """Refuse a process that is not the flow path alpha = 1 - sigma with the model's shift (one line)."""
    t = torch.linspace(process.t_min, process.t_max, 9, dtype=torch.float64)[1:-1]
    alpha, sigma = process.alpha(t).double(), process.sigma(t).double()
    s = settings["shift"]
    flow_path = bool(torch.allclose(alpha + sigma, torch.ones_like(t), rtol=0, atol=1e-9))
    same = flow_path and (
        settings["dynamic"] or bool(torch.allclose(sigma, s * t / (1 + (s - 1) * t), rtol=1e-9, atol=1e-12))
    )
    if not same:
        wanted = "any shift: --sde-opt mu=MU" if settings["dynamic"] else f"shift={s:g}"
        flags = " --sde-opt mu=MU" if settings["dynamic"] else ("" if s == 1.0 else f" --sde-opt shift={s:g}")
        raise UsageError(
            f"the UNet is a flow-matching model ({settings['scheduler']}, {wanted}), but --sde is "
            f"{process}; sample it with --sde flow{flags}"
        )


class FlowUNetNetwork(nn.Module):
    """A flow-matching UNet as a diffkit velocity network: dsigma/dt * unet(x, sigma(t) N) on a flow path.

    diffusers' flow models predict w = eps - x0 = dx/dsigma at timestep sigma N; on a process with
    alpha = 1 - sigma(t), dx/dt = sigma'(t) w, with sigma' = -alpha' = -f alpha (f = d log alpha / dt).
    `process` is the process whose time the network receives (`ScoreModel.network_process`: on a
    shifted `flow` the base `flow`, where sigma = t and the factor is 1).
    """

    def __init__(self, unet: nn.Module, num_train_timesteps: int) -> None:
        super().__init__()
        self.network = UNetNetwork(unet)
        self.num_train_timesteps = num_train_timesteps
        self.process: NoiseProcess | None = None  # set by `_flow_model` once the ScoreModel exists

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Velocity `(B, C, H, W)` at times `t` `(B,)` of `process`, in `x`'s dtype."""
        if self.process is None:
            raise RuntimeError("FlowUNetNetwork called before its process was set")
        times = t.double()
        sigma = self.process.sigma(times)
        d_sigma = -self.process.f(times) * self.process.alpha(times)
        w = self.network(x, (sigma * self.num_train_timesteps).to(t.dtype), cond)
        return w * d_sigma.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


#: Weight files that unpickle (run code) when loaded: refused, whatever their content.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _load_unet(folder: Path) -> nn.Module:
    """The UNet2DModel of `folder`, from its safetensors weights only (pickled weights are refused)."""
    if importlib.util.find_spec("diffusers") is None:
        raise UsageError(
            "diffusers models need the diffusers package, which is not installed (pip install diffusers)"
        )
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        found = f"only pickled weights ({', '.join(pickles)})" if pickles else "no weights file"
        raise UsageError(
            f"{str(folder)!r} has {found}; diffkit loads safetensors only, never pickles "
            "(convert them with diffusers' save_pretrained(safe_serialization=True))"
        )
    diffusers = importlib.import_module("diffusers")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(
            str(folder), local_files_only=True, low_cpu_mem_usage=False, use_safetensors=True
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"cannot load a diffusers UNet2DModel from {str(folder)!r}: {first}") from None
    return unet.eval().requires_grad_(False)


def diffusers_model(path: str) -> Callable[..., ScoreModel]:
    """The `diffusers:<path>` factory: `factory(process, *, prediction_type, beta_schedule) -> ScoreModel`."""

    def factory(
        process: NoiseProcess,
        *,
        prediction_type: str | None = None,
        beta_schedule: str | None = None,
        shift: float | None = None,
    ) -> ScoreModel:
        """A local diffusers UNet2DModel folder (eps, v, x0 or flow prediction) on its process."""
        if not path:
            raise UsageError("no folder given: use diffusers:<PATH> (a local UNet2DModel folder)")
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            what = "has no config.json" if folder.is_dir() else "does not exist"
            raise UsageError(f"folder {str(folder)!r} {what} (need a diffusers UNet2DModel folder)")
        flow = flow_settings(folder, prediction_type, shift)
        if flow is not None:
            return _flow_model(folder, flow, process)
        settings = scheduler_settings(
            folder, {"prediction_type": prediction_type, "beta_schedule": beta_schedule}
        )
        check_process(settings, process)
        unet = _load_unet(folder)
        channels, size = int(unet.config.in_channels), unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        out_channels = int(unet.config.out_channels)
        learned = out_channels == 2 * channels
        if learned and settings["variance_type"] != "learned_range":
            raise UsageError(
                f"the UNet outputs 2x{channels} channels with variance_type "
                f"{settings['variance_type']!r}; diffkit supports learned_range"
            )
        if out_channels not in (channels, 2 * channels):
            raise UsageError(f"the UNet maps {channels} channels to {out_channels}; expected {channels}")
        n = int(settings["num_train_timesteps"])
        return ScoreModel(
            UNetNetwork(unet, learned_range=learned),
            kind=_KINDS[settings["prediction_type"]],
            process=process,
            data_shape=(channels, height, width),
            time_input=lambda t: t * n - 1.0,  # diffusers' alphas_cumprod[k] is the knot at t = (k + 1) / N
            learned_variance=learned,
        )

    return factory


def _flow_model(folder: Path, flow: dict[str, Any], process: NoiseProcess) -> ScoreModel:
    """A flow-matching UNet2DModel folder as a velocity model on `process` (checked to be its flow)."""
    check_flow_process(flow, process)
    unet = _load_unet(folder)
    channels, size = int(unet.config.in_channels), unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if int(unet.config.out_channels) != channels:
        raise UsageError(
            f"the UNet maps {channels} channels to {unet.config.out_channels}; expected {channels}"
        )
    network = FlowUNetNetwork(unet, flow["num_train_timesteps"])
    model = ScoreModel(network, kind="velocity", process=process, data_shape=(channels, height, width))
    network.process = model.network_process
    return model


@hookimpl
def diffkit_resolve(kind: str, name: str) -> Callable[..., Any] | None:
    """Resolve `diffusers:<PATH>` models (a local UNet2DModel folder)."""
    prefix, sep, path = name.partition(":")
    if kind != "model" or prefix != PREFIX or not sep:
        return None
    return diffusers_model(path)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Announce the `diffusers:<PATH>` model family."""
    registrar.add_family(
        "model",
        PREFIX,
        ["<PATH>"],
        summary="a local diffusers UNet2DModel folder on its ddpm or flow process",
    )
