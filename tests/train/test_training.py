"""SFT and GRPO through their job entrypoints on the tiny model: outputs, skip, and
exact resume after a real SIGTERM (parameters identical to an uninterrupted run)."""

import signal
import subprocess
import zlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO, TIERS, job_env
from showwork import config
from showwork.bus import Bus
from showwork.errors import EXIT_PREEMPTED
from showwork.config import LoraConfig, OptimizerConfig, ScheduleConfig
from showwork.model import export, families, loader, lora, tiny as tiny_model
from showwork.sample import forward
from showwork.task import rewards as rewards_lib
from showwork.train import checkpoints, grpo, objective, sft, step as step_lib

CPU = TIERS / "cpu" / "tier.yaml"

TINY_SFT = """recipe: tiny-sft
model: {name: tiny, lora: {rank: 4, alpha: 8}}
data: {source: reasoning-gym, train_size: 24, eval_size: 4, seed: 5}
sft: {max_steps: 14, max_seq_len: 1024, gradient_accumulation: 2, checkpoint_every: 3,
      optimizer: {learning_rate: 1.0e-3}, schedule: {warmup_steps: 2}}
"""

TINY_FULL_SFT = TINY_SFT.replace("model: {name: tiny, lora: {rank: 4, alpha: 8}}", "model: {name: tiny}")

TINY_GRPO = """recipe: tiny-grpo
model: {name: tiny, lora: {rank: 4, alpha: 8}}
data: {source: reasoning-gym, train_size: 24, eval_size: 4, seed: 5}
grpo:
  sessions: 2
  prompts_per_session: 6
  steps_per_session: 6
  num_generations: 2
  beta: 0.04
  checkpoint_every: 2
  rollout: {max_prompt_length: 512, max_tokens_to_generate: 12, temperature: 1.0, top_k: 30}
  optimizer: {learning_rate: 1.0e-3}
  rewards: {format_approx: 1.0, numbers: 1.0}
"""
DAPO_SWITCHES = """  dynamic_sampling: true
  max_num_gen_batches: 3
  overlong_buffer_length: 4
  epsilon_high: 0.28
  loss_agg_mode: token-mean
"""


