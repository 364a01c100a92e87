"""Returning freed memory to the operating system between the phases of a long run.

glibc's malloc keeps freed blocks of up to 32 MB in its heap (its mmap threshold rises to the
largest block freed), so a run that allocates many such temporaries phase after phase keeps
their pages resident long after they are freed, and its peak memory grows with the number of
phases rather than with the largest one. `release_free_memory` hands those pages back
(`malloc_trim(0)`); on other C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():  # noqa: ANN202 - a ctypes function or None
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Give freed heap pages back to the operating system (glibc `malloc_trim(0)`; else a no-op)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
