"""Real learning on the real Gemma 3 270M on CPU (slow): SFT lowers loss, GRPO raises reward."""

import random

import jax.numpy as jnp
import numpy as np
import pytest

from showwork import log
from showwork.bus import Bus
from showwork.config import DataConfig, GrpoConfig, LoraConfig, OptimizerConfig, PromptConfig, RolloutConfig, ScheduleConfig, SftConfig
from showwork.model import loader, lora
from showwork.sample import forward, logprobs, sampler
from showwork.task import data, rewards
from showwork.train import grpo, sft, step as step_lib

pytestmark = pytest.mark.learning  # its own CI step: make test-learning


def mean_loss(loaded, seqs):
    graphdef, trainable, frozen = step_lib.split(loaded.model)
    prompt, completion, mask = forward.pack(seqs.prompts, seqs.completions)
    logps = logprobs.completion_logps(graphdef, (trainable, frozen), jnp.asarray(prompt), jnp.asarray(completion),
                                      jnp.asarray(mask))
    return float(-(logps * mask).sum() / mask.sum())


@pytest.mark.slow
def test_sft_lowers_loss_on_a_fixed_set(tmp_path):
    train, _, _ = data.build_splits(DataConfig(source="reasoning-gym", task="gsm_symbolic", train_size=6, eval_size=0, seed=1))
    rows = [data.formatted(r, PromptConfig().system) for r in train]
    loaded = loader.load("gemma3-270m")
    loaded.model = lora.add(loaded.model, LoraConfig(8, 16.0, lora.DEFAULT_TARGETS))
    seqs = sft.tokenize(rows, loaded.tokenizer, 512)
    before = mean_loss(loaded, seqs)
    opt = OptimizerConfig(learning_rate=3e-4, weight_decay=0.0)
    settings = SftConfig(seed=0, epochs=3, max_seq_len=512, optimizer=opt, schedule=ScheduleConfig(warmup_steps=1),
                         checkpoint_every=100, keep_checkpoints=1)
    final = sft.train(Bus(str(tmp_path)), loaded, rows, settings, batch=2, stage="sft", digest="t", log=log.get("test"))
    after = mean_loss(loaded, seqs)
    assert final["steps"] == 9
    assert after < 0.8 * before, (before, after)


def arithmetic(rng, n):
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        rows.append({"prompt": f"Q: What is {a} plus {b}?\nA: {a} plus {b} is", "answer": str(a + b)})
    return rows


@pytest.mark.slow
def test_grpo_raises_reward_with_a_correctness_reward(tmp_path):
    rng = random.Random(0)
    rows, held_out = arithmetic(rng, 64), arithmetic(rng, 32)
    loaded = loader.load("gemma3-270m")
    loaded.model = lora.add(loaded.model, LoraConfig(16, 32.0, lora.DEFAULT_TARGETS))
    settings = sampler.SampleSettings(max_new_tokens=6, temperature=1.0, top_k=50)

    def accuracy():
        out = sampler.generate(loaded, [r["prompt"] for r in held_out], settings, seed=123, batch_size=32, prompt_len=32)
        return float(np.mean(rewards.correct(None, out.texts, [r["answer"] for r in held_out])))

    before = accuracy()
    cfg = GrpoConfig(num_generations=8, beta=0.0, prompts_per_session=64, steps_per_session=8,
                     optimizer=OptimizerConfig(learning_rate=5e-5, weight_decay=0.0, max_grad_norm=1.0),
                     schedule=ScheduleConfig(end_value_ratio=1.0),
                     rollout=RolloutConfig(max_prompt_length=32, max_tokens_to_generate=6, temperature=1.0, top_k=50),
                     rewards={"correct": 1.0}, checkpoint_every=1000)
    bus = Bus(str(tmp_path))
    grpo.train_session(bus, loaded, rows, session=0, grpo=cfg, batch=4, digest="t", log=log.get("test"))
    curve = [r["reward"] for r in bus.read_jsonl("grpo/s-0/metrics.jsonl")]
    after = accuracy()
    assert len(curve) == 8
    assert np.mean(curve[-3:]) > np.mean(curve[:2]) + 0.2, curve
    assert after > before + 0.15, (before, after)
