"""Diagonal Gaussian mixtures under a linear-Gaussian process (pure tensor functions).

For data `x0 ~ sum_k w_k N(mu_k, diag(s_k^2))` and `x_t = alpha x0 + sigma eps`, the marginal
is again a mixture (e.g. Karras et al. 2022, "Elucidating the Design Space...", App. B.3):

    p_t(x) = sum_k w_k N(x; alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)),

so the score is `sum_k r_k(x) (-(x - alpha mu_k) / (alpha^2 s_k^2 + sigma^2))` with the
responsibilities `r_k(x) = softmax_k(log w_k + log N_k(x))`, and `eps = -sigma score`.

Shapes: data is flattened to `(B, D)`; mixture parameters are `(K, D)` (or per-sample
`(B, K, D)`), log-weights `(K,)`; `alpha` and `sigma` are per-sample `(B,)`. Everything is
computed in `x`'s dtype and on `x`'s device; parameters are cast there.
"""

from __future__ import annotations

import math

import torch

from diffkit.core.shapes import append_dims


def component_log_joint(
    x: torch.Tensor, means: torch.Tensor, variances: torch.Tensor, log_weights: torch.Tensor
) -> torch.Tensor:
    """log w_k + log N(x; mu_k, diag(v_k)) for every component.

    Args:
        x: points `(B, D)`.
        means: component means `(K, D)` or `(B, K, D)`.
        variances: component variances, same shape as `means` (or broadcastable to it).
        log_weights: log mixture weights `(K,)` (normalised).

    Returns:
        `(B, K)` log joint densities in nats.
    """
    means = means.to(device=x.device, dtype=x.dtype)
    variances = variances.to(device=x.device, dtype=x.dtype)
    log_weights = log_weights.to(device=x.device, dtype=x.dtype)
    diff = x.unsqueeze(-2) - means  # (B, K, D)
    quad = (diff.square() / variances).sum(-1)
    log_det = torch.log(variances).sum(-1)
    return log_weights - 0.5 * (quad + log_det + x.shape[-1] * math.log(2.0 * math.pi))


def mixture_log_prob(
    x: torch.Tensor, means: torch.Tensor, variances: torch.Tensor, log_weights: torch.Tensor
) -> torch.Tensor:
    """Log-density `(B,)` of a diagonal Gaussian mixture at `x` `(B, D)` (logsumexp over K).

    Args:
        x: points `(B, D)`.
        means: `(K, D)` or `(B, K, D)`.
        variances: diagonal variances, same shape as `means`.
        log_weights: `(K,)`.

    Returns:
        `(B,)` log p(x) in nats.
    """
    return torch.logsumexp(component_log_joint(x, means, variances, log_weights), dim=-1)


def perturbed_components(
    means: torch.Tensor, stds: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means `alpha mu_k` and variances `alpha^2 s_k^2 + sigma^2` of the perturbed mixture.

    Args:
        means: data means `(K, D)`, already in the working dtype/device.
        stds: data standard deviations `(K, D)`.
        alpha: signal scale `(B,)`.
        sigma: noise scale `(B,)`.

    Returns:
        `(B, K, D)` means and `(B, K, D)` variances.
    """
    a = append_dims(alpha, 3)
    s = append_dims(sigma, 3)
    return a * means, (a * stds).square() + s.square()


def mixture_eps(
    x: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    log_weights: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """Exact noise prediction eps = -sigma grad log p_t(x) for the perturbed mixture.

    eps = sum_k r_k(x) sigma (x - alpha mu_k) / (alpha^2 s_k^2 + sigma^2); the responsibilities
    are a softmax of log joint densities, which is stable for well-separated components.

    Args:
        x: noisy points `(B, D)`.
        means: data means `(K, D)`.
        stds: data standard deviations `(K, D)`.
        log_weights: log mixture weights `(K,)`.
        alpha: signal scale `(B,)`.
        sigma: noise scale `(B,)`.

    Returns:
        `(B, D)` eps in `x`'s dtype.
    """
    means = means.to(device=x.device, dtype=x.dtype)
    stds = stds.to(device=x.device, dtype=x.dtype)
    alpha = alpha.to(device=x.device, dtype=x.dtype)
    sigma = sigma.to(device=x.device, dtype=x.dtype)
    means_t, variances_t = perturbed_components(means, stds, alpha, sigma)
    resp = torch.softmax(component_log_joint(x, means_t, variances_t, log_weights), dim=-1)  # (B, K)
    per_component = (x.unsqueeze(-2) - means_t) / variances_t  # (B, K, D) = -score_k
    return append_dims(sigma, 2) * (resp.unsqueeze(-1) * per_component).sum(-2)


def mixture_sample(
    n: int,
    means: torch.Tensor,
    stds: torch.Tensor,
    weights: torch.Tensor,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Draw `n` exact samples `(n, D)` of the mixture.

    Component ids come from `torch.multinomial` and the noise from `torch.randn`, both with
    `generator`, on the parameters' device and in the parameters' dtype; the result is cast to
    `dtype` afterwards, so float32 and float64 draws of the same seed agree up to rounding.

    Args:
        n: number of samples.
        means: `(K, D)`.
        stds: `(K, D)`.
        weights: `(K,)` non-negative (normalised by multinomial).
        generator: source of randomness (None: torch's default generator).
        dtype: dtype of the returned samples.

    Returns:
        `(n, D)` samples on the parameters' device.
    """
    ids = torch.multinomial(weights, n, replacement=True, generator=generator)
    noise = torch.randn((n, means.shape[-1]), generator=generator, device=means.device, dtype=means.dtype)
    return (means[ids] + stds[ids] * noise).to(dtype)
