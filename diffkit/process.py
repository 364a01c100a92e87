"""Noise processes: linear-Gaussian forward processes `x_t = alpha(t) x0 + sigma(t) eps`.

A process is fixed by `alpha(t)` and `sigma(t)` on `[t_min, t_max]`; the SDE follows
(Song et al. 2021, "Score-Based Generative Modeling through SDEs", eqs. 5-6 and App. B):

    f(t)   = d log alpha / dt                      (drift coefficient, dx = f x dt + g dw)
    g(t)^2 = d sigma^2 / dt - 2 f(t) sigma(t)^2    (squared diffusion)

which reproduces the VE, VP and sub-VP SDEs exactly. Subclasses implement four float64
functions (`_log_alpha`, `_sigma_squared`, `_d_log_alpha`, `_d_sigma_squared`); everything
public is derived here, computed in float64 (float32 on MPS) and cast to the input's dtype.

`features` names what samplers may require or tune for: "discrete" (exact DDPM knots,
`alpha_bar_table`), "variance-preserving", "sub-variance-preserving", "variance-exploding".
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar, Protocol, runtime_checkable

import torch

from diffkit.precision import as_schedule_tensor, result_dtype
from diffkit.shapes import append_dims, batch_times, sum_except_batch


@runtime_checkable
class NoiseProcess(Protocol):
    """Contract every noise process satisfies (DESIGN.md section 3)."""

    t_min: float
    t_max: float
    features: frozenset[str]

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """Signal scale alpha(t), shaped like `t`."""

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise scale sigma(t), shaped like `t`."""

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """lambda(t) = 2 log(alpha / sigma), strictly decreasing in t."""

    def t_from_log_snr(self, log_snr: torch.Tensor | float) -> torch.Tensor:
        """Inverse of `log_snr`, clamped to [t_min, t_max]."""

    def drift(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Forward drift f(t) x for `x` `(B, *dims)`."""

    def diffusion(self, t: torch.Tensor | float) -> torch.Tensor:
        """Forward diffusion coefficient g(t), shaped like `t`."""

    def marginal(self, x0: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean `(B, *dims)` and std `(B, 1, ..., 1)` of p(x_t | x0)."""

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Samples `shape` = `(B, *dims)` of the prior at t_max."""

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Prior log-density `(B,)` in nats."""


class LinearGaussianProcess(abc.ABC):
    """Base class deriving the SDE, marginals and prior from alpha(t) and sigma(t).

    Subclasses are frozen keyword-only dataclasses whose fields are the process options
    (they must define `t_min` and `t_max`).
    """

    t_min: float
    t_max: float
    features: ClassVar[frozenset[str]] = frozenset()

    # ---- the four functions a subclass provides (float64 tensors in, out) -------------
    @abc.abstractmethod
    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha(t)."""

    @abc.abstractmethod
    def _sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t)^2."""

    @abc.abstractmethod
    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """f(t) = d log alpha / dt."""

    @abc.abstractmethod
    def _d_sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        """d sigma(t)^2 / dt."""

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = 2 log(alpha / sigma); override where a stabler form exists."""
        return 2.0 * self._log_alpha(t) - torch.log(self._sigma_squared(t))

    def _t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """Invert the (strictly decreasing) log-SNR by bisection; override if closed form."""
        lo = torch.full_like(log_snr, self.t_min)
        hi = torch.full_like(log_snr, self.t_max)
        for _ in range(80):  # 2^-80 of the interval: below float64 resolution
            mid = 0.5 * (lo + hi)
            above = self._log_snr(mid) > log_snr  # log-SNR decreases with t
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    # ---- public schedule -----------------------------------------------------------
    def _eval(self, fn, t: torch.Tensor | float) -> torch.Tensor:
        out_dtype = result_dtype(t)
        return fn(as_schedule_tensor(t)).to(out_dtype)

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """alpha(t), the signal scale; same shape as `t`."""
        return self._eval(lambda s: torch.exp(self._log_alpha(s)), t)

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma(t), the noise scale; same shape as `t`."""
        return self._eval(lambda s: torch.sqrt(self._sigma_squared(s)), t)

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """lambda(t) = 2 log(alpha(t) / sigma(t)); same shape as `t`."""
        return self._eval(self._log_snr, t)

    def t_from_log_snr(self, log_snr: torch.Tensor | float) -> torch.Tensor:
        """The time t with lambda(t) = `log_snr`, clamped to `[t_min, t_max]`."""
        return self._eval(lambda lam: self._t_from_log_snr(lam).clamp(self.t_min, self.t_max), log_snr)

    def f(self, t: torch.Tensor | float) -> torch.Tensor:
        """Drift coefficient f(t) = d log alpha / dt (the drift is f(t) x)."""
        return self._eval(self._d_log_alpha, t)

    def _diffusion_squared(self, t: torch.Tensor) -> torch.Tensor:
        return self._d_sigma_squared(t) - 2.0 * self._d_log_alpha(t) * self._sigma_squared(t)

    def diffusion_squared(self, t: torch.Tensor | float) -> torch.Tensor:
        """g(t)^2 = d sigma^2/dt - 2 f(t) sigma(t)^2."""
        return self._eval(self._diffusion_squared, t)

    def diffusion(self, t: torch.Tensor | float) -> torch.Tensor:
        """g(t), the diffusion coefficient of the forward SDE; same shape as `t`."""
        return self._eval(lambda s: self._diffusion_squared(s).clamp_min(0.0).sqrt(), t)

    def drift(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Forward drift f(t) x for data `x` of shape `(B, *dims)` and t scalar or `(B,)`."""
        t = batch_times(t, x)
        return append_dims(self.f(t).to(x.dtype), x.ndim) * x

    def marginal(self, x0: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean `alpha(t) x0` `(B, *dims)` and std `sigma(t)` `(B, 1, ..., 1)` of p(x_t | x0)."""
        t = batch_times(t, x0)
        alpha = append_dims(self.alpha(t).to(x0.dtype), x0.ndim)
        sigma = append_dims(self.sigma(t).to(x0.dtype), x0.ndim)
        return alpha * x0, sigma

    # ---- prior -------------------------------------------------------------------
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior, sigma(t_max)."""
        return float(self.sigma(self.t_max))

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw `shape` = `(B, *dims)` samples of the prior N(0, sigma(t_max)^2 I)."""
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return z * self.prior_std()

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density `(B,)` of the prior at `z` `(B, *dims)`, in nats."""
        std = self.prior_std()
        dim = z[0].numel()
        return -0.5 * sum_except_batch(z**2) / std**2 - dim * (math.log(std) + 0.5 * math.log(2 * math.pi))

    # ---- description ---------------------------------------------------------------
    def check_time(self, t: float) -> None:
        """Raise ValueError if `t` lies outside `[t_min, t_max]` (with a tiny tolerance)."""
        tol = 1e-9 * max(1.0, abs(self.t_max))
        if not (self.t_min - tol <= t <= self.t_max + tol):
            raise ValueError(f"time {t} outside the process range [{self.t_min}, {self.t_max}]")
