"""Colorization inputs and scores: gray images from colour data, and colour error against the truth.

`diffkit colorize` fixes the channel mean (gray) of every output to its input, so any error is in
the chroma `x - gray`. It is scored against two baselines that keep the same gray: the gray image
itself (no colour at all) and the best single colour cast, gray plus the mean chroma of the true
images (the constant that minimises the squared error; it peeks at the truth, so beating it is a
conservative test). Neither baseline says which images are bluer or greener than the average;
`chroma_corr` measures exactly that: the correlation of the predicted with the true chroma, both
taken relative to their per-channel mean (0 for both baselines, 1 for perfect colours).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffkit.core.errors import UnknownComponentError, UsageError
from diffkit.plugin.registry import Registry
from diffkit.run.io import read_real


def channel_gray(images: torch.Tensor) -> torch.Tensor:
    """Channel mean `(N, H, W)` of images `(N, C, H, W)`."""
    return images.mean(dim=1)


def colorize_input(
    registry: Registry, name: str, options: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gray images float64 `(N, H, W)` (or as stored) for `--data NAME`, and the colour truth if known.

    `name` is a registered dataset first (built with `options`), else a `.npy` / `.npz` file.
    Colour images `(N, 3, H, W)` become their channel mean and are returned as the truth; gray
    input `(N, H, W)` or `(N, 1, H, W)` passes through with no truth.
    """
    try:
        registry.get("dataset", name)
    except UnknownComponentError:
        if options:
            raise UsageError(f"--data-opt applies to a dataset, not to the file {name!r}") from None
        images = torch.from_numpy(read_real(Path(name), "--data"))
    else:
        images = registry.build("dataset", name, options).data.to(torch.float64)
    if images.ndim == 4 and images.shape[1] == 3:
        return channel_gray(images), images
    return images, None


def colour_scores(colourised: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Colour RMSE of `colourised` against `truth` (both `(N, 3, H, W)`) and of the two baselines.

    Returns:
        `rmse` of the colourised images, `gray_rmse` of the gray images, `cast_rmse` of gray plus
        the truth's mean chroma (all over every value, in data units), and `beats_cast`, the
        fraction of images whose own RMSE is below the cast baseline's for that image, and
        `chroma_corr` (module docstring).
    """
    truth = truth.to(torch.float64)
    colourised = colourised.to(torch.float64)
    gray = channel_gray(truth).unsqueeze(1)
    cast = gray + (truth - gray).mean(dim=(0, 2, 3), keepdim=True)
    dims = tuple(range(1, truth.ndim))

    def per_image(guess: torch.Tensor) -> torch.Tensor:
        return ((guess - truth) ** 2).mean(dim=dims)

    ours, theirs = per_image(colourised), per_image(cast)
    chroma = [c - c.mean(dim=(0, 2, 3), keepdim=True) for c in (colourised - gray, truth - gray)]
    spread = [float(c.square().mean().sqrt()) for c in chroma]
    scale = spread[0] * spread[1] * chroma[0].numel()
    # a chroma constant up to float rounding (below 1e-6 in data units) carries no information
    corr = float((chroma[0] * chroma[1]).sum()) / scale if min(spread) > 1e-6 else 0.0
    return {
        "rmse": float(ours.mean().sqrt()),
        "gray_rmse": float(per_image(gray.expand_as(truth)).mean().sqrt()),
        "cast_rmse": float(theirs.mean().sqrt()),
        "beats_cast": float((ours < theirs).double().mean()),
        "chroma_corr": corr,
    }


__all__ = ["channel_gray", "colorize_input", "colour_scores"]
