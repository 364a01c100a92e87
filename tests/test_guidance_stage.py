"""The guidance stage and its methods on the class-conditional oracle (exact conditional scores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffkit import build_registry
from diffkit.cli.main import app
from diffkit.core.model import ScoreModel
from diffkit.eval.metrics import sliced_wasserstein, sliced_wasserstein_floor
from diffkit.wrappers.guidance import CFGModel

N = 3000
LABEL = 2
TIMES = (0.999, 0.7, 0.4, 0.2, 0.05, 0.005)

# every method at its identity setting: the conditional model
IDENTITY = [
    ("cfg", {}),
    ("cfg-rescale", {"phi": 0.0}),
    ("interval", {"lo": 0.0, "hi": 1e12}),
    ("apg", {"eta": 1.0, "momentum": 0.0}),
    ("cfg-pp", {}),
    ("autoguidance", {}),
]


@pytest.fixture(scope="module")
def registry():  # noqa: ANN201
    return build_registry()


@pytest.fixture(scope="module")
def vp(registry):  # noqa: ANN001, ANN201
    return registry.build("process", "vp", {})


@pytest.fixture(scope="module")
def ring(registry, vp):  # noqa: ANN001, ANN201
    return registry.build("model", "gmm:ring8-cond", {}, vp)


@pytest.fixture(scope="module")
def plain(registry, vp):  # noqa: ANN001, ANN201
    """The unconditional ring: the same mixture as the conditional oracle's null label."""
    return registry.build("model", "gmm:ring8", {}, vp)


def _wrap(registry, name: str, options: dict, ring, plain, scale: float = 1.0):  # noqa: ANN001, ANN202
    extra = (plain,) if name == "autoguidance" else ()
    return registry.build("model_wrapper", name, {"scale": scale, **options}, ring, *extra).bind(LABEL)


def _points(seed: int = 0, n: int = 256) -> torch.Tensor:
    return 2.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _old_cfg_output(base: ScoreModel, x: torch.Tensor, t: float, scale: float) -> torch.Tensor:
    """Today's CFGModel numbers: one call on 2B rows, u + w (c - u) on the raw output, v of the cond half."""
    labels = torch.full((x.shape[0],), LABEL)
    both = base.prediction(
        torch.cat([x, x]),
        torch.full((2 * x.shape[0],), t, dtype=torch.float64),
        torch.cat([labels, torch.full_like(labels, base.null_label)]),
    )
    c, u = both.output.chunk(2)
    mixed = u + scale * (c - u)
    if both.variance_interpolation is None:
        return mixed
    return torch.cat([mixed, both.variance_interpolation.chunk(2)[0]], dim=1)


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.5])
def test_cfg_on_the_stage_is_bit_identical(ring, scale: float) -> None:  # noqa: ANN001
    x = _points()
    model = CFGModel(ring, scale=scale).bind(LABEL)
    for t in TIMES:
        assert torch.equal(model.predict(x, t).output, _old_cfg_output(ring, x, t, scale))


