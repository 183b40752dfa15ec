"""decoder.py: the sampler's Gemma 3 forward pass against tunix's modules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showwork.config import LoraConfig
from showwork.model import loader, lora, tiny as tiny_model
from showwork.sample import decoder, sampler


def _variant(tiny, seed=3, **changes):
    return tiny_model.random_gemma3(dataclasses.replace(tiny.config, **changes), seed)


def _left_padded(rows: list[list[int]], width: int):
    ids = np.zeros((len(rows), width), np.int32)
    ok = np.zeros((len(rows), width), bool)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = row
        ok[r, width - len(row):] = True
    return jnp.asarray(ids), jnp.asarray(ok)


def _hidden_states(run, cache, ids, ok, steps: int, size: int):
    """Prefill, then `steps` decode steps of fixed tokens; the last hidden row of each call."""
    plen = ids.shape[1]
    valid = jnp.zeros((ids.shape[0], size), bool).at[:, :plen].set(ok)
    positions = jnp.maximum(jnp.cumsum(ok, axis=-1) - 1, 0).astype(jnp.int32)
    lengths = ok.sum(axis=-1)
    hidden, cache = run(ids, positions, cache, 0, valid)
    out = [hidden[:, -1]]
    for step in range(steps):
        valid = valid.at[:, plen + step].set(True)
        token = jnp.full((ids.shape[0], 1), 7 + step, jnp.int32)
        hidden, cache = run(token, (lengths + step)[:, None], cache, plen + step, valid)
        out.append(hidden[:, -1])
    return np.stack([np.asarray(h) for h in out])


@pytest.mark.parametrize("changes", [
    {},  # tiny: 2 query heads sharing 1 KV head, window 64
    {"sliding_window_size": 5},  # local layers' window cut inside the prompt and the decode
    {"num_heads": 4, "num_kv_heads": 2},  # grouped query attention
    {"num_kv_heads": 2},  # one KV head per query head: tunix's fused qkv_einsum
])
def test_forward_matches_the_modules(tiny, changes):
    model = _variant(tiny, **changes) if changes else tiny.model
    rows = [[2, 40, 41, 42, 43, 44, 45, 46, 47], [2, 50, 51], [2, 60, 61, 62, 63, 64, 65]]
    ids, ok = _left_padded(rows, 12)
    size = 12 + 9
    weights = decoder.weights(model)
    assert weights is not None
    want = _hidden_states(*sampler._module_path(model, 3, size)[:2], ids, ok, 9, size)
    got = _hidden_states(*sampler._decoder_path(model, weights, 3, size)[:2], ids, ok, 9, size)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() < 1e-5 * scale


def test_repeated_cache_gives_each_row_its_prompt(tiny):
    model = _variant(tiny, num_heads=4, num_kv_heads=2)
    ids, ok = _left_padded([[2, 40, 41, 42], [2, 50]], 4)
    size = 8
    run, cache, repeat = sampler._decoder_path(model, decoder.weights(model), 2, size)
    valid = jnp.zeros((2, size), bool).at[:, :4].set(ok)
    positions = jnp.maximum(jnp.cumsum(ok, axis=-1) - 1, 0).astype(jnp.int32)
    _, cache = run(ids, positions, cache, 0, valid)
    shared = repeat(cache, 3)
    run6, alone, _ = sampler._decoder_path(model, decoder.weights(model), 6, size)
    _, alone = run6(jnp.repeat(ids, 3, axis=0), jnp.repeat(positions, 3, axis=0), alone, 0, jnp.repeat(valid, 3, axis=0))
    for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(alone)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_adapted_and_quantized_models_sample_through_the_modules(tiny):
    base = tiny_model.load(seed=4).model
    assert decoder.weights(base) is not None
    for quantize in (None, "int8"):
        adapted = lora.add(tiny_model.load(seed=4).model, LoraConfig(4, 8.0, lora.DEFAULT_TARGETS, quantize))
        assert decoder.weights(adapted) is None


def test_folded_adapters_sample_what_the_adapted_model_samples(tiny):
    """GRPO's rollouts: the adapted model samples through tunix's modules,
    its folded base through the decoder; greedy and sampled tokens agree."""
    from flax import nnx

    base = tiny_model.load(seed=4).model
    adapted = lora.add(base, LoraConfig(4, 8.0, lora.DEFAULT_TARGETS))
    leaves, tree = jax.tree.flatten(nnx.state(adapted, nnx.LoRAParam))
    nnx.update(adapted, jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(jax.random.key(i), x.shape)
                                                  for i, x in enumerate(leaves)]))
    prompts = ["Tom has 3 apples.", "Natalia sold 48 clips", "x", "What is 2+2?"]
    for settings in (sampler.SampleSettings(max_new_tokens=12),
                     sampler.SampleSettings(max_new_tokens=12, temperature=1.0, top_k=20)):
        through_modules = sampler.generate(dataclasses.replace(tiny, model=adapted), prompts, settings, batch_size=4)
        folded = lora.fold_into(base, adapted)
        through_decoder = sampler.generate(dataclasses.replace(tiny, model=folded), prompts, settings, batch_size=4)
        assert through_decoder.tokens == through_modules.tokens


@pytest.mark.slow
def test_real_model_decoder_matches_the_modules(gemma270m):
    """Gemma 3 270M: prompt and decode hidden states through both paths
    (the golden greedy tokens are test_sampling's tunix-sampler test)."""
    tok = gemma270m.tokenizer
    rows = [tok.encode(t, bos=True) for t in ("The capital of France is",
                                              "Natalia sold clips to 48 of her friends in April, and then")]
    ids, ok = _left_padded(rows, 32)
    size = 32 + 6
    model = gemma270m.model
    want = _hidden_states(*sampler._module_path(model, 2, size)[:2], ids, ok, 6, size)
    got = _hidden_states(*sampler._decoder_path(model, decoder.weights(model), 2, size)[:2], ids, ok, 6, size)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_bfloat16_weights_decode_in_bfloat16_close_to_the_modules():
    """A bfloat16 tier samples with bfloat16 weights and cache; the two paths
    round differently (the decoder's fused gate/up matmul) but stay close."""
    loaded = tiny_model.load(dtype="bfloat16", seed=5)
    model = loaded.model
    ids, ok = _left_padded([[2, 40, 41, 42, 43, 44, 45], [2, 50, 51]], 8)
    size = 8 + 5
    weights = decoder.weights(model)
    run, cache, _ = sampler._decoder_path(model, weights, 2, size)
    assert {x.dtype for x in jax.tree.leaves(cache)} == {jnp.dtype(jnp.bfloat16)}
    got = _hidden_states(run, cache, ids, ok, 5, size).astype(np.float32)
    want = _hidden_states(*sampler._module_path(model, 2, size)[:2], ids, ok, 5, size).astype(np.float32)
    assert np.abs(got - want).max() < 3e-2 * np.abs(want).max()
    out = sampler.generate(loaded, ["Tom has 3 apples.", "x"], sampler.SampleSettings(max_new_tokens=6), batch_size=2)
    assert all(len(t) <= 6 for t in out.tokens) and any(out.tokens)


@pytest.mark.slow
def test_real_model_in_bfloat16_starts_like_float32(gemma270m):
    """A bfloat16 tier's sampler on Gemma 3 270M: greedy text starts as the
    float32 model's does (measured: the first 11, 9 and 32 of 32 tokens
    agree; bfloat16 rounding then picks a different near-tie)."""
    prompts = ["The capital of France is", "Natalia sold clips to 48 of her friends in April, and then she sold",
               "<start_of_turn>user\nWhat is 12 times 7? Think step by step.<end_of_turn>\n<start_of_turn>model\n"]
    settings = sampler.SampleSettings(max_new_tokens=16)
    full = sampler.generate(gemma270m, prompts, settings, batch_size=4).tokens
    half = sampler.generate(loader.load("gemma3-270m", dtype="bfloat16"), prompts, settings, batch_size=4).tokens
    for a, b in zip(full, half):
        assert a[:6] == b[:6]
