"""Discrete DDPM processes (Ho et al. 2020; Nichol & Dhariwal 2021) as continuous processes.

The N-step table alpha_bar_1..alpha_bar_N sits at times t_i = i / N. Between the knots the
log-SNR lambda = log(alpha_bar / (1 - alpha_bar)) is interpolated linearly in t, so the
ancestral sampler takes its exact discrete steps on the knots while every continuous solver
sees a VP-type process (alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)) with

    f(t) = sigmoid(-lambda) lambda'(t) / 2,      g(t)^2 = -sigma(t)^2 lambda'(t).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch.nn.functional import logsigmoid

from diffkit import (
    LinearGaussianProcess,
    ProcessTraits,
    Registrar,
    ddpm_cosine_alpha_bar,
    ddpm_linear_alpha_bar,
    hookimpl,
)


@dataclass(frozen=True, kw_only=True)
class _DiscreteProcess(LinearGaussianProcess):
    """Common machinery: a decreasing log-SNR table at t_i = i/N, linear in between."""

    num_steps: int = 1000
    traits: ClassVar[ProcessTraits] = ProcessTraits(discrete=True, variance_preserving=True)
    _table: torch.Tensor = field(init=False, repr=False, compare=False)

    def _alpha_bar(self) -> torch.Tensor:
        raise NotImplementedError

    def __post_init__(self) -> None:
        if self.num_steps < 2:
            raise ValueError(f"need num_steps >= 2, got {self.num_steps}")
        alpha_bar = self._alpha_bar()
        log_snr = torch.log(alpha_bar) - torch.log1p(-alpha_bar)
        if not bool((log_snr[1:] < log_snr[:-1]).all()):
            raise ValueError("alpha_bar must be strictly decreasing")
        object.__setattr__(self, "_table", log_snr)

    @property
    def t_min(self) -> float:  # type: ignore[override]
        """First knot, t = 1/N."""
        return 1.0 / self.num_steps

    @property
    def t_max(self) -> float:  # type: ignore[override]
        """Last knot, t = 1."""
        return 1.0

    @property
    def alpha_bar_table(self) -> torch.Tensor:
        """alpha_bar_i for i = 1..N, float64 `(N,)`."""
        return torch.sigmoid(self._table)

    @property
    def discrete_times(self) -> torch.Tensor:
        """Knot times t_i = i / N for i = 1..N, float64 `(N,)`."""
        return torch.arange(1, self.num_steps + 1, dtype=torch.float64) / self.num_steps

    def _segment(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left knot value, slope d lambda/dt and offset for each t (0-based knot index)."""
        table = self._table.to(device=t.device, dtype=t.dtype)
        position = t * self.num_steps - 1.0  # 0-based continuous knot index
        index = position.floor().clamp(0, self.num_steps - 2).long()
        left, right = table[index], table[index + 1]
        return left, (right - left) * self.num_steps, position - index

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        left, slope, offset = self._segment(t)
        return left + slope * offset / self.num_steps

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * logsigmoid(self._log_snr(t))

    def _sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-self._log_snr(t))

    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        _, slope, _ = self._segment(t)
        return 0.5 * torch.sigmoid(-self._log_snr(t)) * slope

    def _d_sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        _, slope, _ = self._segment(t)
        log_snr = self._log_snr(t)
        return -torch.sigmoid(log_snr) * torch.sigmoid(-log_snr) * slope

    def _t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        table = self._table.to(device=log_snr.device, dtype=log_snr.dtype)
        # -table is increasing: find the segment [k, k+1] with table[k] >= lambda >= table[k+1]
        index = torch.searchsorted(-table, -log_snr.contiguous()).clamp(1, self.num_steps - 1) - 1
        left, right = table[index], table[index + 1]
        offset = (log_snr - left) / (right - left)
        return (index + 1 + offset) / self.num_steps


@dataclass(frozen=True, kw_only=True)
class DDPMLinearProcess(_DiscreteProcess):
    """Discrete DDPM with linear betas from beta_start to beta_end (Ho et al. 2020)."""

    beta_start: float = 1e-4
    beta_end: float = 0.02

    def _alpha_bar(self) -> torch.Tensor:
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        return ddpm_linear_alpha_bar(self.num_steps, self.beta_start, self.beta_end)


@dataclass(frozen=True, kw_only=True)
class DDPMCosineProcess(_DiscreteProcess):
    """Discrete DDPM with the cosine schedule, offset s (Nichol & Dhariwal 2021, eq. 17)."""

    s: float = 0.008

    def _alpha_bar(self) -> torch.Tensor:
        if not self.s > 0:
            raise ValueError(f"need s > 0, got {self.s}")
        return ddpm_cosine_alpha_bar(self.num_steps, self.s)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register `ddpm` (linear betas) and `ddpm-cosine`."""
    registrar.add_process("ddpm", DDPMLinearProcess)
    registrar.add_process("ddpm-cosine", DDPMCosineProcess)
