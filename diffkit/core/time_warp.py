"""Timestep shift: any noise process re-timed by the SD3/Flux warp w(t) = s t / (1 + (s - 1) t).

Esser et al. 2024 ("Scaling Rectified Flow Transformers", Stable Diffusion 3, eq. 23) shift a
rectified flow's noise level sigma = t to sigma' = s sigma / (1 + (s - 1) sigma) so that more
steps fall at high noise for large images; Flux takes s = exp(mu) with a resolution-dependent
mu. Here the same warp re-times *any* process on times within [0, 1]: the shifted process at
time t is the base process at w(t),

    alpha'(t) = alpha(w(t)),  sigma'(t) = sigma(w(t)),  lambda'(t) = lambda(w(t)),
    f'(t) = f(w(t)) w'(t),    g'(t)^2 = g(w(t))^2 w'(t)     (chain rule; w' = s / (1 + (s - 1) t)^2),

with t_min, t_max mapped by the inverse w^-1(u) = u / (s - (s - 1) u) and the same prior, so
every grid and sampler sees a process whose times are spent differently while the marginals
p_t are unchanged. Warps compose: w_s(w_r(t)) = w_{sr}(t). A model's network still receives
its own (base) time: `ScoreModel` maps a shifted time back with `base_time` (see `unwarp`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffkit.core.precision import as_schedule_tensor, result_dtype
from diffkit.core.process import NoiseProcess, discrete_process
from diffkit.core.process_defaults import gaussian_marginal, linear_drift
from diffkit.core.traits import ProcessTraits, traits_of

#: The options every process accepts (the registry adds them to each process's own options).
TIME_WARP_OPTIONS: dict[str, tuple[type, str]] = {
    "shift": (float, "SD3/Flux timestep shift s > 0: time warp w(t) = s t / (1 + (s - 1) t)"),
    "mu": (float, "resolution-dependent shift in exponential form: s = exp(mu)"),
}


def warp(t: torch.Tensor, shift: float) -> torch.Tensor:
    """w(t) = s t / (1 + (s - 1) t), increasing from w(0) = 0 to w(1) = 1; shaped like `t`."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def warp_slope(t: torch.Tensor, shift: float) -> torch.Tensor:
    """w'(t) = s / (1 + (s - 1) t)^2, shaped like `t`."""
    return shift / (1.0 + (shift - 1.0) * t) ** 2


