"""Calling pluggy hooks the way the registry needs: one plugin at a time, and by spec only.

`relay` narrows the hook relay to one plugin (so every call still goes through pluggy, and an
answer or a failure belongs to that plugin); `unknown_hooks` names what `check_pending`
rejected; `bind_registry` hands the registry to a factory that declares a `registry` parameter.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

import pluggy


class WithRegistry(functools.partial):
    """A factory with its registry bound; equal to the same factory bound to any registry."""

    def _unbound(self) -> tuple[Any, ...]:
        return self.func, self.args, {k: v for k, v in self.keywords.items() if k != "registry"}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WithRegistry) and self._unbound() == other._unbound()

    def __hash__(self) -> int:
        return hash(self.func)


def bind_registry(factory: Callable[..., Any], registry: object) -> Callable[..., Any]:
    """`factory` with `registry=` bound if it declares that keyword-only parameter (then no option)."""
    try:
        parameter = inspect.signature(factory).parameters.get("registry")
    except (TypeError, ValueError):  # a callable without a signature takes no registry
        return factory
    if parameter is None or parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
        return factory
    return WithRegistry(factory, registry=registry)


def relay(manager: pluggy.PluginManager, hook: str, plugin: str) -> pluggy.HookCaller:
    """The hook relay `manager.hook.<hook>` narrowed to the one plugin named `plugin`.

    A firstresult hook called this way returns that plugin's answer (or None).
    """
    keep = manager.get_plugin(plugin)
    others = [impl.plugin for impl in getattr(manager.hook, hook).get_hookimpls() if impl.plugin is not keep]
    return manager.subset_hook_caller(hook, remove_plugins=others)


def unknown_hooks(manager: pluggy.PluginManager, plugin: object) -> str:
    """The hooks `plugin` implements that have no spec, each with the closest spec name."""
    callers = [caller for name, caller in vars(manager.hook).items() if not name.startswith("_")]
    specified = [caller.name for caller in callers if caller.has_spec()]
    found = []
    for caller in manager.get_hookcallers(plugin) or []:
        impls = [impl for impl in caller.get_hookimpls() if impl.plugin is plugin]
        if caller.has_spec() or all(impl.optionalhook for impl in impls):
            continue
        close = difflib.get_close_matches(caller.name, specified, n=1, cutoff=0.8)
        found.append(f"{caller.name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown hook{'s' if len(found) > 1 else ''} {', '.join(sorted(found))}"
