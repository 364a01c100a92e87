"""The discrete variational bound L_vlb and improved DDPM's hybrid objective with learned variance.

For a DDPM chain with alpha_bar_1..alpha_bar_N at knots i = 1..N (alpha_bar_0 = 1),
beta_i = 1 - alpha_bar_i / alpha_bar_{i-1} and (Ho et al. 2020, eqs. 5-7)

    L_vlb = L_0 + sum_{i=2..N} L_{i-1} + L_N,
    L_{i-1} = KL(q(x_{i-1} | x_i, x0) || p(x_{i-1} | x_i)),   L_N = KL(q(x_N | x0) || N(0, I)),
    L_0 = -log p(x0 | x_1)   (discretized Gaussian for K-level data in [-1, 1], eq. 13),

with the posterior q(x_{i-1} | x_i, x0) = N(c0_i x0 + ct_i x_i, beta_tilde_i), c0_i =
sqrt(alpha_bar_{i-1}) beta_i / (1 - alpha_bar_i), ct_i = sqrt(1 - beta_i)(1 - alpha_bar_{i-1}) /
(1 - alpha_bar_i), beta_tilde_i = beta_i (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i). The model's
p(x_{i-1} | x_i) has mean c0_i x0_theta + ct_i x_i and variance "beta" (beta_i), "beta_tilde"
(beta_tilde_i, with beta_tilde_1 = 0 replaced by beta_tilde_2 as in the reference code) or
"learned" (Nichol & Dhariwal 2021, eq. 15): `Sigma = exp(v log beta_i + (1 - v) log beta_tilde_i)`.

Output convention for a learned variance: the network returns twice x's channels along dim 1,
`cat([mean_output, v], dim=1)`; `mean_output` means the model's `kind` (eps, x0, v or score) and
`v` is the raw interpolation value per dimension (eq. 15, not squashed; v = 0 is beta_tilde and
v = 1 is beta). All terms are in nats, summed over the data dimensions.

The chain is `diffkit.losses.chain.DiscreteSchedule.of(process, N)`: a discrete process's own
knots, or the N-step DDPM chain of a continuous VP-family SDE (`vp`, `subvp`), whose model is
called at the time where its process has the chain's SNR.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch

from diffkit.core.model import Prediction, ScoreModel
from diffkit.core.shapes import append_dims, sum_except_batch
from diffkit.losses.chain import DiscreteSchedule
from diffkit.losses.dsm import perturb
from diffkit.losses.gaussian import (
    BIN_HALF_WIDTH,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
)

Variance = Literal["beta", "beta_tilde", "learned"]
Decoder = Literal["discretized", "gaussian"]


def _at(table: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[index - 1] as `(B, 1, ..., 1)` in `like`'s dtype and device."""
    return append_dims(table.to(like.device)[index - 1], like.ndim).to(like.dtype)


def model_log_variance(
    schedule: DiscreteSchedule, index: torch.Tensor, like: torch.Tensor, variance: Variance, v: Any = None
) -> torch.Tensor:
    """log Sigma_theta at knots `index` `(B,)`: fixed, or eq. 15 of Nichol & Dhariwal 2021 from `v`."""
    log_beta = _at(schedule.beta.log(), index, like)
    log_tilde = _at(schedule.log_beta_tilde_clipped, index, like)
    if variance == "beta":
        return log_beta
    if variance == "beta_tilde":
        return log_tilde
    if variance == "learned":
        return v * log_beta + (1.0 - v) * log_tilde
    raise ValueError(f"variance must be one of beta, beta_tilde, learned; got {variance!r}")


