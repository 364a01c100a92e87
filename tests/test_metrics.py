"""The sliced Wasserstein-2 distance and its noise floor behave as the math says."""

from __future__ import annotations

import math

import pytest
import torch

from diffkit.eval.metrics import (
    quantile_steps,
    sliced_wasserstein,
    sliced_wasserstein_floor,
    wasserstein2_1d_squared,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_distance_to_itself_is_zero_and_symmetric():
    g = _gen(0)
    x = torch.randn(300, 3, generator=g, dtype=torch.float64)
    y = 0.5 + torch.randn(200, 3, generator=g, dtype=torch.float64)
    assert float(sliced_wasserstein(x, x)) == 0.0
    assert float(sliced_wasserstein(x, y)) > 0.1
    torch.testing.assert_close(sliced_wasserstein(x, y), sliced_wasserstein(y, x), rtol=1e-12, atol=0)


def test_deterministic_default_and_explicit_generator():
    g = _gen(1)
    x, y = torch.randn(100, 4, generator=g), torch.randn(100, 4, generator=g)
    assert torch.equal(sliced_wasserstein(x, y), sliced_wasserstein(x, y))
    a = sliced_wasserstein(x, y, generator=_gen(5))
    b = sliced_wasserstein(x, y, generator=_gen(5))
    assert torch.equal(a, b)
    assert sliced_wasserstein(x, y).ndim == 0 and sliced_wasserstein(x, y).dtype == torch.float32


def test_one_dimensional_gaussians_match_closed_form():
    # in 1-D every direction is +-1, so SW2 = W2 = sqrt(m^2 + (1 - s)^2) for N(0,1) vs N(m, s^2)
    n = 200_000
    g = _gen(2)
    m, s = 0.7, 1.5
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = m + s * torch.randn(n // 2, 1, generator=g, dtype=torch.float64)  # unequal sizes
    expected = math.sqrt(m**2 + (1 - s) ** 2)
    assert float(sliced_wasserstein(x, y, num_projections=4)) == pytest.approx(expected, abs=0.01)


def test_detects_a_known_shift():
    # y = x + v shifts every projection by <theta, v> exactly, and E<theta, v>^2 = |v|^2 / D
    g = _gen(3)
    x = torch.randn(500, 2, 4, generator=g, dtype=torch.float64)  # any trailing shape is flattened
    v = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0, 0.0, -1.0], dtype=torch.float64)
    shifted = x + v.reshape(2, 4)
    theta = torch.randn(2048, 8, generator=_gen(4), dtype=torch.float64)
    theta = theta / theta.norm(dim=-1, keepdim=True)
    exact = (theta @ v).square().mean().sqrt()
    distance = sliced_wasserstein(x, shifted, num_projections=2048, generator=_gen(4))
    torch.testing.assert_close(distance, exact, rtol=1e-10, atol=0)
    assert float(distance) == pytest.approx(float(v.norm()) / math.sqrt(8), rel=0.05)


def test_unequal_sizes_reduce_to_equal_sizes_when_samples_repeat():
    # repeating each atom of y twice gives the same empirical measure with twice the atoms
    g = _gen(6)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20, 3, generator=g, dtype=torch.float64) + 0.3
    doubled = y.repeat(2, 1)
    torch.testing.assert_close(sliced_wasserstein(x, y), sliced_wasserstein(x, doubled), rtol=1e-12, atol=0)
    torch.testing.assert_close(sliced_wasserstein(x[:7], y), sliced_wasserstein(y, x[:7]), rtol=1e-12, atol=0)


def test_exact_1d_w2_small_case():
    # x = {0, 1} and y = {0, 1, 2} (given unsorted); breakpoints 1/3, 1/2, 2/3, 1
    x = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    y = torch.tensor([[2.0], [0.0], [1.0]], dtype=torch.float64)
    # F_x^{-1}: 0 on (0, 1/2], 1 on (1/2, 1]; F_y^{-1}: 0 on (0, 1/3], 1 on (1/3, 2/3], 2 on (2/3, 1]
    # squared gaps: (0,1/3]: 0; (1/3,1/2]: 1; (1/2,2/3]: 0; (2/3,1]: 1  ->  1/6 + 1/3 = 1/2
    assert float(wasserstein2_1d_squared(x, y)[0]) == pytest.approx(0.5, abs=1e-15)
    widths, ix, iy = quantile_steps(2, 3)
    assert widths.tolist() == pytest.approx([1 / 3, 1 / 6, 1 / 6, 1 / 3], abs=1e-15)
    assert ix.tolist() == [0, 0, 1, 1] and iy.tolist() == [0, 1, 1, 2]


def test_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3))


def test_noise_floor_decreases_with_sample_size():
    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        ids = torch.multinomial(torch.tensor([0.3, 0.7]), n, replacement=True, generator=generator)
        return torch.randn(n, 2, generator=generator) * 0.3 + 2.0 * ids.unsqueeze(-1)

    small = sliced_wasserstein_floor(sample, 200, repeats=4)
    large = sliced_wasserstein_floor(sample, 3200, repeats=4)
    assert small.n == 200 and large.n == 3200
    assert small.std > 0 and large.std > 0
    assert large.mean < 0.5 * small.mean  # about 1/sqrt(n): a factor 4 expected
    assert sliced_wasserstein_floor(sample, 200, repeats=4) == small  # deterministic
