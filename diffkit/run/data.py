"""The dataset contract: a frozen in-memory tensor of examples, optional class labels, batching and splits.

Dataset plugins (`Registrar.add_dataset`) return a `Dataset`. Value conventions:

- images: float32 `(N, C, H, W)` scaled to [-1, 1] (`value_range == (-1.0, 1.0)`), the range
  DDPM (Ho et al. 2020, sec. 3.3) and the score-SDE code feed their networks;
- 2-D toys: float32 `(N, 2)`, unbounded (`value_range is None`), in the fixed affine scalings of
  the FFJORD toy generators (Grathwohl et al. 2019), roughly [-4, 4] per coordinate.

Randomness is explicit: `sample_batch` takes a `torch.Generator`, `split` a seed.

Users' own arrays (`--data PATH.npy|.npz`) load through `diffkit.run.datafile`, which records the
file's path and SHA-256 in `Dataset.source`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Dataset:
    """In-memory examples `data (N, *data_shape)` float32 with optional labels `(N,)` int64.

    Attributes:
        name: registry name of the dataset (e.g. "digits").
        data: float32 tensor `(N, *data_shape)`.
        labels: int64 tensor `(N,)` with values in `[0, num_classes)`, or None.
        num_classes: number of classes when `labels` is given, else 0.
        value_range: `(low, high)` bounds of every value (images: (-1, 1)), or None if unbounded.
        source: where a file dataset came from (`{"path": ..., "sha256": ...}`), else None.
    """

    name: str
    data: Tensor
    labels: Tensor | None = None
    num_classes: int = 0
    value_range: tuple[float, float] | None = None
    source: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.data.dtype != torch.float32 or self.data.ndim < 2 or self.data.shape[0] < 1:
            raise ValueError(
                f"dataset {self.name!r}: data must be float32 (N, *shape) with N >= 1, "
                f"got {self.data.dtype} {tuple(self.data.shape)}"
            )
        if self.labels is None:
            if self.num_classes != 0:
                raise ValueError(f"dataset {self.name!r}: num_classes={self.num_classes} without labels")
            return
        if self.labels.dtype != torch.int64 or self.labels.shape != self.data.shape[:1]:
            raise ValueError(
                f"dataset {self.name!r}: labels must be int64 ({self.data.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if self.num_classes < 1 or int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes:
            raise ValueError(f"dataset {self.name!r}: labels must lie in [0, num_classes={self.num_classes})")

    def __len__(self) -> int:
        """Number of examples N."""
        return self.data.shape[0]

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. `(2,)` or `(1, 8, 8)`."""
        return tuple(self.data.shape[1:])

    @property
    def is_image(self) -> bool:
        """True for `(C, H, W)` examples."""
        return len(self.data_shape) == 3

    def describe(self) -> str:
        """One line: name, count, shape, observed value range and labels, e.g. for `diffkit train`."""
        kind = "images" if self.is_image else "points"
        low, high = float(self.data.min()), float(self.data.max())
        line = f"data {self.name}: {len(self)} {kind} of shape {self.data_shape}"
        line += f", values in [{low:.4g}, {high:.4g}]"
        if self.value_range is not None:
            line += f" (declared range [{self.value_range[0]:g}, {self.value_range[1]:g}])"
        if self.labels is not None:
            line += f", labels 0..{self.num_classes - 1}"
        return line

    def subset(self, index: Tensor) -> Dataset:
        """The examples at `index` (int64 `(M,)`), as a new dataset with the same metadata."""
        labels = None if self.labels is None else self.labels[index]
        return Dataset(self.name, self.data[index], labels, self.num_classes, self.value_range, self.source)

    def sample_batch(
        self, batch_size: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Draw `batch_size` examples uniformly with replacement.

        Args:
            batch_size: number of examples B >= 1 (may exceed N).
            generator: source of the indices; the same generator state gives the same batch.

        Returns:
            `(x, labels)`: x float32 `(B, *data_shape)`, labels int64 `(B,)` or None.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        index = torch.randint(len(self), (batch_size,), generator=generator)
        return self.data[index], None if self.labels is None else self.labels[index]

    def split(self, fraction: float, *, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Deterministic random split into `(train, held_out)`, disjoint and covering all N examples.

        Args:
            fraction: share of examples held out, in (0, 1); `round(fraction * N)` of them, at
                least 1 and at most N - 1.
            seed: seed of the permutation; the same seed gives the same split.

        Returns:
            `(train, held_out)` with `N - M` and `M` examples, each in ascending original order.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
        if len(self) < 2:
            raise ValueError(f"dataset {self.name!r} has {len(self)} example(s); cannot split")
        held = min(max(round(fraction * len(self)), 1), len(self) - 1)
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        held_index, _ = torch.sort(order[:held])
        train_index, _ = torch.sort(order[held:])
        return self.subset(train_index), self.subset(held_index)
