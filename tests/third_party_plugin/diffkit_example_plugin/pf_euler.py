"""Euler steps on the probability-flow ODE (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", eq. 13):

    dx/dt = f(t) x - g(t)^2 / 2 * score(x, t)

integrated from `grid[0]` (t_max) down to `grid[-1]` (t_min). Deterministic, order 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

import diffkit


@dataclass(frozen=True, kw_only=True)
class PFEulerSampler:
    """Probability-flow ODE, explicit Euler (one model evaluation per step)."""

    capabilities: ClassVar[diffkit.Capabilities] = diffkit.Capabilities(
        stochastic=False, order=1.0, default_grid="uniform", default_steps=100
    )

    def __call__(
        self,
        model: diffkit.ScoreModel,
        process: diffkit.NoiseProcess,
        x_init: torch.Tensor,
        grid: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        callback: Callable[[diffkit.StepInfo], None] | None = None,
    ) -> diffkit.SampleResult:
        """Integrate from prior noise `x_init` `(B, *dims)` along the descending `grid` `(n + 1,)`.

        `generator` is unused: the probability-flow ODE draws no noise.
        """
        nfe_before = model.nfe
        x = x_init
        for step, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
            score = model.predict(x, t).score
            g_squared = process.diffusion(t).to(x) ** 2
            velocity = process.drift(x, t) - 0.5 * g_squared * score
            x = x + (t_next - t).to(x) * velocity
            if callback is not None:
                callback(diffkit.StepInfo(step, t_next, x, model.nfe - nfe_before))
        return diffkit.SampleResult(x=x, nfe=model.nfe - nfe_before, steps=len(grid) - 1)


@diffkit.hookimpl
def diffkit_register(registrar: diffkit.Registrar) -> None:
    """Register the `pf-euler` sampler."""
    registrar.add_sampler("pf-euler", PFEulerSampler)