def recipe(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def job(module, *args):
    return [sys.executable, "-m", module, *map(str, args)]


def run(module, *args, timeout=600):
    done = subprocess.run(job(module, *args), cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def interrupted(module, *args, after_step: int, event: str):
    """Start the job, SIGTERM it once it logs step >= after_step; return (rc, stderr)."""
    proc = subprocess.Popen(job(module, *args), cwd=REPO, env=job_env(SHOWWORK_LOG_FORMAT="json"),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if f'"event": "{event}"' in line and f'"step": {after_step},' in line:
            # Freeze it first so the signal lands mid-run however fast the steps are.
            proc.send_signal(signal.SIGSTOP)
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
            break
    lines.extend(proc.stderr)
    return proc.wait(timeout=600), "".join(lines)


def weights(bus_root, key):
    return load_file(str(bus_root / key))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("text", [TINY_SFT, TINY_FULL_SFT], ids=["lora", "full"])
def test_sft_resume_after_sigterm_equals_uninterrupted(tmp_path, text):
    path = recipe(tmp_path, text)
    for root in ("a", "b"):
        run("jobs.prepare_data", path, CPU, "--root", tmp_path / root)
    run("jobs.sft", path, CPU, "--root", tmp_path / "a")

    rc, log = interrupted("jobs.sft", path, CPU, "--root", tmp_path / "b", after_step=4, event="sft step")
    assert rc == EXIT_PREEMPTED, log[-2000:]  # not 0: a deleted pod exiting 0 would count as Succeeded
    assert "preempted" in log
    bus_b = Bus(str(tmp_path / "b" / "tiny-sft"))
    assert not bus_b.exists("sft/_SUCCESS")
    saved = checkpoints.Checkpoints(bus_b, "sft/checkpoints", 2, 3).latest_step()
    assert saved is not None and 4 <= saved < 14

    again = run("jobs.sft", path, CPU, "--root", tmp_path / "b")
    assert "resuming from checkpoint" in again.stderr
    a = weights(tmp_path / "a" / "tiny-sft", "sft/model/model.safetensors")
    b = weights(tmp_path / "b" / "tiny-sft", "sft/model/model.safetensors")
    assert_same_weights(a, b)
    metrics_a = Bus(str(tmp_path / "a" / "tiny-sft")).read_jsonl("sft/metrics.jsonl")
    assert [m["step"] for m in metrics_a] == list(range(1, 15))
    assert Bus(str(tmp_path / "a" / "tiny-sft")).read_json("sft/_SUCCESS")["metrics"]["steps"] == 14

    skipped = run("jobs.sft", path, CPU, "--root", tmp_path / "b")
    assert "skipping" in skipped.stderr


def test_qlora_sft_job_trains_and_exports_a_plain_model(tmp_path):
    text = TINY_SFT.replace("lora: {rank: 4, alpha: 8}", "lora: {rank: 4, alpha: 8, quantize: int8}").replace(
        "max_steps: 14", "max_steps: 8")
    path = recipe(tmp_path, text)
    run("jobs.prepare_data", path, CPU, "--root", tmp_path)
    run("jobs.sft", path, CPU, "--root", tmp_path)
    bus = Bus(str(tmp_path / "tiny-sft"))
    losses = [m["loss"] for m in bus.read_jsonl("sft/metrics.jsonl")]
    assert len(losses) == 8 and all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])
    tensors = weights(tmp_path / "tiny-sft", "sft/model/model.safetensors")
    assert not any("lora" in name for name in tensors)
    assert all(t.dtype == np.float32 for t in tensors.values())

    reloaded = loader.load_dir(str(tmp_path / "tiny-sft" / "sft" / "model"))
    assert reloaded.model.layers[0].mlp.down_proj.kernel.value.dtype == np.float32


def test_grpo_sessions_with_dapo_switches_and_own_schedules_resume_after_sigterm_equals_uninterrupted(tmp_path):
    """Dynamic sampling's extra rounds and overlong shaping on, each session with its own warmup and
    decay (the default objective's resume is tests/reliability/test_preemption.py's): the same weights,
    metrics and logged samples; session 1 restarts the schedule session 0 ran."""
    path = recipe(tmp_path, TINY_GRPO + DAPO_SWITCHES + "  schedule_per_session: true\n"
                  + "  schedule: {warmup_ratio: 0.34, end_value_ratio: 0.0}\n")
    for root in ("a", "b"):
        run("jobs.prepare_data", path, CPU, "--root", tmp_path / root)
    run("jobs.grpo_session", path, CPU, "--root", tmp_path / "a")  # both sessions in order

    run("jobs.grpo_session", path, CPU, "--root", tmp_path / "b", "--session", "0")
    rc, log = interrupted("jobs.grpo_session", path, CPU, "--root", tmp_path / "b", "--session", "1",
                          after_step=8, event="grpo step")
    assert rc == EXIT_PREEMPTED and "preempted" in log, log[-2000:]
    bus_b = Bus(str(tmp_path / "b" / "tiny-grpo"))
    assert bus_b.exists("grpo/s-0/_SUCCESS") and not bus_b.exists("grpo/s-1/_SUCCESS")
    run("jobs.grpo_session", path, CPU, "--root", tmp_path / "b", "--session", "1")

    for key in ("grpo/s-0/model/model.safetensors", "grpo/s-1/model/model.safetensors"):
        assert_same_weights(weights(tmp_path / "a" / "tiny-grpo", key), weights(tmp_path / "b" / "tiny-grpo", key))
    bus_a = Bus(str(tmp_path / "a" / "tiny-grpo"))
    s1 = bus_a.read_jsonl("grpo/s-1/metrics.jsonl")
    assert [m["step"] for m in s1] == list(range(7, 13))
    assert {"reward", "correct", "kl", "loss", "reward_format_approx", "reward_numbers", "reward_overlong",
            "sampling_rounds", "informative_groups"} <= set(s1[0])
    assert any(m["sampling_rounds"] > 1 for m in s1)  # the extra rounds ran, and resumed alike
    # Its own schedule: session 1 (steps 7-12) warms up from 0 and decays again, as session 0 (steps 1-6) did.
    s0_rates = [m["learning_rate"] for m in bus_a.read_jsonl("grpo/s-0/metrics.jsonl")]
    s1_rates = [m["learning_rate"] for m in s1]
    assert s1_rates == pytest.approx(s0_rates, rel=1e-6) and s0_rates[0] < max(s0_rates) > s0_rates[-1]
    for key in ("grpo/s-1/metrics.jsonl", "grpo/s-1/samples.jsonl"):
        a, b = bus_a.read_jsonl(key), bus_b.read_jsonl(key)
        for row in a + b:
            row.pop("step_seconds", None), row.pop("sample_seconds", None)
        assert a == b, key
    assert [r["step"] for r in bus_b.read_jsonl("grpo/s-1/samples.jsonl")] == [s for s in range(7, 13) for _ in (0, 1)]
    # A changed session-0 model would show: session 1 must differ from session 0.
    s0w = weights(tmp_path / "a" / "tiny-grpo", "grpo/s-0/model/model.safetensors")
    s1w = weights(tmp_path / "a" / "tiny-grpo", "grpo/s-1/model/model.safetensors")
    assert any(not np.allclose(s0w[k], s1w[k]) for k in s0w)


def test_an_offset_schedule_restarts_warmup_and_decay_at_its_first_step():
    """A GRPO session with its own schedule starts at its first global step (the optimizer's count)."""
    opt, sch = OptimizerConfig(learning_rate=1e-3), ScheduleConfig(warmup_ratio=0.25, end_value_ratio=0.1)

    def rates(tx, n):
        params, grads = {"w": np.zeros(3, np.float32)}, {"w": np.ones(3, np.float32)}
        state, out = tx.init(params), []
        for _ in range(n):  # the state's counts go on from the earlier sessions' steps
            _, state = tx.update(grads, state, params)
            out.append(step_lib.current_lr(state))
        return out

    whole = rates(step_lib.optimizer(opt, sch, 8), 8)
    assert rates(step_lib.optimizer(opt, sch, 8, offset=20), 28)[20:] == pytest.approx(whole, rel=1e-6)
    assert whole[0] < max(whole) == pytest.approx(1e-3) and whole[-1] < max(whole)


def test_grpo_session_needs_the_previous_one(tmp_path):
    path = recipe(tmp_path, TINY_GRPO)
    run("jobs.prepare_data", path, CPU, "--root", tmp_path)
    done = subprocess.run(job("jobs.grpo_session", path, CPU, "--root", tmp_path, "--session", "1"), cwd=REPO,
                          env=job_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "needs session 0's final checkpoint" in done.stderr


@pytest.mark.parametrize("n, session, per, ratio", [(20, 0, 5, 1.0), (20, 2, 5, 1.0), (20, 3, 5, 0.5), (7, 4, 5, 1.0)])
def test_session_prompts_mix_new_and_review(n, session, per, ratio):
    picked = grpo.session_prompts(n, session, per, ratio, seed=3)
    assert picked == grpo.session_prompts(n, session, per, ratio, seed=3)  # deterministic
    base = np.random.default_rng([3, 0xA11]).permutation(n)
    new = {int(base[(session * per + i) % n]) for i in range(per)}
    assert new <= set(picked)
    replay = len(picked) - per
    assert replay == (0 if session == 0 else min(int(round(per * ratio)), len({int(base[i % n]) for i in range(session * per)})))
    earlier = {int(base[i % n]) for i in range(session * per)}
    assert set(picked[per:]) <= set(picked) and all(p in earlier or p in new for p in picked)


def test_sft_order_is_a_pure_function_of_position():
    first = sft.order(10, seed=1, start=0, count=25)
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert first[10:20] != first[:10]  # a new permutation each epoch
    assert sft.order(10, seed=1, start=13, count=5) == first[13:18]


def test_tokenize_truncates_and_drops(tiny):
    rows = [{"prompt": "short question", "target": "x " * 400}, {"prompt": "p " * 600, "target": "t"},
            {"prompt": "q", "target": "a"}]
    seqs = sft.tokenize(rows, tiny.tokenizer, 128)
    assert (len(seqs.prompts), seqs.truncated, seqs.dropped) == (2, 1, 1)
    assert all(len(p) + len(c) <= 128 for p, c in zip(seqs.prompts, seqs.completions))


def test_grpo_objective_matches_hand_computation():
    import jax.numpy as jnp

    logps = jnp.log(jnp.array([[0.5, 0.25], [0.5, 0.5]]))
    old = jnp.log(jnp.array([[0.25, 0.25], [0.5, 0.5]]))
    ref = old
    adv = jnp.array([1.0, -1.0])
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    loss, aux = objective.loss(logps, old, ref, adv, mask, objective.Objective(beta=0.0))
    # row 0: ratios 2.0 (clipped to 1.2) and 1.0 -> per-token -1.2, -1.0 -> mean -1.1
    # row 1: ratio 1.0 on its one token, advantage -1 -> +1.0
    assert float(loss) == pytest.approx((-1.1 + 1.0) / 2)
    assert float(aux["clip_fraction"]) == pytest.approx(1 / 3)
    loss_kl, aux_kl = objective.loss(logps, old, ref, adv, mask, objective.Objective(beta=0.5))
    assert float(aux_kl["kl"]) > 0 and float(loss_kl) > float(loss)


def test_grpo_single_update_uses_current_logps_as_old_without_another_forward(tiny):
    """old=None (num_iterations 1) gives the loss and gradient of old = a separate forward pass."""
    import jax
    import jax.numpy as jnp


    loaded = tiny_model.load(seed=2)
    loaded.model = lora.add(loaded.model, LoraConfig(4, 8.0, lora.DEFAULT_TARGETS))
    graphdef, trainable, frozen = step_lib.split(loaded.model)
    trainable = jax.tree.map(lambda x: x + 0.01, trainable)  # adapters away from zero: a real gradient
    tx = step_lib.optimizer(OptimizerConfig(1e-3, 0.9, 0.99, 0.0, 1.0), ScheduleConfig(warmup_steps=0, end_value_ratio=0.1), 4)
    logps_fn, grad_fn, _ = grpo.make_step_fns(graphdef, tx, objective.Objective(beta=0.0), temperature=1.0)
    prompt, completion, mask = forward.pack([[5, 6, 7], [8, 9]], [[10, 11, 12, 13], [14, 15]])
    adv = jnp.array([1.0, -1.0])
    old = logps_fn(trainable, frozen, prompt, completion, mask)
    (loss, aux), grads = grad_fn(trainable, frozen, prompt, completion, mask, old, None, adv)
    (loss_n, aux_n), grads_n = grad_fn(trainable, frozen, prompt, completion, mask, None, None, adv)
    np.testing.assert_allclose(loss_n, loss, rtol=1e-5)
    assert float(aux_n["kl"]) == 0.0 and float(aux_n["clip_fraction"]) == 0.0
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads_n))
    for a, b in zip(jax.tree.leaves(grads_n), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("quantize", [None, "int8", "int4", "nf4"])
def test_lora_merge_matches_adapted_forward(tiny, quantize):
    """The exported (merged) model computes what the adapted model computed,
    for LoRA and for QLoRA, whose base is folded in its quantised form."""
    import jax
    import jax.numpy as jnp
    from flax import nnx


    original = tiny_model.load(seed=4)
    base_w = np.asarray(original.model.layers[0].mlp.down_proj.kernel.value).copy()
    loaded = tiny_model.load(seed=4)
    loaded.model = lora.add(loaded.model, LoraConfig(4, 8.0, lora.DEFAULT_TARGETS, quantize))
    state = nnx.state(loaded.model, nnx.LoRAParam)
    leaves, tree = jax.tree.flatten(state)
    nnx.update(loaded.model, jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(jax.random.key(i), x.shape)
                                                        for i, x in enumerate(leaves)]))
    ids = jnp.asarray([[2, 40, 41, 42, 43, 44]])
    pos = jnp.arange(6)[None]
    mask = jnp.tril(jnp.ones((6, 6), bool))[None]
    adapted, _ = loaded.model(ids, pos, None, mask)
    lora.merge(loaded.model)
    tensors = families.for_config(loaded.config).hf_tensors(loaded.model, loaded.config)
    with tempfile.TemporaryDirectory() as tmp:
        export.export_hf(loaded, Path(tmp))
        reloaded = loader.load_dir(tmp)
        merged, _ = reloaded.model(ids, pos, None, mask)
    assert not any("lora" in name for name in tensors)
    assert all(t.dtype == np.float32 for t in tensors.values())
    assert np.abs(np.asarray(adapted) - np.asarray(merged)).max() < 1e-4
    # For QLoRA the exported base differs from the original W by the
    # quantisation error: folding into W itself would not reproduce training.
    if quantize:
        exported = tensors["model.layers.0.mlp.down_proj.weight"].T
        plain = original.model.layers[0].mlp.down_proj  # unadapted module: W alone
        assert plain.kernel.value.shape == exported.shape
        assert np.abs(exported - base_w).max() > 1e-3


