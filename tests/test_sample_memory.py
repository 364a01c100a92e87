"""Bounded memory of `diffkit sample` and `evaluate` (issue 10, part 2): prior noise drawn in
chunks with the bits of one draw, streamed metrics equal to the all-at-once ones, the npz
written a block at a time, and the npz and its plot published both or neither."""

from __future__ import annotations

import errno
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import diffkit.eval.sample_quality
import diffkit.run.io
import diffkit.run.plot
import diffkit.run.prior_noise
from diffkit.classifier import load_classifier
from diffkit.classifier.net import batched
from diffkit.cli.main import app
from diffkit.eval.image_eval import score_images
from diffkit.eval.image_metrics import (
    feature_frechet_distance,
    feature_moments,
    gaussian_fit,
    kernel_inception_distance,
    merge_moments,
)
from diffkit.eval.metrics import (
    mode_weight_tv,
    random_directions,
    sliced_wasserstein,
    wasserstein2_1d_squared,
    within_mode_spread,
)
from diffkit.eval.sample_quality import oracle_quality
from diffkit.plugin.loading import build_registry
from diffkit.run.api import SampleConfig, sample
from diffkit.run.io import atomic_file, write_samples
from diffkit.run.prior_noise import PriorNoise

REGISTRY = build_registry()
runner = CliRunner()


@pytest.fixture
def small_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draw the prior 32 values (at least 16 rows) at a time, so small runs take many draws."""
    monkeypatch.setattr(diffkit.run.prior_noise, "DRAW_VALUES", 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (2,), (3,), (64,), (1, 3, 5)])
@pytest.mark.parametrize("process_name", ["vp", "ve"])
def test_prior_noise_has_the_bits_of_one_draw(small_draws, dtype, shape, process_name) -> None:  # noqa: ANN001
    process = REGISTRY.build("process", process_name, {})
    for n in (1, 15, 17, 40, 333):
        whole = process.prior_sample((n, *shape), generator=torch.Generator().manual_seed(11), dtype=dtype)
        for batch in (1, 7, 16, n):
            noise = PriorNoise(
                process, n, shape, torch.Generator().manual_seed(11), torch.device("cpu"), dtype
            )
            parts = [noise.take(min(batch, n - start)) for start in range(0, n, batch)]
            assert torch.equal(torch.cat(parts), whole), (n, batch)
            with pytest.raises(ValueError, match="more prior noise"):
                noise.take(1)


def test_prior_noise_draws_in_chunks(small_draws) -> None:  # noqa: ANN001
    calls = []
    process = REGISTRY.build("process", "vp", {})
    original = process.prior_sample

    def counting(shape, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(shape[0])
        return original(shape, **kwargs)

    object.__setattr__(process, "prior_sample", counting)
    noise = PriorNoise(
        process, 100, (2,), torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32
    )
    noise.take(100)
    assert calls == [16, 16, 16, 16, 16, 20]  # 16 rows a draw while more than 32 remain, then the rest


@pytest.mark.parametrize("solver", ["ddim", "em"])
def test_samples_do_not_depend_on_batch_size_or_chunking(small_draws, solver) -> None:  # noqa: ANN001
    """Each sample starts from the noise of one prior draw for all N, whatever the batch size."""
    n = 50
    config = SampleConfig(solver=solver, steps=4, num_samples=n, seed=5)
    process = REGISTRY.build("process", "vp", {})
    whole = process.prior_sample((n, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    for batch in (1, 7, n):
        batched_config = replace(config, batch_size=batch)
        drawn = sample(batched_config, registry=REGISTRY).samples
        given = sample(batched_config, registry=REGISTRY, x_init=whole.to(torch.float64)).samples
        assert drawn.dtype == torch.float32 and drawn.shape == (n, 2)
        assert torch.equal(drawn, given), batch
        if solver == "ddim":  # deterministic: the same sample for every batch size
            reference = sample(config, registry=REGISTRY).samples
            torch.testing.assert_close(drawn, reference, rtol=1e-6, atol=1e-6)


def test_blocked_sliced_wasserstein_equals_one_block() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=generator, dtype=torch.float64)
    y = 1.3 * torch.randn(200, 5, generator=generator, dtype=torch.float64)
    theta = random_directions(200, 5)  # 200 directions: three full blocks of 64 and one of 8
    expected = wasserstein2_1d_squared(x @ theta.T, y @ theta.T).mean().sqrt()
    assert torch.equal(sliced_wasserstein(x, y, num_projections=200), expected)


def _all_at_once(model, samples: torch.Tensor, seed: int) -> dict[str, float]:  # noqa: ANN001
    """Today's oracle metrics on the whole set (exact sets of size N, no chunks)."""
    samples = samples.to(torch.float64)
    n = samples.shape[0]
    generator = torch.Generator().manual_seed(seed + 7919)
    reference = model.sample_data(n, generator=generator, dtype=torch.float64)
    other = model.sample_data(n, generator=generator, dtype=torch.float64)
    directions = [torch.Generator().manual_seed(seed + 104729) for _ in range(2)]
    components = model.component_of(samples)
    weights = model.mixture.weights
    return {
        "sliced_w2": float(sliced_wasserstein(samples, reference, generator=directions[0])),
        "sliced_w2_floor": float(sliced_wasserstein(other, reference, generator=directions[1])),
        "mode_weight_tv": float(mode_weight_tv(components, weights)),
        "mode_weight_tv_floor": float(mode_weight_tv(model.component_of(other), weights)),
        "spread_ratio": float(within_mode_spread(samples, components, model.mixture.stds)),
    }


