"""Exponential moving average of network weights (Polyak averaging, as in DDPM and score SDE)."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(decay: float, step: int) -> float:
    """Warmed-up decay `min(decay, (1 + step) / (10 + step))` for optimiser step `step` (0-based)."""
    return min(decay, (1.0 + step) / (10.0 + step))


def init_ema(network: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of `network.state_dict()`: the EMA starts at the initial weights."""
    return {name: value.detach().clone() for name, value in network.state_dict().items()}


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], network: nn.Module, decay: float) -> None:
    """In place: `ema <- decay * ema + (1 - decay) * weights` for float entries; others are copied."""
    for name, value in network.state_dict().items():
        if value.is_floating_point():
            ema[name].lerp_(value, 1.0 - decay)
        else:
            ema[name].copy_(value)