def test_config_for_training_sections(tmp_path):
    cfg = config.load(recipe(tmp_path, TINY_GRPO), CPU)
    assert cfg.grpo.sessions == 2 and cfg.grpo.rollout.max_tokens_to_generate == 12
    bad = recipe(tmp_path, TINY_GRPO + "  \n", "b.yaml")
    bad.write_text(TINY_GRPO.replace("numbers: 1.0", "numberz: 1.0"))
    with pytest.raises(config.ConfigError, match="unknown reward 'numberz'"):
        config.load(bad, CPU)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_fold_into_base_computes_what_the_adapted_model_computes(tiny, quantize):
    """GRPO samples from the base model with the adapters folded in: same
    logits as the adapted model, and refolding follows the adapters as they
    train (the base's own weights are overwritten each time, not added to)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx


    base = tiny_model.load(seed=4).model
    adapted = lora.add(base, LoraConfig(4, 8.0, lora.DEFAULT_TARGETS, quantize))
    ids = jnp.asarray([[2, 40, 41, 42, 43, 44]])
    pos = jnp.arange(6)[None]
    mask = jnp.tril(jnp.ones((6, 6), bool))[None]
    for round_ in range(2):
        state = nnx.state(adapted, nnx.LoRAParam)
        leaves, tree = jax.tree.flatten(state)
        nnx.update(adapted, jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(jax.random.key(10 * round_ + i), x.shape)
                                                       for i, x in enumerate(leaves)]))
        want, _ = adapted(ids, pos, None, mask)
        folded = lora.fold_into(base, adapted)
        assert folded is base
        got, _ = folded(ids, pos, None, mask)
        assert np.abs(np.asarray(want) - np.asarray(got)).max() < 1e-4
    # the adapted model keeps its adapters: folding does not touch it
    assert any(name.endswith("_lora_a") and getattr(m, name) is not None
               for _, m in nnx.iter_modules(adapted) for name in vars(m))


def test_fold_into_refuses_a_model_without_the_adapted_weights(tiny):
    from flax import nnx


    adapted = lora.add(tiny_model.load(seed=4).model, LoraConfig(4, 8.0, lora.DEFAULT_TARGETS))
    with pytest.raises(ValueError, match="no weight .* pass the model that lora.add was given"):
        lora.fold_into(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), adapted)


@pytest.mark.parametrize("n, size, cap, want", [
    (416, 128, 416, 416),   # SFT data cut at max_seq_len: no bucket past the data
    (300, 128, 416, 384),   # a shorter batch still gets its bucket
    (385, 128, 400, 400),   # the bucket (512) would pass the cap
    (1, 128, 416, 128),
    (128, 128, 1000, 128),
])
def test_capped_bucket_table(n, size, cap, want):
    assert forward.capped_bucket(n, size, cap) == want


def test_capped_bucket_refuses_a_length_over_its_cap():
    with pytest.raises(ValueError, match="over the cap"):
        forward.capped_bucket(500, 128, 416)


def test_optimizer_step_reuses_its_input_buffers_and_matches_optax():
    """make_apply donates weights and moments (no second copy of
    full fine-tuning's state at the peak) and computes optax's AdamW step."""
    import jax
    import jax.numpy as jnp
    import optax

    tx = step_lib.optimizer(OptimizerConfig(1e-2, 0.9, 0.99, 0.01, 1.0), ScheduleConfig(warmup_steps=0, end_value_ratio=0.1), 10)
    params = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(4)}
    grads = {"w": jnp.full((3, 4), 0.5), "b": jnp.linspace(-1, 1, 4)}
    state = tx.init(params)
    want_updates, want_state = tx.update(grads, state, params)
    want = optax.apply_updates(params, want_updates)
    inputs = (jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state), jax.tree.map(jnp.copy, grads))
    new, new_state, norm = step_lib.make_apply(tx)(*inputs)
    for a, b in zip(jax.tree.leaves((new, new_state)), jax.tree.leaves((want, want_state))):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(norm, optax.global_norm(grads), rtol=1e-6)
    assert all(x.is_deleted() for x in jax.tree.leaves(inputs[0]))
    assert not any(x.is_deleted() for x in jax.tree.leaves(inputs[2]))


def tiny_sft_rows(n: int) -> list[dict]:
    return [{"prompt": f"Question {i}: what is {i} plus {i}?", "target": f"<answer>{2 * i}</answer>"} for i in range(n)]


def test_logged_learning_rate_is_the_rate_each_step_applied(tmp_path):
    """Warmup 2 steps to 1e-3 from a third of it (no step at rate 0): step 1 applies schedule(0), step 2
    schedule(1), ...; the old loop read the rate before the update and logged 0 for the first two steps."""
    import optax

    from showwork import log
    from showwork.config import SftConfig

    loaded = tiny_model.load(seed=1)
    sft_cfg = SftConfig(max_steps=5, optimizer=OptimizerConfig(learning_rate=1e-3),
                        schedule=ScheduleConfig(warmup_steps=2, end_value_ratio=0.1), checkpoint_every=100)
    sft.train(Bus(str(tmp_path)), loaded, tiny_sft_rows(8), sft_cfg, batch=2, stage="sft", digest="t", log=log.get("t"))
    logged = [r["learning_rate"] for r in Bus(str(tmp_path)).read_jsonl("sft/metrics.jsonl")]
    schedule = optax.warmup_cosine_decay_schedule(1e-3 / 3, 1e-3, 2, 5, 1e-4)
    np.testing.assert_allclose(logged, [float(schedule(k)) for k in range(5)], rtol=1e-6, atol=1e-12)
    assert logged[0] == pytest.approx(1e-3 / 3) and logged[1] == pytest.approx(2e-3 / 3)


def test_sft_eval_every_logs_held_out_loss_on_its_steps(tmp_path):
    """eval_every 2: steps 2 and 4 carry `eval_loss`, the completion loss on the held-out rows computed
    by the same loss as training; steps 1 and 3 do not."""
    from showwork import log
    from showwork.config import SftConfig

    loaded = tiny_model.load(seed=1)
    held_out = tiny_sft_rows(11)[8:]
    sft_cfg = SftConfig(max_steps=4, eval_every=2, optimizer=OptimizerConfig(learning_rate=1e-3), checkpoint_every=100)
    sft.train(Bus(str(tmp_path)), loaded, tiny_sft_rows(8), sft_cfg, batch=2, stage="sft", digest="t",
              log=log.get("t"), held_out=held_out)
    rows = Bus(str(tmp_path)).read_jsonl("sft/metrics.jsonl")
    assert ["eval_loss" in r for r in rows] == [False, True, False, True]
    # The last value is the trained model's loss on the held-out rows, recomputed here.
    seqs = sft.tokenize(held_out, loaded.tokenizer, sft_cfg.max_seq_len)
    graphdef, trainable, frozen = step_lib.split(loaded.model)
    _, _, loss_fn = sft.make_step_fns(graphdef, step_lib.optimizer(sft_cfg.optimizer, sft_cfg.schedule, 4))
    assert rows[-1]["eval_loss"] == pytest.approx(sft.held_out_loss(loss_fn, trainable, frozen, seqs, 2), rel=1e-5)
    assert rows[-1]["eval_loss"] != rows[1]["eval_loss"]


def flat_or_spread(prompts, completions, answer, **kw):
    """A test reward: 0 for every completion of a "flat" row; otherwise a value that differs between
    any two different completions (so a group of distinct samples always has a signal)."""
    return [0.0 if a == "flat" else zlib.crc32(c.encode()) / 2**32 for c, a in zip(completions, answer)]


def test_dynamic_sampling_trains_a_full_batch_of_informative_groups(tmp_path, monkeypatch):
    """Half of each step's prompts score the same whatever is written (zero advantage). Without
    dynamic sampling half the batch is dead; with it every trained group's rewards differ, the
    batch keeps its size, and the scheduled prompts' rollouts (what `reward` reports) are the same."""
    from showwork import log
    from showwork.config import GrpoConfig, RolloutConfig

    monkeypatch.setitem(rewards_lib.REWARDS, "flat_or_spread", flat_or_spread)
    # 12 session prompts, 8 scheduled (2 steps of 4): the 4 never scheduled are the longest, and
    # dynamic sampling may draw them, so the padded prompt length must fit them too.
    order = grpo.session_prompts(16, 0, 12, 0.0, seed=0)
    kinds = {row: ("flat" if position % 4 < 2 else "spread") for position, row in enumerate(order)}
    long = {row for position, row in enumerate(order) if position >= 8}
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?" + (" Show every step of the sum." * 6 if i in long else ""),
             "answer": kinds.get(i, "spread")} for i in range(16)]
    logged = {}
    for dynamic in (False, True):
        cfg = GrpoConfig(batch_size=4, num_generations=3, beta=0.0, prompts_per_session=12, review_ratio=0.0,
                         steps_per_session=2, dynamic_sampling=dynamic, max_num_gen_batches=4,
                         num_completions_to_print=4, rewards={"flat_or_spread": 1.0},
                         rollout=RolloutConfig(max_prompt_length=256, max_tokens_to_generate=6, temperature=1.0,
                                               top_k=None),
                         optimizer=OptimizerConfig(learning_rate=1e-3))
        bus = Bus(str(tmp_path / str(dynamic)))
        grpo.train_session(bus, tiny_model.load(seed=3), rows, 0, cfg, 4, "t", log.get("t"))
        logged[dynamic] = bus.read_jsonl("grpo/s-0/metrics.jsonl"), bus.read_jsonl("grpo/s-0/samples.jsonl")

    plain, plain_samples = logged[False]
    assert [m["informative_groups"] for m in plain] == [2.0, 2.0] and "sampling_rounds" not in plain[0]
    assert sorted(r["answer"] for r in plain_samples if r["step"] == 1) == ["flat", "flat", "spread", "spread"]

    metrics, samples = logged[True]
    assert [m["informative_groups"] for m in metrics] == [4.0, 4.0]
    assert all(m["sampling_rounds"] >= 2 for m in metrics)
    for step in (1, 2):
        trained = [r for r in samples if r["step"] == step]
        assert len(trained) == 4 and all(r["answer"] == "spread" for r in trained)
        for group in trained:
            rewards = [c["reward"] for c in group["completions"]]
            assert len(set(rewards)) == 3  # G 3: each group's advantages differ from every other's
            adv = objective.advantages(np.asarray(rewards), 3)
            assert [c["advantage"] for c in group["completions"]] == pytest.approx(adv.tolist(), abs=1e-5)
        assert any(group["round"] > 0 for group in trained)
    # Round 0 is the scheduled prompts sampled with the step's usual seed, whether or not more rounds follow.
    assert metrics[0]["reward"] == pytest.approx(plain[0]["reward"])


