"""Registry and plugin loading: entry points, blocking, autoload, failures, resolution, options."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pluggy
import pytest

import diffkit
from diffkit import OptionError, PluginLoadWarning, UnknownComponentError
from diffkit.plugin.registry import Registrar, Registry

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_DIST = "diffkit 0.1.0"


def builtin_entry_points() -> dict[str, str]:
    """Entry points of group `diffkit` declared by the installed `diffkit` distribution."""
    return {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="diffkit")
        if ep.dist is not None and ep.dist.metadata["Name"] == "diffkit"
    }


def plugin(
    name: str,
    register: Callable[[Registrar], None] | None = None,
    resolve: Callable[..., Any] | None = None,
    *,
    tryfirst: bool = False,
) -> types.ModuleType:
    """An in-memory plugin module with the given hook implementations."""
    module = types.ModuleType(name)
    if register is not None:
        module.diffkit_register = diffkit.hookimpl(register)
    if resolve is not None:
        module.diffkit_resolve = diffkit.hookimpl(tryfirst=tryfirst)(resolve)
    return module


def only(plugins: list[types.ModuleType]) -> Registry:
    """A registry of just `plugins` (every built-in blocked, no third-party autoload)."""
    return diffkit.build_registry(block=builtin_entry_points(), autoload=False, plugins=plugins)


@dataclass(frozen=True, kw_only=True)
class ToySampler:
    """A toy sampler with typed options."""

    rate: float = 1.0
    steps: int = 10
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    method: str = "plain"

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"need rate > 0, got {self.rate}")


# ---- built-ins are ordinary entry-point plugins ----------------------------------------------


def test_every_builtin_module_is_an_entry_point_of_the_diffkit_distribution() -> None:
    modules = {path.stem for path in (ROOT / "plugins").glob("*.py") if path.stem != "__init__"}
    expected = {name: f"diffkit.plugins.{name}" for name in modules}
    assert builtin_entry_points() == expected
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["diffkit"]
    assert declared == expected


def test_builtin_components_name_their_plugin_and_distribution() -> None:
    registry = diffkit.build_registry(autoload=False)
    assert registry.warnings == []
    items = registry.listing()
    assert {item.plugin for item in items} == set(builtin_entry_points())  # each plugin adds something
    assert {item.distribution for item in items} == {BUILTIN_DIST}
    vp = registry.get("process", "vp")
    assert (vp.plugin, vp.distribution, vp.factory.__module__) == ("vp", BUILTIN_DIST, "diffkit.plugins.vp")
    assert registry.get("grid", "karras").plugin == "grids"


def test_cli_list_shows_each_builtin_with_its_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from diffkit.cli.main import app

    monkeypatch.setenv("DIFFKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = CliRunner().invoke(app, ["list", "process", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"vp", "ve", "subvp"} <= set(rows)
    assert {(row["kind"], row["distribution"]) for row in rows.values()} == {("process", BUILTIN_DIST)}
    assert (rows["vp"]["plugin"], rows["ve"]["plugin"]) == ("vp", "ve")


# ---- no registry at import time --------------------------------------------------------------


def test_importing_diffkit_and_its_plugins_builds_no_plugin_manager() -> None:
    script = """
        import importlib, pkgutil, pluggy
        made = []
        original = pluggy.PluginManager.__init__
        def counting(self, *args, **kwargs):
            made.append(args)
            original(self, *args, **kwargs)
        pluggy.PluginManager.__init__ = counting
        import diffkit, diffkit.plugins, diffkit.cli.main
        for info in pkgutil.iter_modules(diffkit.plugins.__path__):
            importlib.import_module(f"diffkit.plugins.{info.name}")
        print(len(made), end=" ")
        diffkit.build_registry(autoload=False)
        print(len(made))  # the counter works: one manager per build_registry()
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 1"


