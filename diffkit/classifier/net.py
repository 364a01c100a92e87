"""A small CNN digit classifier whose penultimate layer is the feature space of the image metrics.

The role Inception-v3's pool3 layer plays for FID (Heusel et al. 2017, "GANs Trained by a Two
Time-Scale Update Rule Converge to a Local Nash Equilibrium", sec. 4) is played here by the
`width`-dimensional post-ReLU layer before the logits of a classifier trained on the dataset
itself, as in the "classifier FID" of small-image diffusion papers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of a `DigitClassifier`; stored as JSON beside the weights.

    Attributes:
        side: image height = width (8 for digits, 28 for mnist); images are `(1, side, side)`.
        channels: channels of the three 3x3 convolutions.
        width: dimension of the feature (penultimate) layer.
        num_classes: number of output logits.
        pools: number of trailing convolutions followed by 2x2 max pooling (1 for 8x8, 3 for 28x28).
    """

    side: int = 8
    channels: tuple[int, int, int] = (16, 32, 32)
    width: int = 64
    num_classes: int = 10
    pools: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self) | {"channels": list(self.channels)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ClassifierConfig:
        """Inverse of `to_dict`; unknown keys raise TypeError."""
        return cls(**(record | {"channels": tuple(record["channels"])}))


class DigitClassifier(nn.Module):
    """conv3x3-ReLU x3 (the last `pools` max-pooled) -> flatten -> Linear-ReLU (features) -> Linear."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        previous, side = 1, config.side
        for index, channels in enumerate(config.channels):
            layers += [nn.Conv2d(previous, channels, 3, padding=1), nn.ReLU()]
            if index >= len(config.channels) - config.pools:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            previous = channels
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.feature = nn.Sequential(nn.Linear(previous * side * side, config.width), nn.ReLU())
        self.head = nn.Linear(config.width, config.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features `(B, width)` of images `(B, 1, side, side)` in [-1, 1]."""
        return self.feature(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits `(B, num_classes)` of images `(B, 1, side, side)`."""
        return self.head(self.features(x))


@torch.no_grad()
def batched(function: Any, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Apply `function` to `x` `(N, ...)` in batches of `batch_size`, concatenating along dim 0."""
    return torch.cat([function(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
