"""Plain and annealed Langevin dynamics (`langevin`, `ald`) and the NCSN recipes of `diffkit.solvers.ncsn`."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import TimeRecorder, prior_noise

from diffkit.core.errors import OptionError
from diffkit.solvers import ncsn

F64 = torch.float64
CIFAR10 = dict(dim=3072, sigma_1=50.0, levels=232, steps=5, eps=6.2e-6)  # NCSNv2 configs/cifar10.yml
CELEBA = dict(dim=12288, sigma_1=90.0, levels=500, steps=5, eps=3.3e-6)  # NCSNv2 configs/celeba.yml


def _minor_weight_error(model, x: torch.Tensor) -> float:
    """|fraction of samples in the left (weight 0.2) mode of gmm:two-modes - 0.2|."""
    return abs(float((model.component_of(x) == 0).to(F64).mean()) - 0.2)


@pytest.mark.slow
def test_two_modes_plain_langevin_gets_the_weights_wrong_annealed_gets_them_right(registry) -> None:
    """The seed survey's figure on gmm:two-modes under VE, 4000 samples from the same prior draw.

    Plain Langevin cannot cross between modes 5 apart with std 0.25, so it keeps the prior's
    basin split (~0.5 / 0.5); annealed Langevin equilibrates the weights while the modes still
    overlap at high noise and ends within Monte-Carlo error (0.006) of 0.2 / 0.8.
    """
    ve = registry.build("process", "ve", {})
    model = registry.build("model", "gmm:two-modes", {}, ve)
    x_init = prior_noise(ve, model, 4000, seed=1)
    results = {}
    for name in ("langevin", "ald"):
        sampler = registry.build("sampler", name, {})
        caps = sampler.capabilities
        grid = registry.build("grid", caps.default_grid, {})(ve, caps.default_steps)
        x = sampler(model, ve, x_init, grid, generator=torch.Generator().manual_seed(2)).x
        results[name] = _minor_weight_error(model, x)
    assert results["langevin"] > 0.15 and results["ald"] < 0.03, results


def test_langevin_iterates_on_the_score_at_the_last_grid_time(registry) -> None:
    """x + eps/2 score(x, t_min) + sqrt(eps) z, one model call per grid step, all at t_min."""
    vp = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:ring8", {}, vp)
    recorder = TimeRecorder(model)
    x_init = prior_noise(vp, model, 8, seed=3)
    grid = registry.build("grid", "uniform", {})(vp, 3)
    result = registry.build("sampler", "langevin", {"step_size": 0.01})(
        model, vp, x_init, grid, generator=torch.Generator().manual_seed(4)
    )
    assert result.nfe == recorder.calls == 3
    assert bool((recorder.all_times() == vp.t_min).all())
    generator, x = torch.Generator().manual_seed(4), x_init
    for _ in range(3):
        score = model.score(x, vp.t_min)
        x = x + 0.005 * score + 0.1 * torch.randn(x.shape, generator=generator, dtype=F64)
    torch.testing.assert_close(result.x, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("step_size", [3e-5, None])
def test_ald_runs_T_steps_per_level_with_step_proportional_to_sigma_squared(registry, step_size) -> None:
    """Level i = grid[i + 1], T calls each; alpha_i = eps sigma_i^2 / sigma_L^2, or Technique 4's."""
    ve = registry.build("process", "ve", {})
    model = registry.build("model", "gmm:ring8", {}, ve)
    recorder = TimeRecorder(model)
    grid = torch.tensor([1.0, 0.6, 0.3], dtype=F64)
    options = {"steps_per_level": 2, "step_size": step_size}
    x_init = prior_noise(ve, model, 8, seed=5)
    result = registry.build("sampler", "ald", options)(
        model, ve, x_init, grid, generator=torch.Generator().manual_seed(6)
    )
    levels = torch.tensor([0.6, 0.6, 0.3, 0.3], dtype=F64).repeat_interleave(8)
    assert result.nfe == recorder.calls == 4 and torch.equal(recorder.all_times(), levels)
    sigma = ve.sigma(grid)
    if step_size is None:  # NCSNv2 Technique 4 with gamma = the largest ratio, here 10^(0.4 log10(5000))
        relative = ncsn.ncsnv2_step_size(float((sigma[:-1] / sigma[1:]).max()), 2, 1.0)
    else:  # NCSN: alpha_i = eps sigma_i^2 / sigma_L^2 and the update uses alpha_i / 2
        relative = step_size / (2 * float(sigma[-1]) ** 2)
    generator, x = torch.Generator().manual_seed(6), x_init
    for level in (1, 1, 2, 2):
        e = relative * float(sigma[level]) ** 2
        z = torch.randn(x.shape, generator=generator, dtype=F64)
        x = x + e * model.score(x, grid[level]) + math.sqrt(2 * e) * z
    torch.testing.assert_close(result.x, x, rtol=1e-10, atol=1e-10)


