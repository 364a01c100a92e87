"""x0 clipping and dynamic thresholding (Imagen) as model wrappers, and DDIM's clipped direction.

The math is checked against a direct numpy computation of Saharia et al. 2022 (sec. 2.3); the
wrapped prediction against its defining identities (x0 bounded, x = alpha x0 + sigma eps); DDIM
with `clip` / `dynamic-threshold` against diffusers' DDIMScheduler(clip_sample / thresholding)
with `use_clipped_model_output` True (`clipped_direction=true`) and False (`=false`, also checked
against a hand-written loop of DDIM eq. 12 with the network's eps).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peers import diffusers_config, diffusers_time, load_diffusers
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.solvers import append_final_zero
from diffkit.wrappers import ThresholdedModel, clip, clip_x0, dynamic_threshold, dynamic_thresholding

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

F64 = torch.float64
runner = CliRunner()


@pytest.fixture(scope="module")
def ddpm(registry: diffkit.Registry) -> diffkit.NoiseProcess:
    return registry.build("process", "ddpm", {})


def _wide(shape: tuple[int, ...] = (6, 3, 5)) -> torch.Tensor:
    """Values up to about 3 in magnitude, some samples inside [-1, 1] (s = 1 there)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    x[0] *= 0.2  # |x| well below 1: the threshold stays 1, nothing changes
    return x * torch.linspace(0.5, 3.0, shape[0], dtype=F64).reshape(-1, 1, 1)


@pytest.mark.parametrize("percentile, max_value", [(0.995, None), (0.9, None), (0.6, 1.5), (1.0, None)])
def test_dynamic_threshold_matches_numpy(percentile: float, max_value: float | None) -> None:
    """Per sample s = max(quantile_p |x0|, 1) (capped at max_value); x0 -> clip(x0, -s, s) / s."""
    x0 = _wide()
    flat = np.abs(x0.numpy().reshape(x0.shape[0], -1))
    s = np.maximum(np.quantile(flat, percentile, axis=1), 1.0)
    if max_value is not None:
        s = np.minimum(s, max_value)
    s = s.reshape(-1, 1, 1)
    expected = np.clip(x0.numpy(), -s, s) / s
    got = dynamic_threshold(x0, percentile, max_value)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-13, atol=1e-15)
    assert torch.equal(got[0], x0[0])  # a sample inside [-1, 1] is untouched
    assert float(got.abs().max()) <= 1.0 + 1e-15


def test_clip_matches_numpy() -> None:
    x0 = _wide()
    np.testing.assert_array_equal(clip_x0(x0, 0.7).numpy(), np.clip(x0.numpy(), -0.7, 0.7))


def test_wrapped_prediction_is_consistent(registry: diffkit.Registry, ddpm: diffkit.NoiseProcess) -> None:
    """x0 is the clipped base x0, eps = (x - alpha x0) / sigma, the base kept; one NFE per call."""
    base = registry.build("model", "gmm:ring8", {}, ddpm)
    model = registry.build("model_wrapper", "clip", {"limit": "0.5"}, base)
    assert isinstance(model, ThresholdedModel)
    x = torch.randn((64, 2), generator=torch.Generator().manual_seed(1), dtype=F64) * 3.0
    t = torch.tensor(0.05, dtype=F64)
    prediction = model.predict(x, t)
    raw = base.prediction(x, t, None)
    assert torch.equal(prediction.x0, raw.x0.clamp(-0.5, 0.5))
    assert bool((raw.x0.abs() > 0.5).any())  # clipping is active here
    assert torch.allclose(prediction.alpha * prediction.x0 + prediction.sigma * prediction.eps, x, atol=1e-12)
    assert torch.allclose(prediction.score, -prediction.eps / prediction.sigma, atol=1e-12)
    assert torch.equal(prediction.unthresholded.eps, raw.eps)
    assert model.nfe == 1 and base.nfe == 0


