"""Building a registry from the `diffkit` entry-point group (one per CLI command or API call).

Built-in plugins in `diffkit.plugins` are entry points of the `diffkit` distribution and load
exactly like third-party ones; third-party autoload can be disabled (`autoload=False` or env
`DIFFKIT_DISABLE_PLUGIN_AUTOLOAD=1`) and any plugin blocked by its entry-point name (`block=` or
env `DIFFKIT_BLOCK_PLUGINS=a,b`). Env `DIFFKIT_PLUGINS=mod,...` registers extra plugin modules by
import name (handy for local, uninstalled plugins).

Broken third-party plugins are isolated: one that fails to import, implements a hook diffkit
does not specify (pluggy's `check_pending`, e.g. a misspelled `diffkit_registr`), raises in its
`diffkit_register` hook, or registers a name that is already taken is skipped as a whole (none
of its components, families or resolve hooks stay) with one `PluginLoadWarning` naming it (and,
for a collision, each taken name and the plugin that owns it). Built-ins register first and are
asked first by `Registry.get`, so they always win; the first third-party plugin to register a
name keeps it. Two built-ins registering one name is a bug in diffkit and raises
`DuplicateComponentError`; a built-in with an unknown hook raises `UnknownHookError`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterable

import pluggy

from diffkit.core.errors import DuplicateComponentError, PluginLoadWarning, UnknownHookError
from diffkit.plugin import hookspecs
from diffkit.plugin.hookcalls import relay, unknown_hooks
from diffkit.plugin.registry import GROUP, Registrar, Registry, describe

_ENV_AUTOLOAD = "DIFFKIT_DISABLE_PLUGIN_AUTOLOAD"
_ENV_BLOCK = "DIFFKIT_BLOCK_PLUGINS"
_ENV_PLUGINS = "DIFFKIT_PLUGINS"


def _warn(registry: Registry, message: str) -> None:
    registry.warnings.append(message)
    warnings.warn(message, PluginLoadWarning, stacklevel=3)


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _is_builtin(dist: importlib.metadata.Distribution | None) -> bool:
    return dist is not None and dist.metadata["Name"].lower() == "diffkit"


def build_registry(
    *,
    block: Iterable[str] = (),
    autoload: bool | None = None,
    plugins: Iterable[object | str] = (),
) -> Registry:
    """Build a fresh registry from the `diffkit` entry points.

    Args:
        block: entry-point names of plugins not to load (built-ins included).
        autoload: load third-party entry points (default: True unless
            `DIFFKIT_DISABLE_PLUGIN_AUTOLOAD` is set). Built-ins always load.
        plugins: extra plugin objects or module import names to register.

    A plugin that fails to import or register, implements a hook with no spec (pluggy's
    `check_pending`), or registers a name already taken, is skipped as a whole with one
    `PluginLoadWarning` naming it (built-ins register first and win).

    Raises:
        DuplicateComponentError: two built-in plugins register the same name (a bug in diffkit).
        UnknownHookError: a built-in plugin implements a hook with no spec (a bug in diffkit).
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager)
    for name in [*block, *_env_list(_ENV_BLOCK)]:
        manager.set_blocked(name)
    if autoload is None:
        autoload = not os.environ.get(_ENV_AUTOLOAD)

    # built-ins first, so a third-party entry point cannot shadow one by reusing its name
    entry_points = importlib.metadata.entry_points(group=GROUP)
    for entry_point in sorted(entry_points, key=lambda ep: not _is_builtin(ep.dist)):
        dist = entry_point.dist
        if not (_is_builtin(dist) or autoload) or manager.is_blocked(entry_point.name):
            continue
        label = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown distribution"
        if manager.get_plugin(entry_point.name) is not None:
            taken = registry.distributions.get(entry_point.name, "?")
            _warn(registry, f"diffkit plugin {entry_point.name!r} ({label}) skipped: name taken by {taken}")
            continue
        try:
            manager.register(entry_point.load(), name=entry_point.name)
        except Exception as error:  # a broken plugin must not break the others
            _warn(registry, f"diffkit plugin {entry_point.name!r} ({label}) failed to load: {error}")
            continue
        registry.distributions[entry_point.name] = label
        if _is_builtin(dist):
            registry.builtins.add(entry_point.name)

    for plugin in [*plugins, *_env_list(_ENV_PLUGINS)]:
        plugin_name = plugin if isinstance(plugin, str) else getattr(plugin, "__name__", repr(plugin))
        if manager.is_blocked(plugin_name):
            continue
        try:
            obj = importlib.import_module(plugin) if isinstance(plugin, str) else plugin
            manager.register(obj, name=plugin_name)
        except Exception as error:
            _warn(registry, f"diffkit plugin {plugin_name!r} failed to load: {error}")
            continue
        registry.distributions[plugin_name] = "local module"

    _check_hooks(registry)
    # registration order (built-ins, third parties, then `plugins`; tryfirst/trylast cannot
    # move a third party before a built-in), so the earlier plugin keeps a name
    impls = manager.hook.diffkit_register.get_hookimpls()
    for impl in sorted(impls, key=lambda impl: impl.plugin_name not in registry.builtins):
        _register(registry, impl)
    return registry


def _label(registry: Registry, name: str) -> str:
    """`diffkit plugin 'name' (distribution)`, as warnings name a plugin (local modules bare)."""
    distribution = registry.distributions.get(name, "?")
    return f"diffkit plugin {name!r}" + ("" if distribution == "local module" else f" ({distribution})")


def _check_hooks(registry: Registry) -> None:
    """pluggy's `check_pending` until it passes: a plugin implementing a hook diffkit does not
    specify (e.g. a misspelled `diffkit_registr`) is skipped with one warning naming the plugin
    and the hook; in a built-in plugin it is a bug in diffkit and raises `UnknownHookError`."""
    manager = registry.plugin_manager
    while True:
        try:
            manager.check_pending()
            return
        except pluggy.PluginValidationError as error:
            plugin = error.plugin
        name = manager.get_name(plugin)
        unknown = unknown_hooks(manager, plugin)
        if name is None or name in registry.builtins:
            where = f"plugin {name!r} ({registry.distributions.get(name or '', '?')})"
            raise UnknownHookError(f"{where} implements {unknown}")
        _warn(registry, f"{_label(registry, name)} skipped: {unknown}")
        manager.unregister(name=name)


def _register(registry: Registry, impl: pluggy.HookImpl) -> None:
    """Run one plugin's `diffkit_register`; commit all of it, or skip all of it with a warning."""
    name = impl.plugin_name
    distribution = registry.distributions.get(name, "?")
    registrar = Registrar(registry, name, distribution)
    plugin = _label(registry, name)
    try:
        relay(registry.plugin_manager, "diffkit_register", name)(registrar=registrar)
    except Exception as error:
        _warn(registry, f"{plugin} failed to register: {error}")
        registry.plugin_manager.unregister(name=name)  # its other hooks (resolve) go too
        return
    clashes = registry._clashes(registrar._staged)
    if clashes and name in registry.builtins:
        item, holder = clashes[0]
        raise DuplicateComponentError(
            f"{describe(item)} is registered twice: by plugin {holder.plugin!r} "
            f"({holder.distribution}) and by plugin {name!r} ({distribution})"
        )
    if clashes:
        taken = "; ".join(
            f"{describe(item)} is already registered by plugin {holder.plugin!r} ({holder.distribution})"
            for item, holder in clashes
        )
        _warn(registry, f"{plugin} skipped: {taken}")
        registry.plugin_manager.unregister(name=name)
        return
    registrar._commit()
