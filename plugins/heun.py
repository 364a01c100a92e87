"""EDM's second-order Heun sampler `heun`, with optional stochastic churn.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Alg. 1 (deterministic) and Alg. 2 (churn), generalised to every linear-Gaussian process by
working in EDM's scaled coordinates x_s = x / alpha, sigma_s = sigma / alpha (`diffkit.solvers.edm`):
for VE (alpha = 1) it is exactly EDM, for VP it is the same probability-flow ODE in EDM form.
One step from grid time t_i to t_{i+1} (sigma_i, sigma_{i+1} are sigma_s on the grid):

    gamma = min(s_churn / N, sqrt(2) - 1) if s_tmin <= sigma_i <= s_tmax else 0     (churn only)
    sigma_hat = min(sigma_i (1 + gamma), sigma_s(t_max));  t_hat = t(sigma_hat)
    x_hat = x_s + s_noise sqrt(sigma_hat^2 - sigma_i^2) z,  z ~ N(0, I) from the generator
    d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat;  x' = x_hat + (sigma_{i+1} - sigma_hat) d   (Euler)
    d' = (x' - D(x'; sigma_{i+1})) / sigma_{i+1};   x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat)(d + d') / 2

with D the model's x0 prediction, evaluated at the off-grid time t_hat = process.t_from_log_snr(
-2 log sigma_hat) when churn raised the noise level. sigma_hat is capped at sigma_s(t_max) so
the model always sees the noise level the state really has (EDM's sigma is unbounded).

Last step. diffkit grids end at t_min > 0 (sigma_s > 0), while EDM's ends at sigma = 0, where
it takes an Euler step because d' is undefined there. Here "the last step" is the last grid
interval t_{N-1} -> t_N = t_min: with `euler_last` (default) it is a plain Euler step (one
model call), so a call costs 2 N - 1 NFE (+1 with `denoise_final`); without it every interval
is a Heun step (2 N NFE). EDM's own recipe, N Heun steps followed by an Euler step to sigma = 0,
is `euler_last=false, denoise_final=true`: the Euler step to sigma_s = 0 is exactly x <- D(x).
A grid ending at sigma = 0 (a final point 0.0 below t_min, as k-diffusion's sigma lists end) is
that recipe: every interval before the zero point is a Heun step and the last one is the Euler
step to sigma = 0, x <- D(x) (k-diffusion's sample_heun does the same); `euler_last` and
`denoise_final` have nothing left to do there, and a grid of N + 1 intervals costs 2 N + 1 NFE.

Noise. With s_churn > 0 one standard normal draw shaped like x is taken from the caller's
generator at every step (also where gamma = 0), as k-diffusion's `sample_heun` does, so a
shared noise sequence reproduces it draw for draw.

Default grid: `quadratic`, by measurement (vp, default options, 10000 samples from the same
prior noise; within-mode spread / exact, 1 is right, and sliced-W2 / its noise floor):

    steps (NFE)  grid        gmm:ring8        gmm:d64
    10 (19)      uniform     0.956  1.19x     0.439  3.87x
                 log-snr     1.075  1.24x     1.131  2.04x
                 karras      1.093  1.36x     1.165  2.43x
                 quadratic   1.035  1.05x     1.042  1.39x
    20 (39)      uniform     0.606  1.40x     0.657  2.32x
                 log-snr     1.007  1.13x     1.028  1.23x
                 karras      1.014  1.16x     1.051  1.26x
                 quadratic   1.019  1.15x     1.018  1.19x

quadratic also wins on subvp and ddpm at 10 steps; under ve, EDM's `karras` is better (ring8
spread 0.997 against quadratic's 1.42 at 10 steps), so pass `--grid karras` there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from diffkit import Capabilities, Prediction, Registrar, hookimpl
from diffkit.solvers import (
    VE_LOG_SNR,
    FixedStepSampler,
    StepContext,
    churn_gamma,
    churn_noise_std,
    churn_sigma,
    euler_step,
    from_scaled,
    heun_correction,
    log_snr_of_sigma_scaled,
    ode_derivative,
    sigma_scaled,
    to_scaled,
)


@dataclass(frozen=True, kw_only=True)
class Heun(FixedStepSampler):
    """EDM Heun sampler (Karras et al. 2022, Alg. 1 / Alg. 2); order 2, 2 NFE per step.

    Options:
        s_churn: total churn S_churn >= 0; 0 gives the deterministic Alg. 1.
        s_tmin, s_tmax: churn only at steps whose sigma_s = sigma / alpha lies in [s_tmin, s_tmax].
        s_noise: S_noise, the std multiplier of the churn noise.
        euler_last: make the last grid interval (to t_min) an Euler step, saving one NFE (on a
            grid ending at sigma = 0 the step to 0 is the Euler step, the others are Heun).
        denoise_final: after reaching t_min, return the model's x0 prediction (one extra NFE).
    """

    s_churn: float = field(default=0.0, metadata={"range": (0, None)})
    s_tmin: float = field(default=0.0, metadata={"range": (0, None)})
    s_tmax: float = field(
        default=math.inf, metadata={"range": (0, None), "finite": False, "at_least": "s_tmin"}
    )
    s_noise: float = field(default=1.0, metadata={"range": (0, None)})
    euler_last: bool = True

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """Order 2, 2 NFE per step (one less on an Euler last step); stochastic iff s_churn > 0."""
        return Capabilities(
            stochastic=self.s_churn > 0,
            order=2.0,
            adaptive=False,
            nfe_per_step=2,
            default_grid="quadratic",
            grid_by_feature=VE_LOG_SNR,
            default_steps=20,
        )

    def expected_nfe(self, n_steps: int) -> int:
        """Model calls for an `n_steps` grid: 2 per step, one less with an Euler last step."""
        return 2 * n_steps - int(self.euler_last) + int(self.denoise_final)

    def _churn(
        self, ctx: StepContext, i: int, x: torch.Tensor, sigma_i: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, Prediction]:
        """Alg. 2 lines 4-7: lift x to sigma_hat; return x_hat (scaled), sigma_hat and D's prediction."""
        process = ctx.process
        t_max = ctx.times.new_full((), process.t_max)  # a device fill, no host copy
        gamma = churn_gamma(
            sigma_i, s_churn=self.s_churn, n_steps=ctx.n_steps, s_tmin=self.s_tmin, s_tmax=self.s_tmax
        )
        sigma_hat = churn_sigma(sigma_i, gamma, sigma_scaled(process.log_snr(t_max)))
        raised = sigma_hat > sigma_i
        t_hat = torch.where(raised, process.t_from_log_snr(log_snr_of_sigma_scaled(sigma_hat)), ctx.times[i])
        alpha_hat = torch.where(raised, process.alpha(t_hat), ctx.alpha[i])
        std = ctx.coef(churn_noise_std(sigma_i, sigma_hat) * self.s_noise)
        x_hat = to_scaled(x, ctx.coef(ctx.alpha[i])) + std * ctx.noise(x)
        return x_hat, sigma_hat, ctx.predict_at(from_scaled(x_hat, ctx.coef(alpha_hat)), t_hat)

    def step(self, ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
        """One Heun (or, on an Euler last step, Euler) step in scaled coordinates, t_i -> t_{i+1}."""
        sigma_i, sigma_next = sigma_scaled(ctx.log_snr[i]), sigma_scaled(ctx.log_snr[i + 1])
        if self.s_churn > 0:
            x_s, sigma_hat, prediction = self._churn(ctx, i, x, sigma_i)
        else:
            x_s, sigma_hat, prediction = to_scaled(x, ctx.coef(ctx.alpha[i])), sigma_i, ctx.predict(x, i)
        alpha_next = ctx.coef(ctx.alpha[i + 1])
        h = ctx.coef(sigma_next - sigma_hat)
        d = ode_derivative(x_s, prediction.x0, ctx.coef(sigma_hat))
        x_next = euler_step(x_s, d, h)
        if not (self.euler_last and i == ctx.n_steps - 1 and not ctx.to_zero):
            denoised = ctx.predict(from_scaled(x_next, alpha_next), i + 1).x0
            x_next = heun_correction(x_s, d, ode_derivative(x_next, denoised, ctx.coef(sigma_next)), h)
        return from_scaled(x_next, alpha_next)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `heun` sampler."""
    registrar.add_sampler("heun", Heun)
