"""Runners: execute one `RunSpec` from given initial noise and report samples, NFE and timings.

A runner is anything with an `implementation` name, `supports`/`plan`/`options` for the sweep's
solvers and `run(spec, noise) -> RunOutput`; the sweep treats diffkit's own runner and
peer-library runners (`diffkit.peers.runners`) alike, so peer rows share the row schema and the
metrics. The model's network is wrapped by a timer for the run, so the wall time splits into
model time and the sampler's own overhead (everything outside the network: the sampler's
arithmetic, the model wrapper's schedule lookups and parameterization conversions, and a peer's
adapter). On CUDA the timer synchronises around each call, which adds a little to the overhead.

diffkit's runner calls the composed sampler directly, without the per-step NaN-check callback
that `diffkit.run.api.sample` adds (peers have none): the result is checked once at the end
(`diffkit.plugin.contract.check_result`: shape, dtype, finiteness, counts), outside the timing, so the
overheads of diffkit and peers are measured alike. The samples are
exactly those of `diffkit sample` with the same noise and seed (same generator seeding).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from diffkit.bench.plan import SolverPlan
from diffkit.bench.spec import DIFFKIT, BenchConfig, RunSpec
from diffkit.core.model import ScoreModel
from diffkit.plugin.contract import check_result
from diffkit.plugin.registry import Registry
from diffkit.run.api import SampleConfig, compose, sample, sampler_seed
from diffkit.run.provenance import jsonable


@dataclass
class RunOutput:
    """What one run produced.

    Attributes:
        samples: `(N, *data_shape)` final samples.
        nfe: model evaluations used (per batch, max over batches).
        steps: steps taken (accepted steps for adaptive solvers).
        seconds: wall time of sampling.
        model_seconds: total wall time inside the model's network during sampling.
        config: the fully resolved configuration (JSON-able).
        composition: implementation-specific objects the quality step may use (e.g. the model).
    """

    samples: torch.Tensor
    nfe: int
    steps: int
    seconds: float
    model_seconds: float
    config: dict[str, Any]
    composition: Any = None


class Runner(Protocol):
    """Runs specs of the sweep: diffkit itself, or a peer library on the same model and noise.

    A peer runner names itself (`implementation`, e.g. "diffusers"), says which of the sweep's
    solvers it has an implementation of (`supports`), how its implementation is planned
    (`plan`: NFE per step, order, whether it ends at the data) and described (`options`: the
    row's options, part of the resume key), and runs a spec from the given noise with the
    oracle's network wrapped in a `NetworkTimer`; its rows then share diffkit's schema,
    metrics, floors and reference paths.
    """

    implementation: str

    def supports(self, solver: SolverPlan) -> bool:
        """Whether this implementation has the solver."""

    def plan(self, solver: SolverPlan) -> SolverPlan:
        """The solver's plan as this implementation runs it (NFE per step, extra NFE)."""

    def options(self, solver: str) -> dict[str, Any]:
        """The options recorded for `solver` in this implementation's rows."""

    def run(self, spec: RunSpec, noise: torch.Tensor) -> RunOutput:
        """Sample one run from `noise` and time it."""


def synchronize(device: torch.device) -> None:
    """Wait for queued work on a CUDA device (no-op elsewhere), so wall times are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class NetworkTimer:
    """Wraps a network `(x, time_input, cond) -> output`, summing the wall time of its calls."""

    def __init__(self, network: Any) -> None:
        self.network, self.seconds, self.calls = network, 0.0, 0

    def __call__(self, x: torch.Tensor, time_input: torch.Tensor, cond: Any) -> torch.Tensor:
        """Call the network, timing it (synchronised on CUDA)."""
        synchronize(x.device)
        start = time.perf_counter()
        out = self.network(x, time_input, cond)
        synchronize(x.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


class TimingRegistry:
    """A view of a registry that wraps the network of every model it builds in a `NetworkTimer`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.timers: list[NetworkTimer] = []

    def build(self, kind: str, name: str, options: Any, *args: Any) -> Any:
        """`Registry.build`, timing models."""
        component = self.registry.build(kind, name, options, *args)
        if kind == "model" and isinstance(component, ScoreModel):
            component.network = NetworkTimer(component.network)
            self.timers.append(component.network)
        return component

    def __getattr__(self, name: str) -> Any:
        return getattr(self.registry, name)


class DiffkitRunner:
    """Runs specs through `diffkit.run.api.sample`, so a bench row is exactly a `diffkit sample` run.

    Args:
        config: the sweep.
        registry: where components come from.
    """

    implementation = DIFFKIT

    def __init__(self, config: BenchConfig, registry: Registry) -> None:
        self.config, self.registry = config, registry

    def supports(self, solver: SolverPlan) -> bool:
        """Every registered solver."""
        return True

    def plan(self, solver: SolverPlan) -> SolverPlan:
        """The sweep's plan of `solver` as it is."""
        return solver

    def options(self, solver: str) -> dict[str, Any]:
        """The user's options for `solver`."""
        return self.config.options_for(solver)

    def sample_config(self, spec: RunSpec, **overrides: Any) -> SampleConfig:
        """The `SampleConfig` of `spec` (keyword overrides replace fields, e.g. dtype)."""
        c = self.config
        fields: dict[str, Any] = dict(
            process=c.process,
            solver=spec.solver,
            model=c.model,
            grid=c.grid,
            steps=spec.steps,
            num_samples=c.num_samples,
            seed=spec.seed,
            device=c.device,
            dtype=c.dtype,
            process_options=dict(c.process_options),
            solver_options=spec.solver_options(),
            model_options=dict(c.model_options),
            grid_options=dict(c.grid_options),
        )
        return SampleConfig(**(fields | overrides))

    def run(self, spec: RunSpec, noise: torch.Tensor) -> RunOutput:
        """Sample from `noise` `(N, *data_shape)`, timing the network apart from the sampler.

        Raises:
            PluginError: the sampler's result is wrong (shape, dtype, counts) or not finite.
        """
        timing = TimingRegistry(self.registry)
        config = self.sample_config(spec)
        comp = compose(config, timing)  # type: ignore[arg-type]
        x = noise.to(device=comp.device, dtype=comp.dtype)
        grid = comp.grid.to(comp.device)
        generator = torch.Generator(device=comp.device).manual_seed(sampler_seed(spec.seed))
        synchronize(comp.device)
        start = time.perf_counter()
        result = comp.sampler(comp.model, comp.process, x, grid, generator=generator)
        synchronize(comp.device)
        seconds = time.perf_counter() - start
        check_result(result, x, spec.solver, self.registry)
        model_seconds = sum(timer.seconds for timer in timing.timers)
        resolved = asdict(config) | {
            "num_samples": x.shape[0],
            "grid": comp.grid_name,
            "steps": comp.steps,
            "x_init": True,
            "nfe": result.nfe,
            "steps_taken": result.steps,
            "capabilities": asdict(comp.sampler.capabilities)
            | {"requires": sorted(comp.sampler.capabilities.requires)},
            "process_repr": repr(comp.process),
            "sampler_repr": repr(comp.sampler),
        }
        config_json = jsonable(resolved)
        return RunOutput(result.x, result.nfe, result.steps, seconds, model_seconds, config_json, comp)

    def nfe_at_tolerance(self, spec: RunSpec, noise: torch.Tensor, tolerance: float) -> int:
        """NFE an adaptive solver uses at rtol = atol = `tolerance` from `noise` (calibration)."""
        options = {**spec.solver_options(), "rtol": tolerance, "atol": tolerance}
        run = sample(self.sample_config(spec, solver_options=options), registry=self.registry, x_init=noise)
        return run.nfe
