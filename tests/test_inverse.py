"""Inpainting and colorization wrappers against closed-form conditionals of mixture oracles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffkit import build_registry
from diffkit.cli.main import app
from diffkit.eval.metrics import sliced_wasserstein, sliced_wasserstein_floor
from diffkit.oracles.mixture import component_log_joint
from diffkit.plugins.gmm import GaussianMixture, OracleModel
from diffkit.testing import count_network_calls
from diffkit.wrappers.inverse import InverseModel, colorize_measurement, gray_transform, inpaint_measurement

N = 3000
KNOWN = torch.tensor([1, 1, 0, 0])


@pytest.fixture(scope="module")
def registry():  # noqa: ANN201
    return build_registry()


@pytest.fixture(scope="module")
def vp(registry):  # noqa: ANN001, ANN201
    return registry.build("process", "vp", {})


def four_d() -> GaussianMixture:
    """Diagonal 4-D mixture: coordinates 0, 1 (known) identify the component; 2, 3 (unknown) vary with it."""
    known = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]])
    unknown = torch.tensor([[1.0, -0.5], [-1.0, 0.5], [0.5, 1.0], [-0.5, -1.0]])
    stds = torch.tensor(
        [[0.3, 0.3, 0.2, 0.3], [0.3, 0.3, 0.3, 0.4], [0.3, 0.3, 0.4, 0.2], [0.3, 0.3, 0.25, 0.25]]
    )
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    return GaussianMixture(torch.cat([known, unknown], 1).double(), stds.double(), weights.double())


def _run(registry, process, model, x_shape, *, solver: str = "dpmpp-3m", steps: int = 100):  # noqa: ANN001, ANN202
    sampler = registry.build("sampler", solver, {})
    grid = registry.build("grid", sampler.capabilities.grid_for(process), {})(process, steps)
    generator = torch.Generator().manual_seed(1)
    x_init = process.prior_sample(x_shape, generator=generator, device="cpu", dtype=torch.float64)
    return sampler(model, process, x_init, grid, generator=generator)


@pytest.mark.parametrize("method,solver,steps", [("replace", "em", 400), ("project", "em", 400)])
def test_inpainting_follows_the_exact_conditional(registry, vp, method: str, solver: str, steps: int) -> None:  # noqa: ANN001
    mixture = four_d()
    base = OracleModel(mixture, vp, (4,))
    data = base.sample_data(N, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    model = registry.build("model_wrapper", "inpaint", {"method": method}, base)
    measurement = inpaint_measurement(data, KNOWN, (4,))
    model.bind(measurement)
    x = model.finalize(_run(registry, vp, model, (N, 4), solver=solver, steps=steps).x, measurement)
    assert torch.equal(x[:, :2], data[:, :2])  # known coordinates exact
    # exact conditional of the unknowns: component k(y) from the known coordinates, then N(mu_k, s_k^2)
    log_joint = component_log_joint(
        data[:, :2], mixture.means[:, :2], mixture.stds[:, :2].square(), mixture.log_weights
    )
    responsibility = torch.softmax(log_joint, -1)
    assert float(responsibility.max(-1).values.min()) > 0.999
    k = responsibility.argmax(-1)
    z = (x[:, 2:] - mixture.means[k, 2:]) / mixture.stds[k, 2:]
    assert z.mean(0).abs().max() < 0.06, z.mean(0)
    assert (z.var(0) - 1.0).abs().max() < 0.15, z.var(0)  # measured 1.05-1.11: replacement is approximate
    floor = sliced_wasserstein_floor(
        lambda n, g: base.sample_data(n, generator=g, dtype=torch.float64), N, repeats=3
    )
    reference = base.sample_data(N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert float(sliced_wasserstein(x, reference)) < floor.mean + 3 * floor.std


def test_colorization_keeps_the_gray_channel(registry, vp) -> None:  # noqa: ANN001
    base = registry.build("model", "gmm:rgb", {}, vp)
    data = base.sample_data(1000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    gray = data.mean(1)  # (N, 4, 4)
    model = registry.build("model_wrapper", "colorize", {}, base)
    measurement = colorize_measurement(gray, base.data_shape)
    model.bind(measurement)
    x = model.finalize(_run(registry, vp, model, (1000, 3, 4, 4)).x, measurement)
    assert torch.allclose(x.mean(1), gray, atol=1e-12, rtol=0)  # the gray channel is exact
    assert bool(torch.isfinite(x).all()) and float(x.std()) > 0.1  # colours were generated, not zeroed
    assert torch.allclose(
        gray_transform() @ gray_transform().T, torch.eye(3, dtype=torch.float64), atol=1e-15
    )


def test_inverse_nfe_is_one_network_call(registry, vp) -> None:  # noqa: ANN001
    base = OracleModel(four_d(), vp, (4,))
    calls = count_network_calls(base)
    model = InverseModel(base, transform=None, method="replace", seed=0)
    data = torch.zeros(8, 4, dtype=torch.float64)
    model.bind(inpaint_measurement(data, KNOWN, (4,)))
    result = _run(registry, vp, model, (8, 4), steps=25)
    assert result.nfe == model.nfe == calls.calls == 25


def _invoke(*args: str):  # noqa: ANN202
    return CliRunner().invoke(app, list(args))


def test_cli_inpaint_and_colorize(tmp_path: Path) -> None:
    data = np.full((40, 64), 0.1)
    mask = np.zeros(64)
    mask[:32] = 1
    np.save(tmp_path / "x.npy", data)
    np.save(tmp_path / "m.npy", mask)
    out = tmp_path / "inp.npz"
    result = _invoke(
        "inpaint",
        "--model",
        "gmm:d64",
        "--data",
        str(tmp_path / "x.npy"),
        "--mask",
        str(tmp_path / "m.npy"),
        "--steps",
        "20",
        "--out",
        str(out),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    with np.load(out) as saved:
        assert saved["samples"].shape == (40, 64)
        assert np.array_equal(saved["samples"][:, :32], np.full((40, 32), 0.1, dtype=np.float32))
        assert json.loads(str(saved["config"]))["inverse"] == "inpaint"
    np.save(tmp_path / "g.npy", np.full((10, 4, 4), 0.2))
    out = tmp_path / "col.npz"
    result = _invoke(
        "colorize",
        "--data",
        str(tmp_path / "g.npy"),
        "--steps",
        "20",
        "--out",
        str(out),
        "--dtype",
        "float64",
    )
    assert result.exit_code == 0, result.stderr
    with np.load(out) as saved:
        assert np.allclose(saved["samples"].mean(1), 0.2, atol=1e-6)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["inpaint", "--model", "gmm:d64", "--mask", "BAD"], "mask has shape (10,)"),
        (["inpaint", "--model", "gmm:ring8", "--mask", "GOOD"], "data has shape (40, 64)"),
        (["colorize", "--model", "gmm:ring8"], "needs 3-channel images"),
        (
            ["inpaint", "--model", "gmm:d64", "--mask", "GOOD", "--method", "blend"],
            "expected one of replace, project",
        ),
    ],
)
def test_cli_bad_inverse_input_exits_2(tmp_path: Path, args: list[str], expected: str) -> None:
    np.save(tmp_path / "x.npy", np.zeros((40, 64)))
    np.save(tmp_path / "bad.npy", np.zeros(10))
    np.save(tmp_path / "good.npy", np.ones(64))
    args = [
        str(tmp_path / "bad.npy") if a == "BAD" else str(tmp_path / "good.npy") if a == "GOOD" else a
        for a in args
    ]
    out = tmp_path / "o.npz"
    result = _invoke(*args, "--data", str(tmp_path / "x.npy"), "--out", str(out))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not out.exists()
