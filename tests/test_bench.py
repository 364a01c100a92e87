"""`diffkit bench` end to end at tiny sizes: files and schema, resume, plugins, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffkit.bench import runner as bench_runner
from diffkit.bench import sweep as bench_sweep
from diffkit.bench.plan import SolverPlan, steps_for_budget, tolerance_for_budget
from diffkit.bench.records import FIELDS
from diffkit.bench.spec import BenchConfig, run_key
from diffkit.cli.main import app

TINY = ["--num-samples", "48", "--no-plot"]


def invoke(*args: str):  # noqa: ANN201
    """Run the CLI in-process and return the click Result."""
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, code: int, expected: str) -> None:  # noqa: ANN001
    """Exit `code`, exactly one stderr line starting with `error:` and containing `expected`."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Every (solver, budget, batch) that diffkit's runner samples, warm-ups and all."""
    seen: list[tuple[str, int, int]] = []
    original = bench_runner.DiffkitRunner.run

    def run(self, spec, noise):  # noqa: ANN001, ANN202
        seen.append((spec.solver, spec.budget, noise.shape[0]))
        return original(self, spec, noise)

    monkeypatch.setattr(bench_runner.DiffkitRunner, "run", run)
    return seen


def test_sweep_writes_every_output_with_the_row_schema(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = invoke(
        "bench", "--solvers", "em,ode:euler,ode", "--nfe", "4,20", "--seeds", "0,1", "--num-samples", "48",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sorted(p.name for p in out.iterdir()) == [
        "pareto.png", "report.md", "results.csv", "results.json", "results.jsonl", "summary.json",
    ]  # fmt: skip
    rows = json.loads((out / "results.json").read_text())
    # em and ode:euler at 2 budgets x 2 seeds; ode (dopri5) cannot run in 4 NFE, only in 20
    assert len(rows) == 10 and summary["runs"] == {"computed": 10, "reused": 0}
    assert {(s["solver"], s["budget"]) for s in summary["skipped"]} == {("ode", 4)}
    with open(out / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == FIELDS and len(table) == 10
    for row in rows:
        assert set(row) == set(FIELDS) and row["status"] == "ok"
        assert row["implementation"] == "diffkit" and row["model"] == "gmm:ring8" and row["sde"] == "vp"
        assert row["config"]["solver"] == row["solver"] and row["config"]["num_samples"] == 48
        assert row["versions"]["torch"].startswith("2.") and row["machine"]["cpu_count"] >= 1
        assert row["seconds"] > 0 and row["model_seconds"] > 0 and row["samples_per_second"] > 0
        assert row["nfe"] <= row["budget"] and row["sliced_w2"] > 0 and row["sliced_w2_floor"] > 0
        assert 0 <= row["mode_tv"] <= 1 and row["spread_ratio"] > 0
        # a reference path only for deterministic samplers
        assert (row["ref_distance"] is None) == (row["solver"] == "em")
    fixed = {(r["solver"], r["budget"]): r for r in rows if r["seed"] == 0}
    assert fixed["ode:euler", 4]["steps"] == 4 and fixed["em", 20]["nfe"] == 20
    assert fixed["ode", 20]["tolerance"] is not None and fixed["ode", 20]["adaptive"] is True
    # more steps of the deterministic ODE: closer to the tight reference from the same noise
    assert fixed["ode:euler", 20]["ref_distance"] < 0.5 * fixed["ode:euler", 4]["ref_distance"]
    cells = {(c["solver"], c["budget"]): c for c in summary["cells"]}
    assert cells["em", 4]["seeds"] == 2 and cells["em", 4]["sliced_w2_std"] > 0
    assert set(summary["best"]) == {"4", "20"} and "sliced_w2" in summary["floors"]
    report = (out / "report.md").read_text()
    assert "| solver | NFE 4 | NFE 20 |" in report and "exact (floor)" in report and "*" in report
    assert (out / "pareto.png").stat().st_size > 10_000


def test_resume_skips_finished_rows(tmp_path: Path, calls: list[tuple[str, int, int]]) -> None:
    out = str(tmp_path / "b")
    first = invoke("bench", "--solvers", "em,ode:euler", "--nfe", "4,8", *TINY, "--out", out)
    assert first.exit_code == 0, first.stderr
    assert "4 runs computed, 0 reused" in first.stdout
    before = [line for line in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    calls.clear()
    again = invoke("bench", "--solvers", "em,ode:euler,ode:midpoint", "--nfe", "4,8", *TINY, "--out", out)
    assert again.exit_code == 0, again.stderr
    assert "2 runs computed, 4 reused" in again.stdout
    # only the new solver ran: one warm-up on a few samples, then its two budgets
    assert {solver for solver, _, _ in calls} == {"ode:midpoint"}
    assert [(b, n) for _, b, n in calls] == [(4, 16), (4, 48), (8, 48)]
    after = (tmp_path / "b" / "results.jsonl").read_text().splitlines()
    assert after[:4] == before and len(after) == 6  # finished rows untouched
    assert len(json.loads((tmp_path / "b" / "results.json").read_text())) == 6


def test_interrupted_sweep_keeps_rows_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "b"
    original = bench_sweep.run_one
    finished: list[str] = []

    def flaky(state, spec, plan):  # noqa: ANN001, ANN202
        if len(finished) == 3:
            raise KeyboardInterrupt
        finished.append(spec.key)
        return original(state, spec, plan)

    monkeypatch.setattr(bench_sweep, "run_one", flaky)
    args = ["bench", "--solvers", "em,ode:euler", "--nfe", "4,8", *TINY, "--out", str(out)]
    assert_one_line_error(invoke(*args), 130, "interrupted; finished rows are saved")
    rows = json.loads((out / "results.json").read_text())
    assert [row["key"] for row in rows] == finished  # saved as JSON too, nothing half-written
    with open(out / "results.jsonl", "ab") as handle:
        handle.write(b'{"key": "torn')  # a row cut off mid-write is dropped on resume
    monkeypatch.setattr(bench_sweep, "run_one", original)
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    assert "1 runs computed, 3 reused" in result.stdout
    keys = [json.loads(line)["key"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert keys[:3] == finished and len(set(keys)) == 4


def test_a_failing_solver_is_recorded_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = bench_runner.DiffkitRunner.run

    def broken(self, spec, noise):  # noqa: ANN001, ANN202
        if spec.solver == "ode:euler":
            raise RuntimeError("boom")
        return original(self, spec, noise)

    monkeypatch.setattr(bench_runner.DiffkitRunner, "run", broken)
    args = ["bench", "--solvers", "em,ode:euler", "--nfe", "4,8", *TINY, "--out", str(tmp_path / "b")]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "b" / "results.json").read_text())
    failed = [row for row in rows if row["status"] == "failed"]
    assert [row["solver"] for row in failed] == ["ode:euler", "ode:euler"]
    assert failed[0]["error"] == "RuntimeError: boom" and failed[0]["sliced_w2"] is None
    assert "(1 failed)" in (tmp_path / "b" / "report.md").read_text()
    monkeypatch.setattr(bench_runner.DiffkitRunner, "run", original)
    again = invoke(*args)
    assert "2 runs computed, 2 reused" in again.stdout
    rows = json.loads((tmp_path / "b" / "results.json").read_text())
    assert len(rows) == 4 and all(row["status"] == "ok" for row in rows)


def test_third_party_sampler_joins_the_default_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFKIT_PLUGINS", "_diffkit_test_plugins")
    result = invoke("bench", "--nfe", "6", *TINY, "--out", str(tmp_path / "b"), "--json")
    assert result.exit_code == 0, result.stderr
    solvers = {cell["solver"] for cell in json.loads(result.stdout)["cells"]}
    assert {"test-euler", "em", "ode:rk4", "sde:srk"} <= solvers
    assert "test-discrete-only" not in solvers  # needs a discrete process, and vp is not one
    assert "ode:euler" not in solvers and "sde:milstein" not in solvers  # family members: opt-in
    rows = json.loads((tmp_path / "b" / "results.json").read_text())
    (row,) = [row for row in rows if row["solver"] == "test-euler"]
    assert row["status"] == "ok" and row["nfe"] == 6 and row["ref_distance"] is not None


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--solvers", "od"], 2, "unknown sampler 'od'; did you mean"),
        (["--nfe", "10,x"], 2, "--nfe expects comma-separated integers, got '10,x'"),
        (["--nfe", "0"], 2, "--nfe expects comma-separated integers >= 1, got '0'"),
        (["--seeds", "1,1"], 2, "--seeds lists a value twice"),
        (["--metric", "fid"], 2, "unknown metric 'fid'"),
        (
            ["--solvers", "em", "--solver-opt", "ddim.eta=1"],
            2,
            "names solver 'ddim', which is not in the sweep",
        ),
        (["--solvers", "em", "--solver-opt", "eta=1"], 2, "sampler 'em' has no option 'eta'"),
        (["--solvers", "ode", "--solver-opt", "rtol=1e-3"], 2, "the bench sweeps its rtol/atol"),
        (["--solvers", "em", "--grid", "karas"], 2, "unknown grid 'karas'"),
        (["--model", "test-nan", "--solvers", "em"], 2, "model 'test-nan' has no exact data"),
        (["--model", "digits", "--solvers", "em"], 2, "model 'digits' has no exact data"),
        (["--num-samples", "1"], 2, "--num-samples must be at least 2"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], code: int, expected: str
) -> None:
    monkeypatch.setenv("DIFFKIT_PLUGINS", "_diffkit_test_plugins")
    out = tmp_path / "b"
    assert_one_line_error(invoke("bench", "--nfe", "4", *args, "--out", str(out)), code, expected)
    assert not out.exists()


def test_a_checkpoint_folder_is_found_and_refused_for_lack_of_exact_data(tmp_path: Path) -> None:
    """bench resolves models like every other command: a checkpoint is named as such, not 'unknown'."""
    from diffkit.train import TrainConfig, train

    train(TrainConfig(iters=2, batch_size=4, sample_every_checkpoint=False), tmp_path / "run")
    out = tmp_path / "b"
    result = invoke(
        "bench", "--nfe", "4", "--solvers", "em", "--model", str(tmp_path / "run"), "--out", str(out)
    )
    assert_one_line_error(result, 2, f"model {str(tmp_path / 'run')!r} has no exact data")
    assert not out.exists()


def test_budget_to_steps_and_tolerance() -> None:
    plan = SolverPlan("x", stochastic=False, adaptive=False, nfe_per_step=2, order=2.0, denoise_final=False)
    assert [steps_for_budget(plan, b) for b in (1, 2, 5, 10)] == [None, 1, 2, 5]
    denoised = SolverPlan("x", False, False, nfe_per_step=2, order=2.0, denoise_final=True)
    assert [steps_for_budget(denoised, b) for b in (2, 3, 10)] == [None, 1, 4]  # one NFE to denoise
    nfe_by_tol = {0.1: 8, 0.0316: 12, 0.01: 20, 0.00316: 33, 0.001: 60}
    tried: list[float] = []

    def calibrate(tol: float) -> int:
        tried.append(tol)
        return nfe_by_tol.get(tol, 1000)

    cache: dict[float, int] = {}
    assert tolerance_for_budget(calibrate, 5, cache, ceiling=50) is None
    assert tolerance_for_budget(calibrate, 20, cache, ceiling=50) == 0.01
    assert tolerance_for_budget(calibrate, 50, cache, ceiling=50) == 0.00316
    assert tried == [0.1, 0.0316, 0.01, 0.00316, 0.001]  # each once, and none past the ceiling


def test_run_key_covers_what_decides_a_result() -> None:
    base = BenchConfig(solvers=("ddim",))
    key = run_key(base, "diffkit", "ddim", 10, 0)
    assert key == run_key(BenchConfig(solvers=("ddim", "em")), "diffkit", "ddim", 10, 0)  # other solvers
    assert key == run_key(BenchConfig(solvers=("ddim",), metric="mmd2"), "diffkit", "ddim", 10, 0)
    changed = [
        run_key(base, "diffkers", "ddim", 10, 0),
        run_key(base, "diffkit", "ddim", 20, 0),
        run_key(base, "diffkit", "ddim", 10, 1),
        run_key(BenchConfig(num_samples=10), "diffkit", "ddim", 10, 0),
        run_key(BenchConfig(per_solver_options={"ddim": {"eta": "1"}}), "diffkit", "ddim", 10, 0),
        run_key(BenchConfig(process_options={"beta_max": "10"}), "diffkit", "ddim", 10, 0),
    ]
    assert key not in changed and len(set(changed)) == len(changed)
