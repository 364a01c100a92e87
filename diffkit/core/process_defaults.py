"""Defaults derivable from alpha(t) and sigma(t), as plain functions of a process.

Everything the `NoiseProcess` Protocol lists beyond `alpha` and `sigma` follows from them
(Song et al. 2021, "Score-Based Generative Modeling through SDEs", eqs. 5-6 and App. B):

    f(t)   = d log alpha / dt,    g(t)^2 = d sigma^2 / dt - 2 f(t) sigma(t)^2,
    lambda(t) = 2 log(alpha / sigma),    x_t | x0 ~ N(alpha x0, sigma^2 I),

so a process can be written without a base class: it implements `alpha` and `sigma` as
differentiable torch functions of t and delegates the rest, e.g. `def f(self, t): return
derived_f(self, t)`. Derivatives come from autograd in the schedule dtype (float64; float32 on
MPS); results are cast to the dtype of `t` like every schedule function. `LinearGaussianProcess`
uses the same marginal, drift and prior functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch

from diffkit.core.precision import as_schedule_tensor, result_dtype
from diffkit.core.shapes import append_dims, batch_times, sum_except_batch


class Schedule(Protocol):
    """What the derivations read: the time range and alpha(t), sigma(t) (shaped like `t`)."""

    t_min: float
    t_max: float

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """Signal scale alpha(t)."""

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise scale sigma(t)."""


def _value_and_slope(
    fn: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fn(t)` and `d fn / dt` of an elementwise differentiable function, both in the schedule dtype."""
    s = as_schedule_tensor(t).detach().requires_grad_(True)
    with torch.enable_grad():
        value = fn(s)
        if not value.requires_grad:  # constant in t, e.g. alpha = 1 of a VE process
            return value.detach(), torch.zeros_like(s)
        (slope,) = torch.autograd.grad(value.sum(), s, allow_unused=True)
    return value.detach(), torch.zeros_like(s) if slope is None else slope


def derived_f(process: Schedule, t: torch.Tensor | float) -> torch.Tensor:
    """Drift coefficient f(t) = alpha'(t) / alpha(t), shaped like `t`."""
    alpha, d_alpha = _value_and_slope(process.alpha, t)
    return (d_alpha / alpha).to(result_dtype(t))


def derived_diffusion_squared(process: Schedule, t: torch.Tensor | float) -> torch.Tensor:
    """g(t)^2 = d sigma^2 / dt - 2 f sigma^2 = 2 sigma (sigma' - f sigma), shaped like `t`."""
    alpha, d_alpha = _value_and_slope(process.alpha, t)
    sigma, d_sigma = _value_and_slope(process.sigma, t)
    return (2.0 * sigma * (d_sigma - d_alpha / alpha * sigma)).to(result_dtype(t))


def derived_diffusion(process: Schedule, t: torch.Tensor | float) -> torch.Tensor:
    """g(t) = sqrt(max(g(t)^2, 0)), shaped like `t`."""
    return derived_diffusion_squared(process, as_schedule_tensor(t)).clamp_min(0.0).sqrt().to(result_dtype(t))


def derived_log_snr(process: Schedule, t: torch.Tensor | float) -> torch.Tensor:
    """lambda(t) = 2 (log alpha - log sigma), shaped like `t`."""
    s = as_schedule_tensor(t)
    return (2.0 * (torch.log(process.alpha(s)) - torch.log(process.sigma(s)))).to(result_dtype(t))


def invert_decreasing(
    fn: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor, lo: float, hi: float
) -> torch.Tensor:
    """The t in [lo, hi] with fn(t) = target, for strictly decreasing `fn`, by 80 bisections.

    Args:
        fn: elementwise, strictly decreasing on [lo, hi] (a log-SNR).
        target: values to invert, any shape, schedule dtype.
        lo, hi: the bracket (t_min, t_max).

    Returns:
        t shaped like `target` (2^-80 of the bracket: below float64 resolution).
    """
    low = torch.full_like(target, lo)
    high = torch.full_like(target, hi)
    for _ in range(80):
        mid = 0.5 * (low + high)
        above = fn(mid) > target  # the log-SNR decreases with t
        low = torch.where(above, mid, low)
        high = torch.where(above, high, mid)
    return 0.5 * (low + high)


def derived_t_from_log_snr(process: Schedule, log_snr: torch.Tensor | float) -> torch.Tensor:
    """The t with lambda(t) = `log_snr`, by bisection on `process.log_snr`, clamped to [t_min, t_max]."""
    target = as_schedule_tensor(log_snr)
    log_snr_of: Callable[[torch.Tensor], torch.Tensor] = process.log_snr  # type: ignore[attr-defined]
    t = invert_decreasing(log_snr_of, target, process.t_min, process.t_max)
    return t.clamp(process.t_min, process.t_max).to(result_dtype(log_snr))


def linear_drift(process: Schedule, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Forward drift f(t) x for `x` `(B, *dims)` and t scalar or `(B,)` (uses `process.f`)."""
    t = batch_times(t, x)
    f: torch.Tensor = process.f(t)  # type: ignore[attr-defined]
    return append_dims(f.to(x.dtype), x.ndim) * x


def gaussian_marginal(
    process: Schedule, x0: torch.Tensor, t: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `alpha(t) x0` `(B, *dims)` and std `sigma(t)` `(B, 1, ..., 1)` of p(x_t | x0)."""
    t = batch_times(t, x0)
    alpha = append_dims(process.alpha(t).to(x0.dtype), x0.ndim)
    sigma = append_dims(process.sigma(t).to(x0.dtype), x0.ndim)
    return alpha * x0, sigma


def gaussian_prior_sample(
    std: float,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw `shape` = `(B, *dims)` samples of N(0, std^2 I) (the prior at t_max, std = sigma(t_max))."""
    z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return z * std


def gaussian_prior_logp(std: float, z: torch.Tensor) -> torch.Tensor:
    """Log-density `(B,)` of N(0, std^2 I) at `z` `(B, *dims)`, in nats."""
    dim = z[0].numel()
    return -0.5 * sum_except_batch(z**2) / std**2 - dim * (math.log(std) + 0.5 * math.log(2 * math.pi))
