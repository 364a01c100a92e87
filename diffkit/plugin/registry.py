"""The component registry: components and families by kind and name, over a pluggy PluginManager.

A plugin's `diffkit_register` receives a `Registrar` (typed `add_*` methods) and its items are
committed all at once; `Registry.get` / `Registry.build` find and build a component, asking
`diffkit_resolve` hooks for parametric families. Building a registry from the entry points is
`diffkit.plugin.loading.build_registry` (also `diffkit.build_registry`).

Hooks are called through pluggy's hook relay (`manager.hook.<name>`), narrowed with
`subset_hook_caller` to one plugin per call, so tracing, call monitoring and hook wrappers see
every call while a failure (or an answer) stays attributed to its plugin.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from diffkit.core.errors import (
    DiffkitError,
    OptionError,
    PluginError,
    UnknownComponentError,
)
from diffkit.core.time_warp import TIME_WARP_OPTIONS, resolve_shift, shifted
from diffkit.plugin.hookcalls import bind_registry, relay
from diffkit.plugin.options import OptionSpec, option_specs, parse_options, validate_options

KINDS: tuple[str, ...] = (
    "process",
    "model",
    "sampler",
    "grid",
    "model_wrapper",
    "network",
    "loss",
    "dataset",
    "parameterization",
)
GROUP = "diffkit"


@dataclass(frozen=True)
class Component:
    """A registered component: its factory and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str
    summary: str = ""


@dataclass(frozen=True)
class Family:
    """A parametric family `prefix:<method>` resolved through the `diffkit_resolve` hook."""

    kind: str
    prefix: str
    methods: tuple[str, ...]
    plugin: str
    distribution: str
    summary: str = ""


