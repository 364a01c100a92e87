"""Helpers shared by the sampler tests (test_em, test_ode, test_sde, test_conformance)."""

from __future__ import annotations

import math
from typing import Any

import torch

import diffkit
from diffkit.core.shapes import append_dims
from diffkit.eval.metrics import NoiseFloor, sliced_wasserstein, sliced_wasserstein_floor

#: projections for the sliced Wasserstein checks (fewer than the default 512, to stay fast)
PROJECTIONS = 128


def gaussian_model(
    process: diffkit.NoiseProcess, mean: float, std: float, data_shape: tuple[int, ...] = (1,)
) -> diffkit.ScoreModel:
    """Exact eps model of data N(mean, std^2 I): eps = sigma (x - alpha mean) / (alpha^2 std^2 + sigma^2)."""

    def network(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        alpha = append_dims(process.alpha(t).to(x.dtype), x.ndim)
        sigma = append_dims(process.sigma(t).to(x.dtype), x.ndim)
        return sigma * (x - alpha * mean) / (alpha**2 * std**2 + sigma**2)

    return diffkit.ScoreModel(network, kind="eps", process=process, data_shape=data_shape)


def gaussian_marginal(
    process: diffkit.NoiseProcess, t: float, mean: float, std: float
) -> tuple[float, float]:
    """Mean and variance of x_t for data N(mean, std^2): (alpha mean, alpha^2 std^2 + sigma^2)."""
    alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
    return alpha * mean, alpha**2 * std**2 + sigma**2


def gaussian_start(
    process: diffkit.NoiseProcess, mean: float, std: float, batch: int, seed: int
) -> torch.Tensor:
    """`(batch, 1)` float64 draws of the exact marginal p_{t_max} (no prior mismatch)."""
    m, v = gaussian_marginal(process, process.t_max, mean, std)
    noise = torch.randn((batch, 1), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return m + math.sqrt(v) * noise


def gaussian_errors(
    registry: diffkit.Registry,
    sampler_name: str,
    process: diffkit.NoiseProcess,
    steps: tuple[int, ...],
    *,
    mean: float,
    std: float,
    batch: int,
) -> tuple[list[float], list[float], float]:
    """Weak errors of a sampler on the 1-D Gaussian target N(mean, std^2), per step count.

    The sampler starts from the exact p_{t_max}, so the exact law at t_min is
    N(alpha mean, alpha^2 std^2 + sigma^2) and any error is the discretisation's. The mean error
    scales with `mean` while the Monte-Carlo noise does not, so a far-off mean makes it precise.

    Returns:
        |mean errors|, |variance errors| (one per step count, uniform grid) and the Monte-Carlo
        standard deviation of the sample variance.
    """
    model = gaussian_model(process, mean, std)
    exact_mean, exact_var = gaussian_marginal(process, process.t_min, mean, std)
    x_init = gaussian_start(process, mean, std, batch, seed=0)
    sampler = registry.build("sampler", sampler_name, {})
    mean_errors, var_errors = [], []
    for n in steps:
        grid = registry.build("grid", "uniform", {})(process, n)
        x = sampler(model, process, x_init, grid, generator=torch.Generator().manual_seed(n)).x
        mean_errors.append(abs(float(x.mean()) - exact_mean))
        var_errors.append(abs(float(x.var()) - exact_var))
    return mean_errors, var_errors, exact_var * math.sqrt(2.0 / batch)


class TimeRecorder:
    """Wraps `model.network`, counting calls and recording every time input it sees."""

    def __init__(self, model: diffkit.ScoreModel) -> None:
        self.network, self.times, self.calls = model.network, [], 0
        model.network = self

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        self.calls += 1
        self.times.append(t.detach().to(torch.float64).clone())
        return self.network(x, t, cond)

    def all_times(self) -> torch.Tensor:
        """Every recorded time, concatenated (float64)."""
        return torch.cat(self.times)


def prior_noise(
    process: diffkit.NoiseProcess,
    model: diffkit.ScoreModel,
    batch: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Seeded prior samples `(batch, *data_shape)`."""
    generator = torch.Generator().manual_seed(seed)
    return process.prior_sample((batch, *model.data_shape), generator=generator, dtype=dtype)


def ring8_floor(model: Any, n: int) -> NoiseFloor:
    """SW2 noise floor of `n` exact samples of the oracle `model` (6 independent pairs)."""

    def draw(k: int, generator: torch.Generator) -> torch.Tensor:
        return model.sample_data(k, generator=generator, dtype=torch.float64)

    return sliced_wasserstein_floor(draw, n, repeats=6, num_projections=PROJECTIONS)


def distance_to_data(model: Any, x: torch.Tensor, seed: int = 12345) -> float:
    """SW2 between samples `x` and as many fresh exact samples of the oracle `model`."""
    exact = model.sample_data(x.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return float(sliced_wasserstein(x.to(torch.float64), exact, num_projections=PROJECTIONS))


#: chi-square 0.999 quantile with 7 degrees of freedom (8 ring8 modes)
CHI2_7DOF_999 = 24.32


def ring8_quality(model: Any, process: diffkit.NoiseProcess, x: torch.Tensor) -> tuple[float, float]:
    """Sharper than SW2 at this sample size: within-mode spread and mode weights of ring8 samples.

    Returns:
        The RMS deviation from each sample's mode mean divided by the exact per-coordinate std
        of p_{t_min}'s components, sqrt(alpha^2 0.1^2 + sigma^2) (1 if exact), and the chi-square
        statistic of the mode counts against the weights (7 degrees of freedom).
    """
    x = x.to(torch.float64)
    component = model.component_of(x)
    means = model.mixture.means.to(torch.float64)
    spread = float((x - means[component]).square().mean().sqrt())
    alpha, sigma = float(process.alpha(process.t_min)), float(process.sigma(process.t_min))
    exact = math.sqrt(alpha**2 * 0.1**2 + sigma**2)
    weights = model.mixture.weights / model.mixture.weights.sum()
    expected = x.shape[0] * weights
    counts = torch.bincount(component, minlength=weights.shape[0]).to(torch.float64)
    return spread / exact, float(((counts - expected) ** 2 / expected).sum())


def at_floor(distance: float, floor: NoiseFloor, factor: float = 1.5, stds: float = 3.0) -> bool:
    """True if `distance` is within `factor` x floor mean + `stds` floor standard deviations."""
    return distance <= factor * floor.mean + stds * floor.std


def tiny_diffusers_unet(out_channels: int = 1) -> torch.nn.Module:
    """A seeded tiny diffusers UNet2DModel on 1x8x8 images (needs diffusers; the global RNG is untouched)."""
    import diffusers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return diffusers.UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=out_channels,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        )
