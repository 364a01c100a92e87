"""Gaussian KL divergences and the discretized Gaussian decoder (pure tensor functions)."""

from __future__ import annotations

import math

import torch
from torch.special import log_ndtr

BIN_HALF_WIDTH = 1.0 / 255.0  # 8-bit data scaled to [-1, 1]: bins of width 2/255


def normal_kl(
    mean1: torch.Tensor, log_var1: torch.Tensor, mean2: torch.Tensor, log_var2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)) elementwise, in nats (Ho et al. 2020, eq. 5).

    `0.5 (log_var2 - log_var1 + e^(log_var1 - log_var2) + (mean1 - mean2)^2 e^-log_var2 - 1)`.

    Args:
        mean1, log_var1, mean2, log_var2: broadcastable tensors.

    Returns:
        the elementwise KL, broadcast shape.
    """
    return 0.5 * (
        log_var2
        - log_var1
        + torch.exp(log_var1 - log_var2)
        + (mean1 - mean2) ** 2 * torch.exp(-log_var2)
        - 1.0
    )


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, e^log_var) elementwise, in nats (continuous-data decoder)."""
    return -0.5 * (math.log(2.0 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def _log_diff_ndtr(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, stable in both tails."""
    flip = (upper + lower) > 0  # right tail: use Phi(u) - Phi(l) = Phi(-l) - Phi(-u)
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1.0 - 1e-12))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, *, half_width: float = BIN_HALF_WIDTH
) -> torch.Tensor:
    """log P(x) of K-level data in [-1, 1] under a Gaussian integrated over each bin (Ho et al. 2020, eq. 13).

    The bin of x is `[x - h, x + h]` with `h = half_width = 1 / (K - 1)` (8-bit data: 1/255),
    the outermost bins extended to -inf (x = -1) and +inf (x = 1), so the K probabilities sum to
    one. Uses the exact normal CDF in log space (not the tanh approximation of the reference code).

    Args:
        x: data on the grid `(2 k / (K - 1) - 1)`, any shape.
        mean, log_var: decoder mean and log-variance, broadcastable to `x`.
        half_width: half the bin width h on the [-1, 1] scale.

    Returns:
        elementwise log-probabilities (nats), `x`'s shape.
    """
    inv_std = torch.exp(-0.5 * log_var)
    edge = 1.0 - min(half_width, 1e-3)  # the outermost grid points, +-1, and nothing inside
    upper = torch.where(x > edge, torch.full_like(x, math.inf), (x - mean + half_width) * inv_std)
    lower = torch.where(x < -edge, torch.full_like(x, -math.inf), (x - mean - half_width) * inv_std)
    return _log_diff_ndtr(upper, lower)
