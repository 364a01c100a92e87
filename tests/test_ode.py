"""Probability-flow ODE samplers: convergence orders, NFE, time range, sample quality."""

from __future__ import annotations

import pytest
import torch
from _helpers import (
    CHI2_7DOF_999,
    TimeRecorder,
    at_floor,
    distance_to_data,
    prior_noise,
    ring8_floor,
    ring8_quality,
)

import diffkit
from diffkit.core.errors import OptionError, UnknownComponentError
from diffkit.plugins import ode as ode_plugin
from diffkit.testing import check_convergence_order

# step ranges in the asymptotic regime on gmm:ring8 / vp with the log-SNR grid (float64)
ORDER_CASES = {
    "ode:euler": (100, 200, 400),
    "ode:midpoint": (100, 200, 400),
    "ode:rk4": (50, 100, 200),
}


@pytest.fixture(scope="module")
def vp(registry: diffkit.Registry) -> diffkit.NoiseProcess:
    """The VP process with default options."""
    return registry.build("process", "vp", {})


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ORDER_CASES))
def test_fixed_step_convergence_order(registry: diffkit.Registry, name: str) -> None:
    """Error vs a dopri5 reference (rtol = atol = 1e-10) from the same noise shrinks at the declared order."""
    result = check_convergence_order(
        registry, name, ORDER_CASES[name], grid="log-snr", batch=16, tolerance=0.3
    )
    assert result.errors[-1] < 1e-2
    assert result.errors == tuple(sorted(result.errors, reverse=True))


