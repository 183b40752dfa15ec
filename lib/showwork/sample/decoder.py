"""Gemma 3's forward pass for sampling: the same maths as tunix's modules,
with the weights and the KV cache laid out for the decode loop.

Why not the tunix modules (which training uses): profiling the decode loop
on XLA:CPU (bench/profile_step.py --stage decode) found three costs that
come from layout, not from the maths, each paid on every decoded token:

* tunix's einsums take `q_einsum` as [heads, D, head_dim] and `kv_einsum`
  as [2, kv_heads, D, head_dim]; the matmul wants [D, heads*head_dim], so
  XLA re-laid out every attention weight inside the loop, every step.
  Here the weights are reshaped once, before the loop,
  into plain [in, out] matrices (and the MLP's gate and up into one).
* Gemma 3 270M/1B have one KV head for four query heads; tunix's einsum
  broadcasts it across the heads and its [batch, slot, 1, head_dim] cache
  made XLA copy every layer's cache several times a step (the cache write
  is fused twice, once for the attention matmul and once for the loop's
  state). Here the cache is [batch*kv_heads, head_dim, slots] for keys and
  [batch*kv_heads, slots, head_dim] for values, the query heads of one KV
  head become the rows of one matmul, and the write stays in place.
* The key cache is stored transposed so q·k is a plain [rows, head_dim] x
  [head_dim, slots] product, which XLA:CPU runs much faster than a
  contraction over the last axes of both.

What each change bought, and the decode step through the tunix modules and
here, are measured in docs/BENCHMARKS.md (sampler section).

Only plain Gemma 3 weights take this path (`weights` returns None for
LoRA-wrapped or quantized models and for other families, which sample
through the modules: GRPO folds its adapters first, so its rollouts do
take it). tests/sample/test_decoder.py checks it against the modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

# tunix's masked-logit value (gemma3 model.K_MASK), so masked slots match.
MASKED = -2.3819763e38


@dataclass(frozen=True)
class Layer:
    """What a layer needs besides its weights (static under jit)."""

    rope_base: int
    rope_scale: float
    window: int | None  # sliding-window size for local layers, None for global ones
    query_scale: float


def _plain(model) -> bool:
    from tunix.models.gemma3 import model as gemma3

    if not isinstance(model, gemma3.Gemma3) or model.vision_encoder is not None:
        return False
    # qwix LoRA / QLoRA leave adapter or quantized leaves that the module's
    # call intercepts; those models go through the modules.
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Intermediate):  # activations sown by an earlier call
            continue
        if isinstance(node, nnx.Variable) and (type(node) is not nnx.Param
                                               or not isinstance(node.get_value(), jax.Array)):
            return False
    return True


def _layer_weights(layer, dim: int) -> dict:
    attn = layer.attn
    if attn.use_qkv_einsum:  # [3, heads, D, head_dim]
        w = attn.qkv_einsum.w[...]
        q, kv = w[0], w[1:]
    else:
        q, kv = attn.q_einsum.w[...], attn.kv_einsum.w[...]  # [N, D, H], [2, K, D, H]
    mlp = layer.mlp
    return {
        "q": jnp.transpose(q, (1, 0, 2)).reshape(dim, -1),  # [D, N*H]
        "kv": jnp.transpose(kv, (2, 0, 1, 3)).reshape(dim, -1),  # [D, 2*K*H]: keys then values
        "out": attn.attn_vec_einsum.w[...].reshape(-1, dim),  # [N*H, D]
        "gate_up": jnp.concatenate([mlp.gate_proj.kernel[...], mlp.up_proj.kernel[...]], axis=1),  # [D, 2F]
        "down": mlp.down_proj.kernel[...],  # [F, D]
        "query_norm": attn._query_norm.scale[...], "key_norm": attn._key_norm.scale[...],
        "pre_attention_norm": layer.pre_attention_norm.scale[...],
        "post_attention_norm": layer.post_attention_norm.scale[...],
        "pre_ffw_norm": layer.pre_ffw_norm.scale[...], "post_ffw_norm": layer.post_ffw_norm.scale[...],
    }


def weights(model) -> dict | None:
    """The decode layout of a plain Gemma 3 model's weights, or None (sample through the modules).

    Costs one copy of the layer weights (not of the embedding); called
    inside the sampler's jit, so the copy is made once per call, outside
    the decode loop.
    """
    if not _plain(model):
        return None
    dim = model.config.embed_dim
    return {"embedding": model.embedder.input_embedding[...], "final_norm": model.final_norm.scale[...],
            "layers": [_layer_weights(layer, dim) for layer in model.layers]}


def layer_specs(model) -> tuple[Layer, ...]:
    from tunix.models.gemma3 import model as gemma3

    return tuple(
        Layer(rope_base=l.attn.rope_base_frequency, rope_scale=l.attn.rope_scale_factor,
              window=l.attn.sliding_window_size if l.attn.attn_type == gemma3.AttentionType.LOCAL_SLIDING else None,
              query_scale=l.attn.query_pre_attn_scalar)
        for l in model.layers)


def empty_cache(num_layers: int, rows: int, kv_heads: int, head_dim: int, slots: int, dtype) -> list[dict]:
    return [{"k": jnp.zeros((rows * kv_heads, head_dim, slots), dtype),
             "v": jnp.zeros((rows * kv_heads, slots, head_dim), dtype)} for _ in range(num_layers)]


def repeat_cache(cache: list[dict], group: int, kv_heads: int) -> list[dict]:
    """Each row's cache `group` times (rows are blocks of kv_heads)."""
    def rep(x):
        blocks = x.reshape(-1, kv_heads, *x.shape[1:])
        return jnp.repeat(blocks, group, axis=0).reshape(-1, *x.shape[1:])
    return jax.tree.map(rep, cache)


