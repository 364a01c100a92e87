"""Typed process traits: what a noise process is, declared once, read by samplers and grids.

A process declares `traits = ProcessTraits(...)`; samplers require traits by name in
`Capabilities.requires` (e.g. `{"discrete"}`) and tune their default grid by them
(`Capabilities.grid_by_feature`). The names are the ones of the former free `features` set,
which third-party processes may still declare: `traits_of` merges it in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

#: trait name (as in `Capabilities.requires`) -> `ProcessTraits` field
TRAIT_NAMES: dict[str, str] = {
    "variance-preserving": "variance_preserving",
    "sub-variance-preserving": "sub_variance_preserving",
    "variance-exploding": "variance_exploding",
    "discrete": "discrete",
}


@dataclass(frozen=True)
class ProcessTraits:
    """What samplers may require of a process or tune for, and the grid it prefers.

    Attributes:
        variance_preserving: alpha(t)^2 + sigma(t)^2 = 1 (VP SDE, DDPM).
        sub_variance_preserving: sigma(t) = 1 - alpha(t)^2 (sub-VP SDE).
        variance_exploding: alpha(t) = 1 (VE SDE, NCSN).
        discrete: exact DDPM knots; the process satisfies `DiscreteProcess` (`num_steps`,
            `discrete_times`, `alpha_bar_table`).
        default_grid: grid name used when neither the user nor a sampler's per-trait override
            chooses one (None: the sampler's own `default_grid`).
    """

    variance_preserving: bool = False
    sub_variance_preserving: bool = False
    variance_exploding: bool = False
    discrete: bool = False
    default_grid: str | None = None

    @property
    def names(self) -> frozenset[str]:
        """The trait names this process has, e.g. `frozenset({"discrete", "variance-preserving"})`."""
        return frozenset(name for name, attribute in TRAIT_NAMES.items() if getattr(self, attribute))

    def with_names(self, names: Iterable[str]) -> ProcessTraits:
        """These traits plus the named ones (names outside `TRAIT_NAMES` are ignored)."""
        added = {TRAIT_NAMES[name]: True for name in names if name in TRAIT_NAMES}
        return replace(self, **added) if added else self

    @classmethod
    def from_names(cls, names: Iterable[str], *, default_grid: str | None = None) -> ProcessTraits:
        """Traits from names such as `{"variance-exploding"}` (unknown names raise ValueError)."""
        names = set(names)
        check_trait_names(names, "a process trait")
        return cls(default_grid=default_grid).with_names(names)


def check_trait_names(names: Iterable[str], what: str) -> None:
    """Raise ValueError naming the first of `names` that is no trait name."""
    unknown = sorted(set(names) - set(TRAIT_NAMES))
    if unknown:
        raise ValueError(
            f"{what} {unknown[0]!r} is not a process trait; expected one of {', '.join(TRAIT_NAMES)}"
        )


def traits_of(process: object) -> ProcessTraits:
    """The traits of `process`: its `traits`, plus the names in a legacy `features` set if it has one."""
    traits = getattr(process, "traits", None)
    if traits is None:
        traits = ProcessTraits()
    elif not isinstance(traits, ProcessTraits):
        raise TypeError(f"{type(process).__name__}.traits is a {type(traits).__name__}, not ProcessTraits")
    legacy = getattr(process, "features", None)  # free strings of processes written before traits
    return traits.with_names(legacy) if legacy else traits
