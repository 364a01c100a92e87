"""Variance-exploding SDE (Song et al. 2021, eq. 9; NCSN's continuous limit)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from diffkit import LinearGaussianProcess, ProcessTraits, Registrar, hookimpl


@dataclass(frozen=True, kw_only=True)
class VEProcess(LinearGaussianProcess):
    """VE SDE: alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t, g^2 = d sigma^2 / dt."""

    traits: ClassVar[ProcessTraits] = ProcessTraits(variance_exploding=True)
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not 0 <= self.t_min < self.t_max:
            raise ValueError(f"need 0 <= t_min < t_max, got {self.t_min}, {self.t_max}")

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def _log_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return math.log(self.sigma_min) + t * self._log_ratio

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def _sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(2.0 * self._log_sigma(t))

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return -2.0 * self._log_sigma(t)

    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def _d_sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return 2.0 * self._log_ratio * self._sigma_squared(t)

    def _t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        return (-0.5 * log_snr - math.log(self.sigma_min)) / self._log_ratio


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `ve` process."""
    registrar.add_process("ve", VEProcess)
