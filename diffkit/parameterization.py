"""Conversions between the four standard network targets (pure tensor functions).

With `x = alpha x0 + sigma eps` (all tensors broadcastable to `(B, *dims)`):

    x0    = (x - sigma eps) / alpha          eps = (x - alpha x0) / sigma
    score = -eps / sigma                     v   = alpha eps - sigma x0   (Salimans & Ho 2022)

`alpha` and `sigma` arrive already broadcast (see `diffkit.shapes.append_dims`).
"""

from __future__ import annotations

from typing import Literal

import torch

Kind = Literal["eps", "x0", "v", "score"]
KINDS: tuple[str, ...] = ("eps", "x0", "v", "score")


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = (x - alpha x0) / sigma."""
    return (x - alpha * x0) / sigma


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 = (x - sigma eps) / alpha."""
    return (x - sigma * eps) / alpha


def score_from_eps(eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """score = grad_x log p_t(x) = -eps / sigma."""
    return -eps / sigma


def eps_from_score(score: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = -sigma score."""
    return -sigma * score


def v_from_eps_x0(
    eps: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """v = alpha eps - sigma x0."""
    return alpha * eps - sigma * x0


def eps_from_v(x: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = (sigma x + alpha v) / (alpha^2 + sigma^2)."""
    return (sigma * x + alpha * v) / (alpha**2 + sigma**2)


def x0_from_v(x: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)."""
    return (alpha * x - sigma * v) / (alpha**2 + sigma**2)


def to_eps(
    kind: str, output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Convert a network output of the given kind to eps."""
    if kind == "eps":
        return output
    if kind == "x0":
        return eps_from_x0(x, output, alpha, sigma)
    if kind == "v":
        return eps_from_v(x, output, alpha, sigma)
    if kind == "score":
        return eps_from_score(output, sigma)
    raise ValueError(f"unknown parameterization {kind!r}; expected one of {', '.join(KINDS)}")


def to_x0(
    kind: str, output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Convert a network output of the given kind to x0 (exact for x0 and v outputs)."""
    if kind == "x0":
        return output
    if kind == "v":
        return x0_from_v(x, output, alpha, sigma)
    return x0_from_eps(x, to_eps(kind, output, x, alpha, sigma), alpha, sigma)
