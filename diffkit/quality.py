"""Quality of a sample set against an exact ("oracle") model, for summaries and benchmarks."""

from __future__ import annotations

import torch

from diffkit.metrics import mode_weight_tv, sliced_wasserstein, within_mode_spread
from diffkit.model import ExactData


def oracle_quality(model: object, samples: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """Sliced-W2 of `samples` `(N, *shape)` to fresh exact samples, with the metric's noise floor.

    Mixture oracles also get the mode-weight total variation (with its floor from an exact set)
    and the within-mode spread ratio (per-mode sample std over the data std; 1 is exact).
    The floor is the same distance between two independent exact sample sets of size N, so a
    perfect sampler scores about the floor. Returns {} when the model has no exact data.
    """
    if not isinstance(model, ExactData):
        return {}
    samples = samples.detach().to("cpu", torch.float64)
    n = samples.shape[0]
    generator = torch.Generator().manual_seed(seed + 7919)
    reference = model.sample_data(n, generator=generator, dtype=torch.float64)
    other = model.sample_data(n, generator=generator, dtype=torch.float64)
    projections = torch.Generator().manual_seed(seed + 104729)
    distance = sliced_wasserstein(samples, reference, generator=projections)
    projections = torch.Generator().manual_seed(seed + 104729)
    floor = sliced_wasserstein(other, reference, generator=projections)
    quality = {"sliced_w2": float(distance), "sliced_w2_floor": float(floor)}
    mixture = getattr(model, "mixture", None)
    if mixture is not None and hasattr(model, "component_of"):
        components = model.component_of(samples)
        quality["mode_weight_tv"] = float(mode_weight_tv(components, mixture.weights))
        quality["mode_weight_tv_floor"] = float(mode_weight_tv(model.component_of(other), mixture.weights))
        quality["spread_ratio"] = float(within_mode_spread(samples, components, mixture.stds))
    return quality
