"""Reverse-time dynamics of a linear-Gaussian process (pure tensor math).

Song et al. 2021, "Score-Based Generative Modeling through SDEs": for the forward SDE
`dx = f(t) x dt + g(t) dw`, the reverse SDE is `dx = [f x - g^2 score] dt + g dw_bar` (eq. 6)
and the probability-flow ODE is `dx = [f x - g^2 score / 2] dt` (eq. 13).
"""

from __future__ import annotations

import torch

from diffkit.shapes import append_dims


def reverse_drift(
    x: torch.Tensor,
    score: torch.Tensor,
    f: torch.Tensor,
    g2: torch.Tensor,
    *,
    score_weight: float = 1.0,
) -> torch.Tensor:
    """Reverse-time drift `f x - w g^2 score` (eq. 6 with w = 1; eq. 13 with w = 1/2).

    Args:
        x: state `(B, *dims)`.
        score: grad_x log p_t(x), same shape as `x`.
        f: drift coefficient f(t), 0-dim or `(B,)`, in `x`'s dtype.
        g2: squared diffusion g(t)^2, 0-dim or `(B,)`, in `x`'s dtype.
        score_weight: w = 1 for the reverse SDE, 1/2 for the probability-flow ODE.

    Returns:
        dx/dt `(B, *dims)` (t is the forward time; samplers integrate it backwards).
    """
    return append_dims(f, x.ndim) * x - score_weight * append_dims(g2, x.ndim) * score
