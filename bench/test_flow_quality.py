"""Every sampler at 50 NFE on `--sde flow`, on gmm:ring8 and gmm:d64 (pytest-benchmark; not part of
the default test run: d64 takes about 6 s per sampler at 6000 samples on one CPU thread).

Run:  .venv/bin/python -m pytest bench/test_flow_quality.py --benchmark-only

Each run draws 6000 samples with the sampler's default grid on flow (the process's `beta`),
seeded, and records sliced-W2 over its noise floor (6 pairs of exact sets of the same size) and
the within-mode spread ratio in `extra_info`. The bar (issue 12): sliced-W2 within 1.5x the
floor (+3 floor stds) and spread within 0.05 of 1. Samplers that miss it on vp as well at 50
NFE are held to vp's quality instead (`MISS_ON_VP`); tests/test_flow_process.py runs the ring8
half of this at 8000 samples.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import diffkit
from diffkit.bench.plan import default_solvers, plan_for, steps_for_budget
from diffkit.eval.metrics import NoiseFloor, sliced_wasserstein, sliced_wasserstein_floor, within_mode_spread

REGISTRY = diffkit.build_registry()
SAMPLES = 6000
PROJECTIONS = 128
#: per model, samplers missing the bar at 50 NFE on vp too, or at its edge (measured spread on vp
#: with its default grids, ring8 / d64: ancestral 0.92 / 0.90, pc 1.22 / 1.22, ald 2.2, langevin
#: 1.08; ddim 0.948 on d64; dpmpp-2m-sde 1.044-1.069 on ring8 and 1.047 on d64 across seeds)
MISS_ON_VP = {
    "gmm:ring8": ("ancestral", "euler-ancestral", "pc", "ald", "langevin", "dpmpp-2m-sde"),
    "gmm:d64": ("ancestral", "euler-ancestral", "pc", "ald", "langevin", "ddim", "dpmpp-2m-sde", "restart"),
}
FLOORS: dict[str, NoiseFloor] = {}


def _run(name: str, sde: str, model_name: str) -> dict[str, Any]:
    """Sliced-W2 / floor, spread and NFE of `name` at 50 NFE on `sde` with oracle `model_name`."""
    process = REGISTRY.build("process", sde, {})
    model = REGISTRY.build("model", model_name, {}, process)
    probe = REGISTRY.build("sampler", name, {})
    caps = probe.capabilities
    sampler = REGISTRY.build("sampler", name, {"rtol": 1e-3, "atol": 1e-3}) if caps.adaptive else probe
    steps = 1 if caps.adaptive else steps_for_budget(plan_for(name, sampler), 50)
    grid_name = caps.grid_for(process)
    grid = REGISTRY.build("grid", grid_name, {})(process, steps)
    shape = (SAMPLES, *model.data_shape)
    x_init = process.prior_sample(shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x = sampler(model, process, x_init, grid, generator=torch.Generator().manual_seed(12)).x
    if model_name not in FLOORS:
        FLOORS[model_name] = sliced_wasserstein_floor(
            lambda k, g: model.sample_data(k, generator=g, dtype=torch.float64),
            SAMPLES,
            repeats=6,
            num_projections=PROJECTIONS,
        )
    floor = FLOORS[model_name]
    exact = model.sample_data(SAMPLES, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    distance = float(sliced_wasserstein(x, exact, num_projections=PROJECTIONS))
    spread = float(within_mode_spread(x, model.component_of(x), model.mixture.stds))
    return {"grid": grid_name, "sw2": distance, "floor": floor.mean, "floor_std": floor.std, "spread": spread}


@pytest.mark.parametrize("model_name", ["gmm:ring8", "gmm:d64"])
@pytest.mark.parametrize("name", default_solvers(REGISTRY, "flow"))
def test_flow_sampler_at_50_nfe(benchmark, name: str, model_name: str) -> None:  # noqa: ANN001
    """One sampler on flow at 50 NFE: at the floor, or (MISS_ON_VP) no worse than on vp."""
    flow = benchmark.pedantic(_run, args=(name, "flow", model_name), rounds=1, iterations=1)
    benchmark.extra_info.update(flow)
    if name in MISS_ON_VP[model_name]:
        vp = _run(name, "vp", model_name)
        benchmark.extra_info.update({f"vp_{key}": value for key, value in vp.items()})
        assert abs(flow["spread"] - 1) <= abs(vp["spread"] - 1) + 0.05
        assert flow["sw2"] <= vp["sw2"] + 3 * flow["floor_std"]
    else:
        assert flow["sw2"] <= 1.5 * flow["floor"] + 3 * flow["floor_std"]
        assert abs(flow["spread"] - 1) <= 0.05
