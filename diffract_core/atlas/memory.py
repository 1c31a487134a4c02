"""Giving freed memory back to the system during a build.

glibc's malloc keeps freed blocks below its mmap threshold (which rises by itself, up to 32 MiB, as
large blocks are freed) in its heaps, and gives back only the free space at a heap's top. A recorded
model call frees its temporaries between the codes the recording keeps, and a batch frees its
recording between longer-lived blocks, so that space is never at the top: without trimming, a build's
resident memory grows call after call and batch after batch although the memory it uses does not.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc only
    except (AttributeError, OSError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Give the memory freed so far back to the system (glibc's malloc_trim); False where the C
    library has no such call (musl, macOS), which return freed memory by themselves or not at all."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
