"""Flow-matching samplers agree with diffusers' on the same velocity model, noise and grid.

The model is a Gaussian-mixture oracle turned into a `velocity` network (its exact u = eps - x0
on `flow`, computed in float64, returned in float32); both libraries run it in float32 from the
same prior noise. Conventions bridged:

* diffusers' flow schedulers use sigma = t of the `flow` process (x_t = (1 - t) x0 + t eps), and
  their "flow_prediction" is diffkit's `velocity`. Their `scheduler.sigmas` end at sigma = 0:
  diffkit runs the same grid with its final point 0.0 (a last step to sigma = 0), or the grid
  without it and `denoise_final` (the x0 prediction at the last time, x - sigma u on `flow`);
  both are compared.
* Their schedules start at (or within 1e-6 of) sigma = 1, where alpha = 0; diffkit's `flow` stops
  short of it by default, so the process here is built with `t_max = 1 - 1e-6` (and t_min = 1e-3).
  FlowMatchEuler's default first sigma is exactly 1 (alpha = 0: x0 = (x - sigma eps) / alpha is
  0 / 0 for any eps parameterization), so it is given its sigmas (`set_timesteps(sigmas=...)`),
  which it then shifts itself.
* `shift` is SD3's warp sigma' = s sigma / (1 + (s - 1) sigma) of the schedule.
* diffusers keeps its sigmas in float32 and steps in float32: agreement is at float32
  resolution (measured relative residuals are printed by `-s`; see the README).

FlowMatchEuler's step x + (sigma_next - sigma) u is DDIM (eta = 0) on `flow`: with
x = (1 - t) x0 + t eps and u = eps - x0, x + (t' - t) u = (1 - t') x0 + t' eps. It is also the
Euler step of the probability-flow ODE, whose drift on `flow` is u: both are compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peers import load_diffusers

import diffkit

# diffusers' schedulers call np.array(tensor, copy=False), which numpy 2 deprecates for torch tensors
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TOLERANCE = 1e-5  # relative (max-norm), float32
MODELS = ["gmm:ring8", "gmm:d64"]
T_MAX = 1.0 - 1e-6


@pytest.fixture(scope="module")
def flow(registry: diffkit.Registry) -> diffkit.NoiseProcess:
    """The rectified-flow process on [1e-3, 1 - 1e-6]: diffusers' schedules reach to within 1e-6 of t = 1."""
    return registry.build("process", "flow", {"t_min": 1e-3, "t_max": T_MAX})


