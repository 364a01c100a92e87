"""The NaN watch of a sampling run: per-step finiteness recorded on device, one check at the end."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffkit.core.errors import SamplingError
from diffkit.core.sampler import StepInfo


class FiniteWatch:
    """Callback recording per-step finiteness on device (no host sync until the end)."""

    def __init__(self, forward: Callable[[StepInfo], None] | None) -> None:
        self.flags: list[torch.Tensor] = []
        self.times: list[torch.Tensor] = []
        self.forward = forward

    def __call__(self, info: StepInfo) -> None:
        self.flags.append(torch.isfinite(info.x).all())
        self.times.append(info.t)
        if self.forward is not None:
            self.forward(info)

    def raise_if_nonfinite(self, x: torch.Tensor, solver: str) -> None:
        """Raise SamplingError naming the first step (and its time) that produced NaN/Inf."""
        if self.flags:
            finite = torch.stack(self.flags).cpu()
            if not bool(finite.all()):
                step = int((~finite).nonzero()[0, 0])
                t = float(self.times[step])
                raise SamplingError(
                    f"solver {solver!r} produced NaN or Inf at step {step} (t={t:.6g}); "
                    "try more steps, float64, or another solver"
                )
        if not bool(torch.isfinite(x).all()):
            raise SamplingError(f"solver {solver!r} returned NaN or Inf samples")
