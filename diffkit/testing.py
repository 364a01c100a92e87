"""Conformance kit: the checks every diffkit sampler passes, built-in or third-party.

Use it from a plugin's own tests::

    from diffkit import build_registry
    from diffkit.testing import check_sampler_conformance, check_convergence_order

    def test_my_sampler():
        registry = build_registry()
        check_sampler_conformance(registry, "my-sampler")
        check_convergence_order(registry, "my-sampler", steps=[16, 32, 64])  # deterministic only

Failures raise `ConformanceError` (an AssertionError) naming the sampler and the case.
The exact Gaussian-mixture oracles (`gmm:ring8`, `gmm:d64`) provide the models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffkit.core.errors import OptionError
from diffkit.core.model import ScoreModel
from diffkit.core.sampler import Capabilities, Sampler, SampleResult, StepInfo
from diffkit.plugin.registry import Registry

# (model name, model options) pairs: flat 2-D data and an image-shaped (1, 8, 8) mixture
DATA_CASES: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
    ("gmm:ring8", ()),
    ("gmm:d64", (("image", True),)),
)


class ConformanceError(AssertionError):
    """A sampler broke the sampler contract (message names the sampler and the case)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _CountingNetwork:
    """Wraps a model's network and counts its calls independently of `ScoreModel.nfe`."""

    def __init__(self, network: Any) -> None:
        self.network, self.calls = network, 0

    def __call__(self, x: torch.Tensor, time_input: torch.Tensor, cond: Any) -> torch.Tensor:
        self.calls += 1
        return self.network(x, time_input, cond)


def count_network_calls(model: ScoreModel) -> _CountingNetwork:
    """Replace `model.network` by a counting wrapper and return the wrapper (`.calls`)."""
    counter = _CountingNetwork(model.network)
    model.network = counter
    return counter


def expected_nfe(sampler: Sampler, n_steps: int) -> int | None:
    """NFE a fixed-step sampler declares for `n_steps`: its `expected_nfe(n)` if it has one, else
    `n * nfe_per_step` (+1 with `denoise_final`); None when it cannot be known in advance."""
    declared = getattr(sampler, "expected_nfe", None)
    if callable(declared):
        return int(declared(n_steps))
    caps = sampler.capabilities
    if caps.adaptive or caps.nfe_per_step <= 0:
        return None
    return n_steps * caps.nfe_per_step + (1 if getattr(sampler, "denoise_final", False) else 0)


def _check_result(need: Callable[[bool, str], None], result: Any, x_init: torch.Tensor) -> None:
    need(isinstance(result, SampleResult), f"returned {type(result).__name__}, not SampleResult")
    x = result.x
    need(x.shape == x_init.shape, f"output shape {tuple(x.shape)} != input shape {tuple(x_init.shape)}")
    need(x.dtype == x_init.dtype, f"output dtype {x.dtype} != input dtype {x_init.dtype}")
    need(x.device == x_init.device, f"output device {x.device} != input device {x_init.device}")
    need(bool(torch.isfinite(x).all()), "output has NaN or Inf")
    need(isinstance(result.steps, int) and result.steps >= 1, f"bad steps {result.steps!r}")


def _check_callbacks(
    need: Callable[[bool, str], None],
    infos: list[StepInfo],
    result: SampleResult,
    min_calls: int,
    x_init: torch.Tensor,
    t_range: tuple[float, float],
) -> None:
    need(len(infos) >= min_calls, f"callback called {len(infos)} times, expected at least {min_calls}")
    tol = 1e-6 * max(1.0, abs(t_range[1]))
    last_nfe = 0
    for info in infos:
        need(isinstance(info, StepInfo), f"callback got {type(info).__name__}, not StepInfo")
        need(info.x.shape == x_init.shape, f"StepInfo.x has shape {tuple(info.x.shape)}")
        t = float(info.t)
        need(t_range[0] - tol <= t <= t_range[1] + tol, f"StepInfo.t={t} outside {t_range}")
        need(last_nfe <= info.nfe <= result.nfe, "StepInfo.nfe is not monotone up to result.nfe")
        last_nfe = info.nfe


