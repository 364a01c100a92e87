"""eps / x0 / v / score conversions (diffkit.core.parameterization) and Prediction (diffkit.core.model).

Ground truth is built forward: draw x0 and eps, set x = alpha x0 + sigma eps, v = alpha eps - sigma x0
(Salimans & Ho 2022) and score = -(x - alpha x0) / sigma^2 (the score of N(alpha x0, sigma^2 I));
every conversion must recover the other targets. Rounding errors are bounded by the conditioning of
each map, ~ machine eps * (1 + alpha/sigma + sigma/alpha) per sample, so tolerances scale with it.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffkit.core import parameterization as param
from diffkit.core.model import Prediction, ScoreModel
from diffkit.core.shapes import append_dims

SHAPES = [(64, 2), (16, 1, 8, 8)]
DTYPES = [torch.float32, torch.float64]
REGIMES = ["vp", "ve", "general"]
UNKNOWN = "unknown parameterization 'flow'; expected one of eps, x0, v, score"


def _alpha_sigma(regime: str, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (alpha, sigma) of shape (B,) in float64 for one schedule regime."""
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    if regime == "vp":  # alpha^2 + sigma^2 = 1, log-SNR in [-10, 10]
        log_snr = -10.0 + 20.0 * u
        return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()
    if regime == "ve":  # alpha = 1, sigma log-uniform in [0.01, 80] (EDM's range)
        return torch.ones(batch, dtype=torch.float64), 0.01 * 8000.0**u
    w = torch.rand(batch, generator=generator, dtype=torch.float64)
    return 0.05 + 1.95 * u, 0.01 * 500.0**w  # independent alpha in [0.05, 2], sigma in [0.01, 5]


def _truth(shape, dtype, regime, seed):
    """x, x0, eps, v, score and broadcast alpha, sigma; targets computed in float64, then cast."""
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=generator, dtype=torch.float64)
    eps = torch.randn(shape, generator=generator, dtype=torch.float64)
    alpha, sigma = (append_dims(a, len(shape)) for a in _alpha_sigma(regime, shape[0], generator))
    x = alpha * x0 + sigma * eps
    truth = {
        "x": x,
        "x0": x0,
        "eps": eps,
        "v": alpha * eps - sigma * x0,
        "score": -(x - alpha * x0) / sigma**2,
        "alpha": alpha,
        "sigma": sigma,
    }
    return {k: t.to(dtype) for k, t in truth.items()}


