"""Reverse-SDE Euler–Maruyama `em`: weak order, sample quality, reproducibility, final step."""

from __future__ import annotations

import pytest
import torch
from _helpers import (
    CHI2_7DOF_999,
    at_floor,
    distance_to_data,
    gaussian_errors,
    prior_noise,
    ring8_floor,
    ring8_quality,
)

import diffkit
from diffkit.errors import OptionError
from diffkit.plugins.em import EulerMaruyama
from diffkit.testing import empirical_order

MEAN, STD, BATCH = 256.0, 0.5, 2**15  # far-off 1-D Gaussian: large mean error, small Monte-Carlo noise


@pytest.fixture(scope="module")
def vp(registry: diffkit.Registry) -> diffkit.NoiseProcess:
    """The VP process with default options."""
    return registry.build("process", "vp", {})


@pytest.mark.slow
def test_weak_order_on_a_gaussian(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """Mean error of em at t_min on a 1-D Gaussian target shrinks like 1/steps (weak order 1).

    The variance error changes sign as the steps grow, so it is only bounded by first order.
    """
    steps = (16, 32, 64)
    mean_errors, var_errors, mc_var = gaussian_errors(
        registry, "em", vp, steps, mean=MEAN, std=STD, batch=2**15
    )
    order = empirical_order(mean_errors, steps)
    assert abs(order - 1.0) <= 0.3, (order, mean_errors)
    for n, error in zip(steps, var_errors, strict=True):
        assert error <= var_errors[0] * steps[0] / n + 4 * mc_var, (steps, var_errors)


@pytest.mark.slow
def test_ring8_at_1000_steps_is_near_the_noise_floor(
    registry: diffkit.Registry, vp: diffkit.NoiseProcess
) -> None:
    """em with its default 1000 uniform steps samples gmm:ring8 within a small factor of the SW2 floor."""
    n = 2000
    model = registry.build("model", "gmm:ring8", {}, vp)
    floor = ring8_floor(model, n)
    sampler = registry.build("sampler", "em", {})
    grid = registry.build("grid", "uniform", {})(vp, sampler.capabilities.default_steps)
    x = sampler(
        model, vp, prior_noise(vp, model, n, seed=1), grid, generator=torch.Generator().manual_seed(2)
    ).x
    distance = distance_to_data(model, x)
    assert at_floor(distance, floor, factor=2.0), (distance, floor)
    spread, chi2 = ring8_quality(model, vp, x)  # sharper than SW2 at n = 2000
    assert abs(spread - 1.0) < 0.05 and chi2 < CHI2_7DOF_999, (spread, chi2)


def test_ring8_spread_check_catches_collapsed_modes(
    registry: diffkit.Registry, vp: diffkit.NoiseProcess
) -> None:
    """Negative control: 50 uniform em steps end with one big step that shrinks every mode (DESIGN 9)."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    grid = registry.build("grid", "uniform", {})(vp, 50)
    x_init = prior_noise(vp, model, 2000, seed=1)
    x = registry.build("sampler", "em", {})(
        model, vp, x_init, grid, generator=torch.Generator().manual_seed(2)
    ).x
    spread, _ = ring8_quality(model, vp, x)
    assert spread < 0.8


def test_same_seed_same_samples(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """Same generator seed: bit-identical; another seed: different samples."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    x_init = prior_noise(vp, model, 16, seed=3, dtype=torch.float32)
    grid = registry.build("grid", "uniform", {})(vp, 20)
    sampler = registry.build("sampler", "em", {})
    runs = [sampler(model, vp, x_init, grid, generator=torch.Generator().manual_seed(s)).x for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert runs[0].dtype == torch.float32


def test_denoise_final_adds_exactly_one_nfe(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """denoise_final returns the model's x0 at t_min from the same path, for one more NFE."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    x_init = prior_noise(vp, model, 8, seed=4)
    grid = registry.build("grid", "uniform", {})(vp, 10)
    plain = registry.build("sampler", "em", {})(
        model, vp, x_init, grid, generator=torch.Generator().manual_seed(0)
    )
    sampler = registry.build("sampler", "em", {"denoise-final": "true"})
    denoised = sampler(model, vp, x_init, grid, generator=torch.Generator().manual_seed(0))
    assert (plain.nfe, denoised.nfe) == (10, 11)
    assert torch.equal(denoised.x, model.predict(plain.x, vp.t_min).x0)


def test_last_step_adds_no_noise(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """On a one-step grid em is deterministic: the last step returns the mean x + drift dt."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    x_init = prior_noise(vp, model, 8, seed=5)
    grid = torch.tensor([0.5, 0.4], dtype=torch.float64)
    sampler = registry.build("sampler", "em", {})
    a = sampler(model, vp, x_init, grid, generator=torch.Generator().manual_seed(0)).x
    b = sampler(model, vp, x_init, grid, generator=torch.Generator().manual_seed(1)).x
    assert torch.equal(a, b)
    t = torch.tensor(0.5, dtype=torch.float64)
    drift = vp.f(t) * x_init - vp.diffusion_squared(t) * model.score(x_init, t)
    torch.testing.assert_close(a, x_init - 0.1 * drift, rtol=1e-12, atol=1e-12)


def test_callback_sees_every_step(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """The callback gets one StepInfo per step with the grid's next time and the running NFE."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    grid = registry.build("grid", "uniform", {})(vp, 5)
    infos: list[diffkit.StepInfo] = []
    registry.build("sampler", "em", {})(
        model,
        vp,
        prior_noise(vp, model, 4, seed=6),
        grid,
        generator=torch.Generator().manual_seed(0),
        callback=infos.append,
    )
    assert [info.step for info in infos] == [0, 1, 2, 3, 4]
    assert [info.nfe for info in infos] == [1, 2, 3, 4, 5]
    assert torch.equal(torch.stack([info.t for info in infos]), grid[1:])


def test_options_are_validated(registry: diffkit.Registry) -> None:
    """Unknown options and non-boolean flags raise; capabilities are declared."""
    with pytest.raises(OptionError):
        registry.build("sampler", "em", {"snr": 0.1})
    with pytest.raises(OptionError):
        registry.build("sampler", "em", {"denoise_final": "maybe"})
    with pytest.raises(ValueError):
        EulerMaruyama(denoise_final=1)  # type: ignore[arg-type]
    caps = registry.build("sampler", "em", {}).capabilities
    assert (
        caps.stochastic
        and caps.order == 1.0
        and caps.default_grid == "uniform"
        and caps.default_steps == 1000
    )
