"""Noise processes: linear-Gaussian forward processes `x_t = alpha(t) x0 + sigma(t) eps`.

A process is fixed by `alpha(t)` and `sigma(t)` on `[t_min, t_max]`; the SDE follows
(Song et al. 2021, "Score-Based Generative Modeling through SDEs", eqs. 5-6 and App. B):

    f(t)   = d log alpha / dt                      (drift coefficient, dx = f x dt + g dw)
    g(t)^2 = d sigma^2 / dt - 2 f(t) sigma(t)^2    (squared diffusion)

which reproduces the VE, VP and sub-VP SDEs exactly. Subclasses implement four float64
functions (`_log_alpha`, `_sigma_squared`, `_d_log_alpha`, `_d_sigma_squared`); everything
public is derived here, computed in float64 (float32 on MPS) and cast to the input's dtype.

`traits` (a typed `ProcessTraits`) say what samplers may require or tune for: discrete (exact
DDPM knots, the `DiscreteProcess` members), variance-preserving, sub-variance-preserving,
variance-exploding, and the grid the process prefers. A process need not derive from
`LinearGaussianProcess`: `diffkit.core.process_defaults` derives every Protocol member from alpha and
sigma as plain functions. `schedule_problem` checks a process before it is composed.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar, Protocol, runtime_checkable

import torch

from diffkit.core.precision import as_schedule_tensor, result_dtype
from diffkit.core.process_defaults import (
    gaussian_marginal,
    gaussian_prior_logp,
    gaussian_prior_sample,
    invert_decreasing,
    linear_drift,
)
from diffkit.core.traits import ProcessTraits, traits_of


@runtime_checkable
class NoiseProcess(Protocol):
    """Contract every noise process satisfies: everything samplers, grids and models call.

    `diffkit.core.process_defaults` has each member beyond alpha and sigma as a plain function
    (`derived_f`, `derived_diffusion_squared`, ...), so no base class is needed.
    """

    t_min: float
    t_max: float
    traits: ProcessTraits

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """Signal scale alpha(t), shaped like `t`."""

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise scale sigma(t), shaped like `t`."""

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """lambda(t) = 2 log(alpha / sigma), strictly decreasing in t."""

    def t_from_log_snr(self, log_snr: torch.Tensor | float) -> torch.Tensor:
        """Inverse of `log_snr`, clamped to [t_min, t_max]."""

    def f(self, t: torch.Tensor | float) -> torch.Tensor:
        """Drift coefficient f(t) = d log alpha / dt, shaped like `t` (the drift is f(t) x)."""

    def diffusion_squared(self, t: torch.Tensor | float) -> torch.Tensor:
        """Squared diffusion g(t)^2 = d sigma^2 / dt - 2 f(t) sigma(t)^2, shaped like `t`."""

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


@runtime_checkable
class DiscreteProcess(NoiseProcess, Protocol):
    """A process with exact discrete DDPM knots (trait `discrete`; Ho et al. 2020).

    The N-step table alpha_bar_1..alpha_bar_N sits at the knots t_i = i / N (so t_min = 1 / N,
    t_max = 1); the ancestral sampler steps between knots exactly, continuous solvers see the
    interpolated process.
    """

    num_steps: int

    @property
    def discrete_times(self) -> torch.Tensor:
        """Knot times t_i = i / N for i = 1..N, ascending float64 `(N,)`."""

    @property
    def alpha_bar_table(self) -> torch.Tensor:
        """alpha_bar_i = alpha(t_i)^2 for i = 1..N, float64 `(N,)`."""


DISCRETE_MEMBERS: tuple[str, ...] = ("num_steps", "discrete_times", "alpha_bar_table")


def discrete_process(process: object) -> DiscreteProcess | None:
    """`process` as a `DiscreteProcess` if it has the discrete trait and its members, else None."""
    if not traits_of(process).discrete or not all(hasattr(process, name) for name in DISCRETE_MEMBERS):
        return None
    return process  # type: ignore[return-value]


