"""pluggy used as pluggy: hooks go through the hook relay, firstresult resolution, `check_pending`."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy
import pytest
from typer.testing import CliRunner

import diffkit
from diffkit import PluginLoadWarning, Registry, UnknownComponentError
from diffkit.cli.main import app
from diffkit.core.errors import UnknownHookError
from diffkit.plugin.hookspecs import PROJECT


@dataclass(frozen=True, kw_only=True)
class Toy:
    """A toy component with one option."""

    rate: float = 1.0


def module(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    """An in-memory plugin module; each keyword is a hook name, its value the `@hookimpl` function."""
    plugin = types.ModuleType(name)
    for hook, function in hooks.items():
        setattr(plugin, hook, function)
    return plugin


def register_toy(name: str) -> Callable[..., None]:
    """A `diffkit_register` implementation adding sampler `name`."""
    return diffkit.hookimpl(lambda registrar: registrar.add_sampler(name, Toy))


TYPO = "diffkit plugin 'typo' skipped: unknown hook 'diffkit_registr' (did you mean 'diffkit_register'?)"


# ---- a misspelled hook: one warning naming the plugin and the hook; the rest works ---------------


def test_a_misspelled_hook_skips_the_plugin_with_one_warning_naming_it() -> None:
    typo = module(
        "typo",
        diffkit_registr=register_toy("typo-toy"),
        diffkit_resolve=diffkit.hookimpl(lambda kind, name: Toy),  # goes with its plugin
    )
    with pytest.warns(PluginLoadWarning) as caught:
        ok = module("ok", diffkit_register=register_toy("ok-toy"))
        registry = diffkit.build_registry(autoload=False, plugins=[typo, ok])
    assert [str(w.message) for w in caught] == [TYPO]
    assert registry.warnings == [TYPO]
    assert registry.plugin_manager.get_plugin("typo") is None  # skipped as a whole
    assert "ok-toy" in registry.names("sampler") and "typo-toy" not in registry.names("sampler")
    assert registry.get("sampler", "ode:rk4").plugin == "ode"  # built-ins untouched
    with pytest.raises(UnknownComponentError):  # its resolve hook is gone too
        registry.get("sampler", "anything:else")


def test_several_unknown_hooks_are_named_in_one_warning_and_an_optional_one_is_allowed() -> None:
    typos = module(
        "typos",
        diffkit_register=register_toy("never"),
        diffkit_resolv=diffkit.hookimpl(lambda kind, name: None),
        diffkit_zzz=diffkit.hookimpl(lambda: None),
    )
    newer = module(
        "newer",
        diffkit_register=register_toy("newer-toy"),
        diffkit_from_the_future=diffkit.hookimpl(optionalhook=True)(lambda: None),
    )
    with pytest.warns(PluginLoadWarning) as caught:
        registry = diffkit.build_registry(autoload=False, plugins=[typos, newer])
    assert [str(w.message) for w in caught] == [
        "diffkit plugin 'typos' skipped: unknown hooks 'diffkit_resolv' (did you mean 'diffkit_resolve'?), "
        "'diffkit_zzz'"
    ]
    assert "newer-toy" in registry.names("sampler") and "never" not in registry.names("sampler")


@pytest.fixture
def local_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], None]]:
    """`local_plugin(name, source)`: write a plugin module and load it through DIFFKIT_PLUGINS."""
    before = set(sys.modules)

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("DIFFKIT_PLUGINS", name)
        importlib.invalidate_caches()

    yield write
    for name in set(sys.modules) - before:
        del sys.modules[name]


TYPO_SOURCE = """
    import diffkit

    class Mine:
        '''Never registered: the hook name is misspelled.'''

    @diffkit.hookimpl
    def diffkit_registr(registrar):
        registrar.add_sampler("mine", Mine)
