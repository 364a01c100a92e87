"""An open parameterization: a plugin registers a new network target and every path accepts it.

The plugin (a module written to tmp_path, loaded through DIFFKIT_PLUGINS as a user's local plugin
is) registers "flow-u", its own copy of the flow-matching target u = dx_t/dt = d_alpha x0 + d_sigma eps
(Lipman et al. 2023; the built-in `velocity` is tested in test_velocity.py). With
x = alpha x0 + sigma eps, eliminating x0 gives
eps = (alpha u - d_alpha x) / (alpha d_sigma - d_alpha sigma). A network returning the exact
velocity of an oracle must then sample exactly like the oracle's own eps network.
"""

from __future__ import annotations

import importlib
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core import parameterization as param
from diffkit.core.errors import PluginError, UsageError
from diffkit.core.model import Prediction, schedule_rates
from diffkit.core.shapes import append_dims
from diffkit.plugin.contract import registered_parameterization
from diffkit.train import TrainConfig, load_checkpoint, model_from_checkpoint, train

VELOCITY_PLUGIN = """
    import diffkit

    class Velocity(diffkit.Parameterization):
        '''Flow-matching velocity u = d_alpha x0 + d_sigma eps.'''

        name = "flow-u"

        def eps(self, p):
            return (p.alpha * p.output - p.d_alpha * p.x) / (p.alpha * p.d_sigma - p.d_alpha * p.sigma)

        def velocity(self, p):
            return p.output

        def target(self, x0, eps, alpha, sigma, d_alpha, d_sigma):
            return d_alpha * x0 + d_sigma * eps

    class Misnamed(Velocity):
        '''Registered as "liar" but calls itself "flow-u".'''

    @diffkit.hookimpl
    def diffkit_register(registrar):
        registrar.add_parameterization("flow-u", Velocity)
        registrar.add_parameterization("liar", Misnamed)
"""
SAMPLERS = ("ddim", "dpmpp-2m", "heun", "em")


