"""Encoding data to prior latents and decoding them back (a deterministic, invertible map).

Song et al. 2021 ("Score-Based Generative Modeling through SDEs", sec. 4.3): the
probability-flow ODE `dx/dt = f(t) x - g(t)^2 score(x, t) / 2` is a bijection between data at
t_min and latents at t_max; `encode` integrates it forward in t, `decode` backward, both with an
adaptive torchdiffeq solver whose tolerances set the round-trip error. On discrete processes
DDIM inversion (Song, Meng & Ermon 2021, eq. 12 with eta = 0, run upward over the process's N
knots) is the classical alternative: `x_next = alpha_next x0_hat + sigma_next eps_hat` with the
predictions taken at the current point, so it inverts decoding only up to the first-order error
of the step (small for N = 1000, not to solver tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torchdiffeq

from diffkit.core.model import ScoreModel
from diffkit.core.precision import schedule_dtype
from diffkit.core.process import NoiseProcess, discrete_process
from diffkit.solvers.dynamics import probability_flow_drift

EncodeMethod = Literal["ode", "ddim"]


@dataclass(frozen=True)
class Coded:
    """Result of `encode` or `decode`: the output `(B, *dims)` and the model calls it took."""

    x: torch.Tensor
    nfe: int


class _Flow:
    """`t, x -> ` the probability-flow drift with t clamped to the process range (first-step probe)."""

    def __init__(self, model: ScoreModel, process: NoiseProcess) -> None:
        self.model, self.process = model, process

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.to(schedule_dtype(t.device)).clamp(self.process.t_min, self.process.t_max)
        with torch.no_grad():
            return probability_flow_drift(self.process, self.model.predict(x, t), t)


def _ode(
    model: ScoreModel, process: NoiseProcess, x: torch.Tensor, t0: float, t1: float, rtol: float, atol: float
) -> Coded:
    times = torch.tensor([t0, t1], dtype=schedule_dtype(x.device), device=x.device)
    start = model.nfe
    options = {"step_t": times[-1:], "dtype": times.dtype}
    out = torchdiffeq.odeint(_Flow(model, process), x, times, rtol=rtol, atol=atol, options=options)
    return Coded(out[-1], model.nfe - start)


def ddim_times(process: NoiseProcess) -> torch.Tensor:
    """Ascending float64 knots `(N,)` of a discrete process (`discrete_times`), t_min to t_max."""
    discrete = discrete_process(process)
    if discrete is None:
        raise ValueError(f"DDIM inversion needs a discrete process, got {type(process).__name__}")
    return discrete.discrete_times.to(torch.float64)


def ddim_walk(model: ScoreModel, process: NoiseProcess, x: torch.Tensor, times: torch.Tensor) -> Coded:
    """Deterministic DDIM over `times` (ascending: inversion; descending: decoding), DDIM eq. 12.

    Args:
        model: score model.
        process: its (discrete) process.
        x: state `(B, *dims)` at `times[0]`.
        times: float64 `(K,)` monotone times.

    Returns:
        the state at `times[-1]` and the model calls (K - 1).
    """
    start = model.nfe
    alpha, sigma = process.alpha(times), process.sigma(times)
    for i in range(len(times) - 1):
        with torch.no_grad():
            prediction = model.predict(x, times[i])
        x0, eps = prediction.x0, prediction.eps
        x = alpha[i + 1].to(x.dtype) * x0 + sigma[i + 1].to(x.dtype) * eps
    return Coded(x, model.nfe - start)


def encode(
    model: ScoreModel,
    process: NoiseProcess,
    x: torch.Tensor,
    *,
    method: EncodeMethod = "ode",
    rtol: float = 1e-7,
    atol: float = 1e-7,
) -> Coded:
    """Map data `x` `(B, *dims)` at t_min to latents at t_max (PF-ODE forward, or DDIM inversion)."""
    if method == "ode":
        return _ode(model, process, x, process.t_min, process.t_max, rtol, atol)
    if method == "ddim":
        return ddim_walk(model, process, x, ddim_times(process).to(x.device))
    raise ValueError(f"encode method must be ode or ddim, got {method!r}")


def decode(
    model: ScoreModel,
    process: NoiseProcess,
    z: torch.Tensor,
    *,
    method: EncodeMethod = "ode",
    rtol: float = 1e-7,
    atol: float = 1e-7,
) -> Coded:
    """Map latents `z` `(B, *dims)` at t_max back to data at t_min (the inverse of `encode`)."""
    if method == "ode":
        return _ode(model, process, z, process.t_max, process.t_min, rtol, atol)
    if method == "ddim":
        return ddim_walk(model, process, z, ddim_times(process).flip(0).to(z.device))
    raise ValueError(f"decode method must be ode or ddim, got {method!r}")


def relative_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample relative error `||x - y|| / ||y||` `(B,)`."""
    diff = (x - y).flatten(1).norm(dim=1)
    return diff / y.flatten(1).norm(dim=1).clamp_min(torch.finfo(y.dtype).tiny)


__all__ = ["Coded", "ddim_walk", "decode", "encode", "relative_error"]
