"""Quality of a sample set against an exact ("oracle") model, for summaries and benchmarks."""

from __future__ import annotations

import torch

from diffkit.metrics import sliced_wasserstein
from diffkit.model import ExactData


def oracle_quality(model: object, samples: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """Sliced-W2 of `samples` `(N, *shape)` to fresh exact samples, with the metric's noise floor.

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
    return {"sliced_w2": float(distance), "sliced_w2_floor": float(floor)}
