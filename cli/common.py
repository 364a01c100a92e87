"""What every command shares: one `error:` line per failure with its exit code, SIGTERM handled
like Ctrl-C, the registry with plugin warnings printed, which options were typed."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer

try:  # typer >= 0.24 ships its own copy of click
    from typer._click import exceptions as click_errors  # noqa: F401 (main's parse errors)
    from typer._click.core import ParameterSource
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer on top of click
    from click import get_current_context
    from click.core import ParameterSource

from diffkit.core.errors import DiffkitError, SamplingError, UsageError
from diffkit.plugin.loading import build_registry
from diffkit.plugin.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    """Print one `error:` line on stderr and exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same cleanup runs (exit 143)."""


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises `Terminated` (unless ignored, or off the main thread).

    SIGINT already raises KeyboardInterrupt, so every `finally` and `atomic_file` cleanup runs for
    both and no temporary file is left behind.
    """
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interruption(error: KeyboardInterrupt) -> tuple[str, int]:
    """The signal behind `error` and its exit code: ("SIGTERM", 143) or ("SIGINT", 130)."""
    return ("SIGTERM", 143) if isinstance(error, Terminated) else ("SIGINT", 130)


def handle_errors(command: F) -> F:
    """Turn diffkit errors into one stderr line and an exit code (2 usage, 1 sampling)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with terminate_raises():
                return command(*args, **kwargs)
        except UsageError as error:
            fail(str(error), 2)
        except SamplingError as error:
            fail(str(error), 1)
        except DiffkitError as error:
            fail(str(error), 2)
        except typer.Exit:
            raise
        except KeyboardInterrupt as error:
            name, code = interruption(error)
            fail(f"interrupted by {name}; unfinished output files were removed", code)
        except Exception as error:  # never show a traceback unless asked to
            if os.environ.get("DIFFKIT_DEBUG"):
                raise
            fail(f"internal error: {type(error).__name__}: {error} (set DIFFKIT_DEBUG=1 for a traceback)", 1)

    return wrapper  # type: ignore[return-value]


def load_registry() -> Registry:
    """Build the registry, printing plugin-load warnings as single `warning:` lines on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = build_registry()
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    return registry


def given(*names: str) -> list[str]:
    """The parameters among `names` set on the command line (not defaults) in the running command."""
    context = get_current_context(silent=True)
    if context is None:  # called as a plain function (tests, the API): nothing was typed
        return []
    return [name for name in names if context.get_parameter_source(name) is ParameterSource.COMMANDLINE]
