"""DDPM ancestral sampling `ancestral` and the `ddpm` grid: exact DDPM, respacing, diffusers, quality."""

from __future__ import annotations

import pytest
import torch
from _helpers import CHI2_7DOF_999, at_floor, distance_to_data, prior_noise, ring8_floor, ring8_quality

import diffkit
from diffkit.core.errors import OptionError
from diffkit.plugins.ancestral import Ancestral

F64 = torch.float64
N = 1000  # knots of the default ddpm process


@pytest.fixture(scope="module")
def ddpm(registry: diffkit.Registry) -> diffkit.NoiseProcess:
    """Discrete DDPM, linear betas 1e-4..0.02, N = 1000."""
    return registry.build("process", "ddpm", {})


def _eps(model: diffkit.ScoreModel, x: torch.Tensor, k: int) -> torch.Tensor:
    """The oracle's eps at 0-based DDPM timestep k, i.e. diffkit time t = (k + 1) / N."""
    return model.network(x, torch.full((x.shape[0],), (k + 1) / N, dtype=F64), None)


def _plain_ddpm(model, x, timesteps: list[int], variance: str, generator) -> torch.Tensor:
    """Ho et al. 2020, Alg. 2 over `timesteps` (0-based, descending, ending at 0), written out by hand.

    Respaced as in improved DDPM: beta_t = 1 - alpha_bar_t / alpha_bar_prev for consecutive kept steps.
    """
    alpha_bar = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, N, dtype=F64), dim=0)
    for j, k in enumerate(timesteps):
        prev = alpha_bar[timesteps[j + 1]] if j + 1 < len(timesteps) else torch.tensor(1.0, dtype=F64)
        beta = 1.0 - alpha_bar[k] / prev
        mean = (x - beta / torch.sqrt(1.0 - alpha_bar[k]) * _eps(model, x, k)) / torch.sqrt(1.0 - beta)
        if j + 1 == len(timesteps):
            return mean  # z = 0 on the final step to x_0
        var = beta if variance == "beta" else beta * (1.0 - prev) / (1.0 - alpha_bar[k])
        x = mean + torch.sqrt(var) * torch.randn(x.shape, generator=generator, dtype=F64)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("n_steps", [N - 1, 99])
def test_equals_a_plain_ddpm_loop(registry, ddpm, n_steps: int, variance: str) -> None:
    """Every knot (1000 model calls) and 100 respaced ones: DDPM to 1e-10 in float64, same noise."""
    model = registry.build("model", "gmm:ring8", {}, ddpm)
    x_init = prior_noise(ddpm, model, 32, seed=0)
    sampler = registry.build("sampler", "ancestral", {"variance": variance, "denoise_final": True})
    grid = registry.build("grid", "ddpm", {})(ddpm, n_steps)
    result = sampler(model, ddpm, x_init, grid, generator=torch.Generator().manual_seed(1))
    timesteps = [round(j * (N - 1) / n_steps) for j in range(n_steps, -1, -1)]  # improved-DDPM respacing
    expected = _plain_ddpm(model, x_init, timesteps, variance, torch.Generator().manual_seed(1))
    assert result.nfe == n_steps + 1
    torch.testing.assert_close(result.x, expected, rtol=0, atol=1e-10)


