"""`diffkit evaluate`: classifier FID, KID, label coverage of generated images, with the real-data floor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from diffkit.classifier import shipped_classifiers
from diffkit.cli.common import handle_errors, load_registry
from diffkit.core.errors import UsageError
from diffkit.eval.image_eval import ImageEvaluation, evaluate_images
from diffkit.plugin import validate
from diffkit.run.io import read_array


@handle_errors
def evaluate(
    data: Annotated[str, typer.Option(help="Dataset with a shipped classifier: digits or mnist.")] = "digits",
    samples: Annotated[
        Path, typer.Option(help="Images to score (.npz from `diffkit sample`, or .npy), (N, 1, H, W).")
    ] = Path("samples.npz"),
    seed: Annotated[int, typer.Option(help="Seed of the KID subsets.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Score SAMPLES against dataset DATA: FID, KID and label TV on the shipped classifier's features."""
    if data not in shipped_classifiers():
        raise UsageError(f"no shipped classifier for dataset {data!r}; choose one of {shipped_classifiers()}")
    validate.seed("--seed", seed)
    array = read_array(samples)
    if not np.issubdtype(array.dtype, np.floating):
        raise UsageError(f"{str(samples)!r}: samples must be floating point, got {array.dtype}")
    dataset = load_registry().build("dataset", data, {})
    report = evaluate_images(torch.from_numpy(array), dataset, seed=seed)  # read in batches, as float32
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        _print_table(report)


def _print_table(report: ImageEvaluation) -> None:
    table = Table(
        title=f"diffkit evaluate ({report.dataset}, reference: {report.reference_size} train images)"
    )
    for column in ("", "n", "FID", "KID ± std", "label TV"):
        table.add_column(column, justify="right" if column else "left")
    for name, scores in (("samples", report.samples), ("floor (held-out real)", report.floor)):
        kid = f"{scores.kid:.1f} ± {scores.kid_std:.1f}"
        table.add_row(name, str(scores.n), f"{scores.fid:.3f}", kid, f"{scores.label_tv:.4f}")
    Console().print(table)
    if report.fid_at_floor_n is not None and report.samples.n != report.floor.n:
        typer.echo(
            f"FID of the first {report.floor.n} samples (compare with the floor): {report.fid_at_floor_n:.3f}"
        )
