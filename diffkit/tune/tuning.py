"""`tune_grid`: the time grid that minimises an objective for one model, process, solver and NFE.

Steps: try every built-in continuous grid (default options) on the training noise and start from
the best; optimise its interior times (`diffkit.tune.grid_search`) by gradient descent through
the solver, or by a compass search where the sampler is not differentiable; evaluate start and
result on fresh noise (and fresh exact data) and keep the start unless the result beats it there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from diffkit.core.errors import DiffkitError, UsageError
from diffkit.core.grid import check_grid
from diffkit.core.model import ExactData
from diffkit.plugin.registry import Registry
from diffkit.run.api import Composition, SampleConfig, compose
from diffkit.tune.grid_search import GridShape, adam_search, coordinate_search, is_differentiable
from diffkit.tune.objectives import OBJECTIVES, Counter, make_objective

#: grids that are not candidates for a start: a user table, and DDPM spacings of discrete processes
NOT_STARTS: frozenset[str] = frozenset({"table", "leading", "trailing", "linspace", "ddpm"})
#: the evaluation noise's seed is the training seed plus this
EVAL_SEED_OFFSET = 1_000_003


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    """What to tune: names, options, budget and sample counts (the CLI's `tune-grid` options)."""

    model: str
    process: str = "vp"
    solver: str = "dpmpp-2m"
    nfe: int = 10
    objective: str = "endpoint"
    train_samples: int = 256
    eval_samples: int = 1024
    seed: int = 0
    max_evals: int = 100
    budget_seconds: float | None = None
    process_options: dict[str, Any] = field(default_factory=dict)
    solver_options: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TuneResult:
    """A tuned grid and its provenance (values are the objective on the evaluation noise)."""

    grid: torch.Tensor
    start_grid: str
    steps: int
    value_before: float
    value_after: float
    kept_start: bool
    method: str
    seconds: float
    nfe_spent: int
    evaluations: int
    starts: dict[str, float]


def _check_numbers(config: TuneConfig) -> None:
    if config.objective not in OBJECTIVES:
        raise UsageError(f"unknown --objective {config.objective!r}; expected one of {', '.join(OBJECTIVES)}")
    if config.nfe < 2:
        raise UsageError(f"--nfe must be at least 2 (a tuned grid needs an interior time), got {config.nfe}")
    for flag, value in (("--train-samples", config.train_samples), ("--eval-samples", config.eval_samples)):
        if value < 2:
            raise UsageError(f"{flag} must be at least 2, got {value}")
    if config.max_evals < 1:
        raise UsageError(f"--max-evals must be at least 1, got {config.max_evals}")
    budget = config.budget_seconds
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise UsageError(f"--budget-seconds must be a positive number, got {budget}")


def prepare(config: TuneConfig, registry: Registry) -> Composition:
    """Check the request and compose it (float64) before any work; UsageError with one line if bad."""
    _check_numbers(config)
    sampler = registry.build("sampler", config.solver, config.solver_options)
    caps = sampler.capabilities
    if caps.adaptive or caps.nfe_per_step < 1:
        raise UsageError(
            f"solver {config.solver!r} chooses its own steps (adaptive); it cannot take a tuned grid"
        )
    if config.nfe % caps.nfe_per_step or config.nfe // caps.nfe_per_step < 2:
        raise UsageError(
            f"--nfe {config.nfe} must be a multiple of solver {config.solver!r}'s {caps.nfe_per_step} model "
            "calls per step, with at least 2 steps"
        )
    if config.objective == "endpoint" and caps.stochastic:
        raise UsageError(
            f"objective 'endpoint' compares with the ODE solution; solver {config.solver!r} is stochastic "
            "(use --objective sliced-w2)"
        )
    sample_config = SampleConfig(
        process=config.process,
        solver=config.solver,
        model=config.model,
        steps=config.nfe // caps.nfe_per_step,
        num_samples=max(config.train_samples, config.eval_samples),
        dtype="float64",
        process_options=config.process_options,
        solver_options=config.solver_options,
        model_options=config.model_options,
    )
    comp = compose(sample_config, registry)
    if config.objective == "sliced-w2" and not isinstance(comp.model, ExactData):
        raise UsageError(
            f"objective 'sliced-w2' needs a model with exact data (an oracle, gmm:*); "
            f"model {config.model!r} has none (use --objective endpoint)"
        )
    return comp


def builtin_grids(registry: Registry, comp: Composition) -> dict[str, torch.Tensor]:
    """Every built-in grid (default options) that composes with the process, at the run's steps."""
    grids = {}
    for name in registry.names("grid"):
        if name in NOT_STARTS:
            continue
        try:
            grids[name] = check_grid(registry.build("grid", name, {})(comp.process, comp.steps), comp.process)
        except (DiffkitError, ValueError):
            continue
    return grids


def noise_of(comp: Composition, n: int, seed: int) -> torch.Tensor:
    """Prior noise `(n, *shape)`, float64, from a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, *comp.model.data_shape)
    return comp.process.prior_sample(shape, generator=generator, dtype=torch.float64)


def _value(objective: Any, grid: torch.Tensor) -> float:
    with torch.no_grad():
        value = float(objective(grid))
    return value if math.isfinite(value) else math.inf


def tune_grid(config: TuneConfig, registry: Registry, comp: Composition | None = None) -> TuneResult:
    """Tune the grid of `config` (see the module docstring); `comp` from `prepare` (made if None)."""
    comp = comp or prepare(config, registry)
    start_time = time.perf_counter()
    deadline = None if config.budget_seconds is None else start_time + config.budget_seconds
    counter = Counter()
    train = make_objective(
        config.objective,
        registry,
        comp,
        noise_of(comp, config.train_samples, config.seed),
        config.seed,
        counter,
    )
    candidates = builtin_grids(registry, comp)
    starts = {name: _value(train, grid) for name, grid in candidates.items()}
    start_name = min(starts, key=starts.__getitem__)
    start = candidates[start_name]
    shape = GridShape.of(start, comp.process)
    theta = shape.theta_of(start)
    budget = max(config.max_evals - len(starts), 1)
    if is_differentiable(shape, theta, train):
        method, found = "adam", adam_search(shape, theta, train, max_evals=budget, deadline=deadline)
    else:
        method, found = (
            "coordinate",
            coordinate_search(shape, theta, train, max_evals=budget, deadline=deadline),
        )
    tuned = shape.grid_of(found.theta).detach()
    seed = config.seed + EVAL_SEED_OFFSET
    fresh = make_objective(
        config.objective, registry, comp, noise_of(comp, config.eval_samples, seed), seed, counter
    )
    before, after = _value(fresh, start), _value(fresh, tuned)
    # keep the start unless the search improved on it in training and the result wins on fresh noise
    kept = not (found.value < starts[start_name] and after < before)
    return TuneResult(
        grid=start if kept else tuned,
        start_grid=start_name,
        steps=comp.steps,
        value_before=before,
        value_after=before if kept else after,
        kept_start=kept,
        method=method,
        seconds=time.perf_counter() - start_time,
        nfe_spent=counter.nfe,
        evaluations=counter.evaluations,
        starts=starts,
    )


def grid_file(config: TuneConfig, result: TuneResult) -> dict[str, Any]:
    """The `table` grid file (`--grid table --grid-opt file=...`): "times" and the provenance."""
    return {
        "times": [float(t) for t in result.grid],
        "steps": result.steps,
        "model": config.model,
        "process": config.process,
        "solver": config.solver,
        "nfe": config.nfe,
        "objective": config.objective,
        "value_before": result.value_before,
        "value_after": result.value_after,
        "kept_start": result.kept_start,
        "start_grid": result.start_grid,
        "method": result.method,
        "seconds": round(result.seconds, 3),
        "nfe_spent": result.nfe_spent,
        "evaluations": result.evaluations,
        "train_samples": config.train_samples,
        "eval_samples": config.eval_samples,
        "seed": config.seed,
    }
