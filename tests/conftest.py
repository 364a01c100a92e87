"""Shared fixtures: one registry per test session, the built-in process names, seeded generators.

Tests build components through the registry exactly like a user would
(`registry.build("process", "vp", {})`); everything numeric is float64 by explicit dtype and
every random draw takes an explicit, seeded `torch.Generator`.
"""

from __future__ import annotations

import pytest
import torch

import diffkit

#: The five built-in noise processes (DESIGN.md section 2).
PROCESSES: tuple[str, ...] = ("vp", "subvp", "ve", "ddpm", "ddpm-cosine")
#: Continuous SDEs plus discrete DDPM with linear betas (well-behaved for forward simulation).
SMOOTH_PROCESSES: tuple[str, ...] = ("vp", "subvp", "ve", "ddpm")
#: The four built-in time grids.
GRIDS: tuple[str, ...] = ("uniform", "log-snr", "karras", "quadratic")


@pytest.fixture(scope="session")
def registry() -> diffkit.Registry:
    """A registry of every installed plugin, built once per session (components are immutable)."""
    return diffkit.build_registry()


@pytest.fixture(scope="session")
def processes() -> tuple[str, ...]:
    """Names of the five built-in processes."""
    return PROCESSES


@pytest.fixture(params=PROCESSES)
def process_name(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over the five built-in process names."""
    return request.param


@pytest.fixture
def process(registry: diffkit.Registry, process_name: str) -> diffkit.NoiseProcess:
    """Each built-in process with its default options."""
    return registry.build("process", process_name, {})


@pytest.fixture
def make_generator():
    """`make_generator(seed)` -> a CPU `torch.Generator` seeded with `seed`."""

    def make(seed: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    return make
