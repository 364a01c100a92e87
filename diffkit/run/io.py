"""Output files, written atomically: a temporary file in the target folder, then a rename."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from diffkit.core.errors import UsageError
from diffkit.plugin.validate import real_array


def check_writable(path: Path, suffix: str) -> Path:
    """Validate an output path before any work: right suffix, a folder that exists or can be made.

    Nothing is created: call `make_parent` just before writing.
    """
    if path.suffix != suffix:
        raise UsageError(f"output file {str(path)!r} must end with {suffix}")
    if path.is_dir():
        raise UsageError(f"output path {str(path)!r} is a directory")
    check_folder(path.parent if str(path.parent) else Path("."))
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"cannot overwrite {str(path)!r}: permission denied")
    return path


def check_folder(folder: Path) -> Path:
    """Validate an output folder: it, or its nearest existing ancestor, must be a writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot create output folder {str(folder)!r}: {str(existing)!r} is not a folder")
    try:  # an unnamed temporary file: os.access says yes to root on read-only file systems and /proc
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        reason = error.strerror or error
        raise UsageError(f"output folder {str(existing)!r} is not writable ({reason})") from None
    return folder


def make_parent(path: Path) -> Path:
    """Create the folder of output file `path` (checked by `check_writable`); return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs; they arrive (and raise) right after it.

    For short critical sections only: creating a temporary file and learning its name, a rename.
    The handlers are swapped for recorders in the main thread (a thread signal mask would not do:
    the kernel hands a process-directed signal to any thread that leaves it unblocked, such as
    torch's worker threads, and Python then runs the handler in the main thread at once); a
    recorded signal is raised again, to the restored handler, when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None:  # None: installed outside Python, leave it alone
            previous[signum] = signal.signal(signum, record)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces `path` only if the block finishes without error.

    The temporary `.<name>.*.tmp` next to `path` is removed on every exception, KeyboardInterrupt
    and the CLI's SIGTERM exception included.
    """
    name: str | None = None
    try:
        with deferred_signals():  # a signal cannot land between creating the file and naming it
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w+b") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(name, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(name, path)
    except BaseException:
        if name is not None:
            with contextlib.suppress(OSError):
                os.unlink(name)
        raise


def write_samples(
    path: Path,
    samples: Any,
    nfe: int,
    seconds: float,
    config: dict[str, Any],
    *,
    before_publish: Callable[[], None] | None = None,
) -> None:
    """Write the `diffkit sample` npz: `samples` float32 `(N, *shape)`, `nfe`, `seconds`, `config` JSON.

    `samples` (a float array or tensor, on any device) is converted and written `WRITE_ROWS`
    rows at a time, so no second full copy is made. `before_publish` runs once the new file is
    complete on disk but before it replaces `path` (the CLI writes the plot there): if it raises,
    the new file is removed and `path` is left as it was.
    """
    with atomic_file(path) as handle:
        with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("samples.npy", "w", force_zip64=True) as member:
                _write_float32(member, samples)
            for name, value in (
                ("nfe", np.asarray(nfe)),
                ("seconds", np.asarray(float(seconds))),
                ("config", np.asarray(json.dumps(config, sort_keys=True))),
            ):
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, value, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
        if before_publish is not None:
            before_publish()


WRITE_ROWS = 16_384  # rows converted to float32 and written at a time by `write_samples`


def _write_float32(member: IO[bytes], samples: Any) -> None:
    """Write `samples` `(N, *shape)` as one float32 `.npy` stream, `WRITE_ROWS` rows at a time."""
    shape = tuple(int(size) for size in samples.shape)
    descr = np.lib.format.dtype_to_descr(np.dtype(np.float32))
    np.lib.format.write_array_header_1_0(member, {"descr": descr, "fortran_order": False, "shape": shape})
    for start in range(0, shape[0], WRITE_ROWS):
        block = samples[start : start + WRITE_ROWS]
        if hasattr(block, "detach"):  # a torch tensor
            block = block.detach().float().cpu().numpy()
        member.write(np.ascontiguousarray(block, dtype=np.float32).tobytes())


def write_with(path: Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Atomically write `path` with `writer(handle)`."""
    with atomic_file(path) as handle:
        writer(handle)


def read_array(path: Path) -> np.ndarray:
    """Read an `.npy` array or the `samples` array of an `.npz` file; UsageError if unreadable."""
    if path.is_dir():
        raise UsageError(f"{str(path)!r} is a directory, not a .npy or .npz file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if not hasattr(data, "files"):
                    raise UsageError(f"{str(path)!r} is not an .npz archive")
                if "samples" not in data.files:
                    raise UsageError(f"{str(path)!r} has no 'samples' array")
                return np.asarray(data["samples"])
        array = np.load(path, allow_pickle=False)
        if not isinstance(array, np.ndarray):
            raise UsageError(f"{str(path)!r} is an .npz archive; name it with the .npz suffix")
        return np.asarray(array)
    except FileNotFoundError:
        raise UsageError(f"file not found: {str(path)!r}") from None
    except UsageError:
        raise
    except Exception as error:  # numpy and zipfile raise many types for a damaged file
        reason = " ".join(str(error).split()) or type(error).__name__
        if "pickle" in reason:  # numpy's hint to load unsafely is not advice diffkit gives
            reason = "it holds pickled Python objects, which diffkit never loads"
        raise UsageError(f"cannot read {str(path)!r}: corrupt or not a numpy file ({reason})") from None


def read_real(path: Path, flag: str) -> np.ndarray:
    """`read_array` checked as a non-empty float64 array of finite reals (`diffkit.plugin.validate`)."""
    return real_array(read_array(path), f"{flag} {str(path)!r}")
