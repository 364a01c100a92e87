"""UniPC sampler `unipc` (Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector
Framework for Fast Sampling of Diffusion Models"), B(h) = e^h - 1 ("bh2"), data prediction.

Step i (from lam_i = log(alpha/sigma) at t_i to lam_{i+1}) makes one model call, at the state
`x_i` the previous predictor produced:

1. UniC, if `use_corrector` and i > 0: re-take step i-1 from its corrected start
   with the combination of the predictions at lam_{i-1}, ..., and the *new* one at lam_i, which
   raises that step's order by one; the new prediction is not recomputed at the corrected
   state, so NFE per step stays 1. The last step's output is not corrected (no call follows).
2. UniP: a multistep step of order p from the (corrected) state with the newest p
   predictions.

Both are the shared first-order exponential step with a combined data prediction
(`diffkit.solvers.exponential.unipc_weights`). Orders warm up (step i has at most i + 1) and ramp down
at the end like DPM-Solver++ (`lower_order_final` below 15 steps, `final_step`; the denoising
step of `denoise_final`, when on, is the final one, first order, from the uncorrected state,
exactly diffusers' UniPCMultistepScheduler final step to sigma = 0).

A grid ending at sigma = 0 (a final point 0.0 below t_min) makes its last step that denoising
step: the x0 prediction at the point before it, uncorrected (UniC there would redo the step with
a prediction at sigma = 0, which does not exist, and the first-order step to sigma = 0 multiplies
the state by sigma_next / sigma = 0, so a correction of it would not change the output). This is
diffusers' UniPCMultistepScheduler with `final_sigmas_type="zero"` (its last corrector is applied
to the state that its final step discards), e.g. `--grid karras --final-sigma zero` for
`use_karras_sigmas=True`; `denoise_final` then adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffkit import Capabilities, Registrar, hookimpl
from diffkit.solvers import (
    VE_LOG_SNR,
    MultistepSampler,
    StepContext,
    combine,
    exponential_coefficients,
    exponential_step,
    half_log_snr,
    unipc_weights,
)


@dataclass(frozen=True)
class _Point:
    """What a UniPC step leaves for the next ones: its x0 prediction, start state and order."""

    x0: torch.Tensor
    x: torch.Tensor
    order: int


def _ratios(lam: torch.Tensor, start: int, first: int, last: int, h: torch.Tensor) -> torch.Tensor:
    """`(lam[k] - lam[start]) / h` for k = first, first - 1, ..., last (newest first)."""
    return (lam[last : first + 1].flip(0) - lam[start]) / h


@dataclass(frozen=True, kw_only=True)
class UniPC(MultistepSampler):
    """UniPC-bh2 (Zhao et al. 2023) in data prediction; 1 NFE per step.

    Options:
        order: predictor order p, 2 or 3 (the declared order is p + 1 with the corrector).
        use_corrector: apply UniC after every step but the last.
        lower_order_final: below 15 steps, lower the order of the last steps.
        final_step: "solver" (the solver's order) or "euler" (first-order final step).
        denoise_final: after reaching t_min, return the x0 prediction (one extra NFE).
    """

    order: int = 2
    use_corrector: bool = True

    def __post_init__(self) -> None:
        """Validate options."""
        super().__post_init__()
        if isinstance(self.order, bool) or self.order not in (2, 3):
            raise ValueError(f"option order must be 2 or 3, got {self.order!r}")

    @property
    def capabilities(self) -> Capabilities:
        """Deterministic, 1 NFE per step; order p + 1 with the corrector (Zhao et al. 2023), else p.

        UniC-p raises the order of accuracy of the step it corrects to p + 1 (Zhao et al. 2023);
        the uncorrected last step only adds one local error of that order. Measured on gmm:d64 /
        vp (tests/test_exponential_solvers.py): slopes 3.0 for order 2 and 4.1 for order 3.
        Default grid, measured (spread and sliced W2 on gmm:d64 and gmm:ring8 under vp, 10 and
        20 steps): log-snr for order 2, quadratic for order 3.
        """
        return Capabilities(
            stochastic=False,
            order=float(self.order + int(self.use_corrector)),
            nfe_per_step=1,
            default_grid="log-snr" if self.order == 2 else "quadratic",
            grid_by_feature=VE_LOG_SNR,
            default_steps=20,
        )

    def step(self, ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
        """UniC for step i - 1 (with the new prediction at x), then UniP from times[i] to times[i + 1]."""
        x0 = ctx.predict(x, i).x0
        lam = half_log_snr(ctx.log_snr)
        history: list[_Point] = ctx.history
        if self.use_corrector and history:
            x = self._correct(ctx, i, lam, history, x0)
        order = self.order_at(ctx, i, self.order)
        history.append(_Point(x0, x, order))
        del history[: -self.order]  # keep the newest `order` points
        h = lam[i + 1] - lam[i]
        weights = unipc_weights(_ratios(lam, i, i - 1, i - order + 1, h), h)
        d = combine([p.x0 for p in history[::-1][:order]], weights)
        return exponential_step(
            x, d, exponential_coefficients(ctx.sigma[i], ctx.sigma[i + 1], ctx.alpha[i + 1], h)
        )

    def _correct(
        self, ctx: StepContext, i: int, lam: torch.Tensor, history: list[_Point], x0_new: torch.Tensor
    ) -> torch.Tensor:
        """UniC-p: redo step i - 1 with its p - 1 older predictions and the new one."""
        previous = history[-1]
        p = previous.order
        h = lam[i] - lam[i - 1]
        rks = torch.cat([_ratios(lam, i - 1, i - 2, i - p, h), torch.ones_like(h).reshape(1)])
        x0s = [point.x0 for point in history[::-1][:p]] + [x0_new]
        d = combine(x0s, unipc_weights(rks, h))
        coefficients = exponential_coefficients(ctx.sigma[i - 1], ctx.sigma[i], ctx.alpha[i], h)
        return exponential_step(previous.x, d, coefficients)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `unipc` sampler."""
    registrar.add_sampler("unipc", UniPC)
