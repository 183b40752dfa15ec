"""train/objective.py: each switch of the GRPO-family objective against losses and gradients worked
out by hand, and against the pinned google-tunix 0.1.7 where it has the same variant."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showwork.config import GrpoConfig
from showwork.train import objective
from showwork.train.objective import Objective

# Two groups of two completions, uneven lengths; row 1 was cut by the budget of 4 (no stop token).
PER_TOKEN = jnp.array([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 6.0, 7.0], [1.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
MASK = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
STOPPED = [True, False, True, True]


@pytest.mark.parametrize("mode, expected", [
    ("sequence-mean-token-mean", (2.0 + 5.5 + 1.0 + 2.0) / 4),  # each row's mean, then the mean of rows
    ("token-mean", (6.0 + 22.0 + 2.0 + 2.0) / 10),  # every token alike
    ("sequence-mean-token-scale", (6.0 + 22.0 + 2.0 + 2.0) / 4 / 4),  # row sums / budget 4, mean of rows
    ("seq-mean-token-sum", (6.0 + 22.0 + 2.0 + 2.0) / 4),  # row sums, mean of rows
])
def test_aggregation_modes_match_hand_computation_and_tunix(mode, expected):
    from tunix.rl.common import aggregate_loss

    ours = float(objective.aggregate(PER_TOKEN, MASK, mode, max_len=4))
    assert ours == pytest.approx(expected)
    assert ours == pytest.approx(float(aggregate_loss(PER_TOKEN, MASK, mode, norm=4)))


@pytest.mark.parametrize("mode, expected", [
    ("sequence-mean-token-mean", (2.0 + 1.0 + 2.0) / 3),  # the truncated row leaves; so does its count
    ("token-mean", (6.0 + 2.0 + 2.0) / 6),
])
def test_a_truncated_completion_leaves_the_loss(mode, expected):
    mask = objective.drop_truncated(MASK, STOPPED)
    assert float(mask[1].sum()) == 0.0 and float(mask.sum()) == 6.0
    assert float(objective.aggregate(PER_TOKEN, mask, mode)) == pytest.approx(expected)


def test_group_advantages_match_tunix_and_the_other_scalings_match_hand_computation():
    from tunix.rl.algo_core import compute_advantages

    rewards = np.array([1.0, 0.0, 3.0, 1.0], np.float32)  # group means 0.5 and 2.0
    np.testing.assert_allclose(objective.advantages(rewards, 2, "group"), compute_advantages(rewards, 2), rtol=1e-6)
    s1, s2 = np.sqrt(0.5), np.sqrt(2.0)  # each group's std, ddof 1
    np.testing.assert_allclose(objective.advantages(rewards, 2, "group"), [0.5 / s1, -0.5 / s1, 1 / s2, -1 / s2],
                               rtol=1e-5)
    np.testing.assert_allclose(objective.advantages(rewards, 2, "none"), [0.5, -0.5, 1.0, -1.0])
    batch_std = np.std(rewards, ddof=1)
    np.testing.assert_allclose(objective.advantages(rewards, 2, "batch"),
                               np.array([0.5, -0.5, 1.0, -1.0]) / (batch_std + 1e-6), rtol=1e-6)
    # A group whose completions all scored the same teaches nothing, under every scaling.
    for scale in ("group", "batch", "none"):
        assert np.allclose(objective.advantages(np.array([2.0, 2.0, 0.0, 1.0]), 2, scale)[:2], 0.0)


def test_clip_higher_lets_a_rising_good_token_rise_further():
    """Ratio 1.25 with a positive advantage: ε 0.2 clips it at 1.2; DAPO's ε_high 0.28 does not."""
    ratio, adv = jnp.array([[1.25]]), jnp.array([1.0])
    symmetric, clipped = objective.clipped_surrogate(ratio, adv, 0.2, 0.2)
    higher, not_clipped = objective.clipped_surrogate(ratio, adv, 0.2, 0.28)
    assert float(symmetric[0, 0]) == pytest.approx(-1.2) and bool(clipped[0, 0])
    assert float(higher[0, 0]) == pytest.approx(-1.25) and not bool(not_clipped[0, 0])
    # The lower bound is unchanged: a falling bad token is still clipped at 1 - ε.
    low, _ = objective.clipped_surrogate(jnp.array([[0.7]]), jnp.array([-1.0]), 0.2, 0.28)
    assert float(low[0, 0]) == pytest.approx(0.8)


