"""The timestep shift (`shift`/`mu` on every process): SD3's formula, diffusers' sigmas, the chain
rule, base time for networks, checkpoints and one-line errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.process import schedule_problem
from diffkit.core.time_warp import ShiftedProcess, shifted
from diffkit.train import same_schedule

U = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.1, 0.05], dtype=torch.float64)


def test_shifted_flow_sigma_is_sd3s_formula(registry: diffkit.Registry) -> None:
    """sigma'(t) = s t / (1 + (s - 1) t) (Esser et al. 2024, eq. 23) and alpha' = 1 - sigma'."""
    for s in (0.5, 3.0, 7.5):
        process = registry.build("process", "flow", {"shift": s})
        sigma = s * U / (1 + (s - 1) * U)
        torch.testing.assert_close(process.sigma(U), sigma, rtol=1e-14, atol=0)
        torch.testing.assert_close(process.alpha(U), 1 - sigma, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(process.log_snr(U), 2 * torch.log((1 - sigma) / sigma), rtol=1e-13, atol=0)


def _diffusers_sigmas(u: torch.Tensor, **config: Any) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's shifted sigmas for the unshifted sigmas `u` (float32)."""
    diffusers = pytest.importorskip("diffusers")
    mu = config.pop("mu", None)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    scheduler.set_timesteps(sigmas=u.tolist(), mu=mu)
    return scheduler.sigmas[:-1].to(torch.float64)  # diffusers appends the final sigma = 0


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.4])
def test_shift_matches_diffusers_flow_match_euler(registry: diffkit.Registry, shift: float) -> None:
    """Same unshifted times, same shift: diffkit's sigma' equals diffusers' shifted sigmas to float32."""
    process = registry.build("process", "flow", {"shift": shift})
    expected = _diffusers_sigmas(U, shift=shift)
    torch.testing.assert_close(process.sigma(U), expected, rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize("mu", [-0.5, 0.5, 1.15])
def test_mu_is_shift_exp_mu_and_matches_diffusers_dynamic_shifting(
    registry: diffkit.Registry, mu: float
) -> None:
    """`mu` is the exponential (Flux) form: shift = exp(mu), as diffusers' dynamic shifting."""
    by_mu = registry.build("process", "flow", {"mu": mu})
    assert by_mu == registry.build("process", "flow", {"shift": math.exp(mu)})
    expected = _diffusers_sigmas(U, use_dynamic_shifting=True, time_shift_type="exponential", mu=mu)
    torch.testing.assert_close(by_mu.sigma(U), expected, rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize(("name", "shift"), [("flow", 3.0), ("vp", 2.0), ("ve", 0.5), ("flow-cosine", 1.7)])
def test_chain_rule_f_and_g2(registry: diffkit.Registry, name: str, shift: float) -> None:
    """f' = d log alpha'/dt and g'^2 = d sigma'^2/dt - 2 f' sigma'^2 by central differences."""
    process = registry.build("process", name, {"shift": shift})
    t = torch.linspace(process.t_min, process.t_max, 9, dtype=torch.float64)[1:-1]
    h = 1e-6
    d_log_alpha = (torch.log(process.alpha(t + h)) - torch.log(process.alpha(t - h))) / (2 * h)
    d_sigma2 = (process.sigma(t + h) ** 2 - process.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(process.f(t), d_log_alpha, rtol=1e-6, atol=1e-9)
    g2 = d_sigma2 - 2 * process.f(t) * process.sigma(t) ** 2
    torch.testing.assert_close(process.diffusion_squared(t), g2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("name", "shift"), [("flow", 3.0), ("vp", 0.3)])
def test_range_log_snr_inverse_prior_and_traits_follow_the_base(
    registry: diffkit.Registry, name: str, shift: float
) -> None:
    """Same alpha, sigma at the mapped ends, t_from_log_snr inverts log_snr, same prior and traits."""
    base = registry.build("process", name, {})
    process = registry.build("process", name, {"shift": shift})
    assert isinstance(process, diffkit.NoiseProcess) and schedule_problem(process) is None
    ends = torch.tensor([process.t_min, process.t_max], dtype=torch.float64)
    base_ends = torch.tensor([base.t_min, base.t_max], dtype=torch.float64)
    torch.testing.assert_close(process.sigma(ends), base.sigma(base_ends), rtol=1e-12, atol=0)
    t = torch.linspace(process.t_min, process.t_max, 50, dtype=torch.float64)
    torch.testing.assert_close(process.t_from_log_snr(process.log_snr(t)), t, rtol=0, atol=1e-10)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(process.prior_logp(z), base.prior_logp(z))
    assert process.traits == base.traits and process.features == base.features
    assert process.prior_std() == pytest.approx(base.prior_std(), rel=1e-12)


def test_shifts_compose_and_one_is_the_identity(registry: diffkit.Registry) -> None:
    """w_s(w_r(t)) = w_sr(t): a shift of a shifted process multiplies; shift 1 gives the base process."""
    base = registry.build("process", "flow", {})
    assert shifted(shifted(base, 2.0), 1.5) == ShiftedProcess(base, 3.0)
    assert registry.build("process", "flow", {"shift": 1}) == base
    twice = shifted(shifted(base, 2.0), 1.5)
    torch.testing.assert_close(twice.sigma(U), 3 * U / (1 + 2 * U), rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", ["flow", "vp"])
def test_shifted_pf_ode_has_the_same_endpoint(registry: diffkit.Registry, name: str) -> None:
    """The same prior draw solved by `ode` (dopri5, tight tolerances) on the shifted and unshifted
    process ends at the same points: the shift re-times the ODE without changing its solution."""
    outs = []
    for options in ({}, {"shift": 3.0}):
        process = registry.build("process", name, options)
        model = registry.build("model", "gmm:ring8", {}, process)
        sampler = registry.build("sampler", "ode", {"rtol": 1e-8, "atol": 1e-8})
        x_init = process.prior_sample(
            (200, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64
        )
        grid = registry.build("grid", "uniform", {})(process, 1)
        outs.append(sampler(model, process, x_init, grid).x)
    assert float((outs[0] - outs[1]).abs().max()) < 1e-5


def test_exponential_integrators_are_invariant_under_shift_on_a_log_snr_grid(
    registry: diffkit.Registry,
) -> None:
    """dpmpp-2m depends on the log-SNR sequence only: the same `log-snr` grid, shifted or not, gives the
    same samples."""
    outs = []
    for options in ({}, {"shift": 3.0}):
        process = registry.build("process", "flow", options)
        model = registry.build("model", "gmm:ring8", {}, process)
        x_init = process.prior_sample(
            (100, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64
        )
        grid = registry.build("grid", "log-snr", {})(process, 20)
        outs.append(registry.build("sampler", "dpmpp-2m", {})(model, process, x_init, grid).x)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-9)


def test_shifted_vp_samples_at_the_noise_floor(registry: diffkit.Registry) -> None:
    """shift works on a VP process too: dpmpp-2m at 50 steps on `vp shift=2` is at the sliced-W2 floor."""
    from tests._helpers import at_floor, distance_to_data, ring8_floor

    process = registry.build("process", "vp", {"shift": 2.0})
    model = registry.build("model", "gmm:ring8", {}, process)
    sampler = registry.build("sampler", "dpmpp-2m", {})
    x_init = process.prior_sample((4000, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = registry.build("grid", sampler.capabilities.grid_for(process), {})(process, 50)
    x = sampler(model, process, x_init, grid, generator=torch.Generator().manual_seed(3)).x
    assert at_floor(distance_to_data(model, x), ring8_floor(model, 4000))


class _Recorder:
    """A fake eps network recording the time input it receives."""

    def __init__(self) -> None:
        self.times: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        self.times.append(t.clone())
        return torch.zeros_like(x)


def test_a_network_receives_its_own_base_time(registry: diffkit.Registry) -> None:
    """The sampler's shifted time t goes to the network as the base time w(t); the Prediction carries
    the base time and process, so d_alpha/d_sigma are in the network's own time."""
    shift = 3.0
    process = registry.build("process", "flow", {"shift": shift})
    network = _Recorder()
    model = diffkit.ScoreModel(network, kind="eps", process=process, data_shape=(2,))
    t = torch.tensor([0.2, 0.6], dtype=torch.float64)
    prediction = model.predict(torch.ones(2, 2, dtype=torch.float64), t)
    base_t = shift * t / (1 + (shift - 1) * t)
    torch.testing.assert_close(network.times[0], base_t)
    torch.testing.assert_close(prediction.t, base_t)
    assert prediction.process == process.base and model.network_process == process.base
    torch.testing.assert_close(prediction.sigma.flatten(), process.sigma(t))
    torch.testing.assert_close(prediction.d_alpha.flatten(), torch.full((2,), -1.0, dtype=torch.float64))
    torch.testing.assert_close(prediction.d_sigma.flatten(), torch.full((2,), 1.0, dtype=torch.float64))


def test_oracle_is_exact_on_a_shifted_process(registry: diffkit.Registry) -> None:
    """The gmm oracle on `flow shift=3` at time t predicts exactly what it predicts on `flow` at w(t)."""
    base = registry.build("process", "flow", {})
    process = registry.build("process", "flow", {"shift": 3.0})
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.full((6,), 0.4, dtype=torch.float64)
    shifted_eps = registry.build("model", "gmm:ring8", {}, process).predict(x, t).eps
    base_eps = registry.build("model", "gmm:ring8", {}, base).predict(x, process.base_time(t)).eps
    torch.testing.assert_close(shifted_eps, base_eps, rtol=1e-12, atol=1e-12)


def test_a_trained_model_may_be_sampled_with_a_shift(registry: diffkit.Registry) -> None:
    """Shift is free at sampling, like t_min: same_schedule accepts it; the shipped `moons` loads on it."""
    vp = registry.build("process", "vp", {})
    assert same_schedule(vp, registry.build("process", "vp", {"shift": 3.0, "t_min": 1e-3}))
    assert same_schedule(registry.build("process", "vp", {"shift": 2.0}), vp)
    assert not same_schedule(vp, registry.build("process", "flow", {"shift": 3.0}))
    assert not same_schedule(vp, registry.build("process", "vp", {"shift": 3.0, "beta_max": 10.0}))
    model = registry.build("model", "moons", {}, registry.build("process", "vp", {"shift": 2.0}))
    recorder = _Recorder()
    network, model.network = model.network, recorder
    model.predict(torch.zeros(2, 2), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(recorder.times[0], torch.full((2,), 2 * 0.5 / 1.5))
    model.network = network


def test_every_process_lists_shift_and_mu(registry: diffkit.Registry) -> None:
    """An unknown option's message lists shift and mu among every process's valid options."""
    for name in registry.names("process"):
        with pytest.raises(diffkit.OptionError) as error:
            registry.build("process", name, {"nope": 1})
        assert "shift (float, default None), mu (float, default None)" in str(error.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--sde", "flow", "--sde-opt", "shift=0"],
            "process 'flow': shift must be a positive finite number, got 0",
        ),
        (
            ["--sde", "vp", "--sde-opt", "shift=-2"],
            "process 'vp': shift must be a positive finite number, got -2",
        ),
        (
            ["--sde", "flow", "--sde-opt", "shift=2", "--sde-opt", "mu=1"],
            "process 'flow': give either shift or mu (shift = exp(mu)), not both",
        ),
        (["--sde", "ddpm", "--sde-opt", "shift=2"], "process 'ddpm': shift re-times a continuous process"),
        (["--sde", "flow", "--sde-opt", "shift=abc"], "bad value 'abc' for option 'shift'"),
        (["--sde", "flow", "--sde-opt", "t_max=1"], "need 0 < t_min < t_max < 1"),
    ],
)
def test_bad_shift_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    """A bad shift or mu fails before any work with one `error:` line and exit code 2."""
    out = tmp_path / "s.npz"
    result = CliRunner().invoke(app, ["sample", *args, "--num-samples", "10", "--no-plot", "--out", str(out)])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()


def test_list_process_shows_shift_and_mu_among_each_process_options() -> None:
    """`diffkit list process --json`: every process row lists its own options, then shift and mu."""
    import json

    result = CliRunner().invoke(app, ["list", "process", "--json"])
    assert result.exit_code == 0, result.stderr
    options = {row["name"]: row["options"] for row in json.loads(result.stdout)}
    assert options["flow"] == "t_min=0.003, t_max=0.995, shift=none, mu=none"
    assert options["vp"] == "beta_min=0.1, beta_max=20.0, t_min=0.0001, t_max=1.0, shift=none, mu=none"
