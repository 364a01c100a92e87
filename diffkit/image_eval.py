"""Scoring generated images against a dataset with its shipped classifier, next to the real-data floor.

The dataset is split deterministically (`Dataset.split(HELD_OUT, seed=SPLIT_SEED)`, the split the
classifier was trained on). The reference is the training split; the *floor* is the score of the
held-out real images against it: what a perfect sampler with that many samples would get.
FID is biased upward for small sample counts (Bińkowski et al. 2018, sec. 3), so compare a
sample set's FID with the floor at similar counts; KID is unbiased and comparable at any count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from diffkit.classifier import DigitClassifier, load_classifier
from diffkit.classifier.net import batched
from diffkit.classifier.train import HELD_OUT, SPLIT_SEED
from diffkit.data import Dataset
from diffkit.errors import UsageError
from diffkit.image_metrics import (
    feature_frechet_distance,
    kernel_inception_distance,
    label_histogram,
    total_variation,
)


@dataclass(frozen=True)
class ImageScores:
    """Scores of one image set against the reference (training split) features.

    Attributes:
        n: number of images scored.
        fid: Fréchet distance of classifier features (Heusel et al. 2017).
        kid, kid_std: KID mean and std over subsets (Bińkowski et al. 2018).
        label_tv: TV distance of the predicted-label histogram to the reference label distribution.
        histogram: the predicted-label histogram (length num_classes, sums to 1).
    """

    n: int
    fid: float
    kid: float
    kid_std: float
    label_tv: float
    histogram: list[float]


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
    if not bool(torch.isfinite(samples).all()):
        raise UsageError("samples contain NaN or infinite values")


def score_images(
    classifier: DigitClassifier,
    images: Tensor,
    reference: Tensor,
    reference_labels: Tensor,
    *,
    generator: torch.Generator,
) -> ImageScores:
    """Score `images` `(N, 1, H, W)` against features `reference` `(M, D)` with true labels `(M,)`.

    Images are clamped to the data range [-1, 1] first, as when they are written out as pictures.
    """
    clamped = images.to(torch.float32).clamp(-1.0, 1.0)
    features = batched(classifier.features, clamped)
    predicted = classifier.head(features).argmax(dim=1)
    num_classes = classifier.config.num_classes
    histogram = label_histogram(predicted, num_classes)
    kid, kid_std = kernel_inception_distance(features, reference, generator=generator)
    return ImageScores(
        n=images.shape[0],
        fid=float(feature_frechet_distance(features, reference)),
        kid=kid,
        kid_std=kid_std,
        label_tv=float(total_variation(histogram, label_histogram(reference_labels, num_classes))),
        histogram=[round(float(value), 6) for value in histogram],
    )


def evaluate_images(samples: Tensor, dataset: Dataset, *, seed: int = 0) -> ImageEvaluation:
    """Score `samples` `(N, *data_shape)` and the held-out floor against `dataset`'s training split.

    Args:
        samples: generated images in the data range [-1, 1], `(N, 1, H, W)`, N >= 2.
        dataset: a labelled image dataset with a shipped classifier (`digits`, `mnist`).
        seed: seed of the KID subsets.
    """
    check_images(samples, dataset)
    classifier = load_classifier(dataset.name)
    train, held = dataset.split(HELD_OUT, seed=SPLIT_SEED)
    if train.labels is None:
        raise UsageError(f"dataset {dataset.name!r} has no labels")
    reference = batched(classifier.features, train.data)

    def score(images: Tensor) -> ImageScores:
        generator = torch.Generator().manual_seed(seed)
        return score_images(classifier, images, reference, train.labels, generator=generator)

    matched = None
    if samples.shape[0] >= len(held):
        features = batched(classifier.features, samples[: len(held)].to(torch.float32).clamp(-1.0, 1.0))
        matched = float(feature_frechet_distance(features, reference))
    return ImageEvaluation(dataset.name, len(train), score(samples), score(held.data), matched)
