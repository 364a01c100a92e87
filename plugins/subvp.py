"""Sub-VP SDE (Song et al. 2021, eq. 12): VP drift with diffusion beta(t)(1 - alpha(t)^4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffkit import LinearGaussianProcess, Registrar, hookimpl
from diffkit.schedules import vp_beta, vp_log_alpha


@dataclass(frozen=True, kw_only=True)
class SubVPProcess(LinearGaussianProcess):
    """Sub-VP SDE: alpha as in VP, sigma = 1 - alpha^2 (variance below VP's)."""

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
        return torch.expm1(2.0 * self._log_alpha(t)) ** 2

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        log_alpha = self._log_alpha(t)
        return 2.0 * log_alpha - 2.0 * torch.log(-torch.expm1(2.0 * log_alpha))

    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * vp_beta(t, self.beta_min, self.beta_max)

    def _d_sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        # d/dt (1 - alpha^2)^2 = 2 (1 - alpha^2) beta alpha^2
        alpha_squared = torch.exp(2.0 * self._log_alpha(t))
        return 2.0 * (1.0 - alpha_squared) * vp_beta(t, self.beta_min, self.beta_max) * alpha_squared


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `subvp` process."""
    registrar.add_process("subvp", SubVPProcess)
