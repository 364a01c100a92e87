"""Quality of a sample set against an exact ("oracle") model, for summaries and benchmarks.

Memory does not grow with the number of samples N beyond the samples themselves: sliced W2
(which needs sorted projections of whole sets) is measured on the first `METRIC_SAMPLES`
samples, against exact sets of that size; the mode counts and the within-mode spread use all
N samples, read `CHUNK` rows at a time. Samples are exchangeable, so the first rows are a
uniform subsample; runs of up to `METRIC_SAMPLES` samples are scored on all of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from diffkit.core.model import ExactData
from diffkit.eval.metrics import mode_count_tv, sliced_wasserstein, spread_ratio
from diffkit.run.memory import release_free_memory

METRIC_SAMPLES = 50_000  # sliced W2 (and its floor) use the first this many samples
CHUNK = 4096  # rows per chunk of the streamed metrics (component_of holds K of them per row)


def _chunks(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Consecutive `CHUNK`-row blocks `(B, *dims)` of `x` `(N, *dims)`, as float64 on the CPU."""
    for start in range(0, x.shape[0], CHUNK):
        yield x[start : start + CHUNK].detach().to("cpu", torch.float64)


def _exact_chunks(model: ExactData, n: int, first: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """`n` exact samples, float64: `first` rows, then chunks of `CHUNK` rows (the last one shorter)."""
    yield model.sample_data(first, generator=generator, dtype=torch.float64)
    for start in range(first, n, CHUNK):
        yield model.sample_data(min(CHUNK, n - start), generator=generator, dtype=torch.float64)


def _components(model: object, x: torch.Tensor) -> torch.Tensor:
    """The oracle's `component_of` each row of `x` `(N, *dims)`, `CHUNK` rows at a time: `(N,)` int32."""
    ids = torch.empty(x.shape[0], dtype=torch.int32)  # one buffer: no small blocks left among the chunks
    for start, block in zip(range(0, x.shape[0], CHUNK), _chunks(x), strict=True):
        ids[start : start + block.shape[0]] = model.component_of(block)
    return ids


def metric_samples(n: int, limit: int = METRIC_SAMPLES) -> int:
    """How many of `n` samples the sliced-W2 summaries use: the first min(n, limit)."""
    return min(n, limit)


def oracle_quality(
    model: object, samples: torch.Tensor, *, seed: int = 0, limit: int = METRIC_SAMPLES
) -> dict[str, float]:
    """Sliced-W2 of `samples` `(N, *shape)` to fresh exact samples, with the metric's noise floor.

    Sliced W2 compares the first m = min(N, `limit`) samples with m exact ones; its floor is the
    same distance between two independent exact sets of size m, so a perfect sampler scores
    about the floor. Mixture oracles also get the mode-weight total variation over all N samples
    (with its floor from N exact samples: the m of the floor, then more drawn `CHUNK` at a
    time) and the within-mode spread ratio over all N (per-mode sample std over the data std;
    1 is exact). Runs of N <= `limit` score exactly as the whole-set metrics of `diffkit.eval.metrics`.
    Returns {} when the model has no exact data.
    """
    if not isinstance(model, ExactData):
        return {}
    n = samples.shape[0]
    m = metric_samples(n, limit)
    head = samples[:m].detach().to("cpu", torch.float64)
    generator = torch.Generator().manual_seed(seed + 7919)
    reference = model.sample_data(m, generator=generator, dtype=torch.float64)
    exact = _exact_chunks(model, n, m, generator)
    other = next(exact)
    projections = torch.Generator().manual_seed(seed + 104729)
    distance = sliced_wasserstein(head, reference, generator=projections)
    projections = torch.Generator().manual_seed(seed + 104729)
    floor = sliced_wasserstein(other, reference, generator=projections)
    quality = {"sliced_w2": float(distance), "sliced_w2_floor": float(floor)}
    del head, reference
    release_free_memory()
    mixture = getattr(model, "mixture", None)
    if mixture is not None and hasattr(model, "component_of"):
        k = mixture.num_components
        counts, squares = mode_moments(model, samples, k)
        release_free_memory()
        floor_counts = torch.bincount(_components(model, other), minlength=k)
        del other
        for x in exact:
            floor_counts += torch.bincount(_components(model, x), minlength=k)
        release_free_memory()
        quality["mode_weight_tv"] = float(mode_count_tv(counts, mixture.weights))
        quality["mode_weight_tv_floor"] = float(mode_count_tv(floor_counts, mixture.weights))
        quality["spread_ratio"] = float(spread_ratio(counts, squares, mixture.stds))
    return quality


def mode_moments(model: object, samples: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples per component `(K,)` and per-component sums of squared deviations from the
    component's sample mean `(K, D)`, float64, in two passes over `CHUNK`-row blocks.

    Components are the oracle's `component_of`; the sums accumulate in place in row order, as
    `within_mode_spread` does on the whole set, so the spread ratio agrees with it.
    """
    dim = samples[:1].reshape(1, -1).shape[1]
    ids = _components(model, samples)
    counts = torch.bincount(ids, minlength=k)
    sums = torch.zeros(k, dim, dtype=torch.float64)
    for start, x in zip(range(0, ids.shape[0], CHUNK), _chunks(samples), strict=True):
        sums.index_add_(0, ids[start : start + x.shape[0]], x.reshape(x.shape[0], -1))
    means = sums / counts.clamp_min(1).to(torch.float64).unsqueeze(-1)
    squares = torch.zeros(k, dim, dtype=torch.float64)
    for start, x in zip(range(0, ids.shape[0], CHUNK), _chunks(samples), strict=True):
        index = ids[start : start + x.shape[0]]
        squares.index_add_(0, index, (x.reshape(x.shape[0], -1) - means[index]).square())
    return counts, squares


def class_quality(model: object, samples: torch.Tensor, label: int, *, seed: int = 0) -> dict[str, float]:
    """Sliced W2 of the first m = min(N, METRIC_SAMPLES) `samples` to m exact samples of class
    `label`, and its floor (two exact sets of size m); {} if the model cannot draw a class."""
    base = getattr(model, "base", model)
    if not hasattr(base, "sample_class"):
        return {}
    m = metric_samples(samples.shape[0])
    generator = torch.Generator().manual_seed(seed + 7919)
    reference, other = (
        base.sample_class(label, m, generator=generator, dtype=torch.float64) for _ in range(2)
    )
    head = samples[:m].detach().to("cpu", torch.float64)
    return {
        "sliced_w2_to_class": float(sliced_wasserstein(head, reference)),
        "sliced_w2_floor": float(sliced_wasserstein(other, reference)),
    }