def velocity_model(
    registry: diffkit.Registry, name: str, process: diffkit.NoiseProcess
) -> diffkit.ScoreModel:
    """The oracle `name` on `process` as a float32 velocity network (u computed in float64)."""
    oracle = registry.build("model", name, {}, process)

    def network(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        return oracle.prediction(x.double(), t.double(), cond).velocity.to(x.dtype)

    return diffkit.ScoreModel(network, kind="velocity", process=process, data_shape=oracle.data_shape)


def _relative(x: torch.Tensor, reference: torch.Tensor) -> float:
    residual = float((x - reference).abs().max() / reference.abs().max())
    print(f"relative residual {residual:.2e}")
    return residual


def _start(model: diffkit.ScoreModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn((16, *model.data_shape), generator=generator, dtype=torch.float32)


def _run_diffusers(
    scheduler, model: diffkit.ScoreModel, x_init: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A prepared diffusers flow scheduler's loop: its samples and its sigmas `(T + 1,)`, ending at 0."""
    sigmas = scheduler.sigmas.to(torch.float64)
    assert float(sigmas[-1]) == 0.0 and len(sigmas) == len(scheduler.timesteps) + 1
    x = x_init.clone()
    for j, timestep in enumerate(scheduler.timesteps):
        u = model.predict(x, sigmas[j].expand(x.shape[0])).velocity
        x = scheduler.step(u, timestep, x).prev_sample
    return x, sigmas


def _diffkit_end(sigmas: torch.Tensor, end: str) -> tuple[torch.Tensor, dict]:
    """diffkit's grid and options for diffusers' final step to sigma = 0: a final 0.0, or `denoise_final`."""
    return (sigmas, {}) if end == "zero" else (sigmas[:-1], {"denoise_final": True})


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("solver", ["ddim", "ode:euler"])
@pytest.mark.parametrize("end", ["zero", "denoise_final"])
def test_euler_matches_flow_match_euler(
    registry: diffkit.Registry,
    flow: diffkit.NoiseProcess,
    model_name: str,
    shift: float,
    solver: str,
    end: str,
) -> None:
    """`ddim` (eta 0) and `ode:euler` on `flow` = FlowMatchEulerDiscreteScheduler, with and without shift."""
    diffusers = load_diffusers()
    model = velocity_model(registry, model_name, flow)
    x_init, steps = _start(model), 12
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0 - 1e-3, 1e-3, steps).tolist())
    expected, sigmas = _run_diffusers(scheduler, model, x_init)
    if shift != 1.0:  # diffusers warped the sigmas it was given: SD3's shift
        given = torch.linspace(1.0 - 1e-3, 1e-3, steps, dtype=torch.float64)
        torch.testing.assert_close(sigmas[:-1], shift * given / (1 + (shift - 1) * given), rtol=1e-6, atol=0)
    grid, options = _diffkit_end(sigmas, end)
    sampler = registry.build("sampler", solver, options)
    # both in float32: `ode` evaluates its drift as alpha' x0 + sigma' eps, not as f x - g^2 score / 2,
    # whose two terms on `flow` are each ~x / (1 - t) and cancel (1.8e-5 relative when it did)
    result = sampler(model, flow, x_init, grid)
    assert result.nfe == steps  # diffusers' 12 steps, the last to sigma = 0
    assert expected.abs().max() > 0.5
    assert _relative(result.x.float(), expected) < TOLERANCE


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("end", ["zero", "denoise_final"])
def test_dpmpp_2m_matches_diffusers_flow_sigmas(
    registry: diffkit.Registry,
    flow: diffkit.NoiseProcess,
    model_name: str,
    shift: float,
    steps: int,
    end: str,
) -> None:
    """`dpmpp-2m` = DPMSolverMultistepScheduler(dpmsolver++, order 2, use_flow_sigmas, flow_prediction)."""
    diffusers = load_diffusers()
    model = velocity_model(registry, model_name, flow)
    x_init = _start(model)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        solver_order=2,
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=shift,
    )
    scheduler.set_timesteps(steps)
    expected, sigmas = _run_diffusers(scheduler, model, x_init)
    grid, options = _diffkit_end(sigmas, end)
    result = registry.build("sampler", "dpmpp-2m", options)(model, flow, x_init, grid)
    assert result.nfe == steps
    assert _relative(result.x, expected) < TOLERANCE


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("order, steps", [(2, 10), (2, 20), (3, 10)])
@pytest.mark.parametrize("end", ["zero", "denoise_final"])
def test_unipc_matches_diffusers_flow_sigmas(
    registry: diffkit.Registry,
    flow: diffkit.NoiseProcess,
    model_name: str,
    shift: float,
    order: int,
    steps: int,
    end: str,
) -> None:
    """`unipc` = UniPCMultistepScheduler(bh2, predict_x0, use_flow_sigmas, flow_prediction, final sigma 0)."""
    diffusers = load_diffusers()
    model = velocity_model(registry, model_name, flow)
    x_init = _start(model)
    scheduler = diffusers.UniPCMultistepScheduler(
        solver_order=order,
        solver_type="bh2",
        predict_x0=True,
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=shift,
    )
    scheduler.set_timesteps(steps)
    expected, sigmas = _run_diffusers(scheduler, model, x_init)
    grid, options = _diffkit_end(sigmas, end)
    result = registry.build("sampler", "unipc", {"order": order, **options})(model, flow, x_init, grid)
    assert result.nfe == steps
    assert _relative(result.x, expected) < TOLERANCE


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "unipc"])
def test_shift_option_is_diffusers_shift(registry: diffkit.Registry, model_name: str, solver: str) -> None:
    """`--sde flow --sde-opt shift=3` on diffkit's own times = FlowMatchEuler(shift=3) on the same times.

    The network is a function of the base time (sigma): diffusers steps it at its shifted sigmas,
    diffkit at shifted times t whose base time is w(t) (the ScoreModel un-warps). `ddim` is
    FlowMatchEuler's step; the exponential integrators see only alpha and sigma at the grid
    points, so on the shifted process they must equal themselves on the base `flow` at the
    shifted sigmas (the velocity is converted with the base's rates).
    """
    diffusers = load_diffusers()
    options = {"t_min": 1e-3, "t_max": T_MAX}
    base = registry.build("process", "flow", options)
    shifted = registry.build("process", "flow", options | {"shift": 3.0})
    oracle = registry.build("model", model_name, {}, base)

    def network(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        return oracle.prediction(x.double(), t.double(), cond).velocity.to(x.dtype)

    on_base = diffkit.ScoreModel(network, kind="velocity", process=base, data_shape=oracle.data_shape)
    on_shifted = diffkit.ScoreModel(network, kind="velocity", process=shifted, data_shape=oracle.data_shape)
    x_init, steps = _start(on_base), 12
    given = torch.linspace(1.0 - 1e-3, 1e-3, steps, dtype=torch.float64)  # diffkit's (shifted) times
    grid = torch.cat([given, torch.zeros(1, dtype=torch.float64)])
    if solver == "ddim":
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
        scheduler.set_timesteps(sigmas=given.tolist())
        expected, sigmas = _run_diffusers(scheduler, on_base, x_init)
        torch.testing.assert_close(sigmas[:-1], shifted.sigma(given), rtol=1e-6, atol=0)
        result = registry.build("sampler", "ddim", {})(on_shifted, shifted, x_init, grid)
        assert result.nfe == steps and _relative(result.x, expected) < TOLERANCE
    else:  # the shifted process's grid is the shifted sigmas of the base: same steps on either
        sigmas = torch.cat([shifted.sigma(given), torch.zeros(1, dtype=torch.float64)])
        sampler = registry.build("sampler", solver, {})
        expected = sampler(on_base, base, x_init, sigmas).x
        assert _relative(sampler(on_shifted, shifted, x_init, grid).x, expected) < TOLERANCE


# --- `--model diffusers:PATH` for a flow-matching UNet ----------------------------------------------


def _flow_unet(folder, scheduler: dict) -> torch.nn.Module:
    """Save the seeded tiny UNet2DModel (1x8x8) with a flow-matching scheduler_config.json."""
    import json

    from _helpers import tiny_diffusers_unet

    unet = tiny_diffusers_unet()
    unet.save_pretrained(folder)
    (folder / "scheduler_config.json").write_text(json.dumps(scheduler))
    return unet.eval().requires_grad_(False)


FLOW_MATCH_EULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 1.0,
}


