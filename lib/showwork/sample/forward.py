"""What every forward pass shares: padded shapes (buckets), packing prompt and
completion into one batch, and running a model to its final hidden states.

Padding to a few bucketed lengths keeps the number of compiled programs
small: a compile costs more than the padding on CPU and TPU alike.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from showwork.model.tokenizer import PAD_ID

PROMPT_BUCKET = 32


def bucket(n: int, size: int = PROMPT_BUCKET) -> int:
    """`n` rounded up to a multiple of `size` (at least `size`): few distinct shapes, few compiles."""
    return max(size, -(-n // size) * size)


def capped_bucket(n: int, size: int, cap: int) -> int:
    """bucket(n, size), but never past `cap` (the longest length the run has): data cut to a
    maximum length is all that length, and the next bucket up would pad every row of it."""
    if n > cap:
        raise ValueError(f"length {n} is over the cap {cap}")
    return min(bucket(n, size), cap)


def pack(prompts: list[list[int]], completions: list[list[int]], prompt_bucket: int = PROMPT_BUCKET,
         completion_bucket: int = PROMPT_BUCKET, prompt_len: int | None = None,
         completion_len: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pad prompts to P, right-pad completions to C.

    P and C are bucketed (multiples of the bucket sizes) to limit
    recompiles, or fixed by `prompt_len` / `completion_len` (GRPO, where
    the rollout limits are known) to compile once.
    Returns (prompt [B, P], completion [B, C], completion_mask [B, C]).
    """
    plen = prompt_len or bucket(max(len(p) for p in prompts), prompt_bucket)
    clen = completion_len or bucket(max(max(len(c) for c in completions), 1), completion_bucket)
    if max(len(p) for p in prompts) > plen or max(len(c) for c in completions) > clen:
        raise ValueError(f"sequence longer than the fixed pack length ({plen}, {clen})")
    prompt = np.full((len(prompts), plen), PAD_ID, np.int32)
    completion = np.full((len(prompts), clen), PAD_ID, np.int32)
    mask = np.zeros((len(prompts), clen), np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        prompt[i, plen - len(p):] = p
        completion[i, :len(c)] = c
        mask[i, :len(c)] = 1.0
    return prompt, completion, mask


def pack_mask(rows: list[list[int]], width: int) -> np.ndarray:
    """Per-token 0/1 flags of right-padded completions as a [B, width] float mask (padding is 0)."""
    mask = np.zeros((len(rows), width), np.float32)
    for i, row in enumerate(rows):
        mask[i, :len(row)] = row
    return mask


def final_hidden(graphdef, state, tokens, positions, cache, mask):
    """Run the model, returning final-norm hidden states instead of logits.

    Going through `model.__call__` keeps qwix LoRA interception active; the
    logits it also computes are unused and XLA drops them. The module is
    rebuilt from (graphdef, state) so this can run inside loops and grads.
    """
    model = nnx.merge(graphdef, state)
    # Nothing the forward pass does is written back to `state` (the cache is
    # returned), so nnx transforms inside it (tunix's remat) need not propagate
    # updates to the outer module; propagating them fails for qwix's LoRA
    # variables under remat inside jit and grad ("cannot mutate Param from a
    # different trace level").
    with nnx.set_graph_updates(False):
        _, cache = model(tokens, positions, cache, mask, output_hidden_states=True)
    hidden = nnx.pop(model, nnx.Intermediate)["all_hidden_states"].value[0]
    return hidden, cache
