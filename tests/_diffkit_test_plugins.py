"""Local plugin used by the CLI tests (loaded through DIFFKIT_PLUGINS, never installed).

Adds a sampler that needs a discrete process, and a model whose network returns NaN below
t = 0.5, to exercise composition errors and NaN detection through the real CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import diffkit
from diffkit.core.sampler import SampleResult, StepInfo


@dataclass(frozen=True, kw_only=True)
class DiscreteOnlySampler:
    """A sampler that declares it needs a discrete process (never samples in these tests)."""

    capabilities = diffkit.Capabilities(stochastic=False, order=1.0, requires=frozenset({"discrete"}))

    def __call__(self, model, process, x_init, grid, *, generator=None, callback=None):  # noqa: ANN001
        """Return the input unchanged."""
        return SampleResult(x_init, 0, 0)


@dataclass(frozen=True, kw_only=True)
class FixedEuler:
    """Plain probability-flow Euler used to reach the NaN model deterministically."""

    capabilities = diffkit.Capabilities(stochastic=False, order=1.0, default_steps=10)

    def __call__(self, model, process, x_init, grid, *, generator=None, callback=None):  # noqa: ANN001
        """Euler steps on dx/dt = f x - g^2 score / 2."""
        x, start = x_init, model.nfe
        for i in range(len(grid) - 1):
            t, dt = grid[i], grid[i + 1] - grid[i]
            drift = process.f(t).to(x.dtype) * x - 0.5 * process.diffusion_squared(t).to(
                x.dtype
            ) * model.score(x, t)
            x = x + drift * dt.to(x.dtype)
            if callback is not None:
                callback(StepInfo(i, grid[i + 1], x, model.nfe - start))
        return SampleResult(x, model.nfe - start, len(grid) - 1)


def nan_model(process: diffkit.NoiseProcess) -> diffkit.ScoreModel:
    """Standard-normal eps model that returns NaN for t < 0.5."""

    def network(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        bad = (t < 0.5).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(bad, torch.full_like(x, float("nan")), torch.zeros_like(x))

    return diffkit.ScoreModel(network, kind="eps", process=process, data_shape=(2,))


@diffkit.hookimpl
def diffkit_register(registrar: diffkit.Registrar) -> None:
    """Register the test components."""
    registrar.add_sampler("test-discrete-only", DiscreteOnlySampler)
    registrar.add_sampler("test-euler", FixedEuler)
    registrar.add_model("test-nan", nan_model)
