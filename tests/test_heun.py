"""EDM Heun `heun`: order 2, NFE and the last-step policy, churn, k-diffusion agreement, quality."""

from __future__ import annotations

import math

import peers
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
from diffkit.core.errors import OptionError
from diffkit.solvers.edm import ode_derivative
from diffkit.testing import check_convergence_order, check_sampler_conformance

#: asymptotic range on gmm:ring8 with the default (quadratic) grid, float64: local slopes
#: 1.85-1.97 (vp) and 1.97-1.99 (ve) between 64 and 512 steps
ORDER_STEPS = (64, 128, 256)


def build(registry: diffkit.Registry, process_name: str, model_name: str = "gmm:ring8") -> tuple:
    """(process, oracle model) by name."""
    process = registry.build("process", process_name, {})
    return process, registry.build("model", model_name, {}, process)


@pytest.mark.parametrize("process_name", ["vp", "ve"])
def test_convergence_order_is_two(registry: diffkit.Registry, process_name: str) -> None:
    """Error vs a dopri5 reference (rtol = atol = 1e-9, far below the errors) falls like steps^-2."""
    result = check_convergence_order(
        registry, "heun", ORDER_STEPS, process=process_name, batch=16, reference_tol=1e-9
    )
    assert result.errors == tuple(sorted(result.errors, reverse=True)) and result.errors[-1] < 1e-4


@pytest.mark.parametrize("options", [{"euler_last": False}, {"euler_last": False, "s_churn": 2.0}])
def test_conformance(registry: diffkit.Registry, options: dict) -> None:
    """The conformance kit, deterministic and with churn (the kit assumes exactly nfe_per_step per step)."""
    check_sampler_conformance(registry, "heun", options=options)


@pytest.mark.parametrize(
    "options, nfe",
    [
        ({}, lambda n: 2 * n - 1),
        ({"euler_last": False}, lambda n: 2 * n),
        ({"denoise_final": True}, lambda n: 2 * n),
        ({"euler_last": False, "denoise_final": True}, lambda n: 2 * n + 1),
        ({"s_churn": 3.0}, lambda n: 2 * n - 1),
    ],
)
def test_nfe_and_last_step_policy(registry: diffkit.Registry, options: dict, nfe) -> None:
    """2 NFE per Heun step; the Euler last step (t_{N-1} -> t_min) saves one; denoising adds one."""
    vp, model = build(registry, "vp")
    recorder = TimeRecorder(model)
    grid = registry.build("grid", "quadratic", {})(vp, 7)
    result = registry.build("sampler", "heun", options)(
        model, vp, prior_noise(vp, model, 8, seed=1), grid, generator=torch.Generator().manual_seed(2)
    )
    assert result.nfe == recorder.calls == nfe(7) and result.steps == 7
    evaluated_at_t_min = bool((recorder.all_times() == vp.t_min).any())
    assert evaluated_at_t_min == (not options.get("euler_last", True) or options.get("denoise_final", False))


def test_euler_last_step_is_ddim(registry: diffkit.Registry) -> None:
    """On a one-step grid the Euler step in scaled coordinates is x1 = alpha1 (x/alpha0 + (s1 - s0) eps)."""
    vp, model = build(registry, "vp")
    x = prior_noise(vp, model, 8, seed=3)
    grid = torch.tensor([0.5, 0.4], dtype=torch.float64)
    got = registry.build("sampler", "heun", {})(model, vp, x, grid)
    alpha, sigma = vp.alpha(grid), vp.sigma(grid)
    s0, s1 = (sigma / alpha).tolist()
    expected = alpha[1] * (x / alpha[0] + (s1 - s0) * model.predict(x, grid[0]).eps)
    assert got.nfe == 1
    torch.testing.assert_close(got.x, expected, rtol=1e-12, atol=1e-12)


def test_edm_derivative_is_the_eps_prediction(registry: diffkit.Registry) -> None:
    """(x/alpha - D) / (sigma/alpha) equals eps, so Euler in EDM coordinates is DDIM (diffkit.solvers.edm)."""
    ve, model = build(registry, "subvp")
    x = prior_noise(ve, model, 16, seed=4)
    t = torch.tensor(0.3, dtype=torch.float64)
    prediction = model.predict(x, t)
    alpha, sigma = ve.alpha(t), ve.sigma(t)
    d = ode_derivative(x / alpha, prediction.x0, sigma / alpha)
    torch.testing.assert_close(d, prediction.eps, rtol=1e-10, atol=1e-12)


