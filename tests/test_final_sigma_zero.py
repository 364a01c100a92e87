"""Grids ending at sigma = 0: every sampler's last step is the x0 prediction, and peers agree.

A time grid may end with one extra point 0.0 below the process's t_min, meaning sigma = 0
(`diffkit.core.grid`). The last step then goes from the point before it, t_last, to the clean
data: for every sampler it is the model's x0 prediction at t_last (the sigma_next -> 0 limit of
every first-order update, with no noise), one NFE, and the process and model are never evaluated
at t = 0. Peers: diffusers' UniPC / DPM-Solver++ multistep schedulers with `use_karras_sigmas=True,
final_sigmas_type="zero"` (float32, as diffusers computes) and k-diffusion's samplers on
`get_sigmas_karras`, whose lists end at 0.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from peers import k_diffusion_denoiser, k_diffusion_sigmas, load_diffusers, load_k_diffusion_sampling
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.grid import append_final_zero, check_grid, ends_at_zero, split_final_zero
from diffkit.peers.diffusers import diffusers_config, diffusers_time
from diffkit.peers.kdiffusion import karras_sigmas
from diffkit.solvers import log_snr_of_sigma_scaled, sigma_scaled

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

F64 = torch.float64
runner = CliRunner()
SAMPLERS = [
    "ddim",
    "ancestral",
    "em",
    "heun",
    "dpmpp-2m",
    "dpmpp-3m",
    "dpmpp-2s",
    "dpmpp-2m-sde",
    "unipc",
    "pc",
    "langevin",
    "ald",
    "ode:euler",
    "ode:rk4",
    "ode",
    "sde",
    "sde:heun",
]


class _Recorder(diffkit.ScoreModel):
    """An oracle that records every time it is evaluated at."""

    def __init__(self, base: diffkit.ScoreModel) -> None:
        super().__init__(
            lambda x, t, cond: base.prediction(x, t, cond).eps,
            kind="eps",
            process=base.process,
            data_shape=base.data_shape,
        )
        self.times: list[float] = []

    def prediction(self, x: torch.Tensor, t: torch.Tensor | float, cond=None) -> diffkit.Prediction:
        self.times.append(float(torch.as_tensor(t).reshape(-1)[0]))
        return super().prediction(x, t, cond)


@pytest.fixture(scope="module")
def vp(registry: diffkit.Registry) -> diffkit.NoiseProcess:
    return registry.build("process", "vp", {})


@pytest.fixture(scope="module")
def ddpm(registry: diffkit.Registry) -> diffkit.NoiseProcess:
    return registry.build("process", "ddpm", {})


def _start(shape: tuple[int, ...], dtype: torch.dtype = F64, n: int = 16) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(0), dtype=dtype)


def test_check_grid_accepts_only_a_final_zero_below_t_min(vp: diffkit.NoiseProcess) -> None:
    """0.0 is accepted as the last point only; the points before it must stay in [t_min, t_max]."""
    grid = torch.tensor([1.0, 0.5, 1e-3, 0.0], dtype=F64)
    assert check_grid(grid, vp) is grid and ends_at_zero(grid, vp)
    times, to_zero = split_final_zero(grid, vp)
    assert to_zero and torch.equal(times, grid[:-1])
    assert not split_final_zero(grid[:-1], vp)[1]  # no zero point: unchanged
    assert torch.equal(append_final_zero(grid[:-1]), grid)
    message = "time grid [1.0, 1e-05] leaves the process range [0.0001, 1.0]"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_grid(torch.tensor([1.0, 0.5, 1e-5, 0.0], dtype=F64), vp)  # point before 0 below t_min
    with pytest.raises(ValueError, match=re.escape("time grid [1.0, 1e-05] leaves")):
        check_grid(torch.tensor([1.0, 0.5, 1e-5], dtype=F64), vp)  # a nonzero point below t_min


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_ends_with_the_x0_prediction(
    registry: diffkit.Registry, vp: diffkit.NoiseProcess, name: str
) -> None:
    """Grid + [0]: same run as the grid with `denoise_final`, never at t = 0, the step counted once."""
    base = registry.build("model", "gmm:ring8", {}, vp)
    grid = registry.build("grid", "quadratic", {})(vp, 6)
    sampler = registry.build("sampler", name, {})
    x_init = _start(base.data_shape)
    model = _Recorder(base)
    seen: list[diffkit.StepInfo] = []
    result = sampler(
        model,
        vp,
        x_init,
        append_final_zero(grid),
        generator=torch.Generator().manual_seed(3),
        callback=seen.append,
    )
    assert torch.isfinite(result.x).all()
    assert min(model.times) >= vp.t_min  # the model never sees t = 0
    assert model.times[-1] == pytest.approx(float(grid[-1]))  # the last call is at t_last
    assert float(seen[-1].t) == 0.0 and seen[-1].nfe == result.nfe
    with_denoise = registry.build("sampler", name, {"denoise_final": True})
    reference = with_denoise(base, vp, x_init, grid, generator=torch.Generator().manual_seed(3))
    if name != "heun":  # heun: Heun steps up to t_last, then Euler to 0 (below)
        assert result.nfe == reference.nfe
        assert torch.allclose(result.x, reference.x, rtol=0, atol=1e-12)
    assert result.steps == reference.steps + 1  # the step to sigma = 0 is a grid step
    # denoise_final on a grid that already ends at sigma = 0 has nothing left to do
    again = with_denoise(
        base, vp, x_init, append_final_zero(grid), generator=torch.Generator().manual_seed(3)
    )
    assert again.nfe == result.nfe and torch.equal(again.x, result.x)


@pytest.mark.parametrize("name", ["ddim", "ode:euler", "dpmpp-2m", "unipc", "heun", "ancestral", "em"])
def test_one_step_to_zero_is_x0_exactly(
    registry: diffkit.Registry, vp: diffkit.NoiseProcess, name: str
) -> None:
    """The grid [t, 0]: one NFE and x = the oracle's E[x0 | x_t] (Euler: x + (0 - sigma) d = x0_hat)."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    t = torch.tensor(0.3, dtype=F64)
    x = _start(model.data_shape)
    result = registry.build("sampler", name, {})(model, vp, x, torch.tensor([0.3, 0.0], dtype=F64))
    x0 = model.prediction(x, t, None).x0
    assert result.nfe == 1 and result.steps == 1
    assert torch.allclose(result.x, x0, rtol=0, atol=1e-12)
    # the same as an explicit Euler step in EDM's scaled coordinates: x_s + (0 - sigma_s) d
    alpha, sigma_s = vp.alpha(t), sigma_scaled(vp.log_snr(t))
    d = (x / alpha - x0) / sigma_s
    assert torch.allclose(x / alpha + (0.0 - sigma_s) * d, result.x, rtol=0, atol=1e-12)


