"""What diffkit checks of a plugin's components when it uses them: a sampler's result, a
sampler's exception (one line naming a third-party plugin), a registered parameterization.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffkit.core.errors import DiffkitError, PluginError, UsageError
from diffkit.core.parameterization import KINDS, Parameterization
from diffkit.core.sampler import SampleResult
from diffkit.plugin.registry import Registry


def _count(value: object) -> bool:
    """A non-negative Python or NumPy integer (not a bool, not a tensor)."""
    return hasattr(value, "__index__") and not isinstance(value, (bool, torch.Tensor)) and int(value) >= 0


def _result_problem(result: object, x_init: torch.Tensor, check_finite: bool) -> str | None:
    """What is wrong with a sampler's `result` for the batch `x_init` `(B, *dims)`, or None."""
    x = getattr(result, "x", None)
    if not isinstance(x, torch.Tensor):
        what = type(x).__name__ if hasattr(result, "x") else type(result).__name__
        return f"returned a {what}, not a SampleResult with a tensor x"
    if not x.is_floating_point() or x.dtype != x_init.dtype:
        got, want = (str(dtype).removeprefix("torch.") for dtype in (x.dtype, x_init.dtype))
        return f"returned {got} samples for a {want} batch"
    if x.ndim and x.shape[0] != x_init.shape[0]:
        return f"returned {x.shape[0]} rows for a batch of {x_init.shape[0]}"
    if x.shape != x_init.shape:
        return f"returned samples of shape {tuple(x.shape)} for a batch of shape {tuple(x_init.shape)}"
    if x.device != x_init.device:
        return f"returned samples on {x.device} for a batch on {x_init.device}"
    for name in ("nfe", "steps"):
        if not _count(getattr(result, name, None)):
            return f"returned {name}={getattr(result, name, None)!r}, not a non-negative int"
    if check_finite and not bool(torch.isfinite(x).all()):
        return "returned NaN or Inf samples"
    return None


def third_party_failure(name: str, registry: Registry, error: Exception) -> PluginError | None:
    """A one-line `PluginError` for an exception raised inside third-party sampler `name`, else None.

    Built-in samplers get None: an exception there is diffkit's own bug and stays an internal error.
    """
    try:
        component = registry.get("sampler", name)
    except DiffkitError:
        return None
    if component.plugin in registry.builtins:
        return None
    first = (str(error).strip().splitlines() or [""])[0]
    return PluginError(
        f"sampler {name!r} (plugin {component.plugin!r}, {component.distribution}) failed: "
        f"{type(error).__name__}: {first}"
    )


def check_result(
    result: object,
    x_init: torch.Tensor,
    name: str,
    registry: Registry | None = None,
    step_flags: Sequence[torch.Tensor] = (),
) -> SampleResult:
    """Check a sampler's result against its batch `x_init` `(B, *dims)`; return it, or raise.

    `result.x` must be a floating tensor of `x_init`'s shape, dtype and device, and finite;
    `nfe` and `steps` non-negative ints. `step_flags` are per-step finiteness flags (0-dim
    bool tensors) the caller recorded through the callback: when one is False the caller
    reports that step itself, so the finiteness of the result is not checked here.

    Raises:
        PluginError: one line naming the sampler `name` and its plugin (looked up in
            `registry` only on failure), e.g. "sampler 'bad' (plugin 'badpkg', local module)
            returned 99 rows for a batch of 100".
    """
    check_finite = not step_flags or bool(torch.stack(list(step_flags)).all())
    problem = _result_problem(result, x_init, check_finite)
    if problem is None:
        return result  # type: ignore[return-value]
    where = ""
    if registry is not None:
        try:
            component = registry.get("sampler", name)
            where = f" (plugin {component.plugin!r}, {component.distribution})"
        except DiffkitError:
            pass
    raise PluginError(f"sampler {name!r}{where} {problem}")


def parameterization_names(registry: Registry) -> list[str]:
    """The registered parameterization names: the standard four first, then the plugins' sorted."""
    found = registry.names("parameterization")
    return [k for k in KINDS if k in found] + [n for n in found if n not in KINDS]


def registered_parameterization(registry: Registry, kind: str, *, flag: str = "") -> Parameterization:
    """The conversion object registered as `kind` (UsageError naming the registered ones if none).

    `flag` prefixes the name in the message (e.g. "--kind "). A plugin factory that builds
    something else than a `Parameterization` named `kind` is a `PluginError` naming the plugin.
    """
    known = parameterization_names(registry)
    if kind not in known:
        raise UsageError(f"unknown parameterization {flag}{kind!r}; expected {', '.join(known)}")
    built = registry.build("parameterization", kind, {})
    if not isinstance(built, Parameterization) or built.name != kind:
        plugin = registry.get("parameterization", kind).plugin
        raise PluginError(
            f"parameterization {kind!r} (plugin {plugin!r}) built {built!r}, "
            f"not a Parameterization named {kind!r}"
        )
    return built
