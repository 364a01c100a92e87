"""The peer-library harness (tests/peers.py) is exact: tables, time maps, denoiser, sigma lists."""

from __future__ import annotations

import sys

import peers
import pytest
import torch

import diffkit
from diffkit.oracles.mixture import component_log_joint, perturbed_components

PROCESSES = ("vp", "ve", "subvp", "ddpm")


def exact_posterior_mean(
    model: diffkit.ScoreModel, x: torch.Tensor, alpha: float, sigma: float
) -> torch.Tensor:
    """E[x0 | x_t = x] `(B, D)` of a diagonal mixture, from Gaussian conditioning per component.

    For component k, x0 | x_t is Gaussian with mean mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2)
    (x - alpha mu_k); the mixture mean weights these by the posterior responsibilities.
    """
    m = model.mixture
    a = torch.full((x.shape[0],), alpha, dtype=torch.float64)
    s = torch.full((x.shape[0],), sigma, dtype=torch.float64)
    means_t, variances_t = perturbed_components(m.means, m.stds, a, s)
    resp = torch.softmax(component_log_joint(x, means_t, variances_t, m.log_weights), dim=-1)
    gain = alpha * m.stds.square() / variances_t  # (B, K, D)
    posterior = m.means + gain * (x.unsqueeze(-2) - means_t)
    return (resp.unsqueeze(-1) * posterior).sum(-2)


def test_k_diffusion_sampling_loads_without_its_package_init() -> None:
    """The private import gives sampling.py, and leaves no k_diffusion or torchvision stand-in behind."""
    before = {name: name in sys.modules for name in ("k_diffusion", "torchvision")}
    sampling = peers.load_k_diffusion_sampling()
    assert callable(sampling.sample_heun) and callable(sampling.get_sigmas_karras)
    assert sampling.__name__ == "_diffkit_peer_k_diffusion.sampling"
    assert {name: name in sys.modules for name in before} == before
    assert peers.load_k_diffusion_sampling() is sampling  # cached by Python's module cache


def test_ddpm_alpha_bar_equals_diffusers_alphas_cumprod(registry: diffkit.Registry) -> None:
    """diffkit's ddpm table is DDPM's linear-beta table; diffusers' float32 copy agrees to its resolution.

    diffusers builds `betas` and `alphas_cumprod` in float32, so 1e-12 agreement is impossible;
    the float64 side (definition, knot times t = (k + 1) / N of the eps adapter) holds to 1e-12.
    """
    diffusers = peers.load_diffusers()
    ddpm = registry.build("process", "ddpm", {})
    config = peers.diffusers_config(ddpm)
    assert config == {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
    }
    table = ddpm.alpha_bar_table
    definition = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), dim=0)
    torch.testing.assert_close(table, definition, rtol=1e-12, atol=1e-12)
    k = torch.arange(1000)
    torch.testing.assert_close(
        ddpm.alpha(peers.diffusers_time(ddpm, k)).square(), table, rtol=1e-12, atol=1e-12
    )
    ours = diffusers.DDPMScheduler(**config).alphas_cumprod
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.to(torch.float64), table, rtol=1e-6, atol=0.0)  # measured 3.6e-7

    cosine = registry.build("process", "ddpm-cosine", {})
    theirs = diffusers.DDPMScheduler(**peers.diffusers_config(cosine)).alphas_cumprod
    torch.testing.assert_close(theirs.to(torch.float64), cosine.alpha_bar_table, rtol=1e-5, atol=1e-7)


