"""Plain and annealed Langevin dynamics `langevin` and `ald` (Song & Ermon 2019 and 2020, NCSN/NCSNv2).

`langevin` runs unannealed Langevin dynamics on the data score, evaluated at the grid's last
time (t_min for every built-in grid), starting from `x_init` (the prior draw):

    x <- x + eps/2 score(x, t_min) + sqrt(eps) z        (NCSN 2019, eq. 4)

The grid only sets the number of iterations (one model call each); callbacks report the grid
times as progress. It cannot move mass between well-separated modes, so the mode weights it
returns are those of the starting distribution's basins -- the failure annealing fixes.

`ald` is annealed Langevin dynamics (NCSN 2019, Alg. 1): the grid times are the noise levels.
`x_init` is a draw of p at the first level, grid[0]; grid step i runs `steps_per_level` (T)
Langevin iterations at level t_{i+1} with step

    alpha_i = eps sigma_i^2 / sigma_L^2,       x <- x + alpha_i/2 score(x, t_{i+1}) + sqrt(alpha_i) z,

sigma_i = sigma(t_{i+1}) being the noise std at that level and sigma_L = sigma(grid[-1]).
The default `log-snr` grid is geometric in sigma/alpha between the process's ends, i.e. NCSN's
geometric sequence sigma_1 > ... > sigma_L on VE (where alpha = 1). Other sequences, e.g. the
NCSNv2 recipe, are grids built with `diffkit.solvers.ncsn.geometric_levels` and `level_times`, which
maps a level sigma to the time whose sigma(t)/alpha(t) equals it (t_from_log_snr(-2 log sigma)).

Example -- the seed survey's two-mode figure (gmm:two-modes on ve, weights 0.2 / 0.8, modes at
x = -2.5 and 2.5 with std 0.25; `tests/test_langevin.py` measures it on 4000 samples, whose
weight estimate has a Monte-Carlo error of 0.006):

    diffkit sample --sde ve --model gmm:two-modes --solver langevin --num-samples 4000 --dtype float64
        left-mode weight 0.499 (error 0.30): the prior's basin split, not the data's
    diffkit sample --sde ve --model gmm:two-modes --solver ald --num-samples 4000 --dtype float64
        left-mode weight 0.22 (error 0.02; 0.015 with the test's seeds)

Defaults by measurement (1000 NFE, spread = within-mode sample std over the truth, 1 exact):
`ald` with 100 geometric levels x T = 10 gives spread 1.06 / 1.05 on gmm:ring8 / gmm:d64 under
vp and ve and weight error 0.015 on two-modes, while NCSN's 10 levels x T = 100 gives 1.17-1.20
and 0.06 (too few levels where the modes separate); the quadratic grid (denser at low noise) has
the better spread on VE (1.015) but the worse weights (0.025), uniform-in-t fails on VP (1.2-3.2).
`langevin`'s eps = 1e-3 gives spread 1.01 on both oracles; 3e-4 does not reach the modes from the
VE prior (sigma 50) in 1000 steps on d64 and 3e-3 over-disperses by 4 %.

Neither sampler discretises an SDE on the grid, so neither has a convergence order in the grid
steps (declared order 0): more iterations converge to the (step-size biased) stationary law,
and more levels refine the annealing, but the error does not fall like a power of the steps.

A grid ending at sigma = 0 (a final point 0.0 below t_min): that point is no level (the score at
sigma = 0 does not exist); `langevin` iterates at the point before it and `ald` anneals down to
it, and the last step is the model's x0 prediction there (one NFE: NCSNv2's final denoising,
which `denoise_final` then does not repeat).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from diffkit import Capabilities, Registrar, hookimpl
from diffkit.solvers import FixedStepSampler, StepContext, langevin_step, ncsnv2_step_size


@dataclass(frozen=True, kw_only=True)
class Langevin(FixedStepSampler):
    """Unannealed Langevin dynamics on the data score (Song & Ermon 2019, eq. 4); no order (0).

    Options:
        step_size: eps of `x + eps/2 score + sqrt(eps) z`, in squared data units. The default
            1e-3 is stable (eps < 4 var) for mode variances above ~3e-4, and converges from a
            unit-scale prior within the default 1000 steps on the oracles.
        denoise_final: return the model's x0 prediction at the end (one extra NFE).
    """

    step_size: float = field(default=1e-3, metadata={"positive": True})
    capabilities: ClassVar[Capabilities] = Capabilities(
        stochastic=True, order=0.0, adaptive=False, nfe_per_step=1, default_grid="uniform", default_steps=1000
    )

    def step(self, ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
        """One Langevin iteration on the score at the grid's last time (grid step i is only a counter)."""
        score = ctx.predict(x, ctx.n_steps).score
        step = ctx.times.new_tensor(0.5 * self.step_size)  # schedule dtype (float64), then cast
        return langevin_step(x, score, ctx.coef(step), ctx.noise(x))


@dataclass(frozen=True, kw_only=True)
class AnnealedLangevin(FixedStepSampler):
    """Annealed Langevin dynamics over the grid's noise levels (Song & Ermon 2019, Alg. 1); no order (0).

    Options:
        steps_per_level: T, Langevin iterations (model calls) per level (NCSN used 100 with 10
            levels, NCSNv2 5 with 232 or more; the default 10 with 100 levels was measured best).
        step_size: NCSN's eps (alpha_i = eps sigma_i^2 / sigma_L^2). None (default): NCSNv2's
            Technique 4 for T and the grid's largest ratio gamma = sigma(t_i)/sigma(t_{i+1}),
            i.e. eps = 2 e* sigma_L^2 where e* makes the variance ratio of their eq. 6 closest to 1
            (the grid is read on the host once per call, before the first level).
        denoise_final: NCSNv2's final denoising step x + sigma_L^2 score (the model's x0; one NFE).
    """

    steps_per_level: int = field(default=10, metadata={"positive": True})
    step_size: float | None = field(default=None, metadata={"positive": True})

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """Stochastic, T model calls per level; default 100 geometric levels (the log-SNR grid)."""
        return Capabilities(
            stochastic=True,
            order=0.0,
            adaptive=False,
            nfe_per_step=self.steps_per_level,
            default_grid="log-snr",
            default_steps=100,
        )

    def _relative_step(self, ctx: StepContext) -> torch.Tensor:
        """e_i / sigma_i^2 for every level (the same for all): eps / (2 sigma_L^2), or Technique 4's e*."""
        if not ctx.history:
            if self.step_size is not None:
                relative = self.step_size / (2.0 * ctx.sigma[-1].square())
            else:
                gamma = float((ctx.sigma[:-1] / ctx.sigma[1:]).max())
                relative = ctx.sigma.new_tensor(ncsnv2_step_size(gamma, self.steps_per_level, 1.0))
            ctx.history.append(relative)
        return ctx.history[0]

    def step(self, ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
        """T Langevin iterations at level times[i + 1] with step e_i proportional to sigma(t_{i+1})^2."""
        level = i + 1
        step = ctx.coef(self._relative_step(ctx) * ctx.sigma[level].square())
        for _ in range(self.steps_per_level):
            score = ctx.predict(x, level).score
            x = langevin_step(x, score, step, ctx.noise(x))
        return x


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `langevin` and `ald` samplers."""
    registrar.add_sampler("langevin", Langevin)
    registrar.add_sampler("ald", AnnealedLangevin)
