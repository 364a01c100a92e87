"""Langevin dynamics and the NCSN noise-level recipes (pure functions).

Langevin dynamics (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the Data
Distribution", eq. 4) samples p from its score with `x <- x + eps/2 score(x) + sqrt(eps) z`;
annealed Langevin dynamics (their Alg. 1) runs it at a decreasing sequence of noise levels
sigma_1 > ... > sigma_L with step `alpha_i = eps sigma_i^2 / sigma_L^2`.

Step-size convention: `langevin_step` takes the step `e` of the form used by Song et al. 2021
(Alg. 4-5) and NCSNv2 (Alg. 1), `x + e score + sqrt(2 e) z`; NCSN's `eps` is `2 e`.

The NCSNv2 recipes (Song & Ermon 2020, "Improved Techniques for Training Score-Based
Generative Models") configure the levels and the step:

* Technique 1: sigma_1 = the maximum Euclidean distance between training points
  (`max_pairwise_distance`).
* Technique 2: a geometric sequence with ratio gamma = sigma_{i-1}/sigma_i such that
  `Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) ~ 0.5`
  (`shell_overlap`, `geometric_ratio`). The overlap rises above Phi(3) - Phi(-3) before it falls,
  and only falls below 1/2 when sqrt(2D) > 3, so no gamma exists for D <= 4.
* Technique 4: with T steps per level, the step eps making the variance ratio of their
  Proposition 1 (eq. 6) closest to 1 (`stationary_variance_ratio`, `ncsnv2_step_size`).

A noise level sigma means the noise-to-signal ratio sigma(t)/alpha(t) of a process (sigma itself
on VE, where alpha = 1); `level_times` maps levels to times through t_from_log_snr(-2 log sigma).
"""

from __future__ import annotations

import math

import torch

from diffkit.core.process import NoiseProcess
from diffkit.core.shapes import append_dims


def langevin_step(
    x: torch.Tensor, score: torch.Tensor, step: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """One Langevin update `x + e score + sqrt(2 e) z` (Song et al. 2021, Alg. 4; NCSNv2 Alg. 1).

    Args:
        x: state `(B, *dims)`.
        score: grad_x log p(x), same shape.
        step: step size e, 0-dim or per sample `(B,)`, in `x`'s dtype (NCSN's eps is 2 e).
        noise: standard normal noise like `x`.

    Returns:
        the updated state `(B, *dims)`.
    """
    step = append_dims(step, x.ndim)
    return x + step * score + torch.sqrt(2.0 * step) * noise


def snr_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float, alpha: torch.Tensor) -> torch.Tensor:
    """Langevin corrector step `e = 2 alpha (r ||z|| / ||score||)^2` per sample (Song et al. 2021, Alg. 4-5).

    Norms run over all non-batch dims of each sample, so the step does not depend on the batch
    (score_sde averages the norms over the batch instead). Near a mode ||z||^2 / ||score||^2 is
    then F(D, D)-distributed: heavy-tailed in low dimension (infinite mean for D = 2), so rare
    steps are huge; in image dimensions it concentrates.

    Args:
        score: `(B, *dims)` score at the current state.
        noise: `(B, *dims)` the noise the update will use.
        snr: target signal-to-noise ratio r.
        alpha: 0-dim `alpha_i` of the algorithm (1 on VE, 1 - beta_i on VP), in the data dtype.

    Returns:
        `(B,)` step sizes e in the data dtype.
    """
    tiny = torch.finfo(score.dtype).tiny
    score_norm = torch.linalg.vector_norm(score.flatten(1), dim=1).clamp_min(tiny)
    noise_norm = torch.linalg.vector_norm(noise.flatten(1), dim=1)
    return 2.0 * alpha * (snr * noise_norm / score_norm).square()


# ---- NCSNv2 (Song & Ermon 2020) configuration recipes --------------------------------------


