"""`euler-ancestral`: k-diffusion agreement with shared noise, DDIM/DDPM identities, weak order 1."""

from __future__ import annotations

import math

import peers
import pytest
import torch
from _helpers import TimeRecorder, gaussian_marginal, gaussian_model, gaussian_start, prior_noise
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.errors import OptionError
from diffkit.core.grid import append_final_zero
from diffkit.plugins.euler_ancestral import ancestral_sigmas
from diffkit.testing import check_sampler_conformance, empirical_order

F64 = torch.float64
PROCESSES = ["vp", "ve", "subvp", "ddpm", "ddpm-cosine", "flow", "flow-cosine"]


def build(registry: diffkit.Registry, process_name: str, model_name: str = "gmm:d64") -> tuple:
    """(process, oracle model) by name."""
    process = registry.build("process", process_name, {})
    return process, registry.build("model", model_name, {}, process)


def test_ancestral_sigmas_closed_forms() -> None:
    """sigma_down^2 + sigma_up^2 = sigma_next^2; eta = 0: the ODE; eta = 1: DDPM's sigma_next^2 / sigma."""
    sigma, sigma_next = torch.tensor(3.0, dtype=F64), torch.tensor(1.2, dtype=F64)
    for eta in [0.0, 0.3, 1.0, 2.0, 50.0]:
        down, up = ancestral_sigmas(sigma, sigma_next, eta)
        torch.testing.assert_close(down**2 + up**2, sigma_next**2, rtol=1e-14, atol=0)
    assert ancestral_sigmas(sigma, sigma_next, 0.0) == (sigma_next, 0.0)
    down, up = ancestral_sigmas(sigma, sigma_next, 1.0)
    torch.testing.assert_close(down, sigma_next**2 / sigma, rtol=1e-14, atol=0)
    torch.testing.assert_close(up, sigma_next * math.sqrt(1 - 1.2**2 / 9), rtol=1e-14, atol=0)
    assert ancestral_sigmas(sigma, sigma_next, 50.0) == (0.0, sigma_next)  # capped: all re-noised
    zero = torch.tensor(0.0, dtype=F64)
    assert ancestral_sigmas(sigma, zero, 1.0) == (0.0, 0.0)  # the step to sigma = 0 adds no noise


@pytest.mark.parametrize("options", [{}, {"eta": 0.0}, {"eta": 0.5, "s_noise": 1.2, "denoise_final": True}])
def test_conformance(registry: diffkit.Registry, options: dict) -> None:
    """The conformance kit; eta = 0 is deterministic and ignores the generator."""
    check_sampler_conformance(registry, "euler-ancestral", options=options)


@pytest.mark.parametrize("process_name", PROCESSES)
@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.5, 1.3), (2.0, 1.0), (0.0, 1.0)])
@pytest.mark.parametrize("zero", [True, False])
def test_matches_k_diffusion_with_shared_noise(
    registry: diffkit.Registry, process_name: str, eta: float, s_noise: float, zero: bool
) -> None:
    """= sample_euler_ancestral fed the same normal draws (noise_sampler), same sigma_s list, float64."""
    sampling = peers.load_k_diffusion_sampling()
    process, model = build(registry, process_name)
    grid = registry.build("grid", "karras", {})(process, 10)
    x = prior_noise(process, model, 16, seed=1)
    sigmas = peers.k_diffusion_sigmas(process, grid, append_zero=zero)
    stream = torch.Generator().manual_seed(5)

    def noise_sampler(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=stream, dtype=F64)

    theirs = sampling.sample_euler_ancestral(
        peers.k_diffusion_denoiser(model, process),
        x / process.alpha(grid[0]),
        sigmas,
        disable=True,
        eta=eta,
        s_noise=s_noise,
        noise_sampler=noise_sampler,
    )
    if not zero:
        theirs = theirs * process.alpha(grid[-1])
    sampler = registry.build("sampler", "euler-ancestral", {"eta": eta, "s_noise": s_noise})
    ours = sampler(
        model,
        process,
        x,
        append_final_zero(grid) if zero else grid,
        generator=torch.Generator().manual_seed(5),
    )
    assert ours.nfe == ours.steps == 10 + int(zero)
    assert float((ours.x - theirs).abs().max()) <= 1e-11 * float(theirs.abs().max())  # measured <= 1.2e-12