def step_term(
    schedule: DiscreteSchedule,
    index: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    x0_hat: torch.Tensor,
    log_var: torch.Tensor,
    *,
    decoder: Decoder = "discretized",
    half_width: float = BIN_HALF_WIDTH,
) -> torch.Tensor:
    """L_{i-1} `(B,)`: KL(q(x_{i-1}|x_i,x0) || p(x_{i-1}|x_i)) for i >= 2, -log p(x0|x_1) for i = 1.

    Ho et al. 2020, eq. 5 (KL terms) and eq. 13 (decoder); `decoder="gaussian"` uses the
    continuous density N(x0; mu_theta, Sigma_theta) for real-valued data instead.

    Args:
        schedule: the discrete schedule.
        index: knots i `(B,)` (long, 1..N).
        x0, x_t, x0_hat: data, noisy data at knot i, and the model's x0 estimate, `(B, *dims)`.
        log_var: model log-variance, broadcastable to `(B, *dims)`.
        decoder: "discretized" (K-level data in [-1, 1]) or "gaussian".
        half_width: the discretized decoder's half bin, 1 / (K - 1) (8-bit data: 1/255).

    Returns:
        per-sample term in nats `(B,)`.
    """
    c0, ct = _at(schedule.coef_x0, index, x0), _at(schedule.coef_xt, index, x0)
    mean_q, mean_p = c0 * x0 + ct * x_t, c0 * x0_hat + ct * x_t
    kl = normal_kl(mean_q, _at(schedule.log_beta_tilde_clipped, index, x0), mean_p, log_var)
    if decoder == "discretized":
        nll = -discretized_gaussian_log_likelihood(x0, mean_p, log_var.expand_as(x0), half_width=half_width)
    elif decoder == "gaussian":
        nll = -gaussian_log_likelihood(x0, mean_p, log_var)
    else:
        raise ValueError(f"decoder must be 'discretized' or 'gaussian', got {decoder!r}")
    first = append_dims(index == 1, x0.ndim)
    return sum_except_batch(torch.where(first, nll, kl))


