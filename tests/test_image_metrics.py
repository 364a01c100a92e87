"""Image metrics: FID and KID against closed forms, shipped classifiers, floors, `diffkit evaluate`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffkit.classifier import load_classifier, shipped_classifiers
from diffkit.classifier.net import batched
from diffkit.classifier.shipped import classifier_record
from diffkit.classifier.train import HELD_OUT, SPLIT_SEED, accuracy
from diffkit.cli.main import app
from diffkit.eval.image_eval import evaluate_images, score_images
from diffkit.eval.image_metrics import (
    feature_frechet_distance,
    frechet_distance,
    gaussian_fit,
    kernel_inception_distance,
    label_histogram,
    mmd2_unbiased,
    sqrtm_psd,
    total_variation,
)

F64 = torch.float64


def random_spd(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A random symmetric positive-definite `(dim, dim)` float64 matrix."""
    a = torch.randn(dim, dim, generator=generator, dtype=F64)
    return a @ a.T / dim + 0.1 * torch.eye(dim, dtype=F64)


def test_sqrtm_psd_squares_back_and_fid_of_a_set_with_itself_is_zero() -> None:
    generator = torch.Generator().manual_seed(0)
    cov = random_spd(6, generator)
    root = sqrtm_psd(cov)
    torch.testing.assert_close(root @ root, cov, rtol=1e-10, atol=1e-12)
    x = torch.randn(500, 16, generator=generator) * 3.0 + 1.0
    assert float(feature_frechet_distance(x, x)) < 1e-8


