"""Sub-VP SDE (Song et al. 2021, eq. 12): VP drift with diffusion beta(t)(1 - alpha(t)^4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from diffkit import LinearBetaProcess, ProcessTraits, Registrar, hookimpl, vp_beta


@dataclass(frozen=True, kw_only=True)
class SubVPProcess(LinearBetaProcess):
    """Sub-VP SDE: alpha as in VP, sigma = 1 - alpha^2 (variance below VP's)."""

    traits: ClassVar[ProcessTraits] = ProcessTraits(sub_variance_preserving=True)

    def _sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return torch.expm1(2.0 * self._log_alpha(t)) ** 2

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        log_alpha = self._log_alpha(t)
        return 2.0 * log_alpha - 2.0 * torch.log(-torch.expm1(2.0 * log_alpha))

    def _d_sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        # d/dt (1 - alpha^2)^2 = 2 (1 - alpha^2) beta alpha^2
        alpha_squared = torch.exp(2.0 * self._log_alpha(t))
        return 2.0 * (1.0 - alpha_squared) * vp_beta(t, self.beta_min, self.beta_max) * alpha_squared


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `subvp` process."""
    registrar.add_process("subvp", SubVPProcess)
