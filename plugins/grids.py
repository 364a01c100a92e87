"""Built-in time grids: `uniform` (in t), `log-snr`, `karras` (rho in sigma/alpha), `quadratic`, `ddpm`.

Each returns a float64 tensor `(n_steps + 1,)` descending from t_max to t_min.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from diffkit import NoiseProcess, Registrar, discrete_process, hookimpl


def _check_steps(n_steps: int) -> None:
    if n_steps < 1:
        raise ValueError(f"need at least 1 step, got {n_steps}")


@dataclass(frozen=True, kw_only=True)
class UniformGrid:
    """Uniform in t: t_i = t_max + (i / n) (t_min - t_max) (DDPM/DDIM style)."""

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid."""
        _check_steps(n_steps)
        return torch.linspace(process.t_max, process.t_min, n_steps + 1, dtype=torch.float64)


@dataclass(frozen=True, kw_only=True)
class LogSNRGrid:
    """Uniform in log-SNR lambda between lambda(t_max) and lambda(t_min) (Lu et al. 2022)."""

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid."""
        _check_steps(n_steps)
        lam_max = float(process.log_snr(torch.tensor(process.t_min, dtype=torch.float64)))
        lam_min = float(process.log_snr(torch.tensor(process.t_max, dtype=torch.float64)))
        lam = torch.linspace(lam_min, lam_max, n_steps + 1, dtype=torch.float64)
        return _pin_ends(process.t_from_log_snr(lam), process)


@dataclass(frozen=True, kw_only=True)
class KarrasGrid:
    """Karras et al. 2022, eq. 5: uniform in s^(1/rho) for s = sigma/alpha, rho = 7 by default."""

    rho: float = field(default=7.0, metadata={"positive": True})  # checked by the registry's build

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid."""
        _check_steps(n_steps)
        ends = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
        s_max, s_min = torch.exp(-0.5 * process.log_snr(ends)).tolist()  # s = sigma / alpha
        ramp = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
        inv_rho = 1.0 / self.rho
        s = (s_max**inv_rho + ramp * (s_min**inv_rho - s_max**inv_rho)) ** self.rho
        return _pin_ends(process.t_from_log_snr(-2.0 * torch.log(s)), process)


@dataclass(frozen=True, kw_only=True)
class QuadraticGrid:
    """Quadratic in t, denser near t_min: t_i = t_min + (t_max - t_min)(1 - i/n)^2 (Song et al. 2021a)."""

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid."""
        _check_steps(n_steps)
        ramp = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64)
        return process.t_min + (process.t_max - process.t_min) * ramp**2


@dataclass(frozen=True, kw_only=True)
class DDPMGrid:
    """DDPM spacing: knots of a discrete process evenly spaced from t_max to t_min (else uniform).

    On a process with knots t_k = k / N (k = 1..N, trait "discrete") the grid holds the knots
    `round(j (N - 1) / n)` (0-based, j = n..0): it starts at t_max like diffusers' "trailing"
    spacing and ends at t_min, and its n + 1 knots are the timesteps of improved DDPM's
    respacing (Nichol & Dhariwal 2021, `space_timesteps`) and of diffusers' "linspace" spacing
    with n + 1 steps. n <= N - 1; n = N - 1 is every knot. Continuous processes get `uniform`.
    """

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid."""
        _check_steps(n_steps)
        discrete = discrete_process(process)
        if discrete is None:
            return UniformGrid()(process, n_steps)
        knots = discrete.discrete_times  # (N,) ascending
        if n_steps > knots.shape[0] - 1:
            raise ValueError(f"a process with {knots.shape[0]} knots has at most {knots.shape[0] - 1} steps")
        ramp = torch.arange(n_steps, -1, -1, dtype=torch.float64) / n_steps  # 1 .. 0
        return knots[torch.round(ramp * (knots.shape[0] - 1)).long()]


def _pin_ends(grid: torch.Tensor, process: NoiseProcess) -> torch.Tensor:
    """Set the end points exactly (inverting the log-SNR may be off by rounding)."""
    grid = grid.clone()
    grid[0], grid[-1] = process.t_max, process.t_min
    return grid


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the five built-in grids."""
    registrar.add_grid("uniform", UniformGrid)
    registrar.add_grid("log-snr", LogSNRGrid)
    registrar.add_grid("karras", KarrasGrid)
    registrar.add_grid("quadratic", QuadraticGrid)
    registrar.add_grid("ddpm", DDPMGrid)
