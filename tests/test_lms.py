"""`lms`: Adams–Bashforth weights in sigma, orders 1-4, final step, k-diffusion and diffusers agreement."""

from __future__ import annotations

import peers
import pytest
import torch
from _helpers import TimeRecorder, prior_noise
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.errors import OptionError
from diffkit.core.grid import append_final_zero
from diffkit.peers.diffusers import diffusers_config, run_scheduler, scheduler_times
from diffkit.plugins import lms as lms_plugin
from diffkit.solvers import sigma_scaled
from diffkit.testing import check_convergence_order, check_sampler_conformance

# diffusers' schedulers call np.array(tensor, copy=False), which numpy 2 deprecates for torch tensors
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

F64 = torch.float64
#: constant-step Adams–Bashforth coefficients (Hairer, Norsett & Wanner, Solving ODEs I, III.1)
ADAMS_BASHFORTH = {
    1: [1.0],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}


def build(registry: diffkit.Registry, process_name: str, model_name: str = "gmm:ring8") -> tuple:
    """(process, oracle model) by name."""
    process = registry.build("process", process_name, {})
    return process, registry.build("model", model_name, {}, process)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_uniform_steps_give_the_classical_adams_bashforth_weights(order: int) -> None:
    """On equal steps h in sigma the integrated Lagrange weights are h times the AB-p coefficients."""
    sigmas = torch.linspace(8.0, 2.0, 13, dtype=F64)  # h = -0.5
    orders = [min(order, i + 1) for i in range(12)]
    weights = lms_plugin.lms_weights(sigmas, orders)
    h = -0.5
    for i in range(order - 1, 12):
        expected = torch.tensor(ADAMS_BASHFORTH[order] + [0.0] * (4 - order), dtype=F64) * h
        torch.testing.assert_close(weights[i], expected, rtol=0, atol=1e-14)


def test_weights_integrate_polynomials_exactly_on_any_grid() -> None:
    """Row i of order p integrates s^k (k < p) from sigma_i to sigma_{i+1} exactly, also to sigma = 0."""
    sigmas = torch.tensor([80.0, 31.0, 14.5, 5.0, 2.2, 0.7, 0.31, 0.0], dtype=F64)
    orders = [1, 2, 3, 4, 4, 4, 4]
    weights = lms_plugin.lms_weights(sigmas, orders)
    for i, p in enumerate(orders):
        nodes = sigmas[[max(i - j, 0) for j in range(4)]]
        for k in range(p):
            exact = (sigmas[i + 1] ** (k + 1) - sigmas[i] ** (k + 1)) / (k + 1)
            got = (weights[i] * nodes**k).sum()
            assert float(abs(got - exact)) <= 1e-12 * max(1.0, float(abs(exact))), (i, k)
        assert bool((weights[i, p:] == 0).all())


