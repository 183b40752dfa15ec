"""FLOP counts (showwork.model.flops): the real models' sizes, the causal and windowed key counts, and
agreement with XLA's own count of the compiled scoring and gradient programs on both families."""

import jax
import jax.numpy as jnp
import pytest

import standins
from showwork.config import LoraConfig
from showwork.model import flops, lora
from showwork.sample import logprobs
from showwork.train import sft, step as step_lib


def _real(name):
    from tunix.models.gemma import model as gemma
    from tunix.models.gemma3 import model as gemma3

    return {"gemma3-270m": gemma3.ModelConfig.gemma3_270m, "gemma3-1b": gemma3.ModelConfig.gemma3_1b_it,
            "gemma2-2b": gemma.ModelConfig.gemma2_2b}[name]()


# Sizes as published (Gemma 3 report, Table 1: 1B = 302M embedding + 698M non-embedding; 270M: 170M +
# 100M; Gemma 2 2B: 2.61B of which 590M embedding), which the count must reproduce from the configs.
@pytest.mark.parametrize("name,total,embedding", [
    ("gemma3-270m", 268e6, 168e6), ("gemma3-1b", 1.000e9, 302e6), ("gemma2-2b", 2.614e9, 590e6)])
def test_parameter_counts_of_the_real_configs_match_the_published_sizes(name, total, embedding):
    got_total, got_embedding = flops.params(flops.shape(_real(name)))
    assert got_total == pytest.approx(total, rel=0.01) and got_embedding == pytest.approx(embedding, rel=0.01)


def test_layer_kinds_follow_each_family():
    g3, g2 = flops.shape(_real("gemma3-1b")), flops.shape(_real("gemma2-2b"))
    assert g3.windows[:6] == (512,) * 5 + (None,) and g3.windows.count(None) == 4  # 26 layers, 5:1
    assert g2.windows[:4] == (4096, None, 4096, None) and len(g2.windows) == 26


@pytest.mark.parametrize("length,window,start,expected", [
    (4, None, 0, 2.5),           # causal: 1, 2, 3, 4 keys
    (4, 2, 0, 1.75),             # window 2: 1, 2, 2, 2
    (6, None, 4, 5.5),           # decode positions 5 and 6 after a 4-token prompt
    (6, 3, 4, 3.0),              # ... within a window of 3
    (4, 8, 0, 2.5),              # a window longer than the sequence changes nothing
    (4, None, 4, 0.0),           # no positions
])
def test_mean_keys_counts_causal_windowed_keys(length, window, start, expected):
    assert flops.mean_keys(length, window, start) == expected


def test_generation_costs_one_prefill_per_group_and_every_position_once():
    s = flops.shape(_real("gemma3-1b"))
    prompt, new = 300, 700  # past the 512 window, so local layers see fewer keys than global ones
    one = flops.generation(s, prompts=1, group=1, prompt=prompt, new=new)
    # Every position's layers run once: the prompt's in the prefill, each new token's in its decode step.
    positions = (prompt + new) * flops.tokens_forward(s, prompt + new)
    assert one == pytest.approx(positions + (new + 1) * flops.projection(s), rel=1e-12)
    four = flops.generation(s, prompts=1, group=4, prompt=prompt, new=new)
    prefill = prompt * flops.tokens_forward(s, prompt) + flops.projection(s)
    assert four - prefill == pytest.approx(4 * (one - prefill), rel=1e-12)


@pytest.mark.parametrize("family", ["gemma3", "gemma2"])
def test_counts_agree_with_xla_on_the_compiled_scoring_and_gradient_programs(family):
    """XLA's cost analysis of the programs SFT runs (forward: logits at the completion only; gradient with
    every weight trained: 3x; with LoRA: 2x) is within a few percent of the count, which leaves out only
    elementwise work; the stand-ins have one local layer whose window (8) is shorter than the sequence."""
    loaded = (standins.gemma3_1b_shaped if family == "gemma3" else standins.gemma2_2b_shaped)(layers=2)
    s = flops.shape(loaded.config)
    rows, prompt_len, completion_len = 2, 8, 8
    prompt = jnp.ones((rows, prompt_len), jnp.int32)
    completion = jnp.ones((rows, completion_len), jnp.int32)
    mask = jnp.ones((rows, completion_len), jnp.float32)
    ours = flops.scoring(s, rows, prompt_len, completion_len)
    for full, model in ((True, loaded.model), (False, lora.add(loaded.model, LoraConfig(4, 8.0)))):
        graphdef, trainable, frozen = step_lib.split(model)
        forward = jax.jit(lambda t, f: logprobs.completion_logps(graphdef, (t, f), prompt, completion, mask))
        grad_fn, _, _ = sft.make_step_fns(graphdef, None)
        xla_forward = _flops(forward.lower(trainable, frozen))
        xla_grad = _flops(grad_fn.lower(trainable, frozen, prompt, completion, mask))
        assert xla_forward == pytest.approx(ours, rel=0.05)
        assert xla_grad == pytest.approx(flops.training(ours, full), rel=0.06)


def _flops(lowered) -> float:
    cost = lowered.compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_decoding_reads_the_weights_once_a_step_and_each_rows_cache():
    s = flops.shape(_real("gemma2-2b"))
    weights = flops.params(s)[0] * 2
    # One row, one new token after a 99-token prompt: every weight, and 100 keys' K and V in 26 layers.
    one = flops.generation_bytes(s, prompts=1, group=1, prompt=99, new=1)
    assert one == weights + 26 * 100 * 2 * s.kv_heads * s.head_dim * 2
    # Sixteen rows share the weights' read but each reads its own cache.
    sixteen = flops.generation_bytes(s, prompts=4, group=4, prompt=99, new=1)
    assert sixteen - weights == 16 * (one - weights)