def _format_time(t: float, t_min: float, t_max: float) -> str:
    end = " (t_min)" if t == t_min else " (t_max)" if t == t_max else ""
    return f"t = {t:g}{end}"


def schedule_problem(process: NoiseProcess, points: int = 9) -> str | None:
    """What makes `process` unusable on [t_min, t_max] (a phrase after its name), or None.

    Checks t_min < t_max (finite), then at both ends and `points - 2` interior points that
    alpha(t) and sigma(t) are finite and positive and the log-SNR is finite, and that a process
    with the discrete trait has the `DiscreteProcess` members. Returns e.g. "has alpha = 0 at
    t = 1 (t_max); alpha and sigma must be positive and finite, and the log-SNR finite, on
    [t_min, t_max] = [0.001, 1]".
    """
    t_min, t_max = float(process.t_min), float(process.t_max)
    if not (math.isfinite(t_min) and math.isfinite(t_max) and t_min < t_max):
        return f"needs finite t_min < t_max, got [{t_min:g}, {t_max:g}]"
    inner = torch.linspace(t_min, t_max, points, dtype=torch.float64)[1:-1]
    times = torch.cat([torch.tensor([t_min, t_max], dtype=torch.float64), inner])
    rule = (
        "alpha and sigma must be positive and finite, and the log-SNR finite, "
        f"on [t_min, t_max] = [{t_min:g}, {t_max:g}]"
    )
    for name, values in (("alpha", process.alpha(times)), ("sigma", process.sigma(times))):
        bad = ~(torch.isfinite(values) & (values > 0))
        if bool(bad.any()):
            index = int(bad.nonzero()[0])
            where = _format_time(float(times[index]), t_min, t_max)
            return f"has {name} = {float(values[index]):g} at {where}; {rule}"
    log_snr = process.log_snr(times)
    bad = ~torch.isfinite(log_snr)
    if bool(bad.any()):
        index = int(bad.nonzero()[0])
        where = _format_time(float(times[index]), t_min, t_max)
        return f"has log-SNR = {float(log_snr[index]):g} at {where}; {rule}"
    if traits_of(process).discrete and discrete_process(process) is None:
        missing = [name for name in DISCRETE_MEMBERS if not hasattr(process, name)]
        return f"has the discrete trait but no {', '.join(missing)} (see DiscreteProcess)"
    return None


class LinearGaussianProcess(abc.ABC):
    """Base class deriving the SDE, marginals and prior from alpha(t) and sigma(t).

    Subclasses are frozen keyword-only dataclasses whose fields are the process options
    (they must define `t_min` and `t_max`).
    """

    t_min: float
    t_max: float
    traits: ClassVar[ProcessTraits] = ProcessTraits()

    @property
    def features(self) -> frozenset[str]:
        """The trait names, e.g. {"variance-exploding"} (read-only view kept for older plugins)."""
        return self.traits.names

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
        return invert_decreasing(self._log_snr, log_snr, self.t_min, self.t_max)

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
        return linear_drift(self, x, t)

    def marginal(self, x0: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean `alpha(t) x0` `(B, *dims)` and std `sigma(t)` `(B, 1, ..., 1)` of p(x_t | x0)."""
        return gaussian_marginal(self, x0, t)

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
        return gaussian_prior_sample(self.prior_std(), shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density `(B,)` of the prior at `z` `(B, *dims)`, in nats."""
        return gaussian_prior_logp(self.prior_std(), z)

    # ---- description ---------------------------------------------------------------
    def check_time(self, t: float) -> None:
        """Raise ValueError if `t` lies outside `[t_min, t_max]` (with a tiny tolerance)."""
        tol = 1e-9 * max(1.0, abs(self.t_max))
        if not (self.t_min - tol <= t <= self.t_max + tol):
            raise ValueError(f"time {t} outside the process range [{self.t_min}, {self.t_max}]")