@pytest.fixture
def plugged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[diffkit.Registry]:
    """A registry with the velocity plugin loaded through DIFFKIT_PLUGINS (env left set for the CLI)."""
    (tmp_path / "velocity_plugin.py").write_text(textwrap.dedent(VELOCITY_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DIFFKIT_PLUGINS", "velocity_plugin")
    importlib.invalidate_caches()
    yield diffkit.build_registry()
    sys.modules.pop("velocity_plugin", None)


def _as_velocity(oracle: diffkit.ScoreModel, velocity: param.Parameterization) -> diffkit.ScoreModel:
    """The oracle's exact eps as a velocity network on VP (beta 0.1..20), with the rates by hand.

    VP: d alpha/dt = -beta(t) alpha / 2 and, as alpha^2 + sigma^2 = 1, d sigma/dt = beta alpha^2 / (2 sigma).
    """

    def network(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        p = oracle.prediction(x, t, cond)
        beta = append_dims(0.1 + t * (20.0 - 0.1), x.ndim)
        d_alpha, d_sigma = -0.5 * beta * p.alpha, 0.5 * beta * p.alpha**2 / p.sigma
        return velocity.target(p.x0, p.eps, p.alpha, p.sigma, d_alpha, d_sigma)

    return diffkit.ScoreModel(network, kind=velocity, process=oracle.process, data_shape=oracle.data_shape)


@pytest.mark.parametrize("solver", SAMPLERS)
def test_a_plugin_parameterization_samples_like_the_eps_model(plugged: diffkit.Registry, solver: str) -> None:
    process = plugged.build("process", "vp", {})
    oracle = plugged.build("model", "gmm:ring8", {}, process)
    model = _as_velocity(oracle, registered_parameterization(plugged, "flow-u"))
    assert model.kind == "flow-u" and type(model.parameterization).__name__ == "Velocity"
    x_init = process.prior_sample((64, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = plugged.build("grid", "uniform", {})(process, 12)
    sampler = plugged.build("sampler", solver, {})
    runs = [
        sampler(m, process, x_init, grid, generator=torch.Generator().manual_seed(2)).x
        for m in (oracle, model)
    ]
    assert runs[0].abs().max() > 0.5  # real samples, not a collapse to zero
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=1e-10)


def test_the_velocity_model_predicts_every_target_of_the_oracle(plugged: diffkit.Registry) -> None:
    process = plugged.build("process", "vp", {})
    oracle = plugged.build("model", "gmm:ring8", {}, process)
    model = _as_velocity(oracle, registered_parameterization(plugged, "flow-u"))
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.linspace(1e-3, 1.0, 32, dtype=torch.float64)
    ours, exact = model.predict(x, t), oracle.predict(x, t)
    for target in ("eps", "x0", "v", "score", "velocity"):
        torch.testing.assert_close(getattr(ours, target), getattr(exact, target), rtol=1e-9, atol=1e-9)
    assert ours.velocity is ours.output and model.nfe == 1


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "ddpm-cosine"])
def test_rates_match_autograd_through_alpha_and_sigma(registry: diffkit.Registry, name: str) -> None:
    """d alpha/dt, d sigma/dt from f and g^2 equal the derivatives of alpha(t), sigma(t) themselves."""
    process = registry.build("process", name, {})
    t = torch.linspace(process.t_min, process.t_max, 9, dtype=torch.float32)[1:-1]
    d_alpha, d_sigma = schedule_rates(process, t)  # float32 times: the rates are still float64
    assert d_alpha.dtype == d_sigma.dtype == torch.float64
    for schedule, rate in ((process.alpha, d_alpha), (process.sigma, d_sigma)):
        times = t.double().requires_grad_(True)
        values = schedule(times)
        # VE's alpha = 1 does not depend on t at all
        exact = torch.autograd.grad(values.sum(), times)[0] if values.requires_grad else 0 * rate
        torch.testing.assert_close(rate, exact, rtol=1e-9, atol=1e-12)


def test_rates_of_vp_are_the_closed_form(registry: diffkit.Registry) -> None:
    """VP: d alpha/dt = -beta(t) alpha / 2 and alpha d_alpha + sigma d_sigma = 0 (alpha^2 + sigma^2 = 1)."""
    process = registry.build("process", "vp", {})
    t = torch.linspace(1e-4, 1.0, 9, dtype=torch.float64)
    d_alpha, d_sigma = schedule_rates(process, t)
    alpha, sigma, beta = process.alpha(t), process.sigma(t), 0.1 + t * (20.0 - 0.1)
    torch.testing.assert_close(d_alpha, -0.5 * beta * alpha, rtol=1e-12, atol=0)
    torch.testing.assert_close(alpha * d_alpha + sigma * d_sigma, torch.zeros_like(t), rtol=0, atol=1e-10)


def test_prediction_rates_are_broadcast_and_need_a_process(registry: diffkit.Registry) -> None:
    process = registry.build("process", "ve", {})
    model = registry.build("model", "gmm:ring8", {}, process)
    x = torch.zeros(4, 2, dtype=torch.float32)
    prediction = model.predict(x, 0.5)
    sigma = process.sigma(torch.tensor(0.5, dtype=torch.float64))
    expected = sigma * torch.log(torch.tensor(process.sigma_max / process.sigma_min, dtype=torch.float64))
    assert prediction.d_alpha.shape == (4, 1) and prediction.d_alpha.dtype == torch.float32
    assert torch.equal(prediction.d_alpha, torch.zeros(4, 1))  # VE: alpha = 1
    torch.testing.assert_close(prediction.d_sigma, expected.float().expand(4, 1))
    bare = Prediction("eps", x, x, prediction.alpha, prediction.sigma)
    with pytest.raises(ValueError, match="this prediction has no process and times"):
        _ = bare.d_alpha


def test_registered_checks_names_and_what_the_plugin_builds(plugged: diffkit.Registry) -> None:
    assert [type(registered_parameterization(plugged, k)) for k in param.KINDS] == [
        diffkit.EpsPrediction,
        diffkit.X0Prediction,
        diffkit.VPrediction,
        diffkit.ScorePrediction,
    ]
    expected = "unknown parameterization --kind 'flow'; expected eps, x0, v, score, flow-u, liar, velocity"
    with pytest.raises(UsageError, match=re.escape(expected)):
        registered_parameterization(plugged, "flow", flag="--kind ")
    with pytest.raises(PluginError, match=r"parameterization 'liar' \(plugin 'velocity_plugin'\) built"):
        registered_parameterization(plugged, "liar")


def test_train_accepts_a_plugin_kind_and_its_checkpoint_loads_only_with_the_plugin(
    plugged: diffkit.Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(
        data="moons",
        kind="flow-u",
        iters=3,
        batch_size=16,
        checkpoint_every=3,
        sample_every_checkpoint=False,
        network_options={"hidden": "16", "depth": "1"},
        data_options={"n": "64"},
    )
    result = train(config, tmp_path / "run", registry=plugged)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert load_checkpoint(tmp_path / "run", plugged).kind == "flow-u"
    process = plugged.build("process", "vp", {})
    model = model_from_checkpoint(
        str(tmp_path / "run"), plugged, "vp", process, process_options={}, model_options={}
    )
    assert model.kind == "flow-u" and model.predict(torch.zeros(3, 2), 0.5).eps.shape == (3, 2)
    out = tmp_path / "samples.npz"
    args = ["sample", "--model", str(tmp_path / "run"), "--solver", "ddim", "--steps", "4"]
    sampled = CliRunner().invoke(app, [*args, "--num-samples", "8", "--no-plot", "--out", str(out)])
    assert sampled.exit_code == 0, sampled.output
    assert out.is_file()
    monkeypatch.delenv("DIFFKIT_PLUGINS")
    plain = diffkit.build_registry()
    with pytest.raises(
        UsageError,
        match=re.escape("config.json': kind must be one of eps, x0, v, score, velocity, got 'flow-u'"),
    ):
        model_from_checkpoint(
            str(tmp_path / "run"), plain, "vp", process, process_options={}, model_options={}
        )


def test_cli_train_lists_plugin_kinds_for_a_bad_kind(plugged: diffkit.Registry, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "--kind", "flow", "--iters", "1", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert (
        "unknown parameterization --kind 'flow'; expected eps, x0, v, score, flow-u, liar, velocity"
        in result.output
    )
    assert not (tmp_path / "r").exists()
