"""Bad input: impossible configs rejected before work starts, dirty data
counted not crashed on, adversarial model output handled in bounded time."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from conftest import REPO, TIERS, job_env
from showwork import config
from showwork.config import DataConfig
from showwork.eval import evaluate, voting
from showwork.task import answers, data, rewards

CPU = TIERS / "cpu" / "tier.yaml"

BASE = """recipe: bad
model: {name: tiny}
data: {source: reasoning-gym, train_size: 4, eval_size: 2}
"""


@pytest.mark.parametrize("recipe, tier, key, says", [
    (BASE + "grpo: {batch_size: 3, num_generations: 2}\n", "mesh: {shape: [4, 1]}",
     "grpo.batch_size", "6 completions per step, not divisible by the mesh's 4"),
    (BASE + "sft: {batch_size: 6}\n", "mesh: {shape: [4, 1]}", "sft.batch_size", "not divisible"),
    (BASE + "self_teach: {sft: {batch_size: 6}}\n", "mesh: {shape: [4, 1]}", "self_teach.sft.batch_size",
     "6 sequences per step is not divisible"),
    (BASE + "eval: {models: [base, grpo]}\n", "", "eval.models", "no grpo section"),
    (BASE, "eval_shards: 0", "tier.eval_shards", "must be positive"),
    (BASE, "mesh: {shape: [2, 2], axes: [fsdp]}", "tier.mesh.shape", "2 dims but axes names 1"),
    (BASE + "grpo: {num_generations: 1}\n", "", "grpo.num_generations", "at least 2"),
    (BASE + "eval: {sampels: 4}\n", "", "eval.sampels", "unknown key"),
    (BASE + "eval: {samples: four}\n", "", "eval.samples", "expected an integer"),
    (BASE, "hosts: 2\nmesh: {shape: [8, 1]}", "tier.eval_mesh", "single-host eval pod"),
])
def test_impossible_configs_name_the_key_and_the_file(tmp_path, recipe, tier, key, says):
    r = tmp_path / "recipe.yaml"
    r.write_text(recipe)
    t = tmp_path / "tier.yaml"
    t.write_text("tier:\n  name: t\n" + "".join(f"  {line}\n" for line in tier.splitlines()))
    with pytest.raises(config.ConfigError) as err:
        config.load(r, t)
    message = str(err.value)
    assert key in message and says in message
    assert str(r) in message or str(t) in message


@pytest.mark.parametrize("module, key", [("jobs.sft", "tier.mesh.shape"), ("jobs.evaluate", "tier.eval_mesh.shape")])
def test_a_mesh_larger_than_the_machine_stops_the_job_before_any_work(tmp_path, module, key):
    r = tmp_path / "recipe.yaml"
    r.write_text(BASE + "sft: {max_steps: 1}\n")
    t = tmp_path / "tier.yaml"
    t.write_text("tier: {name: big, mesh: {shape: [4, 2]}, eval_mesh: {shape: [8, 1]}}\n")
    done = subprocess.run([sys.executable, "-m", module, str(r), str(t), "--root", str(tmp_path / "runs")],
                          cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert key in done.stderr and "needs 8 devices" in done.stderr and str(t) in done.stderr
    assert not (tmp_path / "runs").exists()


def _job(tmp_path, root, **env):
    r = tmp_path / "recipe.yaml"
    r.write_text(BASE)
    return subprocess.run([sys.executable, "-m", "jobs.prepare_data", str(r), str(CPU), "--root", root],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_an_unreachable_bucket_is_one_clear_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = _job(tmp_path, "gs://showwork-nowhere/runs",
                **job_env(STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}", SHOWWORK_GCS_RETRY_SECONDS="2"))
    assert done.returncode == 1
    assert "gs://showwork-nowhere/runs/bad/" in done.stderr and "Traceback" not in done.stderr


def test_missing_credentials_are_one_clear_line(tmp_path):
    env = {k: v for k, v in job_env().items() if k != "STORAGE_EMULATOR_HOST"}
    env.update(GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "no-such-key.json"), NO_GCE_CHECK="true",
               GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")
    done = _job(tmp_path, "gs://showwork-bucket/runs", **env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no Google Cloud credentials" in done.stderr and "Workload Identity" in done.stderr


def test_dirty_gsm8k_rows_are_counted_by_reason_and_never_kept(tmp_path):
    good = {"question": "Tom has 3 boxes of 12 pencils. How many pencils?", "answer": "3 * 12 = 36\n#### 36"}
    lines = [
        json.dumps(good).encode(),
        json.dumps({"answer": "#### 5"}).encode(),  # missing question column
        json.dumps({"question": "No answer column?"}).encode(),
        json.dumps({"question": "Gold is a word?", "answer": "it is five\n#### five"}).encode(),
        json.dumps({"question": "Empty", "answer": ""}).encode(),
        json.dumps({"question": "Giant " + "x" * 50_000, "answer": "1 + 1 = 2\n#### 2"}).encode(),
        "{\"question\": \"caf\xe9 latin-1\", \"answer\": \"#### 3\"}".encode("latin-1"),  # wrong encoding
        b"{not json at all",
        b"[1, 2, 3]",
        json.dumps({"question": "Thousands?", "answer": "9 * 1200 = 10800\n#### 10,800"}).encode(),
    ]
    path = tmp_path / "dirty.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    train, evals, stats = data.build_splits(DataConfig(source="gsm8k", path=str(path), train_size=10, eval_size=0, seed=0))
    assert sorted(r.answer for r in train) == ["10800", "36"]
    assert stats["dropped"] == {"bad_encoding": 1, "bad_json": 2, "missing_answer": 2, "missing_question": 1,
                                "non_numeric_answer": 1, "question_too_long": 1}
    assert stats["rows_in"]["all"] == len(lines)


ADVERSARIAL = [
    "<answer>" * 20_000 + "7" + "</answer>" * 20_000,  # deeply nested tags
    "<reasoning>" + "<answer>1</answer>" * 10_000 + "</reasoning>",  # repeated tags
    "9" * 100_000,  # a 100k-digit number
    "x" * 100_000 + "<answer>",  # 100k characters, unclosed tag
    "<reasoning>steps</reasoning><answer>1e999999</answer>",  # overflows a float
    "<answer>NaN</answer>", "<answer>-inf</answer>", "<answer>nan</answer> #### nan",
    "<answer>١٢</answer>", "<answer>１２</answer>", "<answer>⑫</answer>",  # unicode digits
    "\\boxed{" * 5_000 + "3" + "}" * 5_000,
    "#### " * 20_000,
    "The answer is " * 10_000,
    "1," * 50_000 + "5",
    "\x00\ud800 <answer>\u202e42</answer>",
    "",
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_completions_pass_every_consumer_in_bounded_time(text):
    started = time.perf_counter()
    found = answers.extract(text)
    assert found.value is None or (isinstance(found.value, str) and len(found.value) < 200_000)
    if found.value is not None and found.value.lower().lstrip("-") in ("nan", "inf"):
        pytest.fail(f"non-finite answer extracted: {found.value!r}")
    answers.check_format(text)
    for name, reward in rewards.REWARDS.items():
        value = reward(["q"], [text], ["12"])[0]
        assert math.isfinite(value), name
    vote = voting.majority([found.value, found.value, None])
    assert vote.answer == found.value
    evaluate.score(text, "12")
    assert time.perf_counter() - started < 1.0