@pytest.mark.parametrize(
    "solver", ["ddim", "dpmpp-2m", "unipc", "heun", "ancestral", "em", "ode:euler", "pc"]
)
@pytest.mark.parametrize(
    "wrapper, options", [("clip", {"limit": "0.8"}), ("dynamic-threshold", {"percentile": "0.9"})]
)
def test_wrappers_compose_with_every_sampler(
    registry: diffkit.Registry, ddpm: diffkit.NoiseProcess, solver: str, wrapper: str, options: dict
) -> None:
    """On a grid ending at sigma = 0 the result is the bounded x0: inside the wrapper's range."""
    base = registry.build("model", "gmm:ring8", {}, ddpm)
    model = registry.build("model_wrapper", wrapper, options, base)
    grid = append_final_zero(registry.build("grid", "log-snr", {})(ddpm, 8))
    x = torch.randn((128, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    result = registry.build("sampler", solver, {})(
        model, ddpm, x, grid, generator=torch.Generator().manual_seed(1)
    )
    bound = 0.8 if wrapper == "clip" else 1.0
    assert torch.isfinite(result.x).all() and float(result.x.abs().max()) <= bound + 1e-12
    unwrapped = registry.build("sampler", solver, {})(
        base, ddpm, x, grid, generator=torch.Generator().manual_seed(1)
    )
    assert float(unwrapped.x.abs().max()) > bound  # the ring's radius: the wrapper did bound it
    assert result.nfe == unwrapped.nfe


def _diffusers_ddim(
    scheduler, model, process, x, steps: int, use_clipped: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' DDIM loop; x `(B, D)` travels as `(B, D, 1)` (its thresholding needs a spatial dim)."""
    scheduler.set_timesteps(steps)
    x = x.unsqueeze(-1)
    for k in scheduler.timesteps:
        eps = model.prediction(x[..., 0], diffusers_time(process, k).expand(x.shape[0]), None).eps
        x = scheduler.step(eps.unsqueeze(-1), k, x, eta=0.0, use_clipped_model_output=use_clipped).prev_sample
    return x[..., 0], diffusers_time(process, scheduler.timesteps)


@pytest.mark.parametrize("clipped_direction", [True, False])
@pytest.mark.parametrize("wrapper", ["clip", "dynamic-threshold"])
def test_ddim_clipped_direction_matches_diffusers(
    registry: diffkit.Registry, ddpm: diffkit.NoiseProcess, clipped_direction: bool, wrapper: str
) -> None:
    """`ddim` + clip / dynamic-threshold = DDIMScheduler(clip_sample / thresholding), both directions."""
    diffusers = load_diffusers()
    base = registry.build("model", "gmm:ring8", {}, ddpm)
    if wrapper == "clip":
        model, config = clip(base, limit=1.2), {"clip_sample": True, "clip_sample_range": 1.2}
    else:
        model = dynamic_thresholding(base, percentile=0.9, max_value=1.5)
        config = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}
    scheduler = diffusers.DDIMScheduler(
        **diffusers_config(ddpm), set_alpha_to_one=True, timestep_spacing="trailing", **config
    )
    x_init = torch.randn((32, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    expected, grid = _diffusers_ddim(scheduler, base, ddpm, x_init, 10, clipped_direction)
    sampler = registry.build("sampler", "ddim", {"clipped_direction": clipped_direction})
    result = sampler(model, ddpm, x_init, append_final_zero(grid))
    assert result.nfe == 10
    assert float((result.x - expected).abs().max() / expected.abs().max()) < 1e-5
    other = registry.build("sampler", "ddim", {"clipped_direction": not clipped_direction})
    assert float((other(model, ddpm, x_init, append_final_zero(grid)).x - result.x).abs().max()) > 1e-3


def test_ddim_network_direction_is_eq12_with_the_network_eps(
    registry: diffkit.Registry, ddpm: diffkit.NoiseProcess
) -> None:
    """clipped_direction=false: x_next = alpha_next x0_clipped + sigma_next eps_network (eta = 0)."""
    base = registry.build("model", "gmm:ring8", {}, ddpm)
    model = clip(base, limit=1.0)
    grid = registry.build("grid", "log-snr", {})(ddpm, 6)
    x = torch.randn((32, 2), generator=torch.Generator().manual_seed(2), dtype=F64)
    result = registry.build("sampler", "ddim", {"clipped_direction": False})(model, ddpm, x, grid)
    expected = x
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        raw = base.prediction(expected, t, None)
        expected = ddpm.alpha(t_next) * raw.x0.clamp(-1.0, 1.0) + ddpm.sigma(t_next) * raw.eps
    assert torch.allclose(result.x, expected, rtol=0, atol=1e-12)


# -------------------------------------------------------------------------------------- CLI


def _sample(tmp_path, *args: str):  # noqa: ANN202
    out = tmp_path / "s.npz"
    base = [
        "sample",
        "--sde",
        "ddpm",
        "--solver",
        "unipc",
        "--steps",
        "8",
        "--num-samples",
        "64",
        "--no-plot",
    ]
    return runner.invoke(app, [*base, "--out", str(out), *args]), out


def test_cli_threshold(tmp_path) -> None:
    """`--threshold clip --threshold-opt limit=0.5 --final-sigma zero`: every sample in [-0.5, 0.5]."""
    result, out = _sample(
        tmp_path, "--threshold", "clip", "--threshold-opt", "limit=0.5", "--final-sigma", "zero"
    )
    assert result.exit_code == 0, result.output
    samples = np.load(out)["samples"]
    assert np.abs(samples).max() <= 0.5 + 1e-6 and np.abs(samples).max() > 0.4


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--threshold", "clip", "--threshold-opt", "limit=-1"],
            "option limit must be a positive number, got -1.0",
        ),
        (
            ["--threshold", "dynamic-threshold", "--threshold-opt", "percentile=1.5"],
            "option percentile must be in (0, 1], got 1.5",
        ),
        (
            ["--threshold", "dynamic-threshold", "--threshold-opt", "max_value=0.5"],
            "option max_value must be a number >= 1, got 0.5",
        ),
        (["--threshold", "clip", "--threshold-opt", "size=2"], "size"),
        (["--threshold-opt", "limit=2"], "--threshold-opt needs --threshold NAME"),
        (["--threshold", "no-such-wrapper"], "no-such-wrapper"),
    ],
)
def test_cli_threshold_errors(tmp_path, args: list[str], message: str) -> None:
    """Bad wrapper names and options: one line on stderr, exit 2."""
    result, _ = _sample(tmp_path, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert "Traceback" not in result.output
