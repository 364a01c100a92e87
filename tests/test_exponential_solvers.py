"""Exponential integrators `ddim`, `dpmpp-*` and `unipc`: orders, conformance, final steps, quality."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import at_floor, distance_to_data, prior_noise, ring8_floor, ring8_quality

import diffkit
from diffkit.core.errors import OptionError
from diffkit.solvers.exponential import (
    LOWER_ORDER_FINAL_BELOW,
    dpmpp_multistep_weights,
    half_log_snr,
    step_order,
    unipc_weights,
)
from diffkit.testing import check_convergence_order, check_sampler_conformance

# (name, options, steps): the asymptotic regime on gmm:d64 / vp with the quadratic grid, float64.
# On gmm:ring8 (std-0.1 modes) or with uniform / Karras grids the same slopes need 4-8x the steps.
# UniPC's corrector raises the order by one (Zhao et al. 2023): declared order + 1 with it on.
ORDER_CASES = [
    ("ddim", {}, (32, 64, 128)),
    ("dpmpp-2m", {}, (32, 64, 128)),
    ("dpmpp-3m", {}, (32, 64, 128)),
    ("dpmpp-2s", {}, (16, 32, 64)),
    ("unipc", {"order": 2}, (32, 64, 128)),
    ("unipc", {"order": 3}, (32, 64, 128)),
]
SAMPLERS = [
    ("ddim", {}),
    ("ddim", {"eta": 0.5}),
    ("dpmpp-2m", {}),
    ("dpmpp-3m", {}),
    ("dpmpp-2s", {}),
    ("dpmpp-2m-sde", {}),
    ("dpmpp-2m-sde", {"eta": 0.5, "solver_type": "heun"}),
    ("unipc", {}),
    ("unipc", {"order": 3, "use_corrector": False}),
]


def _ids(cases: list[tuple]) -> list[str]:
    return [f"{c[0]}{''.join(f'-{k}={v}' for k, v in c[1].items())}" for c in cases]


@pytest.fixture(scope="module")
def vp(registry: diffkit.Registry) -> diffkit.NoiseProcess:
    """The VP process with default options."""
    return registry.build("process", "vp", {})


@pytest.mark.slow
@pytest.mark.parametrize("name, options, steps", ORDER_CASES, ids=_ids(ORDER_CASES))
def test_convergence_order(registry: diffkit.Registry, name: str, options: dict, steps: tuple) -> None:
    """Error vs dopri5 (rtol = atol = 1e-9) from the same noise shrinks at the declared order (+-0.3).

    The smallest error (2e-6, UniPC-3 at 128 steps) is far above the reference's (1e-10 gives the
    same slopes to three digits).
    """
    result = check_convergence_order(
        registry,
        name,
        steps,
        options=options,
        model="gmm:d64",
        grid="quadratic",
        batch=16,
        reference_tol=1e-9,
    )
    assert result.errors == tuple(sorted(result.errors, reverse=True))


@pytest.mark.parametrize("name, options", SAMPLERS, ids=_ids(SAMPLERS))
def test_conformance(registry: diffkit.Registry, name: str, options: dict) -> None:
    """Reproducible, stateless, NFE = counted calls, float32/float64, (B, 2) and (B, 1, 8, 8) data."""
    check_sampler_conformance(registry, name, options=options)


def test_conformance_with_denoising_on_ve(registry: diffkit.Registry) -> None:
    """denoise_final's extra NFE is accounted for; VE (alpha = 1) works."""
    for name in ("dpmpp-3m", "unipc"):
        check_sampler_conformance(
            registry,
            name,
            options={"denoise_final": True},
            process="ve",
            model="gmm:ring8",
            dtypes=[torch.float64],
        )


def test_every_sampler_runs_on_every_process(
    registry: diffkit.Registry, process: diffkit.NoiseProcess
) -> None:
    """Only alpha, sigma and the log-SNR are used: finite output of the right shape everywhere."""
    model = registry.build("model", "gmm:ring8", {}, process)
    x_init = prior_noise(process, model, 4, seed=0)
    for name, options in [*SAMPLERS, ("unipc", {"order": 3}), ("ddim", {"eta": 1.0})]:
        grid = registry.build("grid", registry.build("sampler", name, options).capabilities.default_grid, {})
        result = registry.build("sampler", name, options)(
            model, process, x_init, grid(process, 6), generator=torch.Generator().manual_seed(1)
        )
        assert result.x.shape == x_init.shape and bool(torch.isfinite(result.x).all()), (name, options)