def test_gspo_uses_one_ratio_per_sequence_with_per_token_gradients():
    logps = jnp.log(jnp.array([[0.5, 0.25, 0.5], [0.5, 0.5, 0.5]]))
    old = jnp.log(jnp.array([[0.25, 0.25, 0.5], [0.5, 0.5, 0.5]]))
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    value = objective.log_ratio(logps, old, mask, "gspo-token")
    np.testing.assert_allclose(value[0, :2], np.log(2.0) / 2, rtol=1e-6)  # mean log-ratio of row 0's two tokens
    np.testing.assert_allclose(value[1], 0.0, atol=1e-7)
    grad = jax.grad(lambda lp: (objective.log_ratio(lp, old, mask, "gspo-token") * mask).sum())(logps)
    np.testing.assert_allclose(grad, mask)  # d/dlogp_t of each token's own term only


def token_gradients(mode: str, lengths=(8, 2), budget: int = 8) -> np.ndarray:
    """|dL/dlogp| of the first token of each of two wrong completions (advantage -1, ratio 1)."""
    mask = jnp.array([[1.0] * n + [0.0] * (budget - n) for n in lengths])
    logps = jnp.full(mask.shape, -1.0)
    obj = Objective(loss_agg_mode=mode, max_len=budget)
    grad = jax.grad(lambda lp: objective.loss(lp, jax.lax.stop_gradient(lp), None, jnp.array([-1.0, -1.0]), mask,
                                              obj)[0])(logps)
    return np.abs(np.asarray(grad[:, 0]))


def test_grpo_aggregation_pushes_long_wrong_answers_less_and_dr_grpo_does_not():
    """The length bias Dr. GRPO removes: with the same negative advantage, a token of a long wrong
    completion gets a smaller gradient than one of a short wrong completion under GRPO's
    per-sequence mean (1/(8·2) vs 1/(2·2)), and the same under Dr. GRPO's fixed budget (1/(8·2))."""
    long_tok, short_tok = token_gradients("sequence-mean-token-mean")
    assert long_tok == pytest.approx(1 / 16) and short_tok == pytest.approx(1 / 4)
    long_tok, short_tok = token_gradients("sequence-mean-token-scale")
    assert long_tok == pytest.approx(short_tok) == pytest.approx(1 / 16)


def test_the_default_objective_is_grpo_as_before():
    """Defaults reproduce the GRPO objective the runs so far trained with (hand computation)."""
    logps = jnp.log(jnp.array([[0.5, 0.25], [0.5, 0.5]]))
    old = jnp.log(jnp.array([[0.25, 0.25], [0.5, 0.5]]))
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    obj = Objective.of(GrpoConfig())
    assert (obj.epsilon, obj.epsilon_high, obj.loss_algo, obj.loss_agg_mode) == (
        0.2, 0.2, "grpo", "sequence-mean-token-mean")
    loss, _ = objective.loss(logps, old, None, jnp.array([1.0, -1.0]), mask, Objective(beta=0.0))
    assert float(loss) == pytest.approx((-1.1 + 1.0) / 2)


@pytest.mark.parametrize("section, says", [
    ({"epsilon": 0.2, "epsilon_high": 0.1}, "must be >= epsilon"),
    ({"loss_algo": "gspo-token"}, "about 3e-4"),
])
def test_impossible_objective_settings_are_refused(section, says):
    problems = dict(GrpoConfig(**section).problems())
    assert any(says in message for message in problems.values()), problems
