"""Built-in continuous time grids, each a frozen dataclass `(process, n_steps) -> Tensor`.

Each returns a float64 tensor `(n_steps + 1,)` descending from t_max, read off the process
through t_min, t_max, log_snr and t_from_log_snr only, so every grid works on every process:

- in t: `uniform`, `quadratic` (Song et al. 2021a), `beta` (Lee et al. 2024);
- in the scaled noise level s = sigma / alpha = exp(-lambda / 2) (EDM's sigma, Karras et al.
  2022, eq. 4 with s(t) = alpha; k-diffusion's and ComfyUI's "sigma"; on VE processes it is
  sigma itself): `karras`, `exponential`, `polyexponential`, and `log-snr` (uniform in lambda,
  the same points as `exponential`);
- ComfyUI's schedules with a final step to sigma = 0: `sgm-uniform`, `simple`. Their last point
  is 0.0, below t_min: "the clean data, sigma = 0" (`diffkit.core.grid`; the process is never
  evaluated there), so they need t_min > 0;
- `ddpm`: evenly spaced knots of a discrete process.

All other grids end exactly at t_min. The DDPM spacings and user tables are in
`diffkit.plugins.grid_tables`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from diffkit import NoiseProcess, Registrar, discrete_process, hookimpl

#: knots of `simple` on a continuous process (the size of ComfyUI's sigma tables)
DEFAULT_KNOTS = 1000
#: most terms of the incomplete-beta continued fraction (about sqrt(max(a, b)) suffice)
_MAX_FRACTION_TERMS = 20_000


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
class ExponentialGrid:
    """Uniform in log s, s = sigma/alpha, from s(t_max) to s(t_min): k-diffusion's exponential sigmas.

    log s_i = log s_max + (i / n) (log s_min - log s_max). Since lambda = -2 log s these are the
    points of `log-snr` (computed in log s rather than lambda; equal up to rounding).
    """

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid."""
        _check_steps(n_steps)
        log_s_max, log_s_min = _log_s_ends(process)
        ramp = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
        return _times_of_log_s(process, log_s_max + ramp * (log_s_min - log_s_max))


@dataclass(frozen=True, kw_only=True)
class PolyExponentialGrid:
    """k-diffusion's polyexponential: log s_i = log s_min + (1 - i/n)^rho (log s_max - log s_min).

    s = sigma / alpha; rho = 1 is `exponential`; rho > 1 puts more steps at small s (near the data).
    """

    rho: float = field(default=1.0, metadata={"positive": True})

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid."""
        _check_steps(n_steps)
        log_s_max, log_s_min = _log_s_ends(process)
        ramp = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64) ** self.rho
        return _times_of_log_s(process, log_s_min + ramp * (log_s_max - log_s_min))


@dataclass(frozen=True, kw_only=True)
class BetaGrid:
    """Times at Beta(alpha, beta) quantiles: t_i = t_min + (t_max - t_min) F^-1(1 - i/n) (Lee et al. 2024).

    "Beta Sampling is All You Need" (Lee et al. 2024, sec. 3): alpha = beta = 0.6 (their and
    ComfyUI's default) puts more steps at both ends, where the image changes most. F is the
    Beta(alpha, beta) distribution function on [0, 1]; F^-1(1) = 1 and F^-1(0) = 0 give t_max and
    t_min exactly. ComfyUI's `beta` rounds these times to the 1000 integer timesteps of its model
    and appends sigma = 0; here the times stay continuous and the grid ends at t_min.
    """

    alpha: float = field(default=0.6, metadata={"positive": True})
    beta: float = field(default=0.6, metadata={"positive": True})

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid."""
        _check_steps(n_steps)
        levels = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64)
        quantile = beta_quantile(levels, self.alpha, self.beta)
        return _pin_ends(process.t_min + (process.t_max - process.t_min) * quantile, process)


