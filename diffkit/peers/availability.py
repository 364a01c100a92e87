"""Which peer libraries `diffkit bench --peers` knows, and whether they are installed.

Peers are optional: diffkit never imports them at import time. `require` checks with
`importlib.util.find_spec` (which does not import a top-level package) and raises
`PeerNotInstalled`, a `UsageError` whose one-line message names the missing package and how to
install it, so the CLI exits with code 2 before any work.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from diffkit.core.errors import UsageError


@dataclass(frozen=True)
class Peer:
    """A peer library: its `--peers` name, import name and install command."""

    name: str
    module: str
    install: str


#: the peers `--peers` accepts, in report order
PEERS: tuple[Peer, ...] = (
    Peer("diffusers", "diffusers", "pip install diffusers"),
    Peer("k-diffusion", "k_diffusion", "pip install --no-deps k-diffusion==0.1.1.post1"),
)


class PeerNotInstalled(UsageError):
    """A requested peer library is not installed (or cannot be imported)."""


def peer(name: str) -> Peer:
    """The `Peer` called `name`; UsageError naming the known peers otherwise."""
    for candidate in PEERS:
        if candidate.name == name:
            return candidate
    known = " or ".join(p.name for p in PEERS)
    raise UsageError(f"unknown peer {name!r}; expected {known}")


def require(name: str) -> Peer:
    """The `Peer` called `name` if its package is installed; PeerNotInstalled otherwise."""
    found = peer(name)
    try:
        spec = importlib.util.find_spec(found.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise PeerNotInstalled(
            f"peer {found.name!r} needs the {found.module} package, which is not installed ({found.install})"
        )
    return found


def parse_peers(text: str) -> tuple[str, ...]:
    """Peer names of a comma-separated `--peers` value (known and distinct; not checked installed)."""
    names = tuple(item.strip() for item in text.split(",") if item.strip())
    if not names:
        raise UsageError("--peers is empty")
    for name in names:
        peer(name)
    if len(set(names)) != len(names):
        raise UsageError(f"--peers lists a peer twice: {text!r}")
    return names
