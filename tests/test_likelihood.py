"""Likelihoods against the oracle's closed forms: PF-ODE change of variables, Hutchinson, DDPM bound."""

from __future__ import annotations

import math

import pytest
import torch

from diffkit.eval.log_likelihood import (
    dequantization_offset_nats,
    dequantize,
    exact_divergence,
    hutchinson_divergence,
    ode_log_likelihood,
    summarize,
)
from diffkit.losses.vlb import vlb_terms
from diffkit.plugins.gmm import GaussianMixture, OracleModel

CASES = [("gmm:ring8", 48), ("gmm:d64", 4)]


def _oracle(registry, sde: str, name: str, n: int):  # noqa: ANN001, ANN202
    process = registry.build("process", sde, {})
    model = registry.build("model", name, {}, process)
    x = model.sample_data(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return process, model, x


def test_divergences_of_a_linear_field_are_its_trace() -> None:
    matrix = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0], [0.0, 0.0, 4.0]], dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    out = x @ matrix.T
    assert torch.allclose(exact_divergence(out, x), torch.full((5,), 5.0, dtype=torch.float64))
    signs = (2 * torch.randint(0, 2, (4000, 5, 3), generator=torch.Generator().manual_seed(1)) - 1).double()
    assert torch.allclose(
        hutchinson_divergence(out, x, signs), torch.full((5,), 5.0, dtype=torch.float64), atol=0.1
    )


@pytest.mark.parametrize("sde", ["vp", "subvp", "ve"])
@pytest.mark.parametrize(("name", "n"), CASES)
def test_exact_divergence_matches_the_closed_form(registry, sde: str, name: str, n: int) -> None:  # noqa: ANN001
    process, model, x = _oracle(registry, sde, name, n)
    dim = x[0].numel()
    exact_t_min = model.log_prob(x, process.t_min)
    result = ode_log_likelihood(model, process, x, rtol=1e-5, atol=1e-5)
    # the bar: mean and worst sample within 0.01 nats/dim of log p_{t_min}
    assert float((result.logp - exact_t_min).mean().abs()) / dim < 0.01
    assert float((result.logp - exact_t_min).abs().max()) / dim < 0.02  # VE ring8 worst: prior mismatch
    # with the true p_T as the prior the only error left is the solver's
    true_prior = ode_log_likelihood(
        model, process, x, rtol=1e-6, atol=1e-6, prior_logp=lambda z: model.log_prob(z, process.t_max)
    )
    assert float((true_prior.logp - exact_t_min).abs().max()) / dim < 1e-3
    # and p_{t_min} is within 0.01 nats/dim of the data density p_0 on average
    assert float((result.logp - model.data_log_prob(x)).mean().abs()) / dim < 0.01
    assert result.nfe > 0 and torch.allclose(result.logp, result.prior_logp + result.delta)


@pytest.mark.parametrize("sde", ["vp", "subvp", "ve"])
@pytest.mark.parametrize(
    ("name", "n", "probe"), [("gmm:ring8", 256, "gaussian"), ("gmm:d64", 64, "rademacher")]
)
def test_hutchinson_is_within_the_reported_standard_error(registry, sde, name, n, probe) -> None:  # noqa: ANN001
    process, model, x = _oracle(registry, sde, name, n)
    dim = x[0].numel()
    result = ode_log_likelihood(
        model, process, x, divergence="hutchinson", probe=probe, generator=torch.Generator().manual_seed(3)
    )
    summary = summarize(result.logp, dim)
    diff = result.logp - model.log_prob(x, process.t_min)
    assert abs(float(diff.mean())) <= summary.stderr
    assert abs(float(diff.mean())) <= 3 * float(diff.std()) / math.sqrt(n)


def test_probes_are_fixed_by_the_generator(registry) -> None:  # noqa: ANN001
    process, model, x = _oracle(registry, "vp", "gmm:ring8", 16)

    def run(seed: int, probes: int = 1) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return ode_log_likelihood(
            model, process, x, divergence="hutchinson", num_probes=probes, generator=generator
        ).logp

    assert torch.equal(run(7), run(7)) and not torch.equal(run(7), run(8))
    with pytest.raises(ValueError, match="Generator"):
        ode_log_likelihood(model, process, x, divergence="hutchinson")


def test_summary_units_and_dequantization_offset() -> None:
    logp = torch.tensor([-3.0, -5.0], dtype=torch.float64)
    summary = summarize(logp, dim=4)
    assert summary.mean_logp == -4.0 and summary.stderr == pytest.approx(math.sqrt(2.0) / math.sqrt(2))
    assert summary.nats_per_dim == 1.0 and summary.bits_per_dim == pytest.approx(1.0 / math.log(2))
    # 8-bit pixels: y = (x + u - 1/2) / 127.5 - 1 has Jacobian 1/127.5 per dim
    offset = dequantization_offset_nats(4)
    assert offset == pytest.approx(4 * math.log(127.5))
    shifted = summarize(logp, dim=4, offset_nats=offset)
    assert shifted.bits_per_dim - summary.bits_per_dim == pytest.approx(math.log2(127.5))
    pixels = torch.tensor([[0.0, 255.0, 128.0, 7.0]], dtype=torch.float64)
    y = dequantize(pixels.expand(1000, 4), torch.Generator().manual_seed(0))
    centres = pixels / 127.5 - 1.0
    assert float((y - centres).abs().max()) <= 0.5 / 127.5 + 1e-12
    assert torch.allclose(y.mean(0), centres[0], atol=2e-4)


def _gaussian_target(registry, mean: float, std: float, dim: int = 1) -> OracleModel:  # noqa: ANN001
    mixture = GaussianMixture(
        torch.full((1, dim), mean, dtype=torch.float64),
        torch.full((1, dim), std, dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),
    )
    return OracleModel(mixture, registry.build("process", "ddpm", {}), (dim,))


def _bound_gap(model: OracleModel, variance: str, n: int = 1000) -> tuple[float, float]:
    x = model.sample_data(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    terms = vlb_terms(
        model, x, variance=variance, decoder="gaussian", generator=torch.Generator().manual_seed(1)
    )
    gap = terms.sum(1) + model.data_log_prob(x)  # bound - true NLL, per sample (nats)
    return float(gap.mean()), float(gap.std()) / math.sqrt(n)


def test_ddpm_bound_of_the_exact_model_is_tight_for_a_standard_normal(registry) -> None:  # noqa: ANN001
    # x0 ~ N(0, I): every q(x_{i-1} | x_i) is exactly N(sqrt(1 - beta_i) x_i, beta_i), so with
    # sigma_i^2 = beta_i the model's reverse chain is the true one and E[L_vlb] = -log p(x0).
    gap, stderr = _bound_gap(_gaussian_target(registry, 0.0, 1.0), "beta")
    assert abs(gap) < 3 * stderr + 1e-3


def test_ddpm_bound_is_above_the_true_nll_and_close_at_n_1000(registry) -> None:  # noqa: ANN001
    model = _gaussian_target(registry, 0.3, 0.5)
    gap, stderr = _bound_gap(model, "beta")  # measured -0.018 +- 0.022 nats (D = 1)
    assert gap > -3 * stderr and gap < 0.05
    # beta_tilde is optimal only for a point mass x0: measured 0.53 +- 0.04 nats above the NLL
    gap_tilde, stderr_tilde = _bound_gap(model, "beta_tilde")
    assert gap_tilde > 5 * stderr_tilde and 0.3 < gap_tilde < 0.8