"""


def test_the_cli_prints_one_warning_line_for_a_misspelled_hook(
    local_plugin: Callable[[str, str], None],
) -> None:
    local_plugin("typo", TYPO_SOURCE)
    listed = CliRunner().invoke(app, ["list", "sampler"])
    assert listed.exit_code == 0, listed.stderr
    assert listed.stderr.splitlines() == [f"warning: {TYPO}"]
    assert "│ em " in listed.stdout and "│ mine " not in listed.stdout


def test_a_misspelled_hook_in_a_builtin_is_an_error_naming_it(
    local_plugin: Callable[[str, str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    local_plugin("typo_builtin", TYPO_SOURCE)
    monkeypatch.delenv("DIFFKIT_PLUGINS")  # loaded below as if the diffkit distribution declared it
    real = importlib.metadata.entry_points
    entry = types.SimpleNamespace(
        name="typo-builtin",
        dist=importlib.metadata.distribution("diffkit"),
        load=lambda: importlib.import_module("typo_builtin"),
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [*real(group=group), entry])
    with pytest.raises(UnknownHookError) as caught:
        diffkit.build_registry(autoload=False)
    assert str(caught.value) == (
        "plugin 'typo-builtin' (diffkit 0.1.0) implements "
        "unknown hook 'diffkit_registr' (did you mean 'diffkit_register'?)"
    )


# ---- first-result resolution through pluggy: built-ins first, then pluggy's order ----------------


def test_resolve_is_a_firstresult_hookspec_asked_builtins_first() -> None:
    assert diffkit.plugin.hookspecs.diffkit_resolve.diffkit_spec["firstresult"] is True  # type: ignore[attr-defined]
    asked: list[str] = []

    def greedy(kind: str, name: str) -> Callable[..., Any]:
        asked.append(f"greedy {name}")
        return functools.partial(Toy, rate=2.0)

    def later(name: str) -> Callable[..., Any] | None:
        asked.append(f"later {name}")
        return Toy if name == "later:x" else None

    registry = diffkit.build_registry(
        autoload=False,
        plugins=[
            module("greedy", diffkit_resolve=diffkit.hookimpl(trylast=True)(greedy)),
            module("later", diffkit_resolve=diffkit.hookimpl(tryfirst=True)(later)),
        ],
    )
    ode = registry.get("sampler", "ode:rk4")
    assert (ode.plugin, ode.distribution) == ("ode", "diffkit 0.1.0")  # tryfirst cannot jump a built-in
    assert asked == []  # a built-in answered: no third party was asked
    assert registry.get("sampler", "later:x").plugin == "later"
    assert asked == ["later later:x"]  # tryfirst before trylast, and the first answer stops the call
    found = registry.get("sampler", "other:y")
    assert (found.plugin, registry.build("sampler", "other:y", {})) == ("greedy", Toy(rate=2.0))
    assert asked[1:] == ["later other:y", "greedy other:y", "later other:y", "greedy other:y"]


# ---- every hook call goes through pluggy's relay: its tracing sees them -------------------------


def calls(traced: list[str]) -> list[str]:
    """The hook calls (first lines, without `finish` lines) among pluggy's trace writes."""
    return [line.splitlines()[0].strip() for line in traced if line.strip().startswith("diffkit_")]


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Lines of pluggy's hook tracing for every plugin manager built while the test runs."""
    lines: list[str] = []
    add_hookspecs = pluggy.PluginManager.add_hookspecs

    def add_and_trace(self: pluggy.PluginManager, module_or_class: object) -> None:
        add_hookspecs(self, module_or_class)
        self.trace.root.setwriter(lines.append)
        self.enable_tracing()

    monkeypatch.setattr(pluggy.PluginManager, "add_hookspecs", add_and_trace)
    return lines


def test_pluggy_tracing_sees_every_registration_and_resolution(traced: list[str]) -> None:
    toys = module("toys", diffkit_register=register_toy("toy"))
    registry = diffkit.build_registry(autoload=False, plugins=[toys])
    assert registry.plugin_manager.project_name == PROJECT
    implementers = registry.plugin_manager.hook.diffkit_register.get_hookimpls()
    assert len(implementers) > 20
    assert calls(traced) == ["diffkit_register [hook]"] * len(implementers)  # one relay call per plugin
    assert "toy" in registry.names("sampler")
    del traced[:]
    registry.get("sampler", "ode:rk4")
    finished = [line.strip() for line in traced if line.strip().startswith("finish diffkit_resolve")]
    assert len(calls(traced)) == len(finished) >= 1  # one relay call per plugin asked, until `ode` answers
    assert finished[:-1] == ["finish diffkit_resolve --> None [hook]"] * (len(finished) - 1)
    assert "ODESampler'>, method='rk4') [hook]" in finished[-1]
    assert traced[0].splitlines()[1:] == ["      kind: sampler", "      name: ode:rk4"]


