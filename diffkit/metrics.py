"""Sample-quality metrics: the sliced Wasserstein-2 distance and its finite-sample noise floor.

SW2(P, Q)^2 = E_theta[ W2^2(theta#P, theta#Q) ] over unit directions theta uniform on the
sphere (Bonneel et al. 2015, "Sliced and Radon Wasserstein Barycenters of Measures", eq. 4).
In 1-D, W2^2 = int_0^1 (F_P^{-1}(u) - F_Q^{-1}(u))^2 du; for empirical measures both quantile
functions are step functions, so the integral is computed exactly on the merged breakpoints
`{i/N} U {j/M}` and unequal sample counts need no interpolation.

Even two independent exact sample sets are at a positive distance (about N^{-1/2}): the
*noise floor*, which `sliced_wasserstein_floor` measures, is the best any sampler can reach
with N samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

DEFAULT_SEED = 0


def random_directions(
    num_projections: int, dim: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Unit vectors `(P, D)` uniform on the sphere, float64 on the generator's device.

    Without a generator a local one seeded with `DEFAULT_SEED` is used (deterministic).
    """
    if generator is None:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    theta = torch.randn(
        (num_projections, dim), generator=generator, device=generator.device, dtype=torch.float64
    )
    return theta / torch.linalg.vector_norm(theta, dim=-1, keepdim=True)


def quantile_steps(n: int, m: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """Merged quantile breakpoints of two empirical measures with `n` and `m` atoms.

    Breakpoints `{i/n} U {j/m}` are handled as exact integers over the denominator `n m`.

    Returns:
        `widths` `(L,)` (float64, summing to 1) of the intervals between consecutive
        breakpoints, and the sorted-sample indices `ix` `(L,)` into the first measure and `iy`
        `(L,)` into the second whose quantile functions are constant on each interval.
    """
    ticks = torch.cat([torch.arange(1, n + 1, device=device) * m, torch.arange(1, m + 1, device=device) * n])
    upper = torch.unique(ticks)  # sorted
    lower = torch.cat([upper.new_zeros(1), upper[:-1]])
    twice_mid = lower + upper  # 2 * midpoint * n m
    ix = torch.div(twice_mid, 2 * m, rounding_mode="floor")  # floor(mid * n)
    iy = torch.div(twice_mid, 2 * n, rounding_mode="floor")  # floor(mid * m)
    widths = (upper - lower).to(torch.float64) / (n * m)
    return widths, ix, iy


def wasserstein2_1d_squared(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact W2^2 between empirical 1-D measures, column by column.

    Args:
        x: `(N, P)` samples of P one-dimensional measures.
        y: `(M, P)` samples of the P measures to compare with.

    Returns:
        `(P,)` squared 2-Wasserstein distances, in the promoted dtype of `x` and `y`.
    """
    widths, ix, iy = quantile_steps(x.shape[0], y.shape[0], device=x.device)
    # sorting contiguous rows (P, N) is several times faster than sorting columns of (N, P)
    qx = torch.sort(x.T.contiguous(), dim=1).values[:, ix]
    qy = torch.sort(y.T.contiguous(), dim=1).values[:, iy]
    return ((qx - qy).square() * widths.to(qx.dtype)).sum(1)


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_projections: int = 512,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sliced Wasserstein-2 distance between two sample sets (0-dim tensor).

    sqrt of the mean, over `num_projections` random unit directions, of the exact 1-D W2^2
    between the projected samples. Directions come from `generator`, or from a local generator
    with a fixed seed, so equal inputs give equal results.

    Args:
        x: samples `(N, *dims)`; flattened to `(N, D)`.
        y: samples `(M, *dims)` with the same D; M may differ from N.
        num_projections: number of random directions P.
        generator: source of the directions (default: fixed seed `DEFAULT_SEED`).

    Returns:
        0-dim tensor in the promoted dtype of `x` and `y`, on `x`'s device.
    """
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sample sets differ in dimension: {x.shape[1]} and {y.shape[1]}")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("sliced_wasserstein needs at least one sample in each set")
    dtype = torch.promote_types(x.dtype, y.dtype)
    theta = random_directions(num_projections, x.shape[1], generator=generator).to(x.device, dtype)
    x, y = x.to(dtype), y.to(x.device, dtype)
    return wasserstein2_1d_squared(x @ theta.T, y @ theta.T).mean().sqrt()


class NoiseFloor(NamedTuple):
    """Mean and standard deviation of SW2 between independent exact sample sets of size `n`."""

    mean: float
    std: float
    n: int


def sliced_wasserstein_floor(
    sample_fn: Callable[[int, torch.Generator], torch.Tensor],
    n: int,
    *,
    repeats: int = 5,
    num_projections: int = 512,
    seed: int = DEFAULT_SEED,
) -> NoiseFloor:
    """Noise floor of `sliced_wasserstein` at sample size `n`.

    Draws `repeats` pairs of independent sets `sample_fn(n, generator)` (e.g.
    `lambda n, g: model.sample_data(n, generator=g)`) from a local generator seeded with
    `seed`, and returns the mean and (sample) std of their distances.
    """
    if repeats < 2:
        raise ValueError(f"need repeats >= 2 to estimate a spread, got {repeats}")
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(repeats):
        a, b = sample_fn(n, generator), sample_fn(n, generator)
        values.append(float(sliced_wasserstein(a, b, num_projections=num_projections)))
    mean = sum(values) / repeats
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (repeats - 1))
    return NoiseFloor(mean, std, n)