@pytest.mark.parametrize("name", ["gmm:ring8", "gmm:d64", "gmm:rgb"])
def test_streamed_oracle_quality_equals_all_at_once(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(diffkit.eval.sample_quality, "CHUNK", 37)  # many chunks, the last one short
    model = REGISTRY.build("model", name, {}, REGISTRY.build("process", "vp", {}))
    samples = 1.2 * model.sample_data(500, generator=torch.Generator().manual_seed(1))
    assert oracle_quality(model, samples, seed=3) == _all_at_once(model, samples, seed=3)


def test_sliced_w2_uses_the_first_samples_beyond_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diffkit.eval.sample_quality, "CHUNK", 64)
    model = REGISTRY.build("model", "gmm:ring8", {}, REGISTRY.build("process", "vp", {}))
    samples = 1.2 * model.sample_data(450, generator=torch.Generator().manual_seed(1))
    quality = oracle_quality(model, samples, seed=3, limit=100)
    head = _all_at_once(model, samples[:100], seed=3)
    assert quality["sliced_w2"] == head["sliced_w2"]  # first 100 against 100 exact samples
    assert quality["sliced_w2_floor"] == head["sliced_w2_floor"]
    whole = _all_at_once(model, samples, seed=3)  # mode metrics use all 450 samples
    assert quality["mode_weight_tv"] == whole["mode_weight_tv"]
    assert quality["spread_ratio"] == pytest.approx(whole["spread_ratio"], rel=1e-12)
    generator = torch.Generator().manual_seed(3 + 7919)
    model.sample_data(100, generator=generator, dtype=torch.float64)  # the reference
    sizes = (100,) + (64,) * 5 + (30,)  # the floor's 100, then chunks of CHUNK rows
    other = torch.cat([model.sample_data(k, generator=generator, dtype=torch.float64) for k in sizes])
    floor = float(mode_weight_tv(model.component_of(other), model.mixture.weights))
    assert quality["mode_weight_tv_floor"] == floor  # the floor: 450 exact samples


def test_merged_feature_moments_equal_the_gaussian_fit() -> None:
    features = torch.randn(1000, 6, generator=torch.Generator().manual_seed(0)) * 3.0 + 10.0
    moments = feature_moments(features[:1])
    for start, stop in ((1, 400), (400, 401), (401, 1000)):
        moments = merge_moments(moments, feature_moments(features[start:stop]))
    mean, covariance = gaussian_fit(features)
    assert moments.n == 1000
    torch.testing.assert_close(moments.mean, mean, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(moments.covariance(), covariance, rtol=1e-12, atol=1e-12)


def test_streamed_image_scores_equal_all_at_once() -> None:
    digits = REGISTRY.build("dataset", "digits", {})
    classifier = load_classifier("digits")
    images = digits.data[:1500] + 0.2 * torch.randn(1500, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = batched(classifier.features, digits.data[1500:])
    labels = digits.labels[1500:]
    scores = score_images(
        classifier, images, reference, labels, generator=torch.Generator().manual_seed(2), kid_samples=600
    )
    features = batched(classifier.features, images.clamp(-1.0, 1.0))  # batches of 1024, as streamed
    assert scores.n == 1500 and scores.kid_n == 600
    # the merged covariance agrees to ~1e-13; FID's square roots of near-zero eigenvalues (dead
    # ReLU features) magnify that to ~1e-8 relative
    assert scores.fid == pytest.approx(float(feature_frechet_distance(features, reference)), rel=1e-6)
    kid = kernel_inception_distance(features[:600], reference, generator=torch.Generator().manual_seed(2))
    assert (scores.kid, scores.kid_std) == kid  # KID on the first 600 images


def test_write_samples_streams_blocks_into_the_npz(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(diffkit.run.io, "WRITE_ROWS", 7)
    samples = torch.randn(50, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    path = tmp_path / "s.npz"
    write_samples(path, samples, 12, 0.5, {"seed": 3})
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["config", "nfe", "samples", "seconds"]
        assert data["samples"].dtype == np.float32
        np.testing.assert_array_equal(data["samples"], samples.numpy().astype(np.float32))
        assert int(data["nfe"]) == 12 and float(data["seconds"]) == 0.5
        assert json.loads(str(data["config"])) == {"seed": 3}


def _full_disk_plot(path: Path, writer) -> None:  # noqa: ANN001
    """`write_with` on a disk that fills up after a few bytes of the PNG."""
    with atomic_file(path) as handle:
        handle.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")


def _run(out: Path, *extra: str):  # noqa: ANN202
    args = ["sample", "--solver", "ddim", "--steps", "2", "--num-samples", "64", "--out", str(out), *extra]
    return runner.invoke(app, args)


def test_full_disk_while_writing_the_plot_publishes_neither(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "s.npz"
    assert _run(out, "--seed", "1").exit_code == 0
    old = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert sorted(old) == ["s.npz", "s.png"]
    monkeypatch.setattr(diffkit.run.plot, "write_with", _full_disk_plot)
    result = _run(out, "--seed", "2")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write {str(out)!r} and {str(tmp_path / 's.png')!r}: No space left on device; "
        "no output written, existing files kept"
    ]
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == old  # untouched, no temp files
    fresh = tmp_path / "new" / "t.npz"
    assert _run(fresh).exit_code == 1
    assert list(fresh.parent.iterdir()) == []  # neither file appeared
    monkeypatch.undo()
    assert _run(out, "--seed", "2").exit_code == 0
    new = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    assert sorted(new) == ["s.npz", "s.png"] and new["s.npz"] != old["s.npz"] and new["s.png"] != old["s.png"]
