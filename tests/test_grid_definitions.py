"""Every time grid against the formula of its paper or reference implementation, on every process.

s = sigma / alpha is the scaled noise level of k-diffusion and ComfyUI (EDM's sigma). References:
k-diffusion's `get_sigmas_karras/exponential/polyexponential` (installed peer); the Beta
quantiles of Lee et al. 2024 (scipy's `beta.ppf`, and closed forms for Beta(a, 1), Beta(1, b));
ComfyUI's `normal_scheduler(sgm=True)` ("sgm_uniform") and `simple_scheduler`, restated below
from their definitions on a 1000-entry sigma table interpolated in log sigma. Composition: every
registered grid with every registered process through `compose` (the path of `diffkit sample`
and `diffkit bench`) and one DDIM run; `diffkit bench --grid NAME` for every grid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from peers import load_k_diffusion_sampling
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.errors import OptionError, UsageError
from diffkit.plugin.options import option_specs
from diffkit.run.api import SampleConfig, compose

F64 = torch.float64
_NAMES = diffkit.build_registry()
PROCESSES = tuple(_NAMES.names("process"))  # picks up every installed process (flow, flow-cosine, ...)
GRIDS = tuple(_NAMES.names("grid"))
DISCRETE_ONLY = {"leading", "trailing", "linspace"}
#: grids whose last point is 0.0, "sigma = 0" (the rest end at t_min)
TO_ZERO = {"sgm-uniform", "simple", "leading", "trailing", "linspace"}
runner = CliRunner()


def _ramp(n: int) -> torch.Tensor:
    return torch.arange(n + 1, dtype=F64) / n


def _scaled_sigma(process: diffkit.NoiseProcess, t: torch.Tensor) -> torch.Tensor:
    """s = sigma / alpha from the process's alpha and sigma (not through its log-SNR)."""
    return process.sigma(t) / process.alpha(t)


def _s_range(process: diffkit.NoiseProcess) -> tuple[float, float]:
    ends = torch.tensor([process.t_max, process.t_min], dtype=F64)
    s_max, s_min = _scaled_sigma(process, ends).tolist()
    return s_max, s_min


def _times_table(process: diffkit.NoiseProcess, folder: Path) -> str:
    """A JSON table file of 4 times spanning the process (uniform in t)."""
    path = folder / "grid.json"
    times = torch.linspace(process.t_max, process.t_min, 4, dtype=F64).tolist()
    path.write_text(json.dumps({"times": times}))
    return str(path)


# -- composition -----------------------------------------------------------------------------


@pytest.mark.parametrize("process_name", PROCESSES)
@pytest.mark.parametrize("grid_name", GRIDS)
def test_every_grid_composes_with_every_process(registry, grid_name, process_name, tmp_path):
    process = registry.build("process", process_name, {})
    options = {"file": _times_table(process, tmp_path)} if grid_name == "table" else {}
    config = SampleConfig(
        process=process_name, solver="ddim", grid=grid_name, grid_options=options, steps=6, num_samples=16
    )
    discrete = diffkit.discrete_process(process) is not None
    if grid_name in DISCRETE_ONLY and not discrete:
        message = (
            f"grid {grid_name!r} on process {process_name!r}: needs a discrete process "
            "(one with DDPM knots: ddpm, ddpm-cosine); this one is continuous"
        )
        with pytest.raises(UsageError) as caught:
            compose(config, registry)
        assert str(caught.value) == message
        return
    comp = compose(config, registry)
    grid = comp.grid
    assert grid.shape == (7,) and grid.dtype == F64
    assert bool((grid[1:] < grid[:-1]).all())
    inner = grid[:-1] if grid_name in TO_ZERO else grid
    assert float(inner.min()) >= process.t_min and float(inner.max()) <= process.t_max
    assert grid[-1].item() == (0.0 if grid_name in TO_ZERO else process.t_min)
    if grid_name != "leading":  # diffusers' leading spacing starts below t_max, by definition
        assert grid[0].item() == process.t_max
    x = process.prior_sample((16, 2), generator=torch.Generator().manual_seed(0))
    result = comp.sampler(comp.model, comp.process, x, grid, generator=torch.Generator().manual_seed(1))
    assert result.nfe == 6 and bool(torch.isfinite(result.x).all())


