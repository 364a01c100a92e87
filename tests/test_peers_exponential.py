"""Exponential integrators agree with diffusers and k-diffusion on the same oracle, noise and grid.

Everything runs in float64 on the `ddpm` process (linear betas, N = 1000), whose alpha_bar table
is diffusers' `alphas_cumprod`. Conventions bridged (see `peers.py` for the adapters):

* diffusers timestep k is diffkit time t = (k + 1) / N; a scheduler's timesteps become diffkit's
  grid, and its final step to alpha = 1 (DDIM `set_alpha_to_one`, DPM/UniPC `final_sigmas_type
  = "zero"`) is diffkit's `denoise_final` (the x0 prediction at the last grid time).
* diffusers keeps its tables and sigmas in float32 (and DPMSolverMultistep upcasts the sample to
  float32), so agreement is at float32 resolution: residuals about 1e-6 relative.
* diffusers' DPM-Solver multistep lowers the final order below 15 steps, as diffkit does; its
  UniPC lowers the last orders at *every* step count (diffkit only below 15), so UniPC order 3
  is compared below 15 steps (order 2 agrees at any count: its lowered step is the denoising).
* k-diffusion works in sigma-space with a denoiser D(x / alpha, sigma / alpha); its sigma list's
  trailing 0 is the denoising step. Its DPM-Solver++(2M) has no lower-order final step, which
  matters only without the trailing 0 (then diffkit's `lower_order_final` is switched off).
* Not compared: the third-order multistep. diffusers' (and the DPM-Solver reference code's)
  weights its second divided difference D2 by half the exact Taylor coefficient, which makes it
  second order; diffkit's `dpmpp-3m` is third order (see test_exponential_solvers.py).
"""

from __future__ import annotations

import pytest
import torch
from peers import (
    diffusers_config,
    diffusers_eps,
    diffusers_time,
    k_diffusion_denoiser,
    k_diffusion_sigmas,
    load_diffusers,
    load_k_diffusion_sampling,
)

import diffkit

# diffusers' schedulers call np.array(tensor, copy=False), which numpy 2 deprecates for torch tensors
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TOLERANCE = 1e-4  # relative (max-norm); measured residuals are about 1e-6 against diffusers
MODELS = ["gmm:ring8", "gmm:d64"]


@pytest.fixture(scope="module")
def ddpm(registry: diffkit.Registry) -> diffkit.NoiseProcess:
    """The discrete DDPM process with linear betas (N = 1000)."""
    return registry.build("process", "ddpm", {})


def _relative(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x - reference).abs().max() / reference.abs().max())


def _start(model: diffkit.ScoreModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn((16, *model.data_shape), generator=generator, dtype=torch.float64)


def _run_diffusers(scheduler, process, model, x_init: torch.Tensor, steps: int, noises=None, **step_kwargs):
    """Run a diffusers scheduler loop; return its samples and the diffkit grid of its timesteps."""
    scheduler.set_timesteps(steps)
    eps = diffusers_eps(model, process)
    x = x_init.clone()
    for j, k in enumerate(scheduler.timesteps):
        extra = {} if noises is None else {"variance_noise": noises[j]}
        x = scheduler.step(eps(x, k), k, x, **step_kwargs, **extra).prev_sample
    return x, diffusers_time(process, scheduler.timesteps)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(
    registry: diffkit.Registry, ddpm: diffkit.NoiseProcess, model_name: str, eta: float
) -> None:
    """`ddim` = DDIMScheduler ("trailing" spacing, no clipping); eta = 1 with the same noise per step."""
    diffusers = load_diffusers()
    model = registry.build("model", model_name, {}, ddpm)
    x_init, steps = _start(model), 10
    scheduler = diffusers.DDIMScheduler(
        **diffusers_config(ddpm), clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing"
    )
    # diffkit draws one normal per grid step from its generator; the final step to alpha = 1 has none
    generator = torch.Generator().manual_seed(7)
    noises = [torch.randn(x_init.shape, generator=generator, dtype=torch.float64) for _ in range(steps - 1)]
    noises.append(torch.zeros_like(x_init))
    expected, grid = _run_diffusers(scheduler, ddpm, model, x_init, steps, noises if eta else None, eta=eta)
    sampler = registry.build("sampler", "ddim", {"eta": eta, "denoise_final": True})
    result = sampler(model, ddpm, x_init, grid, generator=torch.Generator().manual_seed(7))
    assert result.nfe == steps
    assert _relative(result.x, expected) < TOLERANCE


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("steps", [10, 20])
def test_dpmpp_2m_matches_diffusers(
    registry: diffkit.Registry, ddpm: diffkit.NoiseProcess, model_name: str, steps: int
) -> None:
    """`dpmpp-2m` = DPMSolverMultistepScheduler(dpmsolver++, order 2, "linspace", final sigma 0)."""
    diffusers = load_diffusers()
    model = registry.build("model", model_name, {}, ddpm)
    x_init = _start(model)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **diffusers_config(ddpm), algorithm_type="dpmsolver++", solver_order=2
    )
    expected, grid = _run_diffusers(scheduler, ddpm, model, x_init, steps)
    result = registry.build("sampler", "dpmpp-2m", {"denoise_final": True})(model, ddpm, x_init, grid)
    assert _relative(result.x, expected) < TOLERANCE


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("order, steps", [(2, 10), (2, 20), (3, 10)])
def test_unipc_matches_diffusers(
    registry: diffkit.Registry, ddpm: diffkit.NoiseProcess, model_name: str, order: int, steps: int
) -> None:
    """`unipc` = UniPCMultistepScheduler(bh2, predict_x0, corrector on, final sigma 0)."""
    diffusers = load_diffusers()
    model = registry.build("model", model_name, {}, ddpm)
    x_init = _start(model)
    scheduler = diffusers.UniPCMultistepScheduler(
        **diffusers_config(ddpm), solver_order=order, solver_type="bh2", predict_x0=True
    )
    expected, grid = _run_diffusers(scheduler, ddpm, model, x_init, steps)
    sampler = registry.build("sampler", "unipc", {"order": order, "denoise_final": True})
    assert _relative(sampler(model, ddpm, x_init, grid).x, expected) < TOLERANCE


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("grid_name", ["karras", "ddpm"])
@pytest.mark.parametrize("denoise", [True, False])
def test_dpmpp_2m_matches_k_diffusion(
    registry: diffkit.Registry, ddpm: diffkit.NoiseProcess, model_name: str, grid_name: str, denoise: bool
) -> None:
    """`dpmpp-2m` = k-diffusion's sample_dpmpp_2m on the grid's sigmas (with or without the trailing 0)."""
    sampling = load_k_diffusion_sampling()
    model = registry.build("model", model_name, {}, ddpm)
    x_init = _start(model)
    grid = registry.build("grid", grid_name, {})(ddpm, 10)
    sigmas = k_diffusion_sigmas(ddpm, grid, append_zero=denoise)
    alpha_first, alpha_last = ddpm.alpha(grid[0]), ddpm.alpha(grid[-1])
    x_s = sampling.sample_dpmpp_2m(
        k_diffusion_denoiser(model, ddpm), x_init / alpha_first, sigmas, disable=True
    )
    expected = x_s if denoise else alpha_last * x_s  # sigma = 0 means alpha = 1
    options = {"denoise_final": True} if denoise else {"lower_order_final": False}
    result = registry.build("sampler", "dpmpp-2m", options)(model, ddpm, x_init, grid)
    assert _relative(result.x, expected) < 1e-10  # same float64 arithmetic up to rounding
