"""The public toolkit: built-in plugins import only public names (sampler plugins only `diffkit`
and `diffkit.solvers`), and README's plugin guide sampler (written on `diffkit.solvers`)
installs and passes the conformance kit."""

from __future__ import annotations

import ast
import importlib
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import diffkit
import diffkit.solvers
from diffkit.testing import check_convergence_order, check_sampler_conformance

ROOT = Path(__file__).resolve().parents[1]
SAMPLER_FACES = {"diffkit", "diffkit.solvers"}
# The public faces: packages whose `__init__` names its public API in `__all__`. A plugin
# imports from these only, never from the modules behind them.
FACES = SAMPLER_FACES | {
    "diffkit.losses",  # training objectives
    "diffkit.nn",  # network architectures
    "diffkit.oracles",  # exact mixture scores (the gmm plugin)
    "diffkit.peers",  # the diffusers adapter
    "diffkit.pretrained",  # shipped weights
    "diffkit.train",  # checkpoints
    "diffkit.wrappers",  # guidance and inverse-problem wrappers
}


def _diffkit_imports(path: Path) -> set[str]:
    """Every `diffkit...` module imported by `path`, at any depth (functions included)."""
    return {module for module, _ in _imported_names(path)}


def _imported_names(path: Path) -> set[tuple[str, str]]:
    """(module, name) for every `from diffkit... import name` in `path` ('' for `import M`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if node.module == "diffkit" and (ROOT / "diffkit" / alias.name).exists():
                    found.add((submodule, ""))  # `from diffkit import losses` imports a module
                else:
                    found.add((node.module, alias.name))
        elif isinstance(node, ast.Import):
            found |= {(alias.name, "") for alias in node.names}
    return {(m, n) for m, n in found if m == "diffkit" or m.startswith("diffkit.")}


def _sampler_plugins() -> list[Path]:
    return [p for p in sorted((ROOT / "plugins").glob("*.py")) if "add_sampler(" in p.read_text()]


def test_sampler_plugins_import_only_diffkit_and_solvers() -> None:
    """ast over the plugins that register samplers: `diffkit` and `diffkit.solvers` only."""
    plugins = _sampler_plugins()
    assert len(plugins) >= 10
    bad = sorted(f"{p.name}: {m}" for p in plugins for m in _diffkit_imports(p) - SAMPLER_FACES)
    assert bad == []


def test_builtin_plugins_import_only_public_names() -> None:
    """ast over plugins/*.py: every import is from a public face and names a member of its `__all__`."""
    plugins = sorted((ROOT / "plugins").glob("*.py"))
    assert len(plugins) > 20
    bad = []
    for path in plugins:
        for module, name in sorted(_imported_names(path)):
            if module not in FACES:
                bad.append(f"{path.name}: {module} is not a public face")
            elif name and name not in importlib.import_module(module).__all__:
                bad.append(f"{path.name}: {module}.{name} is not in its __all__")
    assert bad == []


def test_public_faces_export_what_they_list() -> None:
    """Each face's `__all__` names objects it really has, and it has one."""
    for face in sorted(FACES):
        module = importlib.import_module(face)
        assert module.__all__, face
        assert [n for n in module.__all__ if not hasattr(module, n)] == [], face


def test_import_scanner_sees_nested_imports(tmp_path: Path) -> None:
    """The scanner finds imports inside functions and submodules named in `from diffkit import`."""
    source = (
        "from diffkit import hookimpl, losses\n"
        "def f():\n    from diffkit.solvers.stepping import StepContext\n"
    )
    (tmp_path / "p.py").write_text(source)
    assert _diffkit_imports(tmp_path / "p.py") == {"diffkit", "diffkit.losses", "diffkit.solvers.stepping"}


def test_solvers_exports_resolve() -> None:
    """Every name in `diffkit.solvers.__all__` exists and is the implementation's own object."""
    from diffkit.solvers.exponential import MultistepSampler
    from diffkit.solvers.stepping import FixedStepSampler

    assert all(hasattr(diffkit.solvers, name) for name in diffkit.solvers.__all__)
    assert diffkit.solvers.FixedStepSampler is FixedStepSampler
    assert diffkit.solvers.MultistepSampler is MultistepSampler
    assert {"StepContext", "append_dims", "euler_maruyama_step", "finish_run"} <= set(diffkit.solvers.__all__)


def _guide_sampler() -> str:
    """The README plugin guide's complete sampler (the code block that starts `# ab2.py`)."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(# ab2\.py.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


@pytest.fixture
def ab2_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[diffkit.Registry]:
    """A registry with README's `ab2` module installed through DIFFKIT_PLUGINS."""
    (tmp_path / "readme_ab2.py").write_text(textwrap.dedent(_guide_sampler()))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DIFFKIT_PLUGINS", "readme_ab2")
    importlib.invalidate_caches()
    yield diffkit.build_registry()
    sys.modules.pop("readme_ab2", None)  # the next test installs a fresh copy


def test_guide_sampler_is_short() -> None:
    """The whole plugin module, imports and registration included, is under 40 lines."""
    assert len(_guide_sampler().splitlines()) < 40


def test_guide_sampler_passes_the_conformance_kit(ab2_registry: diffkit.Registry) -> None:
    """Installed from README's exact text: contract checks pass and the order is 2 (+-0.3)."""
    check_sampler_conformance(ab2_registry, "ab2")
    check_sampler_conformance(
        ab2_registry, "ab2", options={"denoise_final": True}, process="ve", model="gmm:ring8"
    )
    result = check_convergence_order(ab2_registry, "ab2", (32, 64, 128), model="gmm:d64", grid="quadratic")
    assert result.order == pytest.approx(1.88, abs=0.01)


def test_guide_sampler_first_step_is_euler_on_the_pf_ode(ab2_registry: diffkit.Registry) -> None:
    """One step of ab2 is one Euler step of dx/dt = f x - g^2 score / 2, to float64 rounding."""
    process = ab2_registry.build("process", "vp", {})
    model = ab2_registry.build("model", "gmm:ring8", {}, process)
    x = process.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, s = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.9, dtype=torch.float64)
    out = ab2_registry.build("sampler", "ab2", {})(model, process, x, torch.stack([t, s])).x
    velocity = process.f(t) * x - 0.5 * process.diffusion_squared(t) * model.predict(x, t).score
    torch.testing.assert_close(out, x + (s - t) * velocity, rtol=1e-12, atol=1e-12)
