"""Peer-library harness for tests: `diffkit.peers`' adapters, skipping where a peer is absent.

The adapters live in the package (`diffkit.peers.kdiffusion`, `diffkit.peers.diffusers`, where
their conventions are documented); this module re-exports them for the peer tests, and turns
`PeerNotInstalled` from the loaders into `pytest.skip` so a missing peer skips the test.
Peers are test-only dependencies (`pip install -e ".[peers]"` for diffusers; k-diffusion with
`--no-deps`, see the Makefile).
"""

from __future__ import annotations

import types

import pytest

from diffkit.peers import PeerNotInstalled
from diffkit.peers import diffusers as _diffusers
from diffkit.peers import kdiffusion as _kdiffusion
from diffkit.peers.diffusers import EpsFunction, diffusers_config, diffusers_eps, diffusers_time
from diffkit.peers.kdiffusion import Denoiser, k_diffusion_denoiser, k_diffusion_sigmas, shared_noise

__all__ = [
    "Denoiser",
    "EpsFunction",
    "diffusers_config",
    "diffusers_eps",
    "diffusers_time",
    "k_diffusion_denoiser",
    "k_diffusion_sigmas",
    "load_diffusers",
    "load_k_diffusion_sampling",
    "shared_noise",
]


def load_k_diffusion_sampling() -> types.ModuleType:
    """`k_diffusion.sampling` through the package's import bridge; skip the test if it is absent."""
    try:
        return _kdiffusion.load_k_diffusion_sampling()
    except PeerNotInstalled as error:
        pytest.skip(str(error))


def load_diffusers() -> types.ModuleType:
    """The `diffusers` module; skip the test if it is not installed."""
    try:
        return _diffusers.load_diffusers()
    except PeerNotInstalled as error:
        pytest.skip(str(error))