def test_beta_and_beta_tilde_differ_only_in_the_noise_scale(registry, ddpm) -> None:
    """One step t -> s: same mean, noise std sqrt(beta) vs sqrt(beta) sigma_s / sigma_t (DDPM eq. 7)."""
    model = registry.build("model", "gmm:ring8", {}, ddpm)
    x_init = prior_noise(ddpm, model, 16, seed=2)
    grid = torch.tensor([0.5, 0.3], dtype=F64)
    runs = {
        v: registry.build("sampler", "ancestral", {"variance": v})(
            model, ddpm, x_init, grid, generator=torch.Generator().manual_seed(3)
        ).x
        for v in ("beta", "beta_tilde")
    }
    alpha_bar_t, alpha_bar_s = (ddpm.alpha(grid) ** 2).tolist()
    beta = 1.0 - alpha_bar_t / alpha_bar_s
    eps = model.predict(x_init, grid[0]).eps
    mean = (x_init - beta / (1.0 - alpha_bar_t) ** 0.5 * eps) / (1.0 - beta) ** 0.5
    z = torch.randn(x_init.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(runs["beta"], mean + beta**0.5 * z, rtol=1e-12, atol=1e-12)
    tilde = beta * (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t)
    torch.testing.assert_close(runs["beta_tilde"], mean + tilde**0.5 * z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variance, variance_type", [("beta_tilde", "fixed_small"), ("beta", "fixed_large")])
def test_agrees_with_diffusers_ddpm_scheduler(registry, ddpm, variance: str, variance_type: str) -> None:
    """Same model, initial noise and generator as diffusers' DDPMScheduler, 100 "linspace" steps.

    diffusers keeps alpha_bar in float32, so paths agree to ~1e-5 (mean) rather than exactly; the
    sample moments and within-mode spread agree far inside their Monte-Carlo error.
    """
    diffusers = pytest.importorskip("diffusers")
    config = dict(
        num_train_timesteps=N,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        variance_type=variance_type,
        clip_sample=False,
        prediction_type="epsilon",
        timestep_spacing="linspace",
    )
    scheduler = diffusers.DDPMScheduler.from_config(config)
    scheduler.set_timesteps(100)
    model = registry.build("model", "gmm:ring8", {}, ddpm)
    x_init = prior_noise(ddpm, model, 4000, seed=4)
    generator, x = torch.Generator().manual_seed(5), x_init
    for k in scheduler.timesteps:
        x = scheduler.step(_eps(model, x, int(k)), k, x, generator=generator).prev_sample
    grid = registry.build("grid", "ddpm", {})(ddpm, 99)
    assert ((grid * N).round().long() - 1).tolist() == scheduler.timesteps.tolist()
    sampler = registry.build("sampler", "ancestral", {"variance": variance, "denoise_final": True})
    ours = sampler(model, ddpm, x_init, grid, generator=torch.Generator().manual_seed(5)).x
    gap = (ours - x).abs()
    assert float(gap.max()) < 1e-2 and float(gap.mean()) < 1e-4, (float(gap.max()), float(gap.mean()))
    torch.testing.assert_close(ours.mean(0), x.mean(0), rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.cov(ours.T), torch.cov(x.T), rtol=0, atol=5e-4)
    spreads = [ring8_quality(model, ddpm, samples)[0] for samples in (ours, x)]
    assert abs(spreads[0] - spreads[1]) < 5e-4, spreads


def test_ring8_at_the_default_settings_is_near_the_floor(registry) -> None:
    """Default grid and steps on VP: SW2 at the noise floor, spread within 4 % (MC error 1.1 %), weights."""
    vp = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:ring8", {}, vp)
    sampler = registry.build("sampler", "ancestral", {})
    caps = sampler.capabilities
    grid = registry.build("grid", caps.default_grid, {})(vp, caps.default_steps)
    x = sampler(
        model, vp, prior_noise(vp, model, 2000, seed=6), grid, generator=torch.Generator().manual_seed(7)
    ).x
    distance, floor = distance_to_data(model, x), ring8_floor(model, 2000)
    assert at_floor(distance, floor, factor=1.5), (distance, floor)
    spread, chi2 = ring8_quality(model, vp, x)
    assert abs(spread - 1.0) < 0.04 and chi2 < CHI2_7DOF_999, (spread, chi2)


@pytest.mark.parametrize("process_name", ["vp", "ve", "subvp", "ddpm-cosine"])
def test_works_on_every_process(registry, process_name: str) -> None:
    """200 log-SNR steps keep the ring's within-mode spread within 5 % (MC error 1.6 %) on each process."""
    process = registry.build("process", process_name, {})
    model = registry.build("model", "gmm:ring8", {}, process)
    grid = registry.build("grid", "log-snr", {})(process, 200)
    x_init = prior_noise(process, model, 1000, seed=8)
    x = registry.build("sampler", "ancestral", {})(
        model, process, x_init, grid, generator=torch.Generator().manual_seed(9)
    ).x
    spread, chi2 = ring8_quality(model, process, x)
    assert abs(spread - 1.0) < 0.05 and chi2 < CHI2_7DOF_999, (spread, chi2)


def test_ddpm_grid_on_discrete_and_continuous_processes(registry, ddpm) -> None:
    """Knots evenly spaced from t_max to t_min (every knot at N - 1 steps); uniform on VP; n < N."""
    make = registry.build("grid", "ddpm", {})
    full = make(ddpm, N - 1)
    torch.testing.assert_close(full, ddpm.discrete_times.flip(0), rtol=0, atol=0)
    grid = make(ddpm, 4)  # 1-based knots round(j 999 / 4) + 1: 749.25, 499.5 (half to even), 249.75
    torch.testing.assert_close(grid * N, torch.tensor([1000.0, 750.0, 501.0, 251.0, 1.0], dtype=F64))
    assert grid[0].item() == ddpm.t_max and grid[-1].item() == ddpm.t_min
    vp = registry.build("process", "vp", {})
    torch.testing.assert_close(make(vp, 7), registry.build("grid", "uniform", {})(vp, 7), rtol=0, atol=0)
    with pytest.raises(ValueError, match="at most 999 steps"):
        make(ddpm, N)


def test_options_and_capabilities(registry) -> None:
    """Unknown variance raises at construction; capabilities are declared."""
    with pytest.raises(OptionError):
        registry.build("sampler", "ancestral", {"variance": "learned"})
    with pytest.raises(ValueError):
        Ancestral(variance="fixed_small")  # type: ignore[arg-type]
    caps = registry.build("sampler", "ancestral", {}).capabilities
    assert caps.stochastic and caps.order == 1.0 and caps.nfe_per_step == 1
