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
    ({"max_num_gen_batches": 0}, "sampling rounds per step"),
    ({"overlong_buffer_length": 300}, "1..rollout.max_tokens_to_generate (256)"),
    ({"overlong_buffer_length": 0}, "1..rollout.max_tokens_to_generate"),
    ({"overlong_buffer_penalty": -1.0}, "must be >= 0"),
])
def test_impossible_objective_settings_are_refused(section, says):
    problems = dict(GrpoConfig(**section).problems())
    assert any(says in message for message in problems.values()), problems


# Budget 160 tokens, buffer the last 32: free up to 128, then -1/32 per token, -1 at the budget.
@pytest.mark.parametrize("length, expected", [
    (0, 0.0), (100, 0.0), (128, 0.0), (129, -1 / 32), (144, -0.5), (159, -31 / 32), (160, -1.0),
])
def test_overlong_penalty_matches_dapo_and_tunix(length, expected):
    from tunix.rl.grpo.dapo_learner import reward_shaping

    ours = float(objective.overlong_penalty([length], max_len=160, buffer=32, penalty=1.0)[0])
    assert ours == pytest.approx(expected)
    # tunix counts the characters of the completion text: a text of `length` characters is the same case.
    buffer = {"overlong_buffer_length": 32, "overlong_buffer_penalty": 1.0, "max_response_length": 160}
    assert ours == pytest.approx(reward_shaping([""], ["x" * length], None, overlong_buffer=buffer)[0])
    assert float(objective.overlong_penalty([length], 160, 32, penalty=0.5)[0]) == pytest.approx(expected / 2)


@pytest.mark.parametrize("rewards, expected", [
    ([1.0, 1.0, 0.0, 1.0], [False, True]),  # the first group all alike: no advantage
    ([0.0, 0.0, 0.0, 0.0], [False, False]),
    ([0.5, 0.50001, -1.0, -1.0], [True, False]),  # any difference is a signal (group std scaling amplifies it)
])
def test_informative_groups_are_those_whose_rewards_differ(rewards, expected):
    assert objective.informative(rewards, 2).tolist() == expected
    for scale in ("group", "batch", "none"):  # a group it calls uninformative has zero advantage every way
        adv = objective.advantages(np.asarray(rewards), 2, scale).reshape(-1, 2)
        assert all(np.all(adv[g] == 0) for g, keep in enumerate(expected) if not keep)


@pytest.mark.parametrize("rounds, batch, expected", [
    # enough informative groups in round 0: those, then round 0's others fill nothing
    ([[True, True, True]], 3, [(0, 0), (0, 1), (0, 2)]),
    # round 0 has one; round 1 brings two more: informative first, in round order
    ([[False, True, False], [True, False, True]], 3, [(0, 1), (1, 0), (1, 2)]),
    # more informative than needed: the first `batch` of them
    ([[True, False], [True, True]], 2, [(0, 0), (1, 0)]),
    # the rounds ran out: round 0's uninformative groups keep the batch size
    ([[False, True, False], [False, False, False]], 3, [(0, 1), (0, 0), (0, 2)]),
    ([[False, False]], 2, [(0, 0), (0, 1)]),
])
def test_dynamic_sampling_chooses_informative_groups_first_and_keeps_the_batch(rounds, batch, expected):
    chosen = objective.choose_groups([np.asarray(r) for r in rounds], batch)
    assert chosen == expected and len(set(chosen)) == batch


@pytest.mark.parametrize("mode", ["sequence-mean-token-mean", "token-mean", "sequence-mean-token-scale",
                                  "seq-mean-token-sum"])
def test_micro_batches_losses_add_up_to_the_batchs_loss_in_every_mode(mode):
    """Each micro-batch divides by the whole batch's counts; rows 1 and 3 of a pair, one of them
    without tokens (a dropped truncated completion), still add up to the batch's loss."""
    mask = objective.drop_truncated(MASK, STOPPED)
    whole = objective.aggregate(PER_TOKEN, mask, mode, max_len=4)
    totals = objective.counts(mask)
    parts = [objective.aggregate(PER_TOKEN[s], mask[s], mode, 4, totals) for s in (slice(0, 2), slice(2, 4))]
    assert float(sum(parts)) == pytest.approx(float(whole))
    # Without the batch's counts the halves would not add up (a row-mean of rows 0-1 counts row 0 twice).
    if mode != "seq-mean-token-sum":
        alone = [objective.aggregate(PER_TOKEN[s], mask[s], mode, 4) for s in (slice(0, 2), slice(2, 4))]
        assert float(sum(alone)) != pytest.approx(float(whole))