def _rms_norm(x, scale):
    # tunix gemma3 RMSNorm, op for op.
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(var + 1e-06) * (1 + scale)


def _attention(w: dict, spec: Layer, x, positions, cache: dict, start, valid, kv_heads: int, head_dim: int):
    """One attention block for tokens at slots start..start+T-1; returns (output [B, T, D], cache)."""
    from tunix.models.gemma3.model import apply_rope

    b, t, _ = x.shape
    q = (x @ w["q"]).reshape(b, t, -1, head_dim)  # [B, T, N, H]
    kv = (x @ w["kv"]).reshape(b, t, 2, kv_heads, head_dim)
    k, v = kv[:, :, 0], kv[:, :, 1]  # [B, T, K, H]
    q = apply_rope(_rms_norm(q, w["query_norm"]), positions, head_dim=head_dim, base_frequency=spec.rope_base,
                   scale_factor=spec.rope_scale) * spec.query_scale
    k = apply_rope(_rms_norm(k, w["key_norm"]), positions, head_dim=head_dim, base_frequency=spec.rope_base,
                   scale_factor=spec.rope_scale)
    cache = {
        "k": jax.lax.dynamic_update_slice(cache["k"], jnp.transpose(k, (0, 2, 3, 1)).reshape(b * kv_heads, head_dim, t),
                                          (0, 0, start)),
        "v": jax.lax.dynamic_update_slice(cache["v"], jnp.transpose(v, (0, 2, 1, 3)).reshape(b * kv_heads, t, head_dim),
                                          (0, start, 0)),
    }
    group = q.shape[2] // kv_heads  # query heads per KV head (tunix: head n = kv head n // group)
    rows = jnp.transpose(q.reshape(b, t, kv_heads, group, head_dim), (0, 2, 3, 1, 4)).reshape(b * kv_heads, group * t, head_dim)
    slots = valid.shape[1]
    logits = jnp.einsum("bqh,bhs->bqs", rows, cache["k"]).reshape(b, kv_heads, group, t, slots)
    # A query at slot p sees the valid slots s <= p, and on local layers only
    # the last `window` of them (tunix's decode and prefill masks, both).
    query_slot = start + jnp.arange(t)[:, None]
    slot = jnp.arange(slots)[None, :]
    seen = (slot <= query_slot) & valid[:, None, :]  # [B, T, S]
    if spec.window is not None:
        seen = seen & (query_slot - slot < spec.window)
    logits = jnp.where(seen[:, None, None], logits, MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(cache["v"].dtype)
    out = jnp.einsum("bqs,bsh->bqh", probs.reshape(b * kv_heads, group * t, slots), cache["v"])
    out = jnp.transpose(out.reshape(b, kv_heads, group, t, head_dim), (0, 3, 1, 2, 4)).reshape(b, t, -1)
    return out @ w["out"], cache


def forward(w: dict, specs: tuple[Layer, ...], tokens, positions, cache: list[dict], start, valid, *,
            kv_heads: int, head_dim: int):
    """Final-norm hidden states [B, T, D] of tokens [B, T] written at cache slots start..start+T-1.

    `valid` [B, S]: which slots hold real tokens (left padding is not),
    including the ones being written.
    """
    emb = w["embedding"]
    x = emb[tokens] * jnp.sqrt(emb.shape[-1]).astype(emb.dtype)
    new_cache = []
    for lw, spec, layer_cache in zip(w["layers"], specs, cache):
        h = _rms_norm(x, lw["pre_attention_norm"])
        h, layer_cache = _attention(lw, spec, h, positions, layer_cache, start, valid, kv_heads, head_dim)
        x = x + _rms_norm(h, lw["post_attention_norm"])
        gate, up = jnp.split(_rms_norm(x, lw["pre_ffw_norm"]) @ lw["gate_up"], 2, axis=-1)
        x = x + _rms_norm((nnx.gelu(gate) * up) @ lw["down"], lw["post_ffw_norm"])
        new_cache.append(layer_cache)
    return _rms_norm(x, w["final_norm"]), new_cache
