"""glibc allocator settings that keep a conversion's memory bounded by its slabs.

zarr encodes and decodes chunks on a thread pool; glibc gives every thread its own malloc arena
and keeps freed slab-sized buffers in each, so the resident size grows with the thread count, not
with the data.  Measured on the 300 × 512² CT benchmark (one process): 351 MiB peak by default,
229 MiB with two arenas — and 0.9 s faster.  Both functions are no-ops off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from functools import cache

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # from glibc's malloc.h


@cache  # find_library runs ldconfig: once per process, not once per volume
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - only glibc has it
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process (best before threads start).

    The CLI calls it first thing and :func:`voxelhub.ingest` on entry: two arenas are what
    ``MALLOC_ARENA_MAX=2`` gives, a common setting for threaded Python services, and cost
    nothing measurable here.
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))


def release_free_memory() -> None:
    """Return freed heap pages to the operating system (after each converted volume)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
