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
from diffkit.core.errors import OptionError
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
    """em with 1000 uniform steps samples gmm:ring8 within a small factor of the SW2 floor."""
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
    """Negative control: 50 uniform steps ending in a noiseless big step (score_sde's) shrink every mode."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    grid = registry.build("grid", "uniform", {})(vp, 50)
    x_init = prior_noise(vp, model, 2000, seed=1)
    sampler = registry.build("sampler", "em", {})
    steps = sampler(model, vp, x_init, grid[:-1], generator=torch.Generator().manual_seed(2)).x
    t, dt = grid[-2], grid[-1] - grid[-2]
    drift = vp.f(t) * steps - vp.diffusion_squared(t) * model.score(steps, t)
    spread, _ = ring8_quality(model, vp, steps + drift * dt)  # the mean of the last step only
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


def test_last_step_adds_its_noise(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """On a one-step grid em is one Euler-Maruyama step: mean x + drift dt plus g sqrt(dt) z."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    x_init = prior_noise(vp, model, 8, seed=5)
    grid = torch.tensor([0.5, 0.4], dtype=torch.float64)
    sampler = registry.build("sampler", "em", {})
    a = sampler(model, vp, x_init, grid, generator=torch.Generator().manual_seed(0)).x
    t = torch.tensor(0.5, dtype=torch.float64)
    drift = vp.f(t) * x_init - vp.diffusion_squared(t) * model.score(x_init, t)
    noise = torch.randn(x_init.shape, generator=torch.Generator().manual_seed(0), dtype=x_init.dtype)
    expected = x_init - 0.1 * drift + vp.diffusion_squared(t).sqrt() * 0.1**0.5 * noise
    torch.testing.assert_close(a, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["em", "sde"])
def test_default_grid_keeps_ring8_spread_at_100_steps(registry: diffkit.Registry, solver: str) -> None:
    """First-order SDE samplers on their default grid: within-mode spread within 0.03 of 1 at 100 steps.

    Mean over 4 seeds of 10,000 samples (measured: em 1.027, sde 1.026; the spread estimate's own
    noise is about 0.004 per seed). With score_sde's noiseless last step on the uniform grid, `em`
    gave 0.61 at 50 steps and 0.90 at 100; with the last step's noise on the uniform grid, 1.06.
    """
    vp = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:ring8", {}, vp)
    sampler = registry.build("sampler", solver, {})
    assert sampler.capabilities.grid_for(vp) == "quadratic"
    grid = registry.build("grid", "quadratic", {})(vp, 100)
    spreads = []
    for seed in range(4):
        x_init = prior_noise(vp, model, 10_000, seed=10 + seed)
        x = sampler(model, vp, x_init, grid, generator=torch.Generator().manual_seed(seed)).x
        spread, chi2 = ring8_quality(model, vp, x)
        assert chi2 < CHI2_7DOF_999, chi2
        spreads.append(spread)
    assert abs(sum(spreads) / 4 - 1.0) < 0.03, spreads


def test_vp_end_time_is_within_the_d64_floor(registry: diffkit.Registry) -> None:
    """The exact law at vp's default t_min is within the noise floor of gmm:d64's data in spread.

    Within-mode spread of exact p_{t_min} samples against the data's stds, over 4 seeds of 10,000:
    the default end time must sit within 2 floor standard deviations of exact data samples; the
    former t_min = 1e-3 is the negative control (about +5).
    """
    from diffkit.eval.metrics import within_mode_spread

    def spreads(t_min: float | None, exact_data: bool) -> list[float]:
        process = registry.build("process", "vp", {} if t_min is None else {"t_min": t_min})
        model = registry.build("model", "gmm:d64", {}, process)
        t = torch.tensor(process.t_min, dtype=torch.float64)
        alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
        values = []
        for seed in range(4):
            generator = torch.Generator().manual_seed(50 + seed)
            x0 = model.sample_data(10_000, generator=generator, dtype=torch.float64)
            if not exact_data:
                x0 = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
            values.append(float(within_mode_spread(x0, model.component_of(x0), model.mixture.stds)))
        return values

    floor = torch.tensor(spreads(None, exact_data=True))
    floor_mean, floor_std = float(floor.mean()), float(floor.std())
    default = sum(spreads(None, exact_data=False)) / 4
    former = sum(spreads(1e-3, exact_data=False)) / 4
    assert abs(default - floor_mean) < 2 * floor_std + 5e-4, (default, floor_mean, floor_std)
    assert former - floor_mean > 3 * floor_std, (former, floor_mean, floor_std)


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
        and caps.default_grid == "quadratic"
        and caps.default_steps == 1000
    )
