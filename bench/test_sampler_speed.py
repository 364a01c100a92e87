"""Sampler speed suites (pytest-benchmark; not part of the default test run).

Run:  .venv/bin/python -m pytest bench/ --benchmark-only

- `test_overhead_per_step`: wall time per step with a near-free model (time spent outside
  the network), for every fixed-step sampler registered, built-ins and third-party alike.
- `test_throughput`: samples per second on the exact oracles at batch 16, 256 and 4096.
"""

from __future__ import annotations

import pytest
import torch

import diffkit
from diffkit.api import SampleConfig, compose

REGISTRY = diffkit.build_registry()
FIXED_STEP = ["em", "ode:euler", "ode:rk4", "sde:euler", "sde:srk"]
STEPS = 50


def _free_model(process: diffkit.NoiseProcess, dim: int) -> diffkit.ScoreModel:
    """An eps model costing almost nothing: eps = 0."""
    return diffkit.ScoreModel(
        lambda x, t, c: torch.zeros_like(x), kind="eps", process=process, data_shape=(dim,)
    )


@pytest.mark.parametrize("solver", FIXED_STEP)
def test_overhead_per_step(benchmark, solver: str) -> None:  # noqa: ANN001
    comp = compose(SampleConfig(process="vp", solver=solver, steps=STEPS), REGISTRY)
    model = _free_model(comp.process, 2)
    x = comp.process.prior_sample((256, 2), generator=torch.Generator().manual_seed(0))

    def run() -> None:
        comp.sampler(model, comp.process, x, comp.grid, generator=torch.Generator().manual_seed(1))

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["steps"] = STEPS


@pytest.mark.parametrize("batch", [16, 256, 4096])
@pytest.mark.parametrize("model", ["gmm:ring8", "gmm:d64"])
@pytest.mark.parametrize("solver", ["ode:rk4", "em"])
def test_throughput(benchmark, solver: str, model: str, batch: int) -> None:  # noqa: ANN001
    comp = compose(SampleConfig(process="vp", solver=solver, model=model, steps=STEPS), REGISTRY)
    x = comp.process.prior_sample((batch, *comp.model.data_shape), generator=torch.Generator().manual_seed(0))

    def run() -> None:
        comp.sampler(comp.model, comp.process, x, comp.grid, generator=torch.Generator().manual_seed(1))

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["samples_per_run"] = batch
