"""Several SFT examples to a sequence, each attending only to itself.

Padding every example to its bucket spends a step's FLOPs on pad tokens;
packing fills each sequence of `max_seq_len` tokens with whole examples.
As in TRL 1.16 with transformers 5 (its `padding_free` rows carry restarting
position ids, from which transformers builds a block-diagonal mask even for
`sdpa` on CPU), every token sees only its own example: here a block-diagonal
causal mask from segment ids. Positions are the row's own indices rather
than restarting per example: Gemma's only position
signal is RoPE, which depends on the distance between query and key, so an
example's attention is the same wherever it sits; and tunix's Gemma 2 cuts
its sliding window by comparing query positions with key indices, which
positions restarting mid-row would break. A packed example's log-probs
equal its log-probs alone (tests/train/test_packing.py).

The grouping is made once, before training (best-fit decreasing, as TRL's
`packing_strategy="bfd"`); the packed sequences are then the rows that
`sft.order` shuffles epoch by epoch, so a resumed run finds its place.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

import numpy as np

from showwork.model.tokenizer import PAD_ID


def plan(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices per packed sequence: longest first, each into the fullest sequence it fits.

    Deterministic (ties by index); every example appears once; no sequence holds more than
    `capacity` tokens. Examples inside a sequence are listed in data order.
    """
    if any(n > capacity for n in lengths):
        raise ValueError(f"an example of {max(lengths)} tokens does not fit a sequence of {capacity}")
    groups: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, group), sorted: the best fit is the first with enough
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        at = bisect.bisect_left(room, (lengths[i], -1))
        if at == len(room):
            groups.append([i])
            free, g = capacity - lengths[i], len(groups) - 1
        else:
            free, g = room.pop(at)
            groups[g].append(i)
            free -= lengths[i]
        bisect.insort(room, (free, g))
    return [sorted(g) for g in groups]


class Batch(NamedTuple):
    """Packed rows [B, L] and the positions whose next token is a completion token [B, K]."""

    tokens: np.ndarray  # [B, L] prompt and completion tokens of each example, back to back; PAD after
    positions: np.ndarray  # [B, L] 0, 1, ... along the row (see above)
    segments: np.ndarray  # [B, L] 1, 2, ... per example in the row; 0 for padding
    predict_at: np.ndarray  # [B, K] index into L of the token predicting each target
    targets: np.ndarray  # [B, K] the completion tokens
    mask: np.ndarray  # [B, K] 1.0 for a real target, 0.0 for padding


def arrays(prompts: list[list[int]], completions: list[list[int]], groups: list[list[int]], length: int,
           targets: int) -> Batch:
    """The batch of packed rows `groups` (example indices), padded to `length` tokens and `targets`
    completion tokens a row; the loss is on completion tokens only, as unpacked SFT's."""
    b = len(groups)
    tokens, segments = np.full((b, length), PAD_ID, np.int32), np.zeros((b, length), np.int32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy()
    predict_at, target, mask = np.zeros((b, targets), np.int32), np.full((b, targets), PAD_ID, np.int32), \
        np.zeros((b, targets), np.float32)
    for r, group in enumerate(groups):
        start, k = 0, 0
        for s, i in enumerate(group, 1):
            p, c = prompts[i], completions[i]
            n = len(p) + len(c)
            if start + n > length or k + len(c) > targets:
                raise ValueError(f"packed row {r} is longer than ({length}, {targets})")
            tokens[r, start:start + n] = p + c
            segments[r, start:start + n] = s
            # the token at position t predicts the one at t + 1: the last prompt token predicts c[0]
            predict_at[r, k:k + len(c)] = np.arange(start + len(p) - 1, start + n - 1)
            target[r, k:k + len(c)] = c
            mask[r, k:k + len(c)] = 1.0
            start, k = start + n, k + len(c)
    return Batch(tokens, positions, segments, predict_at, target, mask)


def sizes(prompts: list[list[int]], completions: list[list[int]], group: list[int]) -> tuple[int, int]:
    """(tokens, completion tokens) of one packed row."""
    return sum(len(prompts[i]) + len(completions[i]) for i in group), sum(len(completions[i]) for i in group)
