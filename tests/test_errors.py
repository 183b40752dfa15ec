"""How a job ends (lib/showwork/errors.py): every error a user can cause is one line and its exit code,
run as the pod runs it (a subprocess); a bug keeps its traceback; preemption exits 75 (tests/train)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, TIERS, job_env
from showwork import cli, errors
from showwork.bus import Bus

CPU = TIERS / "cpu" / "tier.yaml"

TINY = """recipe: err
model: {name: tiny}
data: {source: reasoning-gym, train_size: 8, eval_size: 2, seed: 1}
sft: {max_steps: 6, max_seq_len: 512, checkpoint_every: 100}
"""


def job(module: str, recipe_text: str, tmp_path, *configs_after, extra=()):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    configs = [str(recipe), str(CPU), *map(str, configs_after)]
    return subprocess.run([sys.executable, "-m", module, *configs, "--root", str(tmp_path / "bus"), *extra],
                          cwd=REPO, env=job_env(SHOWWORK_LOG_FORMAT="json"), capture_output=True, text=True,
                          timeout=600)


def one_line(done, prefix: str = "error: ") -> str:
    """The job's single human line (the rest of stderr is JSON log lines); no traceback."""
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, done.stderr[-2000:]
    return lines[0]


def test_a_model_without_weights_is_a_usage_error(tmp_path):
    done = job("jobs.sft", TINY.replace("name: tiny", "name: gemma3-1b-it"), tmp_path)
    assert done.returncode == errors.EXIT_USAGE
    assert "needs model.path" in one_line(done)


def test_an_unknown_config_key_is_a_usage_error(tmp_path):
    done = job("jobs.sft", TINY + "bogus: 1\n", tmp_path)
    assert done.returncode == errors.EXIT_USAGE
    assert "bogus: unknown key" in one_line(done, "config error: ")


def test_a_tier_bigger_than_the_node_is_a_usage_error(tmp_path):
    tier = tmp_path / "big.yaml"
    tier.write_text("tier: {name: big, mesh: {shape: [4, 2]}}\n")
    done = job("jobs.sft", TINY, tmp_path, tier)
    assert done.returncode == errors.EXIT_USAGE
    assert "tier.mesh.shape" in one_line(done, "config error: ")


def test_missing_input_on_the_bus_is_a_runtime_error(tmp_path):
    done = job("jobs.sft", TINY, tmp_path)  # no data stage ran
    assert done.returncode == errors.EXIT_ERROR
    assert "data/train.jsonl" in one_line(done)


def test_training_that_goes_non_finite_stops_without_exporting(tmp_path):
    """lr 1e30: the first update blows the weights up, every later gradient is non-finite and refused;
    after tier.max_refused_steps (3) in a row the job stops, names the step, exports nothing."""
    text = TINY.replace("checkpoint_every: 100}", "checkpoint_every: 100, optimizer: {learning_rate: 1.0e+30}}")
    assert job("jobs.prepare_data", text, tmp_path).returncode == 0
    done = job("jobs.sft", text, tmp_path)
    assert done.returncode == errors.EXIT_ERROR
    line = one_line(done)
    assert "steps in a row had a non-finite gradient" in line and "step 4" in line, line
    bus = Bus(str(tmp_path / "bus" / "err"))
    assert not bus.exists("sft/_SUCCESS") and not bus.list("sft/model")
    rows = bus.read_jsonl("sft/metrics.jsonl")
    assert [r.get("refused", 0.0) for r in rows] == [0.0, 1.0, 1.0, 1.0]


def test_the_pipeline_passes_a_stages_exit_code_through(tmp_path):
    done = job("jobs.pipeline", TINY.replace("name: tiny", "name: gemma2-2b-it"), tmp_path)
    assert done.returncode == errors.EXIT_USAGE
    assert "needs model.path" in one_line(done)


def test_a_bug_keeps_its_traceback_and_exits_nonzero(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY)

    def buggy(cfg, bus, args):
        return {}["missing"]

    with pytest.raises(KeyError):
        cli.run("doc", buggy, argv=[str(recipe), str(CPU), "--root", str(tmp_path)])
    assert '"event": "unexpected error"' in capsys.readouterr().err  # and in the log, with its traceback


@pytest.mark.parametrize("err, code", [
    (errors.UsageError("x"), 2), (errors.RunError("x"), 1), (FileNotFoundError("x"), 1), (KeyError("x"), None),
])
def test_exit_code_table(err, code):
    assert cli.exit_code(err) == code


def test_an_unreachable_hub_is_one_line_that_says_what_to_stage(tmp_path):
    """A gsm8k recipe without data.path reaches for the Hugging Face Hub; this machine (like a pod) has
    no route to it: one line saying to stage the file and set data.path, exit 1, no traceback."""
    text = "recipe: hub\nmodel: {name: tiny}\ndata: {source: gsm8k, train_size: 4, eval_size: 2}\n"
    done = job("jobs.prepare_data", text, tmp_path)
    assert done.returncode == errors.EXIT_ERROR
    line = one_line(done)
    assert "openai/gsm8k" in line and "set data.path" in line, line
