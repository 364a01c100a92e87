"""Predictor–corrector `pc`: defaults, every predictor x corrector, step rules, reuse, conformance."""

from __future__ import annotations

import itertools

import pytest
import torch
from _helpers import CHI2_7DOF_999, at_floor, distance_to_data, prior_noise, ring8_floor, ring8_quality

import diffkit
from diffkit.core.errors import OptionError
from diffkit.plugins.pc import PredictorCorrector
from diffkit.testing import check_sampler_conformance

F64 = torch.float64
PREDICTORS = ("reverse-diffusion", "em", "ancestral", "none")
CORRECTORS = ("langevin", "ald", "none")


@pytest.mark.slow
@pytest.mark.parametrize("process_name", ["vp", "ve"])
def test_defaults_sample_ring8_at_the_noise_floor(registry, process_name: str) -> None:
    """Default predictor, corrector, snr, grid and steps: SW2 at the floor, spread within 4 % (MC 1.1 %)."""
    process = registry.build("process", process_name, {})
    model = registry.build("model", "gmm:ring8", {}, process)
    sampler = registry.build("sampler", "pc", {})
    caps = sampler.capabilities
    grid = registry.build("grid", caps.default_grid, {})(process, caps.default_steps)
    x_init = prior_noise(process, model, 2000, seed=1)
    result = sampler(model, process, x_init, grid, generator=torch.Generator().manual_seed(2))
    assert result.nfe == 2 * caps.default_steps
    distance, floor = distance_to_data(model, result.x), ring8_floor(model, 2000)
    assert at_floor(distance, floor, factor=1.5), (distance, floor)
    spread, chi2 = ring8_quality(model, process, result.x)
    assert abs(spread - 1.0) < 0.04 and chi2 < CHI2_7DOF_999, (spread, chi2)


@pytest.mark.parametrize(
    "predictor, corrector",
    [(p, c) for p, c in itertools.product(PREDICTORS, CORRECTORS) if (p, c) != ("none", "none")],
)
def test_every_combination_runs_and_counts_nfe(registry, predictor: str, corrector: str) -> None:
    """NFE = steps x (predictor + corrector_steps) + 1 with denoise_final; finite samples."""
    vp = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:d64", {"image": True}, vp)
    options = {"predictor": predictor, "corrector": corrector, "corrector_steps": 2, "denoise_final": True}
    sampler = registry.build("sampler", "pc", options)
    grid = registry.build("grid", "log-snr", {})(vp, 5)
    result = sampler(
        model, vp, prior_noise(vp, model, 4, seed=3), grid, generator=torch.Generator().manual_seed(4)
    )
    per_step = (predictor != "none") + (2 if corrector != "none" else 0)
    assert sampler.capabilities.nfe_per_step == per_step
    assert result.nfe == 5 * per_step + 1 and result.steps == 5
    assert result.x.shape == (4, 1, 8, 8) and bool(torch.isfinite(result.x).all())


@pytest.mark.parametrize("process_name", ["vp", "ve"])
def test_predictors_reuse_the_em_and_ancestral_steps(registry, process_name: str) -> None:
    """pc with no corrector is bit-identical to `em` and to `ancestral` (shared step functions)."""
    process = registry.build("process", process_name, {})
    model = registry.build("model", "gmm:ring8", {}, process)
    x_init = prior_noise(process, model, 16, seed=5, dtype=torch.float32)
    grid = registry.build("grid", "uniform", {})(process, 20)
    for name in ("em", "ancestral"):
        alone = registry.build("sampler", name, {})
        inside = registry.build("sampler", "pc", {"predictor": name, "corrector": "none"})
        a, b = (
            s(model, process, x_init, grid, generator=torch.Generator().manual_seed(6)).x
            for s in (alone, inside)
        )
        assert torch.equal(a, b), name


