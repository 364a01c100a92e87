"""Processes `flow` and `flow-cosine`: closed forms, range, prior, likelihood, sample quality and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.process import schedule_problem
from diffkit.eval.encoding import decode, encode, relative_error
from diffkit.eval.log_likelihood import ode_log_likelihood

FLOWS = ("flow", "flow-cosine")
TIMES = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99], dtype=torch.float64)
runner = CliRunner()


def _closed_forms(name: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """alpha, sigma, f = d log alpha/dt, g^2 and lambda of the paths, written out by hand."""
    if name == "flow":  # x_t = (1 - t) x0 + t eps (Lipman et al. 2023, eq. 20; SD3 eq. 2)
        return {
            "alpha": 1 - t,
            "sigma": t,
            "f": -1 / (1 - t),
            "g2": 2 * t / (1 - t),
            "log_snr": 2 * torch.log((1 - t) / t),
        }
    a = math.pi / 2  # alpha = cos(a t), sigma = sin(a t)
    return {
        "alpha": torch.cos(a * t),
        "sigma": torch.sin(a * t),
        "f": -a * torch.tan(a * t),
        "g2": 2 * a * torch.tan(a * t),
        "log_snr": -2 * torch.log(torch.tan(a * t)),
    }


@pytest.mark.parametrize("name", FLOWS)
def test_schedule_matches_the_closed_forms(registry: diffkit.Registry, name: str) -> None:
    """alpha, sigma, f, g^2 and lambda equal the formulas of the paths to float64 rounding."""
    process = registry.build("process", name, {})
    expected = _closed_forms(name, TIMES)
    got = {
        "alpha": process.alpha(TIMES),
        "sigma": process.sigma(TIMES),
        "f": process.f(TIMES),
        "g2": process.diffusion_squared(TIMES),
        "log_snr": process.log_snr(TIMES),
    }
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-12, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", FLOWS)
def test_diffusion_is_d_sigma2_dt_minus_2_f_sigma2_numerically(registry: diffkit.Registry, name: str) -> None:
    """g^2 = d sigma^2/dt - 2 f sigma^2 and f = d log alpha/dt, against central differences."""
    process = registry.build("process", name, {})
    h = 1e-6
    d_sigma2 = (process.sigma(TIMES + h) ** 2 - process.sigma(TIMES - h) ** 2) / (2 * h)
    d_log_alpha = (torch.log(process.alpha(TIMES + h)) - torch.log(process.alpha(TIMES - h))) / (2 * h)
    torch.testing.assert_close(process.f(TIMES), d_log_alpha, rtol=1e-6, atol=0)
    numeric = d_sigma2 - 2 * process.f(TIMES) * process.sigma(TIMES) ** 2
    torch.testing.assert_close(process.diffusion_squared(TIMES), numeric, rtol=1e-6, atol=0)
    assert bool((process.diffusion_squared(TIMES) > 0).all())


@pytest.mark.parametrize("name", FLOWS)
def test_log_snr_inverse_round_trips(registry: diffkit.Registry, name: str) -> None:
    """t_from_log_snr inverts log_snr on the whole range (closed-form inverses) and clamps outside it."""
    process = registry.build("process", name, {})
    t = torch.linspace(process.t_min, process.t_max, 101, dtype=torch.float64)
    torch.testing.assert_close(process.t_from_log_snr(process.log_snr(t)), t, rtol=0, atol=1e-12)
    lam_ends = process.log_snr(torch.tensor([process.t_max, process.t_min], dtype=torch.float64))
    outside = torch.stack([lam_ends[0] - 5, lam_ends[1] + 5])
    assert process.t_from_log_snr(outside).tolist() == [process.t_max, process.t_min]
    assert bool((process.log_snr(t).diff() < 0).all())


@pytest.mark.parametrize("name", FLOWS)
def test_range_passes_the_composition_check_and_spans_vp_log_snr(
    registry: diffkit.Registry, name: str
) -> None:
    """No endpoint where alpha or sigma vanishes is evaluated; the log-SNR range is vp's (about +-11)."""
    process = registry.build("process", name, {})
    assert schedule_problem(process) is None
    assert 0 < process.t_min < process.t_max < 1
    lam_max, lam_min = process.log_snr(torch.tensor([process.t_min, process.t_max], dtype=torch.float64))
    vp = registry.build("process", "vp", {})
    vp_max, vp_min = vp.log_snr(torch.tensor([vp.t_min, vp.t_max], dtype=torch.float64))
    assert abs(float(lam_max - vp_max)) < 0.5 and abs(float(lam_min - vp_min)) < 1.0
    assert process.traits.default_grid == "beta"
    assert process.traits.variance_preserving == (name == "flow-cosine")


