"""Typed component options: introspect a factory's keyword-only parameters, parse KEY=VALUE.

A component factory (a frozen keyword-only dataclass, or any callable) declares its options
as keyword-only parameters with type hints and defaults. `--solver-opt rtol=1e-6` style
strings are parsed against those hints; unknown keys and ill-typed values raise
`OptionError` with one line naming the component and its valid options.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from diffkit.core.errors import OptionError

_MISSING = inspect.Parameter.empty
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class OptionSpec:
    """One option: its name, type annotation and default (inspect.Parameter.empty if required)."""

    name: str
    annotation: Any
    default: Any

    def describe(self) -> str:
        """Human-readable `name (type, default X)`."""
        type_name = _type_name(self.annotation)
        if self.default is _MISSING:
            return f"{self.name} ({type_name}, required)"
        return f"{self.name} ({type_name}, default {self.default!r})"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def _hints(target: Any) -> dict[str, Any]:
    """Type hints of a factory's parameters: for a class, its `__init__` plus its (MRO-resolved) fields."""
    if not inspect.isclass(target):
        return typing.get_type_hints(target)
    hints: dict[str, Any] = {}
    for source in (target.__init__, target):
        try:
            hints.update(typing.get_type_hints(source))
        except NameError:  # an annotation names something unresolvable from that namespace
            continue
    return hints


def option_specs(factory: Callable[..., Any]) -> dict[str, OptionSpec]:
    """Return the keyword-only options of `factory`, keyed by name (underscores).

    A `functools.partial` hides the keywords it binds (e.g. `ode:euler` binds `method`).
    """
    bound: set[str] = set()
    target: Any = factory
    while isinstance(target, functools.partial):
        bound |= set(target.keywords)
        target = target.func
    # for a class, resolve annotations class by class along the MRO, each in its own module
    # (a dataclass base from another module may use names the subclass's module lacks)
    hints = _hints(target)
    specs = {}
    for name, parameter in inspect.signature(target).parameters.items():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in bound:
            specs[name] = OptionSpec(name, hints.get(name, Any), parameter.default)
    return specs


def _convert(annotation: Any, raw: Any) -> Any:
    """Convert `raw` (a string from the CLI, or a Python value) to `annotation`."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return raw
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if type(None) in args and (raw is None or (isinstance(raw, str) and raw.lower() in {"none", "null"})):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, raw)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        for choice in choices:
            if raw == choice or (isinstance(raw, str) and raw == str(choice)):
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, choices))}")
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ValueError("expected true or false")
    if annotation is int:
        if isinstance(raw, bool):
            raise ValueError("expected an integer")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str):
            return int(raw.strip())
        raise ValueError("expected an integer")
    if annotation is float:
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        return float(raw)
    if annotation is str:
        if not isinstance(raw, str):
            raise ValueError("expected a string")
        return raw
    if isinstance(raw, annotation):
        return raw
    raise ValueError(f"expected {_type_name(annotation)}")


def parse_options(
    kind: str,
    name: str,
    factory: Callable[..., Any],
    raw: Mapping[str, Any],
    extra: Mapping[str, OptionSpec] | None = None,
) -> dict[str, Any]:
    """Validate and convert `raw` options for component `name` of `kind`.

    Keys may use dashes or underscores. `extra` are options the caller handles itself (e.g. the
    `shift` every process takes), listed after the factory's own. Returns keyword arguments for
    `factory`, plus the given `extra` ones.
    """
    specs = {**option_specs(factory), **(extra or {})}
    valid = ", ".join(spec.describe() for spec in specs.values()) or "none"
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        norm = key.strip().replace("-", "_")
        if norm not in specs:
            raise OptionError(f"{kind} {name!r} has no option {key!r}; valid options: {valid}")
        try:
            parsed[norm] = _convert(specs[norm].annotation, value)
        except (TypeError, ValueError) as error:
            raise OptionError(
                f"{kind} {name!r}: bad value {value!r} for option {norm!r} ({error}); valid options: {valid}"
            ) from None
        _check_finite(kind, name, norm, parsed[norm], specs[norm].default)
    return parsed


def _check_finite(kind: str, name: str, key: str, value: Any, default: Any) -> None:
    """OptionError for NaN, and for +-inf unless the option's own default is infinite (e.g. s_tmax)."""
    if not isinstance(value, float) or math.isfinite(value):
        return
    if math.isinf(value) and isinstance(default, float) and math.isinf(default):
        return
    raise OptionError(f"{kind} {name!r}: option {key!r} must be a finite number, got {value}")


