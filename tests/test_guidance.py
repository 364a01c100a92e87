"""Guidance wrappers on the class-conditional oracle, checked against exact conditional samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffkit import build_registry
from diffkit.cli.main import app
from diffkit.core.errors import UsageError
from diffkit.eval.metrics import sliced_wasserstein, sliced_wasserstein_floor
from diffkit.plugins.gmm import ConditionalOracleModel, GaussianMixture
from diffkit.testing import count_network_calls
from diffkit.wrappers.guidance import CFGModel, ClassifierGuidedModel

N = 3000
LABEL = 2


@pytest.fixture(scope="module")
def registry():  # noqa: ANN201
    return build_registry()


@pytest.fixture(scope="module")
def vp(registry):  # noqa: ANN001, ANN201
    return registry.build("process", "vp", {})


def _run(registry, process, model, *, solver: str = "dpmpp-3m", steps: int = 100, n: int = N):  # noqa: ANN001, ANN202
    sampler = registry.build("sampler", solver, {})
    grid = registry.build("grid", sampler.capabilities.grid_for(process), {})(process, steps)
    generator = torch.Generator().manual_seed(1)
    x_init = process.prior_sample(
        (n, *model.data_shape), generator=generator, device="cpu", dtype=torch.float64
    )
    return sampler(model, process, x_init, grid, generator=generator)


@pytest.fixture(scope="module")
def ring(registry, vp):  # noqa: ANN001, ANN201
    return registry.build("model", "gmm:ring8-cond", {}, vp)


@pytest.fixture(scope="module")
def class_floor(ring):  # noqa: ANN001, ANN201
    return sliced_wasserstein_floor(
        lambda n, g: ring.sample_class(LABEL, n, generator=g, dtype=torch.float64), N, repeats=3
    )


@pytest.fixture(scope="module")
def mixture_floor(ring):  # noqa: ANN001, ANN201
    return sliced_wasserstein_floor(
        lambda n, g: ring.sample_data(n, generator=g, dtype=torch.float64), N, repeats=3
    )


@pytest.mark.parametrize(
    "wrapper,solver,steps",
    [("cfg", "dpmpp-3m", 100), ("classifier", "dpmpp-3m", 100), ("cfg", "ode:rk4", 40)],
)
def test_scale_one_is_the_exact_conditional(  # noqa: ANN001
    registry, vp, ring, class_floor, wrapper: str, solver: str, steps: int
) -> None:
    base, floor = ring, class_floor
    model = registry.build("model_wrapper", wrapper, {"scale": 1.0}, base).bind(LABEL)
    x = _run(registry, vp, model, solver=solver, steps=steps).x
    reference = base.sample_class(LABEL, N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    distance = float(sliced_wasserstein(x, reference))
    assert distance < floor.mean + 3 * floor.std, (distance, floor)  # measured 0.0037 vs floor ~0.004
    assert bool((base.component_of(x) == LABEL).all())


@pytest.mark.parametrize("wrapper", ["cfg", "classifier"])
def test_scale_zero_is_the_unconditional_mixture(registry, vp, ring, mixture_floor, wrapper: str) -> None:  # noqa: ANN001
    base, floor = ring, mixture_floor
    model = registry.build("model_wrapper", wrapper, {"scale": 0.0}, base).bind(LABEL)
    x = _run(registry, vp, model).x
    reference = base.sample_data(N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    distance = float(sliced_wasserstein(x, reference))
    assert distance < floor.mean + 3 * floor.std, (distance, floor)  # measured 0.072 vs floor ~0.08
    fractions = torch.bincount(base.component_of(x), minlength=8).double() / N
    assert torch.allclose(fractions, base.mixture.weights, atol=0.02)


def test_larger_scales_sharpen(registry, vp) -> None:  # noqa: ANN001
    """Overlapping classes (means -+0.5, std 0.5): w > 1 narrows the class along the class axis."""
    means = torch.tensor([[-0.5, 0.0], [0.5, 0.0]], dtype=torch.float64)
    mixture = GaussianMixture(
        means, torch.full((2, 2), 0.5, dtype=torch.float64), torch.full((2,), 0.5).double()
    )
    base = ConditionalOracleModel(mixture, vp, (2,))
    spreads, confidences = [], []
    for scale in (1.0, 3.0, 6.0):
        x = _run(registry, vp, CFGModel(base, scale=scale).bind(1)).x
        spreads.append(float(x[:, 0].std()))
        labels = torch.ones(N, dtype=torch.long)
        confidences.append(float(base.classifier.log_prob(x, vp.t_min, labels).mean()))
        assert abs(float(x[:, 1].std()) - 0.5) < 0.02  # the orthogonal axis is untouched
    assert abs(spreads[0] - 0.5) < 0.02  # scale 1: the exact class std
    assert spreads[0] > spreads[1] + 0.1 > spreads[2] + 0.1  # measured 0.49, 0.32, 0.26
    assert confidences[0] < confidences[1] < confidences[2]


def test_cfg_equals_classifier_guidance_with_the_exact_classifier(registry, vp) -> None:  # noqa: ANN001
    """grad log p_t(y|x) = score(x|y) - score(x), so both wrappers agree at every scale."""
    base = registry.build("model", "gmm:ring8-cond", {}, vp)
    generator = torch.Generator().manual_seed(3)
    x = 2.0 * torch.randn(64, 2, generator=generator, dtype=torch.float64)
    t = torch.rand(64, generator=generator, dtype=torch.float64).clamp(0.01, 0.99)
    labels = torch.randint(0, 8, (64,), generator=generator)
    for scale in (0.0, 1.0, 2.5):
        a = CFGModel(base, scale=scale).predict(x, t, labels).eps
        b = ClassifierGuidedModel(base, scale=scale).predict(x, t, labels).eps
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)


def test_nfe_accounting(registry, vp) -> None:  # noqa: ANN001
    base = registry.build("model", "gmm:ring8-cond", {}, vp)
    calls = count_network_calls(base)
    seen: list[int] = []
    inner = base.network
    base.network = lambda x, t, c: (seen.append(x.shape[0]), inner(x, t, c))[1]
    model = CFGModel(base, scale=2.0).bind(LABEL)
    result = _run(registry, vp, model, steps=20, n=16)
    assert result.nfe == model.nfe == 20 == calls.calls  # one batched call per NFE
    assert set(seen) == {32} and base.nfe == 0  # cond + uncond halves in one call of 2B rows
    guided = ClassifierGuidedModel(base, scale=2.0).bind(LABEL)
    result = _run(registry, vp, guided, steps=20, n=16)
    assert result.nfe == guided.nfe == 20 and calls.calls == 40


def test_guidance_needs_a_conditional_model(registry, vp) -> None:  # noqa: ANN001
    plain = registry.build("model", "gmm:ring8", {}, vp)
    for name in ("cfg", "classifier"):
        with pytest.raises(UsageError, match="needs a class-conditional model"):
            registry.build("model_wrapper", name, {}, plain)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model", "gmm:ring8", "--cond", "1", "--guidance-scale", "2"], "is unconditional"),
        (["--model", "gmm:ring8-cond", "--guidance-scale", "2"], "need a class label"),
        (["--model", "gmm:ring8-cond", "--cond", "8"], "out of range"),
        (["--model", "gmm:ring8-cond", "--cond", "1", "--guidance", "nope"], "unknown model_wrapper"),
    ],
)
def test_cli_bad_guidance_exits_2(tmp_path: Path, args: list[str], expected: str) -> None:
    out = tmp_path / "s.npz"
    result = CliRunner().invoke(app, ["sample", *args, "--num-samples", "10", "--no-plot", "--out", str(out)])
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not out.exists()


def test_cli_guided_sample_records_config(tmp_path: Path) -> None:
    import json

    import numpy as np

    out = tmp_path / "s.npz"
    args = ["--model", "gmm:ring8-cond", "--cond", "3", "--guidance", "classifier", "--guidance-scale", "1"]
    result = CliRunner().invoke(
        app,
        [
            "sample",
            *args,
            "--solver",
            "dpmpp-3m",
            "--steps",
            "50",
            "--num-samples",
            "500",
            "--no-plot",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sliced_w2_to_class"] < 3 * summary["sliced_w2_floor"]
    with np.load(out) as data:
        config = json.loads(str(data["config"]))
    assert (config["cond"], config["guidance"], config["guidance_scale"]) == (3, "classifier", 1.0)