def _assert_close(actual, expected, alpha, sigma, *, scale=1.0):
    """|actual - expected| <= 16 eps (1 + alpha/sigma + sigma/alpha) (scale + |expected|), elementwise."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    eps = torch.finfo(expected.dtype).eps
    cond = 1.0 + alpha / sigma + sigma / alpha
    bound = 16 * eps * cond * (scale + expected.abs())
    excess = ((actual - expected).abs() / bound).max().item()
    assert excess <= 1.0, f"error {excess:.3g} x the rounding bound"


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_pure_conversions_round_trip(shape, dtype, regime):
    g = _truth(shape, dtype, regime, seed=1)
    x, x0, eps, v, score, a, s = (g[k] for k in ("x", "x0", "eps", "v", "score", "alpha", "sigma"))
    _assert_close(param.eps_from_x0(x, x0, a, s), eps, a, s)
    _assert_close(param.x0_from_eps(x, eps, a, s), x0, a, s)
    _assert_close(param.v_from_eps_x0(eps, x0, a, s), v, a, s)
    _assert_close(param.eps_from_v(x, v, a, s), eps, a, s)
    _assert_close(param.x0_from_v(x, v, a, s), x0, a, s)
    # score scales like 1/sigma: compare sigma * score (the eps scale)
    _assert_close(s * param.score_from_eps(eps, s), s * score, a, s)
    _assert_close(param.eps_from_score(score, s), eps, a, s)


@pytest.mark.parametrize("kind", param.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_to_eps_and_to_x0_from_every_kind(shape, dtype, kind):
    g = _truth(shape, dtype, "general", seed=2)
    a, s = g["alpha"], g["sigma"]
    _assert_close(param.to_eps(kind, g[kind], g["x"], a, s), g["eps"], a, s)
    _assert_close(param.to_x0(kind, g[kind], g["x"], a, s), g["x0"], a, s)


def test_vp_closed_forms_of_v():
    """With alpha^2 + sigma^2 = 1: x0 = alpha x - sigma v and eps = sigma x + alpha v (Salimans & Ho)."""
    g = _truth((256, 3), torch.float64, "vp", seed=3)
    x, v, a, s = g["x"], g["v"], g["alpha"], g["sigma"]
    torch.testing.assert_close(param.x0_from_v(x, v, a, s), a * x - s * v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(param.eps_from_v(x, v, a, s), s * x + a * v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(param.x0_from_v(x, v, a, s), g["x0"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", param.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_prediction_properties_agree_for_every_kind(shape, dtype, kind):
    g = _truth(shape, dtype, "general", seed=4)
    a, s = g["alpha"], g["sigma"]
    inputs = {k: t.clone() for k, t in g.items()}
    prediction = Prediction(kind, inputs[kind], inputs["x"], a, s)
    for target in ("eps", "x0", "v"):
        _assert_close(getattr(prediction, target), g[target], a, s)
    _assert_close(s * prediction.score, s * g["score"], a, s)
    if kind == "score":
        assert prediction.score is prediction.output
    for k, t in g.items():  # properties are pure: no input was modified in place
        assert torch.equal(inputs[k], t)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    log_alpha=st.floats(-5.0, 2.0),
    log_sigma=st.floats(-5.0, 5.0),
    x0=st.lists(st.floats(-10.0, 10.0), min_size=1, max_size=6),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_eps_v_x0_property(log_alpha, log_sigma, x0, seed):
    """For any alpha, sigma in [e^-5, e^5] and data: eps -> (x, v) -> (eps, x0) recovers both."""
    x0 = torch.tensor([x0], dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a = torch.tensor([[log_alpha]], dtype=torch.float64).exp()
    s = torch.tensor([[log_sigma]], dtype=torch.float64).exp()
    x = a * x0 + s * eps
    v = param.v_from_eps_x0(eps, x0, a, s)
    _assert_close(param.eps_from_v(x, v, a, s), eps, a, s, scale=10.0)
    _assert_close(param.x0_from_v(x, v, a, s), x0, a, s, scale=10.0)
    _assert_close(param.to_x0("score", param.score_from_eps(eps, s), x, a, s), x0, a, s, scale=10.0)


def _unit_tensors():
    x = torch.ones(2, 3, dtype=torch.float64)
    return x, x, torch.ones(2, 1, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64)


def test_unknown_kind_raises_value_error():
    output, x, a, s = _unit_tensors()
    with pytest.raises(ValueError, match=re.escape(UNKNOWN)):
        param.to_eps("flow", output, x, a, s)
    with pytest.raises(ValueError, match=re.escape(UNKNOWN)):
        param.to_x0("flow", output, x, a, s)
    with pytest.raises(ValueError, match=re.escape(UNKNOWN)):
        _ = Prediction("flow", output, x, a, s).eps


def test_score_model_rejects_unknown_kind(registry):
    process = registry.build("process", "vp", {})
    with pytest.raises(ValueError, match=re.escape(UNKNOWN)):
        ScoreModel(lambda x, t, c: x, kind="flow", process=process, data_shape=(3,))


@pytest.mark.parametrize("kind", param.KINDS)
def test_score_model_predicts_point_mass_targets(registry, kind):
    """Exact networks for data = one point x0 under VP: every derived target is exact, NFE counts calls."""
    process = registry.build("process", "vp", {})
    point = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)

    def network(x, t, cond):
        a = append_dims(process.alpha(t), x.ndim)
        s = append_dims(process.sigma(t), x.ndim)
        eps = (x - a * point) / s
        return {"eps": eps, "x0": point.expand_as(x), "v": a * eps - s * point, "score": -eps / s}[kind]

    model = ScoreModel(network, kind=kind, process=process, data_shape=(3,))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    prediction = model.predict(x, t)
    sigma = append_dims(process.sigma(t), 2)
    torch.testing.assert_close(prediction.x0, point.expand_as(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(prediction.eps, (x - append_dims(process.alpha(t), 2) * point) / sigma)
    torch.testing.assert_close(
        model.score(x, 0.5), -(x - process.alpha(0.5) * point) / process.sigma(0.5) ** 2
    )
    assert model.nfe == 2