def _run_case(
    registry: Registry,
    name: str,
    fresh: tuple[Sampler, Sampler],
    *,
    process_name: str,
    model_name: str,
    model_options: Mapping[str, Any],
    dtype: torch.dtype,
    steps: int | None,
    batch: int,
    seed: int,
) -> None:
    first, second = fresh
    caps = first.capabilities
    label = f"{name} [{process_name}, {model_name} {dict(model_options)}, {dtype}]"

    def need(condition: bool, message: str) -> None:
        _require(condition, f"{label}: {message}")

    process = registry.build("process", process_name, {})
    model = registry.build("model", model_name, model_options, process)
    counter = count_network_calls(model)
    n_steps = steps or min(caps.default_steps, 8)
    grid = registry.build("grid", caps.default_grid, {})(process, n_steps)
    x_init = process.prior_sample((batch, *model.data_shape), generator=_seeded(seed), dtype=dtype)
    x_copy = x_init.clone()
    rng_state = torch.get_rng_state()

    infos: list[StepInfo] = []
    nfe_before, calls_before = model.nfe, counter.calls
    result = first(model, process, x_init, grid, generator=_seeded(seed + 1), callback=infos.append)
    _check_result(need, result, x_init)
    need(torch.equal(x_init, x_copy), "modified x_init in place")
    calls = counter.calls - calls_before
    need(
        result.nfe == calls == model.nfe - nfe_before,
        f"reported nfe {result.nfe}, network called {calls} times",
    )
    if not caps.adaptive:
        need(result.steps == n_steps, f"{result.steps} steps on a {n_steps}-step grid")
        expected = expected_nfe(first, n_steps)
        if expected is not None:
            need(result.nfe == expected, f"nfe {result.nfe} != the {expected} the sampler declares")
    min_calls = 1 if caps.adaptive else n_steps
    _check_callbacks(need, infos, result, min_calls, x_init, (process.t_min, process.t_max))

    again = second(model, process, x_init, grid, generator=_seeded(seed + 1))
    need(torch.equal(result.x, again.x), "same seed, different samples")
    reused = first(model, process, x_init, grid, generator=_seeded(seed + 1))
    need(torch.equal(result.x, reused.x), "reusing the sampler object changed the result")
    other = first(model, process, x_init, grid, generator=_seeded(seed + 2))
    if caps.stochastic:
        need(not torch.equal(result.x, other.x), "stochastic, but ignores the generator")
    else:
        need(torch.equal(result.x, other.x), "deterministic, but depends on the generator")
    need(torch.equal(rng_state, torch.get_rng_state()), "changed the global RNG state")


def check_sampler_conformance(
    registry: Registry,
    sampler_name: str,
    *,
    options: Mapping[str, Any] | None = None,
    process: str = "vp",
    model: str | None = None,
    steps: int | None = None,
    batch: int = 8,
    seed: int = 0,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
) -> None:
    """Check the sampler contract (DESIGN.md section 3) for `sampler_name`; raise ConformanceError.

    For float32 and float64, on `(B, 2)` data (gmm:ring8) and `(B, 1, 8, 8)` data (gmm:d64 with
    image=True) unless `model` names one model: output shape/dtype/device follow the input; x_init
    is not modified; `nfe` equals the network calls counted by an independent wrapper (and
    steps * nfe_per_step for fixed-step samplers); the callback gets typed `StepInfo`s with
    monotone NFE and times in the process range; the same seed gives bit-identical samples from
    a fresh object and from the reused one; stochastic samplers depend on the generator,
    deterministic ones do not; the global RNG is left alone; unknown options raise OptionError.

    Args:
        registry: where the sampler, process, models and grids come from.
        sampler_name: registered or family name, e.g. "em" or "ode:rk4".
        options: sampler options (as for `registry.build`).
        process: process name.
        model: a single model name to use instead of the two data cases.
        steps: grid steps (default: min(default_steps, 8)).
        batch: samples per run.
        seed: base seed of prior noise and sampler generators.
        dtypes: data dtypes to try.
    """
    options = dict(options or {})
    first, second = (registry.build("sampler", sampler_name, options) for _ in range(2))
    _require(isinstance(first, Sampler), f"{sampler_name}: does not satisfy the Sampler protocol")
    _require(isinstance(first.capabilities, Capabilities), f"{sampler_name}: capabilities is no Capabilities")
    try:
        registry.build("sampler", sampler_name, {**options, "no_such_option_xyz": 1})
    except OptionError:
        pass
    else:
        raise ConformanceError(f"{sampler_name}: an unknown option did not raise OptionError")
    cases = DATA_CASES if model is None else ((model, ()),)
    for model_name, model_options in cases:
        for dtype in dtypes:
            run = dict(process_name=process, model_name=model_name, model_options=dict(model_options))
            _run_case(
                registry,
                sampler_name,
                (first, second),
                dtype=dtype,
                steps=steps,
                batch=batch,
                seed=seed,
                **run,
            )


