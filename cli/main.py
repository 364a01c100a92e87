"""`diffkit` command: a thin typer shell over `diffkit.run.api` (parse, resolve names, write files)."""

from __future__ import annotations

import functools
import sys
from typing import Any

import typer

from diffkit.cli import (
    bench_command,
    encode_command,
    evaluate_command,
    inverse_command,
    likelihood_command,
    list_command,
    sample_command,
    train_command,
    tune_grid_command,
)
from diffkit.cli.common import click_errors

app = typer.Typer(
    name="diffkit",
    help="Diffusion-model processes, score models and samplers, composed from plugins.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


app.command("sample")(sample_command.sample)
app.command("list")(list_command.list_components)
app.command("bench")(bench_command.bench)
app.command("train")(train_command.train_command)
app.command("likelihood")(likelihood_command.likelihood)
app.command("encode")(encode_command.encode_command)
app.command("decode")(encode_command.decode_command)
app.command("evaluate")(evaluate_command.evaluate)
app.command("inpaint")(inverse_command.inpaint)
app.command("colorize")(inverse_command.colorize)
app.command("tune-grid")(tune_grid_command.tune_grid_command)


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
