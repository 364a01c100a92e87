"""Search over time grids with fixed ends: a monotone parameterisation and two optimisers.

A grid t_0 > t_1 > ... > t_K (then optionally 0.0, sigma = 0) with fixed ends t_0 and t_K is
parameterised by K logits theta: the log-SNR increments between the ends are

    lambda_k = lambda(t_0) + (lambda(t_K) - lambda(t_0)) * sum_{j < k} softmax(theta)_j,

so every theta gives a strictly descending grid inside the process's range, and theta = log of
the start grid's increments reproduces it. A grid that ends at sigma = 0 has a free last
positive time too: its K + 1 logits split [lambda(t_0), lambda(t_min)] and the last increment
is the slack between t_K and t_min. `adam_search` follows the objective's gradient
through the solver (LD3-style); `coordinate_search` is the derivative-free fallback for
samplers whose output does not depend differentiably on the grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffkit.core.grid import append_final_zero, split_final_zero
from diffkit.core.process import NoiseProcess

Objective = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GridShape:
    """A grid's fixed parts: the process, its first and last positive times, the final sigma = 0 point."""

    process: NoiseProcess
    t_first: float
    t_last: float
    to_zero: bool

    @classmethod
    def of(cls, grid: torch.Tensor, process: NoiseProcess) -> GridShape:
        """The fixed parts of `grid` `(G,)`."""
        times, to_zero = split_final_zero(grid.detach(), process)
        return cls(process, float(times[0]), float(times[-1]), to_zero)

    def _log_snr_ends(self) -> torch.Tensor:
        """lambda at t_first and at the end of the span: t_min when the last time is free, else t_last."""
        end = self.process.t_min if self.to_zero else self.t_last
        ends = torch.tensor([self.t_first, end], dtype=torch.float64)
        return self.process.log_snr(ends).to(torch.float64)

    def theta_of(self, grid: torch.Tensor) -> torch.Tensor:
        """Logits reproducing `grid`: `(K,)`, or `(K + 1,)` with the slack to t_min (grids ending at 0)."""
        times, _ = split_final_zero(grid.detach().to(torch.float64), self.process)
        lam = self.process.log_snr(times).to(torch.float64)
        increments = torch.diff(lam)
        if self.to_zero:  # the slack from t_K down to t_min, kept away from 0 so it can grow again
            lam_end = self._log_snr_ends()[1]
            slack = (lam_end - lam[-1]).clamp_min(1e-3 * float(lam_end - lam[0]))
            increments = torch.cat([increments, slack.reshape(1)])
        return torch.log(increments.clamp_min(1e-300))

    def grid_of(self, theta: torch.Tensor) -> torch.Tensor:
        """The grid of logits `theta` (see `theta_of`); differentiable in theta.

        Returns `(K + 1,)` times from t_first to t_last, or `(K + 2,)`: K free times after t_first,
        then 0.0 (sigma = 0).
        """
        lam_first, lam_end = self._log_snr_ends()
        fractions = torch.cumsum(torch.softmax(theta, dim=0), dim=0)[:-1]
        inner = self.process.t_from_log_snr(lam_first + (lam_end - lam_first) * fractions).to(theta.dtype)
        first = theta.new_full((1,), self.t_first)
        if self.to_zero:
            return append_final_zero(torch.cat([first, inner]))
        return torch.cat([first, inner, theta.new_full((1,), self.t_last)])


@dataclass
class SearchResult:
    """The best logits seen, their objective value and the objective evaluations spent."""

    theta: torch.Tensor
    value: float
    evaluations: int


def _out_of_time(evaluations: int, max_evals: int, deadline: float | None) -> bool:
    return evaluations >= max_evals or (deadline is not None and time.perf_counter() > deadline)


def is_differentiable(shape: GridShape, theta: torch.Tensor, objective: Objective) -> bool:
    """True if the objective at `theta` `(K,)` carries a finite gradient back to the grid."""
    probe = theta.detach().clone().requires_grad_(True)
    value = objective(shape.grid_of(probe))
    if not value.requires_grad:
        return False
    (gradient,) = torch.autograd.grad(value, probe, allow_unused=True)
    return gradient is not None and bool(torch.isfinite(gradient).all()) and bool(gradient.abs().sum() > 0)


def adam_search(
    shape: GridShape,
    theta: torch.Tensor,
    objective: Objective,
    *,
    max_evals: int,
    deadline: float | None,
    lr: float = 0.1,
) -> SearchResult:
    """Adam (Kingma & Ba 2015) on the logits `(K,)`, keeping the best point seen; a NaN halves the step."""
    best = SearchResult(theta.detach().clone(), math.inf, 0)
    current = theta.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([current], lr=lr)
    while not _out_of_time(best.evaluations, max_evals, deadline):
        optimizer.zero_grad()
        value = objective(shape.grid_of(current))
        best.evaluations += 1
        if not bool(torch.isfinite(value)):  # back to the best point, half the step
            with torch.no_grad():
                current.copy_(best.theta)
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
            continue
        if float(value) < best.value:
            best.theta, best.value = current.detach().clone(), float(value)
        value.backward()
        if current.grad is None or not bool(torch.isfinite(current.grad).all()):
            break
        optimizer.step()
    return best


def coordinate_search(
    shape: GridShape,
    theta: torch.Tensor,
    objective: Objective,
    *,
    max_evals: int,
    deadline: float | None,
    step: float = 0.5,
) -> SearchResult:
    """Derivative-free compass search on the logits `(K,)`: +-step per coordinate, halved when none helps."""

    def value_of(point: torch.Tensor) -> float:
        with torch.no_grad():
            value = float(objective(shape.grid_of(point)))
        return value if math.isfinite(value) else math.inf

    best = SearchResult(theta.detach().clone(), value_of(theta), 1)
    while step > 1e-3 and not _out_of_time(best.evaluations, max_evals, deadline):
        improved = False
        for index in range(best.theta.numel()):
            for sign in (1.0, -1.0):
                if _out_of_time(best.evaluations, max_evals, deadline):
                    return best
                trial = best.theta.clone()
                trial[index] += sign * step
                value = value_of(trial)
                best.evaluations += 1
                if value < best.value:
                    best.theta, best.value, improved = trial, value, True
                    break
        if not improved:
            step *= 0.5
    return best
