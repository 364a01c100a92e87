"""Time grids: `(process, n_steps) -> Tensor[n_steps + 1]`, descending from t_max to t_min.

A grid may end with one extra point 0.0 below the process's t_min (`ends_at_zero`): it means
"the clean data, sigma = 0". Every sampler's last step then goes from the point before it,
t_last, to sigma = 0, and that step is the model's x0 prediction at t_last (one NFE; the
limit of every first-order step as sigma_next -> 0, alpha_next -> 1). The process and the
model are never evaluated at t = 0. This reproduces the trailing 0 of k-diffusion's sigma
lists and diffusers' `final_sigmas_type="zero"`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from diffkit.core.process import NoiseProcess

#: the time of the final "sigma = 0" point a grid may end with
FINAL_ZERO = 0.0


@runtime_checkable
class TimeGrid(Protocol):
    """Contract of a time grid (built-ins live in `diffkit.plugins.grids`)."""

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor: ...


def ends_at_zero(grid: torch.Tensor, process: NoiseProcess) -> bool:
    """True if the 1-D `grid` ends with the final point 0.0 lying below `process.t_min` (sigma = 0)."""
    return grid.numel() >= 2 and float(grid[-1]) == FINAL_ZERO and process.t_min > FINAL_ZERO


def split_final_zero(grid: torch.Tensor, process: NoiseProcess) -> tuple[torch.Tensor, bool]:
    """`(times, to_zero)`: the grid `(N + 1,)` without its final sigma = 0 point, if it has one.

    `times` is `(N,)` when `to_zero` (the last step, times[-1] -> sigma = 0, is the x0
    prediction at times[-1]), else the grid unchanged; every point of `times` lies in
    [t_min, t_max], so samplers may evaluate the process and model on all of them.
    """
    if ends_at_zero(grid, process):
        return grid[:-1], True
    return grid, False


def append_final_zero(grid: torch.Tensor) -> torch.Tensor:
    """The grid `(N + 1,)` followed by the final sigma = 0 point: `(N + 2,)`, same dtype and device."""
    return torch.cat([grid, grid.new_full((1,), FINAL_ZERO)])


def check_grid(grid: torch.Tensor, process: NoiseProcess) -> torch.Tensor:
    """Validate a grid: 1-D, at least two points, strictly descending, inside the process range.

    A final point 0.0 below t_min (sigma = 0, see the module docstring) is accepted; every other
    point must lie in [t_min, t_max]. Returns the grid unchanged.
    """
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"a time grid must be 1-D with at least 2 points, got shape {tuple(grid.shape)}")
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("a time grid must be strictly descending")
    inner, _ = split_final_zero(grid, process)
    tol = 1e-9 * max(1.0, abs(process.t_max))
    if float(inner[0]) > process.t_max + tol or float(inner[-1]) < process.t_min - tol:
        raise ValueError(
            f"time grid [{float(inner[0])}, {float(inner[-1])}] leaves the process range "
            f"[{process.t_min}, {process.t_max}] (only a final point 0.0, sigma = 0, may lie below t_min)"
        )
    return grid
