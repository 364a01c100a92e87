"""Mode-aware metrics: at their floor on exact samples, clearly above it on wrong distributions.

The wrong distributions are gmm:ring8 with every mode shrunk to half its width, with uniform
instead of (k+1)/36 weights, and with modes 25% too wide or too narrow: the error kinds that
sliced W2 and median-bandwidth MMD barely see at a few thousand samples (DESIGN.md section 9).
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from diffkit.eval.metrics import (
    component_scale,
    gaussian_mmd2,
    kernel_self_mean,
    kernel_sum,
    mean_distance,
    median_bandwidth,
    mode_chi_square,
    mode_fractions,
    mode_weight_tv,
    sorted_projections,
    wasserstein2_1d_squared,
    wasserstein2_sorted,
    within_mode_spread,
)
from diffkit.oracles.mixture import mixture_sample

N = 2000
#: chi-square 0.999 quantile with 7 degrees of freedom (8 ring8 modes)
CHI2_7DOF_999 = 24.32


@pytest.fixture(scope="module")
def ring8(registry):  # noqa: ANN001, ANN201
    """The gmm:ring8 oracle model (its mixture and `component_of`)."""
    return registry.build("model", "gmm:ring8", {}, registry.build("process", "vp", {}))


def draw(
    model, n: int, seed: int, *, scale: float = 1.0, weights: torch.Tensor | None = None
) -> torch.Tensor:  # noqa: ANN001
    """`n` samples of ring8 with widths times `scale` and optionally other weights (float64)."""
    mix = model.mixture
    generator = torch.Generator().manual_seed(seed)
    w = mix.weights if weights is None else weights
    return mixture_sample(n, mix.means, mix.stds * scale, w, generator, torch.float64)


def bandwidths(model) -> torch.Tensor:  # noqa: ANN001
    """The bench's MMD bandwidths: 0.5, 1 and 2 component scales."""
    return component_scale(model.mixture.stds) * torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)


def test_exact_samples_sit_at_the_floor(ring8) -> None:  # noqa: ANN001
    x = draw(ring8, N, 0)
    components = ring8.component_of(x)
    assert abs(float(within_mode_spread(x, components, ring8.mixture.stds)) - 1.0) < 0.03
    tv = float(mode_weight_tv(components, ring8.mixture.weights))
    assert tv < 3 * math.sqrt(8 / (2 * math.pi * N))  # E[TV] ~ sqrt(K / (2 pi N)) = 0.025
    assert float(mode_chi_square(components, ring8.mixture.weights)) < CHI2_7DOF_999
    mmd = float(gaussian_mmd2(x, draw(ring8, N, 1), bandwidths(ring8)))
    assert abs(mmd) < 1e-3


def test_shrunk_modes_detected_by_spread_only(ring8) -> None:  # noqa: ANN001
    x = draw(ring8, N, 2, scale=0.5)
    components = ring8.component_of(x)
    assert float(within_mode_spread(x, components, ring8.mixture.stds)) == pytest.approx(0.5, abs=0.02)
    assert float(mode_weight_tv(components, ring8.mixture.weights)) < 0.05  # weights are right
    assert float(gaussian_mmd2(x, draw(ring8, N, 3), bandwidths(ring8))) > 0.008


def test_wrong_weights_detected_by_tv_only(ring8) -> None:  # noqa: ANN001
    uniform = torch.full((8,), 1.0 / 8.0, dtype=torch.float64)
    x = draw(ring8, N, 4, weights=uniform)
    components = ring8.component_of(x)
    truth = 0.5 * float((uniform - ring8.mixture.weights).abs().sum())  # 0.194
    assert float(mode_weight_tv(components, ring8.mixture.weights)) == pytest.approx(truth, abs=0.03)
    assert float(mode_chi_square(components, ring8.mixture.weights)) > 10 * CHI2_7DOF_999
    assert abs(float(within_mode_spread(x, components, ring8.mixture.stds)) - 1.0) < 0.03