def max_pairwise_distance(x: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
    """Technique 1: the largest Euclidean distance between two of the points `x` `(N, *dims)` (0-dim)."""
    flat = x.flatten(1)
    best = flat.new_zeros(())
    for start in range(0, flat.shape[0], chunk):
        best = torch.maximum(best, torch.cdist(flat[start : start + chunk], flat).max())
    return best


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def shell_overlap(gamma: float, dim: int) -> float:
    """Technique 2's criterion `Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma)`."""
    center = math.sqrt(2.0 * dim) * (gamma - 1.0)
    return _normal_cdf(center + 3.0 * gamma) - _normal_cdf(center - 3.0 * gamma)


def geometric_ratio(dim: int, target: float = 0.5) -> float:
    """Technique 2: the ratio gamma > 1 with `shell_overlap(gamma, dim) = target` (bisection).

    Raises:
        ValueError: no such gamma (the overlap never falls to `target`, e.g. for D <= 4).
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"need 0 < target < 1, got {target}")
    if math.sqrt(2.0 * dim) <= 3.0 or target >= shell_overlap(1.0, dim):
        raise ValueError(
            f"Technique 2 has no geometric ratio for D={dim}: the overlap never reaches {target}"
        )
    # the overlap rises from gamma = 1 to a peak, then falls to 0: bisect on its falling side
    lo, hi = 1.0, 2.0
    while shell_overlap(hi, dim) > target:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if shell_overlap(mid, dim) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def num_levels(sigma_max: float, sigma_min: float, gamma: float) -> int:
    """Levels L of a geometric sequence with ratio at most `gamma` from sigma_1 down to sigma_L."""
    return 1 + math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma) - 1e-9)


def geometric_levels(sigma_max: float, sigma_min: float, levels: int) -> torch.Tensor:
    """sigma_1 = sigma_max > ... > sigma_L = sigma_min, geometric, float64 `(L,)` (NCSN 2019, sec. 4.2)."""
    if levels < 2 or not 0.0 < sigma_min < sigma_max:
        raise ValueError(
            f"need levels >= 2 and 0 < sigma_min < sigma_max, got {levels}, {sigma_min}, {sigma_max}"
        )
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), levels, dtype=torch.float64)


def level_times(process: NoiseProcess, sigmas: torch.Tensor) -> torch.Tensor:
    """Times `(L,)` whose noise-to-signal ratio sigma(t)/alpha(t) is each level: t(lambda = -2 log sigma)."""
    return process.t_from_log_snr(-2.0 * torch.log(sigmas.to(torch.float64)))


def stationary_variance_ratio(step: float, gamma: float, steps: int, sigma_min: float) -> float:
    """NCSNv2 Proposition 1, eq. 6: s_T^2 / sigma_i^2 after T steps of ALD on a point mass.

    `(1 - e/s^2)^(2T) (gamma^2 - 2e/(s^2 - s^2 (1 - e/s^2)^2)) + 2e/(s^2 - s^2 (1 - e/s^2)^2)` with
    `e` = `step` (NCSNv2's eps: update `x + alpha score + sqrt(2 alpha) z`, alpha = e sigma_i^2/s^2)
    and `s` = `sigma_min` = sigma_L, for 0 <= e < 2 s^2.
    """
    u = step / sigma_min**2
    limit = 2.0 / (2.0 - u)  # = 2e / (s^2 - s^2 (1 - u)^2), without the 0/0 at e = 0
    return (1.0 - u) ** (2 * steps) * (gamma**2 - limit) + limit


def ncsnv2_step_size(gamma: float, steps: int, sigma_min: float) -> float:
    """Technique 4: the step eps in (0, sigma_L^2) making eq. 6 closest to 1 (NCSNv2's convention).

    Scans log-spaced candidates, then refines the best bracket by golden-section search on
    |ratio - 1|. NCSN's eps (this module's `2 e` convention) is twice the result.
    """
    if gamma <= 1.0 or steps < 1 or sigma_min <= 0.0:
        raise ValueError(f"need gamma > 1, steps >= 1, sigma_min > 0; got {gamma}, {steps}, {sigma_min}")

    def gap(u: float) -> float:  # u = eps / sigma_L^2 in (0, 1)
        return abs(stationary_variance_ratio(u * sigma_min**2, gamma, steps, sigma_min) - 1.0)

    candidates = [10.0 ** (-9.0 + 9.0 * k / 900) for k in range(900)]  # 1e-9 .. <1
    best = min(range(len(candidates)), key=lambda k: gap(candidates[k]))
    lo = candidates[max(best - 1, 0)]
    hi = candidates[best + 1] if best + 1 < len(candidates) else 1.0 - 1e-12
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(100):
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if gap(a) <= gap(b):
            hi = b
        else:
            lo = a
    return 0.5 * (lo + hi) * sigma_min**2
