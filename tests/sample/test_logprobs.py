"""logprobs.token_logps: chunked log-probs equal the plain log_softmax, values and gradients."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from showwork.config import LoraConfig
from showwork.model import loader, lora
from showwork.sample import forward, logprobs
from showwork.train import step as step_lib


def plain(hidden, embedding, targets, softcap, temperature):
    z = logprobs.logits(hidden, embedding, softcap) / temperature
    return jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), targets[:, None], axis=-1)[:, 0]


def case(n, v=1000, d=16, seed=0, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    hidden = (jax.random.normal(k1, (n, d)) * 2).astype(dtype)
    embedding = (jax.random.normal(k2, (v, d)) * 0.5).astype(dtype)
    targets = jax.random.randint(k3, (n,), 0, v)
    return hidden, embedding, targets


@pytest.mark.parametrize("n,chunk", [(1, 256), (7, 3), (12, 4), (300, 256), (256, 256)])
@pytest.mark.parametrize("softcap,temperature", [(None, 1.0), (30.0, 1.0), (None, 0.7), (5.0, 1.3)])
def test_values_and_gradients_match_plain_log_softmax(n, chunk, softcap, temperature):
    hidden, embedding, targets = case(n)
    g = jax.random.normal(jax.random.PRNGKey(9), (n,))
    ours = logprobs.token_logps(hidden, embedding, targets, softcap, temperature, chunk)
    np.testing.assert_allclose(ours, plain(hidden, embedding, targets, softcap, temperature), rtol=1e-5, atol=1e-5)

    def weighted(fn):
        return lambda h, e: (fn(h, e) * g).sum()

    ours_grads = jax.grad(weighted(lambda h, e: logprobs.token_logps(h, e, targets, softcap, temperature, chunk)),
                          argnums=(0, 1))(hidden, embedding)
    plain_grads = jax.grad(weighted(lambda h, e: plain(h, e, targets, softcap, temperature)),
                           argnums=(0, 1))(hidden, embedding)
    for a, b in zip(ours_grads, plain_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bfloat16_weights_keep_their_dtype_and_stay_close():
    hidden, embedding, targets = case(40, dtype=jnp.bfloat16)
    grads = jax.grad(lambda h, e: logprobs.token_logps(h, e, targets, None, 1.0, 16).sum(), argnums=(0, 1))(
        hidden, embedding)
    assert [x.dtype for x in grads] == [jnp.bfloat16, jnp.bfloat16]
    reference = jax.grad(lambda h, e: plain(h, e, targets, None, 1.0).sum(), argnums=(0, 1))(
        hidden.astype(jnp.float32), embedding.astype(jnp.float32))
    for a, b in zip(grads, reference):
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0.05, atol=0.05)


def test_frozen_embedding_adds_no_projection_work():
    """With only the hidden rows differentiated, the compiled step does what a plain backward does."""
    hidden, embedding, targets = case(512, v=4096, d=64)

    def flops(fn):
        step = jax.jit(jax.grad(lambda h: fn(h).sum()))
        return step.lower(hidden).compile().cost_analysis()["flops"]

    ours = flops(lambda h: logprobs.token_logps(h, embedding, targets, None, 1.0, 128))
    reference = flops(lambda h: plain(h, embedding, targets, None, 1.0))
    matmul = 2 * 512 * 4096 * 64
    assert ours < reference + 0.1 * matmul, (ours, reference)


def test_completion_logps_of_the_tiny_model_match_its_full_logits():
    loaded = loader.load("tiny", seed=0)
    graphdef, trainable, frozen = step_lib.split(loaded.model)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, 200, size=k)) for k in (5, 9, 3)]
    completions = [list(rng.integers(3, 200, size=k)) for k in (4, 11, 1)]
    prompt, completion, mask = forward.pack(prompts, completions)
    ours = logprobs.completion_logps(graphdef, (trainable, frozen), jnp.asarray(prompt), jnp.asarray(completion),
                                     jnp.asarray(mask), 1.0, chunk=5)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        tokens = jnp.asarray([p + c])
        full = loaded.model(tokens, jnp.arange(len(p + c))[None], None,
                            jnp.tril(jnp.ones((1, len(p + c), len(p + c)), jnp.bool_)))[0]
        logps = jax.nn.log_softmax(full[0, len(p) - 1:-1].astype(jnp.float32), axis=-1)
        expected = logps[jnp.arange(len(c)), jnp.asarray(c)]
        np.testing.assert_allclose(ours[i, :len(c)], expected, rtol=1e-4, atol=1e-4)



def sft_grad(remat: bool, rank: int = 0):
    """Loss, gradients of what trains and the step's XLA temp bytes: full fine-tuning, or LoRA of `rank`."""
    loaded = loader.load("tiny", seed=0, remat=remat)
    model = lora.add(loaded.model, LoraConfig(rank, 2.0 * rank, lora.DEFAULT_TARGETS), seed=0) if rank else loaded.model
    graphdef, trainable, frozen = step_lib.split(model)
    prompt, completion, mask = forward.pack([[5, 6, 7, 8]] * 2, [list(range(10, 60)), list(range(20, 45))])

    def loss(t):
        return -(logprobs.completion_logps(graphdef, (t, frozen), prompt, completion, mask) * mask).sum()

    step = jax.jit(jax.value_and_grad(loss))
    temp = step.lower(trainable).compile().memory_analysis().temp_size_in_bytes
    remats = len(re.findall(r"= remat\w*\[", str(jax.make_jaxpr(loss)(trainable))))  # jax.checkpoint's primitive
    return step(trainable), temp, remats


