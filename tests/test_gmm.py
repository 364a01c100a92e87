"""The oracle models are exact: scores, posterior means, densities, definitions and samples."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import diffkit
from diffkit.core.errors import OptionError, PluginLoadWarning
from diffkit.plugins.gmm import (
    GaussianMixture,
    OracleModel,
    d64_mixture,
    ring8,
    ring8_mixture,
    two_modes_mixture,
)

MODELS = ("gmm:ring8", "gmm:two-modes", "gmm:d64")
PROCESSES = ("vp", "ve", "subvp", "ddpm", "ddpm-cosine")


@pytest.fixture(scope="module")
def registry() -> diffkit.Registry:
    """A fresh registry; plugins other than the processes and gmm are not under test here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        return diffkit.build_registry()


def _noisy_points(model: OracleModel, t: torch.Tensor, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Draws from p_t (alpha x0 + sigma eps) plus a few spread-out points, shape (n, *data_shape)."""
    g = torch.Generator().manual_seed(seed)
    x0 = model.sample_data(n, generator=g, dtype=torch.float64)
    mean, std = model.process.marginal(x0, t.to(torch.float64))
    x = mean + std * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x[: n // 4] = 3.0 * torch.randn(x[: n // 4].shape, generator=g, dtype=torch.float64)  # off the data
    return x.to(dtype)


def _times(process: diffkit.NoiseProcess) -> list[float]:
    span = process.t_max - process.t_min
    return [process.t_min, process.t_min + 0.01 * span, 0.3, 0.7, process.t_max]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("process_name", PROCESSES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_score_is_gradient_of_log_prob(registry, name, process_name, dtype):
    process = registry.build("process", process_name, {})
    model = registry.build("model", name, {}, process)
    for i, t_value in enumerate(_times(process)):
        t = torch.full((16,), t_value, dtype=torch.float64)
        x = _noisy_points(model, t, 16, dtype, seed=i).requires_grad_(True)
        (grad,) = torch.autograd.grad(model.log_prob(x, t).sum(), x)
        score = model.predict(x.detach(), t).score
        assert score.dtype == dtype and score.shape == x.shape
        scale = float(grad.abs().max())
        tol = 1e-11 if dtype == torch.float64 else 2e-4
        torch.testing.assert_close(score, grad, rtol=tol, atol=tol * scale, msg=f"t={t_value}")


def _posterior_mean(mixture: GaussianMixture, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """E[x0 | x_t = x] from Bayes' rule per component (torch.distributions for responsibilities)."""
    mu, s2 = mixture.means, mixture.stds**2
    var_t = alpha**2 * s2 + sigma**2  # (K, D)
    components = Independent(Normal(alpha * mu, var_t.sqrt()), 1)
    log_joint = components.log_prob(x.unsqueeze(1)) + torch.log(mixture.weights / mixture.weights.sum())
    resp = torch.softmax(log_joint, dim=-1)  # (B, K)
    # x0 | x_t, k ~ N(mu_k + alpha s_k^2 / var_t (x - alpha mu_k), ...)
    post = mu + alpha * s2 / var_t * (x.unsqueeze(1) - alpha * mu)  # (B, K, D)
    return (resp.unsqueeze(-1) * post).sum(1)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("process_name", ["vp", "ve"])
def test_x0_prediction_is_posterior_mean(registry, name, process_name):
    process = registry.build("process", process_name, {})
    model = registry.build("model", name, {}, process)
    for i, t_value in enumerate([0.05, 0.3, 0.6]):
        t = torch.full((32,), t_value, dtype=torch.float64)
        x = _noisy_points(model, t, 32, torch.float64, seed=10 + i)
        alpha, sigma = float(process.alpha(t[0])), float(process.sigma(t[0]))  # float64 time
        expected = _posterior_mean(model.mixture, x, alpha, sigma)
        prediction = model.predict(x, t)
        torch.testing.assert_close(prediction.x0, expected, rtol=1e-8, atol=1e-8)
        # and eps is consistent with x = alpha x0 + sigma eps
        torch.testing.assert_close(alpha * prediction.x0 + sigma * prediction.eps, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["gmm:ring8", "gmm:two-modes"])
def test_data_density_integrates_to_one(registry, name):
    model = registry.build("model", name, {}, registry.build("process", "vp", {}))
    h = 0.02  # the Riemann sum of a smooth Gaussian is spectrally accurate at h = std / 5
    grid = torch.arange(-4.5, 4.5 + h / 2, h, dtype=torch.float64)  # >= 8 stds beyond every mean
    points = torch.cartesian_prod(grid, grid)
    total = model.data_log_prob(points).exp().sum() * h * h
    assert abs(float(total) - 1.0) < 1e-6


def test_data_log_prob_matches_torch_distributions(registry):
    g = torch.Generator().manual_seed(3)
    mixture = GaussianMixture(
        torch.randn(1, 5, generator=g, dtype=torch.float64),
        0.2 + torch.rand(1, 5, generator=g, dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),
    )
    single = OracleModel(mixture, registry.build("process", "vp", {}), (5,))
    x = torch.randn(20, 5, generator=g, dtype=torch.float64)
    reference = Independent(Normal(mixture.means[0], mixture.stds[0]), 1).log_prob(x)
    torch.testing.assert_close(single.data_log_prob(x), reference, rtol=1e-12, atol=1e-12)

    model = registry.build("model", "gmm:d64", {}, registry.build("process", "vp", {}))
    m = model.mixture
    full = MixtureSameFamily(Categorical(probs=m.weights), Independent(Normal(m.means, m.stds), 1))
    x0 = model.sample_data(50, generator=g, dtype=torch.float64)
    torch.testing.assert_close(model.data_log_prob(x0), full.log_prob(x0), rtol=1e-10, atol=1e-10)
    # float32 input is evaluated in float32 and stays close
    torch.testing.assert_close(
        model.data_log_prob(x0.float()), full.log_prob(x0).float(), rtol=1e-4, atol=1e-3
    )


@pytest.mark.parametrize("name", MODELS)
def test_log_prob_tends_to_data_log_prob(registry, name):
    model = registry.build("model", name, {}, registry.build("process", "vp", {}))
    x0 = model.sample_data(64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    target = model.data_log_prob(x0)
    errors = [float((model.log_prob(x0, t) - target).abs().max()) for t in (1e-2, 1e-3, 1e-4, 1e-6)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-3


def test_ring8_definition():
    m = ring8_mixture()
    assert m.means.dtype == torch.float64 and m.means.shape == (8, 2)
    for k in range(8):
        angle = 2 * math.pi * k / 8
        assert m.means[k].tolist() == pytest.approx([2 * math.cos(angle), 2 * math.sin(angle)], abs=1e-15)
        assert float(m.weights[k]) == pytest.approx((k + 1) / 36, rel=1e-15)
    assert m.means[2].tolist() == pytest.approx([0.0, 2.0], abs=1e-15)
    assert torch.equal(m.stds, torch.full((8, 2), 0.1, dtype=torch.float64))


def test_two_modes_definition():
    m = two_modes_mixture()
    assert m.means.tolist() == [[-2.5, 0.0], [2.5, 0.0]]
    assert m.stds.tolist() == [[0.25, 0.25], [0.25, 0.25]]
    assert m.weights.tolist() == [0.2, 0.8]


@pytest.mark.parametrize("k, p", [(0, 0), (0, 63), (3, 10), (7, 41), (9, 63)])
def test_d64_definition(k, p):
    m = d64_mixture()
    assert m.means.shape == (10, 64) and m.stds.shape == (10, 64) and m.weights.shape == (10,)
    phase = 0.618034 * (64 * k + p)
    assert float(m.means[k, p]) == pytest.approx(0.6 * math.sin(0.5 * (k + 1) * (p + 1) + k), abs=1e-14)
    assert float(m.stds[k, p]) == pytest.approx(0.05 + 0.15 * (phase - math.floor(phase)), abs=1e-12)
    assert float(m.weights[k]) == pytest.approx((k + 1) / 55, rel=1e-14)


@pytest.mark.parametrize("name", ["gmm:ring8", "gmm:two-modes"])
def test_sample_statistics(registry, name):
    model = registry.build("model", name, {}, registry.build("process", "vp", {}))
    n = 40_000
    x0 = model.sample_data(n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ids = model.component_of(x0)
    assert ids.dtype == torch.long
    w = model.mixture.weights
    freq = torch.bincount(ids, minlength=len(w)).double() / n
    se = (w * (1 - w) / n).sqrt()
    assert bool(((freq - w).abs() < 4 * se).all()), (freq, w)
    for k in range(len(w)):
        members = x0[ids == k]
        count = members.shape[0]
        s = model.mixture.stds[k]
        assert torch.allclose(members.mean(0), model.mixture.means[k], atol=float(5 * s.max() / count**0.5))
        assert torch.allclose(members.std(0), s, rtol=5 / (2 * count) ** 0.5)


def test_d64_component_frequencies(registry):
    model = registry.build("model", "gmm:d64", {}, registry.build("process", "vp", {}))
    n = 20_000
    ids = model.component_of(model.sample_data(n, generator=torch.Generator().manual_seed(8)))
    w = model.mixture.weights
    freq = torch.bincount(ids, minlength=10).double() / n
    assert bool(((freq - w).abs() < 4 * (w * (1 - w) / n).sqrt()).all()), (freq, w)


def test_sampling_is_reproducible(registry):
    model = registry.build("model", "gmm:d64", {}, registry.build("process", "vp", {}))
    a = model.sample_data(100, generator=torch.Generator().manual_seed(11))
    b = model.sample_data(100, generator=torch.Generator().manual_seed(11))
    c = model.sample_data(100, generator=torch.Generator().manual_seed(12))
    d = model.sample_data(100, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    assert a.dtype == torch.float32 and a.shape == (100, 64)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.testing.assert_close(d.float(), a, rtol=0, atol=0)  # same draws, different precision


def test_image_option(registry):
    process = registry.build("process", "vp", {})
    image = registry.build("model", "gmm:d64", {"image": "true"}, process)
    flat = registry.build("model", "gmm:d64", {}, process)
    assert image.data_shape == (1, 8, 8) and flat.data_shape == (64,)
    x0 = image.sample_data(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert x0.shape == (6, 1, 8, 8)
    t = torch.tensor(0.4, dtype=torch.float64)
    eps_image = image.predict(x0, t).eps
    assert eps_image.shape == (6, 1, 8, 8)
    torch.testing.assert_close(eps_image.reshape(6, 64), flat.predict(x0.reshape(6, 64), t).eps)
    torch.testing.assert_close(image.log_prob(x0, t), flat.log_prob(x0.reshape(6, 64), t))
    with pytest.raises(ValueError, match="image"):
        ring8(process, image=True)
    with pytest.raises(OptionError, match="image"):
        registry.build("model", "gmm:two-modes", {"image": "true"}, process)


def test_oracle_counts_nfe_and_follows_dtype(registry):
    process = registry.build("process", "ve", {})
    model = registry.build("model", "gmm:ring8", {}, process)
    assert model.kind == "eps" and model.nfe == 0
    x = torch.zeros(3, 2, dtype=torch.float32)
    eps = model.predict(x, 0.5).eps
    model.predict(x, torch.full((3,), 0.2))
    assert model.nfe == 2 and eps.dtype == torch.float32
    assert model.data_log_prob(x).dtype == torch.float32
    summaries = {c.name: c.summary for c in registry.listing("model") if hasattr(c, "name")}
    assert all(summaries[name] for name in MODELS)