def test_plugin_modules_hold_no_registry_and_registering_leaves_them_untouched() -> None:
    modules = [importlib.import_module(value) for value in builtin_entry_points().values()]

    def snapshot() -> dict[str, dict[str, tuple[int, int]]]:
        return {
            module.__name__: {
                key: (id(value), len(value) if isinstance(value, (dict, list, set)) else -1)
                for key, value in vars(module).items()
                if not key.startswith("__")  # e.g. __warningregistry__
            }
            for module in modules
        }

    for module in [diffkit, *modules]:
        for value in vars(module).values():
            assert not isinstance(value, (pluggy.PluginManager, Registry, Registrar)), module.__name__
    before = snapshot()
    first, second = diffkit.build_registry(autoload=False), diffkit.build_registry(autoload=False)
    assert snapshot() == before
    assert first is not second and first.plugin_manager is not second.plugin_manager
    assert first.components == second.components and first.components is not second.components
    first.components.clear()
    assert second.names("process")


# ---- duplicates and blocking -----------------------------------------------------------------


def test_a_duplicate_name_skips_the_later_plugin_whole_with_one_warning_naming_both() -> None:
    def add_twin_and_own(registrar: Registrar) -> None:
        registrar.add_sampler("twin", ToySampler)
        registrar.add_sampler("own", ToySampler)

    first = plugin("first", lambda registrar: registrar.add_sampler("twin", ToySampler))
    with pytest.warns(PluginLoadWarning) as caught:
        registry = only([first, plugin("second", add_twin_and_own)])
    assert [str(w.message) for w in caught] == [
        "diffkit plugin 'second' skipped: "
        "sampler 'twin' is already registered by plugin 'first' (local module)"
    ]
    assert registry.get("sampler", "twin").plugin == "first"
    assert registry.names("sampler") == ["twin"]  # nothing of `second` stays


def test_duplicate_of_a_builtin_is_skipped_and_the_builtin_wins() -> None:
    clash = plugin("clash", lambda registrar: registrar.add_process("vp", ToySampler))
    with pytest.warns(PluginLoadWarning) as caught:
        registry = diffkit.build_registry(autoload=False, plugins=[clash])
    assert [str(w.message) for w in caught] == [
        "diffkit plugin 'clash' skipped: process 'vp' is already registered by plugin 'vp' (diffkit 0.1.0)"
    ]
    assert registry.get("process", "vp").distribution == BUILTIN_DIST


def test_block_argument_removes_a_builtin() -> None:
    registry = diffkit.build_registry(block=["ve"])
    assert "ve" not in registry.names("process")
    assert {"vp", "subvp"} <= set(registry.names("process"))
    assert registry.plugin_manager.is_blocked("ve")


def test_block_environment_variable_removes_builtins_and_local_plugins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DIFFKIT_BLOCK_PLUGINS", "ve, subvp,local")
    local = plugin("local", lambda registrar: registrar.add_sampler("toy", ToySampler))
    registry = diffkit.build_registry(plugins=[local])
    assert "vp" in registry.names("process")
    assert not {"ve", "subvp"} & set(registry.names("process"))
    assert "toy" not in registry.names("sampler")


# ---- third-party distributions: autoload and failures --------------------------------------


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Install (on sys.path) a distribution `fake-dist 0.0.1` with the given entry points and modules."""
    before = set(sys.modules)

    def install(entry_points: dict[str, str], modules: dict[str, str]) -> None:
        info = tmp_path / "fake_dist-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-dist\nVersion: 0.0.1\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[diffkit]\n{lines}")
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()

    yield install
    for name in set(sys.modules) - before:
        del sys.modules[name]
    importlib.invalidate_caches()


GOOD_PLUGIN = """
    from dataclasses import dataclass
    import diffkit

    @dataclass(frozen=True, kw_only=True)
    class FakeSampler:
        '''A fake third-party sampler.'''

    @diffkit.hookimpl
    def diffkit_register(registrar):
        registrar.add_sampler("fake", FakeSampler)
