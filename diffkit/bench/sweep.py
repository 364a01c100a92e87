"""The sweep loop: plan the runs, skip finished ones, run the rest and record a row per run."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from diffkit.bench.plan import (
    TOLERANCES,
    Skipped,
    SolverPlan,
    plan_runs,
    select_solvers,
    tolerance_for_budget,
)
from diffkit.bench.quality import ExactSets, exact_sets, reference_solution, score
from diffkit.bench.records import ResultStore
from diffkit.bench.report import FLOORED
from diffkit.bench.runner import DiffkitRunner, Runner, RunOutput
from diffkit.bench.spec import BenchConfig, RunSpec
from diffkit.core.errors import DiffkitError, UsageError
from diffkit.core.grid import ends_at_zero
from diffkit.core.model import ExactData
from diffkit.core.process import NoiseProcess
from diffkit.plugin.registry import Registry
from diffkit.run.api import build_model, compose
from diffkit.run.provenance import machine, versions

#: samples used to calibrate the tolerance of adaptive solvers, and to warm each solver up
CALIBRATION_SAMPLES = 256
WARMUP_SAMPLES = 16

#: progress(done, total, label): units are NFE budgets, so long runs weigh more
Progress = Callable[[float, float, str], None]


@dataclass
class SweepResult:
    """What a sweep did: the rows of this sweep (reused and new), budgets it skipped, counts."""

    rows: list[dict[str, Any]]
    skipped: list[Skipped]
    computed: int
    reused: int


class _Sweep:
    """Per-sweep caches: noise and exact sets per seed, references, tolerances, warm solvers.

    `runner` (diffkit's) also calibrates adaptive tolerances and defines the reference path;
    `runners` holds it and every peer runner by implementation name.
    """

    def __init__(
        self, config: BenchConfig, registry: Registry, runner: DiffkitRunner, peers: Sequence[Runner]
    ) -> None:
        self.config, self.registry, self.runner = config, registry, runner
        self.runners: dict[str, Runner] = {runner.implementation: runner}
        self.runners |= {peer.implementation: peer for peer in peers}
        self.process = registry.build("process", config.process, config.process_options)
        self.model = build_model(  # the one model path: registered names, checkpoints, shipped models
            registry, config.model, config.model_options, config.process, self.process, config.process_options
        )
        if not isinstance(self.model, ExactData):
            raise UsageError(
                f"model {config.model!r} has no exact data; diffkit bench needs an oracle (gmm:*)"
            )
        self.to_zero = _grid_ends_at_zero(registry, config, self.process)
        self.noise: dict[int, torch.Tensor] = {}
        self.sets: dict[tuple[int, bool], ExactSets] = {}
        self.references: dict[tuple[int, bool], torch.Tensor] = {}
        self.tolerances: dict[str, dict[float, int]] = {}
        self.warm: set[tuple[str, str]] = set()

    def initial_noise(self, seed: int) -> torch.Tensor:
        """Prior noise `(N, *shape)` of `seed`, float64 (every solver starts from the same noise)."""
        if seed not in self.noise:
            generator = torch.Generator().manual_seed(seed)
            shape = (self.config.num_samples, *self.model.data_shape)
            self.noise[seed] = self.process.prior_sample(shape, generator=generator, dtype=torch.float64)
        return self.noise[seed]

    def exact(self, seed: int, denoised: bool) -> ExactSets:
        """Exact sets at t_min (or of the data, for samplers that denoise at the end)."""
        if (seed, denoised) not in self.sets:
            t = None if denoised else self.process.t_min
            self.sets[seed, denoised] = exact_sets(self.model, self.process, self.config.num_samples, seed, t)
        return self.sets[seed, denoised]

    def reference(self, spec: RunSpec, denoised: bool) -> torch.Tensor:
        """The float64 dopri5 reference solution from this seed's noise."""
        if (spec.seed, denoised) not in self.references:
            config = self.runner.sample_config(spec)
            path = reference_solution(self.registry, config, self.initial_noise(spec.seed), denoise=denoised)
            self.references[spec.seed, denoised] = path
        return self.references[spec.seed, denoised]

    def tolerance(self, spec: RunSpec) -> float | None:
        """rtol = atol for an adaptive spec's budget (calibrated once per solver)."""
        cache = self.tolerances.setdefault(spec.solver, {})
        noise = self.initial_noise(self.config.seeds[0])[:CALIBRATION_SAMPLES]

        def calibrate(tol: float) -> int:
            return self.runner.nfe_at_tolerance(spec, noise, tol)

        return tolerance_for_budget(calibrate, spec.budget, cache, max(self.config.budgets))

    def run(self, spec: RunSpec) -> RunOutput:
        """Run `spec` with its implementation's runner, after one warm-up run per solver.

        The warm-up samples a few points so one-time costs stay out of the timings.
        """
        runner = self.runners[spec.implementation]
        noise = self.initial_noise(spec.seed)
        if (spec.implementation, spec.solver) not in self.warm:
            self.warm.add((spec.implementation, spec.solver))
            runner.run(spec, noise[:WARMUP_SAMPLES])
        return runner.run(spec, noise)


def _grid_ends_at_zero(registry: Registry, config: BenchConfig, process: NoiseProcess) -> bool:
    """True if the sweep's `--grid` ends at sigma = 0 (its samples are then x0 predictions)."""
    if config.grid is None:
        return False
    try:
        grid = registry.build("grid", config.grid, config.grid_options)(process, 2)
    except (DiffkitError, ValueError):
        return False  # a grid that cannot be built is refused with its own message by composition
    return ends_at_zero(grid, process)


def _check_compositions(registry: Registry, runner: DiffkitRunner, specs: list[RunSpec]) -> None:
    """Compose one run per solver before any work, so bad grids, sizes or devices fail fast."""
    seen: set[str] = set()
    for spec in specs:
        if spec.solver not in seen:
            seen.add(spec.solver)
            compose(runner.sample_config(spec), registry)


def _row(spec: RunSpec, plan: SolverPlan, config: BenchConfig) -> dict[str, Any]:
    return {
        "key": spec.key,
        "implementation": spec.implementation,
        "solver": spec.solver,
        "budget": spec.budget,
        "seed": spec.seed,
        "model": config.model,
        "sde": config.process,
        "num_samples": config.num_samples,
        "steps": spec.steps,
        "tolerance": spec.tolerance,
        "stochastic": plan.stochastic,
        "adaptive": plan.adaptive,
        "order": plan.order,
        "nfe_per_step": plan.nfe_per_step,
        "options": dict(spec.options),
        "versions": versions(),
        "machine": machine(config.device),
    }


def _timings(out: RunOutput) -> dict[str, Any]:
    """Speed columns: wall seconds, samples/s, seconds per model evaluation, overhead per step.

    The overhead is the sampler's time outside the network per step, in model evaluations.
    """
    n = out.samples.shape[0]
    per_eval = out.model_seconds / out.nfe if out.nfe > 0 else math.nan
    outside = out.seconds - out.model_seconds
    overhead = outside / max(out.steps, 1) / per_eval if per_eval > 0 else math.nan
    return {
        "grid": out.config.get("grid"),
        "steps": out.steps,
        "nfe": out.nfe,
        "seconds": out.seconds,
        "samples_per_second": n / out.seconds if out.seconds > 0 else math.nan,
        "model_seconds": per_eval,
        "overhead_per_step": overhead,
        "config": out.config,
    }


def run_one(state: _Sweep, spec: RunSpec, plan: SolverPlan) -> dict[str, Any]:
    """Run one spec and score it; a failure (NaN, or an error in the solver) becomes a 'failed' row.

    Any exception is caught, so one broken (e.g. third-party) solver cannot stop a sweep; the
    row names it, the report counts it, and a re-run retries it.
    """
    row = _row(spec, plan, state.config)
    denoised = plan.denoise_final or state.to_zero  # the samples are x0 predictions: compare with data
    sets = state.exact(spec.seed, denoised)
    row |= {
        f"{name}_floor{suffix}": sets.floors[name + suffix] for name in FLOORED for suffix in ("", "_std")
    }
    try:
        out = state.run(spec)
    except Exception as error:  # noqa: BLE001 - recorded in the row, never swallowed silently
        return failed_row(row, error)
    reference = None if plan.stochastic else state.reference(spec, denoised)
    metrics = score(out.samples, state.model, sets, reference_path=reference)
    return row | _timings(out) | metrics | {"status": "ok", "error": None, "finished_at": _now()}


def failed_row(row: dict[str, Any], error: Exception) -> dict[str, Any]:
    """`row` marked failed: status "failed" and the error's one-line message (a re-run retries it)."""
    message = str(error) if isinstance(error, DiffkitError) else f"{type(error).__name__}: {error}"
    first = message.splitlines()[0] if message else ""
    return row | {"status": "failed", "error": first, "finished_at": _now()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _run_pending(
    state: _Sweep, spec: RunSpec, plan: SolverPlan, skipped: list[Skipped]
) -> dict[str, Any] | None:
    """The row of one pending spec, or None if an adaptive solver cannot meet its budget.

    A solver that fails while its tolerance is calibrated gets a failed row, like a failed run.
    """
    if plan.adaptive:
        try:
            tolerance = state.tolerance(spec)
        except Exception as error:  # noqa: BLE001 - recorded in the row
            return failed_row(_row(spec, plan, state.config), error)
        if tolerance is None:
            if spec.seed == state.config.seeds[0]:
                reason = f"no tolerance down to {TOLERANCES[-1]:g} uses at most {spec.budget} NFE"
                skipped.append(Skipped(spec.implementation, spec.solver, spec.budget, reason))
            return None
        spec = replace(spec, tolerance=tolerance)
    return run_one(state, spec, plan)


def run_sweep(
    config: BenchConfig,
    registry: Registry,
    folder: Path,
    *,
    peers: Sequence[Runner] = (),
    progress: Progress | None = None,
) -> SweepResult:
    """Run every planned (implementation, solver, budget, seed) not yet done in `folder`.

    Each row is recorded as it finishes. Peer runners run the solvers they support, planned as
    their implementation runs (`Runner.plan`), from the same noise, right after diffkit's runs
    of that solver.

    Raises:
        UsageError: bad names, options or compositions (before any run).
    """
    solvers = select_solvers(config, registry)
    specs, skipped = plan_runs(config, solvers)
    runner = DiffkitRunner(config, registry)
    _check_compositions(registry, runner, specs)
    plans = {(runner.implementation, plan.name): plan for plan in solvers}
    for peer in peers:
        peer_plans = [peer.plan(plan) for plan in solvers if peer.supports(plan)]
        plans |= {(peer.implementation, plan.name): plan for plan in peer_plans}
        peer_specs, peer_skipped = plan_runs(config, peer_plans, peer.implementation, peer.options)
        specs += peer_specs
        skipped += peer_skipped
    specs.sort(key=lambda spec: (spec.solver, spec.implementation != runner.implementation, spec.budget))
    state = _Sweep(config, registry, runner, peers)
    store = ResultStore(folder)
    done = store.done
    pending = [spec for spec in specs if spec.key not in done]
    total, finished = float(sum(spec.budget for spec in pending)), 0.0
    try:
        for spec in pending:
            if progress is not None:
                progress(finished, total, f"{spec.solver} @ {spec.budget} NFE, seed {spec.seed}")
            row = _run_pending(state, spec, plans[spec.implementation, spec.solver], skipped)
            if row is not None:
                store.add(row)
            finished += spec.budget
    finally:
        store.save()  # results.json and results.csv, also when interrupted
    if progress is not None:
        progress(total, total, "done")
    keys = {spec.key for spec in specs}
    rows = [row for row in store.rows if row["key"] in keys]
    reused = len(keys & done)
    return SweepResult(rows, skipped, computed=len(rows) - reused, reused=reused)