def unwarp_time(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The inverse warp w^-1(u) = u / (s - (s - 1) u), shaped like `u`."""
    return u / (shift - (shift - 1.0) * u)


def resolve_shift(shift: float | None, mu: float | None) -> float | None:
    """The shift s from the options `shift` or `mu` (s = exp(mu)); None if neither is given.

    Raises:
        ValueError: both given, a shift <= 0 or not finite, or a non-finite mu.
    """
    if shift is not None and mu is not None:
        raise ValueError("give either shift or mu (shift = exp(mu)), not both")
    if mu is not None:
        if not math.isfinite(mu) or abs(mu) > 700.0:
            raise ValueError(f"mu must be a finite number with |mu| <= 700 (shift = exp(mu)), got {mu:g}")
        return math.exp(mu)
    if shift is not None and not (math.isfinite(shift) and shift > 0.0):
        raise ValueError(f"shift must be a positive finite number, got {shift:g}")
    return shift


@dataclass(frozen=True)
class ShiftedProcess:
    """The process `base` re-timed by the shift warp: at time t it is `base` at w(t).

    Attributes:
        base: the unshifted process (continuous, with times within [0, 1]).
        shift: s > 0 (1 is the identity; s > 1 spends more of [0, 1] at high noise).
    """

    base: Any
    shift: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.shift) and self.shift > 0.0):
            raise ValueError(f"shift must be a positive finite number, got {self.shift:g}")
        if discrete_process(self.base) is not None:
            raise ValueError(
                "shift re-times a continuous process; this discrete process has fixed DDPM knots "
                "(use its continuous counterpart, e.g. --sde vp)"
            )
        if not 0.0 <= float(self.base.t_min) < float(self.base.t_max) <= 1.0:
            raise ValueError(
                "shift needs a process on times within [0, 1], "
                f"got [{self.base.t_min:g}, {self.base.t_max:g}]"
            )

    # ---- time maps -------------------------------------------------------------------
    def base_time(self, t: torch.Tensor | float) -> torch.Tensor:
        """The base process's time w(t) of shifted time `t` (schedule dtype, cast like `t`)."""
        return warp(as_schedule_tensor(t), self.shift).to(result_dtype(t))

    def _at_base(self, fn: Any, t: torch.Tensor | float) -> torch.Tensor:
        return fn(warp(as_schedule_tensor(t), self.shift)).to(result_dtype(t))

    @property
    def t_min(self) -> float:
        """w^-1(base.t_min)."""
        return float(unwarp_time(torch.tensor(float(self.base.t_min), dtype=torch.float64), self.shift))

    @property
    def t_max(self) -> float:
        """w^-1(base.t_max)."""
        return float(unwarp_time(torch.tensor(float(self.base.t_max), dtype=torch.float64), self.shift))

    @property
    def traits(self) -> ProcessTraits:
        """The base's traits: alpha and sigma take the same values, so VP/VE/sub-VP still hold."""
        return traits_of(self.base)

    @property
    def features(self) -> frozenset[str]:
        """The trait names, e.g. {"variance-preserving"} (the read-only view older code reads)."""
        return self.traits.names

    # ---- schedule --------------------------------------------------------------------
    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """alpha(w(t)), shaped like `t`."""
        return self._at_base(self.base.alpha, t)

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma(w(t)), shaped like `t`."""
        return self._at_base(self.base.sigma, t)

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """lambda(w(t)), shaped like `t`."""
        return self._at_base(self.base.log_snr, t)

    def t_from_log_snr(self, log_snr: torch.Tensor | float) -> torch.Tensor:
        """w^-1(base.t_from_log_snr(lambda)), clamped to [t_min, t_max]."""
        u = self.base.t_from_log_snr(as_schedule_tensor(log_snr))
        t = unwarp_time(as_schedule_tensor(u), self.shift).clamp(self.t_min, self.t_max)
        return t.to(result_dtype(log_snr))

    def f(self, t: torch.Tensor | float) -> torch.Tensor:
        """f(w(t)) w'(t): d log alpha(w(t)) / dt."""
        s = as_schedule_tensor(t)
        return (self.base.f(warp(s, self.shift)) * warp_slope(s, self.shift)).to(result_dtype(t))

    def diffusion_squared(self, t: torch.Tensor | float) -> torch.Tensor:
        """g(w(t))^2 w'(t) = d sigma'^2 / dt - 2 f' sigma'^2."""
        s = as_schedule_tensor(t)
        g2 = self.base.diffusion_squared(warp(s, self.shift))
        return (g2 * warp_slope(s, self.shift)).to(result_dtype(t))

    def diffusion(self, t: torch.Tensor | float) -> torch.Tensor:
        """g'(t) = sqrt(max(g'(t)^2, 0)), shaped like `t`."""
        return self.diffusion_squared(as_schedule_tensor(t)).clamp_min(0.0).sqrt().to(result_dtype(t))

    def drift(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Forward drift f'(t) x for `x` `(B, *dims)`."""
        return linear_drift(self, x, t)

    def marginal(self, x0: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean `(B, *dims)` and std `(B, 1, ..., 1)` of p(x_t | x0) (the base's at w(t))."""
        return gaussian_marginal(self, x0, t)

    # ---- prior (the base's: the law at t_max is the base's at its t_max) ---------------
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior, sigma(t_max) (the base's)."""
        return float(self.sigma(self.t_max))

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Samples `shape` = `(B, *dims)` of the base's prior."""
        return self.base.prior_sample(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """The base's prior log-density `(B,)` in nats."""
        return self.base.prior_logp(z)


def shifted(process: NoiseProcess, shift: float) -> NoiseProcess:
    """`process` re-timed by `shift` (an existing shift composes: w_s . w_r = w_sr); s = 1 gives `process`."""
    if isinstance(process, ShiftedProcess):
        process, shift = process.base, process.shift * shift
    if shift == 1.0:
        return process
    return ShiftedProcess(process, shift)  # type: ignore[return-value]


def unwarp(process: NoiseProcess, t: torch.Tensor) -> tuple[NoiseProcess, torch.Tensor]:
    """The base process and its time at `t` `(B,)`: (base, w(t)), or (process, t) if unshifted."""
    if isinstance(process, ShiftedProcess):
        return process.base, process.base_time(t)
    return process, t


def base_process(process: NoiseProcess) -> NoiseProcess:
    """The unshifted process behind `process` (itself if it is not shifted)."""
    return process.base if isinstance(process, ShiftedProcess) else process