def test_diffusers_eps_adapter_matches_diffusers_x0(registry: diffkit.Registry) -> None:
    """eps(x, k) is the model's eps at t = (k + 1) / N; diffusers' own x0 formula agrees with diffkit's."""
    diffusers = peers.load_diffusers()
    ddpm = registry.build("process", "ddpm", {})
    model = registry.build("model", "gmm:ring8", {}, ddpm)
    eps = peers.diffusers_eps(model, ddpm)
    scheduler = diffusers.DDPMScheduler(**peers.diffusers_config(ddpm), clip_sample=False)
    x = torch.randn((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in (0, 1, 499, 999):
        t = torch.tensor((k + 1) / 1000, dtype=torch.float64)
        prediction = model.predict(x, t)
        assert torch.equal(eps(x, k), prediction.eps)
        assert torch.equal(eps(x, torch.full((16,), k)), prediction.eps)
        step = scheduler.step(eps(x, k), k, x, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(step.pred_original_sample, prediction.x0, rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="discrete"):
        peers.diffusers_eps(model, registry.build("process", "vp", {}))


@pytest.mark.parametrize("process_name", PROCESSES)
def test_denoiser_is_the_exact_posterior_mean(registry: diffkit.Registry, process_name: str) -> None:
    """D(x / alpha, sigma / alpha) = E[x0 | x_t = x], computed independently, to 1e-12 (float64)."""
    process = registry.build("process", process_name, {})
    model = registry.build("model", "gmm:ring8", {}, process)
    denoise = peers.k_diffusion_denoiser(model, process)
    generator = torch.Generator().manual_seed(3)
    for t in (process.t_min, 0.05, 0.3, 0.7, process.t_max):
        alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
        x0 = model.sample_data(32, generator=generator, dtype=torch.float64)
        x = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        sigma_s = torch.full((32,), sigma / alpha, dtype=torch.float64)
        got = denoise(x / alpha, sigma_s)
        scale = max(1.0, float(x0.abs().max()))
        torch.testing.assert_close(
            got, exact_posterior_mean(model, x, alpha, sigma), rtol=1e-12, atol=1e-12 * scale
        )


@pytest.mark.parametrize("process_name", PROCESSES)
@pytest.mark.parametrize("grid_name", ["uniform", "log-snr", "karras", "quadratic"])
def test_sigma_list_round_trips(registry: diffkit.Registry, process_name: str, grid_name: str) -> None:
    """sigma_s of each grid time plus a trailing 0; inverting sigma_s gives the grid back to 1e-12."""
    process = registry.build("process", process_name, {})
    grid = registry.build("grid", grid_name, {})(process, 12)
    sigmas = peers.k_diffusion_sigmas(process, grid)
    assert sigmas.shape == (14,) and sigmas.dtype == torch.float64 and float(sigmas[-1]) == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert torch.equal(peers.k_diffusion_sigmas(process, grid, append_zero=False), sigmas[:-1])
    torch.testing.assert_close(sigmas[:-1], process.sigma(grid) / process.alpha(grid), rtol=1e-12, atol=0.0)
    back = process.t_from_log_snr(-2.0 * torch.log(sigmas[:-1]))
    torch.testing.assert_close(back, grid, rtol=1e-12, atol=1e-12)


def test_karras_grid_matches_k_diffusion_schedule(registry: diffkit.Registry) -> None:
    """diffkit's karras grid, as sigmas, is k-diffusion's get_sigmas_karras (which ramps in float32)."""
    sampling = peers.load_k_diffusion_sampling()
    for process_name in ("vp", "ve"):
        process = registry.build("process", process_name, {})
        sigmas = peers.k_diffusion_sigmas(process, registry.build("grid", "karras", {})(process, 10))
        theirs = sampling.get_sigmas_karras(11, float(sigmas[-2]), float(sigmas[0]), rho=7.0)
        torch.testing.assert_close(theirs.to(torch.float64), sigmas, rtol=1e-5, atol=0.0)


def test_shared_noise_reproduces_a_generator_and_restores_the_global_rng() -> None:
    """randn_like under shared_noise(s) draws what a generator seeded with s draws; global state is kept."""
    like = torch.zeros((5, 3), dtype=torch.float64)
    state = torch.get_rng_state()
    with peers.shared_noise(11):
        first, second = torch.randn_like(like), torch.randn_like(like)
    generator = torch.Generator().manual_seed(11)
    assert torch.equal(first, torch.randn(like.shape, generator=generator, dtype=torch.float64))
    assert torch.equal(second, torch.randn(like.shape, generator=generator, dtype=torch.float64))
    assert torch.equal(state, torch.get_rng_state())
