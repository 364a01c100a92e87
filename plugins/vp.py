"""Variance-preserving SDE (Song et al. 2021, eq. 11): dx = -beta(t)/2 x dt + sqrt(beta(t)) dw."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffkit import LinearGaussianProcess, Registrar, hookimpl
from diffkit.schedules import vp_beta, vp_log_alpha, vp_t_from_log_alpha


@dataclass(frozen=True, kw_only=True)
class VPProcess(LinearGaussianProcess):
    """VP SDE with linear beta(t); alpha^2 + sigma^2 = 1 (DDPM's continuous limit)."""

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

    def _sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(2.0 * self._log_alpha(t))

    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * vp_beta(t, self.beta_min, self.beta_max)

    def _d_sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return vp_beta(t, self.beta_min, self.beta_max) * torch.exp(2.0 * self._log_alpha(t))

    def _t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        # alpha^2 = sigmoid(lambda)  =>  log alpha = -softplus(-lambda) / 2
        return vp_t_from_log_alpha(
            -0.5 * torch.nn.functional.softplus(-log_snr), self.beta_min, self.beta_max
        )


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `vp` process."""
    registrar.add_process("vp", VPProcess)
