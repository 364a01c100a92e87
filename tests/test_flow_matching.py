"""Conditional flow matching: the loss, its time sampling, `diffkit train --loss flow-matching`.

The loss regresses u = alpha' x0 + sigma' eps at x_t = alpha x0 + sigma eps (Lipman et al. 2023);
on `flow` u = eps - x0. For data concentrated on one point c, eps = (x_t - alpha c) / sigma is a
function of x_t, so the exact velocity network has zero loss on every process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit import losses as L
from diffkit.cli.main import app
from diffkit.core.errors import UsageError
from diffkit.core.shapes import append_dims
from diffkit.eval.metrics import sliced_wasserstein
from diffkit.run.api import SampleConfig, sample
from diffkit.train import TrainConfig, load_checkpoint


def _point_mass_velocity(process: diffkit.NoiseProcess, c: torch.Tensor) -> diffkit.ScoreModel:
    """The exact velocity network of data = the point c `(D,)`: alpha' c + sigma' (x - alpha c) / sigma.

    The network receives the time of `model.network_process` (the base of a shifted process).
    """

    def network(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        own, t = model.network_process, t.double()
        alpha, sigma = append_dims(own.alpha(t), x.ndim), append_dims(own.sigma(t), x.ndim)
        f, g2 = append_dims(own.f(t), x.ndim), append_dims(own.diffusion_squared(t), x.ndim)
        d_alpha, d_sigma = f * alpha, (g2 + 2 * f * sigma**2) / (2 * sigma)
        return d_alpha * c + d_sigma * (x - alpha * c) / sigma

    model = diffkit.ScoreModel(network, kind="velocity", process=process, data_shape=tuple(c.shape))
    return model


@pytest.mark.parametrize("name", ["flow", "flow-cosine", "vp", "ve", "flow shift=3"])
@pytest.mark.parametrize("time_sampling", ["uniform", "logit-normal"])
def test_exact_velocity_has_zero_loss_on_point_mass_data(
    registry: diffkit.Registry, name: str, time_sampling: str
) -> None:
    """Also on a shifted process: times are drawn in its (shifted) time, the target is d x / d(base time)."""
    name, _, shift = name.partition(" shift=")
    process = registry.build("process", name, {"shift": float(shift)} if shift else {})
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    model = _point_mass_velocity(process, c)
    x0 = c.expand(256, 3).clone()
    loss = L.flow_matching(model, x0, time_sampling=time_sampling, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (256,)
    scale = float(L.flow_matching(_point_mass_velocity(process, 0 * c), x0).mean())  # a wrong model
    assert scale > 0.1 and float(loss.abs().max()) < 1e-12 * max(1.0, scale)


def test_loss_is_the_mean_squared_velocity_error_on_flow(registry: diffkit.Registry) -> None:
    """With the generator's draws (times, then noise): loss = mean over dims of (u_theta - (eps - x0))^2."""
    process = registry.build("process", "flow", {})
    model = diffkit.ScoreModel(lambda x, t, c: 0.5 * x, kind="velocity", process=process, data_shape=(4,))
    x0 = torch.randn(64, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = L.flow_matching(model, x0, generator=torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(2)
    t = process.t_min + (process.t_max - process.t_min) * torch.rand(
        64, generator=generator, dtype=torch.float64
    )
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    x = (1 - t[:, None]) * x0 + t[:, None] * eps
    torch.testing.assert_close(loss, ((0.5 * x - (eps - x0)) ** 2).mean(1), rtol=1e-12, atol=1e-12)


def test_a_v_network_trains_on_the_velocity_too(registry: diffkit.Registry) -> None:
    """Any parameterization: the model's velocity is compared, so an exact v network has zero loss."""
    process = registry.build("process", "vp", {})
    c = torch.tensor([1.5, -0.5], dtype=torch.float64)

    def v_network(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        alpha, sigma = append_dims(process.alpha(t), 2), append_dims(process.sigma(t), 2)
        return alpha * (x - alpha * c) / sigma - sigma * c

    model = diffkit.ScoreModel(v_network, kind="v", process=process, data_shape=(2,))
    loss = L.flow_matching(model, c.expand(128, 2).clone(), generator=torch.Generator().manual_seed(3))
    assert float(loss.abs().max()) < 1e-10


def test_logit_normal_times_follow_sd3(registry: diffkit.Registry) -> None:
    """logit((t - t_min) / (t_max - t_min)) ~ N(logit_mean, logit_std^2) (Esser et al. 2024, eq. 19)."""
    process = registry.build("process", "flow", {})
    generator = torch.Generator().manual_seed(4)
    t = L.logit_normal_times(process, 100_000, logit_mean=0.5, logit_std=0.8, generator=generator)
    assert t.dtype == torch.float64 and float(t.min()) > process.t_min and float(t.max()) < process.t_max
    u = (t - process.t_min) / (process.t_max - process.t_min)
    n = torch.log(u) - torch.log1p(-u)
    assert abs(float(n.mean()) - 0.5) < 0.01 and abs(float(n.std()) - 0.8) < 0.01
    uniform = L.flow_matching_times(process, 100_000, generator=generator)
    assert abs(float(uniform.mean()) - 0.5) < 0.005  # uniform on [t_min, t_max], symmetric about 1/2
    with pytest.raises(ValueError, match="time_sampling must be one of uniform, logit-normal; got 'beta'"):
        L.flow_matching_times(process, 4, time_sampling="beta")  # type: ignore[arg-type]


def test_default_kind_is_velocity_for_flow_matching_only() -> None:
    assert TrainConfig(loss="flow-matching").kind == "velocity"
    assert TrainConfig(loss="flow-matching", kind="v").kind == "v"
    assert TrainConfig().kind == "v" and TrainConfig(loss="dsm").kind == "v"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--loss-opt", "logit_std=0"],
            "loss 'flow-matching': option logit_std must be a positive number, got 0.0",
        ),
        (["--loss-opt", "time_sampling=beta"], "bad value 'beta' for option 'time_sampling'"),
    ],
)
def test_bad_loss_options_exit_2_with_one_line(tmp_path: Path, options: list[str], message: str) -> None:
    args = ["train", "--sde", "flow", "--loss", "flow-matching", *options, "--iters", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "r").exists()


