"""Image-quality metrics on classifier features: Fréchet distance, KID, and label-histogram coverage.

- **Fréchet distance** (FID; Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule
  Converge to a Local Nash Equilibrium", eq. 6) between Gaussian fits `N(mu_1, C_1)`,
  `N(mu_2, C_2)` of two feature sets:
  `d^2 = |mu_1 - mu_2|^2 + tr(C_1) + tr(C_2) - 2 tr((C_1 C_2)^{1/2})`.
- **Kernel distance** (KID; Bińkowski et al. 2018, "Demystifying MMD GANs", sec. 3 and app. D):
  the unbiased estimator of MMD^2 (Gretton et al. 2012, eq. 3) with the cubic polynomial kernel
  `k(x, y) = (x.y / d + 1)^3`, averaged over random subsets, with its standard deviation.
- **Label coverage**: the histogram of a classifier's predicted labels over the samples and its
  total-variation distance `TV(p, q) = 1/2 sum_k |p_k - q_k|` to the data's label distribution;
  a sampler that drops modes (classes) cannot hide there.

All functions are pure and compute in float64 whatever the input dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def gaussian_fit(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean `(D,)` and unbiased covariance `(D, D)` (float64) of features `(N, D)`, N >= 2."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features (N, D) with N >= 2, got {tuple(features.shape)}")
    x = features.to(torch.float64)
    mean = x.mean(dim=0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


class FeatureMoments(NamedTuple):
    """Count n, mean `(D,)` and sum of centred outer products `(D, D)` (float64) of a feature set."""

    n: int
    mean: Tensor
    scatter: Tensor

    def covariance(self) -> Tensor:
        """Unbiased covariance `(D, D)` = scatter / (n - 1), as `gaussian_fit`'s."""
        return self.scatter / (self.n - 1)


def feature_moments(features: Tensor) -> FeatureMoments:
    """`FeatureMoments` of features `(B, D)`, B >= 1, in float64."""
    x = features.to(torch.float64)
    mean = x.mean(dim=0)
    centred = x - mean
    return FeatureMoments(x.shape[0], mean, centred.T @ centred)


def merge_moments(a: FeatureMoments, b: FeatureMoments) -> FeatureMoments:
    """Moments of the union of two feature sets (Chan, Golub & LeVeque 1979, pairwise update):
    `mean = mean_a + delta n_b / n`, `scatter = scatter_a + scatter_b + delta delta^T n_a n_b / n`
    with `delta = mean_b - mean_a`; so a set's mean and covariance stream over batches in float64.
    """
    n = a.n + b.n
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    scatter = a.scatter + b.scatter + torch.outer(delta, delta) * (a.n * b.n / n)
    return FeatureMoments(n, mean, scatter)


def sqrtm_psd(matrix: Tensor) -> Tensor:
    """Principal square root `(D, D)` of a symmetric positive semi-definite `matrix` `(D, D)`.

    Computed from the eigendecomposition `matrix = U diag(w) U^T` as `U diag(sqrt(max(w, 0))) U^T`;
    the matrix is symmetrised first and eigenvalues that rounding pushed below zero are clamped.
    """
    symmetric = (matrix + matrix.T) / 2
    eigenvalues, vectors = torch.linalg.eigh(symmetric)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def trace_sqrt_product(cov_1: Tensor, cov_2: Tensor) -> Tensor:
    """`tr((C_1 C_2)^{1/2})` for symmetric PSD `C_1`, `C_2` `(D, D)`, as a float64 scalar.

    `C_1 C_2` is not symmetric, so `scipy.linalg.sqrtm` of it (the usual FID code) goes through a
    Schur form and can return complex noise. But `C_1 C_2 = S (S C_2 S) S^{-1}` with `S = C_1^{1/2}`,
    so `C_1 C_2` and the symmetric PSD matrix `S C_2 S` share their eigenvalues and
    `tr((C_1 C_2)^{1/2}) = sum_i sqrt(lambda_i(S C_2 S))`, which `eigvalsh` computes stably.
    """
    root = sqrtm_psd(cov_1.to(torch.float64))
    product = root @ cov_2.to(torch.float64) @ root
    return torch.linalg.eigvalsh((product + product.T) / 2).clamp(min=0).sqrt().sum()


def frechet_distance(mean_1: Tensor, cov_1: Tensor, mean_2: Tensor, cov_2: Tensor) -> Tensor:
    """Squared Fréchet (2-Wasserstein) distance between `N(mean_1, cov_1)` and `N(mean_2, cov_2)`.

    Heusel et al. 2017, eq. 6 (Dowson & Landau 1982). Means `(D,)`, covariances `(D, D)`;
    returns a float64 scalar >= 0 (clamped against rounding).
    """
    diff = (mean_1 - mean_2).to(torch.float64)
    traces = torch.trace(cov_1.to(torch.float64)) + torch.trace(cov_2.to(torch.float64))
    return (diff.dot(diff) + traces - 2 * trace_sqrt_product(cov_1, cov_2)).clamp(min=0)


def feature_frechet_distance(x: Tensor, y: Tensor) -> Tensor:
    """Fréchet distance between Gaussian fits of features `x` `(N, D)` and `y` `(M, D)`; float64 scalar."""
    return frechet_distance(*gaussian_fit(x), *gaussian_fit(y))


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, coef0: float = 1.0) -> Tensor:
    """KID kernel `(x.y / D + coef0)^degree` between rows of `x` `(N, D)`, `y` `(M, D)`: `(N, M)` float64."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 with the cubic polynomial kernel between `x` `(N, D)` and `y` `(M, D)`, N, M >= 2.

    Gretton et al. 2012, "A Kernel Two-Sample Test", eq. 3 (MMD^2_u): the within-set means leave
    out the diagonal, so the expectation is exactly MMD^2 and is 0 for equal distributions (the
    estimate itself can be slightly negative). Returns a float64 scalar.
    """
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"unbiased MMD needs at least 2 samples per set, got {n} and {m}")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2 * k_xy.mean()


def kernel_inception_distance(
    x: Tensor,
    y: Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """KID: mean and standard deviation of `mmd2_unbiased` over random subsets (Bińkowski et al. 2018).

    Args:
        x: features `(N, D)`.
        y: features `(M, D)`.
        subsets: number of subset pairs drawn.
        subset_size: size of each subset, reduced to `min(N, M)` when larger.
        generator: source of the subsets (a local one seeded with 0 when None; deterministic).

    Returns:
        `(mean, std)` of the subset estimates, as floats (std over subsets, 0 for one subset).
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    size = min(subset_size, x.shape[0], y.shape[0])
    values = torch.stack(
        [
            mmd2_unbiased(
                x[torch.randperm(x.shape[0], generator=generator)[:size]],
                y[torch.randperm(y.shape[0], generator=generator)[:size]],
            )
            for _ in range(subsets)
        ]
    )
    std = values.std() if subsets > 1 else values.new_zeros(())
    return float(values.mean()), float(std)


def label_histogram(labels: Tensor, num_classes: int) -> Tensor:
    """Normalised histogram `(num_classes,)` float64 of int labels `(N,)` in `[0, num_classes)`."""
    counts = torch.bincount(labels.to(torch.int64), minlength=num_classes).to(torch.float64)
    return counts / counts.sum()


def total_variation(p: Tensor, q: Tensor) -> Tensor:
    """Total-variation distance `1/2 sum |p - q|` of probability vectors `(K,)`; float64 scalar in [0, 1]."""
    return 0.5 * (p.to(torch.float64) - q.to(torch.float64)).abs().sum()
