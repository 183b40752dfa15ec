"""GRPO's objective and the switches the small-model RL literature found to matter, each a small
pure function. The defaults are GRPO as Shao et al. (2024) and tunix run it; the switches keep
tunix's names where tunix has them and TRL's otherwise (table in docs/OBJECTIVES.md).

* advantages: rewards centred per group, scaled by the group's std (GRPO), the batch's std, or
  not at all (Dr. GRPO: the std scaling favours groups that barely differ).
* the importance ratio per token (GRPO), or one per sequence from its mean log-ratio with the
  gradient still flowing per token (GSPO, tunix's `gspo-token`).
* the clipped surrogate with a separate upper bound (DAPO's clip-higher, `epsilon_high`).
* how token losses add up (`loss_agg_mode`): per sequence then over sequences (GRPO: a token of a
  long completion weighs less), over all tokens of the batch (DAPO), or per sequence divided by
  the fixed completion budget (Dr. GRPO: no length bias).
* truncated completions left out of the loss (`mask_truncated_completions`).
* DAPO's overlong shaping: a penalty growing linearly over the last `overlong_buffer_length`
  tokens of the budget (`overlong_penalty`).
* DAPO's dynamic sampling: which groups carry a learning signal (`informative`) and which groups
  make up the step's batch (`choose_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from tunix.rl import common as tunix_common

_STD_EPS = 1e-6  # as tunix's compute_advantages


@dataclass(frozen=True)
class Objective:
    """The objective's settings (static under jit), from config.GrpoConfig via `of`."""

    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float = 0.2
    loss_algo: str = "grpo"
    loss_agg_mode: str = "sequence-mean-token-mean"
    max_len: int = 1  # the completion budget: sequence-mean-token-scale divides by it

    @classmethod
    def of(cls, grpo) -> "Objective":
        high = grpo.epsilon if grpo.epsilon_high is None else grpo.epsilon_high
        return cls(grpo.beta, grpo.epsilon, high, grpo.loss_algo, grpo.loss_agg_mode,
                   grpo.rollout.max_tokens_to_generate)


def advantages(rewards: np.ndarray, group: int, scale: str = "group") -> np.ndarray:
    """Group-relative advantages of rewards laid out group by group (G consecutive per prompt):
    centred on the group's mean, divided by the group's std (ddof 1, as tunix), the batch's, or 1."""
    rewards = np.asarray(rewards, np.float32)
    grouped = rewards.reshape(-1, group)
    centred = (grouped - grouped.mean(axis=-1, keepdims=True)).reshape(-1)
    if scale == "group":
        return centred / (grouped.std(axis=-1, ddof=1).repeat(group) + _STD_EPS)
    if scale == "batch":
        return centred / (rewards.std(ddof=1) + _STD_EPS) if rewards.size > 1 else centred
    if scale == "none":
        return centred
    raise ValueError(f"unknown advantage scaling {scale!r}")