def _summary(factory: Callable[..., Any], summary: str | None) -> str:
    if summary:
        return summary
    while isinstance(factory, functools.partial) and factory.__doc__ == functools.partial.__doc__:
        factory = factory.func  # a family member: describe the underlying factory
    doc = (getattr(factory, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


class Registrar:
    """What a plugin's `diffkit_register` receives: typed `add_*` methods for one plugin."""

    def __init__(self, registry: Registry, plugin: str, distribution: str) -> None:
        self._registry = registry
        self._plugin = plugin
        self._distribution = distribution
        self._staged: list[Component | Family] = []

    def _add(self, kind: str, name: str, factory: Callable[..., Any], summary: str | None) -> None:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"invalid {kind} name {name!r}")
        summary = _summary(factory, summary)
        factory = bind_registry(factory, self._registry)
        self._staged.append(Component(kind, name, factory, self._plugin, self._distribution, summary))

    def add_process(self, name: str, factory: Callable[..., Any], *, summary: str | None = None) -> None:
        """Register a noise process: `factory(**options) -> NoiseProcess`."""
        self._add("process", name, factory, summary)

    def add_model(self, name: str, factory: Callable[..., Any], *, summary: str | None = None) -> None:
        """Register a score model: `factory(process, **options) -> ScoreModel`."""
        self._add("model", name, factory, summary)

    def add_sampler(self, name: str, factory: Callable[..., Any], *, summary: str | None = None) -> None:
        """Register a sampler: `factory(**options) -> Sampler` (usually the class itself)."""
        self._add("sampler", name, factory, summary)

    def add_grid(self, name: str, factory: Callable[..., Any], *, summary: str | None = None) -> None:
        """Register a time grid: `factory(**options) -> TimeGrid`."""
        self._add("grid", name, factory, summary)

    def add_model_wrapper(
        self, name: str, factory: Callable[..., Any], *, summary: str | None = None
    ) -> None:
        """Register a model wrapper: `factory(model, **options) -> ScoreModel`."""
        self._add("model_wrapper", name, factory, summary)

    def add_network(self, name: str, factory: Callable[..., Any], *, summary: str | None = None) -> None:
        """Register a score-network architecture: `factory(data_shape, **options) -> torch.nn.Module`."""
        self._add("network", name, factory, summary)

    def add_loss(self, name: str, factory: Callable[..., Any], *, summary: str | None = None) -> None:
        """Register a training objective: `factory(**options) -> Loss`."""
        self._add("loss", name, factory, summary)

    def add_dataset(self, name: str, factory: Callable[..., Any], *, summary: str | None = None) -> None:
        """Register a dataset: `factory(**options) -> Dataset`."""
        self._add("dataset", name, factory, summary)

    def add_parameterization(
        self, name: str, factory: Callable[..., Any], *, summary: str | None = None
    ) -> None:
        """Register a network target: `factory(**options) -> Parameterization` (usually the class)."""
        self._add("parameterization", name, factory, summary)

    def add_family(self, kind: str, prefix: str, methods: Iterable[str], *, summary: str = "") -> None:
        """Announce a parametric family `prefix:<method>` (resolved by `diffkit_resolve`)."""
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
        self._staged.append(Family(kind, prefix, tuple(methods), self._plugin, self._distribution, summary))

    def _commit(self) -> None:
        for item in self._staged:
            self._registry._insert(item)


Item = Component | Family


def _extra_options(kind: str, component: Component) -> dict[str, OptionSpec]:
    """Options the registry handles for `component`: `shift` and `mu` for a process without its own."""
    if kind != "process":
        return {}
    own = option_specs(component.factory)
    return {key: OptionSpec(key, float, None) for key in TIME_WARP_OPTIONS if key not in own}


def _key(item: Item) -> tuple[str, str]:
    return item.kind, item.name if isinstance(item, Component) else item.prefix


def describe(item: Item) -> str:
    if isinstance(item, Component):
        return f"{item.kind} {item.name!r}"
    return f"{item.kind} family {item.prefix!r}"


@dataclass
class Registry:
    """Components by kind and name, plus the plugin manager that resolves families."""

    plugin_manager: pluggy.PluginManager
    distributions: dict[str, str] = field(default_factory=dict)
    components: dict[tuple[str, str], Component] = field(default_factory=dict)
    families: dict[tuple[str, str], Family] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    builtins: set[str] = field(default_factory=set)

    def _table(self, item: Item) -> dict[tuple[str, str], Any]:
        return self.components if isinstance(item, Component) else self.families

    def _clashes(self, items: list[Item]) -> list[tuple[Item, Item]]:
        """(item, holder) for each of `items` whose name is taken, in the registry or earlier in `items`."""
        staged: dict[tuple[bool, str, str], Item] = {}
        clashes = []
        for item in items:
            key = (isinstance(item, Component), *_key(item))
            holder = self._table(item).get(key[1:]) or staged.get(key)
            if holder is not None:
                clashes.append((item, holder))
            else:
                staged[key] = item
        return clashes

    def _insert(self, item: Item) -> None:
        self._table(item)[_key(item)] = item

    def names(self, kind: str) -> list[str]:
        """Sorted names registered directly for `kind` (families excluded)."""
        return sorted(name for (k, name) in self.components if k == kind)

    def family_examples(self, kind: str) -> list[str]:
        """`prefix:method` names announced by families of `kind`."""
        return [
            f"{f.prefix}:{m}" for (k, _), f in sorted(self.families.items()) if k == kind for m in f.methods
        ]

    def get(self, kind: str, name: str) -> Component:
        """Look up `name` of `kind`, resolving parametric names through the hook."""
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
        found = self.components.get((kind, name))
        if found is not None:
            return found
        failed = f"failed to resolve {kind} {name!r}"
        plugin, factory = self._first("diffkit_resolve", failed, (), kind=kind, name=name)
        if factory is not None:
            summary = _summary(factory, None)
            factory = bind_registry(factory, self)
            return Component(kind, name, factory, plugin, self.distributions.get(plugin, "?"), summary)
        candidates = self.names(kind) + self.family_examples(kind)
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.4)
        hint = (
            f"did you mean: {', '.join(close)}?"
            if close
            else f"valid names: {', '.join(candidates) or 'none'}"
        )
        raise UnknownComponentError(f"unknown {kind} {name!r}; {hint} (see `diffkit list {kind}`)")

    def _first(
        self, hook: str, failed: str, keep: tuple[type[Exception], ...], **kwargs: Any
    ) -> tuple[str, Any]:
        """(plugin, answer) of the first plugin whose firstresult `hook` answers, else ("", None).

        Plugins are asked one at a time through the hook relay: built-ins first, then the others
        in pluggy's call order. A third-party hook raising anything but `keep` is a `PluginError`
        naming it; built-ins raise as they are.
        """
        impls = reversed(getattr(self.plugin_manager.hook, hook).get_hookimpls())  # pluggy's call order
        for impl in sorted(impls, key=lambda impl: impl.plugin_name not in self.builtins):  # built-ins first
            plugin = impl.plugin_name
            call = relay(self.plugin_manager, hook, plugin)
            try:
                answer = call(**kwargs)
            except keep:
                raise
            except Exception as error:
                if plugin in self.builtins:
                    raise
                where = f"plugin {plugin!r} ({self.distributions.get(plugin, '?')})"
                raise PluginError(f"{where} {failed}: {error}") from None
            if answer is not None:
                return plugin, answer
        return "", None

    def resolve_model(
        self,
        name: str,
        process_name: str,
        process: Any,
        process_options: Mapping[str, Any],
        model_options: Mapping[str, Any],
    ) -> Any:
        """The model `name` on `process` from the `diffkit_resolve_model` hook (e.g. a checkpoint
        folder), or None if no plugin knows `name`. Ask `get("model", name)` first."""
        _, model = self._first(
            "diffkit_resolve_model",
            f"failed to resolve model {name!r}",
            (DiffkitError,),
            registry=self,
            name=name,
            process_name=process_name,
            process=process,
            process_options=dict(process_options),
            model_options=dict(model_options),
        )
        return model

    def options(self, kind: str, name: str) -> dict[str, OptionSpec]:
        """The options component `name` takes, by name: its factory's and the registry's (shift, mu)."""
        component = self.get(kind, name)
        return option_specs(component.factory) | _extra_options(kind, component)

    def parse_options(self, kind: str, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options of component `name` parsed and typed as `build` does (OptionError if bad)."""
        component = self.get(kind, name)
        return parse_options(kind, name, component.factory, options, extra=_extra_options(kind, component))

    def build(self, kind: str, name: str, options: Mapping[str, Any], *args: Any) -> Any:
        """Resolve, parse options and construct a component; bad values raise OptionError.

        Every process also takes `shift` (or `mu`, shift = exp(mu)) unless it declares an option
        of that name itself: the built process is then re-timed by the SD3/Flux time warp
        (`diffkit.core.time_warp`). Any other exception of a third-party factory is a
        `PluginError` naming its plugin.
        """
        component = self.get(kind, name)
        extra = _extra_options(kind, component)
        kwargs = parse_options(kind, name, component.factory, options, extra=extra)
        warp = {key: kwargs.pop(key) for key in extra if key in kwargs}
        try:
            shift = resolve_shift(warp.get("shift"), warp.get("mu")) if warp else None
            built = component.factory(*args, **kwargs)
            validate_options(built)  # declared option types and ranges (dataclass field metadata)
            return built if shift is None else shifted(built, shift)
        except (ValueError, TypeError) as error:
            raise OptionError(f"{kind} {name!r}: {error}") from None
        except DiffkitError:
            raise
        except Exception as error:
            if component.plugin in self.builtins:
                raise
            where = f"plugin {component.plugin!r}, {component.distribution}"
            raise PluginError(f"{kind} {name!r} ({where}) failed to build: {error}") from None

    def listing(self, kind: str | None = None) -> list[Component | Family]:
        """Every component and family (of `kind`, if given), sorted by kind and name."""
        items: list[Component | Family] = [c for (k, _), c in self.components.items() if kind in (None, k)]
        items += [f for (k, _), f in self.families.items() if kind in (None, k)]
        return sorted(
            items, key=lambda i: (KINDS.index(i.kind), getattr(i, "name", getattr(i, "prefix", "")))
        )
