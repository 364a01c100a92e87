"""`diffkit tune-grid` (diffkit/tune): parameterisation, objectives, the keep-the-start rule, the file.

Objectives are checked against the bench's own computation (`diffkit.bench.quality`:
`reference_solution` + `mean_distance`, `exact_sets` + `score`) through the public sampling
path; the tuned file is read back by the `table` grid and by `diffkit sample`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffkit.bench.quality import exact_sets, reference_solution, score
from diffkit.cli.main import main
from diffkit.eval.metrics import mean_distance
from diffkit.run.api import SampleConfig, sample
from diffkit.tune import GridShape, TuneConfig, grid_file, prepare, tune_grid
from diffkit.tune.objectives import Counter, make_objective
from diffkit.tune.tuning import EVAL_SEED_OFFSET, noise_of

SMALL = {"train_samples": 64, "eval_samples": 128, "max_evals": 25}


def _config(**kwargs: object) -> TuneConfig:
    return TuneConfig(**{"model": "gmm:ring8", "solver": "dpmpp-2m", "nfe": 5, **SMALL, **kwargs})


@pytest.mark.parametrize("grid_name", ["log-snr", "karras", "sgm-uniform"])
def test_parameterisation_reproduces_the_grid(registry, grid_name):
    process = registry.build("process", "vp", {})
    grid = registry.build("grid", grid_name, {})(process, 6)
    shape = GridShape.of(grid, process)
    again = shape.grid_of(shape.theta_of(grid))
    assert again.shape == grid.shape
    torch.testing.assert_close(again, grid, rtol=1e-10, atol=1e-12)
    assert bool(
        (torch.diff(shape.grid_of(torch.randn(shape.theta_of(grid).shape, dtype=torch.float64))) < 0).all()
    )


def test_endpoint_objective_is_the_bench_reference_distance(registry):
    config = _config()
    comp = prepare(config, registry)
    noise = noise_of(comp, 64, 3)
    objective = make_objective("endpoint", registry, comp, noise, 3, Counter())
    for grid_name, denoise in (("log-snr", False), ("sgm-uniform", True)):
        grid = registry.build("grid", grid_name, {})(comp.process, 5)
        run_config = SampleConfig(
            model="gmm:ring8", solver="dpmpp-2m", steps=5, grid=grid_name, dtype="float64"
        )
        samples = sample(run_config, registry=registry, x_init=noise).samples
        # the exact answer: the ODE from t_max to t_min (then x0 prediction, for a grid ending at sigma 0)
        exact = reference_solution(registry, replace_grid(run_config), noise, denoise=denoise)
        expected = float(mean_distance(samples, exact))
        assert float(objective(grid)) == pytest.approx(expected, rel=1e-6)


def replace_grid(config: SampleConfig) -> SampleConfig:
    """The config on the log-snr grid (which runs from t_max to t_min)."""
    return SampleConfig(**{**config.__dict__, "grid": "log-snr"})


def test_sliced_w2_objective_is_the_bench_score(registry):
    comp = prepare(_config(objective="sliced-w2"), registry)
    noise = noise_of(comp, 96, 5)
    objective = make_objective("sliced-w2", registry, comp, noise, 5, Counter())
    grid = registry.build("grid", "karras", {})(comp.process, 5)
    config = SampleConfig(model="gmm:ring8", solver="dpmpp-2m", steps=5, grid="karras", dtype="float64")
    samples = sample(config, registry=registry, x_init=noise).samples
    sets = exact_sets(comp.model, comp.process, 96, 5, comp.process.t_min)
    assert float(objective(grid)) == pytest.approx(score(samples, comp.model, sets)["sliced_w2"], rel=1e-9)


@pytest.mark.parametrize(("solver", "objective"), [("dpmpp-2m", "endpoint"), ("unipc", "sliced-w2")])
def test_tuned_grid_never_loses_to_its_start_on_fresh_noise(registry, solver, objective):
    config = _config(solver=solver, objective=objective)
    result = tune_grid(config, registry)
    assert result.value_after <= result.value_before
    comp = prepare(config, registry)
    seed = config.seed + EVAL_SEED_OFFSET
    fresh = make_objective(
        objective, registry, comp, noise_of(comp, config.eval_samples, seed), seed, Counter()
    )
    start = registry.build("grid", result.start_grid, {})(comp.process, comp.steps)
    with torch.no_grad():
        assert float(fresh(start)) == pytest.approx(result.value_before, rel=1e-9)
        assert float(fresh(result.grid)) == pytest.approx(result.value_after, rel=1e-9)
    assert result.kept_start == torch.equal(result.grid, start)


def test_file_is_a_table_grid_and_sample_reads_it(registry, tmp_path: Path):
    out = tmp_path / "grid.json"
    args = ["--model", "gmm:ring8", "--solver", "unipc", "--nfe", "6", "--max-evals", "20"]
    assert main(["tune-grid", *args, "--train-samples", "64", "--eval-samples", "64", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    for key in ("model", "process", "solver", "nfe", "objective", "value_before", "value_after", "seconds"):
        assert key in data
    assert (data["solver"], data["nfe"], data["objective"], data["process"]) == ("unipc", 6, "endpoint", "vp")
    assert data["value_after"] <= data["value_before"] and data["nfe_spent"] > 0
    process = registry.build("process", "vp", {})
    table = registry.build("grid", "table", {"file": str(out)})(process, 6)
    assert table.tolist() == pytest.approx(data["times"], rel=1e-12, abs=0.0)
    samples = tmp_path / "s.npz"
    run = ["sample", "--solver", "unipc", "--steps", "6", "--grid", "table", "--grid-opt", f"file={out}"]
    assert main([*run, "--num-samples", "16", "--out", str(samples)]) == 0
    assert samples.exists()


def test_grid_file_holds_the_provenance(registry):
    config = _config(max_evals=12)
    result = tune_grid(config, registry)
    data = grid_file(config, result)
    assert data["times"] == [float(t) for t in result.grid]
    assert data["start_grid"] == result.start_grid and data["nfe"] == 5 and data["model"] == "gmm:ring8"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nfe", "1"], "error: --nfe must be at least 2 (a tuned grid needs an interior time), got 1"),
        (
            ["--solver", "ode"],
            "error: solver 'ode' chooses its own steps (adaptive); it cannot take a tuned grid",
        ),
        (["--objective", "kl"], "error: unknown --objective 'kl'; expected one of endpoint, sliced-w2"),
        (
            ["--solver", "em"],
            "error: objective 'endpoint' compares with the ODE solution; solver 'em' is stochastic "
            "(use --objective sliced-w2)",
        ),
        (
            ["--model", "digits", "--objective", "sliced-w2"],
            "error: objective 'sliced-w2' needs a model with exact data (an oracle, gmm:*); "
            "model 'digits' has none (use --objective endpoint)",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path: Path, capsys, args, message):
    out = tmp_path / "grid.json"
    assert main(["tune-grid", *args, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_solver_is_refused_before_work(tmp_path: Path, capsys):
    assert main(["tune-grid", "--solver", "no-such-solver", "--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown sampler 'no-such-solver'") and "\n" not in err


def test_a_search_without_gain_returns_the_start_grid_itself(registry):
    # one search evaluation (the start itself): no training gain, so the start is returned unchanged
    config = _config(max_evals=1)
    result = tune_grid(config, registry)
    comp = prepare(config, registry)
    start = registry.build("grid", result.start_grid, {})(comp.process, comp.steps)
    assert result.kept_start and torch.equal(result.grid, start)
    assert result.value_after == result.value_before
