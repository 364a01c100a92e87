"""The CLI end to end: outputs, summaries, reproducibility and every bad-input path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diffkit.cli.main import app

runner = CliRunner()
FAST = ["--num-samples", "300", "--no-plot"]


def invoke(*args: str, env: dict[str, str] | None = None):  # noqa: ANN201
    """Run the CLI in-process and return the click Result."""
    return runner.invoke(app, list(args), env=env)


@pytest.fixture
def test_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load tests/_diffkit_test_plugins.py as a local plugin."""
    monkeypatch.setenv("DIFFKIT_PLUGINS", "_diffkit_test_plugins")


def assert_one_line_error(result, code: int, expected: str) -> None:  # noqa: ANN001
    """Exit `code`, exactly one stderr line, `expected` in it, no traceback."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_sample_writes_npz_png_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "run" / "s.npz"
    result = invoke("sample", "--sde", "vp", "--solver", "ode", "--num-samples", "500", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    with np.load(out) as data:
        assert data["samples"].dtype == np.float32 and data["samples"].shape == (500, 2)
        assert int(data["nfe"]) > 0 and float(data["seconds"]) > 0
        config = json.loads(str(data["config"]))
    assert config["process"] == "vp" and config["solver"] == "ode" and config["model"] == "gmm:ring8"
    assert config["versions"]["torch"].startswith("2.")
    assert (tmp_path / "run" / "s.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["s.npz", "s.png"]  # no temp files left
    assert "sliced w2" in result.stdout and "nfe" in result.stdout


def test_json_summary(tmp_path: Path) -> None:
    result = invoke("sample", *FAST, "--json", "--out", str(tmp_path / "s.npz"))
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["num_samples"] == 300 and summary["solver"] == "ode"
    with np.load(tmp_path / "s.npz") as data:
        assert summary["nfe"] == int(data["nfe"])
    assert 0 < summary["sliced_w2_floor"] < 1 and summary["sliced_w2"] > 0
    assert 0.85 < summary["spread_ratio"] < 1.15  # exact ODE sampler: within-mode spread of the data
    assert summary["mode_weight_tv"] < 3 * summary["mode_weight_tv_floor"] + 0.05


def test_same_seed_bit_identical_and_x_init_round_trip(tmp_path: Path) -> None:
    paths = [tmp_path / f"{name}.npz" for name in ("a", "b", "c")]
    for path in paths[:2]:
        assert (
            invoke(
                "sample", "--solver", "em", "--steps", "50", *FAST, "--seed", "3", "--out", str(path)
            ).exit_code
            == 0
        )
    with np.load(paths[0]) as a, np.load(paths[1]) as b:
        assert np.array_equal(a["samples"], b["samples"])
    noise = np.random.default_rng(0).standard_normal((40, 2))
    np.save(tmp_path / "noise.npy", noise)
    args = [
        "sample",
        "--solver",
        "ode:euler",
        "--steps",
        "20",
        "--no-plot",
        "--x-init",
        str(tmp_path / "noise.npy"),
    ]
    assert invoke(*args, "--out", str(paths[2])).exit_code == 0
    with np.load(paths[2]) as c:
        assert c["samples"].shape == (40, 2)
        assert json.loads(str(c["config"]))["x_init"] is True


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--solver", "od", "unknown sampler 'od'; did you mean: ode"),
        ("--sde", "vpp", "unknown process 'vpp'; did you mean: vp"),
        ("--model", "gmm:ring", "unknown model 'gmm:ring'; did you mean: gmm:ring8"),
        ("--grid", "karas", "unknown grid 'karas'; did you mean: karras"),
    ],
)
def test_unknown_component(tmp_path: Path, flag: str, value: str, expected: str) -> None:
    out = tmp_path / "s.npz"
    assert_one_line_error(invoke("sample", *FAST, flag, value, "--out", str(out)), 2, expected)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--solver-opt", "rtoll=1e-3"],
            "sampler 'ode' has no option 'rtoll'; valid options: method (str, default",
        ),
        (["--solver-opt", "rtol=tight"], "sampler 'ode': bad value 'tight' for option 'rtol'"),
        (["--sde-opt", "beta_max=-3"], "process 'vp': "),
        (
            ["--sde", "ve", "--sde-opt", "beta_max=3"],
            "process 've' has no option 'beta_max'; valid options: sigma_min",
        ),
        (["--model-opt", "image=maybe"], "model 'gmm:ring8': bad value 'maybe' for option 'image'"),
        (["--solver-opt", "rtol"], "--solver-opt expects KEY=VALUE, got 'rtol'"),
    ],
)
def test_bad_options(tmp_path: Path, args: list[str], expected: str) -> None:
    out = tmp_path / "s.npz"
    assert_one_line_error(invoke("sample", *FAST, *args, "--out", str(out)), 2, expected)
    assert not out.exists()


def test_impossible_composition_names_both(tmp_path: Path, test_plugins: None) -> None:
    result = invoke(
        "sample", *FAST, "--sde", "ve", "--solver", "test-discrete-only", "--out", str(tmp_path / "s.npz")
    )
    assert_one_line_error(
        result, 2, "sampler 'test-discrete-only' needs a discrete process, but process 've' is not one"
    )
    assert (
        invoke(
            "sample",
            *FAST,
            "--sde",
            "ddpm",
            "--solver",
            "test-discrete-only",
            "--out",
            str(tmp_path / "s.npz"),
        ).exit_code
        == 0
    )


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--steps", "--steps must be a positive integer, got 0"),
        ("--num-samples", "--num-samples must be a positive integer, got 0"),
        ("--batch-size", "--batch-size must be a positive integer, got 0"),
    ],
)
def test_non_positive_sizes(tmp_path: Path, flag: str, expected: str) -> None:
    out = tmp_path / "s.npz"
    assert_one_line_error(invoke("sample", "--no-plot", flag, "0", "--out", str(out)), 2, expected)
    assert not out.exists()


def test_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert_one_line_error(
        invoke("sample", *FAST, "--out", str(blocker / "s.npz")), 2, "cannot create output folder"
    )
    assert_one_line_error(invoke("sample", *FAST, "--out", str(tmp_path / "s.csv")), 2, "must end with .npz")
    assert_one_line_error(invoke("sample", *FAST, "--out", str(tmp_path)), 2, "must end with .npz")


def test_bad_x_init(tmp_path: Path) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((5, 3)))
    result = invoke(
        "sample", "--no-plot", "--x-init", str(tmp_path / "wrong.npy"), "--out", str(tmp_path / "s.npz")
    )
    assert_one_line_error(result, 2, "--x-init has shape (5, 3), but model 'gmm:ring8' needs (N, 2)")
    result = invoke(
        "sample", *FAST, "--x-init", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "s.npz")
    )
    assert_one_line_error(result, 2, "file not found")
    assert not (tmp_path / "s.npz").exists()


def test_bad_device_and_dtype(tmp_path: Path) -> None:
    assert_one_line_error(
        invoke("sample", *FAST, "--dtype", "float16", "--out", str(tmp_path / "s.npz")),
        2,
        "unknown dtype 'float16'",
    )
    assert_one_line_error(
        invoke("sample", *FAST, "--device", "tpu", "--out", str(tmp_path / "s.npz")), 2, "device"
    )


def test_nan_during_sampling_exit_1_no_file(tmp_path: Path, test_plugins: None) -> None:
    out = tmp_path / "s.npz"
    result = invoke(
        "sample", *FAST, "--model", "test-nan", "--solver", "test-euler", "--steps", "10", "--out", str(out)
    )
    # uniform grid 1.0, 0.9, ...: the first call below t = 0.5 is at t = 0.4, i.e. step 6 lands on t = 0.3
    assert_one_line_error(result, 1, "solver 'test-euler' produced NaN or Inf at step 6 (t=0.3")
    assert list(tmp_path.iterdir()) == []


def test_list_shows_components_and_distribution() -> None:
    result = invoke("list", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    names = {(row["kind"], row["name"].split()[0]) for row in rows}
    for expected in [
        ("process", "vp"),
        ("process", "ddpm-cosine"),
        ("model", "gmm:d64"),
        ("grid", "karras"),
        ("sampler", "em"),
        ("sampler", "ode"),
        ("sampler", "ode:<method>"),
        ("sampler", "sde:<method>"),
    ]:
        assert expected in names
    assert all(row["distribution"] == "diffkit 0.1.0" for row in rows)
    table = invoke("list", "solver")
    assert table.exit_code == 0 and "ode" in table.stdout and "vp" not in table.stdout.split()
    assert_one_line_error(invoke("list", "colors"), 2, "unknown component kind 'colors'")
