"""Variance-preserving SDE (Song et al. 2021, eq. 11): dx = -beta(t)/2 x dt + sqrt(beta(t)) dw."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from diffkit import Registrar, hookimpl
from diffkit.schedules import LinearBetaProcess, vp_beta, vp_t_from_log_alpha


@dataclass(frozen=True, kw_only=True)
class VPProcess(LinearBetaProcess):
    """VP SDE with linear beta(t); alpha^2 + sigma^2 = 1 (DDPM's continuous limit)."""

    features: ClassVar[frozenset[str]] = frozenset({"variance-preserving"})

    def _sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(2.0 * self._log_alpha(t))

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