@pytest.mark.parametrize("rank", [0, 4], ids=["full", "lora-4"])
def test_remat_gives_the_same_gradients_and_recomputes_every_block(rank):
    """Remat's program differs (a remat per attention and MLP block) and its gradients do not. How much
    memory it saves is XLA's to decide: on CPU little (bench/step_memory.py, docs/BENCHMARKS.md)."""
    (loss, grads), temp, plain = sft_grad(False, rank)
    (loss_r, grads_r), temp_r, remats = sft_grad(True, rank)
    assert plain == 0 and remats == 2 * loader.load("tiny").config.num_layers  # attention and MLP of each layer
    assert len(jax.tree.leaves(grads)) == len(jax.tree.leaves(grads_r)) > 0
    np.testing.assert_allclose(loss_r, loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
        # Recomputing reorders float32 sums: a near-zero entry can move by a few 1e-6 of the leaf's
        # largest (seen on an AVX2-only machine: 3.4e-6 beside entries of 19); a wrong gradient moves by O(1).
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(b).max())))
    assert temp_r <= temp, (temp_r, temp)


def test_lora_on_a_remat_model_trains_only_the_adapters_and_keeps_remat():
    loaded = loader.load("tiny", seed=0, remat=True)
    adapted = lora.add(loaded.model, LoraConfig(4, 8.0, lora.DEFAULT_TARGETS))
    _, trainable, _ = step_lib.split(adapted)
    assert all(isinstance(v, nnx.LoRAParam) for v in jax.tree.leaves(trainable, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    for model in (adapted, loaded.model):  # the base, folded for rollouts, keeps it too
        assert all(m.remat_config.name == "BLOCK" for _, m in nnx.iter_modules(model) if "remat_config" in vars(m))
        assert all(m.config.remat_config.name == "BLOCK" for _, m in nnx.iter_modules(model) if "config" in vars(m))


@pytest.mark.parametrize("n, chunk, shape", [
    (1664, 256, (7, 238)),  # 4 × 416 completion positions: 2 padding rows, not 128
    (256, 256, (1, 256)),
    (257, 256, (2, 129)),
    (1, 256, (1, 1)),
    (7, 3, (3, 3)),
])
def test_chunks_are_equal_and_at_most_chunk_rows(n, chunk, shape):
    hs, ts = logprobs._chunked(jnp.ones((n, 4)), jnp.zeros((n,), jnp.int32), chunk)
    assert hs.shape == (*shape, 4) and ts.shape == shape
    assert shape[1] <= chunk and shape[0] * shape[1] - n < shape[0]


@pytest.mark.parametrize("shape, vocab, parts, softcap", [
    ((8, 16), 64, 2, None),
    ((3, 1, 16), 64, 4, None),    # decode's [B, 1, D]
    ((5, 16), 64, 2, 30.0),       # Gemma 2's soft-cap after the slices
    ((4, 16), 63, 2, None),       # a vocabulary that does not split: one dot
])
def test_sliced_projection_gives_the_plain_logits(shape, vocab, parts, softcap):
    key = jax.random.key(0)
    hidden = jax.random.normal(key, shape)
    embedding = jax.random.normal(jax.random.fold_in(key, 1), (vocab, shape[-1]))
    plain = logprobs.logits(hidden, embedding, softcap)
    sliced = logprobs.logits(hidden, embedding, softcap, parts)
    assert sliced.shape == (*shape[:-1], vocab) and sliced.dtype == jnp.float32
    np.testing.assert_allclose(sliced, plain, rtol=1e-6, atol=1e-6)
