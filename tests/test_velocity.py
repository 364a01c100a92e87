"""The built-in `velocity` parameterization: u = dx_t/dt = alpha' x0 + sigma' eps (flow matching).

With x = alpha x0 + sigma eps and u = alpha' x0 + sigma' eps, the 2x2 system gives
eps = (alpha u - alpha' x) / D and x0 = (sigma' x - sigma u) / D, D = alpha sigma' - sigma alpha'.
On `flow` (alpha = 1 - t, sigma = t) D = 1: eps = x + (1 - t) u, x0 = x - t u, u = eps - x0.
The oracles' velocity is checked against the Gaussian-mixture closed form with the rates written
by hand for each process, and against the continuity equation of the exact marginal p_t.
"""

from __future__ import annotations

import math

import pytest
import torch

import diffkit
from diffkit.core import parameterization as param
from diffkit.core.model import Prediction
from diffkit.core.shapes import append_dims

SAMPLERS = ("ddim", "dpmpp-2m", "heun", "em", "unipc")


def _rates_by_hand(name: str, process: diffkit.NoiseProcess, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """alpha, sigma, alpha', sigma' `(B,)` of each process, from its closed form."""
    if name == "vp":  # beta(t) = 0.1 + 19.9 t, alpha = exp(-int beta / 2), sigma^2 = 1 - alpha^2
        beta = 0.1 + 19.9 * t
        alpha = torch.exp(-0.5 * (0.1 * t + 0.5 * 19.9 * t**2))
        sigma = torch.sqrt(1 - alpha**2)
        return alpha, sigma, -0.5 * beta * alpha, 0.5 * beta * alpha**2 / sigma
    if name == "ve":  # sigma = sigma_min (sigma_max / sigma_min)^t
        ratio = process.sigma_max / process.sigma_min
        sigma = process.sigma_min * ratio**t
        return torch.ones_like(t), sigma, torch.zeros_like(t), sigma * math.log(ratio)
    if name == "flow":
        return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
    if name == "flow-cosine":
        h = 0.5 * math.pi
        return torch.cos(h * t), torch.sin(h * t), -h * torch.sin(h * t), h * torch.cos(h * t)
    raise AssertionError(name)


def _mixture_velocity(model, x: torch.Tensor, alpha, sigma, d_alpha, d_sigma) -> torch.Tensor:
    """sum_k r_k(x) (alpha' E[x0 | x, k] + sigma' E[eps | x, k]) for diagonal Gaussian components.

    Component k, N(mu_k, s_k^2), with V = alpha^2 s_k^2 + sigma^2: E[x0 | x, k] = mu_k + alpha s_k^2
    (x - alpha mu_k) / V and E[eps | x, k] = sigma (x - alpha mu_k) / V; r_k the posterior weights.
    """
    mixture = model.mixture
    mu, s2 = mixture.means.double(), mixture.stds.double() ** 2  # (K, D)
    a, s, da, ds = (append_dims(v, 3) for v in (alpha, sigma, d_alpha, d_sigma))
    var = a**2 * s2 + s**2  # (B, K, D)
    diff = x.unsqueeze(1) - a * mu
    log_joint = mixture.log_weights.double() - 0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
    r = torch.softmax(log_joint, dim=-1).unsqueeze(-1)  # (B, K, 1)
    x0_k = mu + a * s2 * diff / var
    eps_k = s * diff / var
    return (r * (da * x0_k + ds * eps_k)).sum(1)


def test_conversions_solve_the_two_by_two_system() -> None:
    """For any alpha, sigma, rates with D != 0: (x0, eps) -> (x, u) -> (x0, eps) recovers both."""
    g = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(64, 5, generator=g, dtype=torch.float64),
        torch.randn(64, 5, generator=g, dtype=torch.float64),
    )
    alpha, sigma = (
        torch.rand(64, 1, generator=g, dtype=torch.float64) + 0.05,
        torch.rand(64, 1, generator=g).double() + 0.05,
    )
    d_alpha, d_sigma = (
        torch.randn(64, 1, generator=g, dtype=torch.float64),
        torch.randn(64, 1, generator=g).double(),
    )
    x, u = alpha * x0 + sigma * eps, d_alpha * x0 + d_sigma * eps
    assert float(param.velocity_determinant(alpha, sigma, d_alpha, d_sigma).abs().min()) > 1e-4
    torch.testing.assert_close(
        param.eps_from_velocity(x, u, alpha, sigma, d_alpha, d_sigma), eps, rtol=0, atol=1e-8
    )
    torch.testing.assert_close(
        param.x0_from_velocity(x, u, alpha, sigma, d_alpha, d_sigma), x0, rtol=0, atol=1e-8
    )
    target = diffkit.VelocityPrediction().target(x0, eps, alpha, sigma, d_alpha, d_sigma)
    torch.testing.assert_close(target, u, rtol=0, atol=0)


def test_flow_closed_forms(registry: diffkit.Registry) -> None:
    """On flow: u = eps - x0, eps = x + (1 - t) u, x0 = x - t u (Liu et al. 2023)."""
    process = registry.build("process", "flow", {})
    g = torch.Generator().manual_seed(1)
    x, u = (
        torch.randn(16, 3, generator=g, dtype=torch.float64),
        torch.randn(16, 3, generator=g, dtype=torch.float64),
    )
    t = torch.linspace(0.01, 0.99, 16, dtype=torch.float64)
    alpha, sigma = append_dims(process.alpha(t), 2), append_dims(process.sigma(t), 2)
    p = Prediction("velocity", u, x, alpha, sigma, t=t, process=process)
    tt = append_dims(t, 2)
    torch.testing.assert_close(p.eps, x + (1 - tt) * u, rtol=0, atol=1e-12)
    torch.testing.assert_close(p.x0, x - tt * u, rtol=0, atol=1e-12)
    torch.testing.assert_close(p.eps - p.x0, u, rtol=0, atol=1e-12)
    assert p.velocity is u and isinstance(p.parameterization, diffkit.VelocityPrediction)


