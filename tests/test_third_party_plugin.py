"""A real third-party plugin distribution, pip-installed out of tree, seen by the registry and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

PLUGIN_SOURCE = Path(__file__).resolve().parent / "third_party_plugin"
DIFFKIT = Path(sys.executable).with_name("diffkit")  # the console script of the installed diffkit
DIST = "diffkit-example-plugin 0.1.0"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the example plugin (offline, no deps) into a fresh --target directory."""
    root = tmp_path_factory.mktemp("third_party")
    source = root / "src"  # build from a copy: setuptools writes build/ and *.egg-info next to the source
    shutil.copytree(
        PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = root / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run(
        [*pip, "--quiet", "--target", str(target), str(source)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def run(command: list[str], site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `command` with the plugin on PYTHONPATH, from `cwd`, without inherited DIFFKIT_* settings."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("DIFFKIT_")}
    clean.update(PYTHONPATH=str(site), **env)
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=clean, timeout=300)


REGISTRY_SCRIPT = """
    import json, torch, diffkit

    registry = diffkit.build_registry()
    component = registry.get("sampler", "pf-euler")
    sampler = registry.build("sampler", "pf-euler", {})
    assert isinstance(sampler, diffkit.Sampler)

    # Gaussian data N(0, s^2 I) under VP: the marginal is N(0, (alpha^2 s^2 + sigma^2) I), score exact.
    process = registry.build("process", "vp", {})
    s = 0.5

    def network(x, t, cond):
        variance = process.alpha(t) ** 2 * s**2 + process.sigma(t) ** 2
        return -x / variance.to(x).unsqueeze(1)

    model = diffkit.ScoreModel(network, kind="score", process=process, data_shape=(2,))
    grid = registry.build("grid", "uniform", {})(process, 200)
    x_init = process.prior_sample((4000, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = []
    result = sampler(model, process, x_init, grid, callback=steps.append)
    print(json.dumps({
        "plugin": component.plugin,
        "distribution": component.distribution,
        "module": type(sampler).__module__,
        "capabilities": [sampler.capabilities.stochastic, sampler.capabilities.order],
        "nfe": result.nfe,
        "steps": result.steps,
        "callback": [[info.step, info.nfe] for info in steps[:2]],
        "last_t": float(steps[-1].t),
        "std": result.x.std(dim=0).tolist(),
    }))
"""


def test_registry_finds_the_installed_plugin_and_its_sampler_works(site: Path, tmp_path: Path) -> None:
    done = run([sys.executable, "-c", textwrap.dedent(REGISTRY_SCRIPT)], site, tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["plugin"], report["distribution"]) == ("pf-euler", DIST)
    assert report["module"] == "diffkit_example_plugin.pf_euler"
    assert report["capabilities"] == [False, 1.0]
    assert (report["nfe"], report["steps"], report["callback"]) == (200, 200, [[0, 1], [1, 2]])
    assert report["last_t"] == pytest.approx(1e-4)
    assert report["std"] == pytest.approx([0.5, 0.5], abs=0.03)  # the ODE maps the prior onto the data


def test_cli_samples_with_the_plugin_sampler(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    command = [str(DIFFKIT), "sample", "--solver", "pf-euler", "--sde", "vp", "--num-samples", "256"]
    done = run([*command, "--steps", "50", "--no-plot", "--out", str(out), "--json"], site, tmp_path)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), dict)
    with np.load(out) as saved:
        assert saved["samples"].shape == (256, 2)
        assert saved["samples"].dtype == np.float32


def test_cli_list_shows_the_plugin_and_its_distribution(site: Path, tmp_path: Path) -> None:
    done = run([str(DIFFKIT), "list", "sampler"], site, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pf-euler" in done.stdout
    assert "diffkit-example-plugin" in done.stdout


def test_disabling_autoload_hides_the_plugin(site: Path, tmp_path: Path) -> None:
    script = "import diffkit; print(' '.join(diffkit.build_registry().names('sampler')))"
    env = {"DIFFKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = run([sys.executable, "-c", script], site, tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert "pf-euler" not in done.stdout.split()
    listed = run([str(DIFFKIT), "list", "sampler"], site, tmp_path, **env)
    assert listed.returncode == 0, listed.stderr
    assert "pf-euler" not in listed.stdout and "diffkit-example-plugin" not in listed.stdout
    unknown = run(
        [str(DIFFKIT), "sample", "--solver", "pf-euler", "--no-plot", "--out", "x.npz"], site, tmp_path, **env
    )
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines()[-1].startswith("error: unknown sampler 'pf-euler'")
    assert not (tmp_path / "x.npz").exists()


def test_installing_leaves_no_build_artifacts_in_the_repository(site: Path) -> None:
    assert not (PLUGIN_SOURCE / "build").exists()
    assert not list(PLUGIN_SOURCE.glob("*.egg-info"))
    assert sorted(path.name for path in site.iterdir()) == [
        "diffkit_example_plugin",
        "diffkit_example_plugin-0.1.0.dist-info",
    ]
