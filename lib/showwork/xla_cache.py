"""The persistent XLA compilation cache, and how many programs a job compiled or loaded from it.

Every job compiles the same few programs (a train step per shape, the
sampler's prefill and decode, the eval forward): on CPU 20–70 s before the
first step. With the cache, a resumed run, the next eval shard, the next
stage and the next pipeline run load what an earlier process compiled.

Where it lives: `JAX_COMPILATION_CACHE_DIR` when set (the manifests set it to
the bus: the `/bus` volume on kind, `gs://<bucket>/xla-cache` on GKE, so a
new pod finds what the last one compiled), else `SHOWWORK_CACHE`/xla on
this machine. Entries are keyed by the program, its devices and the
compiler's version, so one directory serves every recipe and tier.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

# jax.monitoring event names (jax/_src/dispatch.py, jax/_src/compiler.py, jax 0.10): one backend
# compile event per program XLA was asked for, whether compiled or loaded; one hit per load.
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclass
class Counts:
    """Programs this process asked XLA for, since `enable()`."""

    requested: int = 0
    loaded: int = 0  # from the persistent cache
    seconds: float = 0.0  # in XLA: compiling, or reading the cache

    @property
    def compiled(self) -> int:
        return self.requested - self.loaded

    def as_dict(self) -> dict:
        return {"programs_compiled": self.compiled, "programs_from_cache": self.loaded,
                "xla_seconds": round(self.seconds, 2)}


_counts = Counts()
_lock = threading.Lock()
_listening = False


def _on_event(event: str, **_) -> None:
    if event == _CACHE_HIT:
        with _lock:
            _counts.loaded += 1


def _on_duration(event: str, seconds: float, **_) -> None:
    if event == _BACKEND_COMPILE:
        with _lock:
            _counts.requested += 1
            _counts.seconds += seconds


def enable() -> str:
    """Turn the persistent cache on (once per process) and start counting; returns its directory."""
    global _listening
    import jax

    from showwork.cache import cache_dir

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    # JAX keeps only programs that took over a second to compile by default. Ours are many small ones,
    # each costing a fraction of a second every time: every program is kept, so a warm run compiles
    # nothing. Keeping one costs its serialisation once (the test suite, which starts thousands of
    # cold processes, raises the bar with JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS).
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if not _listening:
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _listening = True
    return jax.config.jax_compilation_cache_dir


def counts() -> Counts:
    """A copy of this process's counts so far."""
    with _lock:
        return Counts(_counts.requested, _counts.loaded, _counts.seconds)
