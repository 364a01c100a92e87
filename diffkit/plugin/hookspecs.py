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

Hooks are called through pluggy's hook relay (`PluginManager.hook`), one plugin per call
(`subset_hook_caller`), so pluggy's tracing, call monitoring and hook wrappers see every call
and each answer or failure is attributed to its plugin. Only the hooks below exist: after
loading, pluggy's `check_pending()` runs, and a plugin implementing any other `@hookimpl`
(e.g. a misspelled `diffkit_registr`) is skipped as a whole with one `PluginLoadWarning`
naming the plugin and the hook (a built-in one raises `UnknownHookError`). Mark a hook of a
newer diffkit `@hookimpl(optionalhook=True)` to keep the plugin loadable on older ones.

A component factory that needs other components (e.g. a model that builds its training
process) declares a keyword-only parameter `registry`; it then receives the registry it was
registered in (`Registry.build` / `Registry.get`), which is not a user option, instead of
building a registry of its own::

    def my_model(process, *, registry: Registry, weights: str = "ema"):
        trained = registry.build("process", "vp", {})

A sampler's result is checked after every call (`diffkit.plugin.contract.check_result`): a wrong
shape, dtype, row count or a non-finite value is a `PluginError` naming the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from diffkit.core.model import ScoreModel
    from diffkit.core.process import NoiseProcess
    from diffkit.plugin.registry import Registrar, Registry

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
        `add_loss`, `add_dataset`, `add_parameterization` and `add_family`.

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

    :param kind: one of `diffkit.plugin.registry.KINDS` ("process", "model", "sampler", "grid",
        "model_wrapper", "network", "loss", "dataset", "parameterization").
    :param name: the full name asked for, e.g. "ode:rk4" or "sde:srk".

    Called only for names not registered directly, one plugin at a time through the hook
    relay (a firstresult call), built-in plugins first and then the others in pluggy's call
    order (latest registered first, `tryfirst`/`trylast` honoured); the first non-None result
    wins and names its plugin. A third-party hook that raises is a `PluginError` naming it.
    The factory has the same signature as one given to the registrar (its keyword-only
    parameters are the options); a `functools.partial` may bind some of them.
    """


# --------------------------------------------------------------------------------------
# Models that are not registered names (checkpoint folders)
# --------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def diffkit_resolve_model(
    registry: Registry,
    name: str,
    process_name: str,
    process: NoiseProcess,
    process_options: dict[str, Any],
    model_options: dict[str, Any],
) -> ScoreModel | None:
    """Return the model `name` on `process`, or None if `name` is not yours.

    :param registry: the registry being used (build nested components from it).
    :param name: the `--model` value, e.g. a `diffkit train` checkpoint folder `runs/digits`.
    :param process_name: the process's registered name; `process_options` its options as given.
    :param process: the built process the model must work on.
    :param model_options: the `--model-opt` values, unparsed.

    Asked only for names that are neither registered models nor resolved by
    `diffkit_resolve`, one plugin at a time, built-ins first (the built-in `pretrained`
    plugin answers for checkpoint folders); the first non-None answer wins. A `UsageError`
    (e.g. the wrong process for the checkpoint) reaches the user as it is; any other
    exception of a third-party hook is a `PluginError` naming it.
    """
