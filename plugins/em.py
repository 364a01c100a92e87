"""Reverse-SDE Euler–Maruyama sampler `em` (Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations", eq. 6, discretised as in their Alg. 2 predictor).

The reverse-time SDE of a forward SDE `dx = f(t) x dt + g(t) dw` is

    dx = [f(t) x - g(t)^2 grad_x log p_t(x)] dt + g(t) dw_bar        (t running from t_max down)

and one Euler–Maruyama step from t_i to t_{i+1} < t_i is

    x_{i+1} = x_i + [f x_i - g^2 score(x_i, t_i)] (t_{i+1} - t_i) + g(t_i) sqrt(t_i - t_{i+1}) z_i.

The last step adds no noise (it returns the step's mean, as score_sde's sampler does).
`reverse_drift` is the shared drift of the reverse SDE and the probability-flow ODE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from diffkit import Capabilities, NoiseProcess, Registrar, SampleResult, ScoreModel, StepInfo, hookimpl
from diffkit.grid import check_grid
from diffkit.precision import schedule_dtype
from diffkit.sampler import Callback
from diffkit.shapes import append_dims


def reverse_drift(
    x: torch.Tensor,
    score: torch.Tensor,
    f: torch.Tensor,
    g2: torch.Tensor,
    *,
    score_weight: float = 1.0,
) -> torch.Tensor:
    """Reverse-time drift `f x - w g^2 score` (Song et al. 2021, eq. 6 with w = 1; eq. 13 with w = 1/2).

    Args:
        x: state `(B, *dims)`.
        score: grad_x log p_t(x), same shape as `x`.
        f: drift coefficient f(t), 0-dim or `(B,)`, in `x`'s dtype.
        g2: squared diffusion g(t)^2, 0-dim or `(B,)`, in `x`'s dtype.
        score_weight: w = 1 for the reverse SDE, 1/2 for the probability-flow ODE.

    Returns:
        dx/dt `(B, *dims)` (t is the forward time; the samplers integrate it backwards).
    """
    return append_dims(f, x.ndim) * x - score_weight * append_dims(g2, x.ndim) * score


def local_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """Return `generator`, or a fresh nondeterministically seeded one on `device` (never the global RNG)."""
    if generator is not None:
        return generator
    fresh = torch.Generator(device=device)
    fresh.seed()
    return fresh


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"option {name} must be true or false, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class EulerMaruyama:
    """Reverse-SDE Euler–Maruyama (Song et al. 2021); weak order 1.

    Options:
        denoise_final: after reaching t_min, return the model's x0 prediction (one extra NFE).
    """

    denoise_final: bool = False

    capabilities: ClassVar[Capabilities] = Capabilities(
        stochastic=True, order=1.0, adaptive=False, nfe_per_step=1, default_grid="uniform", default_steps=1000
    )

    def __post_init__(self) -> None:
        _check_flag("denoise_final", self.denoise_final)

    def __call__(
        self,
        model: ScoreModel,
        process: NoiseProcess,
        x_init: torch.Tensor,
        grid: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
    ) -> SampleResult:
        """Integrate the reverse SDE from `grid[0]` to `grid[-1]`.

        Args:
            model: score model (counts its NFE).
            process: the noise process (f and g^2 come from it).
            x_init: prior samples `(B, *dims)` at t = grid[0].
            grid: float64 `(N + 1,)` times, strictly descending.
            generator: source of the Gaussian increments (a fresh random one if None).
            callback: called with a `StepInfo` after every step.

        Returns:
            `SampleResult` with x `(B, *dims)` in `x_init`'s dtype, nfe = N (+1 if denoise_final).
        """
        grid = check_grid(grid, process)
        dtype, device = x_init.dtype, x_init.device
        generator = local_generator(generator, device)
        # schedule math in float64 on the grid, cast once; the loop then has no host syncs
        times = grid.to(device=device, dtype=schedule_dtype(device))
        t_now, dt = times[:-1], times[1:] - times[:-1]  # dt < 0
        f = process.f(t_now).to(dtype)
        g2 = process.diffusion_squared(t_now)
        noise_scale = torch.sqrt(g2.clamp_min(0.0) * -dt).to(dtype)  # g(t_i) sqrt(t_i - t_{i+1})
        g2, dt = g2.to(dtype), dt.to(dtype)

        nfe_start = model.nfe
        n_steps = dt.shape[0]
        x = x_init
        for i in range(n_steps):
            score = model.predict(x, times[i]).score
            x = x + reverse_drift(x, score, f[i], g2[i]) * dt[i]
            if i < n_steps - 1:  # the last step returns the mean
                z = torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
                x = x + noise_scale[i] * z
            if callback is not None:
                callback(StepInfo(i, times[i + 1], x, model.nfe - nfe_start))
        if self.denoise_final:
            x = model.predict(x, times[-1]).x0
            if callback is not None:
                callback(StepInfo(n_steps, times[-1], x, model.nfe - nfe_start))
        return SampleResult(x, model.nfe - nfe_start, n_steps)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `em` sampler."""
    registrar.add_sampler("em", EulerMaruyama)
