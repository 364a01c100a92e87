"""Shape helpers: data is `(B, *dims)` of any rank, per-sample scalars are `(B,)`."""

from __future__ import annotations

import torch

from diffkit.core.precision import schedule_dtype


def append_dims(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so `values` broadcasts against an `ndim`-rank tensor.

    Args:
        values: tensor of shape `(B,)` (or `()`).
        ndim: rank of the data tensor, e.g. `x.ndim`.

    Returns:
        a view of shape `(B, 1, ..., 1)` with `ndim` dims (a 0-dim input stays 0-dim).
    """
    if values.ndim == 0:
        return values
    missing = ndim - values.ndim
    if missing < 0:
        raise ValueError(f"cannot append dims to a {values.ndim}-D tensor to reach {ndim}-D")
    return values.reshape(*values.shape, *([1] * missing))


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    """Sum a `(B, *dims)` tensor over every dim but the first, giving `(B,)`."""
    return x.sum(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def batch_times(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a time (scalar, 0-dim or `(B,)`) to a `(B,)` tensor on `x`'s device."""
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=schedule_dtype(x.device))
    t = t.to(x.device)
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"time must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t
