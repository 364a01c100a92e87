"""Colour: the `photos` patches, gray inputs for `diffkit colorize`, colour scores, the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.errors import OptionError, UsageError
from diffkit.run.data import Dataset
from diffkit.wrappers.colour import colorize_input, colour_scores

#: `chroma_corr` of the shipped `photos` model on the test's 100 held-out patches (em, 50 steps,
#: seed 0) measured 0.266; a model or wrapper that no longer follows the gray input gives about 0.
CHROMA_CORR_FLOOR = 0.15


@pytest.fixture(scope="module")
def heldout(registry: diffkit.Registry) -> Dataset:
    """The held-out `photos` patches."""
    return registry.build("dataset", "photos", {"split": "heldout"})


def _box(image: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """Mean of 4x4 pixel blocks of `image[rows, cols]` (H, W, 3), as (3, h, w) in [-1, 1]."""
    part = image[rows, cols].astype(np.float64)
    h, w = part.shape[0] // 4, part.shape[1] // 4
    return np.moveaxis(part.reshape(h, 4, w, 4, 3).mean(axis=(1, 3)) / 127.5 - 1.0, -1, 0)


def test_photos_patches_come_from_disjoint_regions(registry: diffkit.Registry, heldout: Dataset) -> None:
    from sklearn.datasets import load_sample_images

    train = registry.build("dataset", "photos", {})
    assert train.data.shape == (5700, 3, 8, 8) and heldout.data.shape == (1700, 3, 8, 8)
    assert train.value_range == heldout.value_range == (-1.0, 1.0) and train.num_classes == 2
    assert torch.bincount(heldout.labels).tolist() == [850, 850]
    china, flower = load_sample_images().images
    # first train patch: top-left 32x32 pixels; first held-out patch: from column 120 * 4 = 480 on
    np.testing.assert_allclose(train.data[0].numpy(), _box(china, slice(0, 32), slice(0, 32)), atol=1e-6)
    np.testing.assert_allclose(heldout.data[0].numpy(), _box(china, slice(0, 32), slice(480, 512)), atol=1e-6)
    np.testing.assert_allclose(
        heldout.data[850].numpy(), _box(flower, slice(0, 32), slice(480, 512)), atol=1e-6
    )
    # the next held-out patch starts `stride` = 2 downsampled pixels (8 photo pixels) to the right
    np.testing.assert_allclose(heldout.data[1].numpy(), _box(china, slice(0, 32), slice(488, 520)), atol=1e-6)
    big = registry.build("dataset", "photos", {"size": "16", "stride": "8", "split": "heldout"})
    assert big.data.shape == (2 * 12 * 4, 3, 16, 16)  # 106 rows -> 12, 40 columns -> 4 windows
    with pytest.raises(OptionError, match="split"):
        registry.build("dataset", "photos", {"split": "test"})
    with pytest.raises(OptionError, match="patch size 48 exceeds the 106x40 image region"):
        registry.build("dataset", "photos", {"size": "48", "split": "heldout"})


def test_colorize_input_from_a_dataset_or_a_file(registry, heldout: Dataset, tmp_path: Path) -> None:
    gray, truth = colorize_input(registry, "photos", {"split": "heldout"})
    assert gray.dtype == torch.float64 and gray.shape == (1700, 8, 8)
    torch.testing.assert_close(truth, heldout.data.double())
    torch.testing.assert_close(gray, heldout.data.double().mean(1))
    np.save(tmp_path / "c.npy", heldout.data[:5].numpy())
    gray, truth = colorize_input(registry, str(tmp_path / "c.npy"), {})
    assert gray.shape == (5, 8, 8) and truth.shape == (5, 3, 8, 8)
    np.save(tmp_path / "g.npy", heldout.data[:5].mean(1).numpy())
    gray, truth = colorize_input(registry, str(tmp_path / "g.npy"), {})
    assert gray.shape == (5, 8, 8) and truth is None
    with pytest.raises(UsageError, match="--data-opt applies to a dataset, not to the file"):
        colorize_input(registry, str(tmp_path / "g.npy"), {"split": "heldout"})


def test_colour_scores_of_the_truth_and_of_the_baselines(heldout: Dataset) -> None:
    truth = heldout.data[:200].double()
    gray = truth.mean(1, keepdim=True).expand_as(truth)
    scores = colour_scores(truth, truth)
    assert scores["rmse"] == 0.0 and scores["beats_cast"] == 1.0
    assert scores["chroma_corr"] == pytest.approx(1.0, abs=1e-12)
    plain = colour_scores(gray, truth)
    assert plain["rmse"] == pytest.approx(plain["gray_rmse"], abs=1e-12) and plain["chroma_corr"] == 0.0
    cast = gray + (truth - gray).mean(dim=(0, 2, 3), keepdim=True)
    scores = colour_scores(cast, truth)
    assert scores["rmse"] == pytest.approx(scores["cast_rmse"], abs=1e-12)
    assert (
        scores["chroma_corr"] == pytest.approx(0.0, abs=1e-12) and scores["cast_rmse"] < scores["gray_rmse"]
    )
    flipped = colour_scores(2 * gray - truth, truth)  # chroma negated
    assert flipped["chroma_corr"] == pytest.approx(-1.0, abs=1e-12)


def test_cli_colorizes_held_out_photos_with_the_shipped_model(heldout: Dataset, tmp_path: Path) -> None:
    colour = heldout.data[::17].numpy()  # 100 patches: sky, trees, leaves, flower
    np.save(tmp_path / "colour.npy", colour)
    np.save(tmp_path / "gray.npy", colour.astype(np.float64).mean(axis=1))
    args = ["colorize", "--model", "photos", "--steps", "50", "--json"]
    result = CliRunner().invoke(
        app, [*args, "--data", str(tmp_path / "colour.npy"), "--out", str(tmp_path / "c.npz")]
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    with np.load(tmp_path / "c.npz") as saved:
        samples = saved["samples"]
    assert samples.shape == (100, 3, 8, 8)
    np.testing.assert_allclose(samples.mean(axis=1), colour.mean(axis=1), atol=2e-6)  # gray kept exactly
    scores = colour_scores(torch.from_numpy(samples), torch.from_numpy(colour))
    assert summary["rmse"] == round(scores["rmse"], 4) and summary["chroma_corr"] == round(
        scores["chroma_corr"], 4
    )
    assert scores["chroma_corr"] > CHROMA_CORR_FLOOR  # the colours follow the truth, not a fixed cast
    gray = CliRunner().invoke(
        app, [*args, "--data", str(tmp_path / "gray.npy"), "--out", str(tmp_path / "g.npz")]
    )
    assert gray.exit_code == 0, gray.stderr
    assert "rmse" not in json.loads(gray.stdout)  # no truth to score against
    with np.load(tmp_path / "g.npz") as saved:
        np.testing.assert_allclose(saved["samples"], samples, atol=1e-4)  # same seed and gray: same colours