def test_reverse_diffusion_predictor_is_alg_2_on_ve(registry) -> None:
    """VE: x + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_t^2 - sigma_s^2) z (Song et al. 2021, Alg. 2)."""
    ve = registry.build("process", "ve", {})
    model = registry.build("model", "gmm:ring8", {}, ve)
    x_init = prior_noise(ve, model, 8, seed=7)
    grid = torch.tensor([0.8, 0.5], dtype=F64)
    sampler = registry.build("sampler", "pc", {"predictor": "reverse-diffusion", "corrector": "none"})
    x = sampler(model, ve, x_init, grid, generator=torch.Generator().manual_seed(8)).x
    gap = float(ve.sigma(0.8)) ** 2 - float(ve.sigma(0.5)) ** 2
    z = torch.randn(x_init.shape, generator=torch.Generator().manual_seed(8), dtype=F64)
    expected = x_init + gap * model.score(x_init, grid[0]) + gap**0.5 * z
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("corrector", ["langevin", "ald"])
def test_corrector_step_rules(registry, corrector: str) -> None:
    """One corrector update at s after a VP step t -> s, a = alpha_t^2 / alpha_s^2 (1 - beta of Alg. 5).

    langevin: e = 2 a (r ||z|| / ||score||)^2 per sample; ald: e = 2 a (r sigma_s)^2; then
    x + e score + sqrt(2 e) z.
    """
    vp = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:d64", {}, vp)
    x_init = prior_noise(vp, model, 6, seed=9)
    grid = torch.tensor([0.5, 0.45], dtype=F64)
    sampler = registry.build("sampler", "pc", {"predictor": "none", "corrector": corrector, "snr": "0.2"})
    x = sampler(model, vp, x_init, grid, generator=torch.Generator().manual_seed(10)).x
    a = float(vp.alpha(0.5) / vp.alpha(0.45)) ** 2
    score = model.score(x_init, grid[1])
    z = torch.randn(x_init.shape, generator=torch.Generator().manual_seed(10), dtype=F64)
    if corrector == "langevin":
        e = 2 * a * (0.2 * z.norm(dim=1) / score.norm(dim=1)) ** 2  # per sample, (B,)
    else:
        e = torch.full((6,), 2 * a * (0.2 * float(vp.sigma(0.45))) ** 2, dtype=F64)
    expected = x_init + e[:, None] * score + (2 * e[:, None]).sqrt() * z
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-12)


def test_auto_options_resolve_per_process(registry) -> None:
    """Auto: reverse-diffusion + ald with snr 0.16; langevin's auto snr is 0.01 off VE."""
    vp, ve = (registry.build("process", name, {}) for name in ("vp", "ve"))
    auto = registry.build("sampler", "pc", {})
    for process in (vp, ve):
        resolved = auto.resolve(process)
        assert (resolved.predictor, resolved.corrector, resolved.snr) == ("reverse-diffusion", "ald", 0.16)
    langevin = registry.build("sampler", "pc", {"corrector": "langevin"})
    assert (langevin.resolve(vp).snr, langevin.resolve(ve).snr) == (0.01, 0.16)
    assert registry.build("sampler", "pc", {"snr": "0.3"}).resolve(vp).snr == 0.3
    for name in ("subvp", "ddpm"):
        assert langevin.resolve(registry.build("process", name, {})).snr == 0.01


def test_options_are_validated(registry) -> None:
    """Unknown choices, both parts none, bad snr and corrector_steps raise."""
    for options in (
        {"predictor": "heun"},
        {"corrector": "mala"},
        {"predictor": "none", "corrector": "none"},
        {"snr": "-0.1"},
        {"snr": "loud"},
        {"corrector_steps": "0"},
    ):
        with pytest.raises(OptionError):
            registry.build("sampler", "pc", options)
    with pytest.raises(ValueError):
        PredictorCorrector(corrector_steps=True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name, options",
    [
        ("pc", {}),
        ("pc", {"predictor": "ancestral", "corrector": "langevin", "corrector_steps": 2}),
        ("pc", {"predictor": "none", "corrector": "ald", "denoise_final": True}),
        ("ancestral", {}),
        ("ancestral", {"variance": "beta", "denoise_final": True}),
        ("langevin", {}),
        ("ald", {}),
    ],
)
def test_conformance(registry: diffkit.Registry, name: str, options: dict) -> None:
    """The `diffkit.testing` kit on vp; pc also on ve."""
    check_sampler_conformance(registry, name, options=options)
    if name == "pc" and not options:
        check_sampler_conformance(registry, name, process="ve", model="gmm:ring8")