@pytest.mark.parametrize(
    "name, steps", [("ode", 1), ("ode:rk4", 7), ("ode:midpoint", 5), ("ode:explicit_adams", 9)]
)
def test_nfe_is_counted(registry: diffkit.Registry, vp: diffkit.NoiseProcess, name: str, steps: int) -> None:
    """Reported NFE equals the network calls seen by an independent wrapper; fixed steps land on the grid."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    recorder = TimeRecorder(model)
    sampler = registry.build("sampler", name, {})
    grid = registry.build("grid", "log-snr", {})(vp, steps)
    result = sampler(model, vp, prior_noise(vp, model, 8, seed=1), grid)
    assert result.nfe == recorder.calls > 0
    caps = sampler.capabilities
    if not caps.adaptive:
        assert result.steps == steps
        if caps.nfe_per_step:
            assert result.nfe == steps * caps.nfe_per_step
        # every step starts on a grid point: the grid's times (but t_min) are all evaluated
        seen = torch.unique(recorder.all_times())
        assert all(bool((seen == t).any()) for t in grid[:-1])


def test_dopri5_lands_on_t_min_and_stays_in_range(
    registry: diffkit.Registry, vp: diffkit.NoiseProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The solver's times never pass t_min (its last step ends there); the model sees only [t_min, t_max]."""
    raw: list[float] = []
    flow_call = ode_plugin._ProbabilityFlow.__call__

    def spy(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raw.append(float(t))
        return flow_call(self, t, x)

    monkeypatch.setattr(ode_plugin._ProbabilityFlow, "__call__", spy)
    model = registry.build("model", "gmm:ring8", {}, vp)
    recorder = TimeRecorder(model)
    steps_seen: list[diffkit.StepInfo] = []
    grid = torch.tensor([vp.t_max, vp.t_min], dtype=torch.float64)
    result = registry.build("sampler", "ode", {})(
        model, vp, prior_noise(vp, model, 16, seed=2), grid, callback=steps_seen.append
    )
    assert result.steps >= 1 and result.nfe == len(steps_seen) == len(raw)
    # the final step ends on t_min: its last stage is evaluated there (up to one rounding of t0 + dt)
    assert vp.t_min <= min(raw) <= vp.t_min * (1 + 1e-12)
    assert max(raw) == vp.t_max
    times = recorder.all_times()
    assert float(times.min()) >= vp.t_min and float(times.max()) <= vp.t_max

    # a span so short that torchdiffeq's first-step probe passes its end: the model never sees that
    recorder.times.clear()
    raw.clear()
    short = torch.tensor([1.1e-3, 1.0e-3], dtype=torch.float64)
    registry.build("sampler", "ode", {})(model, vp, prior_noise(vp, model, 16, seed=3), short)
    assert min(raw) < 1.0e-3  # the probe did leave the span ...
    times = recorder.all_times()
    assert float(times.min()) >= 1.0e-3 and float(times.max()) <= 1.1e-3  # ... but was clamped


@pytest.mark.slow
def test_tight_ode_samples_are_at_the_noise_floor(
    registry: diffkit.Registry, vp: diffkit.NoiseProcess
) -> None:
    """dopri5 at rtol = atol = 1e-6 maps prior noise to ring8 samples as good as exact ones."""
    n = 2000
    model = registry.build("model", "gmm:ring8", {}, vp)
    floor = ring8_floor(model, n)
    sampler = registry.build("sampler", "ode", {"rtol": 1e-6, "atol": 1e-6})
    grid = torch.tensor([vp.t_max, vp.t_min], dtype=torch.float64)
    x = sampler(model, vp, prior_noise(vp, model, n, seed=4), grid).x
    distance = distance_to_data(model, x)
    assert at_floor(distance, floor), (distance, floor)
    spread, chi2 = ring8_quality(model, vp, x)  # sharper than SW2 at n = 2000
    assert abs(spread - 1.0) < 0.05 and chi2 < CHI2_7DOF_999, (spread, chi2)


def test_denoise_final_adds_one_nfe(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """denoise_final returns the x0 prediction at t_min for one more model call."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    x_init = prior_noise(vp, model, 8, seed=5)
    grid = registry.build("grid", "log-snr", {})(vp, 6)
    plain = registry.build("sampler", "ode:rk4", {})(model, vp, x_init, grid)
    denoised = registry.build("sampler", "ode:rk4", {"denoise_final": True})(model, vp, x_init, grid)
    assert denoised.nfe == plain.nfe + 1
    torch.testing.assert_close(denoised.x, model.predict(plain.x, vp.t_min).x0, rtol=0, atol=0)


def test_names_options_and_capabilities(registry: diffkit.Registry) -> None:
    """Family names resolve, hide the bound method, and bad names or values raise."""
    assert registry.get("sampler", "ode").plugin == "ode"
    assert "ode:rk4" in registry.family_examples("sampler")
    rk4 = registry.build("sampler", "ode:rk4", {})
    assert rk4.method == "rk4" and rk4.capabilities.order == 4 and rk4.capabilities.nfe_per_step == 4
    assert rk4.capabilities.default_grid == "log-snr" and not rk4.capabilities.adaptive
    dopri5 = registry.build("sampler", "ode", {"rtol": "1e-6"})
    assert dopri5.rtol == 1e-6 and dopri5.capabilities.adaptive and dopri5.capabilities.order == 5
    with pytest.raises(OptionError):
        registry.build("sampler", "ode:rk4", {"method": "euler"})  # bound by the family name
    with pytest.raises(OptionError):
        registry.build("sampler", "ode", {"method": "nope"})
    with pytest.raises(OptionError):
        registry.build("sampler", "ode:euler", {"first_step": 0.1})  # adaptive-only option
    with pytest.raises(OptionError):
        registry.build("sampler", "ode", {"rtol": -1})
    with pytest.raises(OptionError):
        registry.build("sampler", "ode", {"tolerance": 1})
    with pytest.raises(UnknownComponentError):
        registry.get("sampler", "ode:foo")
    with pytest.raises(UnknownComponentError):
        registry.get("sampler", "ode:scipy_solver")


def test_max_num_steps_raises_sampling_error(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """An adaptive solve that needs more steps than allowed fails with SamplingError, not an assert."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    sampler = registry.build("sampler", "ode", {"rtol": 1e-9, "atol": 1e-9, "max_num_steps": 3})
    grid = torch.tensor([vp.t_max, vp.t_min], dtype=torch.float64)
    with pytest.raises(diffkit.SamplingError, match="max_num_steps"):
        sampler(model, vp, prior_noise(vp, model, 4, seed=6), grid)
