"""Built-in time grids (plugins/grids.py): shape, ends and order; closed forms; `check_grid`.

Closed forms: uniform t_i = t_max + (i/n)(t_min - t_max); quadratic
t_i = t_min + (t_max - t_min)(1 - i/n)^2; log-snr uniform in lambda (Lu et al. 2022); karras
uniform in (sigma/alpha)^(1/rho) (Karras et al. 2022, eq. 5).
"""

from __future__ import annotations

import re

import pytest
import torch

from diffkit.core.grid import check_grid

F64 = torch.float64
#: the grids that run exactly from t_max to t_min (those ending at sigma = 0: test_grid_definitions.py)
GRIDS = ("uniform", "log-snr", "karras", "quadratic", "exponential", "polyexponential", "beta")
STEPS = (1, 2, 7, 50, 999)


def _ramp(n: int) -> torch.Tensor:
    return torch.arange(n + 1, dtype=F64) / n


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("grid_name", GRIDS)
def test_grid_shape_ends_and_order(registry, process, grid_name, n):
    grid = registry.build("grid", grid_name, {})(process, n)
    assert grid.shape == (n + 1,) and grid.dtype == F64
    assert grid[0].item() == process.t_max and grid[-1].item() == process.t_min  # exactly
    assert bool((grid[1:] < grid[:-1]).all())
    assert check_grid(grid, process) is grid


@pytest.mark.parametrize("n", (3, 40))
def test_uniform_closed_form(registry, process, n):
    grid = registry.build("grid", "uniform", {})(process, n)
    expected = process.t_max + _ramp(n) * (process.t_min - process.t_max)
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(grid.diff(), torch.full((n,), (process.t_min - process.t_max) / n, dtype=F64))


@pytest.mark.parametrize("n", (3, 40))
def test_quadratic_closed_form(registry, process, n):
    grid = registry.build("grid", "quadratic", {})(process, n)
    expected = process.t_min + (process.t_max - process.t_min) * (1 - _ramp(n)) ** 2
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("n", (3, 40))
def test_log_snr_grid_is_uniform_in_log_snr(registry, process, n):
    grid = registry.build("grid", "log-snr", {})(process, n)
    lam = process.log_snr(grid)
    lam_min, lam_max = process.log_snr(process.t_max).item(), process.log_snr(process.t_min).item()
    expected = lam_min + _ramp(n) * (lam_max - lam_min)
    torch.testing.assert_close(lam, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rho", (7.0, 3.0, 1.0))
@pytest.mark.parametrize("n", (3, 40))
def test_karras_grid_is_uniform_in_sigma_over_alpha_to_one_over_rho(registry, process, n, rho):
    grid = registry.build("grid", "karras", {"rho": str(rho)})(process, n)
    ratio = (process.sigma(grid) / process.alpha(grid)) ** (1 / rho)  # (sigma/alpha)^(1/rho)
    s_max, s_min = ratio[0].item(), ratio[-1].item()
    expected = s_max + _ramp(n) * (s_min - s_max)
    torch.testing.assert_close(ratio, expected, rtol=1e-10, atol=1e-12)


def test_karras_default_rho_is_seven(registry):
    assert registry.build("grid", "karras", {}).rho == 7.0
    assert registry.build("grid", "karras", {"rho": "7"}) == registry.build("grid", "karras", {})


def test_ve_karras_grid_is_the_edm_sigma_schedule(registry):
    """VE (alpha = 1): sigma_i = (s_max^(1/rho) + i/n (s_min^(1/rho) - s_max^(1/rho)))^rho, EDM's schedule."""
    ve = registry.build("process", "ve", {"sigma_max": "80", "sigma_min": "0.002", "t_min": "0"})
    grid = registry.build("grid", "karras", {})(ve, 18)
    edm = (80 ** (1 / 7) + _ramp(18) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(ve.sigma(grid), edm, rtol=1e-12, atol=0)


@pytest.mark.parametrize("grid_name", GRIDS)
@pytest.mark.parametrize("n", (0, -3))
def test_fewer_than_one_step_raises(registry, grid_name, n):
    grid = registry.build("grid", grid_name, {})
    process = registry.build("process", "vp", {})
    with pytest.raises(ValueError, match=re.escape(f"need at least 1 step, got {n}")):
        grid(process, n)


def test_karras_rejects_non_positive_rho(registry):
    from diffkit import OptionError

    message = "grid 'karras': option rho must be a positive number, got 0.0"
    with pytest.raises(OptionError, match=re.escape(message)):
        registry.build("grid", "karras", {"rho": "0"})


@pytest.mark.parametrize(
    "values, message",
    [
        ([[1.0, 0.5]], "a time grid must be 1-D with at least 2 points, got shape (1, 2)"),
        ([1.0], "a time grid must be 1-D with at least 2 points, got shape (1,)"),
        ([1.0, 0.5, 0.5, 0.1], "a time grid must be strictly descending"),
        ([0.1, 0.5, 1.0], "a time grid must be strictly descending"),
        ([1.5, 0.5, 0.1], "time grid [1.5, 0.1] leaves the process range [0.0001, 1.0]"),
        ([1.0, 0.5, 1e-5, 0.0], "time grid [1.0, 1e-05] leaves the process range [0.0001, 1.0]"),
    ],
)
def test_check_grid_rejects_bad_grids(registry, values, message):
    process = registry.build("process", "vp", {})
    with pytest.raises(ValueError, match=re.escape(message)):
        check_grid(torch.tensor(values, dtype=F64), process)


def test_check_grid_accepts_rounding_at_the_ends(registry):
    process = registry.build("process", "vp", {})
    grid = torch.tensor([1.0 + 1e-12, 0.5, 1e-3 - 1e-12], dtype=F64)
    assert check_grid(grid, process) is grid
