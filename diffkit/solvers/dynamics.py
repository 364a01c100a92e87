"""Reverse-time dynamics of a linear-Gaussian process (pure tensor math).

Song et al. 2021, "Score-Based Generative Modeling through SDEs": for the forward SDE
`dx = f(t) x dt + g(t) dw`, the reverse SDE is `dx = [f x - g^2 score] dt + g dw_bar` (eq. 6)
and the probability-flow ODE is `dx = [f x - g^2 score / 2] dt` (eq. 13).
"""

from __future__ import annotations

import torch

from diffkit.core.model import Prediction, schedule_rates
from diffkit.core.process import NoiseProcess
from diffkit.core.shapes import append_dims


def reverse_drift(
    x: torch.Tensor,
    score: torch.Tensor,
    f: torch.Tensor,
    g2: torch.Tensor,
    *,
    score_weight: float = 1.0,
) -> torch.Tensor:
    """Reverse-time drift `f x - w g^2 score` (eq. 6 with w = 1; eq. 13 with w = 1/2).

    Args:
        x: state `(B, *dims)`.
        score: grad_x log p_t(x), same shape as `x`.
        f: drift coefficient f(t), 0-dim or `(B,)`, in `x`'s dtype.
        g2: squared diffusion g(t)^2, 0-dim or `(B,)`, in `x`'s dtype.
        score_weight: w = 1 for the reverse SDE, 1/2 for the probability-flow ODE.

    Returns:
        dx/dt `(B, *dims)` (t is the forward time; samplers integrate it backwards).
    """
    return append_dims(f, x.ndim) * x - score_weight * append_dims(g2, x.ndim) * score


def probability_flow_drift(process: NoiseProcess, prediction: Prediction, t: torch.Tensor) -> torch.Tensor:
    """The probability-flow drift dx/dt = alpha'(t) x0 + sigma'(t) eps `(B, *dims)` at 0-dim `t`.

    The same field as `f x - g^2 score / 2` (eq. 13), evaluated without its cancellation: on a flow
    path both of those terms are ~x / (1 - t) and lose ~1 / (1 - t) of float32 precision near t = 1.
    The rates are the sampler's process's, so a shifted process gets d/dt of its own time.
    """
    x0, eps = prediction.x0, prediction.eps
    d_alpha, d_sigma = schedule_rates(process, t)
    return d_alpha.to(x0.dtype) * x0 + d_sigma.to(x0.dtype) * eps


