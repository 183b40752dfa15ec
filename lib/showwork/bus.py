"""The bus: one run's directory tree, on a local disk or in a GCS bucket.

Stages talk only through the bus. Keys are relative paths (`data/train.jsonl`)
under the run root (`runs/demo` or `gs://bucket/runs/demo`).

Guarantees, identical on both backends:
* a reader never sees half a file: local writes go to a temp file and are
  renamed; a GCS object appears only when its upload completes;
* `create` is create-if-absent: of two writers racing for one key exactly
  one wins (a hard link locally, `if_generation_match=0` on GCS);
* every finished stage leaves a `_SUCCESS` marker (see `Marker`), and a stage
  with a marker is skipped when its config digest matches and refused with a
  clear error when it does not.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable

from showwork.errors import RunError, UsageError

MARKER = "_SUCCESS"


class BusError(RunError):
    """The bus cannot be read or written; the message says what and where."""


class StageConflict(UsageError):
    """A stage already finished with a different config."""


# ---------------------------------------------------------------- backends


class _LocalStore:
    def __init__(self, root: str):
        self.root = Path(root).absolute()

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def _path(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"not on the bus: {self.uri(key)}") from None

    def _temp_name(self, key: str) -> Path:
        """A hidden sibling of `key`'s file (skipped by `list`), its directory made."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")

    def _temp(self, key: str, data: bytes) -> Path:
        tmp = self._temp_name(key)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def write(self, key: str, data: bytes) -> None:
        tmp = self._temp(key, data)
        os.replace(tmp, self._path(key))

    def create(self, key: str, data: bytes) -> bool:
        tmp = self._temp(key, data)
        try:
            os.link(tmp, self._path(key))  # atomic, fails if the name exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        out = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.endswith(".tmp"):
                out.append(path.relative_to(self.root).as_posix())
        return sorted(out)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def put_file(self, key: str, path: Path) -> None:
        tmp = self._temp_name(key)
        shutil.copyfile(path, tmp)
        os.replace(tmp, self._path(key))

    def get_file(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError:
            if not self._path(key).is_file():
                raise FileNotFoundError(f"not on the bus: {self.uri(key)}") from None
            raise


def gcs_retry(conditional: bool = False):
    """The one retry policy of every GCS call: 429, 5xx and dropped connections
    are retried with exponential backoff (0.5 s doubling to 30 s, jittered)
    for at most SHOWWORK_GCS_RETRY_SECONDS (default 300), then the call fails
    with a BusError naming the object. `conditional`: only when the request
    carries a generation precondition (create-if-absent), which makes a
    retry safe even if the first attempt landed."""
    from google.cloud.storage.retry import DEFAULT_RETRY, ConditionalRetryPolicy, is_generation_specified

    seconds = float(os.environ.get("SHOWWORK_GCS_RETRY_SECONDS", "300"))
    policy = DEFAULT_RETRY.with_delay(initial=0.5, maximum=30.0, multiplier=2.0).with_timeout(seconds)
    return ConditionalRetryPolicy(policy, is_generation_specified, ["query_params"]) if conditional else policy


class _GcsStore:
    def __init__(self, root: str):
        from google.cloud import storage

        rest = root[len("gs://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise BusError(f"bus root {root!r} names no bucket")
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.client = _gcs_client(storage)
        self.bucket = self.client.bucket(bucket)

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{self._name(key)}"

    def read(self, key: str) -> bytes:
        from google.api_core import exceptions

        try:
            return self.bucket.blob(self._name(key)).download_as_bytes(retry=gcs_retry())
        except exceptions.NotFound:
            raise FileNotFoundError(f"not on the bus: {self.uri(key)}") from None
        except (exceptions.GoogleAPICallError, exceptions.RetryError, OSError) as err:
            raise BusError(f"cannot read {self.uri(key)}: {err}") from None

    def write(self, key: str, data: bytes) -> None:
        from google.api_core import exceptions

        # Whole-object uploads are atomic on GCS. Our writes are idempotent
        # (same key, same bytes on retry), so retrying them is safe.
        try:
            self.bucket.blob(self._name(key)).upload_from_string(data, retry=gcs_retry())
        except (exceptions.GoogleAPICallError, exceptions.RetryError, OSError) as err:
            raise BusError(f"cannot write {self.uri(key)}: {err}") from None

    def create(self, key: str, data: bytes) -> bool:
        from google.api_core import exceptions

        # If an attempt lands but its response is lost, the retry sees 412 and
        # we report "someone else created it": callers then read the object
        # back (run_once does), so the outcome is still exactly one marker.
        try:
            self.bucket.blob(self._name(key)).upload_from_string(
                data, if_generation_match=0, retry=gcs_retry(conditional=True)
            )
            return True
        except exceptions.PreconditionFailed:
            return False
        except (exceptions.GoogleAPICallError, exceptions.RetryError, OSError) as err:
            raise BusError(f"cannot create {self.uri(key)}: {err}") from None

    def exists(self, key: str) -> bool:
        return self._call(f"cannot check {self.uri(key)}",
                          lambda: self.bucket.blob(self._name(key)).exists(retry=gcs_retry()))

    def size(self, key: str) -> int | None:
        blob = self._call(f"cannot stat {self.uri(key)}",
                          lambda: self.bucket.get_blob(self._name(key), retry=gcs_retry()))
        return None if blob is None else blob.size

    def list(self, prefix: str) -> list[str]:
        full = self._name(prefix).rstrip("/") + "/"
        cut = len(self.prefix) + 1 if self.prefix else 0
        return self._call(f"cannot list gs://{self.bucket_name}/{full}", lambda: sorted(
            b.name[cut:] for b in self.client.list_blobs(self.bucket_name, prefix=full, retry=gcs_retry())))

    def delete(self, key: str) -> None:
        from google.api_core import exceptions

        def delete_if_present():
            try:
                self.bucket.blob(self._name(key)).delete(retry=gcs_retry())
            except exceptions.NotFound:
                pass

        self._call(f"cannot delete {self.uri(key)}", delete_if_present)

    def put_file(self, key: str, path: Path) -> None:
        # Large files go up as resumable uploads, which the policy retries chunk by chunk.
        self._call(f"cannot upload {path} to {self.uri(key)}", lambda: self.bucket.blob(
            self._name(key)).upload_from_filename(str(path), retry=gcs_retry()))

    def get_file(self, key: str, path: Path) -> None:
        from google.api_core import exceptions

        try:
            self.bucket.blob(self._name(key)).download_to_filename(str(path), retry=gcs_retry())
        except exceptions.NotFound:
            Path(path).unlink(missing_ok=True)  # the client leaves an empty file behind
            raise FileNotFoundError(f"not on the bus: {self.uri(key)}") from None
        except (exceptions.GoogleAPICallError, exceptions.RetryError, OSError) as err:
            raise BusError(f"cannot download {self.uri(key)}: {type(err).__name__}: {err}") from None

    def _call(self, what: str, fn):
        """Run a GCS call; give up as a BusError saying what and where."""
        from google.api_core import exceptions

        try:
            return fn()
        except exceptions.NotFound as err:
            raise BusError(f"{what}: {err} (does the bucket gs://{self.bucket_name} exist?)") from None
        except (exceptions.GoogleAPICallError, exceptions.RetryError, OSError) as err:
            raise BusError(f"{what}: {type(err).__name__}: {err}") from None


def _gcs_client(storage):
    """Workload Identity in the cluster; anonymous against an emulator."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="showwork-local", credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except Exception as err:  # google.auth raises several kinds here
        raise BusError(
            f"no Google Cloud credentials for the GCS bus ({type(err).__name__}: {err}); "
            "on GKE bind the job's ServiceAccount with Workload Identity, locally run "
            "`gcloud auth application-default login`"
        ) from None


# ---------------------------------------------------------------- the bus


class Bus:
    """Read and write one run's files by key, on a local root or `gs://`."""

    def __init__(self, root: str):
        root = str(root)
        if root.startswith("gs://"):
            self.root = "gs://" + root[len("gs://"):].rstrip("/")
            self.store = _GcsStore(self.root)
        else:
            self.root = root.rstrip("/") or "/"
            self.store = _LocalStore(self.root)

    def __repr__(self) -> str:
        return f"Bus({self.root!r})"

    def uri(self, key: str) -> str:
        return self.store.uri(key)

    def read_bytes(self, key: str) -> bytes:
        return self.store.read(key)

    def write_bytes(self, key: str, data: bytes) -> None:
        self.store.write(key, data)

    def create(self, key: str, data: bytes) -> bool:
        """Create-if-absent; True when this call created it."""
        return self.store.create(key, data)

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def read_json(self, key: str):
        data = self.read_bytes(key)
        try:
            return json.loads(data)
        except json.JSONDecodeError as err:
            raise BusError(f"{self.uri(key)} is not valid JSON ({err}); was it truncated?") from None

    def write_json(self, key: str, value) -> None:
        self.write_bytes(key, _json_bytes(value))

    def read_jsonl(self, key: str) -> list[dict]:
        text = self.read_text(key)
        if text and not text.endswith("\n"):
            raise BusError(f"{self.uri(key)} does not end with a newline: truncated JSONL")
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise BusError(f"{self.uri(key)} line {n} is not valid JSON: {err}") from None
        return rows

    def write_jsonl(self, key: str, rows: Iterable[dict]) -> int:
        lines = [json.dumps(row, ensure_ascii=False, sort_keys=True) for row in rows]
        self.write_text(key, "".join(line + "\n" for line in lines))
        return len(lines)

    def exists(self, key: str) -> bool:
        return self.store.exists(key)

    def size(self, key: str) -> int | None:
        """Bytes in the object, None if it does not exist."""
        return self.store.size(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.store.list(prefix)

    def put_file(self, key: str, path: Path | str) -> None:
        """Copy a local file to `key`, streaming (checkpoint shards can be large)."""
        self.store.put_file(key, Path(path))

    def get_file(self, key: str, path: Path | str) -> None:
        """Copy `key` to a local file, creating its directory; FileNotFoundError if absent."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.store.get_file(key, Path(path))

    def delete(self, key: str) -> None:
        self.store.delete(key)


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------- markers


@dataclass
class Marker:
    """What a finished stage leaves behind in `<stage>/_SUCCESS`."""

    stage: str
    digest: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    # Byte size of each output when the stage finished: a later reader can
    # tell a truncated or replaced file from the one the stage wrote.
    sizes: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    host: str = ""


_VERSIONED = ("showwork", "jax", "flax", "google-tunix", "qwix", "optax", "orbax-checkpoint")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def marker_key(stage: str) -> str:
    return f"{stage}/{MARKER}"


def read_marker(bus: Bus, stage: str) -> Marker | None:
    try:
        data = bus.read_json(marker_key(stage))
    except FileNotFoundError:
        return None
    try:
        return Marker(**data)
    except TypeError as err:
        raise BusError(f"{bus.uri(marker_key(stage))} is not a showwork marker: {err}") from None


def stage_done(bus: Bus, stage: str, digest: str) -> Marker | None:
    """The stage's marker if it finished with this digest; None if it has not run.

    Raises StageConflict if it finished with another config, and BusError if
    the marker names outputs that are gone (never trust a marker blindly).
    """
    marker = read_marker(bus, stage)
    if marker is None:
        return None
    if marker.digest != digest:
        raise StageConflict(
            f"stage {stage!r} in {bus.root} already finished with config digest {marker.digest}, "
            f"but this config has digest {digest}. Use a new run id (--run-id) for a changed "
            f"config, or delete {bus.uri(marker_key(stage))} to redo the stage."
        )
    verify_outputs(bus, marker)
    return marker


def verify_outputs(bus: Bus, marker: Marker) -> None:
    """Every output the marker names exists with the size it had: never trust a marker blindly."""
    problems = []
    for key in marker.outputs:
        size = bus.size(key)
        if size is None:
            problems.append(f"{bus.uri(key)} is missing")
        elif key in marker.sizes and size != marker.sizes[key]:
            problems.append(f"{bus.uri(key)} has {size} bytes, the stage wrote {marker.sizes[key]} (truncated or replaced)")
    if problems:
        raise BusError(f"stage {marker.stage!r} has a marker but its outputs are damaged: " + "; ".join(problems)
                       + f". Delete {bus.uri(marker_key(marker.stage))} to redo the stage.")


def write_marker(bus: Bus, marker: Marker) -> bool:
    """Create the marker; False if another writer's marker got there first."""
    marker.finished = marker.finished or time.time()
    marker.versions = marker.versions or package_versions()
    marker.host = marker.host or platform.node()
    return bus.create(marker_key(marker.stage), _json_bytes(asdict(marker)))



@dataclass
class StageResult:
    """What a stage body returns: the keys it wrote, what it read, its numbers."""

    outputs: list[str]
    inputs: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def run_once(bus: Bus, stage: str, digest: str, body, log=None) -> tuple[Marker, bool]:
    """Run `body()` unless the stage is done; returns (marker, ran).

    If another process finished the same stage meanwhile (a retried pod racing
    its predecessor), its marker stands and ours is dropped: exactly one wins.
    """
    done = stage_done(bus, stage, digest)
    if done is not None:
        if log:
            log.info("stage already done, skipping", stage=stage, marker=bus.uri(marker_key(stage)))
        return done, False
    started = time.time()
    result = body()
    sizes = {}
    for key in result.outputs:
        size = bus.size(key)
        if size is None:
            raise BusError(f"stage {stage!r} says it wrote {bus.uri(key)}, but it is not there")
        sizes[key] = size
    marker = Marker(stage=stage, digest=digest, inputs=result.inputs, outputs=result.outputs, sizes=sizes,
                    metrics=result.metrics, started=started)
    if not write_marker(bus, marker):
        winner = stage_done(bus, stage, digest)
        if winner == marker:  # ours landed but its response was lost: the retry saw it as "taken"
            return marker, True
        if log:
            log.warning("another writer finished this stage first; keeping its marker", stage=stage)
        return winner, False
    if log:
        log.info("stage done", **{**_scalars(result.metrics), "stage": stage, "stage_seconds": round(marker.finished - started, 1)})
    return marker, True


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
