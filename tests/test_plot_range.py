"""Image grids map the data's fixed value range to black..white: outliers never rescale the rest."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest

from diffkit.run.plot import IMAGE_RANGE, _figure_images, grid_pixels, save_plot

matplotlib.use("Agg")


def _grid(images: np.ndarray, value_range: tuple[float, float] = IMAGE_RANGE) -> list[np.ndarray]:
    """The arrays drawn in each tile of the grid of `images`."""
    import matplotlib.pyplot as plt

    fig, _ = _figure_images(images, value_range)
    try:
        return [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]
    finally:
        plt.close(fig)


def test_outliers_leave_the_in_range_tiles_unchanged() -> None:
    images = np.random.default_rng(0).uniform(-1, 1, size=(16, 1, 8, 8))
    spoiled = images.copy()
    spoiled[[3, 9]] = 40.0  # two exploded samples
    spoiled[12, 0, :2] = -25.0
    clean, dirty = _grid(images), _grid(spoiled)
    for i in range(16):
        if i not in (3, 9, 12):
            np.testing.assert_array_equal(dirty[i], clean[i])
    np.testing.assert_array_equal(clean[0], (images[0, 0] + 1) / 2)  # [-1, 1] -> [0, 1], no percentiles
    assert (dirty[3] == 1.0).all() and (dirty[12][:2] == 0.0).all()  # outliers saturate, clipped
    np.testing.assert_array_equal(dirty[12][2:], clean[12][2:])


def test_png_differs_only_where_the_outliers_are(tmp_path: Path) -> None:
    images = np.random.default_rng(1).uniform(-1, 1, size=(4, 1, 8, 8))
    spoiled = images.copy()
    spoiled[0] = 50.0
    save_plot(tmp_path / "a.png", images)
    save_plot(tmp_path / "b.png", spoiled)
    import matplotlib.image

    a, b = matplotlib.image.imread(tmp_path / "a.png"), matplotlib.image.imread(tmp_path / "b.png")
    assert a.shape == b.shape
    changed = np.argwhere(np.abs(a - b).max(axis=-1) > 0)
    assert len(changed) > 0
    # a 2x2 grid: every changed pixel lies in the top-left tile
    rows, cols = a.shape[:2]
    assert changed[:, 0].max() < rows / 2 and changed[:, 1].max() < cols / 2


def test_colour_tiles_are_rgb_in_the_declared_range() -> None:
    red = np.stack([np.ones((4, 4)), -np.ones((4, 4)), -np.ones((4, 4))])
    np.testing.assert_array_equal(
        grid_pixels(red, IMAGE_RANGE), np.dstack([np.ones((4, 4)), *[np.zeros((4, 4))] * 2])
    )
    tiles = _grid(np.stack([red, -red]))
    assert tiles[0].shape == (4, 4, 3) and tiles[1][0, 0].tolist() == [0.0, 1.0, 1.0]
    half = grid_pixels(np.full((1, 2, 2), 0.5), (0.0, 2.0))  # another declared range
    np.testing.assert_array_equal(half, np.full((2, 2), 0.25))
    two = grid_pixels(np.stack([np.full((2, 2), -1.0), np.full((2, 2), 1.0)]), IMAGE_RANGE)
    np.testing.assert_array_equal(two, np.full((2, 2), 0.5))  # neither gray nor RGB: channel mean


def test_empty_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="value_range must have low < high"):
        save_plot(tmp_path / "x.png", np.zeros((2, 1, 4, 4)), value_range=(1.0, 1.0))
    assert not (tmp_path / "x.png").exists()
