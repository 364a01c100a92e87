"""Output files, written atomically: a temporary file in the target folder, then a rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from diffkit.errors import UsageError


def check_writable(path: Path, suffix: str) -> Path:
    """Validate an output path before any work: right suffix, writable folder (created if missing)."""
    if path.suffix != suffix:
        raise UsageError(f"output file {str(path)!r} must end with {suffix}")
    if path.is_dir():
        raise UsageError(f"output path {str(path)!r} is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create output folder {str(folder)!r}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to output folder {str(folder)!r}: permission denied")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"cannot overwrite {str(path)!r}: permission denied")
    return path


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces `path` only if the block finishes without error."""
    handle = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)  # NamedTemporaryFile creates 0600
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise


def write_samples(path: Path, samples: np.ndarray, nfe: int, seconds: float, config: dict[str, Any]) -> None:
    """Write the `diffkit sample` npz: `samples` float32 `(N, *shape)`, `nfe`, `seconds`, `config` JSON."""
    with atomic_file(path) as handle:
        np.savez(
            handle,
            samples=np.asarray(samples, dtype=np.float32),
            nfe=np.asarray(nfe),
            seconds=np.asarray(float(seconds)),
            config=np.asarray(json.dumps(config, sort_keys=True)),
        )


def write_with(path: Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Atomically write `path` with `writer(handle)`."""
    with atomic_file(path) as handle:
        writer(handle)


def read_array(path: Path) -> np.ndarray:
    """Read an `.npy` array or the `samples` array of an `.npz` file; UsageError if unreadable."""
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                if "samples" not in data:
                    raise UsageError(f"{str(path)!r} has no 'samples' array")
                return np.asarray(data["samples"])
        return np.asarray(np.load(path, allow_pickle=False))
    except FileNotFoundError:
        raise UsageError(f"file not found: {str(path)!r}") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {str(path)!r}: {error}") from None