def empirical_order(errors: Sequence[float], steps: Sequence[int]) -> float:
    """Convergence order p from errors ~ C steps^-p: minus the least-squares log-log slope."""
    if len(errors) != len(steps) or len(errors) < 2:
        raise ValueError("need at least two (error, steps) pairs of equal length")
    if min(errors) <= 0 or min(steps) <= 0:
        raise ValueError("errors and steps must be positive")
    xs = [math.log(n) for n in steps]
    ys = [math.log(e) for e in errors]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - x_mean) ** 2 for x in xs
    )
    return -slope


@dataclass(frozen=True)
class Convergence:
    """Errors of a deterministic sampler against a tight reference, per step count.

    Attributes:
        steps: step counts tried.
        errors: RMS error (over batch and dims) of the samples at each step count.
        order: empirical order (`empirical_order`).
        declared: `capabilities.order` of the sampler.
    """

    steps: tuple[int, ...]
    errors: tuple[float, ...]
    order: float
    declared: float


def measure_convergence(
    registry: Registry,
    sampler_name: str,
    steps: Sequence[int],
    *,
    options: Mapping[str, Any] | None = None,
    process: str = "vp",
    model: str = "gmm:ring8",
    grid: str | None = None,
    batch: int = 32,
    seed: int = 0,
    reference_tol: float = 1e-10,
) -> Convergence:
    """Errors of `sampler_name` against dopri5 (rtol = atol = reference_tol) from the same noise.

    Everything runs in float64; the reference integrates the probability-flow ODE (`ode`), so
    the sampler must be deterministic and solve that ODE (without a final denoising step).
    """
    sampler = registry.build("sampler", sampler_name, dict(options or {}))
    caps = sampler.capabilities
    if caps.stochastic:
        raise ValueError(f"{sampler_name} is stochastic; measure_convergence compares deterministic paths")
    proc = registry.build("process", process, {})
    oracle = registry.build("model", model, {}, proc)
    x_init = proc.prior_sample((batch, *oracle.data_shape), generator=_seeded(seed), dtype=torch.float64)
    reference = registry.build("sampler", "ode", {"rtol": reference_tol, "atol": reference_tol})
    ends = torch.tensor([proc.t_max, proc.t_min], dtype=torch.float64)
    x_ref = reference(oracle, proc, x_init, ends).x
    make_grid = registry.build("grid", grid or caps.default_grid, {})
    errors = []
    for n in steps:
        x = sampler(oracle, proc, x_init, make_grid(proc, n), generator=_seeded(seed + 1)).x
        errors.append(float((x - x_ref).square().mean().sqrt()))
    return Convergence(tuple(steps), tuple(errors), empirical_order(errors, steps), caps.order)


def check_convergence_order(
    registry: Registry, sampler_name: str, steps: Sequence[int], *, tolerance: float = 0.3, **kwargs: Any
) -> Convergence:
    """`measure_convergence`, raising ConformanceError unless |order - declared| <= tolerance."""
    result = measure_convergence(registry, sampler_name, steps, **kwargs)
    _require(
        abs(result.order - result.declared) <= tolerance,
        f"{sampler_name}: empirical order {result.order:.2f} vs declared {result.declared} "
        f"(steps {result.steps}, errors {[f'{e:.3g}' for e in result.errors]})",
    )
    return result
