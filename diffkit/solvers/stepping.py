"""The shared fixed-step loop: a new fixed-grid method is a small class with one `step`.

`FixedStepSampler.__call__` validates the grid, precomputes the schedule on it in float64
(`StepContext`), runs `step(ctx, i, x)` for every interval `times[i] -> times[i+1]`, calls the
callback, applies the explicit final-step policy (`denoise_final`) and counts NFE through the
model wrapper. Per-call state (multistep history, noise) lives in the `StepContext`, never on
the sampler, so samplers stay stateless between calls.

A grid ending at sigma = 0 (a final point 0.0 below t_min, `diffkit.core.grid`): `ctx.times`
holds the grid without that point (the schedule is never evaluated at t = 0) and
`ctx.to_zero` is set; `step` runs on the intervals of `ctx.times` only, and `finish_run` takes
the last step, times[-1] -> sigma = 0, as the x0 prediction at times[-1]: the limit sigma_next
-> 0, alpha_next -> 1 of every first-order update (Euler `x + (0 - sigma) d`, DDIM,
DPM-Solver++(1), UniP-1; stochastic updates add no noise there, since the posterior at sigma = 0
is a point mass). Higher-order multistep updates have no finite limit on that step (their
extrapolation weights grow like h / h_prev with h = lam_next - lam = inf), so it is first order
for every solver, as in diffusers' `final_sigmas_type="zero"` and k-diffusion. It costs one NFE
and is counted in `SampleResult.steps`; with it, `denoise_final` has nothing left to do (the x0
prediction at sigma = 0 is the state itself) and adds no NFE.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from diffkit.core.grid import check_grid, split_final_zero
from diffkit.core.model import Prediction, ScoreModel
from diffkit.core.precision import schedule_dtype
from diffkit.core.process import NoiseProcess
from diffkit.core.sampler import Callback, Capabilities, SampleResult, StepInfo
from diffkit.plugin.options import validate_options


@dataclass
class StepContext:
    """Everything a step may use, for one sampler call.

    Attributes:
        model, process: the composition.
        times: `(N + 1,)` grid in the schedule dtype (float64 where supported) on x's device.
        alpha, sigma, log_snr: the schedule on `times`, same dtype (cast with `coef`).
        dtype, device: of the state x.
        generator: source of all Gaussian noise (never the global RNG).
        history: method-specific memory (e.g. past x0 predictions), reset every call.
        to_zero: the grid ended at sigma = 0 (dropped from `times`): the run ends with the x0
            prediction at times[-1] (`finish_run`).
    """

    model: ScoreModel
    process: NoiseProcess
    times: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    log_snr: torch.Tensor
    dtype: torch.dtype
    device: torch.device
    generator: torch.Generator
    history: list[Any] = field(default_factory=list)
    to_zero: bool = False

    @property
    def n_steps(self) -> int:
        """Number of intervals N of `times` (the step to sigma = 0 is not among them)."""
        return self.times.shape[0] - 1

    def predict(self, x: torch.Tensor, i: int) -> Prediction:
        """One model evaluation at grid time `times[i]`."""
        return self.model.predict(x, self.times[i])

    def predict_at(self, x: torch.Tensor, t: torch.Tensor) -> Prediction:
        """One model evaluation at an off-grid time `t` (0-dim, schedule dtype)."""
        return self.model.predict(x, t)

    def coef(self, value: torch.Tensor | float) -> torch.Tensor:
        """Cast a schedule scalar (computed in float64) to the state's dtype."""
        if not isinstance(value, torch.Tensor):  # a Python float: keep its float64 precision
            value = torch.as_tensor(value, dtype=self.times.dtype, device=self.device)
        return value.to(device=self.device, dtype=self.dtype)

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `like`, from the caller's generator."""
        return torch.randn(like.shape, generator=self.generator, device=self.device, dtype=self.dtype)


def local_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """Return `generator`, or a fresh nondeterministically seeded one (never the global RNG)."""
    if generator is not None:
        return generator
    fresh = torch.Generator(device=device)
    fresh.seed()
    return fresh


