"""DPM-Solver++ samplers `dpmpp-2m`, `dpmpp-3m`, `dpmpp-2s`, `dpmpp-2m-sde` (Lu et al. 2022).

Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models". All four are exponential integrators in data prediction
(`diffkit.solvers.exponential`): each step is the first-order step `exponential_step` with the data
prediction replaced by a combination D of predictions,

* `dpmpp-2m` (Alg. 2) and `dpmpp-3m`: D extrapolates the last 2 or 3 grid predictions in
  lam = log(alpha/sigma) (1 NFE per step; the first steps warm up with lower orders);
* `dpmpp-2s` (Alg. 1): D combines the predictions at the start and at an intermediate point
  lam + r h (r = 1/2, the lam-midpoint, by default; 2 NFE per step), reached by a first-order
  step; or, with `intermediate="grid"`, at the next grid point (diffusers' singlestep solver);
* `dpmpp-2m-sde` ("SDE-DPM-Solver++(2M)"): the 2M combination in the exact solution of
  the reverse SDE with re-noising `h_noise = eta h` (k-diffusion's eta, s_noise, solver_type).

Final-step policy (DESIGN.md section 9), for the multistep samplers. The *final step* is the
denoising step when `denoise_final` is on (an exponential step to sigma = 0, which is always
first order: it returns the x0 prediction, like diffusers' final step to alpha = 1 or
k-diffusion's last sigma = 0), else the last grid step. Over the sequence of all steps:
`lower_order_final` ramps the order down to 1 at the final step when there are fewer than 15
steps (the paper's advice; with `denoise_final` the grid step before the denoising stays second
order, as in diffusers), and `final_step="euler"` makes the final step first order at any step
count (diffusers' `euler_at_final`; a no-op with `denoise_final`).

A grid ending at sigma = 0 (a final point 0.0 below t_min) makes its last step that denoising
step (first order: the 2M/3M extrapolation has no finite limit as h -> inf, see
`diffkit.solvers.exponential`; diffusers' `final_sigmas_type="zero"` lowers it the same way), so
`--grid karras --final-sigma zero` is DPMSolverMultistepScheduler(use_karras_sigmas=True,
final_sigmas_type="zero"); `denoise_final` then adds nothing. For `dpmpp-2s` the step to 0 is the
x0 prediction (one NFE, no midpoint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from diffkit import Capabilities, Registrar, hookimpl
from diffkit.solvers import (
    VE_LOG_SNR,
    FixedStepSampler,
    MultistepSampler,
    SolverType,
    StepContext,
    combine,
    dpmpp_multistep_weights,
    exponential_coefficients,
    exponential_step,
    half_log_snr,
    singlestep_weights,
)


@dataclass(frozen=True, kw_only=True)
class _Multistep(MultistepSampler):
    """Shared loop body of DPM-Solver++(2M), (3M) and (2M) SDE (options: see `MultistepSampler`)."""

    max_order: ClassVar[int] = 2

    def _noise_h(self, h: torch.Tensor) -> torch.Tensor | float:
        """Re-noised part of the step (0: the probability-flow ODE)."""
        return 0.0

    def _noise(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor | None:
        """Noise for the step (None: deterministic)."""
        return None

    def _solver_type(self) -> SolverType:
        return "midpoint"

    def step(self, ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
        """One multistep DPM-Solver++ step from times[i] to times[i + 1]."""
        ctx.history.append(ctx.predict(x, i).x0)
        del ctx.history[: -self.max_order]  # keep the newest max_order predictions
        order = self.order_at(ctx, i, self.max_order)
        lam = half_log_snr(ctx.log_snr)
        lams = torch.cat([lam[i + 1 : i + 2], lam[i + 1 - order : i + 1].flip(0)])
        h = lam[i + 1] - lam[i]
        h_noise = self._noise_h(h)
        weights = dpmpp_multistep_weights(lams, self._solver_type(), h_noise)
        d = combine(ctx.history[::-1][:order], weights)
        coefficients = exponential_coefficients(ctx.sigma[i], ctx.sigma[i + 1], ctx.alpha[i + 1], h, h_noise)
        return exponential_step(x, d, coefficients, self._noise(ctx, x))


@dataclass(frozen=True, kw_only=True)
class DPMSolverPP2M(_Multistep):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2); order 2, 1 NFE per step.

    Default grids of this module were measured (within-mode spread and sliced W2 on gmm:d64 and
    gmm:ring8 under vp at 10 and 20 steps): log-snr for 2M, quadratic for 3M, 2S and 2M SDE.
    """

    max_order: ClassVar[int] = 2
    capabilities: ClassVar[Capabilities] = Capabilities(
        stochastic=False, order=2.0, nfe_per_step=1, default_grid="log-snr", default_steps=20
    )


