"""Probability-flow ODE samplers `ode` and `ode:<method>` on torchdiffeq.

The probability-flow ODE (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
eq. 13) shares the marginals p_t of the forward SDE `dx = f(t) x dt + g(t) dw`:

    dx/dt = f(t) x - g(t)^2 score(x, t) / 2,

integrated with `torchdiffeq.odeint` from grid[0] = t_max down to grid[-1] = t_min.

* Adaptive methods (dopri5, ...) use only the grid's end points. A `step_t` at the final time
  makes every step stop exactly on t_min instead of overshooting it and interpolating back.
* Fixed-step methods (euler, midpoint, rk4, ...) step exactly on the given grid.
* A grid ending at sigma = 0 (a final point 0.0 below t_min): the ODE is integrated to the
  point before it, t_last, and the last step is the model's x0 prediction there (one NFE, the
  Euler step to sigma = 0 in EDM's scaled coordinates; `denoise_final` then adds nothing).
* The ODE function never evaluates the model outside the integration span [grid[-1], grid[0]]
  (inside [t_min, t_max]): torchdiffeq hands it t in the state's dtype (float32 rounding may
  leave the span by an ulp) and its initial-step heuristic probes t0 + h0 for a small h0 that
  can pass the end of a very short span, so t is clamped to the span (in float64) before any
  coefficient or model call. Only that probe (which just sizes the first step) is affected.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torchdiffeq

from diffkit import (
    Capabilities,
    NoiseProcess,
    Registrar,
    SampleResult,
    SamplingError,
    ScoreModel,
    StepInfo,
    hookimpl,
    validate_options,
)
from diffkit.solvers import (
    Callback,
    check_grid,
    finish_run,
    probability_flow_drift,
    schedule_dtype,
    split_final_zero,
)

try:  # torchdiffeq's own method table: the source of truth for which names it accepts
    from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS
except ImportError:  # pragma: no cover - layout of a future torchdiffeq
    _TORCHDIFFEQ_SOLVERS = {}


@dataclass(frozen=True)
class ODEMethod:
    """What diffkit knows about one torchdiffeq method.

    Attributes:
        order: convergence order of the global error in the step size.
        adaptive: chooses its own steps from rtol/atol (else it steps on the grid).
        nfe_per_step: model calls per grid step (0: adaptive or variable).
    """

    order: float
    adaptive: bool
    nfe_per_step: int


_KNOWN_METHODS: dict[str, ODEMethod] = {
    # adaptive embedded Runge–Kutta pairs
    "dopri5": ODEMethod(5.0, True, 0),
    "dopri8": ODEMethod(8.0, True, 0),
    "bosh3": ODEMethod(3.0, True, 0),
    "fehlberg2": ODEMethod(2.0, True, 0),
    "adaptive_heun": ODEMethod(2.0, True, 0),
    # fixed-grid methods
    "euler": ODEMethod(1.0, False, 1),
    "midpoint": ODEMethod(2.0, False, 2),
    "heun2": ODEMethod(2.0, False, 2),
    "heun3": ODEMethod(3.0, False, 3),
    "rk4": ODEMethod(4.0, False, 4),
    # Adams–Bashforth(-Moulton): RK4 start-up steps and corrector iterations make the NFE vary;
    # torchdiffeq raises the order up to 11, which is unstable at low step counts on stiff data
    "explicit_adams": ODEMethod(4.0, False, 0),
    "implicit_adams": ODEMethod(4.0, False, 0),
    "fixed_adams": ODEMethod(4.0, False, 0),
}
# `scipy_solver` is left out on purpose: it round-trips every evaluation through numpy.
ODE_METHODS: dict[str, ODEMethod] = {
    m: info for m, info in _KNOWN_METHODS.items() if m in _TORCHDIFFEQ_SOLVERS
}


class _ProbabilityFlow:
    """The ODE function `t, x -> dx/dt` handed to torchdiffeq, plus its step bookkeeping.

    torchdiffeq finds `callback_step` / `callback_accept_step` on this object; adaptive runs
    report every function evaluation to the user callback, fixed-step runs every grid step.
    """

    def __init__(
        self,
        model: ScoreModel,
        process: NoiseProcess,
        *,
        adaptive: bool,
        max_num_steps: int,
        span: tuple[float, float],
        callback: Callback | None,
        name: str,
    ) -> None:
        self.model, self.process, self.callback, self.name = model, process, callback, name
        self.t_lo, self.t_hi = span
        self.nfe_start = model.nfe
        self.max_num_steps = max_num_steps
        self.attempted = 0  # adaptive: steps tried (accepted + rejected)
        self.accepted = 0  # adaptive: accepted steps; fixed: steps started
        self.adaptive = adaptive
        if adaptive:
            self.callback_step = self._attempt
            self.callback_accept_step = self._accept
        else:
            self.callback_step = self._grid_step

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """dx/dt = f x - g^2 score / 2 at the clamped time t (0-dim), state x `(B, *dims)`.

        Evaluated as alpha' x0 + sigma' eps (the same field): on a flow path f x and g^2 score / 2
        are each ~x / (1 - t) and cancel, losing ~1 / (1 - t) of float32 precision near t = 1.
        """
        t = t.to(schedule_dtype(t.device)).clamp(self.t_lo, self.t_hi)
        prediction = self.model.predict(x, t)
        if self.adaptive and self.callback is not None:
            self.callback(StepInfo(self.accepted, t, x, self.nfe))
        return probability_flow_drift(self.process, prediction, t)

    @property
    def nfe(self) -> int:
        """Model calls since this object was made."""
        return self.model.nfe - self.nfe_start

    def _attempt(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        if self.attempted >= self.max_num_steps:
            raise SamplingError(
                f"sampler {self.name!r} exceeded max_num_steps={self.max_num_steps} adaptive steps; "
                "loosen rtol/atol or raise max_num_steps"
            )
        self.attempted += 1

    def _accept(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.accepted += 1

    def _grid_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        # called before each fixed step with the state reached by the previous one
        if self.accepted > 0 and self.callback is not None:
            self.callback(StepInfo(self.accepted - 1, t0, y0, self.nfe))
        self.accepted += 1


@dataclass(frozen=True, kw_only=True)
class ODESampler:
    """Probability-flow ODE (Song et al. 2021, eq. 13) with any torchdiffeq method.

    Options:
        method: torchdiffeq method (dopri5, rk4, euler, ...; see `ODE_METHODS`).
        rtol, atol: tolerances of adaptive methods (and of the implicit Adams corrector).
        first_step: initial step of adaptive methods (None: torchdiffeq's heuristic).
        max_num_steps: adaptive methods give up (SamplingError) after this many steps,
            accepted or rejected.
        denoise_final: after reaching t_min, return the model's x0 prediction (one extra NFE).
    """

    method: str = field(default="dopri5", metadata={"choices": tuple(ODE_METHODS)})
    rtol: float = field(default=1e-5, metadata={"positive": True, "finite": False})
    atol: float = field(default=1e-5, metadata={"positive": True, "finite": False})
    first_step: float | None = field(default=None, metadata={"positive": True, "finite": False})
    max_num_steps: int = field(default=100_000, metadata={"positive": True})
    denoise_final: bool = False

    def __post_init__(self) -> None:
        """Check the declared options (method among `ODE_METHODS`), then first_step's method."""
        validate_options(self)
        if self.first_step is not None and not ODE_METHODS[self.method].adaptive:
            raise ValueError(f"option first_step applies to adaptive methods only, not {self.method!r}")

    @property
    def capabilities(self) -> Capabilities:
        """Order, adaptivity and NFE per step of the chosen method.

        Fixed-step methods default to the log-SNR grid: the probability-flow velocity varies on
        the scale of log-SNR (it is nearly linear in lambda, Lu et al. 2022), so equal lambda
        steps spread the error evenly, while equal t steps spend most of the budget at high
        noise and take one huge step in sigma near t_min (DESIGN.md section 9).
        """
        info = ODE_METHODS[self.method]
        return Capabilities(
            stochastic=False,
            order=info.order,
            adaptive=info.adaptive,
            nfe_per_step=info.nfe_per_step,
            default_grid="uniform" if info.adaptive else "log-snr",
            default_steps=100,
        )

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
        """Integrate the probability-flow ODE from `grid[0]` to `grid[-1]` (deterministic).

        Args:
            model: score model (counts its NFE).
            process: the noise process (f and g^2 come from it).
            x_init: prior samples `(B, *dims)` at t = grid[0].
            grid: float64 `(N + 1,)` times, strictly descending (adaptive methods use the ends),
                possibly ending at sigma = 0 (then the last step is the x0 prediction).
            generator: unused (the sampler is deterministic).
            callback: called after every fixed step, or after every model call when adaptive.

        Returns:
            `SampleResult` whose `steps` are the grid steps, or the accepted adaptive steps.
        """
        grid, to_zero = split_final_zero(check_grid(grid, process), process)
        info = ODE_METHODS[self.method]
        device = x_init.device
        times = grid.to(device=device, dtype=schedule_dtype(device))
        ends = torch.stack([times[0], times[-1]])
        func = _ProbabilityFlow(
            model,
            process,
            adaptive=info.adaptive,
            max_num_steps=self.max_num_steps,
            span=(float(times[-1]), float(times[0])),
            callback=callback,
            name=f"ode:{self.method}",
        )
        options: dict[str, Any] = {}
        if info.adaptive:
            options["step_t"] = ends[-1:]  # land exactly on t_min (torchdiffeq flips it with time)
            options["dtype"] = times.dtype  # time dtype: float64, float32 where the device lacks it
            if self.first_step is not None:
                options["first_step"] = self.first_step
        else:
            options["grid_constructor"] = lambda func, y0, t: times  # exactly our grid (it negates it)
        x = x_init
        if times.shape[0] > 1:  # else the grid is [t_max, 0]: only the step to sigma = 0
            solution = torchdiffeq.odeint(
                func, x_init, ends, rtol=self.rtol, atol=self.atol, method=self.method, options=options
            )
            x = solution[-1]
        if not info.adaptive and callback is not None and func.accepted > 0:
            callback(StepInfo(func.accepted - 1, times[-1], x, func.nfe))
        return finish_run(
            model,
            x,
            times[-1],
            func.accepted,
            func.nfe_start,
            denoise_final=self.denoise_final,
            callback=callback,
            extras={"method": self.method},
            to_zero=to_zero,
        )


def _method_factory(method: str) -> Callable[..., ODESampler]:
    """`ODESampler` with `method` bound (the registry hides bound options from users)."""
    factory = functools.partial(ODESampler, method=method)
    factory.__doc__ = f"Probability-flow ODE with torchdiffeq's {method} method."
    return factory


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register `ode` (adaptive dopri5) and the `ode:<method>` family."""
    registrar.add_sampler("ode", ODESampler)
    registrar.add_family(
        "sampler", "ode", tuple(ODE_METHODS), summary="probability-flow ODE with a torchdiffeq method"
    )


@hookimpl
def diffkit_resolve(kind: str, name: str) -> Callable[..., Any] | None:
    """Resolve `ode:<method>` to an `ODESampler` with that method, if torchdiffeq has it."""
    prefix, sep, method = name.partition(":")
    if kind != "sampler" or prefix != "ode" or not sep or method not in ODE_METHODS:
        return None
    return _method_factory(method)
