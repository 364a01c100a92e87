"""`diffkit train`: train a score network from registry components into a checkpoint folder."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from diffkit.cli.common import fail, handle_errors, interruption, load_registry
from diffkit.plugin.options import split_key_values
from diffkit.plugin.validate import check_train_numbers
from diffkit.run.datafile import resolve_dataset
from diffkit.train import TrainConfig, train
from diffkit.train.checkpoint import committed

F = TypeVar("F", bound=Callable[..., Any])
OUT = Path("runs/model")


def _opts(target: str) -> typer.Option:
    return typer.Option(metavar="KEY=VALUE", help=f"Option of the {target} (repeatable).")


def _kept(out: Path, reached: int | None, before: dict[str, Any] | None) -> str:
    """The line after an interruption at step `reached` (None: not while training): what `out` holds."""
    at = "interrupted" if reached is None else f"interrupted at iteration {reached}"
    at = "interrupted before the first step" if reached == 0 else at
    record = committed(out)
    if record is None:
        return f"{at}; no checkpoint was written to {out}"
    iteration = record.get("iteration")
    if record == before:
        return f"{at}; {out} is unchanged (its checkpoint of iteration {iteration})"
    return f"{at}; the checkpoint of iteration {iteration} in {out} is complete (continue with --resume)"


def _reports_interruption(command: F) -> F:
    """On SIGINT/SIGTERM anywhere in `train`, say which checkpoint `--out` holds; exit 130/143.

    The checkpoint writer and `atomic_file` have removed their temporaries by then.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = Path(kwargs.get("out", OUT))
        before = committed(out)
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as error:
            fail(_kept(out, getattr(error, "reached", None), before), interruption(error)[1])

    return wrapper  # type: ignore[return-value]


@handle_errors
@_reports_interruption
def train_command(
    data: Annotated[
        str, typer.Option(help="Dataset (`diffkit list dataset`) or an array file PATH.npy|.npz.")
    ] = "moons",
    sde: Annotated[str, typer.Option("--sde", help="Noise process (`diffkit list process`).")] = "vp",
    loss: Annotated[
        str, typer.Option(help="Objective: simple, dsm, ncsn, vlb, hybrid, flow-matching.")
    ] = "simple",
    net: Annotated[str, typer.Option(help="Network: mlp or unet.")] = "mlp",
    kind: Annotated[
        str | None,
        typer.Option(
            help="Parameterization: v, eps, x0, score, velocity or a plugin's "
            "[default: velocity for --loss flow-matching, else v]."
        ),
    ] = None,
    iters: Annotated[int, typer.Option(help="Total optimiser steps.")] = 1000,
    out: Annotated[Path, typer.Option(help="Checkpoint folder.")] = OUT,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 128,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    ema: Annotated[float, typer.Option(help="EMA decay of the weights.")] = 0.999,
    clip: Annotated[float, typer.Option(help="Max gradient norm (0: off).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of weights, batches and noise.")] = 0,
    cond_drop: Annotated[
        float,
        typer.Option(help="Probability of training a label as the null class (classifier-free guidance)."),
    ] = 0.1,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    net_opt: Annotated[list[str] | None, _opts("network")] = None,
    loss_opt: Annotated[list[str] | None, _opts("loss")] = None,
    sde_opt: Annotated[list[str] | None, _opts("process")] = None,
    data_opt: Annotated[list[str] | None, _opts("dataset")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the run in --out (kept until the first new checkpoint).")
    ] = False,
    samples: Annotated[bool, typer.Option("--samples/--no-samples", help="Sample grids.")] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Train network NET on dataset DATA with objective LOSS under process SDE; checkpoint into OUT."""
    check_train_numbers(iters, batch_size, lr, ema, clip, seed, checkpoint_every, device)
    config = TrainConfig(
        data=data,
        process=sde,
        loss=loss,
        network=net,
        kind=kind,
        iters=iters,
        batch_size=batch_size,
        lr=lr,
        ema=ema,
        clip=clip,
        seed=seed,
        cond_drop=cond_drop,
        checkpoint_every=checkpoint_every,
        sample_every_checkpoint=samples,
        device=device,
        network_options=split_key_values(net_opt or [], "--net-opt"),
        loss_options=split_key_values(loss_opt or [], "--loss-opt"),
        process_options=split_key_values(sde_opt or [], "--sde-opt"),
        data_options=split_key_values(data_opt or [], "--data-opt"),
    )
    registry = load_registry()
    dataset = resolve_dataset(registry, config.data, config.data_options)
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[rate]:.1f} it/s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a stopped bar still prints an empty line on a pipe
    )
    with bar:
        task = bar.add_task("training", total=iters, loss=float("nan"), rate=0.0)

        def progress(iteration: int, value: float) -> None:
            if not bar.tasks[0].completed:  # the run composed: show what it trains on, once
                console.print(dataset.describe(), highlight=False, soft_wrap=True)
            speed = bar.tasks[0].speed or 0.0
            bar.update(task, completed=iteration, loss=value, rate=speed)

        try:
            result = train(
                config,
                out,
                registry=registry,
                resume=resume,
                overwrite=overwrite,
                progress=progress,
                dataset=dataset,
            )
        except KeyboardInterrupt as error:  # SIGINT, or SIGTERM (`Terminated`)
            error.reached = int(bar.tasks[0].completed)  # type: ignore[attr-defined]
            raise
    final = sum(result.losses[-50:]) / max(len(result.losses[-50:]), 1)
    typer.echo(
        f"trained {result.iteration} iterations in {result.seconds:.1f}s; loss {final:.4f}; wrote {out}"
    )
