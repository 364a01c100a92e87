"""Sample plots: 2-D scatter over the true density where known, image grids for image data."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffkit.io import write_with


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


def _figure_images(images: np.ndarray):  # noqa: ANN202
    import matplotlib.pyplot as plt

    count = min(64, images.shape[0])
    low, high = np.percentile(images[:count], [0.5, 99.5])  # one grey scale for the whole grid
    cols = int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < count:
            image = images[i]
            image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
            ax.imshow(np.clip((image - low) / max(high - low, 1e-12), 0, 1), cmap="gray", vmin=0, vmax=1)
    return fig, axes[0, 0]


def save_plot(
    path: Path,
    samples: np.ndarray,
    *,
    title: str = "",
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Write a PNG of `samples` `(N, *shape)`: scatter for 2-D, image grid for `(C,H,W)` or square D.

    Args:
        path: output PNG path (written atomically).
        samples: array of samples.
        title: figure title.
        log_prob: optional callable mapping float64 points `(M, 2)` to log-density `(M,)`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flat = samples.reshape(samples.shape[0], -1)
    side = int(round(math.sqrt(flat.shape[1])))
    if samples.ndim == 2 and samples.shape[1] == 2:
        fig, ax = _figure_2d(samples, log_prob)
    elif samples.ndim == 4:
        fig, ax = _figure_images(samples)
    elif side * side == flat.shape[1]:
        fig, ax = _figure_images(flat.reshape(-1, 1, side, side))
    else:
        fig, ax = _figure_2d(flat[:, :2])
    if title:
        fig.suptitle(title, fontsize=9)
    try:
        write_with(path, lambda handle: fig.savefig(handle, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)
