"""Conditional flow matching: regress the velocity u = dx_t/dt of the path x_t = alpha x0 + sigma eps.

For data x0 and noise eps the path `x_t = alpha(t) x0 + sigma(t) eps` moves with the conditional
velocity `u = alpha'(t) x0 + sigma'(t) eps`; its regression onto x_t gives the marginal velocity
`E[u | x_t]`, the probability-flow ODE's drift (Lipman et al. 2023, "Flow Matching for Generative
Modeling", Thm. 2; Liu et al. 2023, rectified flow). On `flow` (alpha = 1 - t, sigma = t) the
target is `eps - x0`. The rates come from the process (`Prediction.d_alpha`, `d_sigma`), so the
loss is defined on every linear-Gaussian process and for every parameterization (the model's
output is converted to its velocity).

Times are uniform on the process's range, or logit-normal as in Stable Diffusion 3 (Esser et al.
2024, sec. 3.1, eq. 19): `t = sigmoid(n)`, n ~ N(logit_mean, logit_std^2), mapped affinely onto
[t_min, t_max], which puts more weight on intermediate times.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from diffkit.core.model import ScoreModel
from diffkit.core.parameterization import velocity_from_eps_x0
from diffkit.losses.dsm import perturb, uniform_times

TimeSampling = Literal["uniform", "logit-normal"]
TIME_SAMPLINGS: tuple[str, ...] = ("uniform", "logit-normal")


def logit_normal_times(
    process: Any,
    batch: int,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """t = t_min + (t_max - t_min) sigmoid(n), n ~ N(logit_mean, logit_std^2): `(B,)` float64 (SD3)."""
    if not logit_std > 0:
        raise ValueError(f"logit_std must be positive, got {logit_std}")
    n = torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
    u = torch.sigmoid(logit_mean + logit_std * n)
    return process.t_min + (process.t_max - process.t_min) * u


def flow_matching_times(
    process: Any,
    batch: int,
    *,
    time_sampling: TimeSampling = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Training times `(B,)` float64: uniform on [t_min, t_max] or logit-normal (`logit_normal_times`)."""
    if time_sampling == "uniform":
        return uniform_times(process, batch, generator=generator, device=torch.device(device))
    if time_sampling == "logit-normal":
        return logit_normal_times(
            process, batch, logit_mean=logit_mean, logit_std=logit_std, generator=generator, device=device
        )
    raise ValueError(f"time_sampling must be one of {', '.join(TIME_SAMPLINGS)}; got {time_sampling!r}")


def flow_matching(
    model: ScoreModel,
    x0: torch.Tensor,
    *,
    time_sampling: TimeSampling = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: torch.Generator | None = None,
    cond: Any = None,
) -> torch.Tensor:
    """Conditional flow-matching loss `||u_theta(x_t, t) - (alpha' x0 + sigma' eps)||^2` (Lipman et al. 2023).

    Draws t (see `flow_matching_times`), then eps, forms `x_t = alpha x0 + sigma eps` and compares
    the model's velocity with the conditional one; the squared error is averaged over the data
    dimensions, as `l_simple` does.

    Args:
        model: the score model (a `velocity` network regresses its output directly).
        x0: clean data `(B, *dims)`.
        time_sampling: "uniform" or "logit-normal".
        logit_mean, logit_std: location and scale of the logit-normal times.
        generator: source of the times and the noise.
        cond: conditioning passed to the model.

    Returns:
        per-sample losses `(B,)` in `x0`'s dtype.
    """
    t = flow_matching_times(
        model.process,
        x0.shape[0],
        time_sampling=time_sampling,
        logit_mean=logit_mean,
        logit_std=logit_std,
        generator=generator,
        device=x0.device,
    )
    prediction, eps = perturb(model, x0, t, generator, cond)
    target = velocity_from_eps_x0(eps, x0, prediction.d_alpha, prediction.d_sigma)
    return (prediction.velocity - target).square().flatten(1).mean(1)


__all__ = ["TIME_SAMPLINGS", "flow_matching", "flow_matching_times", "logit_normal_times"]