@pytest.mark.parametrize("grid_name", sorted(TO_ZERO - DISCRETE_ONLY))
def test_grids_ending_at_sigma_zero_need_positive_t_min(registry, grid_name):
    ve = registry.build("process", "ve", {"t_min": "0"})
    message = (
        "this grid ends at sigma = 0 (a final point t = 0.0 below t_min), which needs t_min > 0; "
        "the process has t_min = 0"
    )
    with pytest.raises(ValueError) as caught:
        registry.build("grid", grid_name, {})(ve, 5)
    assert str(caught.value) == message


@pytest.mark.parametrize("grid_name", GRIDS)
def test_bench_runs_every_grid(grid_name, tmp_path):
    sde = "ddpm" if grid_name in DISCRETE_ONLY else "vp"
    args = ["bench", "--sde", sde, "--solvers", "ddim", "--nfe", "3", "--num-samples", "64"]
    args += ["--grid", grid_name, "--out", str(tmp_path / "bench"), "--no-plot", "--json"]
    if grid_name == "table":
        args += ["--grid-opt", f"file={_times_table(_NAMES.build('process', sde, {}), tmp_path)}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert [(row["grid"], row["nfe"]) for row in rows] == [(grid_name, 3)]


def test_list_grid_shows_every_grid_with_its_options():
    result = runner.invoke(app, ["list", "grid", "--json"])
    assert result.exit_code == 0, result.stderr
    options = {row["name"]: row["options"] for row in json.loads(result.stdout)}
    assert set(options) == set(GRIDS)
    for name, listed in options.items():
        specs = option_specs(_NAMES.get("grid", name).factory)
        expected = ", ".join(
            f"{s.name}={str(s.default).lower() if s.default is None else s.default}" for s in specs.values()
        )
        assert listed == (expected or "-"), (name, listed)
    assert options["karras"] == "rho=7.0" and options["beta"] == "alpha=0.6, beta=0.6"


# -- s = sigma / alpha grids: exponential, polyexponential, karras -------------------------------


@pytest.mark.parametrize("process_name", PROCESSES)
def test_exponential_is_uniform_in_log_sigma_over_alpha(registry, process_name):
    """k-diffusion's exponential: s_i = exp(log s_max + (i/n)(log s_min - log s_max))."""
    process = registry.build("process", process_name, {})
    grid = registry.build("grid", "exponential", {})(process, 12)
    s_max, s_min = _s_range(process)
    expected = torch.exp(math.log(s_max) + _ramp(12) * (math.log(s_min) - math.log(s_max)))
    torch.testing.assert_close(_scaled_sigma(process, grid), expected, rtol=1e-9, atol=0)
    assert grid[0].item() == process.t_max and grid[-1].item() == process.t_min
    log_snr_grid = registry.build("grid", "log-snr", {})(process, 12)  # lambda = -2 log s: same points
    torch.testing.assert_close(grid, log_snr_grid, rtol=0, atol=1e-9)


@pytest.mark.parametrize("rho", (0.5, 1.0, 2.5))
@pytest.mark.parametrize("process_name", PROCESSES)
def test_polyexponential_ramp_in_log_sigma_over_alpha(registry, process_name, rho):
    """log s_i = log s_min + (1 - i/n)^rho (log s_max - log s_min)."""
    process = registry.build("process", process_name, {})
    grid = registry.build("grid", "polyexponential", {"rho": str(rho)})(process, 9)
    s_max, s_min = _s_range(process)
    expected = torch.exp(math.log(s_min) + (1 - _ramp(9)) ** rho * (math.log(s_max) - math.log(s_min)))
    torch.testing.assert_close(_scaled_sigma(process, grid), expected, rtol=1e-9, atol=0)
    assert bool((grid[1:] < grid[:-1]).all())


def test_polyexponential_default_rho_is_one_and_equals_exponential(registry):
    vp = registry.build("process", "vp", {})
    assert registry.build("grid", "polyexponential", {}).rho == 1.0
    poly = registry.build("grid", "polyexponential", {})(vp, 20)
    torch.testing.assert_close(poly, registry.build("grid", "exponential", {})(vp, 20), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "grid_name, options, peer",
    [
        ("karras", {}, ("get_sigmas_karras", {"rho": 7.0})),
        ("karras", {"rho": "3"}, ("get_sigmas_karras", {"rho": 3.0})),
        ("exponential", {}, ("get_sigmas_exponential", {})),
        ("polyexponential", {}, ("get_sigmas_polyexponential", {"rho": 1.0})),
        ("polyexponential", {"rho": "2"}, ("get_sigmas_polyexponential", {"rho": 2.0})),
    ],
)
@pytest.mark.parametrize("process_name", ("vp", "ve", "ddpm-cosine", "flow"))
def test_grids_agree_with_k_diffusion(registry, process_name, grid_name, options, peer):
    """Our n + 1 points are k-diffusion's n + 1 sigmas before its appended 0 (float32 there: rtol 5e-5)."""
    if process_name not in PROCESSES:
        pytest.skip(f"process {process_name!r} is not installed")
    sampling = load_k_diffusion_sampling()
    process = registry.build("process", process_name, {})
    s_max, s_min = _s_range(process)
    function, kwargs = peer
    sigmas = getattr(sampling, function)(16, s_min, s_max, **kwargs)
    assert sigmas.shape == (17,) and sigmas[-1].item() == 0.0
    grid = registry.build("grid", grid_name, options)(process, 15)
    torch.testing.assert_close(_scaled_sigma(process, grid), sigmas[:-1].to(F64), rtol=5e-5, atol=0)


# -- beta (Lee et al. 2024) ----------------------------------------------------------------------


def _beta_times(process: diffkit.NoiseProcess, quantiles: torch.Tensor) -> torch.Tensor:
    return process.t_min + (process.t_max - process.t_min) * quantiles


@pytest.mark.parametrize("alpha, beta", [(0.6, 0.6), (0.5, 2.0), (3.0, 0.3), (20.0, 7.0)])
@pytest.mark.parametrize("process_name", ("vp", "ddpm", "flow"))
def test_beta_grid_is_at_beta_quantiles(registry, process_name, alpha, beta):
    """t_i = t_min + (t_max - t_min) F^-1(1 - i/n) for F the Beta(alpha, beta) distribution function."""
    if process_name not in PROCESSES:
        pytest.skip(f"process {process_name!r} is not installed")
    stats = pytest.importorskip("scipy.stats")
    process = registry.build("process", process_name, {})
    grid = registry.build("grid", "beta", {"alpha": str(alpha), "beta": str(beta)})(process, 10)
    quantiles = torch.from_numpy(stats.beta.ppf(1.0 - _ramp(10).numpy(), alpha, beta))
    torch.testing.assert_close(grid, _beta_times(process, quantiles), rtol=0, atol=1e-13)
    assert grid[0].item() == process.t_max and grid[-1].item() == process.t_min


@pytest.mark.parametrize("shape", (0.6, 2.0, 5.0))
def test_beta_grid_closed_forms(registry, shape):
    """Beta(a, 1): F^-1(u) = u^(1/a); Beta(1, b): F^-1(u) = 1 - (1 - u)^(1/b); Beta(1, 1) is uniform."""
    vp = registry.build("process", "vp", {})
    levels = 1.0 - _ramp(8)
    power = registry.build("grid", "beta", {"alpha": str(shape), "beta": "1"})(vp, 8)
    torch.testing.assert_close(power, _beta_times(vp, levels ** (1 / shape)), rtol=0, atol=1e-14)
    mirror = registry.build("grid", "beta", {"alpha": "1", "beta": str(shape)})(vp, 8)
    torch.testing.assert_close(mirror, _beta_times(vp, 1 - (1 - levels) ** (1 / shape)), rtol=0, atol=1e-14)
    uniform = registry.build("grid", "beta", {"alpha": "1", "beta": "1"})(vp, 8)
    torch.testing.assert_close(uniform, registry.build("grid", "uniform", {})(vp, 8), rtol=0, atol=1e-14)


def test_beta_grid_defaults_and_symmetry(registry):
    """alpha = beta = 0.6 by default (the paper's and ComfyUI's); a symmetric Beta gives a symmetric grid."""
    grid_factory = registry.build("grid", "beta", {})
    assert (grid_factory.alpha, grid_factory.beta) == (0.6, 0.6)
    vp = registry.build("process", "vp", {})
    grid = grid_factory(vp, 11)
    torch.testing.assert_close(grid + grid.flip(0), torch.full((12,), vp.t_max + vp.t_min, dtype=F64))
    steps = grid[:-1] - grid[1:]
    assert steps[0] < steps[5] and steps[-1] < steps[5]  # denser at both ends


@pytest.mark.parametrize("option", ("alpha", "beta"))
def test_beta_grid_rejects_non_positive_parameters(registry, option):
    message = f"grid 'beta': option {option} must be a positive number, got -1.0"
    with pytest.raises(OptionError) as caught:
        registry.build("grid", "beta", {option: "-1"})
    assert str(caught.value) == message


# -- ComfyUI: sgm_uniform and simple ------------------------------------------------------------


def _ddpm_scaled_sigmas(num_steps: int = 1000) -> np.ndarray:
    """ComfyUI's table for linear betas 1e-4..0.02: sqrt((1 - alpha_bar) / alpha_bar) at timesteps 0..N-1."""
    alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, num_steps))
    return np.sqrt((1.0 - alpha_bar) / alpha_bar)


