"""`diffkit` command: a thin typer shell over `diffkit.run.api` (parse, resolve names, write files)."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer

try:  # typer >= 0.24 ships its own copy of click
    from typer._click import exceptions as click_errors
    from typer._click.core import ParameterSource
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer on top of click
    from click import exceptions as click_errors
    from click import get_current_context
    from click.core import ParameterSource

from diffkit.core.errors import DiffkitError, SamplingError, UsageError
from diffkit.plugin.registry import Registry, build_registry

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="diffkit",
    help="Diffusion-model processes, score models and samplers, composed from plugins.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


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


def _register_commands() -> None:
    from diffkit.cli import bench_command, list_command, sample_command, train_command

    app.command("sample")(sample_command.sample)
    app.command("list")(list_command.list_components)
    app.command("bench")(bench_command.bench)
    app.command("train")(train_command.train_command)
    from diffkit.cli import encode_command, likelihood_command

    app.command("likelihood")(likelihood_command.likelihood)
    app.command("encode")(encode_command.encode_command)
    app.command("decode")(encode_command.decode_command)
    from diffkit.cli import evaluate_command

    app.command("evaluate")(evaluate_command.evaluate)
    from diffkit.cli import inverse_command

    app.command("inpaint")(inverse_command.inpaint)
    app.command("colorize")(inverse_command.colorize)


_register_commands()


@functools.cache
def _click_command() -> Any:
    """The click command of `app`, built once per process (typer rebuilds it on every call)."""
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run `diffkit ARGV`; a usage error is one `error:` line, exit 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = _click_command().main(args=args, prog_name="diffkit", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as error:
        typer.echo(error.ctx.get_help() if error.ctx is not None else "usage: diffkit COMMAND --help")
        return 2  # as click: no command is a usage error, answered with the help
    except click_errors.ClickException as error:  # typer/click parse errors: unknown option, bad int, ...
        message = " ".join(error.format_message().split())
        where = f" (see `{error.ctx.command_path} --help`)" if getattr(error, "ctx", None) else ""
        typer.echo(f"error: {message}{where}", err=True)
        return 2
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