def test_frechet_distance_matches_closed_forms() -> None:
    generator = torch.Generator().manual_seed(1)
    # commuting (diagonal) covariances: |mu_1 - mu_2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mean_1, mean_2 = torch.tensor([0.0, 1.0, 2.0], dtype=F64), torch.tensor([1.0, -1.0, 2.5], dtype=F64)
    a, b = torch.tensor([1.0, 4.0, 0.25], dtype=F64), torch.tensor([9.0, 1.0, 0.25], dtype=F64)
    exact = (mean_1 - mean_2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    assert float(frechet_distance(mean_1, a.diag(), mean_2, b.diag())) == pytest.approx(
        float(exact), rel=1e-12
    )
    assert float(exact) == pytest.approx(5.25 + 4.0 + 1.0)
    # general covariances: tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2}) with scipy's non-symmetric sqrtm
    from scipy.linalg import sqrtm

    c1, c2 = random_spd(8, generator), random_spd(8, generator)
    zero = torch.zeros(8, dtype=F64)
    reference = (
        np.trace(c1.numpy()) + np.trace(c2.numpy()) - 2 * np.trace(sqrtm(c1.numpy() @ c2.numpy())).real
    )
    assert float(frechet_distance(zero, c1, zero, c2)) == pytest.approx(reference, rel=1e-9)


def test_empirical_fid_of_two_gaussians_approaches_the_closed_form() -> None:
    generator = torch.Generator().manual_seed(2)
    n = 200_000
    x = torch.randn(n, 2, generator=generator, dtype=F64) * torch.tensor([1.0, 2.0], dtype=F64)
    y = torch.randn(n, 2, generator=generator, dtype=F64) * 3.0 + torch.tensor([1.0, 0.0], dtype=F64)
    exact = 1.0 + (1.0 - 3.0) ** 2 + (2.0 - 3.0) ** 2  # 6
    assert float(feature_frechet_distance(x, y)) == pytest.approx(exact, rel=0.01)
    mean, cov = gaussian_fit(x)
    torch.testing.assert_close(cov, torch.diag(torch.tensor([1.0, 4.0], dtype=F64)), atol=0.03, rtol=0)
    assert float(mean.abs().max()) < 0.01


def test_mmd2_is_unbiased_and_kid_is_zero_for_one_distribution() -> None:
    generator = torch.Generator().manual_seed(3)
    shift = torch.tensor([0.5, 0.0, 0.0], dtype=F64)
    # the mean of the estimator on many tiny sets equals its value on huge sets (unbiasedness)
    big = float(
        mmd2_unbiased(
            torch.randn(4000, 3, generator=generator, dtype=F64),
            torch.randn(4000, 3, generator=generator, dtype=F64) + shift,
        )
    )
    small = torch.stack(
        [
            mmd2_unbiased(
                torch.randn(4, 3, generator=generator, dtype=F64),
                torch.randn(4, 3, generator=generator, dtype=F64) + shift,
            )
            for _ in range(4000)
        ]
    )
    stderr = float(small.std()) / math.sqrt(small.numel())
    assert big > 0.02
    assert abs(float(small.mean()) - big) < 4 * stderr
    same = torch.stack(
        [
            mmd2_unbiased(
                torch.randn(4, 3, generator=generator, dtype=F64),
                torch.randn(4, 3, generator=generator, dtype=F64),
            )
            for _ in range(4000)
        ]
    )
    assert abs(float(same.mean())) < 4 * float(same.std()) / math.sqrt(same.numel())
    x, y = torch.randn(2000, 3, generator=generator), torch.randn(2000, 3, generator=generator)
    kid, kid_std = kernel_inception_distance(x, y, subsets=50, subset_size=500, generator=generator)
    assert abs(kid) < kid_std < 0.05
    kid_shifted, _ = kernel_inception_distance(x, y + shift.float(), subsets=50, subset_size=500)
    assert kid_shifted > 0.3 > 10 * kid_std


def test_label_histogram_and_total_variation() -> None:
    histogram = label_histogram(torch.tensor([0, 0, 1, 3]), 4)
    torch.testing.assert_close(histogram, torch.tensor([0.5, 0.25, 0.0, 0.25], dtype=F64))
    assert float(total_variation(histogram, torch.full((4,), 0.25, dtype=F64))) == pytest.approx(0.25)


@pytest.fixture(scope="module")
def digits(registry):  # noqa: ANN001, ANN201
    return registry.build("dataset", "digits", {})


@pytest.mark.parametrize(("name", "minimum"), [("digits", 0.95), ("mnist", 0.95)])
def test_shipped_classifiers_are_accurate_on_the_held_out_split(registry, name: str, minimum: float) -> None:  # noqa: ANN001
    assert shipped_classifiers() == ["digits", "mnist"]
    _, held = registry.build("dataset", name, {}).split(HELD_OUT, seed=SPLIT_SEED)
    measured = accuracy(load_classifier(name), held.data, held.labels)
    assert measured >= minimum
    assert measured == pytest.approx(classifier_record(name)["held_out_accuracy"], abs=1e-6)


def test_floor_is_small_and_degraded_images_score_much_worse(digits) -> None:  # noqa: ANN001
    train, held = digits.split(HELD_OUT, seed=SPLIT_SEED)
    report = evaluate_images(held.data, digits)
    floor = report.floor
    assert report.samples == floor and floor.n == len(held) and report.reference_size == len(train)
    assert report.fid_at_floor_n == pytest.approx(floor.fid)
    assert floor.fid < 25.0 and floor.label_tv < 0.12
    assert abs(floor.kid) < floor.kid_std  # unbiased: no distance beyond the subset noise
    classifier = load_classifier("digits")
    reference = batched(classifier.features, train.data)
    generator = torch.Generator().manual_seed(5)
    x = held.data
    noised = (x + 0.5 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    shuffled = x.flatten(1)[:, torch.randperm(64, generator=generator)].reshape(x.shape)
    for degraded in (noised, blurred, shuffled):
        scores = score_images(classifier, degraded, reference, train.labels, generator=generator)
        assert scores.fid > 4 * floor.fid
        assert scores.kid > floor.kid + 3 * scores.kid_std


def test_label_tv_catches_missing_classes(digits) -> None:  # noqa: ANN001
    _, held = digits.split(HELD_OUT, seed=SPLIT_SEED)
    report = evaluate_images(held.data[held.labels < 5], digits)
    assert report.samples.label_tv > 0.45 > 0.12 > report.floor.label_tv
    assert sum(report.samples.histogram[5:]) < 0.03
    assert report.fid_at_floor_n is None  # fewer samples than the floor has


def test_evaluate_command(tmp_path: Path, digits) -> None:  # noqa: ANN001
    runner = CliRunner()
    _, held = digits.split(HELD_OUT, seed=SPLIT_SEED)
    path = tmp_path / "samples.npz"
    np.savez(path, samples=held.data.numpy())
    result = runner.invoke(app, ["evaluate", "--data", "digits", "--samples", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"]["fid"] == pytest.approx(report["floor"]["fid"]) and report["dataset"] == "digits"
    table = runner.invoke(app, ["evaluate", "--samples", str(path)])
    assert table.exit_code == 0 and "floor" in table.stdout
    np.save(tmp_path / "wrong.npy", np.zeros((10, 1, 28, 28), dtype=np.float32))
    cases = [(tmp_path / "wrong.npy", "(N, 1, 8, 8)"), (tmp_path / "missing.npz", "not found")]
    for bad, expected in cases:
        result = runner.invoke(app, ["evaluate", "--data", "digits", "--samples", str(bad)])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
    result = runner.invoke(app, ["evaluate", "--data", "moons", "--samples", str(path)])
    assert result.exit_code == 2 and "no shipped classifier" in result.stderr
