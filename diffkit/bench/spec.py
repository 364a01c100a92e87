"""What a benchmark sweep runs: its configuration and one unit of work with a resume key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: NFE budgets of the default sweep
DEFAULT_BUDGETS: tuple[int, ...] = (5, 10, 20, 50, 100)
#: samples per run of the default sweep (keeps `diffkit bench` under about two minutes on 2 cores)
DEFAULT_NUM_SAMPLES = 4000
#: quality metrics reported per row; `ref_distance` only for deterministic samplers
METRICS: tuple[str, ...] = ("sliced_w2", "mmd2", "mode_tv", "spread_ratio", "ref_distance")
#: the implementation name of diffkit's own runner (peers use their package name)
DIFFKIT = "diffkit"


@dataclass(frozen=True)
class BenchConfig:
    """A sweep: one model and process, several solvers, NFE budgets and seeds.

    Attributes:
        model, process: component names (e.g. "gmm:ring8", "vp").
        solvers: sampler names, or None for every compatible registered sampler (see `plan`).
        budgets: NFE budgets; fixed-step solvers get `budget // nfe_per_step` steps, adaptive
            ones the loosest tolerance whose NFE fits the budget.
        num_samples: samples per run.
        seeds: seeds of the initial noise (and of stochastic samplers).
        grid: time grid for every solver (None: each solver's default).
        device, dtype: where and in which precision the samplers run.
        process_options, model_options, grid_options: component options.
        solver_options: options given to every solver.
        per_solver_options: options for one solver, by solver name (override `solver_options`).
        metric: the quality metric of tables, "best" marks and plots (one of `METRICS`).
    """

    model: str = "gmm:ring8"
    process: str = "vp"
    solvers: tuple[str, ...] | None = None
    budgets: tuple[int, ...] = DEFAULT_BUDGETS
    num_samples: int = DEFAULT_NUM_SAMPLES
    seeds: tuple[int, ...] = (0,)
    grid: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    process_options: Mapping[str, Any] = field(default_factory=dict)
    model_options: Mapping[str, Any] = field(default_factory=dict)
    grid_options: Mapping[str, Any] = field(default_factory=dict)
    solver_options: Mapping[str, Any] = field(default_factory=dict)
    per_solver_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    metric: str = "sliced_w2"

    def options_for(self, solver: str) -> dict[str, Any]:
        """The user's options for `solver`: the shared ones, overridden by its own."""
        return {**self.solver_options, **self.per_solver_options.get(solver, {})}


@dataclass(frozen=True)
class RunSpec:
    """One run: a solver at one budget and seed, with the steps or tolerance it was given.

    Attributes:
        implementation: "diffkit" or a peer library's name.
        solver: sampler name.
        budget: the NFE budget this run belongs to.
        seed: noise seed.
        steps: grid steps (None for adaptive solvers, which only use the grid's ends).
        tolerance: rtol = atol of adaptive solvers (None otherwise).
        options: the user's solver options (without the tolerance).
        key: resume key (`run_key`).
    """

    implementation: str
    solver: str
    budget: int
    seed: int
    steps: int | None
    tolerance: float | None
    options: Mapping[str, Any]
    key: str

    def solver_options(self) -> dict[str, Any]:
        """Options to build the sampler with: the user's plus the swept tolerance."""
        extra = {} if self.tolerance is None else {"rtol": self.tolerance, "atol": self.tolerance}
        return {**self.options, **extra}


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k).replace("-", "_"): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value if isinstance(value, (int, float, bool)) or value is None else str(value)


def run_key(
    config: BenchConfig,
    implementation: str,
    solver: str,
    budget: int,
    seed: int,
    *,
    options: Mapping[str, Any] | None = None,
) -> str:
    """Resume key of one run: a hash of everything that decides its result (16 hex digits).

    Solver, budget, seed, implementation, model, process, sample count, grid, device, dtype and
    all options (the run's solver `options`, default the user's `config.options_for(solver)`);
    re-running a sweep skips every row whose key is already in the results.
    """
    identity = {
        "implementation": implementation,
        "solver": solver,
        "budget": budget,
        "seed": seed,
        "model": config.model,
        "process": config.process,
        "num_samples": config.num_samples,
        "grid": config.grid,
        "device": config.device,
        "dtype": config.dtype,
        "solver_options": config.options_for(solver) if options is None else options,
        "process_options": config.process_options,
        "model_options": config.model_options,
        "grid_options": config.grid_options,
    }
    text = json.dumps(_canonical(identity), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