def test_heun_on_a_zero_grid_is_edm_alg1(registry: diffkit.Registry, vp: diffkit.NoiseProcess) -> None:
    """heun on grid + [0] = N Heun steps (euler_last=false) then x0: 2 N + 1 NFE."""
    model = registry.build("model", "gmm:ring8", {}, vp)
    grid = registry.build("grid", "karras", {})(vp, 5)
    x = _start(model.data_shape)
    result = registry.build("sampler", "heun", {})(model, vp, x, append_final_zero(grid))
    edm = registry.build("sampler", "heun", {"euler_last": False, "denoise_final": True})(model, vp, x, grid)
    assert result.nfe == 2 * 5 + 1 == edm.nfe
    assert torch.allclose(result.x, edm.x, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------- peers


def _knot_model(base: diffkit.ScoreModel, process: diffkit.NoiseProcess) -> diffkit.ScoreModel:
    """The oracle conditioned on integer timesteps, as diffusers calls it: eps at the knot nearest t.

    diffusers rounds the timesteps of its Karras sigmas for the model while its update uses the
    unrounded sigmas; a network of integer timesteps (every DDPM UNet) sees exactly this.
    """
    n = process.num_steps

    def knot(t: torch.Tensor) -> torch.Tensor:
        return (torch.round(t * n - 1.0) + 1.0) / n

    return diffkit.ScoreModel(
        lambda x, t, cond: base.prediction(x, t, cond).eps,
        kind="eps",
        process=process,
        data_shape=base.data_shape,
        time_input=knot,
    )


def _diffusers_run(
    scheduler, model: diffkit.ScoreModel, process, x: torch.Tensor, steps: int
) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    for k in scheduler.timesteps:
        t = diffusers_time(process, k).expand(x.shape[0])
        x = scheduler.step(model.prediction(x, t, None).eps, k, x).prev_sample
    return x


@pytest.mark.parametrize(
    "scheduler_name, solver, options, steps",
    [
        ("UniPCMultistepScheduler", "unipc", {"order": 2}, 10),
        ("UniPCMultistepScheduler", "unipc", {"order": 2}, 20),
        ("UniPCMultistepScheduler", "unipc", {"order": 3}, 10),
        ("DPMSolverMultistepScheduler", "dpmpp-2m", {}, 10),
        ("DPMSolverMultistepScheduler", "dpmpp-2m", {}, 20),
    ],
)
def test_karras_zero_matches_diffusers(
    registry: diffkit.Registry,
    ddpm: diffkit.NoiseProcess,
    scheduler_name: str,
    solver: str,
    options: dict,
    steps: int,
) -> None:
    """`--grid karras --final-sigma zero` = diffusers' (use_karras_sigmas, final_sigmas_type="zero")."""
    diffusers = load_diffusers()
    base = registry.build("model", "gmm:d64", {}, ddpm)
    model = _knot_model(base, ddpm)
    extra = (
        {"solver_type": "bh2", "predict_x0": True} if solver == "unipc" else {"algorithm_type": "dpmsolver++"}
    )
    scheduler = getattr(diffusers, scheduler_name)(
        **diffusers_config(ddpm),
        solver_order=options.get("order", 2),
        use_karras_sigmas=True,
        final_sigmas_type="zero",
        **extra,
    )
    x_init = _start(base.data_shape, torch.float32)
    expected = _diffusers_run(scheduler, model, ddpm, x_init, steps)
    # the same grid: diffusers' sigmas, whose float32 alpha_bar table (a cumprod of 1000 float32
    # factors) puts them 5e-5 off diffkit's float64 `karras` grid; so the run uses diffusers' own
    # sigmas as diffkit times, then 0, and the `karras` grid is checked to that precision
    sigmas = scheduler.sigmas.to(F64)
    assert float(sigmas[-1]) == 0.0
    grid = append_final_zero(ddpm.t_from_log_snr(log_snr_of_sigma_scaled(sigmas[:-1])))
    karras = registry.build("grid", "karras", {})(ddpm, steps - 1)
    assert torch.allclose(sigma_scaled(ddpm.log_snr(karras)), sigmas[:-1], rtol=2e-4, atol=0)
    result = registry.build("sampler", solver, options)(model, ddpm, x_init, grid)
    assert result.nfe == steps and result.x.dtype == torch.float32
    residual = float((result.x - expected).abs().max() / expected.abs().max())
    assert residual < 1e-5, residual


@pytest.mark.parametrize(
    "solver, peer", [("ddim", "sample_euler"), ("heun", "sample_heun"), ("dpmpp-2m", "sample_dpmpp_2m")]
)
def test_karras_zero_matches_k_diffusion(
    registry: diffkit.Registry, ddpm: diffkit.NoiseProcess, solver: str, peer: str
) -> None:
    """k-diffusion on get_sigmas_karras(n) (ends at 0) = diffkit on the karras grid (n - 1 steps) + [0].

    DDIM is Euler's method in EDM's scaled coordinates x / alpha, sigma / alpha, so `ddim` is
    k-diffusion's sample_euler; `heun` is sample_heun (Heun steps, then Euler to 0).
    """
    sampling = load_k_diffusion_sampling()
    model = registry.build("model", "gmm:d64", {}, ddpm)
    n = 8
    grid = append_final_zero(registry.build("grid", "karras", {})(ddpm, n - 1))
    sigmas = k_diffusion_sigmas(ddpm, grid[:-1], append_zero=True)  # float64 (get_sigmas_karras is float32)
    assert torch.allclose(karras_sigmas(sampling, ddpm, n).to(F64), sigmas, rtol=1e-6, atol=0)
    x_init = _start(model.data_shape)
    expected = getattr(sampling, peer)(
        k_diffusion_denoiser(model, ddpm), x_init / ddpm.alpha(grid[0]), sigmas, disable=True
    )
    result = registry.build("sampler", solver, {})(model, ddpm, x_init, grid)
    residual = float((result.x - expected).abs().max() / expected.abs().max())
    assert residual < 1e-10, residual
    assert result.nfe == {"heun": 2 * (n - 1) + 1}.get(solver, n)


# -------------------------------------------------------------------------------------- CLI


def test_cli_final_sigma_zero(tmp_path) -> None:
    """`--steps N --final-sigma zero`: N steps and N NFE, the last to sigma = 0."""
    out = tmp_path / "s.npz"
    args = [
        "sample",
        "--solver",
        "unipc",
        "--grid",
        "karras",
        "--steps",
        "6",
        "--num-samples",
        "64",
        "--final-sigma",
        "zero",
        "--no-plot",
        "--json",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 6 and summary["nfe"] == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--final-sigma", "none"], "unknown --final-sigma 'none'; expected one of min, zero"),
        (
            ["--grid", "simple", "--final-sigma", "zero"],
            "grid 'simple' already ends at sigma = 0: drop --final-sigma zero",
        ),
    ],
)
def test_cli_final_sigma_errors(tmp_path, args: list[str], message: str) -> None:
    """Bad --final-sigma use: one line, exit 2."""
    result = runner.invoke(
        app,
        [
            "sample",
            "--solver",
            "ddim",
            "--steps",
            "4",
            "--num-samples",
            "8",
            "--no-plot",
            "--out",
            str(tmp_path / "s.npz"),
            *args,
        ],
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


class _RecordingEuler:
    """A third-party sampler with its own loop: Euler on the PF-ODE, recording the times it gets."""

    capabilities = diffkit.Capabilities(
        stochastic=False, order=1.0, adaptive=False, nfe_per_step=1, default_grid="uniform", default_steps=10
    )
    seen: list[float] = []

    def __call__(self, model, process, x, grid, *, generator=None, callback=None):  # noqa: ANN001
        """One Euler step per grid interval; never told about sigma = 0."""
        type(self).seen.extend(grid.tolist())
        for t, s in zip(grid[:-1], grid[1:], strict=True):
            drift = process.f(t) * x - 0.5 * process.diffusion_squared(t) * model.predict(x, t).score
            x = x + (s - t) * drift
        return diffkit.SampleResult(x, nfe=len(grid) - 1, steps=len(grid) - 1)


class _RecordingPlugin:
    """The plugin module registering it (a local, third-party plugin)."""

    __name__ = "recording_euler_plugin"

    @staticmethod
    @diffkit.hookimpl
    def diffkit_register(registrar: diffkit.Registrar) -> None:
        """Register `rec-euler`."""
        registrar.add_sampler("rec-euler", _RecordingEuler)


def test_a_third_party_sampler_never_sees_t_zero() -> None:
    """diffkit strips the final 0.0 for a plugin's sampler and takes the x0-prediction step for it."""
    from diffkit.run.api import SampleConfig, sample

    registry = diffkit.build_registry(autoload=False, plugins=[_RecordingPlugin()])
    _RecordingEuler.seen.clear()
    config = SampleConfig(
        process="vp",
        solver="rec-euler",
        model="gmm:ring8",
        num_samples=64,
        steps=6,
        final_sigma="zero",
        dtype="float64",
    )
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    run = sample(config, registry=registry, x_init=noise)
    assert min(_RecordingEuler.seen) > 0.0 and len(_RecordingEuler.seen) == 6  # 5 steps to t_min
    comp = run.composition
    times, to_zero = split_final_zero(comp.grid, comp.process)
    assert to_zero and float(times[-1]) == comp.process.t_min
    direct = _RecordingEuler()(comp.model, comp.process, noise, times).x
    expected = comp.model.predict(direct, times[-1]).x0
    torch.testing.assert_close(run.samples, expected, rtol=1e-12, atol=1e-12)
    assert (run.nfe, run.steps) == (6, 6)
