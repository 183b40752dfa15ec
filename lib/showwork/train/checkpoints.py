"""Checkpoints of a training run's state, on the bus: staged locally by orbax,
copied with the bus's retries, committed by a record written last."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from showwork.errors import RunError, UsageError
from showwork.bus import Bus
from showwork.model.meshes import from_host, host_array


class DamagedCheckpoint(ValueError):
    """A committed checkpoint proven damaged: a file missing or differing from its commit record."""


class CheckpointUnreadable(RunError):
    """Files that match their commit record could not be restored: an environmental error, not damage."""


COMMIT = "COMMIT.json"


class Checkpoints:
    """Checkpoints of (trainable params, optimizer state) + JSON metadata, on the bus.

    A step is written by orbax into a local staging directory, its files are
    copied to `<prefix>/<step>/` on the bus, and a commit record
    `<prefix>/<step>/COMMIT.json` (every file with its size, and the
    metadata) is created last. Only committed steps exist for readers, so a
    checkpoint cut short by a kill is never restored, and a restore checks
    every file's size before orbax reads it.

    Why not orbax straight onto gs://: orbax finalizes a GCS checkpoint from a
    background thread through gcsfs, outside our retry policy, and against
    fake-gcs-server that finalize never returned. Going through the bus gives
    checkpoints the same bounded retries, the same errors and the same
    fault-injection tests as every other file.

    The arrays are stored as a flat, numbered list: their tree structure is
    rebuilt from the live model and optimizer, which are constructed the same
    way on every run, and restore checks count and shapes. They are gathered
    to host memory first (every host, so multi-host slices work): the state we
    train, LoRA or full fine-tuning of a sub-billion model, fits there.
    Process 0 writes; every process reads.
    """

    def __init__(self, bus: Bus, prefix: str, keep: int, every: int):
        import orbax.checkpoint as ocp

        self.bus, self.prefix = bus, prefix.strip("/")
        self.keep, self.every = max(1, keep), max(1, every)
        self.staging = Path(tempfile.mkdtemp(prefix="showwork-ckpt-"))
        me = jax.process_index()
        # Each process checkpoints on its own into local disk: no cross-host barriers.
        self.checkpointer = ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}))

    @property
    def uri(self) -> str:
        return self.bus.uri(self.prefix)

    def steps(self) -> list[int]:
        """Committed steps, oldest first."""
        steps = []
        for key in self.bus.list(self.prefix):
            head, _, name = key[len(self.prefix) + 1:].partition("/")
            if name == COMMIT and head.isdigit():
                steps.append(int(head))
        return sorted(steps)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def due(self, step: int) -> bool:
        """Whether `save(step, ...)` will write a checkpoint."""
        return step % self.every == 0

    def save(self, step: int, tree, meta: dict, force: bool = False) -> bool:
        if not force and not self.due(step):
            return False
        commit_key = f"{self.prefix}/{step}/{COMMIT}"
        if self.bus.exists(commit_key):
            return True
        leaves = [host_array(x) for x in jax.tree.leaves(tree)]  # a collective: every process
        if jax.process_index() != 0:
            return True
        local = self.staging / str(step)
        shutil.rmtree(local, ignore_errors=True)
        self.checkpointer.save(local, {f"{i:05d}": x for i, x in enumerate(leaves)})
        self.checkpointer.wait_until_finished()
        # Files of an earlier, uncommitted attempt at this step would be
        # harmless (never listed in a commit) but would pile up.
        for key in self.bus.list(f"{self.prefix}/{step}"):
            self.bus.delete(key)
        files = {}
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = path.relative_to(local).as_posix()
            self.bus.put_file(f"{self.prefix}/{step}/{rel}", path)
            files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        shutil.rmtree(local, ignore_errors=True)
        shapes = [[list(x.shape), str(x.dtype)] for x in leaves]
        self.bus.create(commit_key, json.dumps({"step": step, "meta": meta, "files": files, "arrays": shapes},
                                               sort_keys=True).encode())
        for old in self.steps()[:-self.keep]:
            self.delete(old)
        return True

    def delete(self, step: int) -> None:
        """Uncommit first, so a kill halfway leaves only ignored files."""
        self.bus.delete(f"{self.prefix}/{step}/{COMMIT}")
        for key in self.bus.list(f"{self.prefix}/{step}"):
            self.bus.delete(key)

    def restore(self, step: int, like):
        """(tree shaped and placed like `like`, meta) from checkpoint `step`.

        Raises DamagedCheckpoint only when the checkpoint is proven damaged:
        its commit record does not parse, or a file is missing or differs from
        the record's size or checksum. Anything else (a BusError: the bucket
        is failing; orbax failing on files that match their record: memory,
        disk, a library upgrade) raises an error that keeps every checkpoint.
        """
        where = f"{self.uri}/{step}"
        raw = self.bus.read_bytes(f"{self.prefix}/{step}/{COMMIT}")  # a BusError passes through
        try:
            commit = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DamagedCheckpoint(f"{where}: {COMMIT} is not valid JSON ({err})") from None
        leaves, treedef = jax.tree.flatten(like)
        wanted = [[list(np.shape(x)), str(x.dtype)] for x in leaves]
        if commit.get("arrays") != wanted:
            # Not damage: another model or optimizer wrote it. Refuse, keep it.
            raise UsageError(f"{where} holds arrays {_summary(commit.get('arrays'))}, this model and optimizer "
                             f"need {_summary(wanted)}: was it written by another config?")
        local = self.staging / f"restore-{step}"
        shutil.rmtree(local, ignore_errors=True)
        try:
            for rel, record in commit["files"].items():
                self._fetch_verified(step, rel, record, local / rel)
            target = {f"{i:05d}": np.empty(np.shape(x), x.dtype) for i, x in enumerate(leaves)}
            try:
                arrays = self.checkpointer.restore(local, target)
            except Exception as err:  # the files match their record: not damage, keep it
                raise CheckpointUnreadable(f"{where}: its files match their commit record but orbax could not "
                                           f"restore them ({type(err).__name__}: {err}"[:600] + "); every "
                                           "checkpoint is kept: fix the cause and run again") from err
        finally:
            shutil.rmtree(local, ignore_errors=True)
        new = [_placed(np.asarray(arrays[f"{i:05d}"], dtype=x.dtype), x) for i, x in enumerate(leaves)]
        return jax.tree.unflatten(treedef, new), dict(commit["meta"])

    def _fetch_verified(self, step: int, rel: str, record, path: Path) -> None:
        """Download one file of checkpoint `step`; DamagedCheckpoint if it is missing or does not match
        its record (size, and the SHA-256 that commits written since checksums were added carry)."""
        where = f"{self.uri}/{step}"
        size, digest = (record, None) if isinstance(record, int) else (record["size"], record.get("sha256"))
        try:
            self.bus.get_file(f"{self.prefix}/{step}/{rel}", path)
        except FileNotFoundError:
            raise DamagedCheckpoint(f"{where}: {rel} is missing") from None
        if path.stat().st_size != size:
            raise DamagedCheckpoint(f"{where}: {rel} has {path.stat().st_size} bytes, its commit record says {size}")
        if digest is not None and _sha256(path) != digest:
            raise DamagedCheckpoint(f"{where}: {rel} does not match its commit record's checksum")

    def restore_newest(self, like, log, at_least: int = 0):
        """(tree, meta, step) from the newest readable checkpoint >= `at_least`, or None.

        A checkpoint whose files were damaged after it was committed (cut,
        deleted, overwritten) is reported, removed so the replayed step can
        save it again, and the one before it is used. Replaying from an older
        step gives the same weights: data order and sampling keys are pure
        functions of the step.
        """
        for step in reversed(self.steps()):
            if step < at_least:
                break
            try:
                tree, meta = self.restore(step, like)
            except DamagedCheckpoint as err:
                log.warning("checkpoint unreadable; removing it and using an older one", step=step,
                            directory=self.uri, error=str(err)[:400])
                if jax.process_index() == 0:
                    self.delete(step)
                continue
            return tree, meta, step
        return None

    def close(self):
        self.checkpointer.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _summary(arrays) -> str:
    if not isinstance(arrays, list):
        return "(not recorded)"
    return f"{len(arrays)} arrays, {sum(int(np.prod(shape)) for shape, _ in arrays)} values"


def _placed(host: np.ndarray, like):
    """`host` on the devices and sharding of `like` (each process supplies its own shards)."""
    return from_host(host, getattr(like, "sharding", None))