@dataclass(frozen=True, kw_only=True)
class SGMUniformGrid:
    """ComfyUI's sgm_uniform: n + 1 points uniform in t, t_max to t_min, the last replaced by 0.0 (sigma = 0).

    t_i = t_max + (i / n) (t_min - t_max) for i < n, and t_n = 0.0: the n model evaluations of
    `uniform` with n + 1 points but the final step to the clean data (ComfyUI's
    `normal_scheduler(sgm=True)`, linear in its timestep index, which is linear in t).
    """

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid."""
        _check_steps(n_steps)
        ramp = torch.arange(n_steps, dtype=torch.float64) / n_steps  # 0 .. (n - 1) / n
        return _end_at_zero(process, process.t_max + ramp * (process.t_min - process.t_max))


@dataclass(frozen=True, kw_only=True)
class SimpleGrid:
    """ComfyUI's simple: every (N/n)-th of N knots even in t on [t_min, t_max], then 0.0 (sigma = 0).

    Knot k (0-based, k = 0..N-1) is t_min + k (t_max - t_min) / (N - 1); step i < n takes knot
    N - 1 - floor(i * (N / n)) and the grid ends at 0.0. The product is rounded in float64 as in
    ComfyUI, so for a few (n, i) the knot is one off the exact floor(i N / n) (N = 1000, n = 38,
    i = 19: 499 not 500), and ComfyUI's schedule is reproduced exactly. On a discrete
    process the knots are its own (t_k = (k + 1) / N, with N its number of steps) unless `knots`
    is given; on a continuous one N = `knots` (default 1000, the size of ComfyUI's tables).
    Needs n <= N.
    """

    knots: int | None = field(default=None, metadata={"range": (2, None)})

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid."""
        _check_steps(n_steps)
        discrete = discrete_process(process) if self.knots is None else None
        count = self.knots or (discrete.num_steps if discrete is not None else DEFAULT_KNOTS)
        if n_steps > count:
            raise ValueError(f"takes at most {count} steps on {count} knots, got {n_steps}")
        stride = count / n_steps  # floor(i * (N / n)) in float64, as ComfyUI computes it
        index = count - 1 - torch.floor(torch.arange(n_steps, dtype=torch.float64) * stride).to(torch.int64)
        if discrete is not None:
            times = discrete.discrete_times[index]
        else:
            times = process.t_min + (process.t_max - process.t_min) * index.to(torch.float64) / (count - 1)
        return _end_at_zero(process, times)


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


def _log_s_ends(process: NoiseProcess) -> tuple[float, float]:
    """(log s(t_max), log s(t_min)) of the scaled noise level s = sigma / alpha = exp(-lambda / 2)."""
    ends = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
    log_s_max, log_s_min = (-0.5 * process.log_snr(ends).to(torch.float64)).tolist()
    return log_s_max, log_s_min


def _times_of_log_s(process: NoiseProcess, log_s: torch.Tensor) -> torch.Tensor:
    """Times `(K,)` of the descending log s values `(K,)` from s(t_max) to s(t_min), ends pinned."""
    return _pin_ends(process.t_from_log_snr(-2.0 * log_s).to(torch.float64), process)


def _end_at_zero(process: NoiseProcess, times: torch.Tensor) -> torch.Tensor:
    """`times` `(n,)` followed by the final point 0.0 (sigma = 0), which needs t_min > 0: `(n + 1,)`."""
    if not process.t_min > 0.0:
        raise ValueError(
            "this grid ends at sigma = 0 (a final point t = 0.0 below t_min), which needs t_min > 0; "
            f"the process has t_min = {process.t_min:g}"
        )
    return torch.cat([times.to(torch.float64), torch.zeros(1, dtype=torch.float64)])


def beta_cdf(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Regularized incomplete beta function I_x(a, b), the Beta(a, b) distribution function.

    Args:
        x: points in [0, 1], float64 of any shape.
        a, b: positive shape parameters.

    Returns:
        I_x(a, b), shaped like `x`: the continued fraction of DLMF 8.17.22 evaluated by the
        modified Lentz method, on the side x < (a + 1) / (a + b + 2) where it converges fast
        (I_x(a, b) = 1 - I_{1-x}(b, a) on the other).
    """
    flip = x > (a + 1.0) / (a + b + 2.0)
    z = torch.where(flip, 1.0 - x, x).clamp(0.0, 1.0)
    shape_a, shape_b = torch.full_like(z, a), torch.full_like(z, b)
    p, q = torch.where(flip, shape_b, shape_a), torch.where(flip, shape_a, shape_b)
    fraction = _beta_fraction(z, p, q)
    log_beta = torch.lgamma(p) + torch.lgamma(q) - torch.lgamma(p + q)
    log_front = torch.xlogy(p, z) + torch.xlogy(q, 1.0 - z) - torch.log(p) - log_beta
    value = torch.exp(log_front) / fraction
    return torch.where(flip, 1.0 - value, value)


def _beta_fraction(z: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """1 + d_1 / (1 + d_2 / (1 + ...)) of DLMF 8.17.22 by the modified Lentz method, shaped like z."""
    tiny = 1e-300
    value, upper, lower = torch.ones_like(z), torch.ones_like(z), torch.zeros_like(z)
    for j in range(1, _MAX_FRACTION_TERMS + 1):
        m = j // 2
        if j % 2:  # d_(2m+1) = -(p + m)(p + q + m) z / ((p + 2m)(p + 2m + 1))
            d = -(p + m) * (p + q + m) * z / ((p + 2 * m) * (p + 2 * m + 1))
        else:  # d_(2m) = m (q - m) z / ((p + 2m - 1)(p + 2m))
            d = m * (q - m) * z / ((p + 2 * m - 1) * (p + 2 * m))
        lower = 1.0 + d * lower
        lower = 1.0 / torch.where(lower.abs() < tiny, tiny, lower)
        upper = 1.0 + d / upper
        upper = torch.where(upper.abs() < tiny, tiny, upper)
        delta = upper * lower
        value = value * delta
        if j % 2 == 0 and bool(((delta - 1.0).abs() < 1e-15).all()):
            return value
    raise ValueError(f"the Beta distribution function did not converge in {_MAX_FRACTION_TERMS} terms")


def beta_quantile(levels: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """F^-1(levels) of Beta(a, b) by bisection on [0, 1]: float64, shaped like `levels` in [0, 1].

    64 halvings bring the bracket below float64 resolution; levels 0 and 1 map to 0 and 1 exactly.
    """
    low, high = torch.zeros_like(levels), torch.ones_like(levels)
    for _ in range(64):
        middle = 0.5 * (low + high)
        below = beta_cdf(middle, a, b) < levels
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    quantile = 0.5 * (low + high)
    return torch.where(levels <= 0.0, 0.0, torch.where(levels >= 1.0, 1.0, quantile))


def _add(registrar: Registrar, name: str, factory: type, what: str) -> None:
    """Register grid `name` with the one-line summary `what` (`diffkit list grid` adds its options)."""
    registrar.add_grid(name, factory, summary=what)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the continuous grids (summaries name each grid's options, as `diffkit list grid` shows)."""
    _add(registrar, "uniform", UniformGrid, "Uniform in t from t_max to t_min.")
    _add(registrar, "quadratic", QuadraticGrid, "Quadratic in t, denser near t_min (Song et al. 2021a).")
    _add(registrar, "log-snr", LogSNRGrid, "Uniform in log-SNR lambda, 'lu' (Lu et al. 2022).")
    _add(registrar, "karras", KarrasGrid, "Uniform in (sigma/alpha)^(1/rho) (Karras et al. 2022, eq. 5).")
    _add(registrar, "exponential", ExponentialGrid, "Uniform in log(sigma/alpha) (k-diffusion).")
    _add(
        registrar,
        "polyexponential",
        PolyExponentialGrid,
        "log(sigma/alpha) on a (1 - i/n)^rho ramp (k-diffusion).",
    )
    _add(registrar, "beta", BetaGrid, "t at Beta(alpha, beta) quantiles (Lee et al. 2024).")
    _add(
        registrar, "sgm-uniform", SGMUniformGrid, "ComfyUI sgm_uniform: uniform in t, last step to sigma = 0."
    )
    _add(
        registrar,
        "simple",
        SimpleGrid,
        "ComfyUI simple: every (N/n)-th of N knots (default: the process's, or 1000), then sigma = 0.",
    )
    _add(registrar, "ddpm", DDPMGrid, "Evenly spaced knots of a discrete process (else uniform).")
