"""Give a finished stage's memory back before the next one starts.

`jobs.pipeline` runs every stage in one process. Without this, what a stage
freed stays resident: glibc keeps freed heap pages in its arenas, and JAX
keeps every compiled executable in memory. The next stage's peak then sits
on top of the last one's high-water mark instead of starting near zero
(the numbers are in docs/BENCHMARKS.md, "Where the demo's memory goes").
Compiled programs are not lost: the persistent XLA cache (showwork.xla_cache)
loads them again in well under a second each if a later stage needs them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import resource

import jax


def resident_bytes() -> int | None:
    """This process's resident set now (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize()


def trim() -> bool:
    """Ask glibc to return free heap pages to the OS (False where libc has no malloc_trim: musl, macOS).

    Training loops call it after every step: a step's temporaries (a rollout's KV cache, a gradient
    pass's activations) are freed into glibc's arenas, which keep them, and the next step's
    allocations of other sizes then land on top instead of reusing them. A few milliseconds a step."""
    malloc_trim = _malloc_trim()
    if malloc_trim is None:
        return False
    malloc_trim(ctypes.c_size_t(0))
    return True


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, looked up once (find_library runs ldconfig), or None without it."""
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def gigabytes() -> float | None:
    """resident_bytes() in GB (2 decimals), for log lines."""
    now = resident_bytes()
    return None if now is None else round(now / 1e9, 2)


def release() -> dict:
    """Drop unreferenced arrays and in-memory compiled programs, then trim the heap.

    Returns the resident set before and after (bytes; None where unknown), for the stage log."""
    before = resident_bytes()
    gc.collect()
    jax.clear_caches()
    gc.collect()
    trimmed = trim()
    return {"rss_before": before, "rss_after": resident_bytes(), "trimmed": trimmed}
