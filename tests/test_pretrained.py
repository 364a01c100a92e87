"""The shipped models: they load, are small, sample reproducibly and look like their data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffkit.cli.main import app
from diffkit.core.errors import UsageError
from diffkit.eval.metrics import sliced_wasserstein
from diffkit.pretrained import NAMES, folder
from diffkit.run.api import SampleConfig, sample


def _run(registry, model: str, num: int, seed: int = 0, solver: str = "dpmpp-2m") -> torch.Tensor:
    config = SampleConfig(model=model, solver=solver, steps=20, num_samples=num, seed=seed)
    return sample(config, registry=registry).samples


@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_is_small_and_holds_ema_weights_only(name: str):
    from safetensors import safe_open

    weights = folder(name) / "model.safetensors"
    size = weights.stat().st_size if isinstance(weights, Path) else len(weights.read_bytes())
    assert 10_000 < size < 5_000_000
    with safe_open(str(weights), framework="pt") as handle:
        assert handle.keys() and all(key.startswith("ema/") for key in handle.keys())


def test_moons_samples_match_fresh_data_without_far_off_points(registry):
    fresh = registry.build("dataset", "moons", {"n": 4000, "seed": 7}).data
    other = registry.build("dataset", "moons", {"n": 4000, "seed": 8}).data
    floor = float(sliced_wasserstein(other, fresh))
    samples = _run(registry, "moons", 4000)
    assert torch.equal(samples, _run(registry, "moons", 4000))  # same seed, same samples
    assert float(samples.norm(dim=1).max()) < 5.0  # fresh data reach radius ~3.9; outliers were 20-300
    assert float(sliced_wasserstein(samples, fresh)) < 4.0 * floor


def test_digits_samples_have_the_data_statistics(registry):
    data = registry.build("dataset", "digits", {}).data
    samples = _run(registry, "digits", 128)
    assert samples.shape == (128, 1, 8, 8)
    assert not torch.equal(samples[:16], _run(registry, "digits", 16, seed=1))  # the seed matters
    # data pixels lie in [-1, 1] (background exactly -1): samples overshoot it only slightly
    assert float((samples.abs() <= 1.25).float().mean()) > 0.99 and float(samples.abs().max()) < 2.0
    assert abs(float(samples.mean()) - float(data.mean())) < 0.05
    assert float((samples.mean(0) - data.mean(0)).abs().mean()) < 0.1  # the mean digit, pixel by pixel
    ratio = samples.std(0).mean() / data.std(0).mean()  # spread across samples: no collapse, no noise
    assert 0.8 < float(ratio) < 1.2


def test_shipped_models_refuse_another_process(registry):
    with pytest.raises(UsageError, match="trained on process 'vp'.*sample it with --sde vp"):
        sample(SampleConfig(process="ve", model="digits", num_samples=2), registry=registry)


def test_end_time_is_the_users_choice_but_the_schedule_is_not(registry, tmp_path: Path):
    """t_min only bounds the sampler's range: another end time samples, another beta_max is refused."""
    config = SampleConfig(
        model="digits", solver="ddim", steps=5, num_samples=2, process_options={"t_min": 1e-3}
    )
    run = sample(config, registry=registry)
    assert float(run.composition.grid[-1]) == pytest.approx(1e-3)
    with pytest.raises(UsageError, match="trained on process 'vp'.*beta_max=20.0.*beta_max=10.0"):
        sample(replace(config, process_options={"beta_max": 10.0}), registry=registry)
    from diffkit.train import TrainConfig, train

    train(
        TrainConfig(iters=2, batch_size=4, sample_every_checkpoint=False), tmp_path / "run", registry=registry
    )
    for options in ({"t_min": 1e-2}, {}):
        sample(replace(config, model=str(tmp_path / "run"), process_options=options), registry=registry)
    with pytest.raises(UsageError, match="was trained on process 'vp'"):
        sample(
            replace(config, model=str(tmp_path / "run"), process_options={"beta_min": 0.2}), registry=registry
        )


def test_cli_writes_a_digits_grid(tmp_path: Path):
    out = tmp_path / "digits.npz"
    args = ["sample", "--model", "digits", "--sde", "vp", "--solver", "dpmpp-2m", "--steps", "20"]
    result = CliRunner().invoke(app, [*args, "--num-samples", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert np.load(out)["samples"].shape == (16, 1, 8, 8)
    assert out.with_suffix(".png").stat().st_size > 1000