@pytest.mark.parametrize("name", FLOWS)
@pytest.mark.parametrize("options", [{"t_max": "1"}, {"t_min": "0"}, {"t_min": "0.5", "t_max": "0.4"}])
def test_endpoints_where_alpha_or_sigma_vanish_are_refused(
    registry: diffkit.Registry, name: str, options: dict[str, str]
) -> None:
    """t_min = 0 (sigma = 0) or t_max = 1 (alpha = 0) is one clear OptionError."""
    with pytest.raises(diffkit.OptionError, match=r"need 0 < t_min < t_max < 1 \(sigma = 0 at t = 0"):
        registry.build("process", name, options)


@pytest.mark.parametrize("name", FLOWS)
def test_prior_is_the_gaussian_at_t_max(registry: diffkit.Registry, name: str) -> None:
    """prior_logp is the N(0, sigma(t_max)^2 I) density and prior_sample has that std."""
    process = registry.build("process", name, {})
    std = float(process.sigma(process.t_max))
    z = process.prior_sample((20000, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(z.std()) - std) < 4 * std / math.sqrt(2 * z.numel())
    expected = (-0.5 * (z / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(process.prior_logp(z), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FLOWS)
@pytest.mark.parametrize(("model_name", "n"), [("gmm:ring8", 48), ("gmm:d64", 4)])
def test_ode_likelihood_is_within_001_nats_per_dim(
    registry: diffkit.Registry, name: str, model_name: str, n: int
) -> None:
    """PF-ODE log-likelihood of exact samples against the oracle's closed-form log p_{t_min}."""
    process = registry.build("process", name, {})
    model = registry.build("model", model_name, {}, process)
    x = model.sample_data(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dim = x[0].numel()
    exact = model.log_prob(x, process.t_min)
    result = ode_log_likelihood(model, process, x, rtol=1e-5, atol=1e-5)
    assert float((result.logp - exact).mean().abs()) / dim < 0.01
    assert float((result.logp - exact).abs().max()) / dim < 0.02
    assert float((result.logp - model.data_log_prob(x)).mean().abs()) / dim < 0.01


def test_encode_decode_round_trip_on_flow(registry: diffkit.Registry) -> None:
    """The PF-ODE encoder is invertible on flow and its latents of exact data have the prior's std."""
    process = registry.build("process", "flow", {})
    model = registry.build("model", "gmm:ring8", {}, process)
    x = model.sample_data(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    latents = encode(model, process, x)
    back = decode(model, process, latents.x)
    assert float(relative_error(back.x, x).max()) < 1e-3
    std = process.prior_std()
    assert abs(float(latents.x.std()) - std) < 4 * std / math.sqrt(2 * latents.x.numel())


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_likelihood_encode_decode_cli_on_flow(registry: diffkit.Registry, tmp_path: Path) -> None:
    """`diffkit likelihood/encode/decode --sde flow` run and agree with the closed forms."""
    report = json.loads(_ok("likelihood", "--sde", "flow", "--num-samples", "200", "--json"))
    assert abs(report["mean_logp"] - report["closed_form_logp"]) / 2 < 0.01
    process = registry.build("process", "flow", {})
    data = registry.build("model", "gmm:ring8", {}, process).sample_data(
        50, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    np.save(tmp_path / "x.npy", data.numpy())
    _ok("encode", "--sde", "flow", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "z.npz"))
    _ok("decode", "--latents", str(tmp_path / "z.npz"), "--out", str(tmp_path / "y.npz"))
    with np.load(tmp_path / "y.npz") as out:
        back = out["samples"]
    assert np.linalg.norm(back - data.numpy()) / np.linalg.norm(data.numpy()) < 1e-3


def test_guided_sampling_cli_on_flow(tmp_path: Path) -> None:
    """Classifier-free guidance with the exact conditional oracle at scale 1 samples the class on flow."""
    out = tmp_path / "s.npz"
    args = ["--model", "gmm:ring8-cond", "--cond", "3", "--guidance", "cfg", "--guidance-scale", "1"]
    summary = json.loads(
        _ok(
            "sample",
            "--sde",
            "flow",
            *args,
            "--solver",
            "dpmpp-2m",
            "--steps",
            "50",
            "--num-samples",
            "500",
            "--no-plot",
            "--out",
            str(out),
            "--json",
        )
    )
    assert summary["sliced_w2_to_class"] < 3 * summary["sliced_w2_floor"]


def test_inpaint_cli_on_flow(tmp_path: Path) -> None:
    """`diffkit inpaint --sde flow` keeps the known pixels and fills the rest."""
    data = np.full((20, 64), 0.1)
    mask = np.zeros(64)
    mask[:32] = 1
    np.save(tmp_path / "x.npy", data)
    np.save(tmp_path / "m.npy", mask)
    out = tmp_path / "inp.npz"
    _ok(
        "inpaint",
        "--sde",
        "flow",
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
    with np.load(out) as saved:
        samples = saved["samples"]
    assert samples.shape == (20, 64)
    assert np.array_equal(samples[:, :32], np.full((20, 32), 0.1, dtype=np.float32))
    assert np.isfinite(samples).all() and float(np.abs(samples[:, 32:] - 0.1).max()) > 0


#: samplers that miss the bar at 50 NFE on every process, vp included (measured, gmm:ring8, 8000
#: samples, spread on flow / on vp, each with its default grid): ancestral's beta_tilde steps
#: narrow the modes (0.88 / 0.92; 0.92 on flow with `--grid log-snr`); pc spends half its NFE on
#: Langevin corrector steps (1.18 / 1.22); ald and langevin are annealed Langevin dynamics
#: (1.65 / 2.2 and 1.07 / 1.08, sliced-W2 3-7x the floor); dpmpp-2m-sde sits at the edge on both
#: (1.047-1.055 / 1.044-1.069 across seeds and sample counts). On flow they are held to vp's own
#: quality instead (spread error at most 0.05 above vp's, sliced-W2 at most 3 floor stds above).
MISS_ON_VP = ("ancestral", "euler-ancestral", "pc", "ald", "langevin", "dpmpp-2m-sde")
QUALITY_SAMPLES = 8000


def _sample_at_50_nfe(registry: diffkit.Registry, name: str, sde: str) -> tuple[torch.Tensor, Any, int]:
    """Samples `(N, 2)` of `name` on `sde` with gmm:ring8 at a budget of 50 NFE, the model, and the NFE."""
    from diffkit.bench.plan import plan_for, steps_for_budget

    process = registry.build("process", sde, {})
    model = registry.build("model", "gmm:ring8", {}, process)
    probe = registry.build("sampler", name, {})
    caps = probe.capabilities
    sampler = registry.build("sampler", name, {"rtol": 1e-3, "atol": 1e-3}) if caps.adaptive else probe
    steps = 1 if caps.adaptive else steps_for_budget(plan_for(name, sampler), 50)
    grid = registry.build("grid", caps.grid_for(process), {})(process, steps)
    x_init = process.prior_sample((QUALITY_SAMPLES, 2), generator=torch.Generator().manual_seed(11))
    result = sampler(model, process, x_init.double(), grid, generator=torch.Generator().manual_seed(12))
    return result.x, model, result.nfe


def _spread(model: Any, x: torch.Tensor) -> float:
    from diffkit.eval.metrics import within_mode_spread

    return float(within_mode_spread(x, model.component_of(x), model.mixture.stds))


def test_every_sampler_at_50_nfe_on_flow_is_at_the_floor(registry: diffkit.Registry) -> None:
    """Every sampler the bench sweeps on flow (plain names, ode:heun2, ode:rk4, sde:srk) at 50 NFE on
    gmm:ring8 with the process's default grid (`beta`): sliced-W2 within 1.5x the noise floor and a
    within-mode spread within 0.05 of 1; those that miss it on vp too (`MISS_ON_VP`) no worse than on vp.
    """
    from diffkit.bench.plan import default_solvers
    from tests._helpers import at_floor, distance_to_data, ring8_floor

    names = default_solvers(registry, "flow")
    assert set(MISS_ON_VP) < set(names) and {"ddim", "dpmpp-2m", "unipc", "heun", "em", "ode"} < set(names)
    floor = None
    failures = []
    for name in names:
        x, model, nfe = _sample_at_50_nfe(registry, name, "flow")
        floor = floor or ring8_floor(model, QUALITY_SAMPLES)
        distance, spread = distance_to_data(model, x), _spread(model, x)
        assert nfe <= 50, name
        if name in MISS_ON_VP:
            x_vp, model_vp, _ = _sample_at_50_nfe(registry, name, "vp")
            ok = abs(spread - 1) <= abs(_spread(model_vp, x_vp) - 1) + 0.05
            ok = ok and distance <= distance_to_data(model_vp, x_vp) + 3 * floor.std
        else:
            ok = at_floor(distance, floor) and abs(spread - 1) <= 0.05
        if not ok:
            failures.append(f"{name}: sliced-W2 {distance / floor.mean:.2f}x floor, spread {spread:.3f}")
    assert not failures, failures
