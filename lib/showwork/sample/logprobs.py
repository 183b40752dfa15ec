"""Per-token log-probs through the output projection, without the [N, V] logits in memory.

Gemma's vocabulary is 262k tokens: the logits of one SFT batch (4 × 384
completion positions) are 1.6 GB in float32, and autodiff keeps several
arrays of that size alive (logits, softmax, their cotangents): before this
module, LoRA SFT of Gemma 3 270M peaked at several times TRL's memory
(docs/BENCHMARKS.md).

So the rows go through the projection in chunks, one chunk's logits alive
at a time, and the gradient is arranged so that no FLOP is added:

* A token's log-prob depends on its own hidden row alone, so while a chunk's
  logits exist we also take d logp_t / d h_t (one D-vector per token, the
  same matmul a normal backward pass does) and keep it. The backward pass is
  then `g_t * J_t`: no logits recomputed.
* The projection matrix gets its gradient by recomputing each chunk (the
  "cut cross-entropy" idea, Wijmans et al. 2024). Our LoRA runs freeze the
  embedding and never ask for it: XLA drops that unused loop, and the cost
  is zero. Full fine-tuning pays one extra projection matmul per chunk.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from showwork.model import families
from showwork.model.tokenizer import PAD_ID
from showwork.sample.forward import final_hidden


def logits(hidden, embedding, softcap: float | None, parts: int = 1):
    """Hidden states [..., D] -> float32 logits [..., V] through the tied embedding [V, D].

    `parts` > 1 runs the projection as that many vocabulary slices in one
    batched matmul, slice-major, then moves the slice axis back: the same
    logits, bit for bit, but XLA:CPU picks a much faster kernel for a few
    rows (measured in docs/BENCHMARKS.md). Writing the slice axis next to
    the vocabulary, the natural einsum, is slower still: the output is
    written with a stride.
    """
    vocab, dim = embedding.shape
    if parts > 1 and vocab % parts == 0:
        sliced = logit_slices(hidden.reshape(-1, dim), embedding, softcap, parts)
        return jnp.moveaxis(sliced, 0, 1).reshape(*hidden.shape[:-1], vocab)
    out = jnp.dot(hidden, embedding.T)
    if softcap:  # Gemma 2's final soft-cap; Gemma 3 has none
        out = jnp.tanh(out / softcap) * softcap
    return out.astype(jnp.float32)


def logit_slices(rows, embedding, softcap: float | None, parts: int):
    """Rows [R, D] -> float32 logits as `parts` vocabulary slices [parts, R, V / parts].

    `logits(..., parts)` without its last transpose: a consumer that can
    work slice by slice (the sampler's greedy pick) skips writing the
    [R, V] array a second time. `parts` must divide V (1 always does).
    """
    vocab, dim = embedding.shape
    if vocab % parts:
        raise ValueError(f"{parts} slices do not divide a vocabulary of {vocab}")
    out = jnp.einsum("bd,cvd->cbv", rows, embedding.reshape(parts, vocab // parts, dim))
    if softcap:
        out = jnp.tanh(out / softcap) * softcap
    return out.astype(jnp.float32)


def _rows_logps(hidden, embedding, targets, softcap, temperature):
    z = logits(hidden, embedding, softcap) / temperature
    picked = jnp.take_along_axis(z, targets[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(z, axis=-1)


def _chunked(hidden, targets, chunk: int):
    """[N, ...] -> [K, ceil(N/K), ...]: K = ceil(N/chunk) equal chunks of at most `chunk` rows.

    Equal chunks rather than full ones plus a remainder: the padding rows
    still go through the projection, and 1,664 rows in chunks of 256 would
    pad 128 of them (7 × 256), where 7 × 238 pads 2.
    """
    n = hidden.shape[0]
    count = -(-n // chunk)
    size = -(-n // count)
    pad = count * size - n
    hidden = jnp.pad(hidden, ((0, pad), (0, 0)))
    targets = jnp.pad(targets, (0, pad))
    return hidden.reshape(count, size, hidden.shape[-1]), targets.reshape(count, size)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def token_logps(hidden, embedding, targets, softcap: float | None, temperature: float, chunk: int):
    """log softmax(project(hidden) / temperature)[target] for every row: [N, D], [V, D], [N] -> [N]."""
    n = hidden.shape[0]
    hs, ts = _chunked(hidden, targets, chunk)
    out = jax.lax.map(lambda xs: _rows_logps(xs[0], embedding, xs[1], softcap, temperature), (hs, ts))
    return out.reshape(-1)[:n]


def _forward(hidden, embedding, targets, softcap, temperature, chunk):
    n = hidden.shape[0]
    hs, ts = _chunked(hidden, targets, chunk)

    def one(xs):
        h, t = xs
        logp, back = jax.vjp(lambda h_: _rows_logps(h_, embedding, t, softcap, temperature), h)
        (jac,) = back(jnp.ones_like(logp))  # row t: d logp_t / d h_t, since rows are independent
        return logp, jac

    logp, jac = jax.lax.map(one, (hs, ts))
    return logp.reshape(-1)[:n], (hidden, embedding, targets, jac.reshape(-1, hidden.shape[-1])[:n])


def _backward(softcap, temperature, chunk, residuals, g):
    hidden, embedding, targets, jac = residuals
    d_hidden = (g[:, None] * jac).astype(hidden.dtype)
    hs, ts = _chunked(hidden, targets, chunk)
    gs, _ = _chunked(g[:, None], targets, chunk)

    def add(acc, xs):
        h, t, gc = xs
        _, back = jax.vjp(lambda e: _rows_logps(h, e, t, softcap, temperature), embedding)
        return acc + back(gc[:, 0])[0].astype(jnp.float32), None

    # Unused (and removed by XLA) when the embedding is frozen. Summed in
    # float32 so bfloat16 weights do not lose the small chunks' terms.
    d_embedding, _ = jax.lax.scan(add, jnp.zeros(embedding.shape, jnp.float32), (hs, ts, gs))
    return d_hidden, d_embedding.astype(embedding.dtype), None


token_logps.defvjp(_forward, _backward)


# Rows of the output projection alive at once in completion_logps: 256 rows
# of Gemma's 262k-token vocabulary are 268 MB of float32 logits, large enough
# that each chunk's matmul still runs at full speed.
LOGPS_CHUNK = 256


def completion_logps(graphdef, states: tuple, prompt, completion, completion_mask, temperature: float = 1.0,
                     chunk: int = LOGPS_CHUNK):
    """Per-token log-probs [B, C] of `completion` given left-padded `prompt`.

    Logits are computed only for the C positions that predict completion
    tokens (the output projection is most of the model's FLOPs), `chunk`
    rows at a time (see above: the full [B, C, V] logits never exist).
    """
    tokens = jnp.concatenate([prompt, completion], axis=1)
    valid = jnp.concatenate([prompt != PAD_ID, completion_mask > 0], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    n = tokens.shape[1]
    causal = jnp.tril(jnp.ones((n, n), jnp.bool_))[None]
    attn = causal & valid[:, None, :]
    plen, clen = prompt.shape[1], completion.shape[1]
    hidden, _ = final_hidden(graphdef, _merged(states), tokens, positions, None, attn)
    return _project(graphdef, states, hidden[:, plen - 1:plen + clen - 1], completion, temperature, chunk)


def packed_logps(graphdef, states: tuple, tokens, positions, segments, predict_at, targets,
                 chunk: int = LOGPS_CHUNK):
    """Per-token log-probs [B, K] of `targets` in packed rows (showwork.train.packing.Batch).

    Each token attends causally within its own segment only, at positions restarting per
    example, so an example's log-probs are those it has alone. Logits are computed only at
    `predict_at`, the rows that predict a target, as completion_logps does.
    """
    n = tokens.shape[1]
    causal = jnp.tril(jnp.ones((n, n), jnp.bool_))[None]
    attn = causal & (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
    hidden, _ = final_hidden(graphdef, _merged(states), tokens, positions, None, attn)
    rows = jnp.take_along_axis(hidden, predict_at[..., None], axis=1)
    return _project(graphdef, states, rows, targets, 1.0, chunk)


def _project(graphdef, states: tuple, rows, targets, temperature: float, chunk: int):
    """Hidden rows [B, K, D] -> log-probs [B, K] of `targets` through the tied output projection."""
    model = nnx.merge(graphdef, *states)
    b, k, d = rows.shape
    logps = token_logps(rows.reshape(b * k, d), model.embedder.input_embedding.value, targets.reshape(-1),
                        families.final_softcap(model.config), temperature, chunk)
    return logps.reshape(b, k)


def _merged(states: tuple):
    return nnx.merge_state(*states) if len(states) > 1 else states[0]