def _comfy_sigma(table: np.ndarray, timestep: float) -> float:
    """ComfyUI's ModelSamplingDiscrete.sigma: log sigma linear between the integer timesteps."""
    low = int(math.floor(timestep))
    high = min(low + 1, len(table) - 1)
    weight = timestep - low
    return math.exp((1 - weight) * math.log(table[low]) + weight * math.log(table[high]))


@pytest.mark.parametrize("n", (1, 4, 10, 33))
def test_sgm_uniform_matches_comfyui_on_ddpm(registry, n):
    """sgm_uniform: sigma at linspace(999, 0, n + 1)[:-1] (fractional timesteps), then 0."""
    ddpm = registry.build("process", "ddpm", {})
    grid = registry.build("grid", "sgm-uniform", {})(ddpm, n)
    table = _ddpm_scaled_sigmas()
    expected = [_comfy_sigma(table, float(k)) for k in np.linspace(999.0, 0.0, n + 1)[:-1]]
    assert grid[-1].item() == 0.0
    torch.testing.assert_close(
        _scaled_sigma(ddpm, grid[:-1]), torch.tensor(expected, dtype=F64), rtol=1e-9, atol=0
    )


@pytest.mark.parametrize("process_name", PROCESSES)
def test_sgm_uniform_closed_form(registry, process_name):
    process = registry.build("process", process_name, {})
    grid = registry.build("grid", "sgm-uniform", {})(process, 8)
    expected = process.t_max + _ramp(8)[:-1] * (process.t_min - process.t_max)
    torch.testing.assert_close(grid[:-1], expected, rtol=0, atol=1e-15)
    assert grid[-1].item() == 0.0