def test_cfg_keeps_a_learned_variance_from_the_conditional_half(vp) -> None:  # noqa: ANN001
    def network(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        label = cond.to(x.dtype)[:, None]
        return torch.cat([x * (1 + label) + t[:, None], 0.1 * label - t[:, None] + x], dim=1)

    base = ScoreModel(network, kind="eps", process=vp, data_shape=(2,), learned_variance=True, num_classes=4)
    x, t = _points(1, 8), 0.3
    pred = CFGModel(base, scale=2.5).bind(LABEL).predict(x, t)
    expected = _old_cfg_output(base, x, t, 2.5)
    assert torch.equal(pred.output, expected[:, :2]) and torch.equal(
        pred.variance_interpolation, expected[:, 2:]
    )
    cond = base.prediction(x, t, LABEL)
    assert torch.equal(pred.variance_interpolation, cond.variance_interpolation)


@pytest.mark.parametrize("name,options", IDENTITY)
def test_identity_setting_is_the_conditional_prediction(
    registry, ring, plain, name: str, options: dict
) -> None:  # noqa: ANN001
    x = _points()
    model = _wrap(registry, name, options, ring, plain)
    for t in TIMES:
        exact = ring.prediction(x, t, LABEL)
        pred = model.predict(x, t)
        torch.testing.assert_close(pred.eps, exact.eps, rtol=0, atol=1e-12)
        torch.testing.assert_close(pred.x0, exact.x0, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def class_floor(ring):  # noqa: ANN001, ANN201
    return sliced_wasserstein_floor(
        lambda n, g: ring.sample_class(LABEL, n, generator=g, dtype=torch.float64), N, repeats=3
    )


def _sample(registry, vp, model, solver: str, steps: int = 100) -> torch.Tensor:  # noqa: ANN001
    sampler = registry.build("sampler", solver, {"clipped_direction": False} if solver == "ddim" else {})
    grid = registry.build("grid", sampler.capabilities.grid_for(vp), {})(vp, steps)
    generator = torch.Generator().manual_seed(1)
    x_init = vp.prior_sample((N, 2), generator=generator, device="cpu", dtype=torch.float64)
    return sampler(model, vp, x_init, grid, generator=generator).x


@pytest.mark.parametrize("name,options", [item for item in IDENTITY if item[0] != "cfg-pp"])
def test_identity_setting_samples_at_the_floor(
    registry, vp, ring, plain, class_floor, name: str, options: dict
) -> None:  # noqa: ANN001, E501
    x = _sample(registry, vp, _wrap(registry, name, options, ring, plain), "dpmpp-3m")
    reference = ring.sample_class(LABEL, N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    distance = float(sliced_wasserstein(x, reference))
    assert distance < class_floor.mean + 3 * class_floor.std, (distance, class_floor)


def test_cfg_pp_at_lambda_zero_samples_the_unconditional_mixture(registry, vp, ring, plain) -> None:  # noqa: ANN001
    """CFG++ renoises with eps_u, so its identity is lambda = 0: unconditional DDIM, exact mixture samples."""
    floor = sliced_wasserstein_floor(
        lambda n, g: ring.sample_data(n, generator=g, dtype=torch.float64), N, repeats=3
    )
    x = _sample(registry, vp, _wrap(registry, "cfg-pp", {}, ring, plain, scale=0.0), "ddim", steps=200)
    reference = ring.sample_data(N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    distance = float(sliced_wasserstein(x, reference))
    assert distance < floor.mean + 3 * floor.std, (distance, floor)


def test_interval_is_cfg_inside_and_conditional_outside(registry, vp, ring, plain) -> None:  # noqa: ANN001
    lo, hi = 0.3, 2.0
    x = _points(2)
    model = _wrap(registry, "interval", {"lo": lo, "hi": hi}, ring, plain, scale=4.0)
    cfg = CFGModel(ring, scale=4.0).bind(LABEL)
    inside = 0
    for t in torch.linspace(0.999, 0.001, 40, dtype=torch.float64):
        level = float(vp.sigma(t) / vp.alpha(t))
        pred = model.predict(x, t)
        expected = cfg.predict(x, t) if lo <= level <= hi else ring.prediction(x, t, LABEL)
        inside += lo <= level <= hi
        assert torch.equal(pred.output, expected.output), (float(t), level)
    assert 0 < inside < 40


def test_interval_with_rows_on_both_sides(registry, vp, ring, plain) -> None:  # noqa: ANN001
    x = _points(3, 4)
    t = torch.tensor([0.9, 0.5, 0.1, 0.01], dtype=torch.float64)
    levels = vp.sigma(t) / vp.alpha(t)
    lo, hi = float(levels[2]) * 0.99, float(levels[1]) * 1.01
    pred = _wrap(registry, "interval", {"lo": lo, "hi": hi}, ring, plain, scale=3.0).predict(x, t)
    cfg = CFGModel(ring, scale=3.0).bind(LABEL).predict(x, t)
    cond = ring.prediction(x, t, LABEL)
    assert torch.equal(pred.output[1:3], cfg.output[1:3])
    assert torch.equal(pred.output[[0, 3]], cond.output[[0, 3]])


def test_cfg_rescale_follows_lin_et_al(registry, ring, plain) -> None:  # noqa: ANN001
    x, t, w, phi = _points(4), 0.3, 5.0, 0.7
    pred = _wrap(registry, "cfg-rescale", {"phi": phi}, ring, plain, scale=w).predict(x, t)
    c, u = ring.prediction(x, t, LABEL).output, ring.prediction(x, t, ring.null_label).output
    guided = u + w * (c - u)
    rescaled = (
        guided * c.std(dim=1, correction=0, keepdim=True) / guided.std(dim=1, correction=0, keepdim=True)
    )
    torch.testing.assert_close(pred.output, phi * rescaled + (1 - phi) * guided, rtol=0, atol=1e-12)
    full = _wrap(registry, "cfg-rescale", {"phi": 1.0}, ring, plain, scale=w).predict(x, t).output
    torch.testing.assert_close(full.std(dim=1, correction=0), c.std(dim=1, correction=0), rtol=1e-12, atol=0)


def _apg_reference(
    diffs: list[torch.Tensor], x0_cs: list[torch.Tensor], w: float, eta: float, beta: float, r: float
):  # noqa: ANN202
    """Sadat et al. 2024, Alg. 1 written out: momentum, norm threshold, projection on x0_c."""
    out, running = [], torch.zeros_like(diffs[0])
    for diff, x0_c in zip(diffs, x0_cs, strict=True):
        running = diff + beta * running
        d = running
        norm = d.norm(dim=1, keepdim=True)
        d = d * torch.minimum(torch.ones_like(norm), r / norm)
        unit = x0_c / x0_c.norm(dim=1, keepdim=True)
        par = (d * unit).sum(dim=1, keepdim=True) * unit
        out.append(x0_c + (w - 1) * ((d - par) + eta * par))
    return out


def test_apg_follows_sadat_et_al_and_resets_per_run(registry, ring, plain) -> None:  # noqa: ANN001
    w, eta, beta, r = 4.0, 0.3, -0.75, 1.5
    x = _points(5)
    model = _wrap(registry, "apg", {"eta": eta, "momentum": beta, "norm_threshold": r}, ring, plain, scale=w)
    times = (0.9, 0.6, 0.3)
    preds = [(ring.prediction(x, t, LABEL).x0, ring.prediction(x, t, ring.null_label).x0) for t in times]
    expected = _apg_reference([c - u for c, u in preds], [c for c, _ in preds], w, eta, beta, r)
    for _ in range(2):  # the second run (t jumps back up) starts with an empty momentum buffer
        for t, ref in zip(times, expected, strict=True):
            torch.testing.assert_close(model.predict(x, t).x0, ref, rtol=0, atol=1e-12)


def test_apg_without_projection_and_momentum_is_cfg_on_x0(registry, ring, plain) -> None:  # noqa: ANN001
    x = _points(6)
    model = _wrap(registry, "apg", {"eta": 1.0, "momentum": 0.0}, ring, plain, scale=3.0)
    cfg = CFGModel(ring, scale=3.0).bind(LABEL)
    for t in TIMES:
        torch.testing.assert_close(model.predict(x, t).x0, cfg.predict(x, t).x0, rtol=0, atol=1e-12)


def test_cfg_pp_on_ddim_is_the_hand_written_step(registry, vp, ring, plain) -> None:  # noqa: ANN001
    lam = 1.0
    sampler = registry.build("sampler", "ddim", {"clipped_direction": False})
    grid = registry.build("grid", "uniform", {})(vp, 6)
    x_init = _points(7, 64)
    result = sampler(_wrap(registry, "cfg-pp", {}, ring, plain, scale=lam), vp, x_init, grid)
    x = x_init
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        c, u = ring.prediction(x, t, LABEL), ring.prediction(x, t, ring.null_label)
        x0 = u.x0 + lam * (c.x0 - u.x0)  # Chung et al. 2024, Alg. 1: renoise with the unconditional eps
        x = vp.alpha(t_next) * x0 + vp.sigma(t_next) * u.eps
    torch.testing.assert_close(result.x, x, rtol=0, atol=1e-10)


def test_autoguidance_with_the_unconditional_guide_is_cfg(registry, ring, plain) -> None:  # noqa: ANN001
    x = _points(8)
    model = _wrap(registry, "autoguidance", {}, ring, plain, scale=2.5)
    cfg = CFGModel(ring, scale=2.5).bind(LABEL)
    for t in TIMES:
        torch.testing.assert_close(model.predict(x, t).eps, cfg.predict(x, t).eps, rtol=0, atol=1e-12)
    assert model.nfe == len(TIMES)


def _cli(tmp_path: Path, args: list[str]):  # noqa: ANN202
    out = tmp_path / "s.npz"
    result = CliRunner().invoke(
        app, ["sample", "--model", "gmm:ring8-cond", "--cond", "2", *args, "--no-plot", "--out", str(out)]
    )
    return result, out


@pytest.mark.parametrize(
    "args,expected",
    [
        (
            ["--guidance", "cfg-pp", "--solver", "euler-ancestral"],
            "guidance 'cfg-pp' is defined for ddim; not for sampler 'euler-ancestral'",
        ),
        (
            ["--guidance", "autoguidance", "--guidance-scale", "2"],
            "guidance 'autoguidance' needs a weaker guide model: pass --guide-model NAME",
        ),
        (["--guidance", "cfg", "--guide-model", "gmm:ring8"], "--guide-model needs --guidance autoguidance"),
        (["--guidance-opt", "phi=0.5"], "--guidance-opt needs --guidance NAME"),
        (
            ["--guidance", "cfg-pp", "--solver", "ddim", "--threshold", "clip"],
            "guidance 'cfg-pp' cannot be combined with --threshold (it renoises with eps_u)",
        ),
        (
            ["--guidance", "apg", "--guidance-opt", "eta=-1"],
            "model_wrapper 'apg': option eta must be a finite number >= 0, got -1.0",
        ),
        (
            ["--guidance", "cfg-rescale", "--guidance-opt", "phi=2"],
            "model_wrapper 'cfg-rescale': option phi must be a number in [0, 1], got 2.0",
        ),
        (
            ["--guidance", "cfg-pp", "--solver", "ddim", "--guidance-scale", "2"],
            "model_wrapper 'cfg-pp': the CFG++ scale lambda must be in [0, 1], got 2.0",
        ),
    ],
)
def test_cli_bad_guidance_exits_2(tmp_path: Path, args: list[str], expected: str) -> None:
    result, out = _cli(tmp_path, [*args, "--num-samples", "10"])
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {expected}"], result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--guidance", "autoguidance", "--guide-model", "gmm:ring8", "--solver", "dpmpp-3m"],
        [
            "--guidance",
            "interval",
            "--guidance-opt",
            "lo=0",
            "--guidance-opt",
            "hi=1e9",
            "--solver",
            "dpmpp-3m",
        ],
    ],
)
def test_cli_identity_guidance_samples_the_class(tmp_path: Path, args: list[str]) -> None:
    result, out = _cli(
        tmp_path, [*args, "--guidance-scale", "1", "--steps", "50", "--num-samples", "500", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sliced_w2_to_class"] < 3 * summary["sliced_w2_floor"], summary


def test_cfg_on_a_shifted_process_times_the_base_once(registry) -> None:  # noqa: ANN001
    """The stage lets only the base model map t to its network time (the old wrapper warped twice)."""
    shifted = registry.build("process", "vp", {"shift": 3.0})
    base = registry.build("model", "gmm:ring8-cond", {}, shifted)
    x = _points(9)
    for t in TIMES:
        exact = base.prediction(x, t, LABEL).eps
        torch.testing.assert_close(
            CFGModel(base, scale=1.0).bind(LABEL).predict(x, t).eps, exact, rtol=0, atol=1e-12
        )
