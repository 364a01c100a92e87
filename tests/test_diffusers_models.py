"""`--model diffusers:PATH`: a tiny random local UNet2DModel as a diffkit ScoreModel (nothing downloaded)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import tiny_diffusers_unet
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.errors import UsageError

diffusers = pytest.importorskip("diffusers")
N = 1000


def _unet(folder: Path, *, out_channels: int = 1, scheduler: dict | None = None) -> torch.nn.Module:
    """Save a seeded tiny UNet2DModel (1x8x8) to `folder`, with an optional scheduler_config.json."""
    unet = tiny_diffusers_unet(out_channels)
    unet.save_pretrained(folder)
    if scheduler is not None:
        (folder / "scheduler_config.json").write_text(json.dumps(scheduler))
    return unet.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def eps_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A tiny eps-prediction UNet, no scheduler config (diffusers' defaults: linear 1e-4..0.02)."""
    folder = tmp_path_factory.mktemp("unet") / "eps"
    return folder, _unet(folder)


def _model(registry: diffkit.Registry, folder: Path, sde: str = "ddpm", **options) -> diffkit.ScoreModel:
    process = registry.build("process", sde, {})
    return registry.build("model", f"diffusers:{folder}", options, process)


def test_eps_is_the_unet_output_at_timestep_t_n_minus_1(registry, eps_folder):
    folder, unet = eps_folder
    model = _model(registry, folder)
    assert (model.kind, model.data_shape, model.learned_variance) == ("eps", (1, 8, 8), False)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    k = torch.tensor([999.0, 500.0, 0.0, 250.5])  # knots and a fractional timestep
    eps = model.predict(x, (k + 1) / N).eps
    reference = unet(x, k).sample
    assert float(reference.abs().mean()) > 0.01  # a real output, not zeros
    torch.testing.assert_close(eps, reference, rtol=1e-5, atol=1e-6)
    # float64 sampling: the UNet runs in float32, the result comes back in float64
    eps64 = model.predict(x.double(), (k + 1).double() / N).eps
    assert eps64.dtype == torch.float64
    torch.testing.assert_close(eps64.float(), reference, rtol=1e-5, atol=1e-6)


def test_cli_sample_end_to_end(eps_folder, tmp_path: Path):
    folder, _ = eps_folder
    out = tmp_path / "s.npz"
    args = ["sample", "--model", f"diffusers:{folder}", "--sde", "ddpm", "--solver", "ddim", "--steps", "5"]
    result = CliRunner().invoke(app, [*args, "--num-samples", "6", "--no-plot", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["nfe"], summary["num_samples"], summary["model"]) == (5, 6, f"diffusers:{folder}")
    with np.load(out) as data:
        samples = data["samples"]
    assert samples.shape == (6, 1, 8, 8) and np.isfinite(samples).all()
    assert samples.std() > 0.05


@pytest.mark.parametrize(
    ("model", "sde", "message"),
    [
        (
            "{folder}",
            "ddpm-cosine",
            "trained on ddpm (linear betas 0.0001..0.02, N=1000), but --sde is ddpm-cosine",
        ),
        ("{folder}", "vp", "but --sde is VPProcess (not a discrete DDPM); sample it with --sde ddpm"),
        ("{tmp}/missing", "ddpm", "does not exist"),
        ("{tmp}", "ddpm", "has no config.json"),
        ("", "ddpm", "no folder given"),
    ],
)
def test_bad_model_or_sde_exits_2_with_one_line(eps_folder, tmp_path: Path, model, sde, message):
    folder, _ = eps_folder
    name = "diffusers:" + model.format(folder=folder, tmp=tmp_path)
    out = tmp_path / "s.npz"
    args = ["sample", "--model", name, "--sde", sde, "--solver", "ddim", "--steps", "5", "--no-plot"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not out.exists()


def test_v_prediction_from_the_scheduler_config(registry, tmp_path: Path):
    scheduler = {"prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2"}
    unet = _unet(tmp_path / "v", scheduler=scheduler)
    with pytest.raises(UsageError, match="squaredcos_cap_v2, N=1000.*--sde ddpm-cosine"):
        _model(registry, tmp_path / "v", "ddpm")
    model = _model(registry, tmp_path / "v", "ddpm-cosine")
    assert model.kind == "v"
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0.9, 0.4, 0.05], dtype=torch.float64)
    prediction = model.predict(x, t)
    v = unet(x.float(), t.float() * N - 1).sample.double()
    torch.testing.assert_close(prediction.output, v, rtol=1e-5, atol=1e-6)
    # v = alpha eps - sigma x0 and x = alpha x0 + sigma eps  =>  eps = sigma x + alpha v
    torch.testing.assert_close(
        prediction.eps, prediction.sigma * x + prediction.alpha * v, rtol=1e-5, atol=1e-6
    )
    # the option overrides the config
    assert _model(registry, tmp_path / "v", "ddpm-cosine", prediction_type="eps").kind == "eps"
    with pytest.raises(UsageError, match="unsupported prediction_type 'flow'"):
        _model(registry, tmp_path / "v", "ddpm-cosine", prediction_type="flow")


def test_learned_range_variance_is_used_by_ancestral(registry, tmp_path: Path):
    unet = _unet(tmp_path / "lv", out_channels=2, scheduler={"variance_type": "learned_range"})
    model = _model(registry, tmp_path / "lv")
    assert model.learned_variance
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    prediction = model.predict(x, torch.tensor([0.5, 0.5]))
    raw = unet(x, torch.tensor([499.0, 499.0])).sample
    torch.testing.assert_close(prediction.output, raw[:, :1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prediction.variance_interpolation, (raw[:, 1:] + 1) / 2, rtol=1e-5, atol=1e-6)
    (tmp_path / "lv" / "scheduler_config.json").unlink()
    with pytest.raises(UsageError, match="variance_type 'fixed_small'; diffkit supports learned_range"):
        _model(registry, tmp_path / "lv")


def test_listed_and_diffusers_missing_is_one_clear_line(registry, eps_folder, monkeypatch):
    assert "diffusers:<PATH>" in registry.family_examples("model")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else find_spec(name, *a)
    )
    with pytest.raises(UsageError, match="need the diffusers package, which is not installed"):
        _model(registry, eps_folder[0])
