"""Partial writes: a checkpoint cut by a kill, a checkpoint damaged after its
commit, a truncated shard file, a marker whose outputs are gone. Each is
detected; the previous good state is used or a clear error names the file."""

from __future__ import annotations

import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, TIERS, job_env
from showwork.bus import Bus, BusError, read_marker
from showwork.train import checkpoints
from showwork.eval.report import load_model_records

CPU = TIERS / "cpu" / "tier.yaml"

EVAL = """recipe: partial
model: {name: tiny}
data: {source: reasoning-gym, train_size: 4, eval_size: 6, seed: 9}
eval: {models: [base], methods: [greedy], max_tokens: 6}
"""


class Recorder:
    """Stands in for a structlog logger and keeps what was said."""

    def __init__(self):
        self.events = []

    def warning(self, event, **fields):
        self.events.append((event, fields))

    info = warning


def tree(value: float):
    return {"w": jnp.full((4, 8), value), "b": jnp.full((8,), value)}


def saved(bus, steps):
    ckpt = checkpoints.Checkpoints(bus, "sft/checkpoints", keep=5, every=1)
    for step in steps:
        ckpt.save(step, tree(float(step)), {"step": step})
    ckpt.close()
    return checkpoints.Checkpoints(bus, "sft/checkpoints", keep=5, every=1)


def state_files(bus, step):
    """The array files of one step, biggest last (the commit record and metadata excluded)."""
    keys = [k for k in bus.list(f"sft/checkpoints/{step}") if "/d/" in k]
    assert keys
    return sorted(keys, key=bus.size)


def test_a_checkpoint_cut_short_by_a_kill_is_never_restored(tmp_path):
    bus = Bus(str(tmp_path))
    saved(bus, [2, 4])
    # What a kill mid-upload leaves: step 6's files without their commit record.
    for key in bus.list("sft/checkpoints/4"):
        if not key.endswith("COMMIT.json"):
            bus.write_bytes(key.replace("/4/", "/6/"), bus.read_bytes(key))
    ckpt = checkpoints.Checkpoints(bus, "sft/checkpoints", keep=5, every=1)
    assert ckpt.steps() == [2, 4] and ckpt.latest_step() == 4
    restored, meta, step = ckpt.restore_newest(tree(0.0), Recorder())
    assert step == 4 and meta == {"step": 4} and float(restored["w"][0, 0]) == 4.0
    # Saving step 6 for real replaces the leftovers instead of mixing with them.
    assert ckpt.save(6, tree(6.0), {"step": 6})
    assert float(ckpt.restore_newest(tree(0.0), Recorder())[0]["b"][0]) == 6.0


