"""DDPM spacings (`leading`, `trailing`, `linspace`) against diffusers, and the user `table` grid.

References: diffusers' `DDPMScheduler` / `DDIMScheduler.set_timesteps` for each
`timestep_spacing` (the timesteps are the model evaluations; diffusers' chain then steps to
timestep -1, alpha_bar = 1, i.e. sigma = 0), diffusers' custom timesteps, and the log-linear
interpolation of "Align Your Steps" (Sabour et al. 2024), restated here with numpy's `interp`.
Bad tables and flags are checked through the CLI: exit 2 and one exact `error:` line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peers import load_diffusers
from typer.testing import CliRunner

from diffkit.cli.main import app
from diffkit.core.errors import OptionError

F64 = torch.float64
runner = CliRunner()
STEP_COUNTS = (1, 2, 3, 7, 10, 25, 48, 50, 333, 999, 1000)


def _scaled_sigma(process, t: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return process.sigma(t) / process.alpha(t)


def _fail(args: list[str], message: str) -> None:
    """The CLI exits 2 with exactly one stderr line, `error: ` + `message`."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [f"error: {message}"]


def _sample(*args: str, out: Path) -> list[str]:
    return ["sample", "--solver", "ddim", "--num-samples", "32", "--no-plot", "--out", str(out), *args]


# -- DDPM spacings -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler_name", ("DDPMScheduler", "DDIMScheduler"))
@pytest.mark.parametrize("spacing", ("leading", "trailing", "linspace"))
def test_spacings_are_diffusers_timesteps_then_sigma_zero(registry, spacing, scheduler_name):
    """grid[:-1] = (k + 1) / N for diffusers' timesteps k, grid[-1] = 0.0 (its step to timestep -1)."""
    scheduler_class = getattr(load_diffusers(), scheduler_name)
    process = registry.build("process", "ddpm", {})
    offsets = (0, 1) if spacing == "leading" else (0,)
    for offset in offsets:
        grid_factory = registry.build("grid", spacing, {"offset": str(offset)} if offset else {})
        for n in STEP_COUNTS:
            if spacing == "leading" and offset == 1 and n == 1000:
                continue  # diffusers would ask for timestep 1000 of 0..999 (refused below)
            scheduler = scheduler_class(
                num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset
            )
            scheduler.set_timesteps(n)
            grid = grid_factory(process, n)
            expected = (scheduler.timesteps.to(F64) + 1.0) / 1000
            assert grid.shape == (n + 1,) and grid[-1].item() == 0.0
            assert torch.equal(grid[:-1], expected), (spacing, offset, n)