def log_ratio(logps, old_logps, mask, loss_algo: str = "grpo"):
    """log(π/π_old) per token; for `gspo-token` every token carries its sequence's mean log-ratio
    as its value while its gradient stays its own token's (tunix algo_core.grpo_loss_fn)."""
    per_token = jnp.clip(logps - old_logps, -20.0, 20.0)
    if loss_algo == "grpo":
        return per_token
    if loss_algo == "gspo-token":
        seq = (per_token * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
        mixed = logps - jax.lax.stop_gradient(logps) + jax.lax.stop_gradient(seq)[:, None]
        return jnp.minimum(mixed, 10.0)
    raise ValueError(f"unknown loss_algo {loss_algo!r}")


def clipped_surrogate(ratio, advantages, epsilon: float, epsilon_high: float):
    """Per-token -min(r·A, clip(r, 1-ε, 1+ε_high)·A), and where the clipped term won."""
    adv = advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
    return jnp.maximum(unclipped, clipped), clipped > unclipped


def counts(mask):
    """(rows with tokens, tokens): the denominators `aggregate` divides by, as float32 scalars."""
    tokens = mask.sum(-1)
    return (tokens > 0).sum().astype(jnp.float32), tokens.sum().astype(jnp.float32)


def aggregate(per_token, mask, mode: str, max_len: int = 1, totals=None):
    """One loss from per-token losses; rows without tokens count for nothing (tunix's names):

    sequence-mean-token-mean   mean over rows of each row's token mean (GRPO)
    token-mean                 sum over every token / number of tokens (DAPO)
    sequence-mean-token-scale  mean over rows of each row's token sum / max_len (Dr. GRPO)
    seq-mean-token-sum         mean over rows of each row's token sum

    `totals`: the whole batch's `counts` when `mask` is one micro-batch of it; every mode is then
    a sum over rows divided by the batch's counts, so the micro-batches' losses add up to the
    batch's loss (and their gradients to its gradient).
    """
    sums = (per_token.astype(jnp.float32) * mask).sum(-1)
    tokens = mask.sum(-1)
    row_count, token_count = counts(mask) if totals is None else totals
    rows = jnp.maximum(row_count, 1.0)
    if mode == "sequence-mean-token-mean":
        return (sums / jnp.maximum(tokens, 1.0)).sum() / rows
    if mode == "token-mean":
        return sums.sum() / jnp.maximum(token_count, 1.0)
    if mode == "sequence-mean-token-scale":
        return (sums / max_len).sum() / rows
    if mode == "seq-mean-token-sum":
        return sums.sum() / rows
    raise ValueError(f"unknown loss_agg_mode {mode!r}")


def drop_truncated(mask, stopped):
    """The mask with every completion that hit the token budget (no stop token) zeroed."""
    return mask * jnp.asarray(stopped, mask.dtype)[:, None]


def loss(logps, old_logps, ref_logps, advantages, mask, obj: Objective, totals=None):
    """The GRPO-family loss and diagnostics (kl, clip_fraction); `totals` as in `aggregate`
    (the diagnostics, means over tokens, then also add up over micro-batches).

    KL to the reference uses the k3 estimator ("low_var_kl"); with no reference (β 0) it is 0.
    """
    ratio = jnp.exp(log_ratio(logps, old_logps, mask, obj.loss_algo))
    per_token, clipped = clipped_surrogate(ratio, advantages, obj.epsilon, obj.epsilon_high)
    kl = jnp.zeros_like(logps) if ref_logps is None else tunix_common.compute_kl_divergence(
        logps, ref_logps, "low_var_kl")
    if obj.beta:
        per_token = per_token + obj.beta * kl
    total = aggregate(per_token, mask, obj.loss_agg_mode, obj.max_len, totals)
    denom = jnp.maximum(mask.sum() if totals is None else totals[1], 1.0)
    return total, {"kl": (kl * mask).sum() / denom, "clip_fraction": (clipped * mask).sum() / denom}


def overlong_penalty(lengths, max_len: int, buffer: int, penalty: float = 1.0) -> np.ndarray:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), per completion of `lengths` tokens:
    0 up to max_len - buffer, then falling linearly to -penalty at max_len (and below it past).

    Counted in tokens of the completion, as the paper does; tunix's reward_shaping counts the
    characters of the decoded text against the same token-sized numbers.
    """
    lengths = np.asarray(lengths, np.float32)
    return np.minimum(-(lengths - (max_len - buffer)) / buffer * penalty, 0.0).astype(np.float32)


def informative(rewards, group: int) -> np.ndarray:
    """Per group: whether its rewards differ. A group whose completions all score the same has zero
    advantage under every `scale_rewards`, so it trains nothing but the KL term."""
    grouped = np.asarray(rewards, np.float32).reshape(-1, group)
    return grouped.max(axis=-1) > grouped.min(axis=-1)


def choose_groups(rounds: list[np.ndarray], batch: int) -> list[tuple[int, int]]:
    """The step's `batch` groups as (round, group) pairs, from each sampling round's `informative`
    mask: informative groups first, in round order; if the rounds ran out before `batch` of
    them, round 0's other groups fill the rest (they add no policy gradient), so the step keeps
    its shape and compiles once."""
    chosen = [(r, g) for r, mask in enumerate(rounds) for g in np.flatnonzero(mask)][:batch]
    fill = [(0, int(g)) for g in np.flatnonzero(~rounds[0])]
    return [(r, int(g)) for r, g in chosen] + fill[:batch - len(chosen)]