@pytest.mark.parametrize("damage", ["truncate", "delete", "overwrite", "commit record"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    bus = Bus(str(tmp_path))
    saved(bus, [2, 4])
    for key in state_files(bus, 4):
        data = bus.read_bytes(key)
        if damage == "truncate":
            bus.write_bytes(key, data[: len(data) // 3])
        elif damage == "delete":
            bus.delete(key)
        elif damage == "overwrite":  # same size, garbage bytes: the commit record's checksum tells
            bus.write_bytes(key, bytes(len(data)))
    if damage == "commit record":
        bus.write_bytes("sft/checkpoints/4/COMMIT.json", b'{"step": 4, "fi')
    ckpt = checkpoints.Checkpoints(bus, "sft/checkpoints", keep=5, every=1)
    log = Recorder()
    restored, meta, step = ckpt.restore_newest(tree(0.0), log)
    assert step == 2 and float(restored["b"][3]) == 2.0
    assert [(e, f["step"]) for e, f in log.events] == [("checkpoint unreadable; removing it and using an older one", 4)]
    assert ckpt.steps() == [2]  # the damaged one is gone, so the replayed step can be saved again
    assert not bus.list("sft/checkpoints/4")
    assert ckpt.save(4, tree(4.0), {"step": 4}) and ckpt.restore_newest(tree(0.0), Recorder())[2] == 4


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), MemoryError("out of memory"),
                                     RuntimeError("tensorstore: unsupported format version")],
                         ids=["disk-full", "oom", "library-upgrade"])
def test_an_orbax_failure_on_intact_files_keeps_every_checkpoint(tmp_path, monkeypatch, failure):
    """Files that match their commit record but fail to restore (disk full while staging, out of memory,
    an orbax/tensorstore upgrade) are not damage: the error stops the job and every checkpoint stays."""
    bus = Bus(str(tmp_path))
    ckpt = saved(bus, [2, 4])

    def fails(*args, **kwargs):
        raise failure

    monkeypatch.setattr(ckpt.checkpointer, "restore", fails)
    with pytest.raises(checkpoints.CheckpointUnreadable, match="every checkpoint is kept"):
        ckpt.restore_newest(tree(0.0), Recorder())
    assert ckpt.steps() == [2, 4]
    assert all(state_files(bus, step) for step in (2, 4))


def test_a_checkpoint_committed_before_checksums_still_restores(tmp_path):
    """Commit records from before checksums list sizes only; a run resumed after the upgrade reads them."""
    import json

    bus = Bus(str(tmp_path))
    saved(bus, [3])
    commit = json.loads(bus.read_bytes("sft/checkpoints/3/COMMIT.json"))
    commit["files"] = {rel: record["size"] for rel, record in commit["files"].items()}
    bus.write_bytes("sft/checkpoints/3/COMMIT.json", json.dumps(commit).encode())
    restored, _, step = checkpoints.Checkpoints(bus, "sft/checkpoints", keep=5, every=1).restore_newest(
        tree(0.0), Recorder())
    assert step == 3 and float(restored["w"][1, 1]) == 3.0


def test_no_readable_checkpoint_means_none(tmp_path):
    bus = Bus(str(tmp_path))
    saved(bus, [3])
    for key in state_files(bus, 3):
        bus.delete(key)
    assert checkpoints.Checkpoints(bus, "sft/checkpoints", keep=5, every=1).restore_newest(tree(0.0), Recorder()) is None


def test_a_bucket_failing_during_restore_is_an_error_not_a_damaged_checkpoint(tmp_path, monkeypatch):
    """A read that fails for the bucket's sake must never delete a good checkpoint."""
    bus = Bus(str(tmp_path))
    ckpt = saved(bus, [2, 4])

    def unreachable(key, path):
        raise BusError(f"cannot download {bus.uri(key)}: ServiceUnavailable")

    monkeypatch.setattr(bus, "get_file", unreachable)
    with pytest.raises(BusError, match="ServiceUnavailable"):
        ckpt.restore_newest(tree(0.0), Recorder())
    assert ckpt.steps() == [2, 4]


def test_only_the_newest_checkpoints_are_kept_and_shapes_are_checked(tmp_path):
    bus = Bus(str(tmp_path))
    ckpt = checkpoints.Checkpoints(bus, "sft/checkpoints", keep=2, every=3)
    assert [ckpt.save(s, tree(float(s)), {"step": s}) for s in range(1, 10)] == [s % 3 == 0 for s in range(1, 10)]
    assert ckpt.steps() == [6, 9]
    assert {k.split("/")[2] for k in bus.list("sft/checkpoints")} == {"6", "9"}
    # Another model's checkpoint is refused by name and kept, not treated as damage.
    with pytest.raises(ValueError, match="holds arrays 2 arrays, 40 values.*need 3 arrays, 42 values"):
        ckpt.restore_newest({**tree(0.0), "extra": jnp.zeros(2)}, Recorder())
    assert ckpt.steps() == [6, 9]


def run(module, recipe, root, *extra, **env):
    return subprocess.run([sys.executable, "-m", module, str(recipe), str(CPU), "--root", str(root), *extra],
                          cwd=REPO, env=job_env(**env), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial")
    recipe = root / "partial.yaml"
    recipe.write_text(EVAL)
    assert run("jobs.prepare_data", recipe, root).returncode == 0
    assert run("jobs.evaluate", recipe, root, "--shards", "1").returncode == 0
    return root, recipe


@pytest.mark.parametrize("cut", ["last line", "mid line"])
def test_a_truncated_shard_file_is_refused_by_the_report(evaluated, tmp_path, cut):
    root, recipe = evaluated
    shutil.copytree(root / "partial", tmp_path / "partial")
    bus = Bus(str(tmp_path / "partial"))
    key = "eval/base/shard-0-of-1.jsonl"
    text = bus.read_text(key)
    lines = text.splitlines(keepends=True)
    bus.write_text(key, "".join(lines[:-1]) if cut == "last line" else text[: len(text) // 2])
    with pytest.raises(BusError, match=r"shard-0-of-1.jsonl has \d+ bytes, the stage wrote \d+"):
        load_model_records(bus, "base", 1)
    done = run("jobs.report", recipe, tmp_path, "--shards", "1")
    assert done.returncode == 1 and "shard-0-of-1.jsonl" in done.stderr and "truncated or replaced" in done.stderr
    assert not bus.exists("report/metrics.json")


def test_a_marker_whose_outputs_are_gone_is_an_error_not_a_skip(evaluated, tmp_path):
    root, recipe = evaluated
    shutil.copytree(root / "partial", tmp_path / "partial")
    bus = Bus(str(tmp_path / "partial"))
    assert read_marker(bus, "data") is not None
    bus.delete("data/eval.jsonl")
    done = run("jobs.prepare_data", recipe, tmp_path)
    assert done.returncode == 1
    assert "data/eval.jsonl is missing" in done.stderr and "Delete" in done.stderr and "_SUCCESS" in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 3  # one clear message, no traceback


def test_a_checkpoint_damaged_between_runs_is_replayed_by_the_sft_job(tmp_path):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("""recipe: damaged
model: {name: tiny, lora: {rank: 4, alpha: 8}}
data: {source: reasoning-gym, train_size: 16, eval_size: 2, seed: 5}
sft: {max_steps: 6, max_seq_len: 1024, checkpoint_every: 2, keep_checkpoints: 5, optimizer: {learning_rate: 1.0e-3}}
""")
    for name in ("clean", "damaged"):
        assert run("jobs.prepare_data", recipe, tmp_path / name).returncode == 0
        assert run("jobs.sft", recipe, tmp_path / name).returncode == 0
    bus = Bus(str(tmp_path / "damaged" / "damaged"))
    # Undo the finish, damage the newest checkpoint: the rerun must replay from step 4.
    for key in bus.list("sft"):
        if not key.startswith("sft/checkpoints/"):
            bus.delete(key)
    for key in state_files(bus, 6):
        bus.write_bytes(key, b"")
    done = run("jobs.sft", recipe, tmp_path / "damaged")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "checkpoint unreadable" in done.stderr and "resuming from checkpoint" in done.stderr
    from safetensors.numpy import load_file

    a = load_file(str(tmp_path / "clean" / "damaged" / "sft" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "damaged" / "damaged" / "sft" / "model" / "model.safetensors"))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6, err_msg=name)
