"""Objectives of a time grid: error against a tight reference ODE solution, or distance to exact data.

Both are functions `grid (G,) -> 0-dim float64 tensor` on one fixed set of prior noise, so that
a search compares grids on the same inputs. They are differentiable in the grid wherever the
sampler is (diffkit's samplers are torch code), so the endpoint error can be minimised by
gradient descent through the solver, as LD3 (Tong et al. 2024) and GITS (Chen et al. 2024) do:

    endpoint(grid)  = mean_i |x_i(grid) - x_i^ref|       (x^ref: dopri5 to t_min, float64, same noise)
    sliced-w2(grid) = sqrt(mean_p W2^2(<x(grid), theta_p>, <y, theta_p>))   (y: exact samples)

The sliced-W2 uses the directions and exact sets of `diffkit.bench.quality.exact_sets`, so its
value is the bench's `sliced_w2` (the "Align Your Steps" view, Sabour et al. 2024: a divergence
to the true distribution, here measured on exact data instead of bounded through the density).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffkit.bench.quality import REFERENCE_TOL, ExactSets, exact_sets
from diffkit.core.grid import append_final_zero, split_final_zero
from diffkit.eval.metrics import quantile_steps
from diffkit.plugin.registry import Registry
from diffkit.run.api import Composition

#: the objectives `diffkit tune-grid --objective` accepts
OBJECTIVES: tuple[str, ...] = ("endpoint", "sliced-w2")

Objective = Callable[[torch.Tensor], torch.Tensor]


def run_solver(
    comp: Composition, grid: torch.Tensor, noise: torch.Tensor, seed: int
) -> tuple[torch.Tensor, int]:
    """The composition's sampler from `noise` `(N, *shape)` on `grid` `(G,)`: samples `(N, *shape)` and NFE.

    Stochastic samplers draw from a generator seeded with `seed` on every call, so the result is a
    deterministic function of the grid.
    """
    generator = torch.Generator(device=noise.device).manual_seed(seed)
    with warnings.catch_warnings():  # samplers read the grid's last time as a float: harmless here
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
        result = comp.sampler(comp.model, comp.process, noise, grid, generator=generator)
    return result.x, int(result.nfe)


def grid_ends(grid: torch.Tensor, comp: Composition) -> tuple[float, float, bool]:
    """`(t_first, t_last, to_zero)`: first and last positive times; whether the grid ends at sigma = 0."""
    times, to_zero = split_final_zero(grid.detach(), comp.process)
    return float(times[0]), float(times[-1]), to_zero


def ode_reference(
    registry: Registry, comp: Composition, noise: torch.Tensor, t_first: float, to_zero: bool
) -> tuple[torch.Tensor, int]:
    """The exact answer from `noise` at t_first: the probability-flow ODE to t_min (dopri5, float64).

    With `to_zero` (grids ending at sigma = 0) the answer is the model's x0 prediction at t_min,
    so every grid from t_first with the same final kind is compared with the same target, and a
    grid ending at sigma = 0 may move its last positive time. Returns the `(N, *shape)` float64
    solution and the model calls it took.
    """
    grid = torch.tensor([t_first, comp.process.t_min], dtype=torch.float64)
    grid = append_final_zero(grid) if to_zero else grid
    ode = registry.build("sampler", "ode", {"rtol": REFERENCE_TOL, "atol": REFERENCE_TOL})
    with torch.no_grad():
        result = ode(comp.model, comp.process, noise.to(torch.float64), grid.to(noise.device))
    return result.x.to(torch.float64), int(result.nfe)


def sliced_w2(samples: torch.Tensor, sets: ExactSets) -> torch.Tensor:
    """Differentiable sliced W2 of `samples` `(N, *shape)` against `sets.reference` (bench's `sliced_w2`)."""
    flat = samples.reshape(samples.shape[0], -1).to(torch.float64)
    projected = torch.sort((flat @ sets.directions.T).T, dim=1).values  # (P, N)
    widths, ix, iy = quantile_steps(projected.shape[1], sets.reference_sorted.shape[1])
    diff = projected[:, ix] - sets.reference_sorted[:, iy]
    return (diff.square() * widths).sum(1).mean().sqrt()


@dataclass
class Counter:
    """Model calls spent (forward passes of the whole batch; a gradient adds a backward pass)."""

    nfe: int = 0
    evaluations: int = 0


def endpoint_objective(
    registry: Registry, comp: Composition, noise: torch.Tensor, seed: int, counter: Counter
) -> Objective:
    """`grid -> mean |x(grid) - x_ref|` on `noise`; x_ref (`ode_reference`) solved once per kind of end."""
    references: dict[tuple[float, bool], torch.Tensor] = {}

    def objective(grid: torch.Tensor) -> torch.Tensor:
        t_first, _, to_zero = grid_ends(grid, comp)
        key = (t_first, to_zero)
        if key not in references:
            references[key], nfe = ode_reference(registry, comp, noise, t_first, to_zero)
            counter.nfe += nfe
        x, nfe = run_solver(comp, grid, noise, seed)
        counter.nfe += nfe
        counter.evaluations += 1
        return torch.linalg.vector_norm((x - references[key]).reshape(x.shape[0], -1), dim=1).mean()

    return objective


def exact_target(comp: Composition, n: int, seed: int, ends: tuple[float, float, bool]) -> ExactSets:
    """Exact sets (`diffkit.bench.quality.exact_sets`) at a grid's end: the data if it ends at sigma = 0."""
    _, t_last, to_zero = ends
    return exact_sets(comp.model, comp.process, n, seed, None if to_zero else t_last)


def sliced_w2_objective(comp: Composition, noise: torch.Tensor, seed: int, counter: Counter) -> Objective:
    """`grid -> sliced W2(x(grid), exact samples)` on `noise`; exact sets drawn once per grid end."""
    targets: dict[tuple[float, bool], ExactSets] = {}

    def objective(grid: torch.Tensor) -> torch.Tensor:
        ends = grid_ends(grid, comp)
        key = (ends[1], ends[2])
        if key not in targets:
            targets[key] = exact_target(comp, noise.shape[0], seed, ends)
        x, nfe = run_solver(comp, grid, noise, seed)
        counter.nfe += nfe
        counter.evaluations += 1
        return sliced_w2(x, targets[key])

    return objective


def make_objective(
    name: str, registry: Registry, comp: Composition, noise: torch.Tensor, seed: int, counter: Counter
) -> Objective:
    """The objective `name` (one of `OBJECTIVES`) on `noise` `(N, *shape)`."""
    if name == "endpoint":
        return endpoint_objective(registry, comp, noise, seed, counter)
    if name == "sliced-w2":
        return sliced_w2_objective(comp, noise, seed, counter)
    raise ValueError(f"unknown objective {name!r}; expected one of {', '.join(OBJECTIVES)}")
