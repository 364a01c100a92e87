"""Training: loss goes down, samples approach the data, resume is exact, checkpoints round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffkit.cli.main import app
from diffkit.core.errors import UsageError
from diffkit.eval.metrics import sliced_wasserstein
from diffkit.run.api import SampleConfig, sample
from diffkit.train import TrainConfig, load_checkpoint, train

TINY = {"hidden": "32", "depth": "2"}


def _config(iters: int, **changes) -> TrainConfig:
    base = dict(
        data="moons",
        iters=iters,
        batch_size=64,
        lr=2e-3,
        checkpoint_every=iters,
        sample_every_checkpoint=False,
        network_options=TINY,
        data_options={"n": "2000"},
    )
    return TrainConfig(**(base | changes))


def _sw2(registry, folder: Path) -> float:
    fresh = registry.build("dataset", "moons", {"n": 1000, "seed": 7}).data
    run = sample(
        SampleConfig(model=str(folder), solver="dpmpp-2m", steps=20, num_samples=1000), registry=registry
    )
    return float(sliced_wasserstein(run.samples, fresh))


@pytest.mark.slow
def test_training_on_moons_lowers_loss_and_sliced_w2(registry, tmp_path: Path):
    # eps-MSE: its floor is far below its start (the v-MSE of the default kind keeps an irreducible
    # Var[x0 | x_t] at large t, so it falls by only ~5% here; tests/test_pretrained.py covers v)
    untrained = train(_config(1, lr=1e-12, kind="eps"), tmp_path / "untrained", registry=registry)
    result = train(_config(1000, kind="eps"), tmp_path / "run", registry=registry)
    first, last = np.mean(result.losses[:50]), np.mean(result.losses[-100:])
    assert last < 0.75 * first, (first, last)
    trained_sw2, untrained_sw2 = _sw2(registry, tmp_path / "run"), _sw2(registry, tmp_path / "untrained")
    assert trained_sw2 < 0.1 * untrained_sw2, (trained_sw2, untrained_sw2)
    assert untrained.iteration == 1


def test_resume_is_bit_identical(registry, tmp_path: Path):
    straight = train(_config(40, checkpoint_every=20), tmp_path / "a", registry=registry)
    half = _config(20, checkpoint_every=20)
    train(half, tmp_path / "b", registry=registry)
    resumed = train(_config(40, checkpoint_every=20), tmp_path / "b", registry=registry, resume=True)
    for (name, p), q in zip(
        straight.network.state_dict().items(), resumed.network.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    for name, value in straight.ema.items():
        assert torch.equal(value, resumed.ema[name]), name
    assert straight.losses == resumed.losses and len(resumed.losses) == 40


def test_save_load_round_trip_identical_outputs(registry, tmp_path: Path):
    result = train(_config(10), tmp_path / "run", registry=registry)
    loaded = load_checkpoint(tmp_path / "run", registry)
    raw = load_checkpoint(tmp_path / "run", registry, weights="raw")
    x, t = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), torch.rand(16)
    with torch.no_grad():
        assert torch.equal(raw.network(x, t, None), result.network(x, t, None))
        expected = type(result.network)((2,), hidden=32, depth=2)
        expected.load_state_dict(result.ema)
        assert torch.equal(loaded.network(x, t, None), expected.eval()(x, t, None))
    assert loaded.kind == "v" and loaded.process_name == "vp" and loaded.data_shape == (2,)
    assert loaded.record["iteration"] == 10 and loaded.record["seed"] == 0


def test_corrupted_or_foreign_checkpoints_raise_usage_error(registry, tmp_path: Path):
    train(_config(2), tmp_path / "run", registry=registry)
    (tmp_path / "run" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UsageError, match="not a valid safetensors"):
        load_checkpoint(tmp_path / "run", registry)
    (tmp_path / "run" / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="cannot read"):
        load_checkpoint(tmp_path / "run", registry)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        load_checkpoint(tmp_path / "empty", registry)
    with pytest.raises(UsageError, match="was trained on process 'vp'"):
        train(_config(2), tmp_path / "ok", registry=registry)
        sample(SampleConfig(process="ve", model=str(tmp_path / "ok"), num_samples=4), registry=registry)


def test_bad_inputs_fail_before_training(registry, tmp_path: Path):
    with pytest.raises(UsageError, match="--iters"):
        _config(0)
    with pytest.raises(UsageError, match="did you mean"):
        train(_config(2, loss="simpel"), registry=registry)
    with pytest.raises(UsageError, match="learned variance"):
        train(_config(2, loss="hybrid", process="ddpm"), registry=registry)
    train(_config(2), tmp_path / "run", registry=registry)
    with pytest.raises(UsageError, match="different config"):
        train(_config(2, lr=1e-2), tmp_path / "run", registry=registry)


def test_cli_train_then_sample_from_the_folder(tmp_path: Path):
    runner = CliRunner()
    out = tmp_path / "runs" / "moons"
    args = ["train", "--data", "moons", "--net", "mlp", "--iters", "6", "--checkpoint-every", "3"]
    args += ["--batch-size", "16", "--net-opt", "hidden=16", "--data-opt", "n=500", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        ".checkpoints",  # the complete copy of the checkpoint (hard links), see test_train_atomic.py
        "config.json",
        "history.json",
        "loss.png",
        "model.safetensors",
        "optimizer.safetensors",
        "samples_3.png",
        "samples_6.png",
    ]
    samples = tmp_path / "s.npz"
    result = runner.invoke(app, ["sample", "--model", str(out), "--num-samples", "50", "--out", str(samples)])
    assert result.exit_code == 0, result.stderr
    with np.load(samples) as data:
        assert data["samples"].shape == (50, 2) and np.isfinite(data["samples"]).all()
    bad = runner.invoke(app, ["train", "--iters", "0", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and bad.stderr.strip().startswith("error: --iters must be a positive")
    bad = runner.invoke(app, ["sample", "--model", str(out), "--sde", "ve", "--out", str(samples)])
    assert bad.exit_code == 2 and "was trained on process 'vp'" in bad.stderr
