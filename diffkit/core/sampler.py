"""Sampler contract: capabilities, step information, results and composition checks.

A sampler is configured once with typed keyword-only options (a frozen dataclass whose
fields are the options) and is stateless between calls:

    sampler(model, process, x_init, grid, *, generator=None, callback=None) -> SampleResult
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from diffkit.core.errors import CompositionError
from diffkit.core.model import ScoreModel
from diffkit.core.process import NoiseProcess, schedule_problem
from diffkit.core.traits import check_trait_names, traits_of


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
