"""`deis` (Zhang & Chen 2023): conformance, convergence order, closed forms and diffusers' DEIS.

Peer: diffusers' DEISMultistepScheduler (algorithm_type "deis", solver_type "logrho") is
diffkit's `deis` with `basis="log-rho"` and the noise prediction, on the `ddpm` process with the
scheduler's timesteps plus its final point sigma(t = 1/N) = t_min as the grid. diffusers keeps its
tables in float32 and computes the DEIS coefficients in float32 (differences of antiderivatives,
which cancel for order 3); with its tables replaced by float64 ones the two agree to rounding.
"""

from __future__ import annotations

import pytest
import torch
from peers import diffusers_config, diffusers_eps, diffusers_time, load_diffusers
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.errors import OptionError
from diffkit.solvers import append_final_zero
from diffkit.testing import check_convergence_order, check_sampler_conformance

# diffusers' schedulers mix numpy and torch, which numpy 2 deprecates
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

OPTIONS = [
    {},
    {"order": 1},
    {"order": 2, "prediction": "data"},
    {"basis": "log-rho"},
    {"basis": "rho", "prediction": "data", "final_step": "euler"},
]
# (options, grid, steps): the asymptotic regime on gmm:d64 / vp, float64. The noise prediction
# in t has a sqrt-like start near t_min (sigma ~ sqrt(t) for vp), so tAB-3 needs finer grids
# to reach its slope (2.56 at 32-128 steps, 2.79 at 128-512 on the quadratic grid).
ORDER_CASES = [
    ({"order": 1}, "quadratic", (32, 64, 128)),
    ({"order": 2}, "quadratic", (32, 64, 128)),
    ({"order": 3}, "quadratic", (128, 256, 512)),
    ({"order": 3, "prediction": "data"}, "quadratic", (32, 64, 128)),
    ({"order": 3, "basis": "log-rho"}, "quadratic", (32, 64, 128)),
    ({"order": 3, "basis": "rho"}, "quadratic", (64, 128, 256)),
]


def _ids(cases: list) -> list[str]:
    return [
        "-".join(f"{k}={v}" for k, v in (c if isinstance(c, dict) else c[0]).items()) or "default"
        for c in cases
    ]


@pytest.fixture(scope="module")
def ddpm(registry: diffkit.Registry) -> diffkit.NoiseProcess:
    """The discrete DDPM process with linear betas (N = 1000): diffusers' default table."""
    return registry.build("process", "ddpm", {})


@pytest.mark.parametrize("options", OPTIONS, ids=_ids(OPTIONS))
def test_conformance(registry: diffkit.Registry, options: dict) -> None:
    """Reproducible, stateless, NFE = counted calls, float32/float64, (B, 2) and (B, 1, 8, 8) data."""
    check_sampler_conformance(registry, "deis", options=options)


@pytest.mark.slow
@pytest.mark.parametrize("options, grid, steps", ORDER_CASES, ids=_ids(ORDER_CASES))
def test_convergence_order(registry: diffkit.Registry, options: dict, grid: str, steps: tuple) -> None:
    """Error vs dopri5 from the same noise shrinks at the declared order (= `order`, +-0.3)."""
    result = check_convergence_order(
        registry, "deis", steps, options=options, model="gmm:d64", grid=grid, batch=16, reference_tol=1e-10
    )
    assert result.declared == options["order"]
    assert result.errors == tuple(sorted(result.errors, reverse=True))


