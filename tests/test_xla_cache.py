"""The persistent XLA compilation cache as the jobs use it: a warm run of a stage compiles nothing new
(counted from jax.monitoring's compile and cache-hit events, logged by every job), on a local directory
(one machine) and on a gs:// bucket (the pods' bus, through a real fake-gcs-server)."""

import json
import subprocess
import sys
import uuid

import pytest

from conftest import REPO, TIERS, job_env

CPU = TIERS / "cpu" / "tier.yaml"
RECIPE = """recipe: cache-sft
model: {name: tiny, lora: {rank: 4, alpha: 8}}
data: {source: reasoning-gym, train_size: 8, eval_size: 2, seed: 5}
sft: {max_steps: 3, max_seq_len: 512, checkpoint_every: 100, optimizer: {learning_rate: 1.0e-3}}
"""


def programs(module: str, recipe, root, cache: str) -> dict:
    """Run `module` as its pod does, with the XLA cache at `cache`; its "xla programs" log record."""
    env = job_env(SHOWWORK_LOG_FORMAT="json", JAX_COMPILATION_CACHE_DIR=cache)
    env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)  # the suite's bar, not the jobs' default
    done = subprocess.run([sys.executable, "-m", module, str(recipe), str(CPU), "--root", str(root)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    found = [r for r in records if r.get("event") == "xla programs"]
    assert len(found) == 1, done.stderr[-3000:]
    return found[0]


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_a_warm_run_of_a_stage_compiles_nothing_new(where, tmp_path, request):
    if where == "gcs":
        request.getfixturevalue("gcs_server")
        cache = f"gs://showwork-test/xla-{uuid.uuid4().hex[:8]}"
    else:
        cache = str(tmp_path / "xla")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    for run in ("cold", "warm"):  # two runs of the same stage (a second pipeline run, a new pod)
        subprocess.run([sys.executable, "-m", "jobs.prepare_data", str(recipe), str(CPU), "--root",
                        str(tmp_path / run)], cwd=REPO, env=job_env(), check=True, capture_output=True)
    cold = programs("jobs.sft", recipe, tmp_path / "cold", cache)
    warm = programs("jobs.sft", recipe, tmp_path / "warm", cache)
    assert cold["cache"] == warm["cache"] == cache
    assert cold["programs_compiled"] > 5 and cold["programs_from_cache"] == 0, cold
    assert warm["programs_compiled"] == 0, warm
    assert warm["programs_from_cache"] == cold["programs_compiled"], (cold, warm)
    assert warm["xla_seconds"] < cold["xla_seconds"], (cold, warm)
