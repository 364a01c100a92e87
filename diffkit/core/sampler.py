"""Sampler contract: capabilities, step information, results and composition checks.

A sampler is configured once with typed keyword-only options (a frozen dataclass whose
fields are the options) and is stateless between calls:

    sampler(model, process, x_init, grid, *, generator=None, callback=None) -> SampleResult
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from diffkit.core.errors import CompositionError, DiffkitError, PluginError
from diffkit.core.model import ScoreModel
from diffkit.core.process import NoiseProcess, schedule_problem
from diffkit.core.traits import check_trait_names, traits_of

if TYPE_CHECKING:
    from diffkit.plugin.registry import Registry


@dataclass(frozen=True)
class Capabilities:
    """What a sampler is, declared once and checked at composition time.

    Attributes:
        stochastic: draws noise during sampling (needs a generator for reproducibility).
        order: declared convergence order (strong/ODE order for deterministic samplers,
            weak order for stochastic ones) in the step size.
        adaptive: chooses its own steps (the grid only gives the end points).
        nfe_per_step: model evaluations per grid step (0 if adaptive: not fixed).
        requires: process traits it needs (names of `ProcessTraits`), e.g. {"discrete"}.
        default_grid: grid used when the user gives none (unless the process prefers one).
        default_steps: step count used when the user gives none.
        grid_by_feature: per-process overrides of `default_grid`, as (process trait, grid)
            pairs; the first trait the process has wins (e.g. ("variance-exploding", "karras")).

    Raises:
        ValueError: `requires` or `grid_by_feature` names something that is no process trait.
    """

    stochastic: bool
    order: float
    adaptive: bool = False
    nfe_per_step: int = 1
    requires: frozenset[str] = frozenset()
    default_grid: str = "uniform"
    default_steps: int = 100
    grid_by_feature: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_trait_names(self.requires, "requires")
        check_trait_names((trait for trait, _ in self.grid_by_feature), "grid_by_feature")

    def grid_for(self, process: NoiseProcess) -> str:
        """The default grid for `process`: the sampler's per-trait override, else the grid the
        process prefers (`traits.default_grid`), else the sampler's `default_grid`."""
        traits = traits_of(process)
        for trait, grid in self.grid_by_feature:
            if trait in traits.names:
                return grid
        return traits.default_grid or self.default_grid


# Quadratic-in-t grids suit VP-type processes; on VE, t is already log(sigma)-linear and the
# log-SNR (geometric sigma) grid measured as good or better for every quadratic-default sampler.
VE_LOG_SNR: tuple[tuple[str, str], ...] = (("variance-exploding", "log-snr"),)


@dataclass(frozen=True)
class StepInfo:
    """What a callback receives after each step (or model evaluation for adaptive solvers).

    Attributes:
        step: 0-based step index.
        t: time reached, 0-dim tensor.
        x: current state `(B, *dims)`.
        nfe: model evaluations so far in this call.
    """

    step: int
    t: torch.Tensor
    x: torch.Tensor
    nfe: int


Callback = Callable[[StepInfo], None]


@dataclass(frozen=True)
class SampleResult:
    """Output of a sampler call.

    Attributes:
        x: final samples `(B, *dims)`.
        nfe: model evaluations used (counted by the model wrapper).
        steps: steps taken (accepted steps for adaptive solvers).
        extras: sampler-specific diagnostics.
    """

    x: torch.Tensor
    nfe: int
    steps: int
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Sampler(Protocol):
    """Contract of a sampler (`capabilities` may be a class attribute or a property).

    Optionally a fixed-step sampler defines `expected_nfe(n_steps) -> int` when its NFE is not
    simply `n_steps * nfe_per_step` (+1 with `denoise_final`), e.g. Heun's Euler last step; the
    conformance kit then checks the counted calls against it.
    """

    @property
    def capabilities(self) -> Capabilities:
        """What the sampler declares (order, NFE per step, requirements, defaults)."""

    def __call__(
        self,
        model: ScoreModel,
        process: NoiseProcess,
        x_init: torch.Tensor,
        grid: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
    ) -> SampleResult: ...