def test_small_bandwidth_mmd_sees_25_percent_width_errors_median_mmd_does_not(ring8) -> None:  # noqa: ANN001
    reference = draw(ring8, N, 100)
    exact = [draw(ring8, N, seed) for seed in range(4)]
    wrong = [draw(ring8, N, 10, scale=1.25), draw(ring8, N, 11, scale=0.75)]

    def small(x: torch.Tensor) -> float:
        return float(gaussian_mmd2(x, reference, bandwidths(ring8)))

    def median(x: torch.Tensor) -> float:
        return float(gaussian_mmd2(x, reference, median_bandwidth(x, reference).reshape(1)))

    for mmd in (small, median):
        noise = [mmd(x) for x in exact]
        spread = statistics.stdev(noise)
        errors = [mmd(x) for x in wrong]
        if mmd is small:  # measured: exact <= 5e-5 (std 2e-4), wrong 1.2e-3 and 1.4e-3
            assert min(errors) > max(noise) + 4 * spread, (noise, errors)
        else:  # measured: exact -2.7e-4..-1.5e-4, wrong -2.6e-4 and -2.5e-4: invisible
            assert max(errors) < max(noise) + spread, (noise, errors)


def test_mmd_is_unbiased_symmetric_and_uses_cached_self_term() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, generator=g, dtype=torch.float64)
    y = 0.3 + torch.randn(200, 3, generator=g, dtype=torch.float64)
    h = torch.tensor([0.5, 1.0], dtype=torch.float64)
    value = gaussian_mmd2(x, y, h)
    torch.testing.assert_close(value, gaussian_mmd2(y, x, h), rtol=1e-12, atol=0)
    torch.testing.assert_close(value, gaussian_mmd2(x, y, h, y_self=kernel_self_mean(y, h)), rtol=0, atol=0)
    # unbiased: the mean over independent pairs of one law is 0 within its standard error
    values = [
        float(gaussian_mmd2(torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g), h))
        for _ in range(40)
    ]
    assert abs(statistics.fmean(values)) < 3 * statistics.stdev(values) / math.sqrt(40)
    with pytest.raises(ValueError, match="bandwidths must be positive"):
        gaussian_mmd2(x, y, [0.0])
    with pytest.raises(ValueError, match="differ in dimension"):
        gaussian_mmd2(x, y[:, :2], h)


@pytest.mark.parametrize("widths", [[2.0, 1.0, 0.5], [0.3, 0.7], [1.0, 2.0**-1.5]])
def test_kernel_sum_squaring_shortcut_is_exact(widths: list[float]) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(70, 4, generator=g, dtype=torch.float64)
    b = torch.randn(50, 4, generator=g, dtype=torch.float64)
    d2 = torch.cdist(a, b).square()
    expected = torch.stack([torch.exp(-d2 / (2 * h**2)).sum() for h in widths]).mean()
    h = torch.tensor(widths, dtype=torch.float64)
    torch.testing.assert_close(kernel_sum(a, b, h), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(kernel_sum(a, b, h, chunk=16), expected, rtol=1e-12, atol=0)


def test_spread_fractions_and_distance_by_hand() -> None:
    x = torch.tensor([[0.0], [2.0], [10.0], [14.0], [50.0]], dtype=torch.float64)
    components = torch.tensor([0, 0, 1, 1, 2])
    stds = torch.tensor([[1.0], [4.0], [1.0]], dtype=torch.float64)
    # component 0: sample std sqrt(2) over 1; component 1: sqrt(8) over 4; component 2 (one sample) left out
    expected = (2 * math.sqrt(2) + 2 * math.sqrt(8) / 4) / 4
    assert float(within_mode_spread(x, components, stds)) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(float(within_mode_spread(x[:1], components[:1], stds)))
    torch.testing.assert_close(
        mode_fractions(components, 4), torch.tensor([0.4, 0.4, 0.2, 0.0], dtype=torch.float64)
    )
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert float(mode_weight_tv(components, weights)) == pytest.approx(0.5 * (0.15 + 0.15 + 0.05 + 0.25))
    y = x + torch.tensor([[3.0]])
    assert float(mean_distance(x, y)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="differ in shape"):
        mean_distance(x, y[:2])


def test_sorted_projection_path_equals_the_plain_one() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(120, 3, generator=g, dtype=torch.float64)
    y = torch.randn(80, 3, generator=g, dtype=torch.float64)
    theta = torch.randn(16, 3, generator=g, dtype=torch.float64)
    fast = wasserstein2_sorted(sorted_projections(x, theta), sorted_projections(y, theta))
    torch.testing.assert_close(fast, wasserstein2_1d_squared(x @ theta.T, y @ theta.T), rtol=1e-12, atol=0)
