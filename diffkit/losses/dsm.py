"""Denoising regression objectives: NCSN DSM, continuous-time weighted DSM and L_simple.

All losses are pure functions of a `ScoreModel`, clean data `x0` `(B, *dims)` and a generator,
returning per-sample losses `(B,)` (average them for a minibatch objective). Draws happen in a
fixed order (times or levels first, then the noise), so two models evaluated with generators in
the same state see the same `(t, x_t)` pairs. The regression target follows from
`x_t = alpha(t) x0 + sigma(t) eps`: the conditional score is `grad log p_0t(x_t | x0) = -eps / sigma`,
so `sigma s_theta + eps = eps - eps_theta` for every parameterization.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from diffkit.core.model import Prediction, ScoreModel
from diffkit.core.process import discrete_process
from diffkit.core.shapes import sum_except_batch
from diffkit.solvers.ncsn import level_times

Weighting = Literal["standard", "likelihood"]
Target = Literal["eps", "x0", "v"]


def uniform_times(
    process: Any, batch: int, *, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """t ~ U[t_min, t_max] `(B,)` float64; on a `discrete` process, the knots i / N, i ~ U{1..N}."""
    discrete = discrete_process(process)
    if discrete is not None:
        index = torch.randint(1, discrete.num_steps + 1, (batch,), generator=generator, device=device)
        return index.to(torch.float64) / discrete.num_steps
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    return process.t_min + (process.t_max - process.t_min) * u


def perturb(
    model: ScoreModel, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None, cond: Any
) -> tuple[Prediction, torch.Tensor]:
    """Draw eps, form `x_t = alpha x0 + sigma eps` and evaluate the model: (prediction, eps)."""
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    mean, std = model.process.marginal(x0, t)
    return model.predict(mean + std * eps, t, cond), eps


def ncsn_dsm(
    model: ScoreModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    cond: Any = None,
) -> torch.Tensor:
    """Noise-conditional DSM with lambda(sigma) = sigma^2 (Song & Ermon 2019, eqs. 2 and 5-6).

    `l(sigma) = 1/2 E ||s_theta(x~, sigma) + (x~ - x) / sigma^2||^2` averaged over the levels with
    weight sigma^2, i.e. `1/2 ||sigma s_theta + z||^2`; one level per sample is drawn uniformly
    (an unbiased estimate of eq. 6's average over levels). A level is the noise-to-signal ratio
    sigma(t) / alpha(t) of the model's process (sigma itself on VE), reached at
    `t = level_times(process, sigmas)`; off VE the data is scaled by alpha(t) as the process says.

    Args:
        model: the score model (any parameterization).
        x0: clean data `(B, *dims)`.
        sigmas: the noise levels `(L,)`, e.g. `diffkit.solvers.ncsn.geometric_levels(...)`.
        generator: source of the level indices and the noise.
        cond: conditioning passed to the model.

    Returns:
        per-sample losses `(B,)` in `x0`'s dtype.
    """
    times = level_times(model.process, sigmas).to(x0.device)
    index = torch.randint(0, times.shape[0], (x0.shape[0],), generator=generator, device=x0.device)
    prediction, eps = perturb(model, x0, times[index], generator, cond)
    return 0.5 * sum_except_batch((prediction.eps - eps) ** 2)


def weighted_dsm(
    model: ScoreModel,
    x0: torch.Tensor,
    *,
    weighting: Weighting = "standard",
    importance: bool = False,
    generator: torch.Generator | None = None,
    cond: Any = None,
) -> torch.Tensor:
    """Continuous-time weighted DSM for a linear-Gaussian process (Song et al. 2021, eq. 7).

    `E_t[1/2 lambda(t) E ||s_theta(x_t, t) - grad log p_0t(x_t | x0)||^2]`, t ~ U[t_min, t_max]:

    * "standard": lambda = sigma(t)^2, i.e. `1/2 ||eps_theta - eps||^2`;
    * "likelihood": lambda = g(t)^2 (Song, Durkan, Murray & Ermon 2021, "Maximum Likelihood
      Training of Score-Based Diffusion Models", Thm. 1), i.e. `1/2 g^2/sigma^2 ||eps_theta - eps||^2`.
      Times `(t_max - t_min)` this estimates the score-matching part of their NLL bound (Thm. 1).

    With `importance=True` (likelihood only) t is drawn with density proportional to
    g^2 / sigma^2 = -d log-SNR / dt, i.e. uniformly in log-SNR, and the estimate becomes
    `1/2 (lambda(t_min) - lambda(t_max)) / (t_max - t_min) ||eps_theta - eps||^2`: the same
    expectation with far less variance (the weight g^2 / sigma^2 is huge near t_min).

    Args:
        model: the score model; its process supplies sigma(t), g(t) and log-SNR.
        x0: clean data `(B, *dims)`.
        weighting: "standard" or "likelihood".
        importance: importance-sample t (likelihood weighting only).
        generator: source of the times and the noise.
        cond: conditioning passed to the model.

    Returns:
        per-sample losses `(B,)` in `x0`'s dtype.
    """
    if weighting not in ("standard", "likelihood"):
        raise ValueError(f"weighting must be 'standard' or 'likelihood', got {weighting!r}")
    if importance and weighting != "likelihood":
        raise ValueError("importance sampling of t applies to the likelihood weighting only")
    process, batch = model.process, x0.shape[0]
    if importance:
        lam_hi = process.log_snr(torch.tensor(process.t_min, dtype=torch.float64))
        lam_lo = process.log_snr(torch.tensor(process.t_max, dtype=torch.float64))
        u = torch.rand(batch, generator=generator, device=x0.device, dtype=torch.float64)
        t = process.t_from_log_snr(lam_hi.to(x0.device) - u * (lam_hi - lam_lo).to(x0.device))
        span = float(lam_hi - lam_lo) / (process.t_max - process.t_min)
        weight = torch.full((batch,), span, dtype=torch.float64, device=x0.device)
    else:
        t = uniform_times(process, batch, generator=generator, device=x0.device)
        weight = torch.ones(batch, dtype=torch.float64, device=x0.device)
        if weighting == "likelihood":
            weight = process.diffusion_squared(t) / process.sigma(t) ** 2
    prediction, eps = perturb(model, x0, t, generator, cond)
    return 0.5 * weight.to(x0) * sum_except_batch((prediction.eps - eps) ** 2)


def simple_target(
    prediction: Prediction, eps: torch.Tensor, x0: torch.Tensor, target: Target
) -> torch.Tensor:
    """Squared error of the prediction against the true eps, x0 or v, averaged over dims: `(B,)`."""
    if target == "eps":
        error = prediction.eps - eps
    elif target == "x0":
        error = prediction.x0 - x0
    elif target == "v":
        error = prediction.v - (prediction.alpha * eps - prediction.sigma * x0)
    else:
        raise ValueError(f"target must be one of eps, x0, v; got {target!r}")
    return error.square().flatten(1).mean(1)


def l_simple(
    model: ScoreModel,
    x0: torch.Tensor,
    *,
    target: Target = "eps",
    generator: torch.Generator | None = None,
    cond: Any = None,
) -> torch.Tensor:
    """L_simple = E_{t, x0, eps} ||eps - eps_theta(x_t, t)||^2 (Ho et al. 2020, eq. 14).

    t is uniform on the knots i / N of a `discrete` process (DDPM's t ~ U{1..T}) and on
    [t_min, t_max] otherwise. `target="x0"` regresses E[x0 | x_t] (Ho et al. 2020, sec. 3.2) and
    `target="v"` the velocity `v = alpha eps - sigma x0` (Salimans & Ho 2022, sec. 4 / App. D);
    the model's own parameterization is converted, so any kind trains on any target.
    The squared error is averaged over the data dimensions (DDPM's `mean_flat`).

    Args:
        model: the score model.
        x0: clean data `(B, *dims)`.
        target: "eps", "x0" or "v".
        generator: source of the times and the noise.
        cond: conditioning passed to the model.

    Returns:
        per-sample losses `(B,)` in `x0`'s dtype.
    """
    t = uniform_times(model.process, x0.shape[0], generator=generator, device=x0.device)
    prediction, eps = perturb(model, x0, t, generator, cond)
    return simple_target(prediction, eps, x0, target)


__all__ = ["l_simple", "ncsn_dsm", "perturb", "simple_target", "uniform_times", "weighted_dsm"]
