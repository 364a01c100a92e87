"""diffkit and its peers side by side: per-step overhead of the same algorithm (pytest-benchmark).

Run:  .venv/bin/python -m pytest bench/test_peer_speed.py --benchmark-only --benchmark-group-by=group

Every algorithm that a peer implements (`diffkit.peers.runners`) runs in diffkit, diffusers and
k-diffusion (where it exists) on the same near-free eps model (eps = 0, wrapped in a diffkit
`ScoreModel`, so every implementation pays the same model-wrapper cost) with the same batch and
number of steps on `vp` (diffusers on its equivalent linear-beta DDPM table). The peer loops
are exactly the bench runners' (scheduler construction and `set_timesteps` are per-round setup,
outside the timing, like diffkit's grid). `extra_info` gives the time per step and the same in
units of one evaluation of the exact gmm:ring8 network on the batch (`overhead_in_oracle_evals`),
the number `diffkit bench` reports as `overhead_per_step`. Torch runs on one thread here (as
`diffkit bench` does by default): on a busy machine multi-threaded timings of small batches vary
by an order of magnitude.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from test_sampler_speed import REGISTRY, _oracle_eval_seconds

import diffkit
from diffkit.bench.plan import SolverPlan, steps_for_budget
from diffkit.bench.spec import BenchConfig, RunSpec
from diffkit.peers import PeerNotInstalled
from diffkit.peers.runners import RUNNERS, PeerRunner
from diffkit.run.api import SampleConfig, compose

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BATCH = 256
#: model evaluations per run (Heun: 25 steps of 2)
NFE = 50
ALGORITHMS = sorted({method.solver for runner in RUNNERS.values() for method in runner.methods})
CASES = [("diffkit", solver) for solver in ALGORITHMS] + [
    (name, method.solver) for name, runner in RUNNERS.items() for method in runner.methods
]


def _free_model(process: diffkit.NoiseProcess) -> diffkit.ScoreModel:
    """An eps model costing almost nothing: eps = 0."""
    return diffkit.ScoreModel(
        lambda x, t, c: torch.zeros_like(x), kind="eps", process=process, data_shape=(2,)
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Time on one torch thread; restore the thread count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def oracle_eval(one_thread: None) -> float:
    """Seconds of one exact ring8 network evaluation at this suite's batch size."""
    return _oracle_eval_seconds(BATCH)


def _diffkit_setup(solver: str, x: torch.Tensor):  # noqa: ANN202
    """(setup, run, steps) for diffkit's sampler at NFE model calls (stateless: nothing to set up)."""
    caps = REGISTRY.build("sampler", solver, {}).capabilities
    steps = NFE // caps.nfe_per_step
    comp = compose(SampleConfig(process="vp", solver=solver, steps=steps), REGISTRY)
    model = _free_model(comp.process)

    def setup() -> tuple[tuple, dict]:
        return (), {}

    def run() -> None:
        generator = torch.Generator().manual_seed(1)
        comp.sampler(model, comp.process, x, comp.grid, generator=generator)

    return setup, run, steps


def _peer_setup(name: str, solver: str, x: torch.Tensor):  # noqa: ANN202
    """(setup, run, steps): setup prepares a fresh peer loop each round (schedulers are stateful)."""
    try:
        runner: PeerRunner = RUNNERS[name](BenchConfig(process="vp"), REGISTRY)
        runner.load()
    except PeerNotInstalled as error:
        pytest.skip(str(error))
    solver_plan = SolverPlan(solver, False, False, 1, 1.0, False)
    plan = runner.plan(solver_plan)
    steps = steps_for_budget(plan, NFE)
    spec = RunSpec(name, solver, NFE, 0, steps, None, {}, "bench")
    model = _free_model(runner.model_process)
    method = runner.by_solver[solver]

    def setup() -> tuple[tuple, dict]:
        sample, _ = runner.prepare(method, spec, model, x)
        return (sample,), {}

    def run(sample) -> None:  # noqa: ANN001
        sample()

    return setup, run, steps


@pytest.mark.parametrize(("implementation", "solver"), CASES, ids=[f"{s}-{i}" for i, s in CASES])
def test_peer_overhead_per_step(benchmark, implementation: str, solver: str, oracle_eval: float) -> None:  # noqa: ANN001
    x = torch.randn((BATCH, 2), generator=torch.Generator().manual_seed(0))
    if implementation == "diffkit":
        setup, run, steps = _diffkit_setup(solver, x)
    else:
        setup, run, steps = _peer_setup(implementation, solver, x)
    benchmark.group = f"overhead {solver}"
    benchmark.pedantic(run, setup=setup, rounds=7, iterations=1, warmup_rounds=1)
    per_step = benchmark.stats.stats.median / steps
    benchmark.extra_info["steps"] = steps
    benchmark.extra_info["seconds_per_step"] = per_step
    benchmark.extra_info["overhead_in_oracle_evals"] = per_step / oracle_eval