@pytest.mark.parametrize("name", ["vp", "ve", "flow", "flow-cosine"])
@pytest.mark.parametrize("model_name", ["gmm:ring8", "gmm:d64"])
def test_oracle_velocity_is_the_mixture_closed_form(
    registry: diffkit.Registry, name: str, model_name: str
) -> None:
    process = registry.build("process", name, {})
    oracle = registry.build("model", model_name, {}, process)
    dim = math.prod(oracle.data_shape)
    t = torch.linspace(process.t_min, process.t_max, 24, dtype=torch.float64)[1:-1]
    alpha, sigma, d_alpha, d_sigma = _rates_by_hand(name, process, t)
    torch.testing.assert_close(process.alpha(t), alpha, rtol=1e-10, atol=0)
    torch.testing.assert_close(process.sigma(t), sigma, rtol=1e-10, atol=0)
    g = torch.Generator().manual_seed(2)
    x0 = oracle.sample_data(t.shape[0], generator=g, dtype=torch.float64).reshape(-1, dim)
    x = append_dims(alpha, 2) * x0 + append_dims(sigma, 2) * torch.randn(
        x0.shape, generator=g, dtype=torch.float64
    )
    exact = _mixture_velocity(oracle, x, alpha, sigma, d_alpha, d_sigma)
    ours = oracle.predict(x.reshape(-1, *oracle.data_shape), t).velocity.reshape(-1, dim)
    scale = float(exact.abs().max())
    assert scale > 0.1
    torch.testing.assert_close(ours, exact, rtol=1e-8, atol=1e-8 * scale)


@pytest.mark.parametrize("name", ["vp", "flow"])
def test_oracle_velocity_satisfies_the_continuity_equation(registry: diffkit.Registry, name: str) -> None:
    """d/dt log p_t + div u + u . grad log p_t = 0 for the exact marginal p_t of gmm:ring8 (autograd)."""
    process = registry.build("process", name, {})
    oracle = registry.build("model", "gmm:ring8", {}, process)
    g = torch.Generator().manual_seed(3)
    t = torch.linspace(0.1, 0.9, 8, dtype=torch.float64)
    x = (3.0 * torch.randn(8, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    u = oracle.predict(x, t).velocity
    div = sum(torch.autograd.grad(u[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
    log_p = oracle.log_prob(x, t)
    grad_x = torch.autograd.grad(log_p.sum(), x)[0]
    h = 1e-4  # fourth-order central difference in t: the schedule's t-dependence is what is checked
    log_p_at = [oracle.log_prob(x.detach(), t + k * h) for k in (-2, -1, 1, 2)]
    d_t = (log_p_at[0] - 8 * log_p_at[1] + 8 * log_p_at[2] - log_p_at[3]) / (12 * h)
    residual = d_t + div + (u * grad_x).sum(1)
    assert float(d_t.abs().max()) > 0.1
    torch.testing.assert_close(residual.detach(), torch.zeros_like(t), rtol=0, atol=1e-6)


def _velocity_network(oracle: diffkit.ScoreModel) -> diffkit.ScoreModel:
    """The oracle's exact velocity as a network of kind "velocity" (resolved by name)."""

    def network(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        return oracle.prediction(x, t, cond).velocity

    return diffkit.ScoreModel(network, kind="velocity", process=oracle.process, data_shape=oracle.data_shape)


@pytest.mark.parametrize("name", ["vp", "flow"])
def test_velocity_network_predicts_every_target_of_the_oracle(registry: diffkit.Registry, name: str) -> None:
    process = registry.build("process", name, {})
    oracle = registry.build("model", "gmm:ring8", {}, process)
    model = _velocity_network(oracle)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.linspace(process.t_min, process.t_max, 32, dtype=torch.float64)
    ours, exact = model.predict(x, t), oracle.predict(x, t)
    scale = exact.eps.abs().max()
    for target in ("eps", "x0", "v", "velocity"):
        torch.testing.assert_close(
            getattr(ours, target), getattr(exact, target), rtol=1e-9, atol=1e-9 * scale
        )
    assert model.kind == "velocity" and ours.velocity is ours.output


@pytest.mark.parametrize("solver", SAMPLERS)
def test_velocity_network_samples_like_the_oracle_on_flow(registry: diffkit.Registry, solver: str) -> None:
    process = registry.build("process", "flow", {})
    oracle = registry.build("model", "gmm:ring8", {}, process)
    model = _velocity_network(oracle)
    x_init = process.prior_sample((64, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = registry.build("grid", "log-snr", {})(process, 12)
    sampler = registry.build("sampler", solver, {})
    runs = [
        sampler(m, process, x_init, grid, generator=torch.Generator().manual_seed(2)).x
        for m in (oracle, model)
    ]
    assert runs[0].abs().max() > 0.5  # real samples, not a collapse to zero
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=1e-9)


def test_velocity_is_registered_and_needs_the_rates(registry: diffkit.Registry) -> None:
    assert isinstance(registry.build("parameterization", "velocity", {}), diffkit.VelocityPrediction)
    x = torch.zeros(2, 3, dtype=torch.float64)
    one = torch.ones(2, 1, dtype=torch.float64)
    bare = Prediction("velocity", x, x, one, one)  # no process and times: the rates are unknown
    with pytest.raises(ValueError, match="this prediction has no process and times"):
        _ = bare.eps
