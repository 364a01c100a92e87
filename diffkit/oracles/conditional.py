"""Class-conditional Gaussian mixtures: exact conditional eps and time-dependent classifier.

A class-conditional mixture oracle takes its classes to be its components, `p(x0 | y) =
N(mu_y, diag(s_y^2))` with class prior `w_y`. Under `x_t = alpha x0 + sigma eps` the
conditional marginal is the single perturbed component `N(alpha mu_y, diag(alpha^2 s_y^2 +
sigma^2))`, so the conditional eps is closed-form, and the exact time-dependent classifier
`p_t(y | x)` of classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on
Image Synthesis", sec. 4) is the component responsibility.

Shapes: data flattened to `(B, D)`; means and stds `(K, D)`; log-weights `(K,)`; alpha, sigma
`(B,)`; labels `(B,)` long, with `NULL_LABEL` (-1) meaning "no condition" (the null token of
classifier-free guidance, Ho & Salimans 2022). -1 is the oracles' null label and the default of
`ScoreModel.null_label`; the trained networks of `diffkit.nn` use their own, `num_classes`.
"""

from __future__ import annotations

import torch

from diffkit.core.shapes import append_dims
from diffkit.oracles.mixture import component_log_joint, mixture_eps, perturbed_components

NULL_LABEL = -1


def class_log_posterior(
    x: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    log_weights: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """Exact log p_t(y | x) for every class: log-softmax of the perturbed log joints.

    Args:
        x: noisy points `(B, D)`.
        means: data means `(K, D)`.
        stds: data standard deviations `(K, D)`.
        log_weights: normalised log class prior `(K,)`.
        alpha: signal scale `(B,)`.
        sigma: noise scale `(B,)`.

    Returns:
        `(B, K)` log posteriors in nats (differentiable in `x`).
    """
    means = means.to(device=x.device, dtype=x.dtype)
    stds = stds.to(device=x.device, dtype=x.dtype)
    means_t, variances_t = perturbed_components(means, stds, alpha.to(x.dtype), sigma.to(x.dtype))
    return torch.log_softmax(component_log_joint(x, means_t, variances_t, log_weights), dim=-1)


def conditional_eps(
    x: torch.Tensor,
    labels: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    log_weights: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """Exact eps of p_t(x | y): `sigma (x - alpha mu_y) / (alpha^2 s_y^2 + sigma^2)`.

    Rows whose label is `NULL_LABEL` get the unconditional mixture eps instead.

    Args:
        x: noisy points `(B, D)`.
        labels: class labels `(B,)` in `[0, K)` or `NULL_LABEL`.
        means, stds: `(K, D)`.
        log_weights: `(K,)`.
        alpha, sigma: `(B,)`.

    Returns:
        `(B, D)` eps in `x`'s dtype.
    """
    means = means.to(device=x.device, dtype=x.dtype)
    stds = stds.to(device=x.device, dtype=x.dtype)
    alpha, sigma = alpha.to(x.dtype), sigma.to(x.dtype)
    labels = labels.to(x.device)
    known = labels != NULL_LABEL
    index = torch.where(known, labels, torch.zeros_like(labels))
    a, s = append_dims(alpha, 2), append_dims(sigma, 2)
    variance = (a * stds[index]).square() + s.square()
    eps_cond = s * (x - a * means[index]) / variance
    eps_uncond = mixture_eps(x, means, stds, log_weights, alpha, sigma)
    return torch.where(append_dims(known, 2), eps_cond, eps_uncond)