def test_several_updates_per_rollout_clip_against_the_rollouts_log_probs(tmp_path, monkeypatch):
    """num_iterations 1: the sampling policy is the current one, every ratio is 1 and nothing is
    clipped. num_iterations 3 (μ): updates 2 and 3 see ratios to the rollout's log-probs move away
    from 1, and a large step gets clipped; the ratio would stay 1 if `old` were recomputed."""
    from showwork import log
    from showwork.config import GrpoConfig, RolloutConfig

    monkeypatch.setitem(rewards_lib.REWARDS, "flat_or_spread", flat_or_spread)  # every group has a signal
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "answer": "spread"} for i in range(8)]
    clipped = {}
    for mu in (1, 3):
        cfg = GrpoConfig(batch_size=2, num_generations=4, beta=0.0, prompts_per_session=4, steps_per_session=2,
                         num_iterations=mu, rewards={"flat_or_spread": 1.0},
                         rollout=RolloutConfig(max_prompt_length=64, max_tokens_to_generate=8, temperature=1.0,
                                               top_k=None),
                         optimizer=OptimizerConfig(learning_rate=0.05, max_grad_norm=10.0))
        bus = Bus(str(tmp_path / str(mu)))
        grpo.train_session(bus, tiny_model.load(seed=4), rows, 0, cfg, 2, "t", log.get("t"))
        clipped[mu] = [m["clip_fraction"] for m in bus.read_jsonl("grpo/s-0/metrics.jsonl")]
    assert clipped[1] == [0.0, 0.0]
    assert max(clipped[3]) > 0.0


