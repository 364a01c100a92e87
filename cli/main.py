"""`diffkit` command: a thin typer shell over `diffkit.api` (parse, resolve names, write files)."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from diffkit.errors import DiffkitError, SamplingError, UsageError
from diffkit.registry import Registry, build_registry

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


def handle_errors(command: F) -> F:
    """Turn diffkit errors into one stderr line and an exit code (2 usage, 1 sampling)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UsageError as error:
            fail(str(error), 2)
        except SamplingError as error:
            fail(str(error), 1)
        except DiffkitError as error:
            fail(str(error), 2)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            fail("interrupted; no output written", 130)
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


def main() -> None:
    """Console-script entry point."""
    app(prog_name="diffkit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