def test_train_records_velocity_and_the_checkpoint_samples(tmp_path: Path) -> None:
    """`diffkit train --sde flow --loss flow-matching` writes kind velocity; `sample --model DIR` reads it."""
    run = tmp_path / "run"
    args = ["train", "--data", "moons", "--sde", "flow", "--loss", "flow-matching"]
    args += ["--loss-opt", "time_sampling=logit-normal", "--net-opt", "hidden=16", "--net-opt", "depth=1"]
    result = CliRunner().invoke(app, [*args, "--iters", "4", "--no-samples", "--out", str(run)])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "config.json").read_text())
    assert record["kind"] == "velocity" and record["process"]["name"] == "flow"
    assert record["loss"] == {"name": "flow-matching", "options": {"time_sampling": "logit-normal"}}
    assert load_checkpoint(run, diffkit.build_registry()).kind == "velocity"
    out = tmp_path / "s.npz"
    sample = ["sample", "--model", str(run), "--sde", "flow", "--solver", "dpmpp-2m", "--steps", "4"]
    sampled = CliRunner().invoke(app, [*sample, "--num-samples", "8", "--no-plot", "--out", str(out)])
    assert sampled.exit_code == 0, sampled.output
    with np.load(out) as data:
        assert data["samples"].shape == (8, 2) and np.isfinite(data["samples"]).all()
    refused = CliRunner().invoke(app, [*sample[:4], "vp", *sample[5:], "--no-plot", "--out", str(out)])
    assert refused.exit_code == 2 and "sample it with --sde flow" in refused.stderr, refused.stderr


def test_flow_matching_is_listed_with_its_options() -> None:
    result = CliRunner().invoke(app, ["list", "loss"])
    assert result.exit_code == 0 and "flow-matching" in result.stdout


def test_shipped_moons_flow_samples_within_3x_the_floor_at_20_nfe(registry: diffkit.Registry) -> None:
    """`moons-flow` (README: trained by `diffkit train --sde flow --loss flow-matching`), dpmpp-2m, 20 NFE.

    Sliced W2 to 4,000 fresh points, averaged over four sample seeds (single seeds vary by about
    +-0.01: a few tail points weigh much in W2), against the floor between two fresh sets.
    """
    fresh = registry.build("dataset", "moons", {"n": 4000, "seed": 7}).data
    other = registry.build("dataset", "moons", {"n": 4000, "seed": 8}).data
    floor = float(sliced_wasserstein(other, fresh))
    model = registry.build("model", "moons-flow", {}, registry.build("process", "flow", {}))
    assert model.kind == "velocity"
    distances = []
    for seed in range(4):
        config = SampleConfig(
            model="moons-flow", process="flow", solver="dpmpp-2m", steps=20, num_samples=4000, seed=seed
        )
        run = sample(config, registry=registry)
        assert run.nfe == 20 and float(run.samples.norm(dim=1).max()) < 5.0  # fresh data reach ~3.9
        distances.append(float(sliced_wasserstein(run.samples, fresh)))
    assert sum(distances) / len(distances) < 3.0 * floor
    with pytest.raises(UsageError, match="trained on process 'flow'.*sample it with --sde flow"):
        sample(SampleConfig(model="moons-flow", process="vp", num_samples=2), registry=registry)
