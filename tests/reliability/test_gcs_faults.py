"""GCS faults: 429 / 503 / dropped connections on a share of requests.

The bus runs against the real fake-gcs-server behind faulty_proxy.py. Every
operation and every stage must still complete, with bounded, backed-off
retries, and produce exactly the bytes of a fault-free run.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, TIERS, job_env
from showwork.bus import Bus, BusError, Marker, StageResult, read_marker, run_once
from showwork.train import checkpoints

CPU = TIERS / "cpu" / "tier.yaml"

TINY = """recipe: faults
model: {name: tiny, lora: {rank: 4, alpha: 8}}
data: {source: reasoning-gym, train_size: 8, eval_size: 5, seed: 11}
sft: {max_steps: 4, max_seq_len: 1024, checkpoint_every: 2, optimizer: {learning_rate: 1.0e-3}}
grpo:
  sessions: 1
  prompts_per_session: 2
  steps_per_session: 2
  num_generations: 2
  checkpoint_every: 1
  rollout: {max_prompt_length: 512, max_tokens_to_generate: 6, temperature: 1.0, top_k: 20}
  rewards: {hybrid: 1.0}
eval:
  models: [base, grpo]
  methods: [greedy, majority]
  samples: 2
  max_tokens: 8
"""


def test_bus_operations_survive_every_kind_of_fault(faulty_gcs):
    proxy = faulty_gcs(rate=0.3, seed=1)
    bus = Bus(f"gs://showwork-test/faults/{uuid.uuid4().hex[:8]}")
    payloads = {f"data/part-{i}.bin": bytes([i]) * (1000 + 37 * i) for i in range(16)}
    for key, data in payloads.items():
        bus.write_bytes(key, data)
    assert bus.list("data") == sorted(payloads)
    for key, data in payloads.items():
        assert bus.exists(key) and bus.read_bytes(key) == data
    # create-if-absent keeps exactly one writer even when responses are lost.
    wins = [bus.create("stage/_SUCCESS", f"writer {i}".encode()) for i in range(6)]
    assert sum(wins) <= 1 and bus.read_bytes("stage/_SUCCESS").startswith(b"writer ")
    assert proxy.faults.keys() == {"503", "429", "drop-before", "drop-after"}, proxy.faults
    assert sum(proxy.faults.values()) >= 10


def test_a_stage_marker_survives_a_lost_create_response(faulty_gcs):
    # Every response to the marker upload is lost after it lands: the retry
    # gets 412, and run_once must read back and keep the marker it wrote.
    proxy = faulty_gcs(rate=0.0)
    bus = Bus(f"gs://showwork-test/faults/{uuid.uuid4().hex[:8]}")
    bus.write_text("stage/out.txt", "result\n")
    proxy.rate, proxy.kinds = 1.0, ("drop-after",)
    original = proxy.draw
    uploads = []

    def lose_the_first_marker_upload(method, path, body):
        # Aimed by request, not by count: the marker's create is an upload (POST) whose metadata
        # names stage/_SUCCESS; reads and size lookups before it pass through.
        if method == "POST" and "/upload/" in path and b"stage/_SUCCESS" in body:
            uploads.append(path)
            if len(uploads) == 1:
                return original(method, path, body)
        return None

    proxy.draw = lose_the_first_marker_upload
    marker, ran = run_once(bus, "stage", "d1", lambda: StageResult(outputs=["stage/out.txt"]))
    assert isinstance(marker, Marker) and marker.digest == "d1" and marker.outputs == ["stage/out.txt"]
    assert proxy.faults["drop-after"] == 1 and len(uploads) == 2  # lost, then retried (and refused: 412)
    assert ran  # the marker that stands is ours, so this call is the one that ran the stage
    assert read_marker(bus, "stage") == marker


def test_retries_are_bounded_and_the_error_names_the_object(faulty_gcs, monkeypatch):
    proxy = faulty_gcs(rate=1.0, kinds=("503",))
    monkeypatch.setenv("SHOWWORK_GCS_RETRY_SECONDS", "3")
    bus = Bus("gs://showwork-test/faults/always-down")
    started = time.monotonic()
    with pytest.raises(BusError, match=r"gs://showwork-test/faults/always-down/data/train.jsonl"):
        bus.read_bytes("data/train.jsonl")
    # It retried (with jittered, growing sleeps) and gave up within its budget.
    assert proxy.requests >= 3 and time.monotonic() - started < 3 + 10


def _run(module, recipe, root, *extra, env):
    done = subprocess.run([sys.executable, "-m", module, str(recipe), str(CPU), "--root", root, *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _pipeline(recipe, root, env):
    _run("jobs.prepare_data", recipe, root, env=env)
    _run("jobs.sft", recipe, root, env=env)
    _run("jobs.grpo_session", recipe, root, "--session", "0", env=env)
    for shard in ("0", "1"):
        _run("jobs.evaluate", recipe, root, "--shards", "2", env={**env, "JOB_COMPLETION_INDEX": shard})
    _run("jobs.report", recipe, root, "--shards", "2", env=env)


def _contents(bus: Bus) -> dict[str, bytes]:
    """Every file but those that record when and where it ran rather than what
    was computed: stage markers (timestamps, host), TensorBoard event files
    (wall times, a random name) and checkpoints, whose orbax files carry
    random names and save timestamps; `_checkpoints` compares what they hold."""
    out = {key: bus.read_bytes(key) for key in bus.list("")
           if not key.endswith("_SUCCESS") and "/tensorboard/" not in key and "/checkpoints/" not in key}
    # Training metrics: every value but the step's wall time.
    for key in [k for k in out if k.endswith("metrics.jsonl")]:
        out[key] = [{k: v for k, v in row.items() if not k.endswith(_TIMING)} for row in bus.read_jsonl(key)]
    return out


_TIMING = ("seconds", "per_second")


def _checkpoints(bus: Bus, stage: str) -> dict[int, tuple[dict, list[bytes]]]:
    """step -> (meta, the bytes of every array) for each committed checkpoint."""
    ckpt = checkpoints.Checkpoints(bus, f"{stage}/checkpoints", keep=1, every=1)
    out = {}
    for step in ckpt.steps():
        shapes = bus.read_json(f"{stage}/checkpoints/{step}/COMMIT.json")["arrays"]
        like = [np.zeros(shape, jnp.dtype(dtype)) for shape, dtype in shapes]
        arrays, meta = ckpt.restore(step, like)
        out[step] = (meta, [np.asarray(a).tobytes() for a in arrays])
    ckpt.close()
    return out


def test_stages_complete_under_faults_with_byte_identical_outputs(gcs_server, faulty_gcs, tmp_path, monkeypatch):
    recipe = tmp_path / "faults.yaml"
    recipe.write_text(TINY)
    run_id = uuid.uuid4().hex[:8]
    clean_root, faulty_root = f"gs://showwork-test/clean-{run_id}", f"gs://showwork-test/faulty-{run_id}"
    _pipeline(recipe, clean_root, job_env(STORAGE_EMULATOR_HOST=gcs_server.url))
    proxy = faulty_gcs(rate=0.2, seed=7)
    _pipeline(recipe, faulty_root, job_env(STORAGE_EMULATOR_HOST=proxy.url))
    assert sum(proxy.faults.values()) >= 5, proxy.faults

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)  # read both runs directly
    clean = _contents(Bus(f"{clean_root}/faults"))
    faulty = _contents(Bus(f"{faulty_root}/faults"))
    assert "report/metrics.json" in clean and any(k.startswith("eval/base/shard-") for k in clean)
    assert {"sft/model/model.safetensors", "grpo/s-0/model/model.safetensors"} <= clean.keys()
    for stage, steps in (("sft", [2, 4]), ("grpo", [1, 2])):
        clean_ckpts = _checkpoints(Bus(f"{clean_root}/faults"), stage)
        assert sorted(clean_ckpts) == steps, stage
        assert _checkpoints(Bus(f"{faulty_root}/faults"), stage) == clean_ckpts, stage
    assert clean.keys() == faulty.keys()
    for key in clean:
        assert clean[key] == faulty[key], key