def test_flow_match_unet_is_a_velocity_model_on_flow(registry: diffkit.Registry, tmp_path) -> None:
    """The UNet sees timestep sigma N and its output w = eps - x0 is the velocity on `flow`."""
    load_diffusers()
    unet = _flow_unet(tmp_path / "fm", FLOW_MATCH_EULER)
    flow = registry.build("process", "flow", {})
    model = registry.build("model", f"diffusers:{tmp_path / 'fm'}", {}, flow)
    assert (model.kind, model.data_shape) == ("velocity", (1, 8, 8))
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.9, 0.5, 0.02])
    prediction = model.predict(x, t)
    w = unet(x, t * 1000).sample
    assert float(w.abs().mean()) > 0.01
    torch.testing.assert_close(prediction.velocity, w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prediction.x0, x - t.view(-1, 1, 1, 1) * w, rtol=1e-5, atol=1e-6)


def test_flow_match_unet_samples_like_diffusers_pipeline_loop(
    registry: diffkit.Registry, flow: diffkit.NoiseProcess, tmp_path
) -> None:
    """`diffusers:PATH` + `ddim` on `flow` = FlowMatchEulerDiscreteScheduler stepping the UNet itself."""
    diffusers = load_diffusers()
    unet = _flow_unet(tmp_path / "fm", FLOW_MATCH_EULER)
    model = registry.build("model", f"diffusers:{tmp_path / 'fm'}", {}, flow)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "fm")
    scheduler.set_timesteps(sigmas=np.linspace(1.0 - 1e-3, 1e-3, 8).tolist())
    x_init = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    x = x_init.clone()
    for timestep in scheduler.timesteps:
        x = scheduler.step(unet(x, timestep).sample, timestep, x).prev_sample
    grid = scheduler.sigmas[:-1].to(torch.float64)
    result = registry.build("sampler", "ddim", {"denoise_final": True})(model, flow, x_init, grid)
    assert _relative(result.x, x) < TOLERANCE


