"""Sample plots: 2-D scatter over the true density where known, image grids for image data.

Image grids map a fixed value range (the data's declared range, [-1, 1] for every image dataset
and model diffkit ships or trains) linearly onto black..white and clip outside it, so a few
outlying samples show as saturated pixels and never rescale the rest of the grid. One channel is
drawn gray, three as RGB, any other count as the gray channel mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffkit.run.io import write_with

#: Value range of image grids when the caller names none: the [-1, 1] of every image dataset.
IMAGE_RANGE: tuple[float, float] = (-1.0, 1.0)


def _figure_2d(samples: np.ndarray, log_prob=None):  # noqa: ANN001, ANN202 - matplotlib types
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    lo = np.percentile(samples, 0.5, axis=0)
    hi = np.percentile(samples, 99.5, axis=0)
    pad = 0.15 * (hi - lo) + 1e-3
    lo, hi = lo - pad, hi + pad
    if log_prob is not None:
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        points = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1))
        log_density = log_prob(points).numpy().reshape(gx.shape)
        top = float(log_density.max())
        levels = np.linspace(top - 9.0, top, 19)  # nine nats of dynamic range, log-spaced density
        ax.contourf(gx, gy, np.maximum(log_density, top - 9.0), levels=levels, cmap="Blues")
    shown = samples[:5000]
    ax.scatter(shown[:, 0], shown[:, 1], s=2, c="tab:red", alpha=0.5, linewidths=0)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    return fig, ax


def grid_pixels(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Display values in [0, 1] of one image `(C, H, W)`: `(H, W)` gray or `(H, W, 3)` RGB.

    Values map linearly from `value_range` to [0, 1] and are clipped there.
    """
    low, high = value_range
    scaled = np.clip((np.asarray(image, dtype=np.float64) - low) / max(high - low, 1e-12), 0.0, 1.0)
    if scaled.shape[0] == 3:
        return np.moveaxis(scaled, 0, -1)
    return scaled[0] if scaled.shape[0] == 1 else scaled.mean(axis=0)


def _figure_images(images: np.ndarray, value_range: tuple[float, float]):  # noqa: ANN202
    import matplotlib.pyplot as plt

    count = min(64, images.shape[0])
    cols = int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < count:
            ax.imshow(grid_pixels(images[i], value_range), cmap="gray", vmin=0, vmax=1)
    return fig, axes[0, 0]


def save_plot(
    path: Path,
    samples: np.ndarray,
    *,
    title: str = "",
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    value_range: tuple[float, float] | None = None,
) -> None:
    """Write a PNG of `samples` `(N, *shape)`: scatter for 2-D, image grid for `(C,H,W)` or square D.

    Args:
        path: output PNG path (written atomically).
        samples: array of samples.
        title: figure title.
        log_prob: optional callable mapping float64 points `(M, 2)` to log-density `(M,)`.
        value_range: `(low, high)` of image values shown black..white (default [-1, 1]).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    value_range = IMAGE_RANGE if value_range is None else (float(value_range[0]), float(value_range[1]))
    if not value_range[1] > value_range[0]:
        raise ValueError(f"value_range must have low < high, got {value_range}")
    flat = samples.reshape(samples.shape[0], -1)
    side = int(round(math.sqrt(flat.shape[1])))
    if samples.ndim == 2 and samples.shape[1] == 2:
        fig, ax = _figure_2d(samples, log_prob)
    elif samples.ndim == 4:
        fig, ax = _figure_images(samples, value_range)
    elif side * side == flat.shape[1]:
        fig, ax = _figure_images(flat.reshape(-1, 1, side, side), value_range)
    else:
        fig, ax = _figure_2d(flat[:, :2])
    if title:
        fig.suptitle(title, fontsize=9)
    try:
        write_with(path, lambda handle: fig.savefig(handle, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)
