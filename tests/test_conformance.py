"""The built-in samplers pass the `diffkit.testing` conformance kit (as third-party ones should)."""

from __future__ import annotations

import pytest
import torch

import diffkit
from diffkit.testing import ConformanceError, check_sampler_conformance, empirical_order


@pytest.mark.parametrize("name", ["em", "ode", "ode:euler", "sde:euler", "sde:srk"])
def test_builtin_samplers_conform(registry: diffkit.Registry, name: str) -> None:
    """Reproducible, stateless, NFE counted, float32/float64, (B, 2) and (B, 1, 8, 8) data."""
    check_sampler_conformance(registry, name)


def test_conformance_on_ve_with_denoising(registry: diffkit.Registry) -> None:
    """Options pass through; denoise_final's extra NFE is accounted for."""
    check_sampler_conformance(
        registry, "em", options={"denoise_final": True}, process="ve", model="gmm:ring8"
    )


class _Broken:
    """A small em-like sampler with one contract violation switched on by `flaw`."""

    capabilities = diffkit.Capabilities(stochastic=True, order=1.0, default_steps=2)

    def __init__(self, *, flaw: str = "none") -> None:
        self.flaw, self.calls = flaw, 0

    def __call__(self, model, process, x_init, grid, *, generator=None, callback=None):
        self.calls += 1
        x = x_init
        for i in range(grid.shape[0] - 1):
            if self.flaw == "global-rng":
                noise = torch.randn(x.shape, dtype=x.dtype)
            else:
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = (
                x
                + 0.01 * model.predict(x, grid[i]).eps
                + (0.1 * self.calls if self.flaw == "state" else 0.1) * noise
            )
            if callback is not None:
                callback(diffkit.StepInfo(i, grid[i + 1], x, i + 1))
        nfe = grid.shape[0] - 1 - (1 if self.flaw == "nfe" else 0)
        return diffkit.SampleResult(x, nfe, grid.shape[0] - 1)


class _BrokenPlugin:
    """Registers `broken` for the conformance-kit self test."""

    @staticmethod
    @diffkit.hookimpl
    def diffkit_register(registrar: diffkit.Registrar) -> None:
        registrar.add_sampler("broken", _Broken)


@pytest.fixture(scope="module")
def broken_registry() -> diffkit.Registry:
    """A fresh registry with the `broken` sampler added."""
    return diffkit.build_registry(plugins=[_BrokenPlugin])


@pytest.mark.parametrize(
    "flaw, message",
    [
        ("nfe", "reported nfe"),
        ("global-rng", "global RNG|same seed"),
        ("state", "reusing the sampler object"),
    ],
)
def test_kit_catches_broken_samplers(broken_registry: diffkit.Registry, flaw: str, message: str) -> None:
    """The kit accepts the honest version and names each violation."""
    check_sampler_conformance(broken_registry, "broken", model="gmm:ring8")
    with pytest.raises(ConformanceError, match=message):
        check_sampler_conformance(broken_registry, "broken", options={"flaw": flaw}, model="gmm:ring8")


def test_empirical_order_is_the_log_log_slope() -> None:
    """errors = C n^-p gives back p; bad input raises."""
    steps = [10, 20, 40, 80]
    assert empirical_order([3.0 * n**-2.5 for n in steps], steps) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        empirical_order([1.0], [1])
    with pytest.raises(ValueError):
        empirical_order([0.0, 1.0], [1, 2])