@pytest.mark.parametrize("n", (1, 7, 10, 38, 300, 1000))
def test_simple_matches_comfyui_on_ddpm(registry, n):
    """simple: sigmas[-(1 + int(x * (N / n)))] for x = 0..n-1, then 0 (ComfyUI's float product)."""
    ddpm = registry.build("process", "ddpm", {})
    grid = registry.build("grid", "simple", {})(ddpm, n)
    table = _ddpm_scaled_sigmas()
    stride = len(table) / n
    expected = [table[-(1 + int(x * stride))] for x in range(n)]
    assert grid[-1].item() == 0.0
    torch.testing.assert_close(
        _scaled_sigma(ddpm, grid[:-1]), torch.tensor(expected, dtype=F64), rtol=1e-9, atol=0
    )
    knots = torch.tensor([len(table) - int(x * stride) for x in range(n)], dtype=F64) / len(table)
    torch.testing.assert_close(grid[:-1], knots, rtol=0, atol=1e-15)  # t_k = (k + 1) / N


@pytest.mark.parametrize("process_name", ("vp", "ve", "flow-cosine"))
def test_simple_on_a_continuous_process_uses_evenly_spaced_knots(registry, process_name):
    """Knot k of N is t_min + k (t_max - t_min) / (N - 1); step i takes knot N - 1 - floor(i N / n)."""
    if process_name not in PROCESSES:
        pytest.skip(f"process {process_name!r} is not installed")
    process = registry.build("process", process_name, {})
    grid = registry.build("grid", "simple", {"knots": "10"})(process, 4)
    index = torch.tensor([9, 7, 4, 2], dtype=F64)  # 9 - floor(i * 2.5) for i = 0..3
    expected = process.t_min + (process.t_max - process.t_min) * index / 9
    torch.testing.assert_close(grid[:-1], expected, rtol=0, atol=1e-15)
    assert registry.build("grid", "simple", {})(process, 1000).shape == (1001,)  # default N = 1000


def test_simple_refuses_more_steps_than_knots(registry):
    ddpm = registry.build("process", "ddpm", {"num_steps": "50"})
    with pytest.raises(ValueError) as caught:
        registry.build("grid", "simple", {})(ddpm, 51)
    assert str(caught.value) == "takes at most 50 steps on 50 knots, got 51"
