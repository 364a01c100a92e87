"""EDM's scaled coordinates for every linear-Gaussian process (pure tensor functions).

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(EDM), write a process as `x = s(t) x_hat` with `x_hat = x0 + sigma_hat(t) n` (their eq. 4 and
Table 1). In diffkit's vocabulary `s = alpha` and the scaled noise level is

    sigma_s = sigma / alpha = exp(-log_snr / 2),        x_s = x / alpha,

and the probability-flow ODE (their eq. 4) becomes, for every process,

    d x_s / d sigma_s = (x_s - D(x_s; sigma_s)) / sigma_s,
    D(x_s; sigma_s) = E[x0 | x_t = alpha x_s]   (the model's x0 prediction at t(sigma_s)).

For VE (alpha = 1) this is exactly EDM; for VP it is the same ODE written in EDM's form. The
derivative equals the model's eps prediction (`x_s - D = sigma_s eps`), so an Euler step in
these coordinates is DDIM with eta = 0 and Heun's method adds its second-order correction.

Shapes: data `(B, *dims)` of any rank; per-sample scalars (alpha, sigma_s) are 0-dim or
`(B,)` and are broadcast with `append_dims`. Schedule quantities (log-SNR, sigma_s, gamma) are
computed in the caller's schedule dtype (float64 where available) and cast by the caller.
"""

from __future__ import annotations

import math

import torch

from diffkit.core.shapes import append_dims

#: EDM Alg. 2 line 4: the churn never more than doubles the variance, gamma <= sqrt(2) - 1
MAX_GAMMA = math.sqrt(2.0) - 1.0


def sigma_scaled(log_snr: torch.Tensor) -> torch.Tensor:
    """Scaled noise level sigma_s = sigma / alpha = exp(-log_snr / 2) (EDM's sigma), same shape.

    Args:
        log_snr: lambda = 2 log(alpha / sigma), any shape.

    Returns:
        sigma_s, same shape and dtype.
    """
    return torch.exp(-0.5 * log_snr)


def log_snr_of_sigma_scaled(sigma_s: torch.Tensor) -> torch.Tensor:
    """Inverse of `sigma_scaled`: lambda = -2 log sigma_s, same shape (sigma_s > 0)."""
    return -2.0 * torch.log(sigma_s)


def to_scaled(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """EDM coordinates x_s = x / alpha (Karras et al. 2022, eq. 4 with s(t) = alpha).

    Args:
        x: state `(B, *dims)`.
        alpha: signal scale, 0-dim or `(B,)`, in `x`'s dtype.

    Returns:
        `(B, *dims)`.
    """
    return x / append_dims(alpha, x.ndim)


def from_scaled(x_s: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Back to the process coordinates: x = alpha x_s.

    Args:
        x_s: scaled state `(B, *dims)`.
        alpha: signal scale, 0-dim or `(B,)`, in `x_s`'s dtype.

    Returns:
        `(B, *dims)`.
    """
    return x_s * append_dims(alpha, x_s.ndim)


def ode_derivative(x_s: torch.Tensor, denoised: torch.Tensor, sigma_s: torch.Tensor) -> torch.Tensor:
    """dx_s/dsigma_s = (x_s - D) / sigma_s of the probability-flow ODE (Karras et al. 2022, Alg. 1 l. 4).

    Args:
        x_s: scaled state `(B, *dims)`.
        denoised: D(x_s; sigma_s), the x0 prediction, `(B, *dims)`.
        sigma_s: scaled noise level, 0-dim or `(B,)`, in `x_s`'s dtype (> 0).

    Returns:
        `(B, *dims)` derivative (equal to the eps prediction).
    """
    return (x_s - denoised) / append_dims(sigma_s, x_s.ndim)


def euler_step(x_s: torch.Tensor, d: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Euler step x_s + h d with h = sigma_s_next - sigma_s (Karras et al. 2022, Alg. 1 line 5).

    Args:
        x_s: scaled state `(B, *dims)` at sigma_s.
        d: derivative at `(x_s, sigma_s)`, `(B, *dims)`.
        h: step in sigma_s (negative when denoising), 0-dim or `(B,)`, in `x_s`'s dtype; form
            the difference in the schedule dtype before casting.

    Returns:
        `(B, *dims)` scaled state at sigma_s + h.
    """
    return x_s + append_dims(h, x_s.ndim) * d


def heun_correction(
    x_s: torch.Tensor, d: torch.Tensor, d_next: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """Trapezoidal (Heun) step x_s + h (d + d_next) / 2 (Karras et al. 2022, Alg. 1 line 8).

    Args:
        x_s: scaled state `(B, *dims)` at sigma_s.
        d: derivative at the start, `(B, *dims)`.
        d_next: derivative at the Euler prediction `euler_step(x_s, d, h)`, `(B, *dims)`.
        h: step in sigma_s, 0-dim or `(B,)`, in `x_s`'s dtype.

    Returns:
        `(B, *dims)` scaled state at sigma_s + h.
    """
    return euler_step(x_s, 0.5 * (d + d_next), h)


def churn_gamma(
    sigma_s: torch.Tensor, *, s_churn: float, n_steps: int, s_tmin: float, s_tmax: float
) -> torch.Tensor:
    """Churn factor gamma_i = min(S_churn / N, sqrt(2) - 1) on [S_tmin, S_tmax], else 0 (Alg. 2 l. 4).

    Args:
        sigma_s: scaled noise level at the step start, 0-dim (schedule dtype).
        s_churn: S_churn >= 0, the total churn over the N steps.
        n_steps: N, the number of steps of the grid.
        s_tmin, s_tmax: the sigma_s range in which churn is applied (inclusive).

    Returns:
        gamma, same shape and dtype as `sigma_s` (a tensor, so no host sync is needed).
    """
    gamma = min(s_churn / n_steps, MAX_GAMMA)
    inside = (sigma_s >= s_tmin) & (sigma_s <= s_tmax)
    return torch.where(inside, torch.full_like(sigma_s, gamma), torch.zeros_like(sigma_s))


def churn_sigma(sigma_s: torch.Tensor, gamma: torch.Tensor, sigma_s_max: torch.Tensor) -> torch.Tensor:
    """Raised noise level sigma_hat = min(sigma_s (1 + gamma), sigma_s(t_max)) (Alg. 2 line 5).

    The cap keeps sigma_hat inside the process range, so the model is evaluated at the noise
    level the churned state really has (EDM's unbounded sigma has no t_max).

    Args:
        sigma_s: scaled noise level, 0-dim or `(B,)`.
        gamma: churn factor, same shape.
        sigma_s_max: sigma_s at the process's t_max, same shape or 0-dim.

    Returns:
        sigma_hat >= sigma_s, same shape.
    """
    return torch.minimum(sigma_s * (1.0 + gamma), sigma_s_max)


def churn_noise_std(sigma_s: torch.Tensor, sigma_hat: torch.Tensor) -> torch.Tensor:
    """Std sqrt(sigma_hat^2 - sigma_s^2) of the noise that lifts x_s to sigma_hat (Alg. 2 line 6)."""
    return (sigma_hat.square() - sigma_s.square()).clamp_min(0.0).sqrt()