def test_bad_weight_orders_raise() -> None:
    """Orders must fit the history: step i has i + 1 derivatives, at most 4 are used."""
    sigmas = torch.tensor([4.0, 2.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"step i has orders 1 to min\(4, i \+ 1\), got \[2, 1\]"):
        lms_plugin.lms_weights(sigmas, [2, 1])
    with pytest.raises(ValueError, match="1 orders for a grid of 2 steps"):
        lms_plugin.lms_weights(sigmas, [1])


def test_weights_are_built_once_per_run(registry: diffkit.Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weight table is integrated once per grid before the loop, not per step (DESIGN.md 9)."""
    calls = []
    original = lms_plugin.lms_weights

    def counting(sigmas: torch.Tensor, orders: list[int]) -> torch.Tensor:
        calls.append(len(orders))
        return original(sigmas, orders)

    monkeypatch.setattr(lms_plugin, "lms_weights", counting)
    vp, model = build(registry, "vp")
    grid = registry.build("grid", "quadratic", {})(vp, 12)
    result = registry.build("sampler", "lms", {})(model, vp, prior_noise(vp, model, 8, seed=0), grid)
    assert calls == [12] and result.nfe == 12


@pytest.mark.parametrize("options", [{}, {"order": 2, "denoise_final": True}, {"final_step": "euler"}])
def test_conformance(registry: diffkit.Registry, options: dict) -> None:
    """The conformance kit: reproducible, stateless, NFE counted, float32/float64, any data rank."""
    check_sampler_conformance(registry, "lms", options=options)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_convergence_order_is_the_option(registry: diffkit.Registry, order: int) -> None:
    """Error vs dopri5 (tol 1e-11) on gmm:d64, default (quadratic) grid, falls like steps^-order.

    Measured slopes (vp, 128-256-512 steps): 1.00, 1.97, 2.92, 3.84; on karras 1.00, 1.95, 2.88, 3.96.
    The warm-up (Euler, then AB2, AB3) costs nothing visible: the ODE is nearly linear at large sigma.
    """
    result = check_convergence_order(
        registry,
        "lms",
        (128, 256, 512),
        options={"order": order},
        model="gmm:d64",
        batch=16,
        reference_tol=1e-11,
    )
    assert result.declared == order and list(result.errors) == sorted(result.errors, reverse=True)


@pytest.mark.parametrize("process_name", ["vp", "ve", "subvp", "ddpm-cosine", "flow"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("zero", [True, False])
def test_matches_k_diffusion(registry: diffkit.Registry, process_name: str, order: int, zero: bool) -> None:
    """= k-diffusion's sample_lms on the same sigma_s list (with or without the trailing 0), float64."""
    sampling = peers.load_k_diffusion_sampling()
    process, model = build(registry, process_name)
    grid = registry.build("grid", "karras", {})(process, 10)
    x = prior_noise(process, model, 16, seed=1)
    sigmas = peers.k_diffusion_sigmas(process, grid, append_zero=zero)
    x_s = x / process.alpha(grid[0])
    theirs = sampling.sample_lms(
        peers.k_diffusion_denoiser(model, process), x_s, sigmas, disable=True, order=order
    )
    if not zero:
        theirs = theirs * process.alpha(grid[-1])
    ours = registry.build("sampler", "lms", {"order": order})(
        model, process, x, append_final_zero(grid) if zero else grid
    )
    assert ours.nfe == ours.steps == 10 + int(zero)
    assert float((ours.x - theirs).abs().max()) <= 1e-11 * float(theirs.abs().max())  # measured <= 1.2e-12


@pytest.mark.parametrize("model_name", ["gmm:ring8", "gmm:d64"])
@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_matches_diffusers(registry: diffkit.Registry, model_name: str, steps: int, spacing: str) -> None:
    """= LMSDiscreteScheduler (order 4) on ddpm: its sigmas end at 0, which is `denoise_final`.

    diffusers keeps sigmas in float32 and integrates its weights in float32 arithmetic, so the
    agreement is at that resolution: measured max residuals 9e-8 to 2e-6 relative (float64 samples).
    """
    diffusers = peers.load_diffusers()
    ddpm, model = build(registry, "ddpm", model_name)
    scheduler = diffusers.LMSDiscreteScheduler(**diffusers_config(ddpm), timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    times = scheduler_times(scheduler, ddpm)  # the knots, or the times of its fractional sigmas
    z = torch.randn((16, *model.data_shape), generator=torch.Generator().manual_seed(2), dtype=F64)
    theirs = run_scheduler(scheduler, model, times, z)
    x_init = z * float(scheduler.init_noise_sigma) * ddpm.alpha(times[0])  # x = alpha x_s
    ours = registry.build("sampler", "lms", {"denoise_final": True})(model, ddpm, x_init, times)
    assert ours.nfe == steps
    assert float((ours.x - theirs).abs().max()) <= 1e-5 * float(theirs.abs().max())


@pytest.mark.parametrize("process_name", ["ddpm", "ddpm-cosine"])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_matches_the_diffusers_loop_on_float64_sigmas(
    registry: diffkit.Registry, process_name: str, spacing: str
) -> None:
    """With its sigmas replaced by diffkit's float64 ones, LMSDiscreteScheduler agrees to rounding.

    So the 1e-6 residuals above are its float32 tables only (measured here: <= 3e-14 on ddpm,
    <= 6e-11 on ddpm-cosine, whose sigma_s(t_max) = 2e4 amplifies rounding).
    """
    diffusers = peers.load_diffusers()
    process, model = build(registry, process_name)
    scheduler = diffusers.LMSDiscreteScheduler(**diffusers_config(process), timestep_spacing=spacing)
    scheduler.set_timesteps(20)
    times = scheduler_times(scheduler, process)
    scheduler.sigmas = torch.cat([sigma_scaled(process.log_snr(times)), torch.zeros(1, dtype=F64)])
    z = torch.randn((16, *model.data_shape), generator=torch.Generator().manual_seed(2), dtype=F64)
    theirs = run_scheduler(scheduler, model, times, z)
    x_init = z * float(scheduler.init_noise_sigma) * process.alpha(times[0])
    ours = registry.build("sampler", "lms", {"denoise_final": True})(model, process, x_init, times)
    assert float((ours.x - theirs).abs().max()) <= 1e-9 * float(theirs.abs().max())


def test_zero_grid_is_denoise_final_and_never_evaluates_at_zero(registry: diffkit.Registry) -> None:
    """grid + [0] = the grid with denoise_final (the step to 0 is an LMS step), t = 0 never evaluated."""
    vp, model = build(registry, "vp")
    recorder = TimeRecorder(model)
    grid = registry.build("grid", "quadratic", {})(vp, 6)
    x = prior_noise(vp, model, 8, seed=3)
    seen: list[diffkit.StepInfo] = []
    zero = registry.build("sampler", "lms", {})(model, vp, x, append_final_zero(grid), callback=seen.append)
    denoised = registry.build("sampler", "lms", {"denoise_final": True})(model, vp, x, grid)
    assert (zero.nfe, zero.steps, denoised.nfe, denoised.steps) == (7, 7, 7, 6)
    assert torch.equal(zero.x, denoised.x)
    assert float(recorder.all_times().min()) == vp.t_min
    assert [info.step for info in seen] == list(range(7)) and float(seen[-1].t) == 0.0
    assert torch.equal(torch.stack([info.t for info in seen[:-1]]), grid[1:])


@pytest.mark.parametrize("options", [{"final_step": "euler"}, {"lower_order_final": True}])
def test_first_order_final_step_to_zero_is_the_x0_prediction(
    registry: diffkit.Registry, options: dict
) -> None:
    """With a first-order final step, the step to 0 is x_s - sigma_N d = D(x_N), unlike the AB4 step."""
    ve, model = build(registry, "ve")
    grid = registry.build("grid", "log-snr", {})(ve, 6)
    x = prior_noise(ve, model, 8, seed=4)
    if options.get("lower_order_final"):  # 7 steps in all: orders 1 2 3 4 3 2, then 1
        x_last = _lms_with_orders(model, ve, x, grid, [1, 2, 3, 4, 3, 2])
    else:  # orders 1 2 3 4 4 4 as without the option (the last grid step is not the final step)
        x_last = registry.build("sampler", "lms", {})(model, ve, x, grid).x
    expected = model.predict(x_last, grid[-1]).x0
    got = registry.build("sampler", "lms", options)(model, ve, x, append_final_zero(grid)).x
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    solver = registry.build("sampler", "lms", {})(model, ve, x, append_final_zero(grid)).x
    assert float((solver - expected).abs().max()) > 1e-6  # the default final step is AB4, not Euler


def _lms_with_orders(model, process, x, grid, orders: list[int]) -> torch.Tensor:  # noqa: ANN001
    """A direct LMS loop in scaled coordinates with given per-step orders (VE: alpha = 1)."""
    sigmas = process.sigma(grid) / process.alpha(grid)
    weights = lms_plugin.lms_weights(sigmas, orders)
    derivatives: list[torch.Tensor] = []
    for i, p in enumerate(orders):
        derivatives.append(model.predict(x, grid[i]).eps)  # (x_s - D) / sigma_s = eps
        x = x + sum(weights[i, j] * derivatives[-1 - j] for j in range(p))
    return x


def test_one_step_to_zero_is_x0_exactly(registry: diffkit.Registry) -> None:
    """The grid [t, 0]: one NFE and the oracle's E[x0 | x_t] (the first step is Euler at any order)."""
    vp, model = build(registry, "vp")
    x = prior_noise(vp, model, 8, seed=5)
    result = registry.build("sampler", "lms", {})(model, vp, x, torch.tensor([0.3, 0.0], dtype=F64))
    assert result.nfe == result.steps == 1
    torch.testing.assert_close(
        result.x, model.predict(x, torch.tensor(0.3, dtype=F64)).x0, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"order": 5}, "sampler 'lms': option order must be an integer in [1, 4], got 5"),
        ({"order": 0}, "sampler 'lms': option order must be an integer in [1, 4], got 0"),
    ],
)
def test_bad_options_are_one_line(registry: diffkit.Registry, options: dict, message: str) -> None:
    """Out-of-range order: one exact line (OptionError; exit 2 on the CLI)."""
    with pytest.raises(OptionError) as caught:
        registry.build("sampler", "lms", options)
    assert str(caught.value) == message


def test_cli_bad_order_exits_2(tmp_path) -> None:
    """`--solver-opt order=5`: exit 2, one line, before any work."""
    args = ["sample", "--solver", "lms", "--solver-opt", "order=5", "--num-samples", "4", "--no-plot"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "option order must be" in lines[0] and not (tmp_path / "s.npz").exists()
