"""Checks of user input made before any work: numbers, sizes against memory, arrays, records.

Every check raises `UsageError` with one line naming the flag (or file) and what it must be, so
the CLI can refuse bad input with exit code 2 before it samples, trains or writes anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from diffkit.core.errors import UsageError

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
PARAMETERIZATIONS = ("eps", "x0", "v", "score")


def positive_int(flag: str, value: int | None) -> None:
    """UsageError unless `value` is None or an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UsageError(f"{flag} must be a positive integer, got {value}")


def seed(flag: str, value: int) -> None:
    """UsageError unless `value` is an integer seed in [0, 2**63 - 1]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise UsageError(f"{flag} must be an integer in [0, 2**63-1], got {value}")


def finite(flag: str, value: float | None) -> None:
    """UsageError unless `value` is None or a finite number."""
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number, got {value}")


def positive_finite(flag: str, value: float) -> None:
    """UsageError unless `value` is a finite number > 0 (tolerances, rates)."""
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a positive finite number, got {value}")


def in_range(flag: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    """UsageError unless `low <= value <= high` (`< high` with `high_open`); NaN never passes."""
    inside = low <= value < high if high_open else low <= value <= high
    if not inside:
        bracket = ")" if high_open else "]"
        raise UsageError(f"{flag} must lie in [{low:g}, {high:g}{bracket}, got {value}")


def device(name: str) -> torch.device:
    """The torch device `name` if this machine has it (cpu, cuda[:i], mps), else UsageError."""
    try:
        found = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"unknown device {name!r}; expected cpu or cuda") from None
    if found.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {name!r}; expected cpu or cuda")
    if found.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available on this machine")
    if found.type == "cuda" and found.index is not None and found.index >= torch.cuda.device_count():
        raise UsageError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    if found.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {name!r} requested but MPS is not available on this machine")
    return found


def available_memory() -> int:
    """Bytes of memory this process may use: MemAvailable on Linux, else physical memory."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return 2**62  # unknown platform: do not refuse


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if nbytes < 1024 or unit == "EB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} EB"  # pragma: no cover


def memory(what: str, nbytes: float) -> None:
    """UsageError if an allocation estimated at `nbytes` exceeds the available memory."""
    limit = available_memory()
    if nbytes > limit:
        raise UsageError(
            f"{what} needs about {_human(nbytes)} of memory, but only {_human(limit)} is available"
        )


def real_array(array: Any, source: str, *, allow_nonfinite: bool = False) -> np.ndarray:
    """`array` as float64 if it is a non-empty real numeric array with finite values, else UsageError.

    Args:
        array: what was read from the file.
        source: the file (and array) named in messages, e.g. `'x.npz'`.
        allow_nonfinite: accept NaN and Inf (never used for data or noise).

    Returns:
        float64 array of the same shape `(N, *dims)`.
    """
    array = np.asarray(array)
    kind = array.dtype.kind
    if kind == "c":
        raise UsageError(f"{source}: complex numbers are not supported; expected real floats")
    if kind not in "biuf":
        raise UsageError(f"{source}: expected an array of real numbers, got dtype {array.dtype}")
    if array.ndim == 0:
        raise UsageError(f"{source}: expected an array with one row per sample, got a scalar")
    if array.size == 0:
        raise UsageError(f"{source}: the array is empty (shape {array.shape})")
    values = array.astype(np.float64, copy=False)
    if not allow_nonfinite and not bool(np.isfinite(values).all()):
        raise UsageError(f"{source}: the array contains NaN or Inf")
    return values


def checkpoint_record(
    record: Mapping[str, Any], source: str, kinds: Sequence[str] = PARAMETERIZATIONS
) -> None:
    """UsageError unless a checkpoint config's `kind` (one of `kinds`) and `data_shape` are meaningful."""
    kind = record.get("kind")
    if kind not in kinds:
        raise UsageError(f"{source}: kind must be one of {', '.join(kinds)}, got {kind!r}")
    shape = record.get("data_shape")
    if (
        not isinstance(shape, Sequence)
        or isinstance(shape, str)
        or not shape
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
    ):
        raise UsageError(f"{source}: data_shape must be a list of positive integers, got {shape!r}")
    for key, high in (("iteration", math.inf), ("seed", SEED_MAX)):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            raise UsageError(f"{source}: {key} must be an integer in [0, {high}], got {value!r}")


def check_train_numbers(
    iters: int,
    batch_size: int,
    lr: float,
    ema: float,
    clip: float,
    seed_value: int,
    every: int,
    device_name: str = "cpu",
) -> None:
    """Range and finiteness of `diffkit train`'s numeric flags (the batch also against memory)."""
    device(device_name)
    positive_int("--iters", iters)
    positive_int("--batch-size", batch_size)
    positive_int("--checkpoint-every", every)
    positive_finite("--lr", lr)
    in_range("--ema", ema, 0.0, 1.0, high_open=True)
    if not (math.isfinite(clip) and clip >= 0):
        raise UsageError(f"--clip must be a finite number >= 0 (0 disables clipping), got {clip}")
    seed("--seed", seed_value)
    # a batch of examples, its noise, targets and activations (>= 64 bytes per example)
    memory(f"--batch-size {batch_size}", 64.0 * batch_size)
