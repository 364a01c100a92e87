"""Learned variance (improved DDPM): `ancestral` uses v, other samplers see only the mean half."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import diffkit
from diffkit.core.model import split_learned_variance
from diffkit.solvers.dynamics import ancestral_step, gaussian_transition

F64 = torch.float64


def _mean_net(x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
    """A toy eps network: smooth in x and t, shape of x."""
    return torch.tanh(0.7 * x) * (0.5 + t.to(x.dtype)).reshape(-1, *([1] * (x.ndim - 1)))


def _learned(process: diffkit.NoiseProcess, v: float | None) -> diffkit.ScoreModel:
    """`_mean_net` plus a constant v channel block (v=None: the plain mean network)."""

    def network(x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return torch.cat([_mean_net(x, t), torch.full_like(x, v)], dim=1)

    if v is None:
        return diffkit.ScoreModel(_mean_net, kind="eps", process=process, data_shape=(3,))
    return diffkit.ScoreModel(network, kind="eps", process=process, data_shape=(3,), learned_variance=True)


def _run(registry: diffkit.Registry, solver: str, model, process, options=None, dtype=F64) -> torch.Tensor:
    sampler = registry.build("sampler", solver, options or {})
    grid = registry.build("grid", "ddpm", {})(process, 12)
    x_init = process.prior_sample((64, 3), generator=torch.Generator().manual_seed(0), dtype=dtype)
    return sampler(model, process, x_init, grid, generator=torch.Generator().manual_seed(1)).x


@pytest.fixture(scope="module")
def ddpm(registry: diffkit.Registry) -> diffkit.NoiseProcess:
    """Discrete DDPM, linear betas 1e-4..0.02, N = 1000."""
    return registry.build("process", "ddpm", {})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("v", "variance"), [(1.0, "beta"), (0.0, "beta_tilde")])
def test_v_at_the_ends_is_the_fixed_variance_bit_for_bit(registry, ddpm, v, variance, dtype):
    fixed = _run(registry, "ancestral", _learned(ddpm, None), ddpm, {"variance": variance}, dtype)
    # the option is overridden by the model's own variance, whichever it names
    other = "beta_tilde" if variance == "beta" else "beta"
    learned = _run(registry, "ancestral", _learned(ddpm, v), ddpm, {"variance": other}, dtype)
    assert torch.equal(fixed, learned)
    assert not torch.equal(
        fixed, _run(registry, "ancestral", _learned(ddpm, None), ddpm, {"variance": other}, dtype)
    )


def test_intermediate_v_interpolates_log_variance(ddpm):
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    eps, noise = torch.tanh(x), torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    t = torch.tensor([0.05, 0.01], dtype=F64)
    alpha, sigma, log_snr = ddpm.alpha(t), ddpm.sigma(t), ddpm.log_snr(t)
    v = torch.linspace(0.0, 1.0, 15, dtype=F64).reshape(5, 3)
    step = ancestral_step(
        x, eps, alpha, sigma, log_snr, variance="beta", noise=noise, variance_interpolation=v
    )
    mean = ancestral_step(x, eps, alpha, sigma, log_snr, variance="beta")
    _, beta = gaussian_transition(alpha, sigma, log_snr)
    beta_tilde = beta * sigma[1] ** 2 / sigma[0] ** 2
    expected_var = torch.exp(v * beta.log() + (1 - v) * beta_tilde.log())  # Nichol & Dhariwal eq. 15
    torch.testing.assert_close((step - mean) / noise, expected_var.sqrt(), rtol=1e-12, atol=0)
    assert float(beta) > 1.5 * float(beta_tilde) > 0  # the two ends really differ here


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "em", "heun"])
def test_other_samplers_ignore_the_variance_channels(registry, ddpm, solver):
    plain = _run(registry, solver, _learned(ddpm, None), ddpm)
    learned = _run(registry, solver, _learned(ddpm, 0.3), ddpm)
    assert plain.shape == learned.shape == (64, 3)
    assert torch.equal(plain, learned)


def test_prediction_exposes_the_mean_half_and_v(ddpm):
    model = _learned(ddpm, 0.25)
    x = torch.randn(4, 3, dtype=F64)
    prediction = model.predict(x, 0.5)
    torch.testing.assert_close(prediction.output, _mean_net(x, torch.full((4,), 0.5, dtype=F64)))
    assert prediction.variance_interpolation is not None
    assert float(prediction.variance_interpolation.unique()) == 0.25
    assert _learned(ddpm, None).predict(x, 0.5).variance_interpolation is None
    with pytest.raises(ValueError, match="even size"):
        split_learned_variance(torch.zeros(2, 3))


def test_hybrid_checkpoint_samples_with_its_learned_variance(registry, tmp_path: Path):
    from diffkit.train import TrainConfig, train
    from diffkit.train.checkpoint import model_from_checkpoint

    config = TrainConfig(
        data="moons",
        iters=2,
        batch_size=16,
        loss="hybrid",
        process="ddpm",
        checkpoint_every=2,
        sample_every_checkpoint=False,
        network_options={"hidden": "16", "depth": "2", "learn_variance": "true"},
        data_options={"n": "200"},
    )
    train(config, tmp_path / "run", registry=registry)
    ddpm = registry.build("process", "ddpm", {})
    model = model_from_checkpoint(
        str(tmp_path / "run"), registry, "ddpm", ddpm, process_options={}, model_options={}
    )
    assert model.learned_variance
    prediction = model.predict(torch.zeros(3, 2), 0.5)
    assert prediction.output.shape == prediction.variance_interpolation.shape == (3, 2)
    assert math.isfinite(float(prediction.variance_interpolation.sum()))