def test_one_ddim_step_is_the_x0_formula(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """DDIM (eta 0) from t_max to t_min in one step: alpha_min x0 + sigma_min eps, both predicted at t_max."""
    model = registry.build("model", "gmm:d64", {"image": True}, vp)
    x_init = prior_noise(vp, model, 8, seed=2)
    grid = torch.tensor([vp.t_max, vp.t_min], dtype=torch.float64)
    result = registry.build("sampler", "ddim", {})(model, vp, x_init, grid)
    prediction = model.predict(x_init, vp.t_max)
    expected = vp.alpha(vp.t_min) * prediction.x0 + vp.sigma(vp.t_min) * prediction.eps
    torch.testing.assert_close(result.x, expected, rtol=1e-12, atol=1e-12)
    assert result.nfe == 1


def _exact_average(h: float, degree: int) -> float:
    """(1/(1 - e^-h)) int_0^h e^(u - h) u^degree du: the exact D for x0(lam) = (lam - lam_0)^degree."""
    integrals = {0: math.expm1(h), 1: math.exp(h) * (h - 1) + 1, 2: math.exp(h) * (h * h - 2 * h + 2) - 2}
    return math.exp(-h) * integrals[degree] / -math.expm1(-h)


@pytest.mark.parametrize("h", [0.05, 0.7, 2.0])
def test_multistep_weights_are_exact_for_polynomials(h: float) -> None:
    """kM combinations integrate x0 polynomial in lam of degree k - 1 exactly (3M needs the full D2 term).

    The third-order multistep of the reference implementations (DPM-Solver, diffusers,
    k-diffusion's 3M SDE at eta 0) weights D2 by half of this, which fails the degree-2 case.
    """
    lams = torch.tensor([0.0, -h, -h - 0.6 * h, -h - 1.5 * h], dtype=torch.float64)  # next, then newest first

    def d_of(weights: torch.Tensor, degree: int) -> float:
        values = (lams[1 : 1 + weights.shape[0]] - lams[1]) ** degree
        return float((weights * values).sum())

    three = dpmpp_multistep_weights(lams)
    heun = dpmpp_multistep_weights(lams[:3], "heun")
    for degree in (0, 1, 2):
        assert d_of(three, degree) == pytest.approx(_exact_average(h, degree), rel=1e-10, abs=1e-12)
    for degree in (0, 1):
        assert d_of(heun, degree) == pytest.approx(_exact_average(h, degree), rel=1e-10, abs=1e-12)
    # UniP-3 (solved rho) is exact for quadratics too, hence equal to 3M
    rks = (lams[2:4] - lams[1]) / h
    torch.testing.assert_close(unipc_weights(rks, torch.tensor(h, dtype=torch.float64)), three)


def test_special_cases_coincide(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """UniP-2 (rho = 1/2) is DPM-Solver++(2M), UniP-3 is 3M, and 2M SDE with eta = 0 is 2M."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    x_init = prior_noise(vp, model, 16, seed=3)
    grid = registry.build("grid", "log-snr", {})(vp, 12)
    for order in (2, 3):
        unip = registry.build("sampler", "unipc", {"order": order, "use_corrector": False})
        dpmpp = registry.build("sampler", f"dpmpp-{order}m", {})
        torch.testing.assert_close(unip(model, vp, x_init, grid).x, dpmpp(model, vp, x_init, grid).x)
    ode = registry.build("sampler", "dpmpp-2m-sde", {"eta": 0.0})(model, vp, x_init, grid)
    torch.testing.assert_close(ode.x, registry.build("sampler", "dpmpp-2m", {})(model, vp, x_init, grid).x)


def test_step_order_policy() -> None:
    """Warm-up, lower order final below 15 steps only, Euler final at any count."""
    orders = [step_order(3, i, 10, lower_order_final=True) for i in range(10)]
    assert orders == [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]
    n = LOWER_ORDER_FINAL_BELOW
    assert [step_order(3, i, n, lower_order_final=True) for i in (n - 2, n - 1)] == [3, 3]
    assert step_order(3, n - 1, n, lower_order_final=False, euler_final=True) == 1


def test_final_step_policies(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """Euler final = 2M, then one DDIM step; denoise_final = x0 prediction, the step before is 2nd order."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    x_init = prior_noise(vp, model, 16, seed=4)
    grid = registry.build("grid", "karras", {})(vp, 20)
    euler = registry.build("sampler", "dpmpp-2m", {"final_step": "euler"})(model, vp, x_init, grid)
    head = registry.build("sampler", "dpmpp-2m", {})(model, vp, x_init, grid[:-1]).x
    tail = registry.build("sampler", "ddim", {})(model, vp, head, grid[-2:])
    torch.testing.assert_close(euler.x, tail.x)
    plain = registry.build("sampler", "dpmpp-2m", {"lower_order_final": False})
    short = grid[:9]  # 8 steps (+1 denoising step) < 15: lower_order_final is active
    denoised = registry.build("sampler", "dpmpp-2m", {"denoise_final": True})(model, vp, x_init, short)
    expected = model.predict(plain(model, vp, x_init, short).x, short[-1]).x0
    torch.testing.assert_close(denoised.x, expected)
    lowered = registry.build("sampler", "dpmpp-3m", {})(model, vp, x_init, short).x
    assert not torch.allclose(
        lowered,
        registry.build("sampler", "dpmpp-3m", {"lower_order_final": False})(model, vp, x_init, short).x,
    )


@pytest.mark.slow
@pytest.mark.parametrize("name, options, steps", [("dpmpp-2m-sde", {}, 100), ("ddim", {"eta": 1.0}, 300)])
def test_stochastic_samplers_reach_the_noise_floor(
    registry: diffkit.Registry, vp: diffkit.NoiseProcess, name: str, options: dict, steps: int
) -> None:
    """2000 ring8 samples: SW2 at the exact-sample floor and within-mode spread within 5%."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    sampler = registry.build("sampler", name, options)
    grid = registry.build("grid", sampler.capabilities.default_grid, {})(vp, steps)
    x = sampler(
        model, vp, prior_noise(vp, model, 2000, seed=5), grid, generator=torch.Generator().manual_seed(6)
    ).x
    distance, floor = distance_to_data(model, x), ring8_floor(model, 2000)
    assert at_floor(distance, floor), (distance, floor)
    spread, _ = ring8_quality(model, vp, x)
    assert abs(spread - 1.0) < 0.05, spread


def test_options_and_capabilities(registry: diffkit.Registry) -> None:
    """Capabilities follow the options; bad values raise OptionError naming the option."""
    assert not registry.build("sampler", "ddim", {}).capabilities.stochastic
    assert registry.build("sampler", "ddim", {"eta": "0.3"}).capabilities.stochastic
    sde = registry.build("sampler", "dpmpp-2m-sde", {"eta": 0})
    assert not sde.capabilities.stochastic and sde.capabilities.order == 2
    assert registry.build("sampler", "dpmpp-2m-sde", {}).capabilities.order == 1
    assert registry.build("sampler", "dpmpp-2s", {}).capabilities.nfe_per_step == 2
    assert registry.build("sampler", "unipc", {"order": 3}).capabilities.order == 4
    assert registry.build("sampler", "unipc", {"order": 3, "use_corrector": False}).capabilities.order == 3
    measured_best = {
        "ddim": "quadratic",
        "dpmpp-2m": "log-snr",
        "dpmpp-3m": "quadratic",
        "dpmpp-2s": "quadratic",
    }
    measured_best |= {"dpmpp-2m-sde": "quadratic", "unipc": "log-snr"}  # README, "default grids"
    for name, grid in measured_best.items():
        assert registry.build("sampler", name, {}).capabilities.default_grid == grid, name
    assert registry.build("sampler", "unipc", {"order": 3}).capabilities.default_grid == "quadratic"
    bad = [
        ("ddim", {"eta": 1.5}),
        ("ddim", {"eta": -0.1}),
        ("unipc", {"order": 4}),
        ("unipc", {"final_step": "none"}),
        ("dpmpp-2m", {"lower_order_final": "maybe"}),
        ("dpmpp-2m-sde", {"solver_type": "rk4"}),
        ("dpmpp-2m-sde", {"s_noise": -1}),
        ("dpmpp-2s", {"lower_order_final": True}),
    ]
    for name, options in bad:
        with pytest.raises(OptionError):
            registry.build("sampler", name, options)


def test_half_log_snr_convention(vp: diffkit.NoiseProcess) -> None:
    """lam of Lu et al. is log(alpha / sigma), half of diffkit's log-SNR."""
    t = torch.tensor([0.1, 0.5], dtype=torch.float64)
    torch.testing.assert_close(half_log_snr(vp.log_snr(t)), torch.log(vp.alpha(t) / vp.sigma(t)))