@pytest.mark.parametrize("n", (4, 10, 17))
def test_spacing_closed_forms_on_ddpm_cosine(registry, n):
    """leading j floor(N/n), trailing round(N - j N/n) - 1, linspace round(j (N-1)/(n-1)); t = (k + 1) / N."""
    process = registry.build("process", "ddpm-cosine", {"num_steps": "200"})
    big_n = 200
    leading = [j * (big_n // n) for j in range(n - 1, -1, -1)]
    trailing = [round(big_n - j * big_n / n) - 1 for j in range(n)]
    linspace = [round(j * (big_n - 1) / (n - 1)) for j in range(n - 1, -1, -1)]
    for name, timesteps in (("leading", leading), ("trailing", trailing), ("linspace", linspace)):
        grid = registry.build("grid", name, {})(process, n)
        expected = [(k + 1) / big_n for k in timesteps] + [0.0]
        torch.testing.assert_close(grid, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-15)
    assert registry.build("grid", "trailing", {})(process, n)[0].item() == process.t_max
    assert registry.build("grid", "linspace", {})(process, n)[-2].item() == process.t_min


def test_spacings_refuse_more_steps_than_knots_and_a_too_large_offset(registry):
    process = registry.build("process", "ddpm", {"num_steps": "100"})
    with pytest.raises(ValueError) as caught:
        registry.build("grid", "trailing", {})(process, 101)
    assert str(caught.value) == "takes at most 100 steps on a process with 100 knots, got 101"
    with pytest.raises(ValueError) as caught:
        registry.build("grid", "leading", {"offset": "10"})(process, 10)
    assert str(caught.value) == "offset 10 puts the first timestep at 100, beyond the last knot 99"
    with pytest.raises(OptionError) as caught:
        registry.build("grid", "leading", {"offset": "-1"})
    assert str(caught.value) == "grid 'leading': option offset must be an integer >= 0, got -1"


@pytest.mark.parametrize("spacing", ("leading", "trailing", "linspace"))
@pytest.mark.parametrize("sde", ("vp", "ve"))
def test_spacings_on_a_continuous_process_fail_in_one_line(spacing, sde, tmp_path):
    message = (
        f"grid {spacing!r} on process {sde!r}: needs a discrete process "
        "(one with DDPM knots: ddpm, ddpm-cosine); this one is continuous"
    )
    _fail(_sample("--sde", sde, "--grid", spacing, "--steps", "5", out=tmp_path / "s.npz"), message)
    assert not (tmp_path / "s.npz").exists()


# -- table: values and files ---------------------------------------------------------------------


def _write(path: Path, content: object) -> str:
    if path.suffix == ".npy":
        np.save(path, np.asarray(content))
    elif path.suffix == ".json":
        path.write_text(json.dumps(content))
    else:
        path.write_text(str(content))
    return str(path)


def test_table_of_times_is_the_grid_itself(registry, tmp_path):
    vp = registry.build("process", "vp", {})
    times = [1.0, 0.6, 0.25, 0.05, 1e-4]
    for path, content in (
        (tmp_path / "t.txt", "# times\n1.0, 0.6\n0.25 0.05\n1e-4\n"),
        (tmp_path / "t.npy", times),
        (tmp_path / "t.json", times),
        (tmp_path / "g.json", {"times": times, "solver": "dpmpp-2m", "nfe": 4}),
    ):
        grid_factory = registry.build("grid", "table", {"file": _write(path, content)})
        assert grid_factory.steps == 4
        assert torch.equal(grid_factory(vp, 4), torch.tensor(times, dtype=F64)), path.name


def test_table_of_sigmas_maps_sigma_over_alpha_and_keeps_a_final_zero(registry, tmp_path):
    """sigmas are s = sigma / alpha (k-diffusion, AYS); a final 0 is the last point 0.0 (sigma = 0)."""
    for name in ("vp", "ddpm", "flow"):
        process = registry.build("process", name, {})
        ends = torch.tensor([process.t_max, process.t_min], dtype=F64)
        s_max, s_min = _scaled_sigma(process, ends).tolist()
        sigmas = [s_max, 3.0, 0.5, s_min, 0.0]
        grid = registry.build("grid", "table", {"file": _write(tmp_path / "s.json", {"sigmas": sigmas})})(
            process, 4
        )
        assert grid[-1].item() == 0.0 and grid.shape == (5,)
        torch.testing.assert_close(
            _scaled_sigma(process, grid[:-1]), torch.tensor(sigmas[:-1], dtype=F64), rtol=1e-9, atol=0
        )


def test_table_kind_selects_the_list_of_a_tune_grid_file(registry, tmp_path):
    ve = registry.build("process", "ve", {})
    path = _write(tmp_path / "grid.json", {"times": [1.0, 0.5, 1e-5], "sigmas": [40.0, 1.0, 0.0]})
    assert registry.build("grid", "table", {"file": path}).unit == "times"  # times first
    grid = registry.build("grid", "table", {"file": path, "kind": "sigmas"})(ve, 2)
    torch.testing.assert_close(ve.sigma(grid[:-1]), torch.tensor([40.0, 1.0], dtype=F64), rtol=1e-12, atol=0)
    text = _write(tmp_path / "s.txt", "40 1 0")
    assert torch.equal(registry.build("grid", "table", {"file": text, "kind": "sigmas"})(ve, 2), grid)


def _ays_interp(values: np.ndarray, count: int) -> np.ndarray:
    """AYS' `loglinear_interp`: log values at linspace(0, 1, K), read at linspace(0, 1, count)."""
    xs = np.linspace(0.0, 1.0, len(values))
    ys = np.log(values[::-1])
    return np.exp(np.interp(np.linspace(0.0, 1.0, count), xs, ys))[::-1]


@pytest.mark.parametrize("n", (2, 5, 10, 23))
def test_table_interpolates_log_sigma_linearly_like_align_your_steps(registry, tmp_path, n):
    """Another step count: the positive sigmas are AYS-interpolated to n points, the final 0 is kept."""
    ddpm = registry.build("process", "ddpm", {})
    ays = np.array([14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029, 0.0])
    options = {"file": _write(tmp_path / "ays.npy", ays), "kind": "sigmas"}
    grid = registry.build("grid", "table", options)(ddpm, n)
    assert grid.shape == (n + 1,) and grid[-1].item() == 0.0
    expected = torch.from_numpy(_ays_interp(ays[:-1], n).copy())
    torch.testing.assert_close(_scaled_sigma(ddpm, grid[:-1]), expected, rtol=1e-9, atol=0)


def test_table_of_times_interpolated_keeps_its_ends(registry, tmp_path):
    subvp = registry.build("process", "subvp", {})
    path = _write(tmp_path / "t.json", {"times": [0.9, 0.4, 0.1, 0.01]})
    grid = registry.build("grid", "table", {"file": path})(subvp, 7)
    assert grid.shape == (8,) and grid[0].item() == 0.9 and grid[-1].item() == 0.01
    log_s = torch.log(_scaled_sigma(subvp, torch.tensor([0.9, 0.4, 0.1, 0.01], dtype=F64))).numpy()
    expected = np.interp(np.linspace(0.0, 3.0, 8), np.arange(4.0), log_s)
    torch.testing.assert_close(
        torch.log(_scaled_sigma(subvp, grid)), torch.from_numpy(expected), rtol=0, atol=1e-9
    )


def test_timesteps_are_diffusers_custom_timesteps(registry):
    """Knots (k + 1) / N of the timesteps, then 0.0: diffusers' custom timesteps end at timestep -1."""
    diffusers = load_diffusers()
    ddpm = registry.build("process", "ddpm", {})
    timesteps = [999, 850, 500, 120, 0]
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(timesteps=timesteps)
    assert int(scheduler.previous_timestep(0)) == -1  # the last step goes to alpha_bar = 1, sigma = 0
    grid_factory = registry.build("grid", "table", {"timesteps": "999,850,500,120,0"})
    assert grid_factory.steps == 5
    grid = grid_factory(ddpm, 5)
    expected = torch.cat([(scheduler.timesteps.to(F64) + 1) / 1000, torch.zeros(1, dtype=F64)])
    assert torch.equal(grid, expected)
    interpolated = grid_factory(ddpm, 9)  # 9 points log-linear in s over the 5 knots, then 0.0
    s_knots = _scaled_sigma(ddpm, grid[:-1]).numpy()
    torch.testing.assert_close(
        _scaled_sigma(ddpm, interpolated[:-1]),
        torch.from_numpy(_ays_interp(s_knots, 9).copy()),
        rtol=1e-9,
        atol=0,
    )


# -- the CLI: --timesteps, bad tables --------------------------------------------------------------


def test_sample_timesteps_flag_sets_the_table_and_its_step_count(tmp_path):
    out = tmp_path / "s.npz"
    result = runner.invoke(
        app, [*_sample("--sde", "ddpm", "--timesteps", "999,600,300,0", out=out), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["grid"], summary["steps"], summary["nfe"]) == ("table", 4, 4)
    with np.load(out) as data:
        config = json.loads(str(data["config"]))
    assert config["grid_options"] == {"timesteps": "999,600,300,0"}
    result = runner.invoke(
        app, [*_sample("--sde", "ddpm", "--timesteps", "999,0", "--steps", "3", out=out), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["nfe"] == 3  # interpolated to 2 points, then sigma = 0


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--sde", "ddpm", "--timesteps", "999,500", "--grid", "karras"],
            "--timesteps sets the grid to 'table'; it cannot be combined with --grid karras",
        ),
        (
            ["--sde", "ddpm", "--timesteps", "999,500", "--grid", "table", "--grid-opt", "timesteps=9,1"],
            "--timesteps and --grid-opt timesteps=... both give the timesteps; give one",
        ),
        (
            ["--sde", "ddpm", "--solver", "ode", "--timesteps", "999,500"],
            "--timesteps does not apply to the adaptive solver 'ode': it chooses its own steps between the "
            "process's end points (use a fixed-step solver, e.g. ode:rk4)",
        ),
        (
            ["--sde", "vp", "--timesteps", "999,500"],
            "grid 'table' on process 'vp': needs a discrete process "
            "(one with DDPM knots: ddpm, ddpm-cosine); this one is continuous",
        ),
        (
            ["--sde", "ddpm", "--timesteps", "999,1000"],
            "grid 'table': table timesteps must be strictly decreasing (from noise to data): entry 1 (1000) "
            "follows 999",
        ),
        (
            ["--sde", "ddpm", "--timesteps", "999,5.5"],
            "grid 'table': timesteps must be integers (knot indices), got 5.5",
        ),
        (
            ["--sde", "ddpm", "--timesteps", "1200,5"],
            "grid 'table' on process 'ddpm': timestep 1200 is outside the process's 0..999",
        ),
        (
            ["--sde", "ddpm", "--timesteps", "999,x"],
            "grid 'table': option timesteps: not a list of numbers (could not convert string to float: 'x')",
        ),
        (["--sde", "ddpm", "--timesteps", ","], "grid 'table': the table of timesteps is empty"),
        (
            ["--sde", "vp", "--grid", "table"],
            "grid 'table': give a table with exactly one of the options file=PATH or timesteps=K1,K2,...",
        ),
    ],
)
def test_bad_timesteps_fail_in_one_line(args, message, tmp_path):
    _fail(_sample(*args, out=tmp_path / "s.npz"), message)


@pytest.mark.parametrize(
    "name, content, sde, message",
    [
        (
            "t.txt",
            "0.9 0.5 0.7",
            "vp",
            "grid 'table': table times must be strictly decreasing (from noise to data): "
            "entry 2 (0.7) follows 0.5",
        ),
        ("t.txt", "", "vp", "grid 'table': the table of times is empty"),
        (
            "t.txt",
            "0.5",
            "vp",
            "grid 'table': a table of times needs at least 2 values (a grid's two ends), got 1",
        ),
        ("t.txt", "0.5 -0.1", "vp", "grid 'table': table times must be finite and >= 0, got -0.1"),
        (
            "t.txt",
            "1.5 0.5 0.1",
            "vp",
            "grid 'table' on process 'vp': table times [1.5, 0.1] leave the process range [0.0001, 1] "
            "(only a final 0, sigma = 0, may lie below t_min)",
        ),
        (
            "t.txt",
            "0.9 0.5 1e-6",
            "vp",
            "grid 'table' on process 'vp': table times [0.9, 1e-06] leave the process range [0.0001, 1] "
            "(only a final 0, sigma = 0, may lie below t_min)",
        ),
        (
            "s.json",
            {"sigmas": [80, 1, 0.1, 0]},
            "ve",
            "grid 'table' on process 've': table sigmas [80, 0.1] leave the process's range of sigma/alpha "
            "[50, 0.0100009] (only a final 0 may lie below it)",
        ),
        (
            "s.json",
            {"steps": [1, 0]},
            "vp",
            "grid 'table': table file '{path}' has none of the keys times, sigmas, timesteps",
        ),
        (
            "s.json",
            {"times": [1, "a"]},
            "vp",
            "grid 'table': table file '{path}': expected a list of numbers",
        ),
        (
            "s.json",
            {"times": [1, 0]},
            "vp",
            "grid 'table': table file '{path}' has no 'sigmas' list (it has times)",
        ),
        (
            "t.npy",
            [[1.0, 0.5]],
            "vp",
            "grid 'table': table file '{path}': expected a 1-D numeric array, got float64 (1, 2)",
        ),
        (
            "t.csv",
            "1, 0.5, zero",
            "vp",
            "grid 'table': table file '{path}': not a list of numbers "
            "(could not convert string to float: 'zero')",
        ),
        (
            "t.yaml",
            "1 0.5",
            "vp",
            "grid 'table': table file '{path}': expected a .txt, .csv, .npy or .json file",
        ),
    ],
)
def test_bad_table_files_fail_in_one_line(name, content, sde, message, tmp_path):
    path = _write(tmp_path / name, content)
    extra = ["--grid-opt", "kind=sigmas"] if "'sigmas' list" in message else []
    args = _sample(
        "--sde", sde, "--grid", "table", "--grid-opt", f"file={path}", *extra, out=tmp_path / "o.npz"
    )
    _fail(args, message.format(path=path))


def test_unreadable_table_files_fail_in_one_line(tmp_path):
    missing = tmp_path / "missing.txt"
    _fail(
        _sample("--grid", "table", "--grid-opt", f"file={missing}", out=tmp_path / "o.npz"),
        f"grid 'table': cannot read table file '{missing}': No such file or directory",
    )
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    result = runner.invoke(
        app, _sample("--grid", "table", "--grid-opt", f"file={broken}", out=tmp_path / "o.npz")
    )
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: grid 'table': cannot read table file '{broken}': Expecting")


def test_a_final_zero_on_a_process_with_t_min_zero(registry, tmp_path):
    """With t_min = 0 a final time 0 is t_min itself; a final sigma 0 lies outside the process."""
    ve = registry.build("process", "ve", {"t_min": "0"})
    times = registry.build("grid", "table", {"file": _write(tmp_path / "t.txt", "1 0.5 0")})
    assert torch.equal(times(ve, 2), torch.tensor([1.0, 0.5, 0.0], dtype=F64))
    sigmas = registry.build("grid", "table", {"file": _write(tmp_path / "s.txt", "50 1 0"), "kind": "sigmas"})
    with pytest.raises(ValueError) as caught:
        sigmas(ve, 2)
    assert str(caught.value) == (
        "the table ends at sigma = 0 (a final point t = 0.0 below t_min), which needs t_min > 0; "
        "the process has t_min = 0"
    )