@pytest.mark.parametrize("process_name", ["vp", "ve", "flow"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_eta_up_to_one_is_ddim(registry: diffkit.Registry, process_name: str, eta: float) -> None:
    """For eta <= 1, D + sigma_down eps + sigma_up z is DDIM eq. 12 with sigma_eta = sigma_up (same draws)."""
    process, model = build(registry, process_name)
    grid = registry.build("grid", "quadratic", {})(process, 8)
    x = prior_noise(process, model, 16, seed=2)
    ours = registry.build("sampler", "euler-ancestral", {"eta": eta})(
        model, process, x, grid, generator=torch.Generator().manual_seed(3)
    )
    ddim = registry.build("sampler", "ddim", {"eta": eta})(
        model, process, x, grid, generator=torch.Generator().manual_seed(3)
    )
    assert float((ours.x - ddim.x).abs().max()) <= 1e-12 * float(ddim.x.abs().max())
    if eta == 1.0:  # DDPM posterior sampling with beta_tilde, in posterior form
        ancestral = registry.build("sampler", "ancestral", {})(
            model, process, x, grid, generator=torch.Generator().manual_seed(3)
        )
        assert float((ours.x - ancestral.x).abs().max()) <= 1e-12 * float(ancestral.x.abs().max())


def test_one_step_by_hand(registry: diffkit.Registry) -> None:
    """One step [t0, t1] on subvp is alpha1 (x/alpha0 + (sigma_down - s0) eps + s_noise sigma_up z)."""
    process, model = build(registry, "subvp")
    grid = torch.tensor([0.6, 0.35], dtype=F64)
    x = prior_noise(process, model, 8, seed=4)
    eta, s_noise = 1.7, 0.8
    got = registry.build("sampler", "euler-ancestral", {"eta": eta, "s_noise": s_noise})(
        model, process, x, grid, generator=torch.Generator().manual_seed(6)
    )
    alpha, sigma = process.alpha(grid), process.sigma(grid)
    s0, s1 = (sigma / alpha).tolist()
    up = min(s1, eta * math.sqrt(s1**2 * (s0**2 - s1**2) / s0**2))
    down = math.sqrt(s1**2 - up**2)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=F64)
    eps = model.predict(x, grid[0]).eps
    expected = alpha[1] * (x / alpha[0] + (down - s0) * eps + s_noise * up * z)
    assert got.nfe == 1
    torch.testing.assert_close(got.x, expected, rtol=1e-12, atol=1e-12)


def test_zero_grid_ends_with_the_noiseless_x0_prediction(registry: diffkit.Registry) -> None:
    """grid + [0] = the grid with denoise_final: the last step is D(x) without noise, never at t = 0."""
    process, model = build(registry, "vp", "gmm:ring8")
    recorder = TimeRecorder(model)
    grid = registry.build("grid", "quadratic", {})(process, 6)
    x = prior_noise(process, model, 8, seed=7)
    sampler = registry.build("sampler", "euler-ancestral", {})
    zero = sampler(model, process, x, append_final_zero(grid), generator=torch.Generator().manual_seed(8))
    before = sampler(model, process, x, grid, generator=torch.Generator().manual_seed(8))
    assert (zero.nfe, zero.steps) == (7, 7)
    torch.testing.assert_close(zero.x, model.predict(before.x, grid[-1]).x0, rtol=0, atol=1e-12)
    assert float(recorder.all_times().min()) == process.t_min


def test_weak_order_one_on_a_gaussian(registry: diffkit.Registry) -> None:
    """1-D N(3, 1) target from the exact p_{t_max}, 2^17 samples, default (quadratic) grid, vp.

    The mean is exact at any step count (each step's mean is the exact posterior mean), so it
    stays within Monte-Carlo noise; the variance is too small by O(1 / steps): measured -16.8 %,
    -9.1 %, -4.3 % at 32, 64, 128 steps (slope 0.98), against a Monte-Carlo std of 0.4 %.
    """
    process = registry.build("process", "vp", {})
    mean, std, batch, steps = 3.0, 1.0, 2**17, (32, 64, 128)
    model = gaussian_model(process, mean, std)
    exact_mean, exact_var = gaussian_marginal(process, process.t_min, mean, std)
    x_init = gaussian_start(process, mean, std, batch, seed=0)
    sampler = registry.build("sampler", "euler-ancestral", {})
    var_errors = []
    for n in steps:
        grid = registry.build("grid", sampler.capabilities.default_grid, {})(process, n)
        x = sampler(model, process, x_init, grid, generator=torch.Generator().manual_seed(n)).x
        assert abs(float(x.mean()) - exact_mean) <= 4.0 * math.sqrt(exact_var / batch)
        var_errors.append(float(x.var()) / exact_var - 1.0)
    assert all(error < 0 for error in var_errors), var_errors  # too narrow, never too wide
    order = empirical_order([abs(e) for e in var_errors], steps)
    assert abs(order - sampler.capabilities.order) <= 0.3, (order, var_errors)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"eta": -1.0}, "sampler 'euler-ancestral': option eta must be a finite number >= 0, got -1.0"),
        (
            {"s_noise": -0.5},
            "sampler 'euler-ancestral': option s_noise must be a finite number >= 0, got -0.5",
        ),
        ({"eta": math.inf}, "sampler 'euler-ancestral': option 'eta' must be a finite number, got inf"),
    ],
)
def test_bad_options_are_one_line(registry: diffkit.Registry, options: dict, message: str) -> None:
    """Negative or infinite eta / s_noise: one exact line (OptionError)."""
    with pytest.raises(OptionError) as caught:
        registry.build("sampler", "euler-ancestral", options)
    assert str(caught.value) == message


def test_cli_negative_eta_exits_2(tmp_path) -> None:
    """`--solver-opt eta=-1`: exit 2, one line, nothing written."""
    args = [
        "sample",
        "--solver",
        "euler-ancestral",
        "--solver-opt",
        "eta=-1",
        "--num-samples",
        "4",
        "--no-plot",
    ]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "option eta must be a finite number >= 0, got -1.0" in lines[0]
    assert not (tmp_path / "s.npz").exists()
