"""Users' own training data: a `.npy` or `.npz` array checked and wrapped as a `Dataset`.

Accepted layouts (one row per example):

- points `(N, D)`: unbounded real values (`value_range None`), like the 2-D toys;
- gray images `(N, H, W)`: read as one channel, `(N, 1, H, W)`;
- images `(N, C, H, W)`: channels first, values in [-1, 1].

Images must already lie in [-1, 1], the range of every image dataset here and the one the `vlb`
loss's discretized decoder, `diffkit evaluate` and the plots assume: pixels in [0, 255] would be
trained at a scale nothing downstream expects and come back clipped, so an out-of-range file is
refused with its observed range and the rescaling to apply. Values must be real floats (an
integer file is refused: its scaling is unknown), finite, and N >= 1.

An `.npz` holds the examples under `samples`, `data` or `x` (first found, in that order) and
optional integer class labels `(N,)` in 0..K-1 under `labels` or `y`, so a class-conditional
network (`--net-opt num_classes=K`) trains on it. The dataset's `source` records the file's
absolute path and SHA-256, which `diffkit train` writes into the checkpoint so that `--resume`
refuses a file whose content changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffkit.core.errors import UnknownComponentError, UsageError
from diffkit.plugin.registry import Registry
from diffkit.run.data import Dataset

SUFFIXES: tuple[str, ...] = (".npy", ".npz")
DATA_KEYS: tuple[str, ...] = ("samples", "data", "x")
LABEL_KEYS: tuple[str, ...] = ("labels", "y")
IMAGE_RANGE: tuple[float, float] = (-1.0, 1.0)
RANGE_TOLERANCE = 1e-6  # float rounding of values meant to be exactly -1 or 1


def is_data_file(name: str) -> bool:
    """True when `name` ends in `.npy` or `.npz` (whether or not the file exists)."""
    return Path(name).suffix.lower() in SUFFIXES


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the bytes of `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The examples and optional labels stored in `path` (UsageError if unreadable)."""
    where = repr(str(path))
    if not path.exists():
        raise UsageError(f"data file not found: {where}")
    if path.is_dir():
        raise UsageError(f"{where} is a directory, not a .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded, None
        with loaded:
            found = [key for key in DATA_KEYS if key in loaded.files]
            if not found:
                names = ", ".join(loaded.files) or "none"
                raise UsageError(f"{where} has none of the arrays {', '.join(DATA_KEYS)} (it has: {names})")
            labels = next((loaded[key] for key in LABEL_KEYS if key in loaded.files), None)
            return loaded[found[0]], labels
    except UsageError:
        raise
    except Exception as error:  # numpy and zipfile raise many types for a damaged file
        reason = " ".join(str(error).split()) or type(error).__name__
        raise UsageError(f"cannot read {where}: corrupt or not a numpy file ({reason})") from None


def _rescale_hint(low: float, high: float) -> str:
    """How to bring values in `[low, high]` into [-1, 1]."""
    if 0.0 <= low and high <= 255.0:
        return "for 0..255 pixels use x / 127.5 - 1"
    if high > low:
        shift = f"x - {low:.4g}" if low >= 0 else f"x + {-low:.4g}"
        return f"rescale, e.g. 2 * ({shift}) / {high - low:.4g} - 1"
    return "rescale into [-1, 1]"


def check_examples(array: np.ndarray, where: str) -> np.ndarray:
    """`array` as float32 `(N, D)` or `(N, C, H, W)` after the checks above, else UsageError."""
    if array.dtype.kind != "f":
        hint = (
            "; convert (and scale images to [-1, 1], e.g. x / 127.5 - 1)" if array.dtype.kind in "biu" else ""
        )
        raise UsageError(f"{where}: data must be real floats, got dtype {array.dtype}{hint}")
    if array.ndim not in (2, 3, 4):
        raise UsageError(
            f"{where}: data must be points (N, D), gray images (N, H, W) or images (N, C, H, W), "
            f"got shape {array.shape}"
        )
    if array.ndim == 4 and array.shape[1] > 4 and array.shape[3] <= 4:
        raise UsageError(
            f"{where}: shape {array.shape} looks channels-last (N, H, W, C); "
            f"store channels first, e.g. np.moveaxis(x, -1, 1)"
        )
    if array.size == 0:
        raise UsageError(f"{where}: the data is empty (shape {array.shape})")
    values = array.astype(np.float32)
    if not bool(np.isfinite(values).all()):
        raise UsageError(f"{where}: the data contains NaN or Inf (or values beyond float32)")
    if array.ndim == 3:
        values = values[:, None]
    if values.ndim == 4:
        low, high = float(values.min()), float(values.max())
        if low < IMAGE_RANGE[0] - RANGE_TOLERANCE or high > IMAGE_RANGE[1] + RANGE_TOLERANCE:
            raise UsageError(
                f"{where}: images must lie in [-1, 1], got values in [{low:.4g}, {high:.4g}]; "
                f"{_rescale_hint(low, high)}"
            )
        values = np.clip(values, *IMAGE_RANGE)
    return values


def check_labels(labels: np.ndarray, count: int, where: str) -> tuple[np.ndarray, int]:
    """Labels as int64 `(N,)` with their class count K = max + 1, else UsageError."""
    if labels.dtype.kind not in "iu":
        raise UsageError(f"{where}: labels must be integers 0..K-1, got dtype {labels.dtype}")
    if labels.shape != (count,):
        raise UsageError(f"{where}: labels must have shape ({count},), one per example, got {labels.shape}")
    if int(labels.min()) < 0:
        raise UsageError(f"{where}: labels must be integers 0..K-1, got {int(labels.min())}")
    return labels.astype(np.int64), int(labels.max()) + 1


def load_data_file(name: str) -> Dataset:
    """The dataset stored in the `.npy` / `.npz` file `name` (module docstring), else UsageError."""
    path = Path(name)
    where = f"data file {name!r}"
    array, labels = _read(path)
    values = check_examples(array, where)
    image = values.ndim == 4
    source = {"path": str(path.resolve()), "sha256": file_sha256(path)}
    data = torch.from_numpy(np.ascontiguousarray(values))
    value_range = IMAGE_RANGE if image else None
    if labels is None:
        return Dataset(name, data, value_range=value_range, source=source)
    labels, classes = check_labels(labels, len(values), where)
    return Dataset(name, data, torch.from_numpy(labels), classes, value_range, source)


def resolve_dataset(registry: Registry, name: str, options: Mapping[str, Any]) -> Dataset:
    """The registered dataset `name` first, else the `.npy` / `.npz` file at that path.

    A registered name always wins over a file of the same name (as model names win over
    checkpoint folders). A file takes no options.
    """
    try:
        registry.get("dataset", name)
    except UnknownComponentError:
        if not is_data_file(name):
            if Path(name).is_file():
                raise UsageError(f"data file {name!r} must end in .npy or .npz") from None
            raise
        if options:
            raise UsageError(
                f"--data-opt does not apply to data file {name!r} (got {', '.join(options)})"
            ) from None
        return load_data_file(name)
    return registry.build("dataset", name, options)


def check_unchanged(recorded: Mapping[str, Any], dataset: Dataset, folder: str) -> None:
    """UsageError if checkpoint `folder` was trained on a data file whose content is now different."""
    theirs = recorded.get("sha256")
    ours = None if dataset.source is None else dataset.source.get("sha256")
    if theirs != ours:
        raise UsageError(
            f"cannot resume from {folder!r}: data file {dataset.name!r} changed since the checkpoint "
            f"(sha256 {str(theirs)[:12]} there, {str(ours)[:12]} now); train into another --out"
        )


__all__ = [
    "DATA_KEYS",
    "IMAGE_RANGE",
    "LABEL_KEYS",
    "check_examples",
    "check_labels",
    "check_unchanged",
    "file_sha256",
    "is_data_file",
    "load_data_file",
    "resolve_dataset",
]
