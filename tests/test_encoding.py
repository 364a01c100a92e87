"""Encoding through the probability-flow ODE (and DDIM inversion), and the likelihood/encode CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffkit.cli.main import app
from diffkit.eval.encoding import decode, encode, relative_error

runner = CliRunner()


def _oracle(registry, sde: str, name: str, n: int):  # noqa: ANN001, ANN202
    process = registry.build("process", sde, {})
    model = registry.build("model", name, {}, process)
    x = model.sample_data(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return process, model, x


@pytest.mark.parametrize(("sde", "name"), [("vp", "gmm:ring8"), ("ve", "gmm:ring8"), ("subvp", "gmm:d64")])
def test_round_trip_is_tight(registry, sde: str, name: str) -> None:  # noqa: ANN001
    process, model, x = _oracle(registry, sde, name, 128)
    latents = encode(model, process, x)
    back = decode(model, process, latents.x)
    assert float(relative_error(back.x, x).max()) < 1e-3  # measured <= 2e-5 at rtol = atol = 1e-7
    assert latents.nfe > 0 and back.nfe > 0


def test_latents_of_exact_data_have_the_prior_moments(registry) -> None:  # noqa: ANN001
    process, model, x = _oracle(registry, "vp", "gmm:ring8", 2000)
    z = encode(model, process, x, rtol=1e-5, atol=1e-5).x
    var = process.prior_std() ** 2
    n = len(z)
    assert float(z.mean(0).abs().max()) < 4 * math.sqrt(var / n)
    cov = torch.cov(z.T)
    assert torch.allclose(
        cov.diagonal(), torch.full((2,), var, dtype=z.dtype), atol=4 * var * math.sqrt(2 / n)
    )
    assert float(cov[0, 1].abs()) < 4 * var / math.sqrt(n)


def test_ddim_inversion_on_a_discrete_process(registry) -> None:  # noqa: ANN001
    process, model, x = _oracle(registry, "ddpm", "gmm:ring8", 64)
    latents = encode(model, process, x, method="ddim")
    back = decode(model, process, latents.x, method="ddim")
    assert latents.nfe == process.num_steps - 1
    # first-order inversion, not to tolerance: measured median 1e-3 at N = 1000
    assert float(relative_error(back.x, x).median()) < 5e-3
    with pytest.raises(ValueError, match="discrete"):
        encode(model, registry.build("process", "vp", {}), x, method="ddim")


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_likelihood_cli_json_next_to_the_closed_form() -> None:
    report = json.loads(_ok("likelihood", "--sde", "vp", "--num-samples", "300", "--json"))
    for key in (
        "mean_logp",
        "stderr",
        "nats_per_dim",
        "bits_per_dim",
        "nfe",
        "closed_form_logp",
        "data_logp",
    ):
        assert key in report
    assert abs(report["mean_logp"] - report["closed_form_logp"]) / 2 < 0.01
    assert report["bits_per_dim"] == pytest.approx(report["nats_per_dim"] / math.log(2))
    vlb = json.loads(_ok("likelihood", "--sde", "ddpm", "--method", "vlb", "--num-samples", "100", "--json"))
    assert vlb["nfe"] == 1000 and vlb["mean_logp"] < vlb["closed_form_logp"] + 3 * vlb["stderr"]


def test_encode_decode_cli_round_trip(registry, tmp_path: Path) -> None:  # noqa: ANN001
    data = _oracle(registry, "vp", "gmm:ring8", 50)[2].numpy()  # on-manifold points: exact samples
    np.save(tmp_path / "x.npy", data)
    _ok("encode", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "z.npz"))
    _ok("decode", "--latents", str(tmp_path / "z.npz"), "--out", str(tmp_path / "y.npz"))
    with np.load(tmp_path / "y.npz") as out:
        back = out["samples"]
    assert np.linalg.norm(back - data) / np.linalg.norm(data) < 1e-3


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("likelihood", "--data", "missing.npy"), "file not found"),
        (("likelihood", "--data", "{bad}"), "needs (N, 2)"),
        (("likelihood", "--sde", "ve", "--method", "vlb"), "VP-family process"),
        (("likelihood", "--divergence", "sometimes"), "--divergence"),
        (("encode", "--data", "{bad}", "--out", "{out}"), "needs (N, 2)"),
        (("decode", "--latents", "missing.npz", "--out", "{out}"), "file not found"),
    ],
)
def test_bad_inputs_give_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((4, 3)))
    values = [a.format(bad=tmp_path / "bad.npy", out=tmp_path / "o.npz") for a in args]
    result = runner.invoke(app, values)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert not (tmp_path / "o.npz").exists()
