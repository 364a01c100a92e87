"""k-diffusion on diffkit's processes and models: import bridge, EDM denoiser, sigma lists, noise.

- `load_k_diffusion_sampling()` -> the `k_diffusion.sampling` module, imported without running
  `k_diffusion/__init__.py` (which imports torchvision, clean-fid, CLIP, ...). The bridge: a
  bare package module `_diffkit_peer_k_diffusion` (no code executed) whose `__path__` is the
  installed `k_diffusion` folder, found with `importlib.util.find_spec` (which does not import
  a top-level package); `sampling.py` is then imported as its submodule, so its
  `from . import utils` resolves inside that folder. `utils.py` imports
  `torchvision.transforms.functional` at module level but sampling never uses it: if torchvision
  is absent, empty stand-ins for `torchvision`, `.transforms` and `.transforms.functional` (any
  other attribute raises AttributeError) are put into `sys.modules` for the duration of that
  import only, and `sys.modules` is restored afterwards. `import k_diffusion` is unaffected;
  the private module stays in Python's module cache like any imported module.
- `k_diffusion_denoiser(model, process)` -> `D(x_s, sigma_s)`: EDM's denoiser in the scaled
  coordinates x_s = x / alpha, sigma_s = sigma / alpha of ANY process (Karras et al. 2022,
  eq. 4 with s(t) = alpha; see `diffkit.solvers.edm`): t = t(sigma_s) through
  `process.t_from_log_snr(-2 log sigma_s)` and D = model.predict(alpha x_s, t).x0, for a batch
  of sigmas `(B,)` (valid for sigma_s(t_min) <= sigma_s <= sigma_s(t_max)). k-diffusion passes
  `sigma * x.new_ones(B)`, i.e. sigma rounded to x's dtype: compare with peers in float64.
- `k_diffusion_sigmas(process, grid)` -> k-diffusion's sigma list of a diffkit grid;
  `karras_sigmas(sampling, process, n)` -> k-diffusion's own recommended list (EDM's rho = 7
  ramp between the process's sigma_s(t_min) and sigma_s(t_max), then 0).
- `shared_noise(seed)` -> context manager that seeds the *global* RNG inside a
  `torch.random.fork_rng()` block (the global state is restored on exit). k-diffusion draws its
  noise with `torch.randn_like(x)` (and seeds its Brownian tree) from the global RNG; on CPU
  that is the same stream as `torch.randn(..., generator=torch.Generator().manual_seed(seed))`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

from diffkit.core.model import ScoreModel
from diffkit.core.process import NoiseProcess
from diffkit.core.shapes import batch_times
from diffkit.peers.availability import PeerNotInstalled, require
from diffkit.solvers.edm import from_scaled, log_snr_of_sigma_scaled, sigma_scaled

_PRIVATE = "_diffkit_peer_k_diffusion"
_TORCHVISION = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
#: rho of k-diffusion's (EDM's) recommended sigma ramp
KARRAS_RHO = 7.0

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _stand_ins() -> dict[str, types.ModuleType]:
    """Empty torchvision package modules; any other attribute access raises AttributeError."""

    def stand_in(name: str) -> types.ModuleType:
        module = types.ModuleType(name, "diffkit stand-in for an absent torchvision")

        def missing(attribute: str) -> Any:
            raise AttributeError(f"{name}.{attribute}: torchvision is not installed (diffkit stand-in)")

        module.__getattr__ = missing  # type: ignore[method-assign]
        module.__path__ = []  # a package, so `from parent import child` finds the child
        return module

    modules = {name: stand_in(name) for name in _TORCHVISION}
    for parent, child in zip(_TORCHVISION[:-1], _TORCHVISION[1:], strict=True):
        setattr(modules[parent], child.rpartition(".")[2], modules[child])
    return modules


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """Provide torchvision stand-ins in sys.modules if torchvision is absent; restore afterwards."""
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    saved = {name: sys.modules.get(name) for name in _TORCHVISION}
    sys.modules.update(_stand_ins())
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def load_k_diffusion_sampling() -> types.ModuleType:
    """Import `k_diffusion.sampling` without `k_diffusion/__init__.py`; PeerNotInstalled if absent."""
    name = f"{_PRIVATE}.sampling"
    if name in sys.modules:
        return sys.modules[name]
    require("k-diffusion")
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise PeerNotInstalled("peer 'k-diffusion': the k_diffusion package has no importable folder")
    folder = next(iter(spec.submodule_search_locations))
    package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(_PRIVATE, None, is_package=True))
    package.__path__ = [folder]
    sys.modules[_PRIVATE] = package
    try:
        with _torchvision_stand_in():
            return importlib.import_module(name)
    except ImportError as error:
        for module in [m for m in sys.modules if m == _PRIVATE or m.startswith(f"{_PRIVATE}.")]:
            del sys.modules[module]
        message = f"peer 'k-diffusion': k_diffusion.sampling cannot be imported: {error}"
        raise PeerNotInstalled(message) from None


def k_diffusion_denoiser(model: ScoreModel, process: NoiseProcess) -> Denoiser:
    """EDM denoiser D(x_s, sigma_s) of `model` in scaled coordinates, for k-diffusion samplers."""

    def denoise(x_s: torch.Tensor, sigma_s: torch.Tensor) -> torch.Tensor:
        """x0 prediction `(B, *dims)` at x = alpha x_s and t = t(sigma_s) for sigma_s `(B,)` or 0-dim."""
        sigma_s = batch_times(sigma_s, x_s).to(torch.float64)
        t = process.t_from_log_snr(log_snr_of_sigma_scaled(sigma_s))
        alpha = process.alpha(t).to(x_s.dtype)
        return model.predict(from_scaled(x_s, alpha), t).x0

    return denoise


def k_diffusion_sigmas(
    process: NoiseProcess, grid: torch.Tensor, *, append_zero: bool = True
) -> torch.Tensor:
    """k-diffusion sigma list `(N + 2,)` (or `(N + 1,)`): sigma_s of each grid time, then 0."""
    sigmas = sigma_scaled(process.log_snr(grid.to(torch.float64)))
    return torch.cat([sigmas, sigmas.new_zeros(1)]) if append_zero else sigmas


def karras_sigmas(
    sampling: types.ModuleType, process: NoiseProcess, n: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """k-diffusion's recommended list `(n + 1,)`: `get_sigmas_karras` over the process's range, then 0."""
    ends = sigma_scaled(process.log_snr(torch.tensor([process.t_min, process.t_max], dtype=torch.float64)))
    return sampling.get_sigmas_karras(n, float(ends[0]), float(ends[1]), rho=KARRAS_RHO, device=device)


@contextlib.contextmanager
def shared_noise(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seed the global RNG with `seed` inside a fork_rng block, for peers that call randn_like."""
    device = torch.device(device)
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