def prior_term(schedule: DiscreteSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_N = KL(q(x_N | x0) || N(0, I)) `(B,)` in nats (Ho et al. 2020, eq. 5)."""
    alpha_bar = float(schedule.alpha_bar[-1])
    mean = math.sqrt(alpha_bar) * x0
    log_var = torch.full_like(x0, math.log1p(-alpha_bar))
    return sum_except_batch(normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0)))


def _evaluate(
    model: ScoreModel,
    x0: torch.Tensor,
    schedule: DiscreteSchedule,
    index: torch.Tensor,
    variance: Variance,
    generator: Any,
    cond: Any,
) -> tuple[Prediction, torch.Tensor, torch.Tensor, Any]:
    """Noise x0 to knots `index`, run the model at t_i; returns (prediction, x_i, eps, v or None).

    `x_i` is the chain's state `sqrt(alpha_bar_i) x0 + sqrt(1 - alpha_bar_i) eps`; the model sees
    `scale_i x_i` (the same point in its own process's units). A learned variance comes from the
    model itself (`ScoreModel(learned_variance=True)` splits the network output), so the losses
    never re-split it.
    """
    t = schedule.times.to(x0.device)[index - 1]
    prediction, eps = perturb(model, x0, t, generator, cond)
    x_i = prediction.x if schedule.scale is None else prediction.x / _at(schedule.scale, index, x0)
    if variance != "learned":
        return prediction, x_i, eps, None
    if prediction.variance_interpolation is None:
        raise ValueError("variance='learned' needs a model built with ScoreModel(learned_variance=True)")
    return prediction, x_i, eps, prediction.variance_interpolation


def _knot_term(
    model: ScoreModel,
    x0: torch.Tensor,
    schedule: DiscreteSchedule,
    index: torch.Tensor,
    variance: Variance,
    decoder: Decoder,
    generator: Any,
    cond: Any,
    half_width: float = BIN_HALF_WIDTH,
) -> torch.Tensor:
    """L_{i-1} `(B,)` at knots `index`: one model call on a fresh x_i ~ q(x_i | x0)."""
    prediction, x_i, _, v = _evaluate(model, x0, schedule, index, variance, generator, cond)
    log_var = model_log_variance(schedule, index, x0, variance, v)
    return step_term(schedule, index, x0, x_i, prediction.x0, log_var, decoder=decoder, half_width=half_width)


def vlb_terms(
    model: ScoreModel,
    x0: torch.Tensor,
    *,
    variance: Variance = "beta_tilde",
    decoder: Decoder = "discretized",
    generator: torch.Generator | None = None,
    cond: Any = None,
    num_steps: int | None = None,
    half_width: float = BIN_HALF_WIDTH,
) -> torch.Tensor:
    """Every term of L_vlb `(B, N + 1)`: L_0, L_1, ..., L_{N-1}, then L_N (Ho et al. 2020, eq. 5).

    One fresh x_i ~ q(x_i | x0) per knot (N model calls); the row sum is an unbiased estimate of
    the bound on -log p_theta(x0) in nats. The chain is `DiscreteSchedule.of(model.process,
    num_steps)`: a continuous VP or sub-VP model is evaluated on its N-step DDPM chain.
    `half_width` is the discretized decoder's half bin, `1 / (K - 1)` for K-level data.
    """
    schedule = DiscreteSchedule.of(model.process, num_steps)
    terms = []
    for i in range(1, len(schedule.alpha_bar) + 1):
        index = torch.full((x0.shape[0],), i, dtype=torch.long, device=x0.device)
        terms.append(_knot_term(model, x0, schedule, index, variance, decoder, generator, cond, half_width))
    terms.append(prior_term(schedule, x0))
    return torch.stack(terms, dim=1)


def _random_knots(schedule: DiscreteSchedule, x0: torch.Tensor, generator: Any) -> torch.Tensor:
    """i ~ U{1..N} `(B,)`."""
    n = len(schedule.alpha_bar)
    return torch.randint(1, n + 1, (x0.shape[0],), generator=generator, device=x0.device)


def vlb(
    model: ScoreModel,
    x0: torch.Tensor,
    *,
    variance: Variance = "beta_tilde",
    decoder: Decoder = "discretized",
    generator: torch.Generator | None = None,
    cond: Any = None,
) -> torch.Tensor:
    """Training estimate of L_vlb `(B,)`: `N L_{i-1} + L_N` with i ~ U{1..N} (Ho et al. 2020, eq. 5).

    Unbiased for the full bound `L_0 + sum L_{i-1} + L_N` in nats (one model call per sample).
    """
    schedule = DiscreteSchedule.of(model.process)
    index = _random_knots(schedule, x0, generator)
    term = _knot_term(model, x0, schedule, index, variance, decoder, generator, cond)
    return len(schedule.alpha_bar) * term + prior_term(schedule, x0)


def hybrid(
    model: ScoreModel,
    x0: torch.Tensor,
    *,
    lam: float = 1e-3,
    decoder: Decoder = "discretized",
    generator: torch.Generator | None = None,
    cond: Any = None,
) -> torch.Tensor:
    """L_hybrid = L_simple + lambda L_vlb with a learned variance (Nichol & Dhariwal 2021, eq. 16).

    The network outputs `cat([mean_output, v], dim=1)` (module docstring). L_simple (Ho et al.
    2020, eq. 14) is the eps-MSE averaged over dimensions; L_vlb is estimated as `N L_{i-1} + L_N`
    at the same knot i ~ U{1..N}, per data dimension (divided by D, matching L_simple's mean),
    with a stop-gradient on the mean so that L_vlb trains only the variance (their sec. 3.1).
    With N = 1000 and lambda = 0.001 this weights the per-knot KL like the reference code.

    Returns:
        per-sample losses `(B,)`.
    """
    schedule = DiscreteSchedule.of(model.process)
    index = _random_knots(schedule, x0, generator)
    prediction, x_i, eps, v = _evaluate(model, x0, schedule, index, "learned", generator, cond)
    simple = (prediction.eps - eps).square().flatten(1).mean(1)
    frozen = dataclasses.replace(prediction, output=prediction.output.detach())
    log_var = model_log_variance(schedule, index, x0, "learned", v)
    term = step_term(schedule, index, x0, x_i, frozen.x0, log_var, decoder=decoder)
    bound = len(schedule.alpha_bar) * term + prior_term(schedule, x0)
    return simple + lam * bound / x0[0].numel()
