"""Quality of a run against the exact answer: comparison sets, metric floors, reference paths.

For an oracle model the sweep knows the exact law of the samples at the end of the reverse
process: the data mixture perturbed to the final grid time t_min (`x = alpha x0 + sigma eps`),
or the data itself for samplers that denoise at the end. Every run at a seed is compared with
one fresh exact set of the same size, and the same metrics between further independent exact
sets and the first are the *floors* (mean and std over `FLOOR_REPEATS` sets): what a perfect
sampler scores at this sample size, and how much a score moves by chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from diffkit.core.grid import split_final_zero
from diffkit.core.model import ExactData, ScoreModel
from diffkit.core.process import NoiseProcess
from diffkit.eval.metrics import (
    component_scale,
    gaussian_mmd2,
    kernel_self_mean,
    mean_distance,
    mode_weight_tv,
    random_directions,
    sorted_projections,
    wasserstein2_sorted,
    within_mode_spread,
)
from diffkit.plugin.registry import Registry
from diffkit.run.api import SampleConfig, sample

#: MMD kernel bandwidths, as fractions of the mixture's component scale (`component_scale`)
MMD_FRACTIONS: tuple[float, ...] = (0.5, 1.0, 2.0)
#: MMD is quadratic in N: it uses at most this many samples of each set
MMD_POINTS = 2000
#: random directions of the sliced Wasserstein distance (the same ones for every run at a seed)
PROJECTIONS = 256
#: independent exact sets compared with the reference to measure each metric's floor (mean and std)
FLOOR_REPEATS = 4
#: tolerance (rtol = atol) of the float64 dopri5 reference solution for deterministic samplers
REFERENCE_TOL = 1e-7


@dataclass
class ExactSets:
    """Exact comparison data for one seed and one end time.

    Attributes:
        reference: `(N, *shape)` float64 exact samples at the end time.
        stds: `(K, D)` component standard deviations at the end time (None: no mixture).
        weights: `(K,)` mixture weights (None: no mixture).
        bandwidths: `(H,)` MMD bandwidths (None: no mixture).
        directions: `(P, D)` sliced-W2 directions.
        reference_sorted: `(P, N)` sorted projections of the reference (sliced W2).
        reference_self: cached kernel mean of the reference (MMD).
        floors: mean `<metric>` and std `<metric>_std` of independent exact sets against `reference`.
    """

    reference: torch.Tensor
    stds: torch.Tensor | None
    weights: torch.Tensor | None
    bandwidths: torch.Tensor | None
    directions: torch.Tensor
    reference_sorted: torch.Tensor
    reference_self: torch.Tensor | None = None
    floors: dict[str, float] = field(default_factory=dict)


def _mixture(model: Any) -> Any:
    mixture = getattr(model, "mixture", None)
    has_parts = all(hasattr(mixture, a) for a in ("means", "stds", "weights"))
    return mixture if has_parts and hasattr(model, "component_of") else None


def exact_sets(model: ScoreModel, process: NoiseProcess, n: int, seed: int, t: float | None) -> ExactSets:
    """An exact reference set of `n` samples at time `t` (None: the data) and the metrics' floors.

    Raises:
        ValueError: the model has no exact data (`diffkit.core.model.ExactData`).
    """
    if not isinstance(model, ExactData):
        raise ValueError("the model has no exact data to compare with")
    generator = torch.Generator().manual_seed(seed * 7919 + 17)
    alpha = 1.0 if t is None else float(process.alpha(t))
    sigma = 0.0 if t is None else float(process.sigma(t))

    def draw() -> torch.Tensor:
        x0 = model.sample_data(n, generator=generator, dtype=torch.float64)
        return alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)

    reference = draw()
    mixture = _mixture(model)
    stds = weights = bandwidths = reference_self = None
    if mixture is not None:
        stds = (alpha**2 * mixture.stds.to(torch.float64).square() + sigma**2).sqrt()
        weights = mixture.weights.to(torch.float64)
        bandwidths = component_scale(stds) * torch.tensor(MMD_FRACTIONS, dtype=torch.float64)
        reference_self = kernel_self_mean(reference[:MMD_POINTS], bandwidths)
    dim = reference[0].numel()
    directions = random_directions(PROJECTIONS, dim, generator=torch.Generator().manual_seed(seed + 104729))
    ref_sorted = sorted_projections(reference.reshape(n, dim), directions)
    sets = ExactSets(reference, stds, weights, bandwidths, directions, ref_sorted, reference_self)
    trials = [score(draw(), model, sets) for _ in range(FLOOR_REPEATS)]
    for name in ("sliced_w2", "mmd2", "mode_tv", "spread_ratio"):
        values = torch.tensor([trial[name] for trial in trials], dtype=torch.float64)
        sets.floors[name], sets.floors[f"{name}_std"] = float(values.mean()), float(values.std())
    return sets


def score(
    samples: torch.Tensor,
    model: Any,
    sets: ExactSets,
    *,
    reference_path: torch.Tensor | None = None,
) -> dict[str, float]:
    """Every metric of `samples` `(N, *shape)` against the exact sets (NaN where not applicable).

    Args:
        samples: the run's samples.
        model: the oracle (for `component_of`).
        sets: from `exact_sets`, same seed.
        reference_path: the tight-tolerance solution from the same noise (deterministic samplers).

    Returns:
        sliced_w2, mmd2, mode_tv, spread_ratio and ref_distance as floats.
    """
    x = samples.detach().to("cpu", torch.float64)
    nan = math.nan
    if not bool(torch.isfinite(x).all()):
        return dict.fromkeys(("sliced_w2", "mmd2", "mode_tv", "spread_ratio", "ref_distance"), nan)
    flat = x.reshape(x.shape[0], -1)
    w2 = wasserstein2_sorted(sorted_projections(flat, sets.directions), sets.reference_sorted)
    out = {
        "sliced_w2": float(w2.mean().sqrt()),
        "mmd2": nan,
        "mode_tv": nan,
        "spread_ratio": nan,
        "ref_distance": nan,
    }
    if sets.bandwidths is not None:
        out["mmd2"] = float(
            gaussian_mmd2(
                x[:MMD_POINTS], sets.reference[:MMD_POINTS], sets.bandwidths, y_self=sets.reference_self
            )
        )
        components = model.component_of(x.reshape(x.shape[0], *model.data_shape))
        out["mode_tv"] = float(mode_weight_tv(components, sets.weights))
        out["spread_ratio"] = float(within_mode_spread(x, components, sets.stds))
    if reference_path is not None:
        out["ref_distance"] = float(mean_distance(x, reference_path.to("cpu", torch.float64)))
    return out


def reference_solution(
    registry: Registry, config: SampleConfig, noise: torch.Tensor, *, denoise: bool
) -> torch.Tensor:
    """Probability-flow ODE solution from `noise`: dopri5 at `REFERENCE_TOL` in float64.

    Args:
        registry: component source.
        config: the sweep's composition (process, model and their options are used).
        noise: `(N, *shape)` initial noise.
        denoise: also apply the final denoising step (x0 prediction at the grid's end), as samplers
            with `denoise_final` do; a grid that ends at sigma = 0 does it by itself.

    Returns:
        `(N, *shape)` float64 on the config's device.
    """
    tight = {"rtol": REFERENCE_TOL, "atol": REFERENCE_TOL}
    ref_config = SampleConfig(
        process=config.process,
        solver="ode",
        model=config.model,
        num_samples=noise.shape[0],
        device=config.device,
        dtype="float64",
        process_options=config.process_options,
        solver_options=tight,
        model_options=config.model_options,
        # ode integrates between the grid's ends (built at ode's own step count), and to sigma = 0
        # through its last time when the grid ends there
        grid=config.grid,
        grid_options=config.grid_options,
    )
    run = sample(ref_config, registry=registry, x_init=noise)
    comp = run.composition
    times, to_zero = split_final_zero(comp.grid, comp.process)
    if not denoise or to_zero:  # a grid ending at sigma = 0 already ends with the x0 prediction
        return run.samples
    return comp.model.predict(run.samples, times[-1].to(run.samples.device)).x0
