"""Restart sampling `restart` (Xu et al. 2023): the paper's Alg. 1, NFE, order, floor, bad intervals."""

from __future__ import annotations

import pytest
import torch
from _helpers import at_floor, distance_to_data, prior_noise, ring8_floor, ring8_quality
from peers import k_diffusion_denoiser, k_diffusion_sigmas
from typer.testing import CliRunner

import diffkit
from diffkit.bench.plan import select_solvers, steps_for_budget
from diffkit.bench.spec import BenchConfig
from diffkit.cli.main import app
from diffkit.core.errors import OptionError
from diffkit.testing import check_convergence_order, check_sampler_conformance

INTERVALS = "0.1:2:2:3,0.5:5:1:2"


def reference_restart(denoise, sigmas: torch.Tensor, x: torch.Tensor, restarts, generator) -> torch.Tensor:
    """Alg. 1 of Xu et al. 2023 in EDM's sigma space: Heun main pass, restarts at the snapped t_min.

    `restarts` holds (smin, smax, K, N); `denoise(x, sigma)` is D; the noise is drawn in order.
    """

    def heun(x, s, s_next):
        d = (x - denoise(x, s)) / s
        x_euler = x + (s_next - s) * d
        return x + (s_next - s) * (d + (x_euler - denoise(x_euler, s_next)) / s_next) / 2

    at = {}
    for smin, smax, k, n in restarts:
        at.setdefault(int(torch.argmin((sigmas - smin).abs())), []).append((smax, k, n))
    for i in range(len(sigmas) - 1):
        x = heun(x, sigmas[i], sigmas[i + 1])
        for smax, k, n in at.get(i + 1, []):
            s_min = sigmas[i + 1]
            ramp = torch.arange(n + 1, dtype=torch.float64) / n
            sub = (smax ** (1 / 7) + ramp * (s_min ** (1 / 7) - smax ** (1 / 7))) ** 7
            for _ in range(k):
                x = x + (smax**2 - s_min**2) ** 0.5 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
                for j in range(n):
                    x = heun(x, sub[j], sub[j + 1])
    return x


@pytest.mark.parametrize("process_name", ["vp", "ve", "ddpm", "flow"])
def test_matches_the_papers_algorithm_1(registry: diffkit.Registry, process_name: str) -> None:
    """Same grid, model and noise: `restart` = a direct loop of Alg. 1 in sigma / alpha (float64)."""
    process = registry.build("process", process_name, {})
    model = registry.build("model", "gmm:d64", {}, process)
    grid = registry.build("grid", "karras", {})(process, 12)
    x_init = prior_noise(process, model, 16, seed=0)
    sampler = registry.build("sampler", "restart", {"intervals": INTERVALS})
    result = sampler(model, process, x_init, grid, generator=torch.Generator().manual_seed(3))
    sigmas = k_diffusion_sigmas(process, grid, append_zero=False)
    alpha_first, alpha_last = process.alpha(grid[0]), process.alpha(grid[-1])
    restarts = [(0.1, 2.0, 2, 3), (0.5, 5.0, 1, 2)]
    expected = alpha_last * reference_restart(
        k_diffusion_denoiser(model, process),
        sigmas,
        x_init / alpha_first,
        restarts,
        torch.Generator().manual_seed(3),
    )
    residual = float((result.x - expected).abs().max() / expected.abs().max())
    assert residual < 1e-10, residual
    assert result.nfe == 2 * 12 + 2 * (2 * 3 + 1 * 2) == sampler.expected_nfe(12)


@pytest.mark.parametrize("process_name", ["vp", "subvp", "ve", "ddpm", "flow"])
@pytest.mark.parametrize("intervals", ["0.1:2:1:4", "none", INTERVALS])
def test_conformance(registry: diffkit.Registry, process_name: str, intervals: str) -> None:
    """The conformance kit (NFE = 2 per step + 2 K N per interval, reproducibility) on every process."""
    check_sampler_conformance(registry, "restart", options={"intervals": intervals}, process=process_name)


def test_without_restarts_it_is_second_order(registry: diffkit.Registry) -> None:
    """With no intervals the main pass is EDM's Heun: order 2 against a tight ODE reference."""
    result = check_convergence_order(
        registry, "restart", (16, 32, 64), options={"intervals": "none"}, model="gmm:d64", grid="karras"
    )
    assert not registry.build("sampler", "restart", {"intervals": "none"}).capabilities.stochastic
    assert abs(result.order - 2.0) <= 0.3


def test_reaches_the_noise_floor(registry: diffkit.Registry) -> None:
    """Default interval, 20 karras steps on vp: gmm:ring8 at the SW2 floor with the exact spread."""
    process = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:ring8", {}, process)
    n = 2000
    grid = registry.build("grid", "karras", {})(process, 20)
    sampler = registry.build("sampler", "restart", {})
    x = sampler(
        model,
        process,
        prior_noise(process, model, n, seed=1),
        grid,
        generator=torch.Generator().manual_seed(2),
    ).x
    distance, floor = distance_to_data(model, x), ring8_floor(model, n)
    assert at_floor(distance, floor), (distance, floor)
    spread, _ = ring8_quality(model, process, x)
    assert abs(spread - 1.0) < 0.05, spread


def test_bench_takes_the_restarts_off_the_budget(registry: diffkit.Registry) -> None:
    """The bench's plan counts the fixed 2 K N restart calls: steps = (budget - extra) // 2."""
    config = BenchConfig(
        model="gmm:d64", solvers=("restart",), per_solver_options={"restart": {"intervals": INTERVALS}}
    )
    (plan,) = select_solvers(config, registry)
    assert plan.nfe_per_step == 2 and plan.fixed_nfe == 16
    assert steps_for_budget(plan, 50) == 17 and steps_for_budget(plan, 17) is None


@pytest.mark.parametrize(
    ("intervals", "message"),
    [
        ("2:0.1:1:4", "option intervals: restart interval 2:0.1:1:4 needs 0 < smin < smax"),
        ("0.1:2:0:4", "option intervals: restart interval 0.1:2:0:4 needs K >= 1 and N >= 1"),
        ("0.1:2:1", "option intervals must be 'smin:smax:K:N[,...]' (sigma/alpha units), got '0.1:2:1'"),
    ],
)
def test_bad_intervals_are_one_line(registry: diffkit.Registry, intervals: str, message: str) -> None:
    """Bad interval syntax or values: OptionError with one exact line."""
    with pytest.raises(OptionError) as error:
        registry.build("sampler", "restart", {"intervals": intervals})
    assert str(error.value) == f"sampler 'restart': {message}"


def test_interval_outside_the_grid_fails_before_sampling(registry: diffkit.Registry, tmp_path) -> None:
    """An interval beyond the grid's sigma / alpha range: UsageError before any model call; CLI exit 2."""
    process = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:d64", {}, process)
    grid = registry.build("grid", "karras", {})(process, 10)
    sampler = registry.build("sampler", "restart", {"intervals": "0.1:1000:1:2"})
    with pytest.raises(diffkit.UsageError, match=r"^restart interval 0.1:1000:1:2 lies outside the grid's"):
        sampler(model, process, prior_noise(process, model, 4, seed=0), grid)
    assert model.nfe == 0
    result = CliRunner().invoke(
        app,
        [
            "sample",
            "--sde",
            "vp",
            "--model",
            "gmm:d64",
            "--solver",
            "restart",
            "--solver-opt",
            "intervals=0.1:1000:1:2",
            "--num-samples",
            "4",
            "--out",
            str(tmp_path / "s.npz"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "restart interval 0.1:1000:1:2 lies outside the grid's sigma/alpha range" in result.output