def finish_run(
    model: ScoreModel,
    x: torch.Tensor,
    t_end: torch.Tensor,
    n_steps: int,
    nfe_start: int,
    *,
    denoise_final: bool,
    callback: Callback | None,
    extras: dict[str, Any] | None = None,
    to_zero: bool = False,
) -> SampleResult:
    """End a run at `t_end`: the step to sigma = 0 or the final denoise (x0 prediction), result.

    Both are one model call and one callback: `x <- model.predict(x, t_end).x0`. With `to_zero`
    it is the grid's last step (reported at t = 0 and counted in `steps`), and `denoise_final`
    then adds nothing; `denoise_final` alone is an extra step after the grid (not counted).

    Args:
        x: the state `(B, *dims)` after the last step; `t_end`: 0-dim time of the last grid point
            in [t_min, t_max] (the one before the sigma = 0 point when `to_zero`).
        n_steps: steps taken before this one (also the index of its callback).
        nfe_start: `model.nfe` before the run, so the result counts this run's evaluations only.
        to_zero: the grid ends at sigma = 0 (`diffkit.core.grid.split_final_zero`).
    """
    if denoise_final or to_zero:
        x = model.predict(x, t_end).x0
        if callback is not None:
            t_report = torch.zeros_like(t_end) if to_zero else t_end
            callback(StepInfo(n_steps, t_report, x, model.nfe - nfe_start))
    return SampleResult(x, model.nfe - nfe_start, n_steps + int(to_zero), dict(extras or {}))


def make_context(
    model: ScoreModel,
    process: NoiseProcess,
    x_init: torch.Tensor,
    grid: torch.Tensor,
    generator: torch.Generator | None,
) -> StepContext:
    """Validate the grid and precompute the schedule on it (float64 where the device has it).

    A final sigma = 0 point is split off (`StepContext.to_zero`): `times` stays in [t_min, t_max].
    """
    grid, to_zero = split_final_zero(check_grid(grid, process), process)
    device = x_init.device
    times = grid.to(device=device, dtype=schedule_dtype(device))
    return StepContext(
        model=model,
        process=process,
        times=times,
        alpha=process.alpha(times),
        sigma=process.sigma(times),
        log_snr=process.log_snr(times),
        dtype=x_init.dtype,
        device=device,
        generator=local_generator(generator, device),
        to_zero=to_zero,
    )


@dataclass(frozen=True, kw_only=True)
class FixedStepSampler(abc.ABC):
    """Base of fixed-grid samplers: subclass, declare `capabilities`, implement `step`.

    Options (dataclass fields; subclasses add their own):
        denoise_final: after the last step, replace x by the model's x0 prediction at t_min
            (one extra NFE) -- the explicit final-step policy. On a grid ending at sigma = 0 the
            last step already is that prediction, and the option adds nothing.
    """

    denoise_final: bool = False
    capabilities: ClassVar[Capabilities]
    #: The sampler's own `step(ctx, ctx.n_steps, x)` takes the step to sigma = 0 (a grid ending
    #: there, or `denoise_final`) instead of the shared x0 prediction (e.g. LMS, whose weights
    #: stay finite at sigma = 0, as in k-diffusion and diffusers).
    steps_to_zero: ClassVar[bool] = False

    def __post_init__(self) -> None:
        """Check the declared option types and ranges; subclasses extend and call super()."""
        validate_options(self)

    @abc.abstractmethod
    def step(self, ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
        """Advance `x` `(B, *dims)` from `ctx.times[i]` to `ctx.times[i + 1]`."""

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
        """Run the shared loop from `grid[0]` to `grid[-1]` (see the module docstring)."""
        ctx = make_context(model, process, x_init, grid, generator)
        nfe_start = model.nfe
        x = x_init
        for i in range(ctx.n_steps):
            x = self.step(ctx, i, x)
            if callback is not None:
                callback(StepInfo(i, ctx.times[i + 1], x, model.nfe - nfe_start))
        if self.steps_to_zero and (ctx.to_zero or self.denoise_final):
            x = self.step(ctx, ctx.n_steps, x)
            if callback is not None:
                reached = torch.zeros_like(ctx.times[-1]) if ctx.to_zero else ctx.times[-1]
                callback(StepInfo(ctx.n_steps, reached, x, model.nfe - nfe_start))
            return SampleResult(x, model.nfe - nfe_start, ctx.n_steps + int(ctx.to_zero), {})
        return finish_run(
            model,
            x,
            ctx.times[-1],
            ctx.n_steps,
            nfe_start,
            denoise_final=self.denoise_final,
            callback=callback,
            to_zero=ctx.to_zero,
        )
