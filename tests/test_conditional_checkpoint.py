"""Trained checkpoints as models: conditioning (num_classes, null label), NCSN score scaling, dtype.

Checkpoints are made here in a second (a small MLP on the labelled 2-D `moons`, two steps), so
these tests check plumbing and closed-form relations, not sample quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffkit import ScoreModel
from diffkit.cli.main import app
from diffkit.core.errors import UsageError
from diffkit.run.api import SampleConfig, build_model, sample
from diffkit.train import TrainConfig, load_checkpoint, train
from diffkit.wrappers.guidance import cfg

runner = CliRunner()
SMALL = {"hidden": "16", "depth": "1", "time_dim": "8"}


def _train(folder: Path, registry, **changes) -> Path:
    fields = {
        "data": "moons",
        "network": "mlp",
        "iters": 2,
        "batch_size": 16,
        "checkpoint_every": 2,
        "sample_every_checkpoint": False,
        "data_options": {"n": "200"},
        "network_options": SMALL,
    }
    train(TrainConfig(**(fields | changes)), folder, registry=registry)
    return folder


@pytest.fixture(scope="module")
def conditional(tmp_path_factory: pytest.TempPathFactory, registry) -> Path:
    """A class-conditional checkpoint: moons has 2 classes, so the null label is 2."""
    folder = tmp_path_factory.mktemp("ckpt") / "cond"
    return _train(folder, registry, network_options=SMALL | {"num_classes": "2"})


def _model(registry, name: str, process: str = "vp") -> ScoreModel:
    return build_model(registry, name, {}, process, registry.build("process", process, {}), {})


def test_the_record_holds_the_conditioning_and_the_loader_applies_it(registry, conditional: Path):
    record = json.loads((conditional / "config.json").read_text())
    assert (record["num_classes"], record["null_label"], record["score_scaling"]) == (2, 2, "none")
    model = _model(registry, str(conditional))
    assert (model.conditional, model.num_classes, model.null_label) == (True, 2, 2)


def test_old_records_without_the_new_fields_derive_them(registry, conditional: Path, tmp_path: Path):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.safetensors", "optimizer.safetensors", "history.json"):
        (old / name).write_bytes((conditional / name).read_bytes())
    record = json.loads((conditional / "config.json").read_text())
    for key in ("null_label", "score_scaling", "num_classes"):
        del record[key]  # the network options still say num_classes=2
    (old / "config.json").write_text(json.dumps(record))
    loaded = load_checkpoint(old, registry)
    assert (loaded.num_classes, loaded.null_label, loaded.score_scaling) == (2, 2, "none")
    assert _model(registry, str(old)).null_label == 2


def test_cfg_sends_the_models_own_null_label(registry, conditional: Path):
    model = _model(registry, str(conditional))
    seen: list[torch.Tensor] = []

    class Recording(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor, time_input: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            seen.append(cond.clone())
            return self.inner(x, time_input, cond)

    model.network = Recording(model.network)
    x, t, w = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0.4, 3.0
    guided = cfg(model, scale=w).bind(1).predict(x, t).output
    assert torch.equal(seen[0], torch.tensor([1] * 5 + [2] * 5))  # one batched call, null label 2
    with torch.no_grad():
        conditional_out = model.predict(x, t, torch.ones(5, dtype=torch.long)).output
        unconditional_out = model.predict(x, t, torch.full((5,), 2)).output
    torch.testing.assert_close(guided, unconditional_out + w * (conditional_out - unconditional_out))


def test_cond_and_cfg_sample_a_checkpoint_and_bad_labels_are_refused(registry, conditional: Path):
    for guidance in (None, "cfg"):
        config = SampleConfig(
            model=str(conditional), solver="ddim", steps=4, num_samples=6, cond=1, guidance=guidance
        )
        run = sample(config, registry=registry)
        assert run.samples.shape == (6, 2) and bool(torch.isfinite(run.samples).all())
    bad = SampleConfig(model=str(conditional), solver="ddim", steps=4, num_samples=6, cond=2)
    with pytest.raises(UsageError, match=rf"^--cond 2 out of range: model '{conditional}' has classes 0..1$"):
        sample(bad, registry=registry)


def test_the_oracles_null_label_is_minus_one_and_cfg_at_scale_one_is_the_conditional(registry):
    model = _model(registry, "gmm:ring8-cond")
    assert (model.conditional, model.num_classes, model.null_label) == (True, 8, -1)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = model.predict(x, 0.3, torch.full((4,), 5)).eps
    torch.testing.assert_close(cfg(model, scale=1.0).bind(5).predict(x, 0.3).eps, exact)


def test_a_float32_network_runs_under_float64_inputs(registry, conditional: Path):
    model = _model(registry, str(conditional))
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out64 = model.predict(x, 0.5, torch.zeros(3, dtype=torch.long)).output
    out32 = model.predict(x.float(), 0.5, torch.zeros(3, dtype=torch.long)).output
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    assert torch.equal(out64.float(), out32)  # the network itself ran in float32 both times


def test_ncsn_score_networks_are_divided_by_sigma_in_training_and_sampling(registry, tmp_path: Path):
    folder = _train(tmp_path / "ncsn", registry, process="ve", loss="ncsn", kind="score")
    assert json.loads((folder / "config.json").read_text())["score_scaling"] == "1/sigma"
    model = _model(registry, str(folder), "ve")
    assert model.score_scaling == "1/sigma"
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    raw = model.network_output(x, t, None)
    sigma = model.process.sigma(t)[:, None]
    torch.testing.assert_close(model.predict(x, t).score, raw / sigma)
    torch.testing.assert_close(model.predict(x, t).eps, -raw)  # the network learns sigma score = -eps
    with pytest.raises(ValueError, match="kind score only"):
        ScoreModel(model.network, kind="eps", process=model.process, data_shape=(2,), score_scaling="1/sigma")


def test_cli_cfg_on_a_checkpoint_writes_samples(conditional: Path, tmp_path: Path):
    out = tmp_path / "g.npz"
    args = ["sample", "--model", str(conditional), "--solver", "ddim", "--steps", "3", "--num-samples", "4"]
    flags = [
        "--cond",
        "0",
        "--guidance",
        "cfg",
        "--guidance-scale",
        "2",
        "--no-plot",
        "--json",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, [*args, *flags])
    assert result.exit_code == 0, result.stderr
    with np.load(out) as data:
        assert data["samples"].shape == (4, 2) and np.isfinite(data["samples"]).all()


def test_cfg_of_a_learned_variance_model_mixes_the_mean_and_keeps_the_conditional_variance(
    registry, tmp_path: Path
):
    options = SMALL | {"num_classes": "2", "learn_variance": "true"}
    folder = _train(tmp_path / "hybrid", registry, process="ddpm", loss="hybrid", network_options=options)
    model = _model(registry, str(folder), "ddpm")
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    guided = cfg(model, scale=2.0).bind(0).predict(x, 0.5)
    conditional_out = model.predict(x, 0.5, torch.zeros(3, dtype=torch.long))
    unconditional_out = model.predict(x, 0.5, torch.full((3,), 2))
    mixed = unconditional_out.output + 2.0 * (conditional_out.output - unconditional_out.output)
    torch.testing.assert_close(guided.output, mixed)
    torch.testing.assert_close(guided.variance_interpolation, conditional_out.variance_interpolation)


def test_resuming_a_score_run_from_before_the_scaling_is_refused(registry, tmp_path: Path):
    folder = _train(tmp_path / "old-ncsn", registry, process="ve", loss="ncsn", kind="score")
    record = json.loads((folder / "config.json").read_text())
    del record["score_scaling"]  # as written before score networks were scaled
    (folder / "config.json").write_text(json.dumps(record))
    config = TrainConfig(**json.loads(json.dumps(record["train"])) | {"iters": 4})
    with pytest.raises(UsageError, match="holds a run with score_scaling 'none', but this diffkit trains"):
        train(config, folder, registry=registry, resume=True)


def test_cond_drop_flag_is_recorded_and_checked(tmp_path: Path) -> None:
    """`diffkit train --cond-drop P` sets the label dropout; P outside [0, 1) is one line, exit 2."""
    bad = CliRunner().invoke(app, ["train", "--cond-drop", "1.5", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "error: --cond-drop must lie in [0, 1), got 1.5"
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "run"
    args = ["train", "--iters", "2", "--cond-drop", "0.25", "--no-samples", "--out", str(out)]
    args += ["--net-opt", "num_classes=2", *[f"--net-opt={k}={v}" for k, v in SMALL.items()]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["train"]["cond_drop"] == 0.25
