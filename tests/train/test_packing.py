"""Packed SFT: the grouping (best-fit decreasing), the packed arrays, an example's log-probs packed equal
to its log-probs alone (Gemma 3 and Gemma 2: sliding window, soft-capping), and the SFT job with packing."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

import standins
from showwork.sample import forward
from showwork.sample.logprobs import completion_logps, packed_logps
from showwork.train import packing


@pytest.mark.parametrize("lengths, capacity, groups", [
    ([5, 4, 3, 3, 1], 8, [[0, 2], [1, 3, 4]]),  # 5 then 4 open two; each 3 goes to the fullest it fits
    ([8, 8, 8], 8, [[0], [1], [2]]),  # exactly full
    ([2, 2, 2, 2], 8, [[0, 1, 2, 3]]),
    ([1, 7, 2, 6, 3, 5], 8, [[0, 1], [2, 3], [4, 5]]),  # complementary pairs
    ([4], 100, [[0]]),
    ([], 8, []),
])
def test_plan_packs_longest_first_into_the_fullest_sequence_that_fits(lengths, capacity, groups):
    assert packing.plan(lengths, capacity) == groups


def test_plan_keeps_every_example_once_and_under_capacity():
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(20, 300, size=500)]
    groups = packing.plan(lengths, 512)
    assert sorted(i for g in groups for i in g) == list(range(500))
    assert all(sum(lengths[i] for i in g) <= 512 for g in groups)
    assert all(g == sorted(g) for g in groups)
    # close to the bound: at most 3% more sequences than total tokens / capacity
    assert len(groups) <= math.ceil(1.03 * sum(lengths) / 512)
    assert packing.plan(lengths, 512) == groups  # deterministic


def test_plan_refuses_an_example_longer_than_a_sequence():
    with pytest.raises(ValueError, match="does not fit"):
        packing.plan([3, 9], 8)


def test_arrays_lay_out_segments_positions_and_targets():
    prompts, completions = [[2, 10, 11], [2, 20]], [[12, 13], [21, 22, 23]]
    b = packing.arrays(prompts, completions, [[0, 1]], length=12, targets=6)
    assert b.tokens.tolist() == [[2, 10, 11, 12, 13, 2, 20, 21, 22, 23, 0, 0]]
    assert b.positions.tolist() == [list(range(12))]  # RoPE is relative: an example attends as if alone
    assert b.segments.tolist() == [[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0]]
    # token 11 (index 2) predicts 12, 12 predicts 13; 20 (index 6) predicts 21, ...
    assert b.predict_at.tolist() == [[2, 3, 6, 7, 8, 0]]
    assert b.targets.tolist() == [[12, 13, 21, 22, 23, 0]]
    assert b.mask.tolist() == [[1, 1, 1, 1, 1, 0]]
    with pytest.raises(ValueError, match="longer than"):
        packing.arrays(prompts, completions, [[0, 1]], length=9, targets=6)


def examples(tokenizer, count, seed=0):
    rng = np.random.default_rng(seed)
    prompts, completions = [], []
    for _ in range(count):
        a, b = (int(x) for x in rng.integers(2, 99, size=2))
        prompts.append(tokenizer.encode(f"What is {a} plus {b}? Think step by step.", bos=True))
        completions.append(tokenizer.encode(f"<reasoning>{a} + {b} = {a + b}</reasoning><answer>{a + b}</answer>"))
    return prompts, completions


@pytest.mark.parametrize("family", ["gemma3-1b-it", "gemma2-2b-it"])
def test_a_packed_example_has_the_log_probs_it_has_alone(family):
    build, _ = standins.STAND_INS[family]
    # narrow (compile time); a sliding window of 8: shorter than every example, so it matters
    loaded = build(0, layers=2, width=standins.NARROW)
    prompts, completions = examples(loaded.tokenizer, 6)
    graphdef, state = nnx.split(loaded.model)
    groups = packing.plan([len(p) + len(c) for p, c in zip(prompts, completions)], 128)
    assert any(len(g) > 2 for g in groups)
    b = packing.arrays(prompts, completions, groups, length=128, targets=96)
    packed = np.asarray(packed_logps(graphdef, (state,), *map(jnp.asarray, b[:-1])))
    for r, group in enumerate(groups):
        k = 0
        for i in group:
            # unpadded: tunix's Gemma 2 window compares positions with key indices, so a left-padded
            # reference would shift it
            p, c, m = forward.pack([prompts[i]], [completions[i]], prompt_len=len(prompts[i]),
                                   completion_len=len(completions[i]))
            alone = np.asarray(completion_logps(graphdef, (state,), p, c, m))[0, :len(completions[i])]
            np.testing.assert_allclose(packed[r, k:k + len(alone)], alone, rtol=1e-5, atol=2e-5)
            k += len(alone)
        assert not b.mask[r, k:].any()


SFT = """recipe: packed-sft
model: {name: tiny, lora: {rank: 4, alpha: 8}}
data: {source: reasoning-gym, train_size: 12, eval_size: 2, seed: 5}
sft: {epochs: 3, batch_size: 1, max_seq_len: 2048, packing: true, checkpoint_every: 100,
      optimizer: {learning_rate: 3.0e-3}, schedule: {warmup_steps: 1}}
"""


@pytest.mark.parametrize("tier", ["cpu", "v5e-4"])
def test_the_sft_job_trains_on_packed_sequences(tier, tmp_path):
    """On the cpu tier, and on v5e-4 as its users run it: bfloat16, a 4-device mesh (host devices)."""
    from conftest import TIERS
    from recipes import matrix

    path, tier_file = tmp_path / "recipe.yaml", TIERS / tier / "tier.yaml"
    path.write_text(SFT.replace("batch_size: 1", "batch_size: 4") if tier == "v5e-4" else SFT)
    devices = matrix.devices(yaml.safe_load(tier_file.read_text())["tier"]["mesh"]["shape"])
    for module in ("jobs.prepare_data", "jobs.sft"):
        done = matrix.job(module, [path, tier_file], tmp_path, devices, tmp_path / "cache")
        assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "packed-sft"
    final = json.loads((run_dir / "sft" / "_SUCCESS").read_text())["metrics"]
    # 12 examples of a few hundred tokens in 2048-token sequences: several to a sequence, three epochs of them
    batch = 4 if tier == "v5e-4" else 1
    assert final["sequences"] == 12 and final["packed_sequences"] <= 4
    assert final["steps"] == math.ceil(3 * final["packed_sequences"] / batch)
    steps = [json.loads(line) for line in (run_dir / "sft" / "metrics.jsonl").open()]
    assert len(steps) == final["steps"] and all(np.isfinite(s["loss"]) for s in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]
