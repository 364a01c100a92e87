"""The diffkit hook specifications (pluggy project name "diffkit").

A plugin is any module or object with functions marked `@hookimpl`, registered through the
`diffkit` entry-point group (built-ins use exactly the same path)::

    # pyproject.toml of a plugin distribution
    [project.entry-points.diffkit]
    my-sampler = "my_package.my_module"

    # my_package/my_module.py
    from diffkit import hookimpl

    @hookimpl
    def diffkit_register(registrar):
        registrar.add_sampler("my-sampler", MySampler)

A sampler's result is checked after every call (`diffkit.sampler.check_result`): a wrong
shape, dtype, row count or a non-finite value is a `PluginError` naming the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from diffkit.registry import Registrar

PROJECT = "diffkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------


@hookspec
def diffkit_register(registrar: Registrar) -> None:
    """Add components to the registry being built.

    :param registrar: the typed registrar of this plugin: call `add_process`,
        `add_sampler`, `add_grid`, `add_model`, `add_model_wrapper`, `add_network`,
        `add_loss`, `add_dataset` and `add_family`.

    Called once per `build_registry()`; must not keep global state. Registration is all or
    nothing: if the hook raises, or adds a name that is already taken (built-ins register
    first and always keep theirs), the whole plugin is skipped with one `PluginLoadWarning`
    naming it and, for a taken name, the plugin that holds it. Two built-ins registering one
    name raise `DuplicateComponentError`.
    """


# --------------------------------------------------------------------------------------
# Resolution of parametric names
# --------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def diffkit_resolve(kind: str, name: str) -> Callable[..., Any] | None:
    """Return a factory for a parametric component name, or None if not yours.

    :param kind: one of `diffkit.registry.KINDS` ("process", "model", "sampler", "grid",
        "model_wrapper", "network", "loss", "dataset").
    :param name: the full name asked for, e.g. "ode:rk4" or "sde:srk".

    Called only for names not registered directly, built-in plugins first; the first
    non-None result wins. A third-party hook that raises is a `PluginError` naming it.
    The factory has the same signature as one given to the registrar (its keyword-only
    parameters are the options); a `functools.partial` may bind some of them.
    """
