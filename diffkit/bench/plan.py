"""Which solvers a sweep runs, and how an NFE budget becomes steps or an adaptive tolerance.

A fixed-step solver with `nfe_per_step = k` gets `(budget - d) // k` steps, where d = 1 when
it denoises at the end (`denoise_final` costs one model call) or the plan's own `extra_nfe`
(a peer's Heun ends with one Euler step: d = -1; a sampler with an `extra_nfe` attribute, e.g.
restart's fixed restart passes, adds it); budgets too small for one step are skipped.
Adaptive solvers choose their own steps, so the budget picks a tolerance instead: rtol = atol
is swept down a half-decade ladder on a small calibration batch and each budget gets the
tightest tolerance whose NFE fits in it (the row records the NFE actually used).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from diffkit.bench.spec import DIFFKIT, BenchConfig, RunSpec, run_key
from diffkit.core.errors import UsageError
from diffkit.core.sampler import check_composition
from diffkit.plugin.catalog import sampler_rows
from diffkit.plugin.registry import Registry

#: family members swept by default next to every plain sampler name (any can be named with --solvers)
DEFAULT_FAMILY_MEMBERS: tuple[str, ...] = ("ode:heun2", "ode:rk4", "sde:srk")
#: rtol = atol ladder of adaptive solvers, loosest first: 1e-1, 3.2e-2, ..., 1e-8
TOLERANCES: tuple[float, ...] = tuple(float(f"{10 ** (-k / 2):.3g}") for k in range(2, 17))


@dataclass(frozen=True)
class SolverPlan:
    """A solver as the sweep sees it (capabilities of the sampler built with the user's options).

    Attributes:
        denoise_final: the samples are data (compared with exact data, not the law at t_min).
        extra_nfe: model calls beyond `nfe_per_step * steps`; None: 1 with `denoise_final`, else 0.
    """

    name: str
    stochastic: bool
    adaptive: bool
    nfe_per_step: int
    order: float
    denoise_final: bool
    extra_nfe: int | None = None

    @property
    def fixed_nfe(self) -> int:
        """Model calls a run makes beyond `nfe_per_step` per step."""
        return self.extra_nfe if self.extra_nfe is not None else int(self.denoise_final)


@dataclass(frozen=True)
class Skipped:
    """A (solver, budget) pair the sweep cannot run, and why."""

    implementation: str
    solver: str
    budget: int
    reason: str


def default_solvers(registry: Registry, process: str) -> list[str]:
    """Every registered sampler composable with `process`: plain names plus `DEFAULT_FAMILY_MEMBERS`."""
    return [
        row.name
        for row in sampler_rows(registry)
        if process in row.processes and (":" not in row.name or row.name in DEFAULT_FAMILY_MEMBERS)
    ]


def select_solvers(config: BenchConfig, registry: Registry) -> list[SolverPlan]:
    """Build and check every solver of the sweep; UsageError for unknown or incompatible ones.

    Named solvers (`config.solvers`) must all exist, accept their options and compose with the
    process; the default set silently leaves out samplers the process cannot run.
    """
    process = registry.build("process", config.process, config.process_options)
    names = list(config.solvers) if config.solvers else default_solvers(registry, config.process)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"--solvers names {', '.join(duplicates)} more than once")
    unknown = sorted(set(config.per_solver_options) - set(names))
    if unknown:
        raise UsageError(f"--solver-opt names solver {unknown[0]!r}, which is not in the sweep")
    plans = []
    for name in names:
        sampler = registry.build("sampler", name, config.options_for(name))
        check_composition(name, sampler, config.process, process)
        caps = sampler.capabilities
        if caps.adaptive and {"rtol", "atol"} & set(config.options_for(name)):
            raise UsageError(f"solver {name!r} is adaptive: the bench sweeps its rtol/atol, do not set them")
        plans.append(plan_for(name, sampler))
    if not plans:
        raise UsageError(f"no registered sampler can run on process {config.process!r}")
    return plans


def steps_for_budget(plan: SolverPlan, budget: int) -> int | None:
    """Grid steps of a fixed-step solver within `budget` NFE (None if not even one step fits).

    Solvers with a variable NFE per step (declared 0, e.g. Adams methods) get `budget` steps and
    record what they used.
    """
    available = budget - plan.fixed_nfe
    steps = available // plan.nfe_per_step if plan.nfe_per_step > 0 else available
    return steps if steps >= 1 else None


def tolerance_for_budget(
    calibrate: Callable[[float], int], budget: int, cache: dict[float, int], ceiling: int
) -> float | None:
    """The tightest ladder tolerance whose calibrated NFE is at most `budget` (None if none is).

    `calibrate(tol) -> nfe` runs lazily, loosest first, and stops once the NFE passes
    `ceiling` (the largest budget); results are memoised in `cache`.
    """
    best = None
    for tol in TOLERANCES:
        if tol not in cache:
            if cache and max(cache.values()) > ceiling:
                break
            cache[tol] = calibrate(tol)
        if cache[tol] <= budget:
            best = tol
        elif cache[tol] > ceiling:
            break
    return best


def plan_runs(
    config: BenchConfig,
    solvers: list[SolverPlan],
    implementation: str = DIFFKIT,
    options: Callable[[str], Mapping[str, Any]] | None = None,
) -> tuple[list[RunSpec], list[Skipped]]:
    """Every (solver, budget, seed) run of the sweep, and the budgets too small for a solver.

    Adaptive runs get `tolerance=None` here; the sweep fills it in (`tolerance_for_budget`)
    when it reaches them, so finished sweeps never calibrate again. `options(solver)` gives a
    run's options (default: the user's, `config.options_for`); they are part of its resume key.
    """
    options_of = options or config.options_for
    specs, skipped = [], []
    for plan in solvers:
        run_options = options_of(plan.name)
        for budget in config.budgets:
            steps = None if plan.adaptive else steps_for_budget(plan, budget)
            if not plan.adaptive and steps is None:
                why = f"{budget} NFE is less than one step ({plan.nfe_per_step} NFE per step"
                why += f" + {plan.fixed_nfe} to denoise)" if plan.fixed_nfe > 0 else ")"
                skipped.append(Skipped(implementation, plan.name, budget, why))
                continue
            for seed in config.seeds:
                key = run_key(config, implementation, plan.name, budget, seed, options=run_options)
                specs.append(RunSpec(implementation, plan.name, budget, seed, steps, None, run_options, key))
    return specs, skipped


def plan_for(name: str, sampler: Any) -> SolverPlan:
    """The budget plan of a built sampler: its capabilities, final denoise and fixed extra calls."""
    caps = sampler.capabilities
    denoise = bool(getattr(sampler, "denoise_final", False))
    extra = getattr(sampler, "extra_nfe", None)  # fixed calls beyond the steps (e.g. restart's)
    extra = None if extra is None else int(extra) + int(denoise)
    return SolverPlan(name, caps.stochastic, caps.adaptive, caps.nfe_per_step, caps.order, denoise, extra)
