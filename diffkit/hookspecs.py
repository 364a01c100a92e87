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
        A name registered twice raises `DuplicateComponentError` naming both plugins.

    Called once per `build_registry()`; must not keep global state.
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

    Called only for names not registered directly; the first non-None result wins.
    The factory has the same signature as one given to the registrar (its keyword-only
    parameters are the options); a `functools.partial` may bind some of them.
    """