"""


def test_third_party_entry_points_load_unless_autoload_is_disabled(
    fake_dist: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dist({"fake-sampler": "fake_good_a"}, {"fake_good_a": GOOD_PLUGIN})
    component = diffkit.build_registry().get("sampler", "fake")
    assert (component.plugin, component.distribution, component.summary) == (
        "fake-sampler",
        "fake-dist 0.0.1",
        "A fake third-party sampler.",
    )
    for registry in (diffkit.build_registry(autoload=False), _with_env(monkeypatch)):
        assert "fake" not in registry.names("sampler")
        assert registry.get("process", "vp").distribution == BUILTIN_DIST  # built-ins still load


def _with_env(monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("DIFFKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    return diffkit.build_registry()


def test_a_plugin_that_fails_to_import_is_a_warning_naming_it(fake_dist: Callable[..., None]) -> None:
    fake_dist(
        {"broken": "fake_broken_b", "fake-sampler": "fake_good_b"},
        {"fake_broken_b": "raise ImportError('boom: needs a missing library')", "fake_good_b": GOOD_PLUGIN},
    )
    expected = "diffkit plugin 'broken' (fake-dist 0.0.1) failed to load: boom: needs a missing library"
    with pytest.warns(PluginLoadWarning) as caught:
        registry = diffkit.build_registry()
    assert [str(w.message) for w in caught] == [expected]
    assert registry.warnings == [expected]
    assert "fake" in registry.names("sampler")
    assert registry.build("process", "vp", {}).t_max == 1.0


def test_a_third_party_entry_point_cannot_shadow_a_builtin_name(fake_dist: Callable[..., None]) -> None:
    fake_dist({"vp": "fake_good_c"}, {"fake_good_c": GOOD_PLUGIN})
    with pytest.warns(
        PluginLoadWarning, match=r"^diffkit plugin 'vp' \(fake-dist 0\.0\.1\) skipped: name taken"
    ):
        registry = diffkit.build_registry()
    assert registry.get("process", "vp").distribution == BUILTIN_DIST
    assert "fake" not in registry.names("sampler")


def test_a_plugin_whose_register_raises_is_a_warning_and_is_dropped() -> None:
    def bad_register(registrar: Registrar) -> None:
        registrar.add_sampler("half-done", ToySampler)
        raise RuntimeError("bad register")

    bad = plugin("bad", bad_register, resolve=lambda kind, name: ToySampler)
    good = plugin("good", lambda registrar: registrar.add_sampler("toy", ToySampler))
    with pytest.warns(PluginLoadWarning, match=r"^diffkit plugin 'bad' failed to register: bad register$"):
        registry = only([bad, good])
    assert registry.names("sampler") == ["toy"]  # nothing staged by `bad` survives
    with pytest.raises(UnknownComponentError):  # nor its resolve hook
        registry.get("sampler", "anything")


def test_a_local_plugin_module_that_cannot_be_imported_is_a_warning() -> None:
    with pytest.warns(
        PluginLoadWarning, match=r"^diffkit plugin 'no_such_module_xyz' failed to load: No module"
    ):
        registry = diffkit.build_registry(autoload=False, plugins=["no_such_module_xyz"])
    assert "vp" in registry.names("process")


# ---- first-result resolution of parametric names --------------------------------------------


def family_plugin() -> types.ModuleType:
    """Plugin `fam`: a directly registered `solo` sampler and a family `fam:<a|b>`."""

    def register(registrar: Registrar) -> None:
        registrar.add_sampler("solo", ToySampler)
        registrar.add_family("sampler", "fam", ["a", "b"], summary="toy family")

    def resolve(kind: str, name: str) -> Callable[..., Any] | None:
        prefix, _, method = name.partition(":")
        if kind == "sampler" and prefix == "fam" and method in ("a", "b"):
            return functools.partial(ToySampler, method=method)
        return None

    return plugin("fam", register, resolve)


def test_family_names_resolve_through_the_first_non_none_answer() -> None:
    asked: list[str] = []

    def decline(kind: str, name: str) -> None:
        asked.append(name)

    def special(name: str) -> Callable[..., Any] | None:  # an impl may take a subset of the arguments
        return functools.partial(ToySampler, method="special") if name == "fam:b" else None

    registry = only(
        [
            family_plugin(),
            plugin("decline", resolve=decline, tryfirst=True),
            plugin("special", resolve=special),
        ]
    )
    first = registry.get("sampler", "fam:a")
    assert (first.plugin, first.distribution) == ("fam", "local module")
    assert registry.build("sampler", "fam:a", {}) == ToySampler(method="a")
    assert registry.get("sampler", "fam:b").plugin == "special"  # registered later, so asked earlier
    assert registry.build("sampler", "fam:b", {"rate": "2"}) == ToySampler(method="special", rate=2.0)
    assert asked == ["fam:a", "fam:a", "fam:b", "fam:b"]
    assert registry.get("sampler", "solo").factory is ToySampler  # direct names skip the hook
    assert asked == ["fam:a", "fam:a", "fam:b", "fam:b"]
    with pytest.raises(OptionError, match=r"^sampler 'fam:a' has no option 'method'"):
        registry.build("sampler", "fam:a", {"method": "x"})  # bound by the family


def test_unknown_names_raise_naming_the_kind_and_the_closest_names() -> None:
    registry = only([family_plugin()])
    with pytest.raises(UnknownComponentError) as caught:
        registry.get("sampler", "fam:aa")
    assert (
        str(caught.value)
        == "unknown sampler 'fam:aa'; did you mean: fam:a, fam:b? (see `diffkit list sampler`)"
    )
    with pytest.raises(UnknownComponentError) as caught:
        registry.get("sampler", "zzzzzz")
    assert (
        str(caught.value)
        == "unknown sampler 'zzzzzz'; valid names: solo, fam:a, fam:b (see `diffkit list sampler`)"
    )
    with pytest.raises(UnknownComponentError, match=r"^unknown grid 'x'; valid names: none "):
        registry.get("grid", "x")
    with pytest.raises(ValueError, match=r"^unknown component kind 'solver'"):
        registry.get("solver", "solo")


def test_builtin_families_resolve_through_their_plugin() -> None:
    registry = diffkit.build_registry(autoload=False)
    for name, plugin_name in (("ode:euler", "ode"), ("sde:euler", "sde")):
        component = registry.get("sampler", name)
        assert (component.name, component.plugin, component.distribution) == (name, plugin_name, BUILTIN_DIST)
    assert {("sampler", "ode"), ("sampler", "sde")} <= set(registry.families)


def test_builtin_unknown_process_suggests_close_builtin_names() -> None:
    with pytest.raises(UnknownComponentError, match=r"^unknown process 'vpp'; did you mean: vp\b"):
        diffkit.build_registry(autoload=False).get("process", "vpp")


# ---- building with string options --------------------------------------------------------------


def test_build_parses_string_options_through_keyword_only_parameters() -> None:
    registry = only([plugin("toys", lambda registrar: registrar.add_sampler("toy", ToySampler))])
    built = registry.build("sampler", "toy", {"rate": "0.5", "steps": "3", "flag": "yes", "mode": "b"})
    assert built == ToySampler(rate=0.5, steps=3, flag=True, mode="b")
    assert registry.build("sampler", "toy", {"rate": 2}) == ToySampler(rate=2.0)
    with pytest.raises(OptionError) as caught:
        registry.build("sampler", "toy", {"nope": "1"})
    assert str(caught.value) == (
        "sampler 'toy' has no option 'nope'; valid options: rate (float, default 1.0), "
        "steps (int, default 10), flag (bool, default False), mode (a|b, default 'a'), "
        "method (str, default 'plain')"
    )
    with pytest.raises(
        OptionError, match=r"^sampler 'toy': bad value 'c' for option 'mode' \(expected one of a, b\)"
    ):
        registry.build("sampler", "toy", {"mode": "c"})
    with pytest.raises(OptionError, match=r"^sampler 'toy': need rate > 0, got -1\.0$"):
        registry.build("sampler", "toy", {"rate": "-1"})


def test_build_passes_positional_arguments_before_the_options() -> None:
    def make_model(process: object, *, scale: float = 1.0) -> tuple[object, float]:
        """A toy model factory."""
        return process, scale

    registry = only([plugin("models", lambda registrar: registrar.add_model("toy", make_model))])
    assert registry.build("model", "toy", {"scale": "2.5"}, "the-process") == ("the-process", 2.5)
    assert registry.get("model", "toy").summary == "A toy model factory."