def _peer_case(registry, process_name, case, sampling):
    """(diffkit result, k-diffusion result) for one agreement case on identical sigma grids."""
    process, model = build(registry, process_name)
    grid = registry.build("grid", "quadratic", {})(process, 10)
    x = prior_noise(process, model, 64, seed=5)
    denoise = peers.k_diffusion_denoiser(model, process)
    sigmas = peers.k_diffusion_sigmas(process, grid, append_zero=False)
    alpha0, alpha_n = process.alpha(grid[0]), process.alpha(grid[-1])
    x_s = x / alpha0
    options = {"euler_last": False}
    if case == "heun":  # N Heun steps between grid points
        theirs = sampling.sample_heun(denoise, x_s, sigmas, disable=True) * alpha_n
    elif case == "edm":  # EDM's recipe: N Heun steps, then Euler to sigma = 0 (= denoise_final)
        options["denoise_final"] = True
        theirs = sampling.sample_heun(denoise, x_s, peers.k_diffusion_sigmas(process, grid), disable=True)
    elif case == "euler-last":  # N - 1 Heun steps, then one Euler step to t_min
        options = {}
        x_s = sampling.sample_heun(denoise, x_s, sigmas[:-1], disable=True)
        theirs = sampling.sample_euler(denoise, x_s, sigmas[-2:], disable=True) * alpha_n
    else:  # churn on every step but the first (sigma_hat below sigma_s(t_max): no cap), same noise
        churn = {"s_churn": 4.0, "s_tmax": math.sqrt(float(sigmas[0] * sigmas[1]))}
        options.update(churn)
        with peers.shared_noise(6):
            theirs = sampling.sample_heun(denoise, x_s, sigmas, disable=True, **churn) * alpha_n
    sampler = registry.build("sampler", "heun", options)
    ours = sampler(model, process, x, grid, generator=torch.Generator().manual_seed(6)).x
    return ours, theirs


@pytest.mark.parametrize("case", ["heun", "edm", "euler-last", "churn"])
@pytest.mark.parametrize("process_name", ["vp", "ve"])
def test_agrees_with_k_diffusion(registry: diffkit.Registry, process_name: str, case: str) -> None:
    """Same model (EDM denoiser adapter), same sigma_s grid, same churn noise: equal to ~1e-15 (float64)."""
    sampling = peers.load_k_diffusion_sampling()
    ours, theirs = _peer_case(registry, process_name, case, sampling)
    scale = float(theirs.abs().max())
    assert float((ours - theirs).abs().max()) <= 1e-10 * scale


def test_churn_stays_in_the_process_range(registry: diffkit.Registry) -> None:
    """Churn evaluates off-grid times t(sigma_hat) > t_i, but never above t_max (sigma_hat is capped)."""
    vp, model = build(registry, "vp")
    recorder = TimeRecorder(model)
    grid = registry.build("grid", "quadratic", {})(vp, 6)
    registry.build("sampler", "heun", {"s_churn": 3.0})(
        model, vp, prior_noise(vp, model, 8, seed=7), grid, generator=torch.Generator().manual_seed(8)
    )
    times = torch.unique(recorder.all_times())
    assert float(times.max()) == vp.t_max
    off_grid = times[~torch.isin(times, grid)]
    assert off_grid.numel() == 5  # steps 1..5 start at t(sigma_hat) > t_i (step 0 is capped at t_max)
    assert bool((off_grid > grid[5]).all()) and bool((off_grid < vp.t_max).all())


@pytest.mark.slow
def test_churn_reaches_the_noise_floor(registry: diffkit.Registry) -> None:
    """With churn at 50 steps, gmm:ring8 samples are at the SW2 floor with the right spread and weights."""
    n = 2000
    vp, model = build(registry, "vp")
    floor = ring8_floor(model, n)
    sampler = registry.build("sampler", "heun", {"s_churn": 10.0})
    grid = registry.build("grid", "quadratic", {})(vp, 50)
    x = sampler(
        model, vp, prior_noise(vp, model, n, seed=1), grid, generator=torch.Generator().manual_seed(11)
    ).x
    distance = distance_to_data(model, x)
    assert at_floor(distance, floor), (distance, floor)
    spread, chi2 = ring8_quality(model, vp, x)
    assert abs(spread - 1.0) < 0.03 and chi2 < CHI2_7DOF_999, (spread, chi2)


def test_options_and_capabilities(registry: diffkit.Registry) -> None:
    """Options are typed and validated; stochastic iff s_churn > 0; order 2 with 2 NFE per step."""
    plain = registry.build("sampler", "heun", {})
    caps = plain.capabilities
    assert (caps.stochastic, caps.order, caps.nfe_per_step, caps.adaptive) == (False, 2.0, 2, False)
    assert caps.default_grid == "quadratic" and caps.default_steps == 20 and plain.euler_last
    churned = registry.build("sampler", "heun", {"s-churn": "5", "s_tmax": "inf", "s_noise": "1.003"})
    assert churned.capabilities.stochastic and churned.s_tmax == math.inf and churned.s_noise == 1.003
    for bad in (
        {"s_churn": -1},
        {"s_churn": "nan"},
        {"s_churn": "inf"},
        {"s_noise": -0.5},
        {"s_tmin": 2.0, "s_tmax": 1.0},
        {"euler_last": "maybe"},
        {"order": 3},
    ):
        with pytest.raises(OptionError):
            registry.build("sampler", "heun", bad)
