"""`dpmpp-2s` options `r` (intermediate point lam + r h) and `intermediate="grid"` (diffusers' singlestep).

Peers: k-diffusion's `sample_dpmpp_sde` with eta = 0 is DPM-Solver++(2S) with its `r` (Lu et al.
2022, Alg. 1; its trailing sigma = 0 is the x0 prediction, as diffkit's final point 0.0);
diffusers' DPMSolverSinglestepScheduler(solver_order=2) pairs grid intervals and uses the next
grid point as the intermediate one, which is `intermediate="grid"` (its final step to sigma = 0 is
first order, as diffkit's). diffusers keeps its tables in float32: with float64 tables the two
agree to rounding.
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
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.errors import OptionError
from diffkit.solvers import append_final_zero
from diffkit.testing import check_convergence_order, check_sampler_conformance

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

OPTIONS = [{"r": 1 / 3}, {"r": 1.0}, {"intermediate": "grid"}]
ORDER_CASES = [
    ({"r": 1 / 3}, (16, 32, 64)),
    ({"r": 1.0}, (32, 64, 128)),
    ({"intermediate": "grid"}, (64, 128, 256)),
]


def _ids(cases: list) -> list[str]:
    return [
        "-".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items()) for c in cases
    ]


def _relative(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("options", OPTIONS, ids=_ids(OPTIONS))
def test_conformance(registry: diffkit.Registry, options: dict) -> None:
    """Reproducible, stateless, NFE = counted calls (2 or 1 per step), both dtypes and data shapes."""
    check_sampler_conformance(registry, "dpmpp-2s", options=options)


@pytest.mark.slow
@pytest.mark.parametrize("options, steps", ORDER_CASES, ids=_ids([c[0] for c in ORDER_CASES]))
def test_convergence_order(registry: diffkit.Registry, options: dict, steps: tuple) -> None:
    """Second order for every r and for the grid point (+-0.3; measured 1.90, 1.87, 1.90)."""
    result = check_convergence_order(
        registry,
        "dpmpp-2s",
        steps,
        options=options,
        model="gmm:d64",
        grid="quadratic",
        batch=16,
        reference_tol=1e-10,
    )
    assert result.declared == 2.0


@pytest.mark.parametrize(
    "process_name, grid_name", [("vp", "quadratic"), ("ve", "karras"), ("ddpm", "log-snr")]
)
@pytest.mark.parametrize("r", [1 / 3, 0.5, 1.0])
@pytest.mark.parametrize("to_zero", [False, True])
def test_r_matches_k_diffusion(
    registry: diffkit.Registry, process_name: str, grid_name: str, r: float, to_zero: bool
) -> None:
    """`dpmpp-2s r=R` = k-diffusion's sample_dpmpp_sde(eta=0, r=R) on the grid's sigmas, float64."""
    sampling = load_k_diffusion_sampling()
    process = registry.build("process", process_name, {})
    model = registry.build("model", "gmm:ring8", {}, process)
    x_init = process.prior_sample((32, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grid = registry.build("grid", grid_name, {})(process, 8)
    sigmas = k_diffusion_sigmas(process, grid, append_zero=to_zero)
    alpha_first, alpha_last = process.alpha(grid[0]), process.alpha(grid[-1])
    x_s = sampling.sample_dpmpp_sde(
        k_diffusion_denoiser(model, process),
        x_init / alpha_first,
        sigmas,
        disable=True,
        eta=0.0,
        r=r,
        noise_sampler=lambda sigma, sigma_next: torch.zeros_like(x_init),  # eta = 0: never scaled in
    )
    expected = x_s if to_zero else alpha_last * x_s
    grid = append_final_zero(grid) if to_zero else grid
    result = registry.build("sampler", "dpmpp-2s", {"r": r})(model, process, x_init, grid)
    assert result.nfe == 16 + int(to_zero)
    assert _relative(result.x, expected) < 1e-10


def test_default_r_is_the_midpoint(registry: diffkit.Registry) -> None:
    """r defaults to 1/2 (Alg. 1's midpoint), and other r give other (second-order) answers."""
    process = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:ring8", {}, process)
    x_init = process.prior_sample((16, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = registry.build("grid", "quadratic", {})(process, 6)
    run = {
        r: registry.build("sampler", "dpmpp-2s", {} if r is None else {"r": r})(
            model, process, x_init, grid
        ).x
        for r in (None, 0.5, 0.25)
    }
    assert torch.equal(run[None], run[0.5])
    assert (run[0.25] - run[0.5]).abs().max() > 1e-4


def _diffusers_singlestep(
    diffusers, ddpm, model, x_init: torch.Tensor, steps: int, tables64: bool
) -> torch.Tensor:
    """Run DPMSolverSinglestepScheduler(order 2, final sigma 0); optionally with float64 tables."""
    config = diffusers_config(ddpm)
    scheduler = diffusers.DPMSolverSinglestepScheduler(**config, solver_order=2, lower_order_final=True)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    if tables64:
        betas = torch.linspace(config["beta_start"], config["beta_end"], ddpm.num_steps, dtype=torch.float64)
        alpha_bar = torch.cumprod(1.0 - betas, 0)
        sigmas = ((1.0 - alpha_bar) / alpha_bar).sqrt()  # sigma / alpha, diffusers' `sigmas`
        scheduler.sigmas = torch.cat([sigmas[timesteps], sigmas.new_zeros(1)])
    eps = diffusers_eps(model, ddpm)
    x = x_init.clone()
    for k in timesteps:
        x = scheduler.step(eps(x, k), k, x).prev_sample
    return x


@pytest.mark.parametrize("model_name", ["gmm:ring8", "gmm:d64"])
@pytest.mark.parametrize("steps", [9, 10, 20])
def test_grid_intermediate_matches_diffusers_singlestep(
    registry: diffkit.Registry, model_name: str, steps: int
) -> None:
    """`intermediate=grid` on diffusers' timesteps + final 0 = DPMSolverSinglestepScheduler(solver_order=2).

    Odd and even step counts (an even count leaves an unpaired first-order interval before the
    step to 0, as diffusers' order list [1, 2, ..., 1, 1]). Measured: <= 3.9e-6 relative with its
    float32 tables in float32; <= 1e-14 with float64 tables in float64.
    """
    diffusers = load_diffusers()
    ddpm = registry.build("process", "ddpm", {})
    model = registry.build("model", model_name, {}, ddpm)
    sampler = registry.build("sampler", "dpmpp-2s", {"intermediate": "grid"})
    for dtype, tables64, tolerance in [(torch.float32, False, 1e-5), (torch.float64, True, 1e-11)]:
        x_init = torch.randn((16, *model.data_shape), generator=torch.Generator().manual_seed(0), dtype=dtype)
        expected = _diffusers_singlestep(diffusers, ddpm, model, x_init, steps, tables64)
        scheduler = diffusers.DPMSolverSinglestepScheduler(**diffusers_config(ddpm), lower_order_final=True)
        scheduler.set_timesteps(steps)
        grid = append_final_zero(diffusers_time(ddpm, scheduler.timesteps))
        result = sampler(model, ddpm, x_init, grid)
        assert result.x.dtype == dtype and result.nfe == steps
        assert _relative(result.x, expected) < tolerance, (dtype, _relative(result.x, expected))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"r": 0}, "option r must be a number in (0, 1], got 0.0"),
        ({"r": 1.5}, "option r must be a number in (0, 1], got 1.5"),
        ({"r": -0.5}, "option r must be a number in (0, 1], got -0.5"),
        ({"r": 0.3, "intermediate": "grid"}, "option r=0.3 needs intermediate=ratio"),
    ],
)
def test_bad_options_give_one_line(registry: diffkit.Registry, options: dict, message: str) -> None:
    """r outside (0, 1], or r together with the grid point: one line (OptionError)."""
    with pytest.raises(OptionError) as error:
        registry.build("sampler", "dpmpp-2s", options)
    assert str(error.value) == f"sampler 'dpmpp-2s': {message}"


def test_cli_bad_r_exits_2() -> None:
    """One line on stderr, exit code 2, before any sampling."""
    args = [
        "sample",
        "--sde",
        "vp",
        "--solver",
        "dpmpp-2s",
        "--solver-opt",
        "r=0",
        "--num-samples",
        "4",
        "--no-plot",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: sampler 'dpmpp-2s': option r must be a number in (0, 1], got 0.0"]
