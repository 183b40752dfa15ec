"""rollout.py: showwork's sampler behind tunix's BaseRollout."""

import dataclasses

import numpy as np
import pytest
from flax import nnx
from tunix.rl import common
from tunix.rl.rollout import base_rollout

from showwork.model import tiny as tiny_model
from showwork.sample import sampler
from showwork.model.tokenizer import EOS_ID
from showwork.model.tokenizer import PAD_ID
from showwork.sample.rollout import Rollout

PROMPTS = ["Tom has 3 apples.", "Natalia sold 48 clips", "x"]


def test_generate_is_the_sampler_behind_tunix_rollout_config(tiny):
    rollout = Rollout(tiny, batch_size=4)
    assert isinstance(rollout, base_rollout.BaseRollout)
    config = base_rollout.RolloutConfig(max_tokens_to_generate=10, temperature=0.0, top_p=1.0, max_prompt_length=40)
    out = rollout.generate(PROMPTS, config)
    want = sampler.generate(tiny, PROMPTS, sampler.SampleSettings(max_new_tokens=10), batch_size=4, prompt_len=64)
    assert [t.tolist() for t in out.tokens] == want.completion_ids
    assert out.text == want.texts
    assert out.left_padded_prompt_tokens.shape == (3, 64)
    for row, ids in zip(out.left_padded_prompt_tokens, want.prompt_tokens):
        assert row[-len(ids):].tolist() == ids and set(row[:-len(ids)].tolist()) <= {PAD_ID}
    assert out.logprobs is None and out.logits == []


def test_sampled_rollouts_follow_the_config_seed(tiny):
    rollout = Rollout(tiny, batch_size=4)
    config = base_rollout.RolloutConfig(max_tokens_to_generate=12, temperature=1.0, top_k=20, top_p=0.9,
                                        max_prompt_length=40, seed=7)
    a, b = rollout.generate(PROMPTS, config), rollout.generate(PROMPTS, config)
    c = rollout.generate(PROMPTS, dataclasses.replace(config, seed=8))
    assert [t.tolist() for t in a.tokens] == [t.tolist() for t in b.tokens] != [t.tolist() for t in c.tokens]


def test_logprobs_agree_with_tunix_per_token_logps(tiny):
    """The log-probs a rollout returns (our chunked path) are tunix's own
    compute_per_token_logps on the same tokens, up to each row's stop token."""
    rollout = Rollout(tiny, batch_size=4)
    config = base_rollout.RolloutConfig(max_tokens_to_generate=10, temperature=1.0, top_k=30, max_prompt_length=40,
                                        seed=3, return_logprobs=True)
    out = rollout.generate(PROMPTS, config)
    width = max(len(t) for t in out.tokens)
    completion = np.full((len(PROMPTS), width), PAD_ID, np.int32)
    for i, t in enumerate(out.tokens):
        completion[i, :len(t)] = t
    graphdef, state = nnx.split(tiny.model)
    theirs = np.asarray(common.compute_per_token_logps(graphdef, state, out.left_padded_prompt_tokens, completion,
                                                       PAD_ID, EOS_ID))
    ours = np.asarray(rollout.get_per_token_logps(out.left_padded_prompt_tokens, completion))
    for i, t in enumerate(out.tokens):
        n = len(t)
        np.testing.assert_allclose(out.logprobs[i], theirs[i, :n], atol=2e-4)
        np.testing.assert_allclose(ours[i, :n], theirs[i, :n], atol=2e-4)
        assert (ours[i, n:] == 0).all()


def test_update_params_samples_from_the_new_weights(tiny):
    rollout = Rollout(tiny_model.load(seed=0), batch_size=4)
    other = tiny_model.load(seed=9)
    config = base_rollout.RolloutConfig(max_tokens_to_generate=8, temperature=0.0, max_prompt_length=40)
    before = [t.tolist() for t in rollout.generate(PROMPTS, config).tokens]
    rollout.update_params(nnx.state(other.model, nnx.Param))
    after = [t.tolist() for t in rollout.generate(PROMPTS, config).tokens]
    want = sampler.generate(other, PROMPTS, sampler.SampleSettings(max_new_tokens=8), batch_size=4).completion_ids
    assert after == want != before


def test_prompt_over_max_prompt_length_is_refused(tiny):
    config = base_rollout.RolloutConfig(max_tokens_to_generate=4, max_prompt_length=8)
    with pytest.raises(ValueError, match="more than prompt_len"):
        Rollout(tiny).generate(["one two three " * 30], config)
