"""Precision policy: schedule arithmetic in float64 where the device has it."""

from __future__ import annotations

import torch


def schedule_dtype(device: torch.device | str) -> torch.dtype:
    """Return float64, or float32 on devices without float64 (Apple MPS)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def as_schedule_tensor(t: torch.Tensor | float) -> torch.Tensor:
    """Convert a time (or log-SNR) to a tensor in the schedule dtype of its device."""
    if not isinstance(t, torch.Tensor):
        return torch.as_tensor(t, dtype=torch.float64)
    return t.to(schedule_dtype(t.device))


def result_dtype(t: torch.Tensor | float) -> torch.dtype:
    """Dtype a schedule function returns for input `t`: `t`'s float dtype, else float64."""
    if isinstance(t, torch.Tensor) and torch.is_floating_point(t):
        return t.dtype
    return torch.float64
