"""Declared option checks: dataclass field metadata read once by `validate_options`."""

from __future__ import annotations

import dataclasses
import math

import pytest

from diffkit import OptionError
from diffkit.plugin.options import validate_options


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("ode", {"rtol": "0"}, "option rtol must be a positive number, got 0.0"),
        ("ode", {"max_num_steps": "0"}, "option max_num_steps must be a positive integer, got 0"),
        ("ode", {"first_step": "-1"}, "option first_step must be a positive number, got -1.0"),
        ("langevin", {"step_size": "-1"}, "option step_size must be a positive number, got -1.0"),
        ("ald", {"steps_per_level": "0"}, "option steps_per_level must be a positive integer, got 0"),
        ("heun", {"s_churn": "-1"}, "option s_churn must be a finite number >= 0, got -1.0"),
        ("heun", {"s_tmax": "-1"}, "option s_tmax must be a number >= 0, got -1.0"),
        ("ddim", {"eta": "1.5"}, "option eta must be a number in [0, 1], got 1.5"),
        ("dpmpp-2m-sde", {"s_noise": "-0.5"}, "option s_noise must be a finite number >= 0, got -0.5"),
        ("pc", {"snr": "-1"}, "option snr must be a positive number or auto, got -1.0"),
        ("pc", {"corrector_steps": "0"}, "option corrector_steps must be a positive integer, got 0"),
        (
            "ode",
            {"method": "rk5"},
            "option method must be one of dopri5, dopri8, bosh3, fehlberg2, "
            "adaptive_heun, euler, midpoint, heun2, heun3, rk4, explicit_adams, implicit_adams, "
            "fixed_adams, got 'rk5'",
        ),
        ("heun", {"s_tmin": "2", "s_tmax": "1"}, "option s_tmax must be >= s_tmin (2.0), got 1.0"),
    ],
)
def test_declared_ranges_give_one_line(registry, name, options, message):
    with pytest.raises(OptionError) as error:
        registry.build("sampler", name, options)
    assert str(error.value) == f"sampler {name!r}: {message}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Options:
    flag: bool = True
    rate: float | None = dataclasses.field(default=None, metadata={"positive": True})
    count: int = dataclasses.field(default=1, metadata={"positive": True})
    level: float = dataclasses.field(default=0.5, metadata={"range": (0, 1)})
    cap: float = dataclasses.field(default=math.inf, metadata={"range": (0, None), "finite": False})


def test_validate_options_checks_types_ranges_and_accepts_defaults():
    validate_options(_Options())  # defaults, None where the default is None, an infinite cap
    validate_options(_Options(rate=2, count=3, level=1, cap=5.0))
    bad = [
        ({"flag": 1}, "option flag must be true or false, got 1"),
        ({"rate": math.inf}, "option rate must be a positive number, got inf"),
        ({"rate": math.nan}, "option rate must be a positive number, got nan"),
        ({"rate": True}, "option rate must be a positive number, got True"),
        ({"count": 2.0}, "option count must be a positive integer, got 2.0"),
        ({"level": -0.1}, "option level must be a number in [0, 1], got -0.1"),
        ({"cap": "x"}, "option cap must be a number >= 0, got 'x'"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError) as error:
            validate_options(_Options(**kwargs))
        assert str(error.value) == message


def test_unknown_check_key_is_a_type_error():
    @dataclasses.dataclass
    class Typo:
        rate: float = dataclasses.field(default=1.0, metadata={"postive": True})

    with pytest.raises(TypeError, match="unknown check keys"):
        validate_options(Typo())


def test_relations_and_literal_choices_are_declared_once(registry):
    """`needs` and Literal choices hold for a loss built by the registry and built directly."""
    with pytest.raises(OptionError) as error:
        registry.build("loss", "dsm", {"importance": "true"})
    assert str(error.value) == "loss 'dsm': option importance=true needs weighting=likelihood"
    registry.build("loss", "dsm", {"importance": "true", "weighting": "likelihood"})
    simple = type(registry.build("loss", "simple", {}))
    with pytest.raises(ValueError) as direct:
        simple(target="score")
    assert str(direct.value) == "option target must be one of auto, eps, x0, v, got 'score'"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Related:
    low: float = 0.0
    high: float = dataclasses.field(default=1.0, metadata={"at_least": "low"})
    mode: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})
    extra: bool = dataclasses.field(default=False, metadata={"needs": {"mode": "b"}})


def test_at_least_choices_and_needs():
    validate_options(_Related())
    validate_options(_Related(low=1.0, high=1.0, mode="b", extra=True))
    bad = [
        ({"low": 2.0}, "option high must be >= low (2.0), got 1.0"),
        ({"mode": "c"}, "option mode must be one of a, b, got 'c'"),
        ({"extra": True}, "option extra=true needs mode=b"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError) as error:
            validate_options(_Related(**kwargs))
        assert str(error.value) == message
