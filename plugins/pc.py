"""Predictor–corrector sampler `pc` (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

Algorithms 1-5 of the paper.

Each grid step from t_i to t_{i+1} < t_i runs a predictor (one model call), which moves the state
along the reverse SDE to t_{i+1}, then `corrector_steps` corrector updates (one model call each),
which are score-based MCMC steps targeting p_{t_{i+1}}:

Predictors (`diffkit.solvers.dynamics`):
    reverse-diffusion  x <- (2 - alpha_{t|s}) x + sigma_{t|s}^2 score + sigma_{t|s} z   (App. E, eq. 47)
    em                 reverse-SDE Euler–Maruyama, exactly the `em` sampler's step (every step,
                       the last one included, adds its noise, as `em` does)
    ancestral          the DDPM posterior step of the `ancestral` sampler (variance beta_tilde)
    none               corrector only (with `ald`: annealed Langevin dynamics on the grid)

Correctors (`diffkit.solvers.ncsn.langevin_step`, update x + e score + sqrt(2 e) z):
    langevin  e = 2 a (r ||z|| / ||score||)^2 per sample (Alg. 4 on VE, Alg. 5 on VP)
    ald       e = 2 a (r sigma_{t_{i+1}})^2, score_sde's annealed Langevin corrector (NCSN's rule)
    none      predictor only

where r is the `snr` option and a = alpha_{t|s}^2 over the step just taken (1 on VE; 1 - beta_i
between DDPM knots, the alpha_i of Alg. 5).

"auto" options are resolved when the sampler is called, from the process (its "variance-exploding"
feature, or alpha = 1 at both ends) and the corrector:

    predictor  reverse-diffusion on every process (Song et al. 2021: Alg. 2 on VE, Table 1's PC rows)
    corrector  ald on every process (score_sde's AnnealedLangevinDynamics corrector)
    snr        0.16 with ald (score_sde's default `sampling.snr`); with langevin 0.16 on VE
               (score_sde configs/ve/*_continuous.py) and 0.01 on VP, sub-VP and DDPM

Why not the literature's langevin corrector by default: score_sde averages ||z|| and ||score||
over the batch, which makes a sample depend on the others in its batch. Per sample (as here), the
ratio ||z||^2 / ||score||^2 is F-distributed near a mode, heavy-tailed in low dimension (infinite
mean for D = 2), so rare huge steps scatter samples: on gmm:ring8 langevin gives a within-mode
spread of 2.7x (snr 0.16) or 1.13x (snr 0.01) the truth, while ald, whose step is the snr rule at its
noise-dominated value (||score|| ~ ||z|| / sigma_t), gives 1.01 on VP and VE and is batch-independent.
In high dimension (images) the per-sample ratio concentrates and `corrector=langevin` (Alg. 4-5 per
sample) behaves like score_sde's; even at D = 64 (gmm:d64) it over-disperses by 4 % at snr 0.16.

Default grid `log-snr`, 1000 steps (score_sde's N = 1000; 2000 NFE): measured with the defaults,
the within-mode spread over the truth at 250 steps is 1.009 (log-snr) vs 1.030 (uniform) on VP
ring8 and 1.008 vs 1.042 on VP d64; on VE the two grids coincide (1.010, d64 1.008).

NFE per step is (1 if a predictor else 0) + (corrector_steps if a corrector else 0). The
declared order is the predictor's weak order, 1 (0 without a predictor: Langevin correctors
alone do not converge in the grid steps).

A grid ending at sigma = 0 (a final point 0.0 below t_min): the last step is the model's x0
prediction at the point before it (one NFE, no noise, and no corrector: the score at sigma = 0
does not exist); `denoise_final` then adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from diffkit import Capabilities, NoiseProcess, Registrar, hookimpl, traits_of
from diffkit.solvers import (
    FixedStepSampler,
    StepContext,
    ancestral_step,
    euler_maruyama_step,
    langevin_step,
    reverse_diffusion_step,
    snr_step_size,
)

PREDICTORS: tuple[str, ...] = ("auto", "reverse-diffusion", "em", "ancestral", "none")
CORRECTORS: tuple[str, ...] = ("auto", "langevin", "ald", "none")
#: literature snr (Song et al. 2021): score_sde's default, and the Langevin corrector's off VE
SNR_DEFAULT, SNR_LANGEVIN_VP = 0.16, 0.01


def is_variance_exploding(process: NoiseProcess) -> bool:
    """True for a "variance-exploding" process, or one with alpha = 1 at both ends (x_t = x0 + sigma eps)."""
    if traits_of(process).variance_exploding:
        return True
    ends = torch.tensor([process.t_min, process.t_max], dtype=torch.float64)
    return bool((process.alpha(ends) == 1.0).all())


def _pair(i: int) -> slice:
    return slice(i, i + 2)


def _reverse_diffusion(ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
    score = ctx.predict(x, i).score
    p = _pair(i)
    return reverse_diffusion_step(x, score, ctx.alpha[p], ctx.sigma[p], ctx.log_snr[p], ctx.noise(x))


def _euler_maruyama(ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
    score = ctx.predict(x, i).score
    noise = ctx.noise(x)  # as `em`: every step, the last one included, adds its noise
    t = ctx.times[i]
    return euler_maruyama_step(
        x, score, ctx.process.f(t), ctx.process.diffusion_squared(t), ctx.times[i + 1] - t, noise
    )


def _ancestral(ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
    eps = ctx.predict(x, i).eps
    p = _pair(i)
    return ancestral_step(
        x, eps, ctx.alpha[p], ctx.sigma[p], ctx.log_snr[p], variance="beta_tilde", noise=ctx.noise(x)
    )


_PREDICT: dict[str, Callable[[StepContext, int, torch.Tensor], torch.Tensor]] = {
    "reverse-diffusion": _reverse_diffusion,
    "em": _euler_maruyama,
    "ancestral": _ancestral,
}


@dataclass(frozen=True)
class _Resolved:
    """The "auto" options of one call, resolved against its process."""

    predictor: str
    corrector: str
    snr: float


@dataclass(frozen=True, kw_only=True)
class PredictorCorrector(FixedStepSampler):
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1-3); weak order 1.

    Options:
        predictor: reverse-diffusion | em | ancestral | none | auto (reverse-diffusion).
        corrector: langevin | ald | none | auto (ald).
        snr: the corrector's signal-to-noise ratio r; auto: 0.16, or 0.01 for langevin off VE.
        corrector_steps: corrector updates per grid step (M in Alg. 1), >= 1.
        denoise_final: after reaching t_min, return the model's x0 prediction (one extra NFE).
    """

    predictor: Literal["auto", "reverse-diffusion", "em", "ancestral", "none"] = "auto"
    corrector: Literal["auto", "langevin", "ald", "none"] = "auto"
    snr: float | Literal["auto"] = field(
        default="auto", metadata={"positive": True, "finite": False, "or": ("auto",)}
    )
    corrector_steps: int = field(default=1, metadata={"positive": True})

    def __post_init__(self) -> None:
        """Validate options."""
        super().__post_init__()
        if self.predictor not in PREDICTORS:
            raise ValueError(
                f"option predictor must be one of {', '.join(PREDICTORS)}, got {self.predictor!r}"
            )
        if self.corrector not in CORRECTORS:
            raise ValueError(
                f"option corrector must be one of {', '.join(CORRECTORS)}, got {self.corrector!r}"
            )
        if self.predictor == "none" and self.corrector == "none":
            raise ValueError("predictor and corrector cannot both be none")

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """Stochastic; 1 + corrector_steps model calls per step (fewer with a `none` part)."""
        predictor_nfe = 0 if self.predictor == "none" else 1
        corrector_nfe = 0 if self.corrector == "none" else self.corrector_steps
        return Capabilities(
            stochastic=True,
            order=0.0 if self.predictor == "none" else 1.0,
            adaptive=False,
            nfe_per_step=predictor_nfe + corrector_nfe,
            default_grid="log-snr",
            default_steps=1000,
        )

    def resolve(self, process: NoiseProcess) -> _Resolved:
        """Resolve the "auto" options for `process` (see the module docstring)."""
        corrector = "ald" if self.corrector == "auto" else self.corrector
        if self.snr != "auto":
            snr = float(self.snr)
        elif corrector == "langevin" and not is_variance_exploding(process):
            snr = SNR_LANGEVIN_VP
        else:
            snr = SNR_DEFAULT
        predictor = "reverse-diffusion" if self.predictor == "auto" else self.predictor
        return _Resolved(predictor=predictor, corrector=corrector, snr=snr)

    def step(self, ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
        """Predictor from times[i] to times[i + 1], then the corrector at times[i + 1]."""
        if not ctx.history:
            ctx.history.append(self.resolve(ctx.process))
        setup: _Resolved = ctx.history[0]
        if setup.predictor != "none":
            x = _PREDICT[setup.predictor](ctx, i, x)
        if setup.corrector == "none":
            return x
        level = i + 1
        alpha = (ctx.alpha[i] / ctx.alpha[level]).square()  # alpha_{t|s}^2 of this step, float64
        annealed = ctx.coef(2.0 * alpha * (setup.snr * ctx.sigma[level]).square())
        for _ in range(self.corrector_steps):
            score = ctx.predict(x, level).score
            noise = ctx.noise(x)
            if setup.corrector == "langevin":  # per-sample step from this score and noise
                x = langevin_step(x, score, snr_step_size(score, noise, setup.snr, ctx.coef(alpha)), noise)
            else:  # ald: the same step for every sample at this level
                x = langevin_step(x, score, annealed, noise)
        return x


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `pc` sampler."""
    registrar.add_sampler("pc", PredictorCorrector)