def euler_maruyama_step(
    x: torch.Tensor,
    score: torch.Tensor,
    f: torch.Tensor,
    g2: torch.Tensor,
    dt: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Euler–Maruyama step of the reverse SDE: `x + (f x - g^2 score) dt + g sqrt(|dt|) z` (eq. 6).

    Args:
        x: state `(B, *dims)` at time t.
        score: grad_x log p_t(x), same shape as `x`.
        f: f(t), 0-dim or `(B,)`, in the schedule dtype (float64); cast to `x`'s dtype here.
        g2: g(t)^2, same shape and dtype as `f`.
        dt: t_next - t (negative: the reverse SDE runs backwards in t), schedule dtype.
        noise: standard normal noise like `x`, or None to return the step's mean.

    Returns:
        the state `(B, *dims)` at t_next.
    """
    drift = reverse_drift(x, score, f.to(x.dtype), g2.to(x.dtype))
    x_next = x + drift * append_dims(dt.to(x.dtype), x.ndim)
    if noise is None:
        return x_next
    std = torch.sqrt(g2.clamp_min(0.0) * dt.abs())  # in the schedule dtype, then cast
    return x_next + append_dims(std.to(x.dtype), x.ndim) * noise


def gaussian_transition(
    alpha: torch.Tensor, sigma: torch.Tensor, log_snr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and variance of q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I) for s < t.

    Kingma et al. 2021 ("Variational Diffusion Models", sec. 3.2): `alpha_{t|s} = alpha_t /
    alpha_s` and `sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`, computed as
    `-sigma_t^2 expm1(lambda_t - lambda_s)` (no cancellation when s is close to t). On a
    discrete DDPM process with t, s consecutive knots, `alpha_{t|s}^2 = 1 - beta_t` and
    `sigma_{t|s}^2 = beta_t` (Ho et al. 2020, eq. 2).

    Args:
        alpha, sigma, log_snr: `(2,)` schedule values at (t, s), schedule dtype (float64).

    Returns:
        alpha_{t|s} and sigma_{t|s}^2, 0-dim, same dtype.
    """
    return alpha[0] / alpha[1], -sigma[0].square() * torch.expm1(log_snr[0] - log_snr[1])


def ancestral_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    log_snr: torch.Tensor,
    *,
    variance: str,
    noise: torch.Tensor | None = None,
    variance_interpolation: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample the posterior q(x_s | x_t, x0 = x0_hat) of a linear-Gaussian process, s < t.

    Ho et al. 2020, Alg. 2 / eq. 11, in the general form of any linear-Gaussian process:

        x_s = (x_t - sigma_{t|s}^2 / sigma_t eps) / alpha_{t|s} + std z,

    with `std^2 = sigma_{t|s}^2` ("beta", DDPM's sigma_t^2 = beta_t) or the posterior variance
    `sigma_{t|s}^2 sigma_s^2 / sigma_t^2` ("beta_tilde", DDPM eq. 7). The mean is the posterior
    mean with x0 replaced by the Tweedie estimate `(x_t - sigma_t eps) / alpha_t`.

    Args:
        x: state `(B, *dims)` at t.
        eps: predicted noise at (x, t), same shape.
        alpha, sigma, log_snr: `(2,)` schedule values at (t, s), schedule dtype; cast here.
        variance: "beta" or "beta_tilde" (ignored when `variance_interpolation` is given).
        noise: standard normal like `x`, or None for the posterior mean.
        variance_interpolation: a learned-variance model's v like `x`: then `std^2 = exp(v log beta
            + (1 - v) log beta_tilde)` (Nichol & Dhariwal 2021, eq. 15), computed in the schedule
            dtype as `std_beta^v std_beta_tilde^(1 - v)`, so v = 1 and v = 0 reproduce the fixed
            variances bit for bit.

    Returns:
        the state `(B, *dims)` at s.
    """
    alpha_ts, sigma_ts2 = gaussian_transition(alpha, sigma, log_snr)
    mean = (x - (sigma_ts2 / sigma[0]).to(x.dtype) * eps) / alpha_ts.to(x.dtype)
    if noise is None:
        return mean
    std_beta, std_tilde = sigma_ts2.sqrt(), sigma_ts2.sqrt() * sigma[1] / sigma[0]
    if variance_interpolation is not None:
        v = variance_interpolation.to(std_beta.dtype)
        std = std_beta.pow(v) * std_tilde.pow(1.0 - v)
    elif variance == "beta":
        std = std_beta
    elif variance == "beta_tilde":
        std = std_tilde
    else:
        raise ValueError(f"unknown variance {variance!r}; expected beta or beta_tilde")
    return mean + std.to(x.dtype) * noise


def reverse_diffusion_step(
    x: torch.Tensor,
    score: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    log_snr: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reverse-diffusion predictor of Song et al. 2021 (App. E, eq. 47), for s < t.

    With the forward discretisation `x_t = alpha_{t|s} x_s + sigma_{t|s} z` (f_i = (alpha_{t|s} - 1) x,
    G_i^2 = sigma_{t|s}^2), the reverse step is

        x_s = (2 - alpha_{t|s}) x_t + sigma_{t|s}^2 score(x_t, t) + sigma_{t|s} z,

    i.e. `x + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_t^2 - sigma_s^2) z` on VE (their Alg. 2)
    and `(2 - sqrt(1 - beta)) x + beta score + sqrt(beta) z` on VP (their Alg. 3).

    Args:
        x: state `(B, *dims)` at t.
        score: grad_x log p_t(x), same shape.
        alpha, sigma, log_snr: `(2,)` schedule values at (t, s), schedule dtype; cast here.
        noise: standard normal like `x`, or None for the mean.

    Returns:
        the state `(B, *dims)` at s.
    """
    alpha_ts, sigma_ts2 = gaussian_transition(alpha, sigma, log_snr)
    x_next = (2.0 - alpha_ts).to(x.dtype) * x + sigma_ts2.to(x.dtype) * score
    if noise is None:
        return x_next
    return x_next + sigma_ts2.sqrt().to(x.dtype) * noise
