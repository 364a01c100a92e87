"""Typed component options (diffkit.plugin.options) and how Registry.build reports bad ones."""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Literal, Optional

import pytest

from diffkit import OptionError
from diffkit.plugin.options import option_specs, parse_options, split_key_values

VP_OPTIONS = (
    "beta_min (float, default 0.1), beta_max (float, default 20.0), "
    "t_min (float, default 0.0001), t_max (float, default 1.0), "
    "shift (float, default None), mu (float, default None)"  # every process: the timestep shift
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toy:
    """A component exercising every supported option type."""

    steps: int = 10
    rtol: float = 1e-5
    adaptive: bool = False
    method: Literal["euler", "heun"] = "euler"
    order: Literal[1, 2, 3] = 2
    eta: Optional[float] = None  # noqa: UP045 - the typing spelling must work too
    seed: int | None = None
    label: str = "toy"


def toy_function(model, *, required: int, scale: float = 1.0) -> None:
    """A factory may be a plain function; positional parameters are not options."""


def _parse(raw):
    return parse_options("sampler", "toy", Toy, raw)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"steps": "25"}, {"steps": 25}),
        ({"steps": " 7 "}, {"steps": 7}),
        ({"rtol": "1e-8"}, {"rtol": 1e-8}),
        ({"rtol": "3"}, {"rtol": 3.0}),
        ({"adaptive": "true"}, {"adaptive": True}),
        ({"adaptive": "Yes"}, {"adaptive": True}),
        ({"adaptive": "on"}, {"adaptive": True}),
        ({"adaptive": "0"}, {"adaptive": False}),
        ({"adaptive": "off"}, {"adaptive": False}),
        ({"method": "heun"}, {"method": "heun"}),
        ({"order": "3"}, {"order": 3}),
        ({"eta": "0.5"}, {"eta": 0.5}),
        ({"eta": "none"}, {"eta": None}),
        ({"seed": "42"}, {"seed": 42}),
        ({"seed": "null"}, {"seed": None}),
        ({"label": "x=1"}, {"label": "x=1"}),
        (
            {"steps": 5, "rtol": 0.1, "adaptive": True, "eta": None},
            {"steps": 5, "rtol": 0.1, "adaptive": True, "eta": None},
        ),
    ],
)
def test_values_are_converted_to_the_declared_type(raw, expected):
    parsed = _parse(raw)
    assert parsed == expected
    assert [type(v) for v in parsed.values()] == [type(v) for v in expected.values()]
    Toy(**parsed)  # the result is valid keyword arguments for the factory


def test_dashes_are_accepted_for_underscores(registry):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Dashed:
        max_step_size: float = 1.0

    assert parse_options("sampler", "dashed", Dashed, {"max-step-size": "0.25"}) == {"max_step_size": 0.25}
    vp = registry.build("process", "vp", {"beta-min": "0.2", "beta_max": "10"})
    assert (vp.beta_min, vp.beta_max) == (0.2, 10.0)


def test_unknown_option_message_names_kind_component_and_valid_options(registry):
    with pytest.raises(OptionError) as error:
        registry.build("process", "vp", {"bogus": "1"})
    assert str(error.value) == f"process 'vp' has no option 'bogus'; valid options: {VP_OPTIONS}"


def test_unknown_option_of_a_component_without_options(registry):
    with pytest.raises(OptionError) as error:
        registry.build("grid", "uniform", {"rho": "7"})
    assert str(error.value) == "grid 'uniform' has no option 'rho'; valid options: none"


def test_unknown_option_lists_required_and_default_options():
    with pytest.raises(OptionError) as error:
        parse_options("model_wrapper", "fn", toy_function, {"model": "x"})
    assert str(error.value) == (
        "model_wrapper 'fn' has no option 'model'; valid options: "
        "required (int, required), scale (float, default 1.0)"
    )


@pytest.mark.parametrize(
    "raw, option, reason",
    [
        ({"steps": "2.5"}, "steps", "invalid literal for int() with base 10: '2.5'"),
        ({"steps": True}, "steps", "expected an integer"),
        ({"rtol": "fast"}, "rtol", "could not convert string to float: 'fast'"),
        ({"adaptive": "maybe"}, "adaptive", "expected true or false"),
        ({"method": "rk4"}, "method", "expected one of euler, heun"),
        ({"order": "4"}, "order", "expected one of 1, 2, 3"),
        ({"label": 3}, "label", "expected a string"),
    ],
)
def test_bad_value_names_the_option(raw, option, reason):
    with pytest.raises(OptionError) as error:
        _parse(raw)
    (value,) = raw.values()
    message = str(error.value)
    assert message.startswith(
        f"sampler 'toy': bad value {value!r} for option {option!r} ({reason}); valid options: "
    )
    assert "steps (int, default 10)" in message and "method (euler|heun, default 'euler')" in message


def test_bad_value_through_the_registry(registry):
    with pytest.raises(OptionError) as error:
        registry.build("process", "vp", {"beta_max": "big"})
    assert str(error.value) == (
        "process 'vp': bad value 'big' for option 'beta_max' "
        f"(could not convert string to float: 'big'); valid options: {VP_OPTIONS}"
    )


def test_option_specs_describe_types_and_defaults():
    specs = option_specs(Toy)
    assert list(specs) == ["steps", "rtol", "adaptive", "method", "order", "eta", "seed", "label"]
    assert specs["eta"].describe() == "eta (float or none, default None)"
    assert specs["order"].describe() == "order (1|2|3, default 2)"
    assert list(option_specs(toy_function)) == ["required", "scale"]


def test_partial_hides_bound_keywords():
    bound = functools.partial(Toy, method="heun")
    assert "method" not in option_specs(bound)
    with pytest.raises(OptionError, match=re.escape("sampler 'toy:heun' has no option 'method'")):
        parse_options("sampler", "toy:heun", bound, {"method": "euler"})


def test_split_key_values():
    assert split_key_values(["rtol=1e-6", " steps = 5 ", "label=a=b", "empty="], "--solver-opt") == {
        "rtol": "1e-6",
        "steps": "5",
        "label": "a=b",
        "empty": "",
    }
    assert split_key_values((), "--sde-opt") == {}


@pytest.mark.parametrize("item", ["rtol", "=5", " =5"])
def test_split_key_values_requires_key_and_equals(item):
    with pytest.raises(OptionError) as error:
        split_key_values([item], "--solver-opt")
    assert str(error.value) == f"--solver-opt expects KEY=VALUE, got {item!r}"


@pytest.mark.parametrize(
    "kind, name, options, message",
    [
        ("process", "vp", {"beta_min": "-1"}, "process 'vp': need 0 < beta_min <= beta_max, got -1.0, 20.0"),
        (
            "process",
            "ve",
            {"sigma_max": "0.001"},
            "process 've': need 0 < sigma_min < sigma_max, got 0.01, 0.001",
        ),
        ("grid", "karras", {"rho": "-7"}, "grid 'karras': option rho must be a positive number, got -7.0"),
    ],
)
def test_constructor_value_error_becomes_option_error(registry, kind, name, options, message):
    with pytest.raises(OptionError) as error:
        registry.build(kind, name, options)
    assert str(error.value) == message
    assert error.value.__cause__ is None and error.value.__suppress_context__
