"""Checkpoints of a training run's state, on the bus: staged locally by orbax,
copied with the bus's retries, committed by a record written last."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from showwork.bus import Bus
from showwork.model.meshes import host_array


class DamagedCheckpoint(ValueError):
    """A committed checkpoint whose files are missing, cut or unreadable."""


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
            files[rel] = path.stat().st_size
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

        Raises DamagedCheckpoint when the files do not match the commit
        record or orbax cannot read them; a BusError (the bucket, not the
        checkpoint, is failing) passes through.
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
            raise ValueError(f"{where} holds arrays {_summary(commit.get('arrays'))}, this model and optimizer "
                             f"need {_summary(wanted)}: was it written by another config?")
        local = self.staging / f"restore-{step}"
        shutil.rmtree(local, ignore_errors=True)
        try:
            for rel, size in commit["files"].items():
                try:
                    self.bus.get_file(f"{self.prefix}/{step}/{rel}", local / rel)
                except FileNotFoundError:
                    raise DamagedCheckpoint(f"{where}: {rel} is missing") from None
                if (local / rel).stat().st_size != size:
                    raise DamagedCheckpoint(f"{where}: {rel} has {(local / rel).stat().st_size} bytes, "
                                            f"its commit record says {size}")
            target = {f"{i:05d}": np.empty(np.shape(x), x.dtype) for i, x in enumerate(leaves)}
            try:
                arrays = self.checkpointer.restore(local, target)
            except Exception as err:  # orbax and tensorstore raise many kinds for bad files
                raise DamagedCheckpoint(f"{where}: {type(err).__name__}: {err}"[:600]) from None
        finally:
            shutil.rmtree(local, ignore_errors=True)
        new = [_placed(np.asarray(arrays[f"{i:05d}"], dtype=x.dtype), x) for i, x in enumerate(leaves)]
        return jax.tree.unflatten(treedef, new), dict(commit["meta"])

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


def _summary(arrays) -> str:
    if not isinstance(arrays, list):
        return "(not recorded)"
    return f"{len(arrays)} arrays, {sum(int(np.prod(shape)) for shape, _ in arrays)} values"


def _placed(host: np.ndarray, like):
    """`host` on the devices and sharding of `like` (each process supplies its own shards)."""
    sharding = getattr(like, "sharding", None)
    if sharding is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
