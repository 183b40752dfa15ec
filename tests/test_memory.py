"""showwork.memory: what a finished stage or step frees goes back to the OS, not only to glibc."""

import gc
import platform
import sys

import jax
import jax.numpy as jnp
import pytest

from showwork import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="reads /proc and glibc's malloc_trim")


def test_resident_bytes_reads_this_process_and_sees_an_allocation():
    before = memory.resident_bytes()
    block = bytearray(200 * 1024 * 1024)  # zero-filled: every page touched
    after = memory.resident_bytes()
    assert before and after - before > 150e6
    del block


def test_trim_hands_freed_heap_back_that_free_alone_keeps():
    # Blocks below glibc's mmap threshold live on the heap; one kept block above them stops
    # free() from shrinking the heap's top, as a live array does in a training process.
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # 256 MB
    keep = bytearray(64 * 1024)
    del blocks
    gc.collect()
    held = memory.resident_bytes()
    assert memory.trim() is True
    trimmed = memory.resident_bytes()
    assert held - trimmed > 150e6, f"trim gave back {(held - trimmed) / 1e6:.0f} MB of 256 MB freed"
    del keep


def test_release_drops_compiled_programs_and_reports_rss_before_and_after():
    f = jax.jit(lambda x: x * 2 + 1)
    f(jnp.ones(8)).block_until_ready()
    assert f._cache_size() == 1
    freed = memory.release()
    assert f._cache_size() == 0  # the persistent XLA cache, not this process, keeps programs between stages
    assert freed["trimmed"] is True
    assert freed["rss_before"] > 0 and freed["rss_after"] > 0
