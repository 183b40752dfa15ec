"""Matrix-product FLOPs of a Gemma model's work, counted from its config: the numerator of MFU.

Counted (2 FLOPs per multiply-add): the attention projections and the MLP
for every token; the attention scores and the weighted sum of values over the
keys each token actually sees (causal, and at most the window on local
layers); the output projection where logits are computed. Not counted: norms,
RoPE, softmax and the embedding lookup (a gather), a few percent at these
sizes. These are *model* FLOPs: the masked half of a causal attention matrix,
which the implementation may compute anyway, and the forward pass that
activation recomputation repeats are work the hardware does but the model
does not need, so they lower MFU, as in PaLM's definition (Chowdhery et al.
2022, appendix B) and MaxText's reports.

Training multiplies the forward pass by 3 when every weight trains (forward,
gradient of the activations, gradient of the weights) and by 2 with LoRA: a
frozen matrix needs only the activations' gradient. LoRA's own products are
rank/width of the rest and not counted.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """What the count needs from a tunix Gemma config."""

    layers: int
    width: int  # embed_dim
    mlp: int  # hidden_dim
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    windows: tuple[int | None, ...]  # per layer: the sliding window, or None for a global layer


def shape(config) -> Shape:
    """The Shape of a tunix Gemma 3 (`gemma3.ModelConfig`) or Gemma 2 (`gemma.ModelConfig`) config."""
    from tunix.models.gemma3 import model as gemma3

    if hasattr(config, "attention_types"):  # Gemma 2 lists its layers' kinds
        kinds = config.attention_types
        local = lambda kind: kind.name == "LOCAL_SLIDING"  # noqa: E731
    else:  # Gemma 3 cycles a fixed pattern over its layers (tunix's Transformer)
        kinds = gemma3.GEMMA3_ATTENTION_PATTERN
        local = lambda kind: kind == gemma3.AttentionType.LOCAL_SLIDING  # noqa: E731
    windows = tuple(config.sliding_window_size if local(kind) else None
                    for _, kind in zip(range(config.num_layers), itertools.cycle(kinds)))
    return Shape(config.num_layers, config.embed_dim, config.hidden_dim, config.num_heads, config.num_kv_heads,
                 config.head_dim, config.num_embed, windows)


def params(s: Shape) -> tuple[int, int]:
    """(parameters, of which the embedding), norm scales left out (they are 0.01% of either)."""
    embedding = s.vocab * s.width
    return embedding + s.layers * _layer_weights(s), embedding


def _layer_weights(s: Shape) -> int:
    return s.width * (2 * s.heads + 2 * s.kv_heads) * s.head_dim + 3 * s.width * s.mlp


def mean_keys(length: int, window: int | None, start: int = 0) -> float:
    """Mean keys seen by the queries at positions start+1 .. length (1-based), causally, within `window`."""
    if length <= start:
        return 0.0
    w = window or length
    return sum(min(i, w) for i in range(start + 1, length + 1)) / (length - start)


def tokens_forward(s: Shape, length: int, start: int = 0) -> float:
    """FLOPs per token of one sequence's positions start+1 .. length, without the output projection."""
    attention = sum(4 * s.heads * s.head_dim * mean_keys(length, w, start) for w in s.windows)
    return 2 * s.layers * _layer_weights(s) + attention


def projection(s: Shape) -> int:
    """FLOPs of one position's logits (the tied embedding as the output matrix)."""
    return 2 * s.width * s.vocab


def scoring(s: Shape, rows: int, prompt: int, completion: int) -> float:
    """A forward pass over `rows` sequences of prompt + completion tokens, logits at the completion only
    (what SFT's and GRPO's losses compute: sample.logprobs)."""
    return rows * ((prompt + completion) * tokens_forward(s, prompt + completion) + completion * projection(s))


def training(forward: float, full: bool) -> float:
    """FLOPs of a gradient step whose forward pass costs `forward`: 3x with every weight trained, 2x LoRA."""
    return forward * (3 if full else 2)


def generation(s: Shape, prompts: int, group: int, prompt: int, new: int) -> float:
    """Sampling `new` tokens for each of `group` rows of `prompts` prompts of `prompt` tokens: one prefill
    per prompt (logits at its last position; the sampler shares it among the group) and one decode step
    per new token, attending to the prompt and the tokens before it."""
    prefill = prompts * (prompt * tokens_forward(s, prompt) + projection(s))
    decode = prompts * group * new * (tokens_forward(s, prompt + new, start=prompt) + projection(s))
    return prefill + decode


def generation_bytes(s: Shape, prompts: int, group: int, prompt: int, new: int, dtype_bytes: int = 2) -> float:
    """Bytes read from memory by the decode steps of `generation`: every weight once a step (the batch
    shares the read) and each row's cached keys and values for the keys it attends. Decoding a small
    batch is bound by these reads, not by FLOPs, so its plan divides them by memory bandwidth."""
    weights = params(s)[0] * dtype_bytes * new
    kv_per_key = 2 * s.kv_heads * s.head_dim * dtype_bytes
    keys = sum(mean_keys(prompt + new, w, start=prompt) for w in s.windows)
    return weights + prompts * group * new * keys * kv_per_key