def split_key_values(items: list[str] | tuple[str, ...], flag: str) -> dict[str, str]:
    """Parse repeated `KEY=VALUE` strings (from `flag`) into a dict."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


# -- declared option checks ------------------------------------------------------------------
# An option field declares its constraint in its dataclass metadata, read by `validate_options`:
#     step_size: float = field(default=1e-3, metadata={"positive": True})
#     eta: float = field(default=0.0, metadata={"range": (0, 1)})
#     s_tmax: float = field(default=math.inf, metadata={"range": (0, None), "finite": False})
#     snr: float | Literal["auto"] = field(default="auto", metadata={"positive": True, "or": ("auto",)})
#     variance: str = field(default="posterior", metadata={"choices": ("posterior", "beta")})
#     s_tmax: float = field(default=math.inf, metadata={"at_least": "s_tmin", "finite": False})
#     importance: bool = field(default=False, metadata={"needs": {"weighting": "likelihood"}})
# Keys: "positive" (> 0; for an int, >= 1), "range" ((low, high), closed, None = unbounded),
# "finite" (default True: reject +-inf), "or" (other accepted values), "choices" (the accepted
# values, for a string option), "at_least" (another option this one may not be below), "needs"
# (when set to a true value, the other options must have these values). A `bool` field needs no
# metadata: its type is checked. A field whose default is None also accepts None.
_CHECK_KEYS = {"positive", "range", "finite", "or", "choices", "at_least", "needs"}
_RELATIONS = {"at_least", "needs"}  # checks against other options, made after every field's own


def _is_number(value: Any, integer: bool) -> bool:
    """True for an int (or, unless `integer`, a non-NaN float), never for a bool."""
    if integer:
        return type(value) is int
    return not isinstance(value, bool) and isinstance(value, int | float) and not math.isnan(value)


def _requirement(check: Mapping[str, Any], integer: bool) -> str:
    """The phrase after `must be`, e.g. `a positive number`, `a finite number >= 0`, `a number in [0, 1]`."""
    noun = "integer" if integer else "number"
    low, high = check.get("range", (None, None))
    if check.get("positive"):
        text = f"a positive {noun}"
    elif high is not None:
        text = f"{_article(noun)} {noun} in [{low}, {high}]"
    else:
        finite = "finite " if check.get("finite", True) and not integer else ""
        text = f"{_article(finite + noun)} {finite}{noun}" + ("" if low is None else f" >= {low}")
    extra = check.get("or", ())
    return text + "".join(f" or {value}" for value in extra)


def _article(phrase: str) -> str:
    """'an' before a vowel ('an integer'), else 'a'."""
    return "an" if phrase[:1] in "aeiou" else "a"


def _is_int_type(annotation: Any) -> bool:
    """True for `int` or `int | None` (as a type, or as a string under postponed annotations)."""
    if isinstance(annotation, str):
        return [part.strip() for part in annotation.split("|") if part.strip() != "None"] == ["int"]
    return annotation is int or [a for a in typing.get_args(annotation) if a is not type(None)] == [int]


def _check_field(name: str, annotation: Any, check: Mapping[str, Any], value: Any) -> None:
    """Raise ValueError (`option NAME must be ..., got VALUE`) if `value` breaks the field's check."""
    if annotation is bool or annotation == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"option {name} must be true or false, got {value!r}")
        return
    unknown = set(check) - _CHECK_KEYS
    if unknown:
        raise TypeError(f"option {name}: unknown check keys {sorted(unknown)}")
    if "choices" in check:
        if value not in check["choices"] or isinstance(value, bool):
            raise ValueError(
                f"option {name} must be one of {', '.join(map(str, check['choices']))}, got {value!r}"
            )
        return
    if not set(check) - _RELATIONS:
        return
    if value in check.get("or", ()) and not isinstance(value, bool | int | float):
        return
    integer = _is_int_type(annotation)
    low, high = check.get("range", (None, None))
    ok = _is_number(value, integer)
    if ok and check.get("positive"):
        ok = value > 0
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if ok and not integer and check.get("finite", True):
        ok = math.isfinite(value)
    if not ok:
        raise ValueError(f"option {name} must be {_requirement(check, integer)}, got {value!r}")


def validate_options(instance: Any) -> None:
    """Check every option field of the dataclass `instance` against its declared type and range.

    A `Literal[...]` field must hold one of its values; `at_least` and `needs` relations are
    checked after every field's own check.

    Raises ValueError naming the first bad option (the registry turns it into an OptionError).
    A non-dataclass is left alone.
    """
    if not dataclasses.is_dataclass(instance) or isinstance(instance, type):
        return
    try:
        hints = _hints(type(instance))
    except Exception:  # an annotation typing cannot evaluate: check the declared metadata only
        hints = {}
    for spec in dataclasses.fields(instance):
        if not spec.init:
            continue
        value = getattr(instance, spec.name)
        if value is None and spec.default is None:
            continue
        annotation = hints.get(spec.name, spec.type)
        if typing.get_origin(annotation) is typing.Literal and "choices" not in spec.metadata:
            _check_field(spec.name, annotation, {"choices": typing.get_args(annotation)}, value)
        _check_field(spec.name, spec.type, spec.metadata, value)
    for spec in dataclasses.fields(instance):
        if spec.init:
            _check_relations(instance, spec.name, spec.metadata)


def _check_relations(instance: Any, name: str, check: Mapping[str, Any]) -> None:
    """Raise ValueError if option `name` breaks its `at_least` or `needs` relation to another option."""
    value = getattr(instance, name)
    other = check.get("at_least")
    if other is not None and value < getattr(instance, other):
        raise ValueError(f"option {name} must be >= {other} ({getattr(instance, other)!r}), got {value!r}")
    if check.get("needs") and value:
        for key, wanted in check["needs"].items():
            if getattr(instance, key) != wanted:
                raise ValueError(f"option {name}={_show(value)} needs {key}={_show(wanted)}")


def _show(value: Any) -> str:
    """An option value as typed on the command line (`true`, `likelihood`, `0.5`)."""
    return str(value).lower() if isinstance(value, bool) else str(value)