@dataclass(frozen=True, kw_only=True)
class DPMSolverPP3M(_Multistep):
    """Third-order multistep DPM-Solver++ (Lu et al. 2022, exact D2 term); order 3, 1 NFE per step."""

    max_order: ClassVar[int] = 3
    capabilities: ClassVar[Capabilities] = Capabilities(
        stochastic=False,
        order=3.0,
        nfe_per_step=1,
        default_grid="quadratic",
        grid_by_feature=VE_LOG_SNR,
        default_steps=20,
    )


@dataclass(frozen=True, kw_only=True)
class DPMSolverPP2MSDE(_Multistep):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022), noise from the caller's generator.

    Options (besides those of `dpmpp-2m`):
        eta: re-noising rate, h_noise = eta h (1: the reverse SDE; 0: `dpmpp-2m` exactly).
        s_noise: scale of the added noise (1: exact).
        solver_type: "midpoint" (k-diffusion's default) or "heun" second-order term.

    Declared (weak) order 1 when stochastic: the linear part and the Gaussian increment are
    exact, but the x0 predictions are taken along a Brownian path, so their differences that
    the 2M term extrapolates are O(sqrt(h)) noise, not O(h) smooth changes; we know of no
    weak-order-2 analysis of this scheme, so only the order of its first-order core is claimed.
    """

    eta: float = field(default=1.0, metadata={"range": (0, None)})
    s_noise: float = field(default=1.0, metadata={"range": (0, None)})
    solver_type: SolverType = "midpoint"

    @property
    def capabilities(self) -> Capabilities:
        """Weak order 1 and stochastic when eta > 0 and s_noise > 0; else the ODE's order 2."""
        stochastic = self.eta > 0 and self.s_noise > 0
        return Capabilities(
            stochastic=stochastic,
            order=1.0 if stochastic else 2.0,
            nfe_per_step=1,
            default_grid="quadratic",
            grid_by_feature=VE_LOG_SNR,
            default_steps=50,
        )

    def _noise_h(self, h: torch.Tensor) -> torch.Tensor | float:
        return self.eta * h

    def _noise(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor | None:
        if self.eta > 0 and self.s_noise > 0:
            return self.s_noise * ctx.noise(x)
        return None

    def _solver_type(self) -> SolverType:
        return self.solver_type


Intermediate = Literal["ratio", "grid"]


@dataclass(frozen=True, kw_only=True)
class DPMSolverPP2S(FixedStepSampler):
    """DPM-Solver++(2S) (Lu et al. 2022, Alg. 1); order 2, 2 NFE per step (1 with the grid point).

    Each step predicts x0 at the start, takes a first-order step to the intermediate point
    lam + r h, predicts there and takes the full step with D = (1 - 1/(2r)) x0 + 1/(2r) x0_r.
    Singlestep: no history and no final-step options besides `denoise_final`.

    Options:
        r: position of the intermediate point in (0, 1] as a fraction of the step in lam
            (Alg. 1's r_1; 1/2, the lam-midpoint, is the paper's choice and the default).
        intermediate: "ratio" (the point lam + r h, off the grid: 2 NFE per grid step) or "grid"
            (the next grid point, as diffusers' DPMSolverSinglestepScheduler with solver_order=2:
            grid intervals pair up, the first of a pair is the first-order step to its end, the
            second redoes the pair from its start with r = (lam_{i+1} - lam_i) / (lam_{i+2} -
            lam_i); 1 NFE per grid step; an unpaired last interval is a first-order step).
        denoise_final: after reaching t_min, return the x0 prediction (one extra NFE).
    """

    r: float = 0.5
    intermediate: Intermediate = "ratio"

    def __post_init__(self) -> None:
        """Validate options (r in (0, 1]; r only with the off-grid intermediate point)."""
        super().__post_init__()
        r = self.r
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0.0 < r <= 1.0:
            raise ValueError(f"option r must be a number in (0, 1], got {r!r}")
        if self.intermediate == "grid" and r != 0.5:
            raise ValueError(f"option r={r} needs intermediate=ratio")

    @property
    def capabilities(self) -> Capabilities:
        """Deterministic, order 2; 2 NFE per step off the grid, 1 with `intermediate="grid"`."""
        grid = self.intermediate == "grid"
        return Capabilities(
            stochastic=False,
            order=2.0,
            nfe_per_step=1 if grid else 2,
            default_grid="quadratic",
            grid_by_feature=VE_LOG_SNR,
            default_steps=20 if grid else 10,
        )

    def step(self, ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
        """One DPM-Solver++(2S) step from times[i] to times[i + 1] (half a pair with the grid point)."""
        if self.intermediate == "grid":
            return self._grid_step(ctx, i, x)
        x0 = ctx.predict(x, i).x0
        lam = half_log_snr(ctx.log_snr)
        h = lam[i + 1] - lam[i]
        process = ctx.process
        r = self.r
        t_mid = process.t_from_log_snr(((1.0 - r) * ctx.log_snr[i] + r * ctx.log_snr[i + 1]).reshape(1))[0]
        lam_mid = half_log_snr(process.log_snr(t_mid))  # as realised by the inverse
        mid = exponential_coefficients(
            ctx.sigma[i], process.sigma(t_mid), process.alpha(t_mid), lam_mid - lam[i]
        )
        x0_mid = ctx.predict_at(exponential_step(x, x0, mid), t_mid).x0
        d = combine([x0, x0_mid], singlestep_weights((lam_mid - lam[i]) / h))
        coefficients = exponential_coefficients(ctx.sigma[i], ctx.sigma[i + 1], ctx.alpha[i + 1], h)
        return exponential_step(x, d, coefficients)

    def _grid_step(self, ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
        """Pairs (0, 1), (2, 3), ...: first-order step to the pair's middle, then the pair's 2S step."""
        x0 = ctx.predict(x, i).x0
        lam = half_log_snr(ctx.log_snr)
        if i % 2 == 0:  # first of a pair (or an unpaired last interval): DPM-Solver++(1)
            ctx.history[:] = [(x, x0)]
            h = lam[i + 1] - lam[i]
            return exponential_step(
                x, x0, exponential_coefficients(ctx.sigma[i], ctx.sigma[i + 1], ctx.alpha[i + 1], h)
            )
        x_start, x0_start = ctx.history[0]
        h = lam[i + 1] - lam[i - 1]
        d = combine([x0_start, x0], singlestep_weights((lam[i] - lam[i - 1]) / h))
        coefficients = exponential_coefficients(ctx.sigma[i - 1], ctx.sigma[i + 1], ctx.alpha[i + 1], h)
        return exponential_step(x_start, d, coefficients)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register dpmpp-2m, dpmpp-3m, dpmpp-2s and dpmpp-2m-sde."""
    registrar.add_sampler("dpmpp-2m", DPMSolverPP2M)
    registrar.add_sampler("dpmpp-3m", DPMSolverPP3M)
    registrar.add_sampler("dpmpp-2s", DPMSolverPP2S)
    registrar.add_sampler("dpmpp-2m-sde", DPMSolverPP2MSDE)
