"""Embeddings of the network's time input and of class labels (with a null class)."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(
    time_input: torch.Tensor, dim: int, *, scale: float = 1000.0, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding of a scalar per sample (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020, App. B).

    Frequencies are geometric, `w_k = max_period^(-k / (dim/2))` for k = 0..dim/2-1, and the
    embedding is `[sin(scale t w_k), cos(scale t w_k)]`. `scale` = 1000 maps continuous t in
    [0, 1] onto DDPM's integer-step range, where the transformer frequencies were tuned.

    Args:
        time_input: `(B,)` time input of the network (floating point).
        dim: embedding width, even.
        scale: multiplier applied to the time input before the sinusoids.
        max_period: the longest period, in units of `scale * t`.

    Returns:
        `(B, dim)` embedding in `time_input`'s dtype and device; each sin/cos pair has unit norm,
        so every row has norm `sqrt(dim / 2)`.
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"embedding dim must be even and >= 2, got {dim}")
    half = dim // 2
    exponent = torch.arange(half, device=time_input.device, dtype=torch.float64) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = scale * time_input.to(torch.float64).unsqueeze(-1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).to(time_input.dtype)


class TimeEmbedding(nn.Module):
    """Sinusoidal features followed by a two-layer SiLU MLP: `(B,)` -> `(B, out_dim)`."""

    def __init__(self, dim: int, out_dim: int, *, scale: float = 1000.0) -> None:
        super().__init__()
        self.dim = dim
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, time_input: torch.Tensor) -> torch.Tensor:
        """Embed `(B,)` times into `(B, out_dim)` in the parameters' dtype."""
        dtype = self.mlp[0].weight.dtype
        return self.mlp(sinusoidal_embedding(time_input, self.dim, scale=self.scale).to(dtype))


class LabelEmbedding(nn.Module):
    """Learned embedding of `num_classes + 1` labels; label `num_classes` is the null class.

    The null class lets one network be both conditional and unconditional, which classifier-free
    guidance needs (Ho & Salimans 2022, sec. 3.2): `cond=None` means "no label" for every sample.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        """The index of the null class."""
        return self.num_classes

    def forward(self, cond: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """Embed labels `(B,)` (long, in [0, num_classes]; None -> null class) as `(B, dim)`."""
        if cond is None:
            cond = torch.full((batch,), self.null_label, dtype=torch.long, device=device)
        if not isinstance(cond, torch.Tensor) or cond.dtype not in (torch.int32, torch.int64):
            raise TypeError("cond must be an integer tensor of class labels (B,) or None")
        if cond.shape != (batch,):
            raise ValueError(f"cond must have shape ({batch},), got {tuple(cond.shape)}")
        if bool(((cond < 0) | (cond > self.null_label)).any()):
            raise ValueError(
                f"labels must lie in [0, {self.null_label}] ({self.null_label} is the null class)"
            )
        return self.table(cond.to(device=device, dtype=torch.long))


def check_unconditional(cond: object) -> None:
    """Raise if a network built without classes is given labels."""
    if cond is not None:
        raise ValueError("this network has no class conditioning (num_classes=0); pass cond=None")
