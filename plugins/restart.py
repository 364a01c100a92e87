"""Restart sampling `restart` (Xu et al. 2023): Heun's ODE steps plus forward-noise restarts.

Xu, Deng, Cheng, Tian, Liu & Jaakkola 2023, "Restart Sampling for Improving Generative
Processes", Alg. 1. In EDM's scaled coordinates x_s = x / alpha, sigma_s = sigma / alpha
(`diffkit.solvers.edm`, so it runs on every linear-Gaussian process) the main pass takes a Heun
step (Karras et al. 2022, Alg. 1) on every grid interval. Each restart interval
[smin, smax] with K restarts of N steps acts at the grid point whose sigma_s is nearest to smin
(as the authors' code snaps it), sigma_j say: on reaching it, K times,

    x_s <- x_s + sqrt(smax^2 - sigma_j^2) xi,      xi ~ N(0, I) from the caller's generator
    (the exact forward process from sigma_j to smax), then N Heun steps from smax back to sigma_j
    on EDM's rho = 7 spacing  sigma_k = (smax^{1/7} + k / N (sigma_j^{1/7} - smax^{1/7}))^7,

and the main pass goes on from sigma_j. The forward jump contracts the accumulated error of
the ODE (the paper's main result), at 2 K N extra NFE per interval. A grid ending at sigma = 0
ends with the x0 prediction at its last positive point (`finish_run`), as EDM's Euler step to 0.

NFE: 2 per grid step (Heun) plus `extra_nfe` = sum_i 2 K_i N_i, fixed for any step count (the
bench takes it off the budget before choosing the steps), +1 with `denoise_final`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffkit import Capabilities, Registrar, UsageError, hookimpl
from diffkit.solvers import (
    FixedStepSampler,
    StepContext,
    euler_step,
    from_scaled,
    heun_correction,
    log_snr_of_sigma_scaled,
    ode_derivative,
    sigma_scaled,
    to_scaled,
)

#: EDM's rho of the restart sub-grid (Karras et al. 2022, eq. 5; the authors' restart code)
RHO = 7.0


@dataclass(frozen=True)
class Interval:
    """One restart interval: noise levels smin < smax (sigma / alpha), K restarts of N Heun steps."""

    smin: float
    smax: float
    k: int
    n: int

    def __str__(self) -> str:
        return f"{self.smin:g}:{self.smax:g}:{self.k}:{self.n}"


def parse_intervals(text: str) -> tuple[Interval, ...]:
    """Parse 'smin:smax:K:N[,smin:smax:K:N...]' (empty or 'none': no restarts); ValueError if bad."""
    if text.strip().lower() in ("", "none"):
        return ()
    intervals = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) != 4:
                raise ValueError
            interval = Interval(float(parts[0]), float(parts[1]), int(parts[2]), int(parts[3]))
        except ValueError:
            raise ValueError(
                f"option intervals must be 'smin:smax:K:N[,...]' (sigma/alpha units), got {text!r}"
            ) from None
        if not 0 < interval.smin < interval.smax < float("inf"):
            raise ValueError(f"option intervals: restart interval {item.strip()} needs 0 < smin < smax")
        if interval.k < 1 or interval.n < 1:
            raise ValueError(f"option intervals: restart interval {item.strip()} needs K >= 1 and N >= 1")
        intervals.append(interval)
    return tuple(intervals)


@dataclass(frozen=True)
class _Restart:
    """A restart interval placed on a grid: at grid point `index`, K passes over `times`."""

    index: int
    k: int
    times: torch.Tensor  # (N + 1,) from t(smax) down to times[index], schedule dtype
    alpha: torch.Tensor
    sigma_s: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class Restart(FixedStepSampler):
    """Restart sampling (Xu et al. 2023, Alg. 1): Heun steps plus forward-noise restarts; 2 NFE per step.

    Options:
        intervals: restart intervals 'smin:smax:K:N[,...]' in sigma / alpha (EDM's sigma);
            'none' turns restarts off (then it is EDM's deterministic Heun). Default: the
            authors' single interval [0.1, 2] (their Stable Diffusion setting, a noise range
            that also suits data of unit scale) with K = 1 and N = 4.
        denoise_final: after reaching t_min, return the x0 prediction (one extra NFE).
    """

    intervals: str = "0.1:2:1:4"

    def __post_init__(self) -> None:
        """Validate the options (the intervals' syntax and values)."""
        super().__post_init__()
        parse_intervals(self.intervals)

    @property
    def capabilities(self) -> Capabilities:
        """Order 2 (the Heun main pass; restarts have a fixed cost), stochastic iff there are restarts."""
        return Capabilities(
            stochastic=bool(parse_intervals(self.intervals)),
            order=2.0,
            nfe_per_step=2,
            default_grid="karras",
            default_steps=20,
        )

    @property
    def extra_nfe(self) -> int:
        """Model calls of the restarts, beyond 2 per grid step: sum of 2 K N over the intervals."""
        return sum(2 * r.k * r.n for r in parse_intervals(self.intervals))

    def expected_nfe(self, n_steps: int) -> int:
        """Model calls for an `n_steps` grid: 2 per step, the restarts, +1 with `denoise_final`."""
        return 2 * n_steps + self.extra_nfe + int(self.denoise_final)

    def _place(self, ctx: StepContext) -> list[_Restart]:
        """Put every interval on the grid; UsageError (before any model call) if one does not fit."""
        levels = sigma_scaled(ctx.log_snr)
        low, high = float(levels[-1]), float(levels[0])
        placed = []
        for interval in parse_intervals(self.intervals):
            if interval.smin < low or interval.smax > high:
                raise UsageError(
                    f"restart interval {interval} lies outside the grid's sigma/alpha range "
                    f"[{low:.4g}, {high:.4g}]"
                )
            index = int(torch.argmin((levels - interval.smin).abs()))
            if index == 0 or float(levels[index]) >= interval.smax:
                nearest = float(levels[index])
                raise UsageError(
                    f"restart interval {interval}: the grid point nearest smin (sigma/alpha {nearest:.4g}) "
                    "must come after the grid's first point and lie below smax"
                )
            placed.append(self._sub_grid(ctx, index, interval))
        return placed

    def _sub_grid(self, ctx: StepContext, index: int, interval: Interval) -> _Restart:
        """EDM's rho-spaced N steps from smax down to the grid point `index` (schedule dtype)."""
        end = sigma_scaled(ctx.log_snr[index])
        start = torch.as_tensor(interval.smax, dtype=end.dtype, device=end.device)
        frac = torch.arange(interval.n + 1, dtype=end.dtype, device=end.device) / interval.n
        levels = (start ** (1 / RHO) + frac * (end ** (1 / RHO) - start ** (1 / RHO))) ** RHO
        times = ctx.process.t_from_log_snr(log_snr_of_sigma_scaled(levels))
        times[-1] = ctx.times[index]
        levels[-1] = end
        return _Restart(index, interval.k, times, ctx.process.alpha(times), levels)

    def _heun(
        self, ctx: StepContext, x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        """One Heun step from t[0] to t[1] (alpha a, sigma_s s: `(2,)` each), in scaled coordinates."""
        x_s = to_scaled(x, ctx.coef(a[0]))
        h = ctx.coef(s[1] - s[0])
        d = ode_derivative(x_s, ctx.predict_at(x, t[0]).x0, ctx.coef(s[0]))
        x_next = euler_step(x_s, d, h)
        denoised = ctx.predict_at(from_scaled(x_next, ctx.coef(a[1])), t[1]).x0
        x_next = heun_correction(x_s, d, ode_derivative(x_next, denoised, ctx.coef(s[1])), h)
        return from_scaled(x_next, ctx.coef(a[1]))

    def step(self, ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
        """A Heun step times[i] -> times[i + 1], then the restarts placed at times[i + 1]."""
        if i == 0:
            ctx.history.extend(self._place(ctx))
        levels = sigma_scaled(ctx.log_snr[i : i + 2])
        x = self._heun(ctx, x, ctx.times[i : i + 2], ctx.alpha[i : i + 2], levels)
        for restart in ctx.history:
            if restart.index != i + 1:
                continue
            std = ctx.coef((restart.sigma_s[0].square() - restart.sigma_s[-1].square()).sqrt())
            for _ in range(restart.k):
                x_s = to_scaled(x, ctx.coef(restart.alpha[-1])) + std * ctx.noise(x)
                x = from_scaled(x_s, ctx.coef(restart.alpha[0]))
                for j in range(restart.times.shape[0] - 1):
                    sl = slice(j, j + 2)
                    x = self._heun(ctx, x, restart.times[sl], restart.alpha[sl], restart.sigma_s[sl])
        return x


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `restart` sampler."""
    registrar.add_sampler("restart", Restart)
