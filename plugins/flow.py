"""Rectified-flow processes: `flow` (alpha = 1 - t, sigma = t) and `flow-cosine` (quarter circle).

`flow` is the conditional optimal-transport path of flow matching (Lipman et al. 2023, eq. 20;
Liu et al. 2023, rectified flow; Esser et al. 2024, Stable Diffusion 3, eq. 2):
x_t = (1 - t) x0 + t eps. `flow-cosine` is the cosine path alpha = cos(pi t / 2),
sigma = sin(pi t / 2) (Esser et al. 2024, Sec. 3.1; variance-preserving). Both are
linear-Gaussian, so the SDE follows from alpha and sigma (`LinearGaussianProcess`):

    flow:         f = -1 / (1 - t),              g^2 = 2 t / (1 - t)
    flow-cosine:  f = -(pi / 2) tan(pi t / 2),   g^2 = pi tan(pi t / 2)

Both f and g^2 diverge at t = 1, where alpha = 0 and the log-SNR is -inf, and sigma = 0 at
t = 0; the time range therefore stops short of both ends, at the log-SNR range of `vp`
(about [-10.6, 11.6]; see `FlowProcess.t_max` for why the prior N(0, sigma(t_max)^2 I) is
then exact enough).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from diffkit import LinearGaussianProcess, ProcessTraits, Registrar, hookimpl

_HALF_PI = 0.5 * math.pi


def _check_range(t_min: float, t_max: float) -> None:
    """Raise ValueError unless 0 < t_min < t_max < 1 (alpha and sigma vanish at the ends)."""
    if not 0.0 < t_min < t_max < 1.0:
        raise ValueError(
            f"need 0 < t_min < t_max < 1 (sigma = 0 at t = 0, alpha = 0 at t = 1), got {t_min:g}, {t_max:g}"
        )


@dataclass(frozen=True, kw_only=True)
class FlowProcess(LinearGaussianProcess):
    """Rectified flow / conditional OT path: alpha = 1 - t, sigma = t (SD3, Flux, SiT).

    Default grid `beta` (t at Beta(0.6, 0.6) quantiles; Lee et al. 2024), by measurement: the
    log-SNR 2 log((1 - t) / t) is singular at both ends of t, and f, g^2 grow like 1 / (1 - t)
    near t_max. `quadratic` (the VP default of most samplers) takes first steps of 8 times
    1 - t_max, where Heun, SRK and SDE midpoint steps go unstable (gmm:ring8 sliced-W2 1.8 to 5.7
    times the noise floor at 50 NFE); `log-snr` is stable but wastes steps at both ends, so
    first-order samplers (ddim, em, sde, ode:euler) widen the modes by 5-6 %; `beta` clusters
    steps at both ends of t and keeps every sampler that meets the bar on vp within 1.5x the
    floor and 5 % spread (bench/test_flow_quality.py); flow-cosine likewise, but for
    dpmpp-2m-sde (spread 1.09 on gmm:ring8; 1.05 with `--grid-opt alpha=0.5 --grid-opt beta=0.5`).
    """

    traits: ClassVar[ProcessTraits] = ProcessTraits(default_grid="beta")
    #: Start time: sigma(t_min) = 3e-3, a log-SNR of 11.6 (`vp` ends at 11.5, sigma 3.2e-3, where
    #: the widening of `gmm:d64`'s modes by sigma(t_min) is within the noise floor). Unlike vp,
    #: alpha(t_min) = 0.997 shrinks the data by 0.3 %: log p_{t_min} is 4e-3 nats/dim off the data
    #: density on gmm:ring8 (`denoise_final` returns x0 instead). t_min = 1e-3 halves that but puts
    #: a log-SNR step of 1.8 at the end of the `beta` grid: dpmpp-2m-sde's spread grows to 1.075.
    t_min: float = 3e-3
    #: End time: alpha(t_max) = 5e-3, a log-SNR of -10.6 (`vp` starts at -10.0), so a log-SNR
    #: grid spends its steps as on `vp`. The prior N(0, sigma(t_max)^2 I) misses the true p(x_t)
    #: only by the signal alpha(t_max) x0: a KL of alpha^2 E[x0^2] / (2 sigma^2) = 1.3e-5 nats
    #: per dimension and unit of data second moment, far below the likelihood tolerance of
    #: 0.01 nats/dim and any sample-based floor. Starting at sigma = 1 exactly (t = 1, as SD3
    #: pipelines do) would evaluate the model at alpha = 0, where the log-SNR is -inf.
    t_max: float = 0.995

    def __post_init__(self) -> None:
        _check_range(self.t_min, self.t_max)

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log1p(-t)

    def _sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return t * t

    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -1.0 / (1.0 - t)

    def _d_sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return 2.0 * t

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return 2.0 * (torch.log1p(-t) - torch.log(t))

    def _t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        # (1 - t) / t = exp(lambda / 2)  =>  t = sigmoid(-lambda / 2)
        return torch.sigmoid(-0.5 * log_snr)


@dataclass(frozen=True, kw_only=True)
class FlowCosineProcess(LinearGaussianProcess):
    """Cosine flow path: alpha = cos(pi t / 2), sigma = sin(pi t / 2) (variance-preserving)."""

    traits: ClassVar[ProcessTraits] = ProcessTraits(variance_preserving=True, default_grid="beta")
    #: The log-SNR range of `flow` (and `vp`): sigma(t_min) = 3.1e-3 (log-SNR 11.5) and
    #: alpha(t_max) = 4.7e-3 (log-SNR -10.7).
    t_min: float = 2e-3
    t_max: float = 0.997

    def __post_init__(self) -> None:
        _check_range(self.t_min, self.t_max)

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.cos(_HALF_PI * t))

    def _sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(_HALF_PI * t) ** 2

    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -_HALF_PI * torch.tan(_HALF_PI * t)

    def _d_sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return _HALF_PI * torch.sin(math.pi * t)  # 2 sin cos (pi / 2)

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return -2.0 * torch.log(torch.tan(_HALF_PI * t))

    def _t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        # tan(pi t / 2) = exp(-lambda / 2)
        return torch.atan(torch.exp(-0.5 * log_snr)) / _HALF_PI


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `flow` and `flow-cosine` processes."""
    registrar.add_process("flow", FlowProcess)
    registrar.add_process("flow-cosine", FlowCosineProcess)
