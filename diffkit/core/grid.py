"""Time grids: `(process, n_steps) -> Tensor[n_steps + 1]`, descending from t_max to t_min."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from diffkit.core.process import NoiseProcess


@runtime_checkable
class TimeGrid(Protocol):
    """Contract of a time grid (built-ins live in `diffkit.plugins.grids`)."""

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor: ...


def check_grid(grid: torch.Tensor, process: NoiseProcess) -> torch.Tensor:
    """Validate a grid: 1-D, at least two points, strictly descending, inside the process range."""
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"a time grid must be 1-D with at least 2 points, got shape {tuple(grid.shape)}")
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("a time grid must be strictly descending")
    tol = 1e-9 * max(1.0, abs(process.t_max))
    if float(grid[0]) > process.t_max + tol or float(grid[-1]) < process.t_min - tol:
        raise ValueError(
            f"time grid [{float(grid[0])}, {float(grid[-1])}] leaves the process range "
            f"[{process.t_min}, {process.t_max}]"
        )
    return grid
