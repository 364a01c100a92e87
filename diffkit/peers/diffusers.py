"""diffusers schedulers on diffkit's processes and models: config, timestep map, eps adapter, loop.

diffusers schedulers are discrete-time DDPM schedulers built from a beta table (no weights are
downloaded: `Scheduler(**config)`). They run on diffkit's `ddpm` / `ddpm-cosine` processes,
whose alpha_bar table is diffusers' `alphas_cumprod`, and on `vp` through the equivalent
linear-beta table (`beta_start = beta_min / N`, `beta_end = beta_max / N`, N = 1000): the peer
then runs its own discretisation of the same VP SDE, i.e. diffkit's `ddpm` process with those
betas (`peer_process_options`).

- `diffusers_time(process, k)` -> diffkit time t = (k + 1) / N of integer timestep k
  (diffusers' `alphas_cumprod[k]` is diffkit's knot alpha_bar at t = (k + 1) / N).
- `scheduler_times(scheduler, process)` -> the diffkit time of every timestep of a prepared
  scheduler: the knot for integer timesteps, and for the fractional timesteps of the
  sigma-space schedulers (Heun, Euler) the time whose sigma / alpha is the scheduler's own
  `sigmas[j]`, i.e. the noise level the scheduler scales the input to.
- `diffusers_eps(model, process)` -> `eps(x, k)`, a diffusers-style noise predictor.
- `run_scheduler(...)` -> the standard diffusers loop (`init_noise_sigma`,
  `scale_model_input`, model, `step`) with the model evaluated at `scheduler_times`.

Note: diffusers stores `betas` and `alphas_cumprod` in float32, so its tables agree with
diffkit's float64 ones only to float32 resolution (about 4e-7 relative).
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from typing import Any

import torch

from diffkit.core.model import ScoreModel
from diffkit.core.process import NoiseProcess, discrete_process
from diffkit.core.shapes import batch_times
from diffkit.core.traits import traits_of
from diffkit.peers.availability import PeerNotInstalled, require
from diffkit.solvers.edm import log_snr_of_sigma_scaled

#: training steps N of the linear-beta table diffusers gets for a continuous VP process
VP_TRAIN_STEPS = 1000

EpsFunction = Callable[[torch.Tensor, "torch.Tensor | int"], torch.Tensor]


def load_diffusers() -> types.ModuleType:
    """The `diffusers` module; PeerNotInstalled if it is absent or cannot be imported."""
    require("diffusers")
    try:
        return importlib.import_module("diffusers")
    except ImportError as error:
        raise PeerNotInstalled(f"peer 'diffusers': diffusers cannot be imported: {error}") from None


def _is_discrete(process: NoiseProcess) -> bool:
    return discrete_process(process) is not None


def peer_process_options(process: NoiseProcess) -> dict[str, Any] | None:
    """Options of the diffkit `ddpm` process a diffusers peer runs for a continuous VP `process`.

    Returns None for a discrete process (the peer runs on it as it is).

    Raises:
        ValueError: neither discrete nor a variance-preserving linear-beta process (VE, sub-VP).
    """
    if _is_discrete(process):
        return None
    vp = traits_of(process).variance_preserving
    if vp and hasattr(process, "beta_min") and hasattr(process, "beta_max"):
        n = VP_TRAIN_STEPS
        return {"num_steps": n, "beta_start": process.beta_min / n, "beta_end": process.beta_max / n}
    raise ValueError("diffusers schedulers are discrete DDPM: they run on vp, ddpm or ddpm-cosine")


def diffusers_config(process: NoiseProcess) -> dict[str, Any]:
    """Scheduler keyword arguments reproducing a diffkit `ddpm` or `ddpm-cosine` process."""
    if not _is_discrete(process):
        raise ValueError(f"diffusers schedulers need a discrete process, got {type(process).__name__}")
    config: dict[str, Any] = {"num_train_timesteps": process.num_steps}
    if hasattr(process, "beta_start"):
        config.update(beta_schedule="linear", beta_start=process.beta_start, beta_end=process.beta_end)
    elif getattr(process, "s", None) == 0.008:
        config.update(beta_schedule="squaredcos_cap_v2")  # diffusers hard-codes s = 0.008
    else:
        raise ValueError(f"no diffusers beta_schedule matches {process!r}")
    return config


def diffusers_time(process: NoiseProcess, k: torch.Tensor | int) -> torch.Tensor:
    """diffkit time t = (k + 1) / N (float64) of diffusers timestep k (int or tensor)."""
    k = torch.as_tensor(k)
    return (k.to(torch.float64) + 1.0) / process.num_steps


def diffusers_eps(model: ScoreModel, process: NoiseProcess) -> EpsFunction:
    """Diffusers-style noise predictor eps(x, k) at integer timesteps of a discrete process."""
    diffusers_config(process)  # validates the process

    def eps(x: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
        """eps prediction `(B, *dims)` at diffusers timestep k (int, 0-dim or `(B,)`)."""
        t = batch_times(diffusers_time(process, torch.as_tensor(k).to(x.device)), x)
        return model.predict(x, t).eps

    return eps


def scheduler_times(scheduler: Any, process: NoiseProcess) -> torch.Tensor:
    """diffkit time `(T,)` (float64) of each of a prepared scheduler's T timesteps.

    Integer timesteps are knots (`diffusers_time`); fractional ones (Heun, Euler) are mapped
    through the scheduler's own `sigmas[j]` = sigma / alpha at step j.
    """
    timesteps = scheduler.timesteps
    if not torch.is_floating_point(timesteps) or bool((timesteps == timesteps.round()).all()):
        return diffusers_time(process, timesteps.round().long().cpu())
    sigmas = torch.as_tensor(scheduler.sigmas[: len(timesteps)]).to("cpu", torch.float64)
    return process.t_from_log_snr(log_snr_of_sigma_scaled(sigmas))


def run_scheduler(
    scheduler: Any, model: ScoreModel, times: torch.Tensor, x: torch.Tensor, **step_kwargs: Any
) -> torch.Tensor:
    """The diffusers sampling loop from prior noise `x` `(B, *dims)`; returns the final sample.

    Args:
        scheduler: a scheduler after `set_timesteps`.
        model: the eps oracle, evaluated at `times[j]` for the j-th timestep.
        times: `scheduler_times(scheduler, process)` on x's device.
        x: prior noise (unit variance: multiplied by `init_noise_sigma` here).
        step_kwargs: extra arguments of `scheduler.step` (e.g. `eta`, `generator`).
    """
    x = x * scheduler.init_noise_sigma
    for j, timestep in enumerate(scheduler.timesteps):
        eps = model.predict(scheduler.scale_model_input(x, timestep), times[j]).eps
        x = scheduler.step(eps, timestep, x, **step_kwargs).prev_sample
    return x
