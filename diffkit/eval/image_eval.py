"""Scoring generated images against a dataset with its shipped classifier, next to the real-data floor.

The dataset is split deterministically (`Dataset.split(HELD_OUT, seed=SPLIT_SEED)`, the split the
classifier was trained on). The reference is the training split; the *floor* is the score of the
held-out real images against it: what a perfect sampler with that many samples would get.
FID is biased upward for small sample counts (Bińkowski et al. 2018, sec. 3), so compare a
sample set's FID with the floor at similar counts; KID is unbiased and comparable at any count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from diffkit.classifier import DigitClassifier, load_classifier
from diffkit.classifier.net import batched
from diffkit.classifier.train import HELD_OUT, SPLIT_SEED
from diffkit.core.errors import UsageError
from diffkit.eval.image_metrics import (
    FeatureMoments,
    feature_frechet_distance,
    feature_moments,
    frechet_distance,
    gaussian_fit,
    kernel_inception_distance,
    label_histogram,
    merge_moments,
    total_variation,
)
from diffkit.run.data import Dataset

KID_SAMPLES = 50_000  # KID subsets are drawn from the first this many images
BATCH = 1024  # images per classifier batch


@dataclass(frozen=True)
class ImageScores:
    """Scores of one image set against the reference (training split) features.

    Attributes:
        n: number of images scored.
        fid: Fréchet distance of classifier features (Heusel et al. 2017).
        kid, kid_std: KID mean and std over subsets (Bińkowski et al. 2018).
        kid_n: the KID subsets are drawn from the first `kid_n` images (min(n, KID_SAMPLES)).
        label_tv: TV distance of the predicted-label histogram to the reference label distribution.
        histogram: the predicted-label histogram (length num_classes, sums to 1).
    """

    n: int
    fid: float
    kid: float
    kid_std: float
    label_tv: float
    histogram: list[float]
    kid_n: int


@dataclass(frozen=True)
class ImageEvaluation:
    """Scores of a sample set and of the held-out real data (the floor) against the training split.

    `fid_at_floor_n` is the FID of the first `floor.n` samples (None when there are fewer): FID's
    small-sample bias then matches the floor's, so the two are directly comparable.
    """

    dataset: str
    reference_size: int
    samples: ImageScores
    floor: ImageScores
    fid_at_floor_n: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


def check_images(samples: Tensor, dataset: Dataset) -> None:
    """Raise UsageError unless `samples` is a finite `(N, *data_shape)` batch with N >= 2."""
    shape = tuple(samples.shape)
    if samples.ndim != 1 + len(dataset.data_shape) or shape[1:] != dataset.data_shape or shape[0] < 2:
        raise UsageError(
            f"samples have shape {shape}; dataset {dataset.name!r} needs "
            f"(N, {', '.join(map(str, dataset.data_shape))}) with N >= 2"
        )
    if not all(bool(torch.isfinite(samples[i : i + BATCH]).all()) for i in range(0, shape[0], BATCH)):
        raise UsageError("samples contain NaN or infinite values")


class _Streamed(NamedTuple):
    """What one pass over an image set keeps: feature moments, predicted-label counts, first features."""

    moments: FeatureMoments
    counts: Tensor
    head: Tensor


@torch.no_grad()
def _stream(classifier: DigitClassifier, images: Tensor, keep: int) -> _Streamed:
    """Features of `images` `(N, 1, H, W)` computed `BATCH` at a time (clamped to [-1, 1], float32):
    their float64 moments, the predicted-label counts and the first `keep` feature rows."""
    moments, head = None, []
    counts = torch.zeros(classifier.config.num_classes, dtype=torch.int64)
    for start in range(0, images.shape[0], BATCH):
        features = classifier.features(images[start : start + BATCH].to(torch.float32).clamp(-1.0, 1.0))
        predicted = classifier.head(features).argmax(dim=1)
        counts += torch.bincount(predicted, minlength=counts.shape[0])
        batch = feature_moments(features)
        moments = batch if moments is None else merge_moments(moments, batch)
        if start < keep:
            head.append(features[: keep - start])
    assert moments is not None  # N >= 2 (check_images)
    return _Streamed(moments, counts, torch.cat(head))


def score_images(
    classifier: DigitClassifier,
    images: Tensor,
    reference: Tensor,
    reference_labels: Tensor,
    *,
    generator: torch.Generator,
    kid_samples: int = KID_SAMPLES,
) -> ImageScores:
    """Score `images` `(N, 1, H, W)` against features `reference` `(M, D)` with true labels `(M,)`.

    Images are clamped to the data range [-1, 1] first, as when they are written out as pictures.
    Memory stays flat in N: FID uses the mean and covariance of all N features accumulated in
    float64 batch by batch, the label histogram all N predictions, and KID subsets are drawn
    from the first min(N, `kid_samples`) features.
    """
    streamed = _stream(classifier, images, kid_samples)
    return _scores(classifier, streamed, reference, reference_labels, generator)


def _scores(
    classifier: DigitClassifier,
    streamed: _Streamed,
    reference: Tensor,
    reference_labels: Tensor,
    generator: torch.Generator,
) -> ImageScores:
    num_classes = classifier.config.num_classes
    counts = streamed.counts.to(torch.float64)
    histogram = counts / counts.sum()
    kid, kid_std = kernel_inception_distance(streamed.head, reference, generator=generator)
    moments = streamed.moments
    return ImageScores(
        n=moments.n,
        fid=float(frechet_distance(moments.mean, moments.covariance(), *gaussian_fit(reference))),
        kid=kid,
        kid_std=kid_std,
        label_tv=float(total_variation(histogram, label_histogram(reference_labels, num_classes))),
        histogram=[round(float(value), 6) for value in histogram],
        kid_n=streamed.head.shape[0],
    )


def evaluate_images(samples: Tensor, dataset: Dataset, *, seed: int = 0) -> ImageEvaluation:
    """Score `samples` `(N, *data_shape)` and the held-out floor against `dataset`'s training split.

    Args:
        samples: generated images in the data range [-1, 1], `(N, 1, H, W)`, N >= 2, any float
            dtype (read `BATCH` images at a time, so it may be a memory-mapped array's tensor).
        dataset: a labelled image dataset with a shipped classifier (`digits`, `mnist`).
        seed: seed of the KID subsets.
    """
    check_images(samples, dataset)
    classifier = load_classifier(dataset.name)
    train, held = dataset.split(HELD_OUT, seed=SPLIT_SEED)
    if train.labels is None:
        raise UsageError(f"dataset {dataset.name!r} has no labels")
    reference = batched(classifier.features, train.data)

    def score(streamed: _Streamed) -> ImageScores:
        generator = torch.Generator().manual_seed(seed)
        return _scores(classifier, streamed, reference, train.labels, generator)

    streamed = _stream(classifier, samples, max(KID_SAMPLES, len(held)))
    matched = None
    if samples.shape[0] >= len(held):  # FID of the first len(held) samples, comparable with the floor
        matched = float(feature_frechet_distance(streamed.head[: len(held)], reference))
    streamed = streamed._replace(head=streamed.head[:KID_SAMPLES])
    floor = score(_stream(classifier, held.data, KID_SAMPLES))
    return ImageEvaluation(dataset.name, len(train), score(streamed), floor, matched)
