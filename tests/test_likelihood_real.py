"""Likelihood on real data: the DDPM bound of continuous VP-family models, K-level dequantization."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffkit.cli.main import app
from diffkit.core.errors import UsageError
from diffkit.eval.likelihood_eval import LikelihoodConfig, evaluate_likelihood, load_points
from diffkit.eval.log_likelihood import (
    dequantization_offset_nats,
    dequantize,
    level_scale,
    ode_log_likelihood,
)
from diffkit.losses.chain import DiscreteSchedule, vp_chain_alpha_bar
from diffkit.losses.vlb import vlb_terms
from diffkit.plugins.gmm import GaussianMixture, OracleModel

runner = CliRunner()


def _gaussian(process, mean: float, std: float, dim: int = 1) -> OracleModel:  # noqa: ANN001
    """Exact model of N(mean, std^2 I) data on `process`."""
    mixture = GaussianMixture(
        torch.full((1, dim), mean, dtype=torch.float64),
        torch.full((1, dim), std, dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),
    )
    return OracleModel(mixture, process, (dim,))


def _bound(model: OracleModel, x: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
    """Per-sample L_vlb `(B,)` in nats, fixed variance beta, continuous decoder, seed 1."""
    terms = vlb_terms(
        model,
        x,
        variance="beta",
        decoder="gaussian",
        generator=torch.Generator().manual_seed(1),
        num_steps=num_steps,
    )
    return terms.sum(1)


def test_the_vp_chain_is_ddpm_and_the_model_runs_where_alpha_matches(registry) -> None:  # noqa: ANN001
    vp = registry.build("process", "vp", {})
    ddpm = registry.build("process", "ddpm", {})
    chain = DiscreteSchedule.of(vp)  # N = 1000, betas (0.1 + i / 999 * 19.9) / 1000
    assert torch.allclose(chain.alpha_bar, ddpm.alpha_bar_table, rtol=1e-12, atol=0)
    assert torch.allclose(vp.alpha(chain.times) ** 2, chain.alpha_bar, rtol=1e-12, atol=0)
    assert chain.scale is None and len(chain.times) == 1000
    # the exact times sit within O(1/N) of i / N, just outside [t_min, t_max] at both ends
    assert 0.9e-3 < float(chain.times[0]) < 1e-3 and 1.0 < float(chain.times[-1]) < 1.005
    assert float((chain.times - torch.arange(1, 1001) / 1000).abs().max()) < 5e-3
    assert len(DiscreteSchedule.of(vp, 50).alpha_bar) == 50
    assert torch.allclose(
        vp_chain_alpha_bar(3, 0.3, 0.9), torch.tensor([0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7]).double()
    )
    with pytest.raises(ValueError, match="VP-family process"):
        DiscreteSchedule.of(registry.build("process", "ve", {}))
    with pytest.raises(ValueError, match="its own 1000 steps"):
        DiscreteSchedule.of(ddpm, 500)


def test_vp_and_subvp_bounds_equal_the_ddpm_process_bound(registry) -> None:  # noqa: ANN001
    # the same chain and the same exact x0 estimates (SNR matched), so the same numbers
    # at N = 200: DDPM's linear betas from beta_min / N to beta_max / N
    x = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5 + 0.3
    ddpm = {"num_steps": 200, "beta_start": 0.1 / 200, "beta_end": 20.0 / 200}
    bounds = {
        name: _bound(_gaussian(registry.build("process", name, opts), 0.3, 0.5), x, None if opts else 200)
        for name, opts in (("ddpm", ddpm), ("vp", {}), ("subvp", {}))
    }
    assert torch.allclose(bounds["vp"], bounds["ddpm"], rtol=1e-9, atol=1e-9)
    assert torch.allclose(bounds["subvp"], bounds["ddpm"], rtol=1e-9, atol=1e-9)
    assert DiscreteSchedule.of(registry.build("process", "subvp", {})).scale is not None


@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_vp_family_bound_is_above_the_exact_nll_and_close_at_n_1000(registry, name: str) -> None:  # noqa: ANN001
    model = _gaussian(registry.build("process", name, {}), 0.3, 0.5)
    x = model.sample_data(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gap = _bound(model, x) + model.data_log_prob(x)  # bound - exact NLL, nats per sample (D = 1)
    mean, stderr = float(gap.mean()), float(gap.std()) / math.sqrt(len(gap))
    assert mean > -3 * stderr and mean < 0.1  # measured 0.041 +- 0.033 nats
    assert math.isfinite(float(_bound(model, x[:8], num_steps=21).sum()))  # beta_N = 20/21 < 1


def test_level_k_dequantization_matches_the_closed_form(registry) -> None:  # noqa: ANN001
    # N(0, 0.5^2 I) data rounded to K = 17 levels of [-1, 1]; the model's probability of each
    # integer k is the Gaussian p_{t_min} integrated over the bin [c - 1/16, c + 1/16]
    levels, dim = 17, 2
    process = registry.build("process", "vp", {})
    model = _gaussian(process, 0.0, 0.5, dim)
    x = model.sample_data(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = ((x + 1.0) * level_scale(levels)).round().clamp(0, levels - 1)
    y = dequantize(k, torch.Generator().manual_seed(1), levels)
    estimate = ode_log_likelihood(model, process, y).logp - dequantization_offset_nats(dim, levels)
    std = math.sqrt(
        float(process.alpha(process.t_min)) ** 2 * 0.25 + float(process.sigma(process.t_min)) ** 2
    )
    centre, half = k / level_scale(levels) - 1.0, 1.0 / (levels - 1)
    normal = torch.distributions.Normal(0.0, std)
    exact = torch.log(normal.cdf(centre + half) - normal.cdf(centre - half)).sum(1)
    diff = estimate - exact  # Jensen: E_u[diff] <= 0, tiny for bins narrow against the std
    stderr = float(diff.std()) / math.sqrt(len(diff))
    assert -0.05 < float(diff.mean()) < 3 * stderr  # measured -0.006 +- 0.007 nats
    assert dequantization_offset_nats(dim, levels) == pytest.approx(dim * math.log(8.0))
    assert dequantization_offset_nats(dim) == pytest.approx(dim * math.log(127.5))
    assert float((y - centre).abs().max()) <= half + 1e-12


def test_levels_256_reproduces_the_8_bit_numbers_exactly(registry) -> None:  # noqa: ANN001
    pixels = torch.tensor([[0.0, 255.0], [128.0, 7.0], [100.0, 140.0]], dtype=torch.float64)
    loose = {"rtol": 1e-3, "atol": 1e-3}
    old = LikelihoodConfig(model="gmm:ring8", dequantize=True, **loose)
    for method, sde, steps in (("ode", "vp", {}), ("vlb", "ddpm", {"num_steps": 100})):
        reports = [
            evaluate_likelihood(
                LikelihoodConfig(
                    process=sde, model="gmm:ring8", method=method, process_options=steps, **loose, **flags
                ),
                registry=registry,
                data=pixels,
            )
            for flags in ({"dequantize": True}, {"levels": 256})
        ]
        for key in ("mean_logp", "stderr", "bits_per_dim", "dequantization_offset_nats"):
            assert reports[0][key] == reports[1][key], (method, key)
    # and both equal the formulas of 8-bit dequantization: y = (x + u - 1/2) / 127.5 - 1, D log 127.5
    process = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:ring8", {}, process)
    u = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(old.seed), dtype=torch.float64)
    logp = ode_log_likelihood(model, process, (pixels + u - 0.5) / 127.5 - 1.0, **loose).logp
    report = evaluate_likelihood(old, registry=registry, data=pixels)
    assert report["mean_logp"] == float((logp - 2 * math.log(127.5)).mean())
    # the bound: discretized decoder on the bin centres x / 127.5 - 1, half bin 1/255
    ddpm = registry.build("process", "ddpm", {"num_steps": 100})
    terms = vlb_terms(
        registry.build("model", "gmm:ring8", {}, ddpm),
        pixels / 127.5 - 1.0,
        variance="beta",
        generator=torch.Generator().manual_seed(old.seed),
    )
    config = LikelihoodConfig(process="ddpm", model="gmm:ring8", method="vlb", dequantize=True)
    bound = evaluate_likelihood(
        dataclasses.replace(config, process_options={"num_steps": 100}), registry=registry, data=pixels
    )
    assert bound["mean_logp"] == float(-terms.sum(1).mean())


def test_a_dataset_reads_as_its_integer_levels(registry) -> None:  # noqa: ANN001
    from sklearn.datasets import load_digits

    pixels = load_points("digits", registry, 17)
    assert torch.equal(pixels, torch.from_numpy(load_digits().data).reshape(-1, 1, 8, 8))
    assert float(load_points("digits", registry).min()) == -1.0  # no levels: the [-1, 1] values
    with pytest.raises(UsageError, match="not on the 256-level grid"):
        load_points("digits", registry, 256)


def _fail(args: list[str], expected: str) -> None:
    result = runner.invoke(app, ["likelihood", *args])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {expected}"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--sde", "ve", "--method", "vlb"],
            "--method vlb needs a VP-family process (ddpm, ddpm-cosine, vp, subvp), not 've'",
        ),
        (["--vlb-steps", "100"], "--vlb-steps applies to --method vlb only"),
        (["--method", "vlb", "--vlb-steps", "1"], "--vlb-steps must be an integer >= 2, got 1"),
        (
            ["--method", "vlb", "--vlb-steps", "20"],
            "--vlb-steps 20: the DDPM chain of beta_max = 20 needs N > 20 steps"
            " (beta_N = beta_max / N < 1), got 20",
        ),
        (
            ["--sde", "ddpm", "--method", "vlb", "--vlb-steps", "100"],
            "--vlb-steps 100: process 'ddpm' has its own 1000 steps (set them with --sde-opt num_steps=N)",
        ),
        (["--levels", "1"], "--levels must be an integer >= 2, got 1"),
        (
            ["--levels", "17"],
            "--levels and --dequantize need discrete data (a dataset or a file of integers)",
        ),
        (
            ["--model", "digits", "--data", "digits", "--levels", "256"],
            "dataset 'digits' is not on the 256-level grid of [-1, 1] (--levels 256)",
        ),
        (["--model", "digits", "--data", "{file}", "--levels", "17"], "--levels 17 needs integers in 0..16"),
        (
            ["--model", "digits", "--data", "{file}", "--dequantize"],
            "--dequantize needs 8-bit data: integers in 0..255",
        ),
    ],
)
def test_bad_combinations_are_refused_in_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    np.save(tmp_path / "x.npy", np.full((2, 1, 8, 8), 16.5))
    _fail([a.format(file=tmp_path / "x.npy") for a in args], expected)


def test_shipped_digits_bits_per_dim_by_ode_and_bound(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    np.save(tmp_path / "d.npy", load_digits().data[:4].reshape(-1, 1, 8, 8).astype(np.int64))
    common = [
        "likelihood",
        "--model",
        "digits",
        "--data",
        str(tmp_path / "d.npy"),
        "--levels",
        "17",
        "--json",
    ]
    ode = runner.invoke(app, [*common, "--divergence", "hutchinson", "--rtol", "1e-3", "--atol", "1e-3"])
    vlb = runner.invoke(app, [*common, "--method", "vlb", "--vlb-steps", "100"])
    assert ode.exit_code == 0 and vlb.exit_code == 0, (ode.stderr, vlb.stderr)
    ode_bpd, vlb_bpd = json.loads(ode.stdout)["bits_per_dim"], json.loads(vlb.stdout)["bits_per_dim"]
    # below 17 uniform levels (log2 17 = 4.09); measured on these 4 digits: 2.05 (ODE), 2.44 (N = 100)
    assert 0.5 < ode_bpd < vlb_bpd < math.log2(17)
    assert json.loads(vlb.stdout)["vlb_steps"] == 100
