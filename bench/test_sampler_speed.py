"""Sampler speed suites (pytest-benchmark; not part of the default test run).

Run:  .venv/bin/python -m pytest bench/ --benchmark-only

- `test_overhead_per_step`: wall time per step with a near-free model (eps = 0), i.e. the time
  a sampler spends outside the network, for every sampler registered for vp (built-ins,
  `ode:*`/`sde:*` representatives and third-party ones alike). `extra_info` holds it per step
  and in units of one evaluation of the exact gmm:ring8 network on the same batch.
- `test_throughput`: samples per second on the exact oracles (2-D gmm:ring8 and 64-D gmm:d64)
  at batch 16, 256 and 4096, a representative sampler of each kind at a budget of 20 NFE.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import diffkit
from diffkit.bench.plan import SolverPlan, default_solvers, steps_for_budget
from diffkit.run.api import SampleConfig, compose

REGISTRY = diffkit.build_registry()
SOLVERS = default_solvers(REGISTRY, "vp")
#: throughput: one or two samplers of each kind (those registered)
THROUGHPUT = [
    s for s in ("ddim", "dpmpp-2m", "unipc", "heun", "em", "ode", "ode:rk4", "sde:srk") if s in SOLVERS
]
STEPS = 50
BUDGET = 20
BATCH = 256


def _free_model(process: diffkit.NoiseProcess, dim: int) -> diffkit.ScoreModel:
    """An eps model costing almost nothing: eps = 0."""
    return diffkit.ScoreModel(
        lambda x, t, c: torch.zeros_like(x), kind="eps", process=process, data_shape=(dim,)
    )


def _oracle_eval_seconds(batch: int) -> float:
    """Median wall time of one exact gmm:ring8 network call on `batch` 2-D points."""
    comp = compose(SampleConfig(process="vp", solver="em", steps=1), REGISTRY)
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(0))
    t = torch.full((batch,), 0.5, dtype=torch.float64)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        comp.model.network(x, t, None)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _config(solver: str, model: str = "gmm:ring8", steps: int | None = None) -> SampleConfig:
    """A vp composition of `solver`; adaptive solvers get rtol = atol = 1e-3."""
    sampler = REGISTRY.build("sampler", solver, {})
    options = {"rtol": 1e-3, "atol": 1e-3} if sampler.capabilities.adaptive else {}
    return SampleConfig(process="vp", solver=solver, model=model, steps=steps, solver_options=options)


def _steps_for(solver: str, budget: int) -> int | None:
    caps = REGISTRY.build("sampler", solver, {}).capabilities
    if caps.adaptive:
        return None
    plan = SolverPlan(solver, caps.stochastic, False, caps.nfe_per_step, caps.order, denoise_final=False)
    return steps_for_budget(plan, budget)


@pytest.fixture(scope="module")
def oracle_eval() -> float:
    """Seconds of one exact ring8 network evaluation at the overhead suite's batch size."""
    return _oracle_eval_seconds(BATCH)


@pytest.mark.parametrize("solver", SOLVERS)
def test_overhead_per_step(benchmark, solver: str, oracle_eval: float) -> None:  # noqa: ANN001
    caps = REGISTRY.build("sampler", solver, {}).capabilities
    steps = None if caps.adaptive else max(STEPS // max(caps.nfe_per_step, 1), 1)
    comp = compose(_config(solver, steps=steps), REGISTRY)
    model = _free_model(comp.process, 2)
    x = comp.process.prior_sample((BATCH, 2), generator=torch.Generator().manual_seed(0))
    taken: list[int] = []

    def run() -> None:
        result = comp.sampler(model, comp.process, x, comp.grid, generator=torch.Generator().manual_seed(1))
        taken.append(result.steps)

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    per_step = benchmark.stats.stats.median / max(taken[-1], 1)
    benchmark.extra_info["steps"] = taken[-1]
    benchmark.extra_info["seconds_per_step"] = per_step
    benchmark.extra_info["overhead_in_oracle_evals"] = per_step / oracle_eval


@pytest.mark.parametrize("batch", [16, 256, 4096])
@pytest.mark.parametrize("model", ["gmm:ring8", "gmm:d64"])
@pytest.mark.parametrize("solver", THROUGHPUT)
def test_throughput(benchmark, solver: str, model: str, batch: int) -> None:  # noqa: ANN001
    steps = _steps_for(solver, BUDGET)
    if steps is None and not REGISTRY.build("sampler", solver, {}).capabilities.adaptive:
        pytest.skip(f"{solver} needs more than {BUDGET} NFE for one step")
    comp = compose(_config(solver, model=model, steps=steps), REGISTRY)
    x = comp.process.prior_sample((batch, *comp.model.data_shape), generator=torch.Generator().manual_seed(0))

    def run() -> None:
        comp.sampler(comp.model, comp.process, x, comp.grid, generator=torch.Generator().manual_seed(1))

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["samples_per_run"] = batch
    benchmark.extra_info["samples_per_second"] = batch / benchmark.stats.stats.median