def test_shifted_flow_match_unet_samples_like_diffusers(registry: diffkit.Registry, tmp_path) -> None:
    """A `shift: 3` config on `--sde flow --sde-opt shift=3`: the UNet sees sigma N at diffusers' sigmas."""
    diffusers = load_diffusers()
    unet = _flow_unet(tmp_path / "fm", FLOW_MATCH_EULER | {"shift": 3.0})
    shifted = registry.build("process", "flow", {"shift": 3.0})
    model = registry.build("model", f"diffusers:{tmp_path / 'fm'}", {}, shifted)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "fm")
    given = torch.linspace(0.98, 0.01, 8, dtype=torch.float64)  # inside the shifted range
    scheduler.set_timesteps(sigmas=given.tolist())
    x_init = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    x = x_init.clone()
    for timestep in scheduler.timesteps:
        x = scheduler.step(unet(x, timestep).sample, timestep, x).prev_sample
    grid = torch.cat([given, torch.zeros(1, dtype=torch.float64)])
    result = registry.build("sampler", "ddim", {})(model, shifted, x_init, grid)
    assert _relative(result.x, x) < TOLERANCE


def test_uni_pc_flow_config_is_recognised(registry: diffkit.Registry, tmp_path) -> None:
    load_diffusers()
    config = {"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True}
    _flow_unet(tmp_path / "u", config | {"prediction_type": "flow_prediction", "flow_shift": 1.0})
    flow = registry.build("process", "flow", {})
    assert registry.build("model", f"diffusers:{tmp_path / 'u'}", {}, flow).kind == "velocity"


@pytest.mark.parametrize(
    ("scheduler", "sde", "options", "message"),
    [
        (
            {"shift": 3.0},
            "flow",
            [],
            "flow-matching model (FlowMatchEulerDiscreteScheduler, shift=3), but --sde is FlowProcess(",
        ),
        ({"shift": 3.0}, "flow", [], "); sample it with --sde flow --sde-opt shift=3"),
        ({}, "vp", [], "but --sde is VPProcess("),
        ({}, "flow-cosine", [], "sample it with --sde flow"),
        ({"use_dynamic_shifting": True}, "vp", [], "any shift: --sde-opt mu=MU), but --sde is VPProcess("),
        ({}, "flow", ["--model-opt", "shift=-1"], "shift must be a positive number, got -1.0"),
    ],
)
def test_bad_flow_process_or_shift_exits_2_with_one_line(
    tmp_path, scheduler: dict, sde: str, options: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from diffkit.cli.main import app

    load_diffusers()
    _flow_unet(tmp_path / "fm", FLOW_MATCH_EULER | scheduler)
    out = tmp_path / "s.npz"
    args = ["sample", "--model", f"diffusers:{tmp_path / 'fm'}", "--sde", sde, "--solver", "ddim"]
    result = CliRunner().invoke(app, [*args, *options, "--steps", "4", "--no-plot", "--out", str(out)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not out.exists()
