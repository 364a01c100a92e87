"""Checkpoint generations: a checkpoint's files written as one unit, then published under public names.

A run folder keeps its public layout (`config.json`, `model.safetensors`, ... at the top) and a
hidden store `.checkpoints/` of complete generations, each a folder named by its checkpoint id
`<iteration>-<random>` that every file of the generation records. Writing generation N:

1. write all files into `.checkpoints/.tmp-N-*` (each fsynced), fsync it, rename it to
   `.checkpoints/N`: the generation is complete, and it appears as one unit or not at all;
2. publish it: hard-link each file next to its public name and `os.replace` it over that name,
   `config.json` last. Replacing `config.json` is the commit: the checkpoint of a folder is the
   one its top-level `config.json` names;
3. prune: remove every other generation and leftovers of killed writers.

Until the commit the previous generation M stays in the store, so a kill at any instant leaves
either M or N committed and complete: top-level files that disagree with `config.json` (a kill
inside step 2) are read from `.checkpoints/<id>` instead (`diffkit.train.checkpoint`). SIGINT and
SIGTERM are deferred from the rename in step 1 to the end of step 3 (a few renames and links), so
only SIGKILL or a power cut can leave the top level mixed; the next checkpoint write tidies it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from diffkit.core.errors import UsageError
from diffkit.run.io import check_folder, deferred_signals

STORE = ".checkpoints"
TMP = ".tmp-"
LEGACY = "legacy"  # the kept copy of a checkpoint without id (older diffkit) while it is replaced
#: Environment variables of the signal test: seconds to sleep before each file operation, and a
#: file to which `begin <id>`, `commit <id>` and `done <iteration>` lines are appended
#: (tests/test_train_signals.py).
PAUSE_ENV, LOG_ENV = "DIFFKIT_TEST_CHECKPOINT_PAUSE", "DIFFKIT_TEST_CHECKPOINT_LOG"


def between(event: str) -> None:
    """Called before every file operation of a checkpoint write (a test hook; no-op in normal use)."""
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def log_event(event: str) -> None:
    """Append `event` to the file named by DIFFKIT_TEST_CHECKPOINT_LOG, if set (signal-test hook)."""
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a") as handle:
            handle.write(event + "\n")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames, links) to disk; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_generation(folder: Path, ident: str, files: dict[str, bytes], stale: Iterable[str] = ()) -> None:
    """Write `files` (name -> content; the last one commits) as generation `ident` of run `folder`.

    Writes `.checkpoints/.tmp-<ident>-*`, renames it to `.checkpoints/<ident>`, replaces each
    `folder/<name>` by a hard link to its file in dict order, then removes the other generations,
    temporaries of killed writers and the files `stale` (names in `folder`). On any exception
    before the rename (a signal included) the temporary folder is removed; from the rename on,
    SIGINT and SIGTERM wait until the generation is committed and the folder tidy.
    """
    store = folder / STORE
    store.mkdir(parents=True, exist_ok=True)
    committed, known = _named(folder / list(files)[-1])
    if known and committed is None and (folder / list(files)[-1]).exists():
        with deferred_signals():
            _keep_legacy(folder, list(files))
        committed = LEGACY
    prune(folder, committed, list(files), generations=known)  # what killed writers left
    tmp: Path | None = None
    try:
        with deferred_signals():  # no signal between creating the folder and knowing its name
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP}{ident}-", dir=store))
        for name, data in files.items():
            between(f"write {name}")
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
            with open(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
        fsync_dir(tmp)
        with deferred_signals():
            between("rename")
            os.rename(tmp, store / ident)
            fsync_dir(store)
            _publish(folder, store / ident, list(files))
            log_event(f"commit {ident}")
            between("prune")
            prune(folder, keep=ident, names=list(files))
            for name in stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder / name)
    except BaseException:
        if tmp is not None:  # already renamed if the exception came after the rename
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(folder: Path, generation: Path, names: list[str]) -> None:
    """Replace `folder/<name>` by a hard link to `generation/<name>`, in order of `names`."""
    for name in names:
        between(f"link {name}")
        tmp = folder / f".{name}.{generation.name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            os.link(generation / name, tmp)
        except OSError:  # a file system without hard links: copy instead
            shutil.copyfile(generation / name, tmp)
        between(f"replace {name}")
        os.replace(tmp, folder / name)
    fsync_dir(folder)


def _keep_legacy(folder: Path, names: list[str]) -> None:
    """Link an id-less checkpoint's files into `.checkpoints/legacy/` (once) before replacing them."""
    kept = folder / STORE / LEGACY
    if kept.is_dir():
        return
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP}{LEGACY}-", dir=folder / STORE))
    for name in names:
        if (folder / name).is_file():
            try:
                os.link(folder / name, tmp / name)
            except OSError:  # a file system without hard links: copy instead
                shutil.copyfile(folder / name, tmp / name)
    fsync_dir(tmp)
    os.rename(tmp, kept)
    fsync_dir(folder / STORE)


def prune(folder: Path, keep: str | None, names: Sequence[str], *, generations: bool = True) -> None:
    """Remove temporaries of killed writers from run `folder`, and (if `generations`) all but `keep`."""
    store = folder / STORE
    if store.is_dir():
        for entry in store.iterdir():
            if entry.name.startswith(TMP) or (generations and entry.name != keep):
                shutil.rmtree(entry, ignore_errors=True)
    for entry in folder.glob(".*.tmp"):  # atomic_file and publish temporaries of the run's files
        if any(entry.name.startswith(f".{name}.") for name in names) or entry.name.startswith(
            (".loss.png.", ".samples_")
        ):
            with contextlib.suppress(OSError):
                entry.unlink()


def _named(config: Path) -> tuple[str | None, bool]:
    """The generation `config` (the top-level config.json) names, and whether that is known."""
    if not config.exists():
        return None, True  # nothing committed: every generation is a leftover
    try:
        record = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None, False  # unreadable: keep every generation
    if not isinstance(record, dict):
        return None, False
    ident = record.get("checkpoint")
    return (ident, True) if isinstance(ident, str) or ident is None else (None, False)


def check_run_folder(out: Path) -> None:
    """Refuse an `--out` that is a file, or where no folder can be created (nothing is created)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a run folder")
    check_folder(out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