@pytest.mark.parametrize("mode", ["sequence-mean-token-mean", "token-mean"])
def test_a_grpo_update_in_micro_batches_equals_the_whole_batchs_update(mode):
    """grpo.gradient over passes of 2 completions: the loss, KL, clip fraction and gradient of one pass
    over all 6, with a reference (β > 0), rollout log-probs that differ from the current ones (μ > 1),
    uneven lengths and a completion left without tokens."""
    import jax
    import jax.numpy as jnp

    loaded = tiny_model.load(seed=2)
    loaded.model = lora.add(loaded.model, LoraConfig(4, 8.0, lora.DEFAULT_TARGETS))
    graphdef, trainable, frozen = step_lib.split(loaded.model)
    reference = trainable
    trainable = jax.tree.map(lambda x: x + 0.01, trainable)
    tx = step_lib.optimizer(OptimizerConfig(1e-3), ScheduleConfig(), 4)
    logps_fn, grad_fn, _ = grpo.make_step_fns(graphdef, tx, objective.Objective(0.04, 0.2, 0.28, "grpo", mode, 4), 1.0)
    prompt, completion, mask = forward.pack([[5, 6, 7], [8, 9], [5, 6], [7], [9, 9, 9], [4, 5]],
                                            [[10, 11, 12, 13], [14, 15], [16], [17, 18, 19], [20, 21], [22]])
    mask = objective.drop_truncated(mask, [True, True, True, False, True, True])
    batch, adv = (prompt, completion, mask), jnp.array([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    results = {}
    for size in (None, 2):
        passes = grpo.micro_batches(6, size)
        old = [x - 0.3 for x in grpo.pass_logps(logps_fn, reference, frozen, batch, passes)]
        ref = grpo.pass_logps(logps_fn, reference, frozen, batch, passes)
        results[size] = grpo.gradient(grad_fn, trainable, frozen, batch, old, ref, adv, passes)
    (loss, aux, grads), (loss_m, aux_m, grads_m) = results[None], results[2]
    assert len(grpo.micro_batches(6, 2)) == 3 and float(aux["clip_fraction"]) > 0 and float(aux["kl"]) > 0
    np.testing.assert_allclose(loss_m, loss, rtol=1e-5)
    for k in ("kl", "clip_fraction"):
        np.testing.assert_allclose(aux_m[k], aux[k], rtol=1e-5)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    for a, b in zip(jax.tree.leaves(grads_m), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)


def test_micro_batches_must_divide_the_steps_completions_and_the_replicas(tmp_path):
    assert grpo.micro_batches(8, None) == [slice(0, 8)] and grpo.micro_batches(8, 16) == [slice(0, 8)]
    assert grpo.micro_batches(8, 4) == [slice(0, 4), slice(4, 8)]
    with pytest.raises(Exception, match="does not divide the step's 8 completions"):
        grpo.micro_batches(8, 3)
    tier = recipe(tmp_path, "tier: {name: t, mesh: {shape: [4, 1], axes: [fsdp, tp]}}\n", "tier.yaml")
    grpo_text = TINY_GRPO.replace("num_generations: 2", "num_generations: 4\n  batch_size: 4")
    assert config.load(recipe(tmp_path, grpo_text + "  micro_batch: 8\n"), tier).grpo.micro_batch == 8
    for size, says in ((6, "6 does not divide the step's 16 completions"), (2, "4 data-parallel replicas")):
        with pytest.raises(config.ConfigError, match=says):
            config.load(recipe(tmp_path, grpo_text + f"  micro_batch: {size}\n"), tier)


def test_a_grpo_session_in_micro_batches_or_with_remat_trains_the_weights_of_one_pass(tmp_path, monkeypatch):
    """Two steps of 2 prompts x 4 completions with β > 0, once in one gradient pass, once in passes
    of 2 completions (grpo.micro_batch) and once with LoRA on a remat model (tier.remat): the same
    losses, KL and adapters, to float32 rounding."""
    import jax
    from flax import nnx

    from showwork import log
    from showwork.config import GrpoConfig, RolloutConfig

    monkeypatch.setitem(rewards_lib.REWARDS, "flat_or_spread", flat_or_spread)
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "answer": "spread"} for i in range(8)]
    metrics, adapters = {}, {}
    for size, remat in ((None, False), (2, False), (None, True)):
        cfg = GrpoConfig(batch_size=2, num_generations=4, beta=0.04, prompts_per_session=4, steps_per_session=2,
                         micro_batch=size, rewards={"flat_or_spread": 1.0},
                         rollout=RolloutConfig(max_prompt_length=64, max_tokens_to_generate=8, temperature=1.0,
                                               top_k=None),
                         optimizer=OptimizerConfig(learning_rate=0.01, max_grad_norm=10.0))
        loaded = tiny_model.load(seed=4, remat=remat)
        loaded.model = lora.add(loaded.model, LoraConfig(4, 8.0, lora.DEFAULT_TARGETS))
        bus = Bus(str(tmp_path / f"{size}-{remat}"))
        grpo.train_session(bus, loaded, rows, 0, cfg, 2, "t", log.get("t"))
        metrics[size, remat] = bus.read_jsonl("grpo/s-0/metrics.jsonl")
        adapters[size, remat] = jax.tree.leaves(nnx.state(loaded.model, nnx.LoRAParam))
    whole = (None, False)
    assert metrics[whole][-1]["kl"] > 0 and len(metrics[whole]) == 2
    for other in ((2, False), (None, True)):
        for a, b in zip(metrics[whole], metrics[other]):
            for k in ("loss", "kl", "grad_norm", "reward"):
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), (other, k)
        for a, b in zip(adapters[other], adapters[whole]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_grpo_rollouts_with_the_calculator_grade_its_values_and_train_on_the_models_tokens_only(tmp_path, monkeypatch):
    """rollout.calculator: a scripted policy writes "Half: 48 / 2 =", the calculator " 24", the policy
    the answer (right on even rows, wrong on odd ones). Rewards grade the text with the value in it;
    the update scores exactly the ids the rows went on from, with the calculator's masked out."""
    from showwork import log
    from showwork.config import GrpoConfig, RolloutConfig
    from showwork.sample import sampler

    loaded = tiny_model.load(seed=5)
    tok = loaded.tokenizer
    first, value = tok.encode("Half: 48 / 2 ="), tok.encode(" 24")
    endings = {0: tok.encode(". So <answer>24</answer>"), 1: tok.encode(". So <answer>7</answer>")}

    def scripted(model, prompts, settings, *, prompt_ids, row_seeds, **kw):
        out = sampler.Samples([], [], [], [], [])
        for text, ids, seed in zip(prompts, prompt_ids, row_seeds):
            gen = endings[(seed - 7919) % 2] if text.endswith(" 24") else first
            out.texts.append(tok.decode(gen))
            out.tokens.append(gen)
            out.completion_ids.append(gen + [tok.end_of_turn_id] if text.endswith(" 24") else gen)
            out.prompt_tokens.append(ids)
            out.stopped.append(True)
        return out

    monkeypatch.setattr(sampler, "generate", scripted)
    seen = []
    real_gradient = grpo.gradient

    def recording(grad_fn, trainable, frozen, batch, *args):
        seen.append([np.asarray(x) for x in batch])
        return real_gradient(grad_fn, trainable, frozen, batch, *args)

    monkeypatch.setattr(grpo, "gradient", recording)
    rows = [{"prompt": f"Question {i}: what is half of 48?", "answer": "24"} for i in range(4)]
    cfg = GrpoConfig(batch_size=2, num_generations=4, beta=0.0, prompts_per_session=4, steps_per_session=1,
                     rewards={"correct": 1.0}, num_completions_to_print=2,
                     rollout=RolloutConfig(max_prompt_length=64, max_tokens_to_generate=32, calculator=True),
                     optimizer=OptimizerConfig(learning_rate=1e-3))
    bus = Bus(str(tmp_path))
    grpo.train_session(bus, loaded, rows, 0, cfg, 2, "t", log.get("t"))

    (metrics,), records = bus.read_jsonl("grpo/s-0/metrics.jsonl"), bus.read_jsonl("grpo/s-0/samples.jsonl")
    assert metrics["reward"] == pytest.approx(0.5) and metrics["calculator_tokens"] == len(value)
    texts = [c["text"] for r in records for c in r["completions"]]
    assert texts and all(t.startswith("Half: 48 / 2 = 24. So <answer>") for t in texts)
    (_, completion, mask), = seen
    for row in range(completion.shape[0]):
        n = int((completion[row] != forward.PAD_ID).sum())
        ending = completion[row, len(first) + len(value):n - 1].tolist()
        assert completion[row, :len(first) + len(value)].tolist() == first + value and ending in endings.values()
        want = [1.0] * len(first) + [0.0] * len(value) + [1.0] * (len(ending) + 1)
        assert mask[row, :n].tolist() == want and not mask[row, n:].any()