# ---- the registry is passed to factories that ask for it --------------------------------------


def test_a_factory_declaring_registry_receives_the_registry_that_builds_it() -> None:
    def nested(process: object, *, registry: Registry, scale: float = 1.0) -> tuple[object, Registry, float]:
        """A model that builds another component from the registry it was registered in."""
        return registry.build("process", "vp", {}), registry, scale

    nest = module(
        "nest", diffkit_register=diffkit.hookimpl(lambda registrar: registrar.add_model("nest", nested))
    )
    registry = diffkit.build_registry(autoload=False, plugins=[nest])
    process, given, scale = registry.build("model", "nest", {"scale": "3"}, None)
    assert given is registry and scale == 3.0 and process == registry.build("process", "vp", {})
    summary = "A model that builds another component from the registry it was registered in."
    assert registry.get("model", "nest").summary == summary
    no_option = r"^model 'nest' has no option 'registry'; valid options: scale "
    with pytest.raises(diffkit.OptionError, match=no_option):
        registry.build("model", "nest", {"registry": "x"})


def test_the_shipped_models_use_the_registry_they_are_built_from(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = diffkit.build_registry(autoload=False)
    built: list[int] = []
    monkeypatch.setattr(
        diffkit.plugin.loading, "build_registry", lambda **kw: built.append(1)
    )  # no nested one
    model = registry.build("model", "moons", {}, registry.build("process", "vp", {}))
    assert built == [] and model.kind == "v"


# ---- models that are not registered names come from the `diffkit_resolve_model` hook -------------


def test_unregistered_models_resolve_through_the_model_hook_builtins_first() -> None:
    from diffkit.run.api import build_model

    seen: list[tuple[str, object, dict[str, Any]]] = []

    def zoo(registry: Registry, name: str, process: object, model_options: dict[str, Any]) -> object | None:
        seen.append((name, process, model_options))
        if name == "zoo:boom":
            raise RuntimeError("zoo exploded")
        if name == "zoo:usage":
            raise diffkit.UsageError("zoo: no such animal")
        return registry.build("model", "moons", {}, process) if name.startswith("zoo:") else None

    registry = diffkit.build_registry(
        autoload=False, plugins=[module("zoo", diffkit_resolve_model=diffkit.hookimpl(zoo))]
    )
    vp = registry.build("process", "vp", {})
    model = build_model(registry, "zoo:moons", {"any": "1"}, "vp", vp, {})
    assert model.kind == "v" and seen == [("zoo:moons", vp, {"any": "1"})]
    failed = r"^plugin 'zoo' \(local module\) failed to resolve model 'zoo:boom': zoo exploded$"
    with pytest.raises(diffkit.core.errors.PluginError, match=failed):
        build_model(registry, "zoo:boom", {}, "vp", vp, {})
    with pytest.raises(diffkit.UsageError, match=r"^zoo: no such animal$"):
        build_model(registry, "zoo:usage", {}, "vp", vp, {})
    with pytest.raises(UnknownComponentError, match=r"^unknown model 'zoo'"):
        build_model(registry, "zoo", {}, "vp", vp, {})  # no plugin answers: the registry's message
    assert build_model(registry, "moons", {}, "vp", vp, {}).kind == "v"  # registered names skip the hook
    assert [name for name, *_ in seen] == ["zoo:moons", "zoo:boom", "zoo:usage", "zoo"]
    with pytest.raises(diffkit.UsageError):  # a path is a checkpoint folder: the built-in answers first
        build_model(registry, "zoo/missing", {}, "vp", vp, {})
    assert len(seen) == 4  # the zoo was not asked


def test_the_api_reaches_checkpoints_only_through_the_hook() -> None:
    source = (Path(diffkit.__file__).parent / "api.py").read_text()
    assert "diffkit.train" not in source and "model_from_checkpoint" not in source
