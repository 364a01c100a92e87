"""Pure schedule math shared by the built-in processes (float64 tensors in and out)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffkit.core.process import LinearGaussianProcess


def vp_beta(t: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """Linear VP rate beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021, eq. 11)."""
    return beta_min + t * (beta_max - beta_min)


def vp_log_alpha(t: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """log alpha(t) = -1/2 int_0^t beta = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2."""
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def vp_t_from_log_alpha(log_alpha: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """Invert `vp_log_alpha` (positive root of the quadratic; linear if beta_max == beta_min)."""
    c = -log_alpha  # = a t^2 + b t with a = (beta_max - beta_min)/4, b = beta_min/2
    a, b = 0.25 * (beta_max - beta_min), 0.5 * beta_min
    if a == 0.0:
        return c / b
    return 2.0 * c / (b + torch.sqrt(b * b + 4.0 * a * c))  # stable form of (-b + sqrt(.))/(2a)


def ddpm_linear_alpha_bar(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """alpha_bar_i = prod_{j<=i} (1 - beta_j), betas linear in i (Ho et al. 2020); shape (n,)."""
    betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def ddpm_cosine_alpha_bar(n: int, s: float, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule alpha_bar (Nichol & Dhariwal 2021, eq. 17) with betas clipped at `max_beta`."""
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1.0 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1.0 - betas, dim=0)


@dataclass(frozen=True, kw_only=True)
class LinearBetaProcess(LinearGaussianProcess):
    """Base of VP and sub-VP: alpha(t) = exp(-1/2 int_0^t beta) with linear beta(t)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.beta_min <= self.beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {self.beta_min}, {self.beta_max}")
        if not 0 < self.t_min < self.t_max:
            raise ValueError(f"need 0 < t_min < t_max, got {self.t_min}, {self.t_max}")

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return vp_log_alpha(t, self.beta_min, self.beta_max)

    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * vp_beta(t, self.beta_min, self.beta_max)
