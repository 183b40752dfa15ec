"""The local cache: converted weights, staged gs:// models, the tiny tokenizer.

`SHOWWORK_CACHE` moves it (a read-only image points it at a writable volume).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from showwork.errors import RunError


def cache_dir() -> Path:
    """Where converted weights and staged models live."""
    root = os.environ.get("SHOWWORK_CACHE") or Path.home() / ".cache" / "showwork"
    return Path(root)


def local_file(uri: str) -> str:
    """A local path holding the file at `uri`: the path itself, or, for gs://, a copy staged into the
    cache, keyed by the URI and the object's bytes (a file re-staged to the same place is fetched again)."""
    if not uri.startswith("gs://"):
        return uri
    from showwork.bus import Bus

    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name or parent == "gs:/":
        raise RunError(f"{uri}: expected gs://bucket/path/to/file")
    bus = Bus(parent)
    if not bus.exists(name):
        raise FileNotFoundError(f"data file not found: {uri}")
    staged = cache_dir() / "staged"
    staged.mkdir(parents=True, exist_ok=True)
    # Streamed to disk, then hashed in chunks: a staged corpus never sits in memory whole.
    tmp = staged / f".{name}.{os.getpid()}"
    bus.get_file(name, tmp)
    digest = hashlib.sha256(uri.encode())
    with tmp.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    target = staged / f"{digest.hexdigest()[:16]}-{name}"
    os.replace(tmp, target)
    return str(target)


def local_dir(uri: str) -> str:
    """A local directory holding the files under `uri`: the path itself, or, for gs://,
    a copy staged once into the cache (pods never reach a hub; a model is read from the bus).

    The copy is keyed by the URI and its config.json, so a model re-exported
    to the same place is staged again; it is built in a temporary directory
    and renamed into place, so a killed copy is never mistaken for a whole one.
    """
    if not uri.startswith("gs://"):
        return uri
    from showwork.bus import Bus

    bus = Bus(uri)
    stamp = hashlib.sha256(uri.encode() + bus.read_bytes("config.json")).hexdigest()[:16]
    target = cache_dir() / "staged" / stamp
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{stamp}-"))
    for key in bus.list(""):
        parts = PurePosixPath(key).parts
        if not parts or any(p in ("", ".", "..") for p in parts):
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunError(f"refusing to stage {uri}: object name {key!r} would leave the cache directory")
        bus.get_file(key, tmp.joinpath(*parts))
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():  # not "another process staged it first"
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