def test_options_and_capabilities(registry) -> None:
    """Bad options raise; NFE per step is T; neither sampler claims a convergence order."""
    for name, options in [
        ("langevin", {"step_size": "0"}),
        ("langevin", {"step_size": "nan"}),
        ("ald", {"steps_per_level": "0"}),
        ("ald", {"step_size": "-1"}),
    ]:
        with pytest.raises(OptionError):
            registry.build("sampler", name, options)
    ald = registry.build("sampler", "ald", {"steps_per_level": "7"})
    assert ald.capabilities.nfe_per_step == 7 and ald.capabilities.order == 0.0
    langevin = registry.build("sampler", "langevin", {}).capabilities
    assert langevin.stochastic and langevin.order == 0.0 and langevin.nfe_per_step == 1


# ---- NCSNv2 recipes (Song & Ermon 2020) --------------------------------------------------------


def test_technique_1_is_the_largest_pairwise_distance() -> None:
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [-3.0, -4.0]], dtype=F64)
    assert float(ncsn.max_pairwise_distance(points)) == 10.0
    assert float(ncsn.max_pairwise_distance(points, chunk=1)) == 10.0
    images = torch.zeros(3, 1, 2, 2, dtype=F64)
    images[1] += 1.0  # distance sqrt(4) = 2 from the zero images
    assert float(ncsn.max_pairwise_distance(images)) == pytest.approx(2.0)


def test_technique_2_shell_overlap_and_ratio() -> None:
    """Hand values: overlap(1) = Phi(3) - Phi(-3); CIFAR-10 (D = 3072) solves to gamma = 1.0398.

    The paper's published sequences (CIFAR-10: sigma_1 = 50, L = 232; CelebA: sigma_1 = 90,
    L = 500; sigma_L = 0.01) have overlap 0.567, "approximately 0.5" in the paper's words; solving
    for 0.566 gives back their L exactly, solving for 0.5 gives L = 220 and 473.
    """
    assert ncsn.shell_overlap(1.0, 3072) == pytest.approx(0.9973002, abs=1e-7)
    gamma = ncsn.geometric_ratio(3072)
    assert gamma == pytest.approx(1.0397964, abs=1e-6)
    assert ncsn.shell_overlap(gamma, 3072) == pytest.approx(0.5, abs=1e-9)
    assert ncsn.num_levels(50.0, 0.01, gamma) == 220
    for config in (CIFAR10, CELEBA):
        paper_gamma = (config["sigma_1"] / 0.01) ** (1.0 / (config["levels"] - 1))
        assert ncsn.shell_overlap(paper_gamma, config["dim"]) == pytest.approx(0.567, abs=1e-3)
        assert ncsn.num_levels(config["sigma_1"], 0.01, paper_gamma) == config["levels"]
        solved = ncsn.geometric_ratio(config["dim"], target=0.566)
        assert ncsn.num_levels(config["sigma_1"], 0.01, solved) == config["levels"]
    with pytest.raises(ValueError, match="no geometric ratio for D=2"):
        ncsn.geometric_ratio(2)  # the gmm:two-modes case: the shell picture needs D >= 5
    assert ncsn.geometric_ratio(5) > 1.0


def test_technique_4_reproduces_the_papers_step_sizes() -> None:
    """eq. 6 closest to 1 for the paper's gamma, T = 5, sigma_L = 0.01: eps = 6.2e-6 and 3.3e-6."""
    for config in (CIFAR10, CELEBA):
        gamma = (config["sigma_1"] / 0.01) ** (1.0 / (config["levels"] - 1))
        eps = ncsn.ncsnv2_step_size(gamma, config["steps"], 0.01)
        assert float(f"{eps:.2g}") == config["eps"], eps


def test_eq_6_is_the_exact_variance_after_T_steps() -> None:
    """x ~ N(0, gamma^2 s_i^2), T updates x + a(-x/s_i^2) + sqrt(2a) z with a = eps s_i^2/sigma_L^2."""
    gamma, steps, sigma_min, sigma_i, eps = 1.3, 7, 0.05, 0.4, 2e-4
    alpha = eps * sigma_i**2 / sigma_min**2
    variance = (gamma * sigma_i) ** 2
    for _ in range(steps):  # Var[(1 - a/s^2) x + sqrt(2a) z]
        variance = (1 - alpha / sigma_i**2) ** 2 * variance + 2 * alpha
    ratio = ncsn.stationary_variance_ratio(eps, gamma, steps, sigma_min)
    assert ratio == pytest.approx(variance / sigma_i**2, rel=1e-12)
    assert ncsn.stationary_variance_ratio(0.0, gamma, steps, sigma_min) == pytest.approx(gamma**2)


def test_levels_map_to_times_through_the_noise_to_signal_ratio(registry) -> None:
    """sigma(t)/alpha(t) of level_times equals each level, on VE (sigma itself) and on VP."""
    sigmas = ncsn.geometric_levels(5.0, 0.05, 7)
    torch.testing.assert_close(sigmas[1:] / sigmas[:-1], torch.full((6,), 0.01 ** (1 / 6), dtype=F64))
    for name in ("ve", "vp"):
        process = registry.build("process", name, {})
        times = ncsn.level_times(process, sigmas)
        torch.testing.assert_close(process.sigma(times) / process.alpha(times), sigmas, rtol=1e-9, atol=0)
