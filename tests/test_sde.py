"""Reverse-SDE samplers on torchsde: quality, reproducibility, NFE, no dense diffusion, names."""

from __future__ import annotations

import pytest
import torch
import torchsde
from _helpers import (
    CHI2_7DOF_999,
    TimeRecorder,
    at_floor,
    distance_to_data,
    gaussian_errors,
    prior_noise,
    ring8_floor,
    ring8_quality,
)

import diffkit
from diffkit.core.errors import OptionError, UnknownComponentError
from diffkit.plugins import sde as sde_plugin
from diffkit.testing import empirical_order

# method -> grid steps reaching ring8 quality on the uniform grid
QUALITY_STEPS = {"sde:euler": 200, "sde:srk": 100}


@pytest.fixture(scope="module")
def floor(registry: diffkit.Registry):
    """SW2 noise floor of 2000 exact ring8 samples (the data law does not depend on the process)."""
    model = registry.build("model", "gmm:ring8", {}, registry.build("process", "vp", {}))
    return ring8_floor(model, 2000)


@pytest.mark.slow
@pytest.mark.parametrize("process_name", ["vp", "ve"])
@pytest.mark.parametrize("name", sorted(QUALITY_STEPS))
def test_reaches_ring8_quality(registry: diffkit.Registry, floor, name: str, process_name: str) -> None:
    """sde:euler (200 steps) and sde:srk (100 steps) sample ring8 within a small factor of the floor."""
    process = registry.build("process", process_name, {})
    model = registry.build("model", "gmm:ring8", {}, process)
    grid = registry.build("grid", "uniform", {})(process, QUALITY_STEPS[name])
    x_init = prior_noise(process, model, floor.n, seed=1)
    result = registry.build("sampler", name, {})(
        model, process, x_init, grid, generator=torch.Generator().manual_seed(2)
    )
    distance = distance_to_data(model, result.x)
    assert at_floor(distance, floor, factor=2.0), (distance, floor)
    spread, chi2 = ring8_quality(model, process, result.x)  # sharper than SW2 at n = 2000
    assert abs(spread - 1.0) < 0.05 and chi2 < CHI2_7DOF_999, (spread, chi2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sde:euler", "sde:srk"])
def test_weak_order_on_a_gaussian(registry: diffkit.Registry, name: str) -> None:
    """Mean error at t_min on a far-off 1-D Gaussian target (2^15 samples) shrinks at the declared order."""
    process = registry.build("process", "vp", {})
    steps = (16, 32, 64)
    mean_errors, var_errors, mc_var = gaussian_errors(
        registry, name, process, steps, mean=256.0, std=0.5, batch=2**15
    )
    order = empirical_order(mean_errors, steps)
    declared = registry.build("sampler", name, {}).capabilities.order
    assert abs(order - declared) <= 0.3, (order, mean_errors)
    for n, error in zip(steps, var_errors, strict=True):
        assert error <= var_errors[0] * steps[0] / n + 4 * mc_var, (steps, var_errors)


@pytest.mark.parametrize("method", sorted(sde_plugin.SDE_METHODS))
def test_nfe_is_steps_times_stages(registry: diffkit.Registry, method: str) -> None:
    """NFE == steps * nfe_per_step exactly (no wasted shape-check call), counted by the network wrapper."""
    process = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:ring8", {}, process)
    recorder = TimeRecorder(model)
    sampler = registry.build("sampler", f"sde:{method}", {})
    grid = registry.build("grid", "karras", {})(process, 6)  # non-uniform on purpose
    infos: list[diffkit.StepInfo] = []
    result = sampler(
        model,
        process,
        prior_noise(process, model, 4, seed=3),
        grid,
        generator=torch.Generator().manual_seed(0),
        callback=infos.append,
    )
    assert result.nfe == recorder.calls == 6 * sampler.capabilities.nfe_per_step
    assert result.steps == 6 and [i.step for i in infos] == list(range(6))
    assert torch.equal(torch.stack([i.t for i in infos]), grid[1:])  # exactly on the grid
    times = recorder.all_times()
    assert float(times.min()) >= process.t_min and float(times.max()) <= process.t_max
    assert all(bool((times == t).any()) for t in grid[:-1])  # each step starts on a grid time


@pytest.mark.parametrize("name", ["sde", "sde:srk", "sde:heun"])
def test_same_seed_bit_identical(registry: diffkit.Registry, name: str) -> None:
    """Same seed: bit-identical samples (also on (B, 1, 8, 8) data); another seed differs."""
    process = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:d64", {"image": True}, process)
    x_init = prior_noise(process, model, 4, seed=4, dtype=torch.float32)
    grid = registry.build("grid", "uniform", {})(process, 8)
    sampler = registry.build("sampler", name, {})
    runs = [
        sampler(model, process, x_init, grid, generator=torch.Generator().manual_seed(s)).x for s in (5, 5, 6)
    ]
    assert runs[0].shape == (4, 1, 8, 8) and runs[0].dtype == torch.float32
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_no_dense_diffusion_matrix(registry: diffkit.Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only f and g_prod exist; torchsde's dense paths (g, batch matrix-vector products) never run."""
    process = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:d64", {"image": True}, process)
    probe = sde_plugin._ReverseSDE(model, process, torch.Size((2, 1, 8, 8)), "ito")
    assert probe.noise_type == "additive"
    assert not any(hasattr(probe, name) for name in ("g", "f_and_g", "f_and_g_prod"))

    def forbidden(*args, **kwargs):
        raise AssertionError("a dense diffusion matrix was used")

    monkeypatch.setattr(torchsde._core.misc, "batch_mvp", forbidden)
    monkeypatch.setattr(torchsde._core.base_sde.ForwardSDE, "g_default", forbidden)
    grid = registry.build("grid", "uniform", {})(process, 3)
    x_init = prior_noise(process, model, 2, seed=7)
    for method in sde_plugin.SDE_METHODS:
        sampler = registry.build("sampler", f"sde:{method}", {})
        result = sampler(model, process, x_init, grid, generator=torch.Generator().manual_seed(0))
        assert result.x.shape == x_init.shape and bool(torch.isfinite(result.x).all())


def test_global_rng_untouched_and_denoise_final(registry: diffkit.Registry) -> None:
    """torchsde's shape-check draw does not leak into the global RNG; denoise_final costs one NFE."""
    process = registry.build("process", "ve", {})
    model = registry.build("model", "gmm:ring8", {}, process)
    x_init = prior_noise(process, model, 8, seed=8)
    grid = registry.build("grid", "uniform", {})(process, 5)
    state = torch.get_rng_state()
    plain = registry.build("sampler", "sde:srk", {})(
        model, process, x_init, grid, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(state, torch.get_rng_state())
    denoised = registry.build("sampler", "sde:srk", {"denoise_final": True})(
        model, process, x_init, grid, generator=torch.Generator().manual_seed(1)
    )
    assert denoised.nfe == plain.nfe + 1 == 11
    assert torch.equal(denoised.x, model.predict(plain.x, process.t_min).x0)


def test_names_and_options(registry: diffkit.Registry) -> None:
    """`sde` is Euler; family names resolve; unknown methods and options raise."""
    assert registry.build("sampler", "sde", {}).method == "euler"
    srk = registry.build("sampler", "sde:srk", {})
    assert (
        srk.capabilities.stochastic and srk.capabilities.nfe_per_step == 2 and srk.capabilities.order == 2.0
    )
    assert srk.capabilities.default_grid == "quadratic" and srk.capabilities.default_steps == 500
    assert {f"sde:{m}" for m in sde_plugin.SDE_METHODS} <= set(registry.family_examples("sampler"))
    with pytest.raises(UnknownComponentError):
        registry.get("sampler", "sde:foo")
    with pytest.raises(UnknownComponentError):
        registry.get("sampler", "sde:reversible_heun")
    with pytest.raises(OptionError):
        registry.build("sampler", "sde:srk", {"method": "euler"})
    with pytest.raises(OptionError):
        registry.build("sampler", "sde", {"method": "foo"})
    with pytest.raises(OptionError):
        registry.build("sampler", "sde", {"dt": 0.1})
