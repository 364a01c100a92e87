"""The diffkit wheel: namespaced packages only, every built-in plugin an entry point that loads."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST_INFO = "diffkit-0.1.0.dist-info"
UNBUILT = ("tests", "bench", "build", "dist", "*.egg-info", "__pycache__", ".*", "samples.*")  # top level
EVERYWHERE = shutil.ignore_patterns("__pycache__", "*.egg-info")


def _unbuilt(folder: str, names: list[str]) -> set[str]:
    """Skip the top-level folders that are not part of the build (diffkit/bench is)."""
    top = shutil.ignore_patterns(*UNBUILT)(folder, names) if Path(folder) == ROOT else set()
    return set(top) | set(EVERYWHERE(folder, names))


pytestmark = pytest.mark.slow


def builtin_plugins() -> set[str]:
    """Module names of the built-in plugins in the source tree (`plugins/*.py`)."""
    return {path.stem for path in (ROOT / "plugins").glob("*.py") if path.stem != "__init__"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the diffkit wheel offline from a copy of the source tree (the build writes build/)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    shutil.copytree(ROOT, source, ignore=_unbuilt)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    done = subprocess.run([*pip, "-w", str(root / "wheel"), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (root / "wheel").glob("diffkit-0.1.0-*.whl")
    return built


@pytest.fixture(scope="module")
def target(wheel: Path) -> Path:
    """Install the wheel (no deps) into a fresh --target directory."""
    site = wheel.parent.parent / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"]
    done = subprocess.run([*pip, "--target", str(site), str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return site


def entry_points_of(wheel: Path) -> configparser.ConfigParser:
    """The wheel's entry_points.txt, parsed."""
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep names as written
    with zipfile.ZipFile(wheel) as archive:
        parser.read_string(archive.read(f"{DIST_INFO}/entry_points.txt").decode())
    return parser


def test_wheel_installs_only_the_namespaced_diffkit_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {"diffkit", DIST_INFO}
    for package, folder in (("diffkit/plugins", "plugins"), ("diffkit/cli", "cli")):
        expected = {f"{package}/{path.name}" for path in (ROOT / folder).glob("*.py")}
        assert expected <= set(names), package
        assert f"{package}/__init__.py" in expected
    assert not [name for name in names if name.endswith((".pyc", ".egg-info"))]
    core = {f"diffkit/{path.relative_to(ROOT / 'diffkit')}" for path in (ROOT / "diffkit").rglob("*.py")}
    assert core <= set(names), sorted(core - set(names))  # every core subpackage is listed in pyproject


def test_wheel_declares_every_builtin_plugin_and_the_console_script(wheel: Path) -> None:
    entry_points = entry_points_of(wheel)
    assert dict(entry_points["diffkit"]) == {name: f"diffkit.plugins.{name}" for name in builtin_plugins()}
    assert dict(entry_points["console_scripts"]) == {"diffkit": "diffkit.cli.main:main"}


LOAD_SCRIPT = """
    import importlib.metadata, json, sys
    import diffkit
    dist = importlib.metadata.distribution("diffkit")
    modules = {ep.name: ep.load().__file__ for ep in dist.entry_points if ep.group == "diffkit"}
    script = [ep for ep in dist.entry_points if ep.group == "console_scripts"]
    print(json.dumps({
        "diffkit": diffkit.__file__,
        "dist": str(dist.locate_file("")),
        "modules": modules,
        "script": script[0].load().__module__,
        "script_file": sys.modules[script[0].load().__module__].__file__,
    }))
"""


def test_installed_wheel_loads_every_entry_point_from_the_install(target: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DIFFKIT_")}
    env["PYTHONPATH"] = str(target)
    assert ROOT not in tmp_path.parents  # outside the repository: nothing found through the cwd
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOAD_SCRIPT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert Path(report["dist"]) == target
    assert Path(report["diffkit"]) == target / "diffkit" / "__init__.py"
    assert set(report["modules"]) == builtin_plugins()
    for name, file in report["modules"].items():
        assert Path(file) == target / "diffkit" / "plugins" / f"{name}.py"
    assert report["script"] == "diffkit.cli.main"
    assert Path(report["script_file"]) == target / "diffkit" / "cli" / "main.py"


def test_wheel_ships_the_metric_classifiers(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in ("digits", "mnist"):
        for suffix in (".safetensors", ".json"):
            assert f"diffkit/classifier/weights/{name}{suffix}" in names


def test_wheel_ships_the_pretrained_models_and_the_install_loads_them(target: Path, wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in ("digits", "digits-cond", "moons", "photos"):
        for file in ("model.safetensors", "config.json"):
            assert f"diffkit/pretrained/{name}/{file}" in names
    script = (
        "import diffkit; from diffkit.plugins.pretrained import load_pretrained\n"
        "registry = diffkit.build_registry()\n"
        "model = load_pretrained('moons', registry.build('process', 'vp', {}), registry)\n"
        "import diffkit.pretrained as p; print(p.__file__, model.kind)"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("DIFFKIT_")}
    env["PYTHONPATH"] = str(target)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=target, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(target / "diffkit" / "pretrained" / "__init__.py"), "v"]