def _run(registry: diffkit.Registry, name: str, options: dict, process: str, steps: int) -> torch.Tensor:
    proc = registry.build("process", process, {})
    model = registry.build("model", "gmm:ring8", {}, proc)
    x = proc.prior_sample((32, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grid = registry.build("grid", "quadratic", {})(proc, steps)
    return registry.build("sampler", name, options)(model, proc, x, grid).x


@pytest.mark.parametrize("process", ["vp", "ve", "flow"])
@pytest.mark.parametrize("prediction", ["noise", "data"])
@pytest.mark.parametrize("basis", ["t", "rho", "log-rho"])
def test_order_one_is_ddim(registry: diffkit.Registry, process: str, prediction: str, basis: str) -> None:
    """A constant polynomial integrates exactly: order 1 is DDIM (Song et al. 2021, eq. 12) in every form."""
    options = {"order": 1, "prediction": prediction, "basis": basis}
    x = _run(registry, "deis", options, process, 8)
    assert torch.allclose(x, _run(registry, "ddim", {}, process, 8), rtol=0, atol=1e-12)


@pytest.mark.parametrize("process", ["vp", "subvp", "ddpm-cosine"])
def test_data_log_rho_order_two_is_exact_dpmpp_2m(registry: diffkit.Registry, process: str) -> None:
    """Linear-in-lam x0, integrated exactly, is DPM-Solver++(2M) with its exact linear term ("heun").

    The quadrature of the DEIS coefficients reproduces the closed form of Lu et al. 2022 to rounding.
    """
    x = _run(registry, "deis", {"order": 2, "prediction": "data", "basis": "log-rho"}, process, 12)
    expected = _run(registry, "dpmpp-2m-sde", {"eta": 0.0, "solver_type": "heun"}, process, 12)
    assert torch.allclose(x, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("process", ["vp", "ve"])
def test_rho_basis_is_variable_step_ipndm(registry: diffkit.Registry, process: str) -> None:
    """rhoAB-DEIS (noise, polynomial in rho) is the variable-step Adams-Bashforth of `ipndm`."""
    x = _run(registry, "deis", {"order": 3, "basis": "rho", "lower_order_final": False}, process, 10)
    expected = _run(registry, "ipndm", {"order": 3, "variable_step": True}, process, 10)
    assert torch.allclose(x, expected, rtol=0, atol=1e-10)


def _diffusers_deis(diffusers, ddpm, model, x_init: torch.Tensor, order: int, steps: int, tables64: bool):
    """Run DEISMultistepScheduler; with `tables64` its sigma table is recomputed in float64."""
    config = diffusers_config(ddpm)
    scheduler = diffusers.DEISMultistepScheduler(**config, solver_order=order)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    if tables64:
        betas = torch.linspace(config["beta_start"], config["beta_end"], ddpm.num_steps, dtype=torch.float64)
        alpha_bar = torch.cumprod(1.0 - betas, 0)
        sigmas = ((1.0 - alpha_bar) / alpha_bar).sqrt()  # sigma / alpha, diffusers' `sigmas`
        scheduler.sigmas = torch.cat([sigmas[timesteps], sigmas[:1]])
    eps = diffusers_eps(model, ddpm)
    x = x_init.clone()
    for k in timesteps:
        x = scheduler.step(eps(x, k), k, x).prev_sample
    t_last = torch.tensor([1.0 / ddpm.num_steps], dtype=torch.float64)  # its final sigma: timestep 0
    return x, torch.cat([diffusers_time(ddpm, timesteps), t_last])


def _relative(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("model_name", ["gmm:ring8", "gmm:d64"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [10, 20])
def test_matches_diffusers_deis(
    registry: diffkit.Registry, ddpm: diffkit.NoiseProcess, model_name: str, order: int, steps: int
) -> None:
    """`deis basis=log-rho` = DEISMultistepScheduler(solver_order=order), same grid, model and start.

    With diffusers' own float32 tables, in float32: measured <= 5.6e-6 relative for orders 1-2 and
    <= 6.9e-5 for order 3 (its float32 antiderivative differences); with float64 tables, in
    float64: <= 2e-13, i.e. the same algorithm.
    """
    diffusers = load_diffusers()
    model = registry.build("model", model_name, {}, ddpm)
    sampler = registry.build("sampler", "deis", {"order": order, "basis": "log-rho"})
    for dtype, tables64, tolerance in [
        (torch.float32, False, 1e-5 if order < 3 else 2e-4),
        (torch.float64, True, 1e-11),
    ]:
        x_init = torch.randn((16, *model.data_shape), generator=torch.Generator().manual_seed(0), dtype=dtype)
        expected, grid = _diffusers_deis(diffusers, ddpm, model, x_init, order, steps, tables64)
        result = sampler(model, ddpm, x_init, grid)
        assert result.x.dtype == dtype and result.nfe == steps
        assert _relative(result.x, expected) < tolerance, (dtype, _relative(result.x, expected))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"order": 4}, "option order must be an integer in [1, 3], got 4"),
        ({"order": 0}, "option order must be an integer in [1, 3], got 0"),
        ({"order": 2.5}, "bad value 2.5 for option 'order' (expected an integer)"),
        ({"prediction": "eps"}, "bad value 'eps' for option 'prediction' (expected one of noise, data)"),
    ],
)
def test_bad_options_give_one_line(registry: diffkit.Registry, options: dict, message: str) -> None:
    """Out-of-range and ill-typed options: one line naming the option (OptionError)."""
    with pytest.raises(OptionError) as error:
        registry.build("sampler", "deis", options)
    text = str(error.value)
    assert "\n" not in text
    assert text.split("; valid options: ")[0] == f"sampler 'deis': {message}"  # then the option list


@pytest.mark.parametrize(
    "option, message",
    [
        ("order=4", "sampler 'deis': option order must be an integer in [1, 3], got 4"),
        (
            "basis=lambda",
            "sampler 'deis': bad value 'lambda' for option 'basis' (expected one of t, rho, log-rho)",
        ),
    ],
)
def test_cli_bad_option_exits_2(option: str, message: str) -> None:
    """One line on stderr, exit code 2, before any sampling."""
    args = [
        "sample",
        "--sde",
        "vp",
        "--solver",
        "deis",
        "--solver-opt",
        option,
        "--num-samples",
        "4",
        "--no-plot",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


@pytest.mark.parametrize("process_name", ["vp", "flow"])
def test_grid_ending_at_sigma_zero_ends_with_the_x0_prediction(
    registry: diffkit.Registry, process_name: str
) -> None:
    """A final point 0.0: the last step is the x0 prediction at t_min (one NFE, no model call at t = 0)."""
    process = registry.build("process", process_name, {})
    model = registry.build("model", "gmm:ring8", {}, process)
    x_init = process.prior_sample((16, 2), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    grid = registry.build("grid", "quadratic", {})(process, 6)
    sampler = registry.build("sampler", "deis", {"lower_order_final": False})
    before = sampler(model, process, x_init, grid)
    result = sampler(model, process, x_init, append_final_zero(grid))
    assert result.nfe == 7 and result.steps == 7
    assert torch.equal(result.x, model.predict(before.x, grid[-1]).x0)