def check_composition(sampler_name: str, sampler: Sampler, process_name: str, process: NoiseProcess) -> None:
    """Raise CompositionError if `sampler` needs traits `process` lacks (naming both), or if
    `process` is unusable on its time range (alpha, sigma not positive or log-SNR not finite,
    see `schedule_problem`; naming the process)."""
    try:
        traits = traits_of(process)
    except TypeError as error:  # a third-party process whose `traits` is no ProcessTraits
        raise CompositionError(f"process {process_name!r}: {error}") from None
    missing = sorted(set(sampler.capabilities.requires) - traits.names)
    if missing:
        raise CompositionError(
            f"sampler {sampler_name!r} needs a {' and '.join(missing)} process, "
            f"but process {process_name!r} is not one"
        )
    problem = schedule_problem(process)
    if problem is not None:
        raise CompositionError(f"process {process_name!r} {problem}")


def denoise(model: ScoreModel, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
    """Tweedie denoising step: return E[x0 | x_t = x] from one model call."""
    return model.predict(x, t, cond).x0


def _count(value: object) -> bool:
    """A non-negative Python or NumPy integer (not a bool, not a tensor)."""
    return hasattr(value, "__index__") and not isinstance(value, (bool, torch.Tensor)) and int(value) >= 0


def _result_problem(result: object, x_init: torch.Tensor, check_finite: bool) -> str | None:
    """What is wrong with a sampler's `result` for the batch `x_init` `(B, *dims)`, or None."""
    x = getattr(result, "x", None)
    if not isinstance(x, torch.Tensor):
        what = type(x).__name__ if hasattr(result, "x") else type(result).__name__
        return f"returned a {what}, not a SampleResult with a tensor x"
    if not x.is_floating_point() or x.dtype != x_init.dtype:
        got, want = (str(dtype).removeprefix("torch.") for dtype in (x.dtype, x_init.dtype))
        return f"returned {got} samples for a {want} batch"
    if x.ndim and x.shape[0] != x_init.shape[0]:
        return f"returned {x.shape[0]} rows for a batch of {x_init.shape[0]}"
    if x.shape != x_init.shape:
        return f"returned samples of shape {tuple(x.shape)} for a batch of shape {tuple(x_init.shape)}"
    if x.device != x_init.device:
        return f"returned samples on {x.device} for a batch on {x_init.device}"
    for name in ("nfe", "steps"):
        if not _count(getattr(result, name, None)):
            return f"returned {name}={getattr(result, name, None)!r}, not a non-negative int"
    if check_finite and not bool(torch.isfinite(x).all()):
        return "returned NaN or Inf samples"
    return None


def third_party_failure(name: str, registry: Registry, error: Exception) -> PluginError | None:
    """A one-line `PluginError` for an exception raised inside third-party sampler `name`, else None.

    Built-in samplers get None: an exception there is diffkit's own bug and stays an internal error.
    """
    try:
        component = registry.get("sampler", name)
    except DiffkitError:
        return None
    if component.plugin in registry.builtins:
        return None
    first = (str(error).strip().splitlines() or [""])[0]
    return PluginError(
        f"sampler {name!r} (plugin {component.plugin!r}, {component.distribution}) failed: "
        f"{type(error).__name__}: {first}"
    )


def check_result(
    result: object,
    x_init: torch.Tensor,
    name: str,
    registry: Registry | None = None,
    step_flags: Sequence[torch.Tensor] = (),
) -> SampleResult:
    """Check a sampler's result against its batch `x_init` `(B, *dims)`; return it, or raise.

    `result.x` must be a floating tensor of `x_init`'s shape, dtype and device, and finite;
    `nfe` and `steps` non-negative ints. `step_flags` are per-step finiteness flags (0-dim
    bool tensors) the caller recorded through the callback: when one is False the caller
    reports that step itself, so the finiteness of the result is not checked here.

    Raises:
        PluginError: one line naming the sampler `name` and its plugin (looked up in
            `registry` only on failure), e.g. "sampler 'bad' (plugin 'badpkg', local module)
            returned 99 rows for a batch of 100".
    """
    check_finite = not step_flags or bool(torch.stack(list(step_flags)).all())
    problem = _result_problem(result, x_init, check_finite)
    if problem is None:
        return result  # type: ignore[return-value]
    where = ""
    if registry is not None:
        try:
            component = registry.get("sampler", name)
            where = f" (plugin {component.plugin!r}, {component.distribution})"
        except DiffkitError:
            pass
    raise PluginError(f"sampler {name!r}{where} {problem}")
