"""sampler.py: determinism, batching independence, top-k/top-p, stops; real-model agreement."""

import numpy as np
import pytest

from showwork.sample import sampler

PROMPTS = ["Tom has 3 apples.", "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
           "Natalia sold 48 clips", "x"]


def test_greedy_is_deterministic_and_batch_independent(tiny):
    settings = sampler.SampleSettings(max_new_tokens=10)
    batched = sampler.generate(tiny, PROMPTS, settings, batch_size=4, prompt_len=64)
    alone = [sampler.generate(tiny, [p], settings, batch_size=4, prompt_len=64).tokens[0] for p in PROMPTS]
    assert batched.tokens == alone
    assert all(len(t) <= 10 for t in batched.tokens)


def test_sampling_depends_on_row_seed_not_batch_mates(tiny):
    settings = sampler.SampleSettings(max_new_tokens=12, temperature=1.0, top_k=40)
    a = sampler.generate(tiny, PROMPTS, settings, batch_size=4, prompt_len=64, row_seeds=[1, 2, 3, 4])
    b = sampler.generate(tiny, PROMPTS[::-1], settings, batch_size=2, prompt_len=64, row_seeds=[4, 3, 2, 1])
    assert a.tokens == b.tokens[::-1]
    c = sampler.generate(tiny, PROMPTS, settings, batch_size=4, prompt_len=64, row_seeds=[5, 6, 7, 8])
    assert a.tokens != c.tokens


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_group_prefill_gives_the_rows_they_would_get_alone(tiny, temperature):
    """group=G prefills each run of G identical prompts once and shares its
    cache: the same tokens as prefilling every row, row seeds included."""
    settings = sampler.SampleSettings(max_new_tokens=12, temperature=temperature, top_k=40)
    prompts = [p for p in PROMPTS[:3] for _ in range(2)]
    seeds = list(range(11, 17))
    each = sampler.generate(tiny, prompts, settings, batch_size=4, prompt_len=64, row_seeds=seeds)
    shared = sampler.generate(tiny, prompts, settings, batch_size=4, prompt_len=64, row_seeds=seeds, group=2)
    assert shared.tokens == each.tokens
    assert shared.prompt_tokens == each.prompt_tokens
    if temperature:
        assert shared.tokens[0] != shared.tokens[1]  # one prompt, two different completions


@pytest.mark.parametrize("prompts, batch, group, match", [
    (["a", "a", "b", "c"], 4, 2, "not one prompt repeated"),
    (["a", "a", "a"], 4, 2, "must divide"),
    (["a", "a", "b", "b"], 3, 2, "must divide"),
    (["a", "a"], 2, 0, "must divide"),
])
def test_group_rejects_prompts_that_are_not_runs(tiny, prompts, batch, group, match):
    with pytest.raises(ValueError, match=match):
        sampler.generate(tiny, prompts, sampler.SampleSettings(max_new_tokens=2), batch_size=batch, group=group)


def test_top_k_one_equals_greedy(tiny):
    greedy = sampler.generate(tiny, PROMPTS, sampler.SampleSettings(max_new_tokens=8), batch_size=4)
    topk1 = sampler.generate(tiny, PROMPTS, sampler.SampleSettings(max_new_tokens=8, temperature=0.7, top_k=1),
                              batch_size=4)
    assert greedy.tokens == topk1.tokens


def test_tiny_top_p_keeps_only_the_best_token(tiny):
    greedy = sampler.generate(tiny, PROMPTS, sampler.SampleSettings(max_new_tokens=8), batch_size=4)
    nucleus = sampler.generate(tiny, PROMPTS, sampler.SampleSettings(max_new_tokens=8, temperature=1.0, top_p=1e-6),
                                batch_size=4)
    assert greedy.tokens == nucleus.tokens


def test_choose_respects_top_k():
    import jax
    import jax.numpy as jnp

    logits = jnp.tile(jnp.arange(100, dtype=jnp.float32)[None] / 10.0, (4, 1))
    keys = jax.vmap(jax.random.key)(jnp.arange(4, dtype=jnp.uint32))
    seen = set()
    for step in range(50):
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
        seen |= set(np.asarray(sampler._choose(logits[None], step_keys, 1.0, 3, None)).tolist())
    assert seen <= {97, 98, 99} and len(seen) >= 2


def test_each_row_stops_at_its_own_budget_and_the_loop_ends_with_the_last_one(tiny):
    settings = sampler.SampleSettings(max_new_tokens=12)
    free = sampler.generate(tiny, PROMPTS, settings, batch_size=4, stop_ids=(-1,))  # nothing stops a row
    assert [len(t) for t in free.tokens] == [12] * 4 and free.decode_steps == 12
    budgets = [3, 0, 7, 5]
    cut = sampler.generate(tiny, PROMPTS, settings, batch_size=4, stop_ids=(-1,), budgets=budgets)
    assert cut.tokens == [row[:b] for row, b in zip(free.tokens, budgets)] and not any(cut.stopped)
    assert cut.decode_steps == 7  # not the 12 a shared budget would run
    # A last, partial batch: the rows that fill it have no budget, so they do not keep the loop going.
    one = sampler.generate(tiny, PROMPTS[:1], settings, batch_size=4, stop_ids=(-1,))
    assert one.tokens == free.tokens[:1] and one.decode_steps == 12
    short = sampler.generate(tiny, PROMPTS[:1], settings, batch_size=4, stop_ids=(-1,), budgets=[4])
    assert short.tokens == [free.tokens[0][:4]] and short.decode_steps == 4


@pytest.mark.parametrize("budgets, match", [([13, 1, 1, 1], "between 0 and max_new_tokens"),
                                            ([-1, 1, 1, 1], "between 0 and max_new_tokens"),
                                            ([1, 1], "one entry per prompt")])
def test_budgets_outside_the_settings_are_refused(tiny, budgets, match):
    with pytest.raises(ValueError, match=match):
        sampler.generate(tiny, PROMPTS, sampler.SampleSettings(max_new_tokens=12), batch_size=4, budgets=budgets)


def test_stop_token_ends_a_row(tiny):
    out = sampler.generate(tiny, PROMPTS, sampler.SampleSettings(max_new_tokens=6), batch_size=4,
                            stop_ids=tuple(range(tiny.tokenizer.vocab_size)))  # every token stops
    assert out.tokens == [[], [], [], []] and all(out.stopped)
    assert all(len(c) == 1 for c in out.completion_ids)


def test_stop_sequence_ends_a_row_and_stays_in_the_text(tiny):
    free = sampler.generate(tiny, PROMPTS, sampler.SampleSettings(max_new_tokens=12), batch_size=4)
    # Stop at whatever the first row says in its tokens 2..3: that row must end
    # right there, with the sequence kept; the rows are otherwise unchanged.
    target = tuple(free.tokens[0][2:4])
    assert len(target) == 2
    cut = sampler.generate(tiny, PROMPTS, sampler.SampleSettings(max_new_tokens=12), batch_size=4,
                            stop_strings=(tiny.tokenizer.decode(list(target)),))
    sequences = sampler.stop_sequences(tiny.tokenizer, (tiny.tokenizer.decode(list(target)),))
    assert any(target[:-1] == prefix and target[-1] in finals for prefix, finals in sequences)
    assert len(cut.tokens[0]) <= 4 and cut.stopped[0]
    for free_row, cut_row, ids in zip(free.tokens, cut.tokens, cut.completion_ids):
        assert cut_row == sampler._cut(free_row, (), sequences)[1] and ids == cut_row


@pytest.mark.parametrize("gen, kept, text", [
    ([5, 6, 7, 1, 0, 0], [5, 6, 7, 1], [5, 6, 7]),  # stop token: left out of the text
    ([5, 8, 9, 4, 0, 0], [5, 8, 9], [5, 8, 9]),  # stop sequence 8 9: kept in the text
    ([8, 5, 9, 9, 0, 0], [8, 5, 9, 9], [8, 5, 9, 9]),  # 8 and 9 apart: no stop
    ([9, 1, 8, 9, 0, 0], [9, 1], [9]),  # whichever comes first
    ([5, 6, 7, 3], [5, 6, 7, 3], [5, 6, 7, 3]),  # ran to the limit
    ([5, 8, 10, 4], [5, 8, 10], [5, 8, 10]),  # 10 is another token that can end it (like `>.`)
])
def test_cut_table(gen, kept, text):
    assert sampler._cut(gen, (1,), (((8,), (9, 10)),)) == (kept, text)


def test_answer_close_spellings_on_the_real_tokenizer(gemma270m):
    sequences = sampler.stop_sequences(gemma270m.tokenizer, ("</answer>",))
    for context in ("20\n</answer>", "20</answer>", "so 20 </answer>", "20</answer>.", "20 </answer>,"):
        ids = tuple(gemma270m.tokenizer.encode(context))
        assert any(ids[-1] in finals and ids[-1 - len(prefix):-1] == prefix for prefix, finals in sequences), context


@pytest.mark.slow
def test_greedy_matches_tunix_sampler_on_the_real_model(gemma270m):
    from tunix.generate import sampler as sampler_lib

    c = gemma270m.config
    reference = sampler_lib.Sampler(gemma270m.model, gemma270m.tokenizer.sp, sampler_lib.CacheConfig(
        cache_size=128, num_layers=c.num_layers, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim))
    prompts = ["The capital of France is", "Natalia sold clips to 48 of her friends in April, and then she sold"]
    ours = sampler.generate(gemma270m, prompts, sampler.SampleSettings(max_new_tokens=32), batch_size=2)
    for i, prompt in enumerate(prompts):
        theirs = [int(t) for t in reference([prompt], max_generation_steps=32, temperature=0.0).tokens[0]]
        n = min(len(ours.tokens[i]), len(theirs), 32)
        assert n >= 16 and ours.tokens[i][:n] == theirs[:n]


@pytest.mark.parametrize("parts, block", [(1, 512), (2, 512), (2, 2), (4, 1), (1, 3)])
def test_greedy_choice_is_the_first_best_index_even_on_ties(parts, block):
    """The greedy pick from vocabulary slices, however they are cut into
    blocks, is argmax over the row: the first best index on ties, across
    slice and block boundaries."""
    import jax.numpy as jnp

    logits = np.asarray([[0.0, 3.0, 3.0, 1.0, 0.0, 3.0, -9.0, 2.0, 1.0, 0.0, 3.0, 3.0],
                         [5.0] * 12,
                         [-1.0, -2.0, -0.5, -0.5, -3.0, -0.5, -0.7, -9.0, -0.5, -1.0, -1.0, -1.0],
                         [0.0] * 11 + [7.0],
                         [1e30, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e30]], np.float32)
    rows, vocab = logits.shape
    slices = jnp.asarray(logits.reshape(rows, parts, vocab // parts).transpose(1, 0, 2))
    picked = np.asarray(sampler._best(slices, 1, block)[1][:, 0]).tolist()
    assert picked == [1, 0, 2, 11, 0] == np.argmax(logits, axis=1).tolist()
    if block == sampler.PICK_BLOCK:
        assert np.asarray(sampler._choose(slices, None, 0.0, None, None)).tolist() == picked


@pytest.mark.parametrize("parts, block, k", [(1, 512, 5), (2, 4, 3), (2, 4, 24), (2, 4, 48), (4, 1, 7), (1, 3, 1), (2, 6, 12)])
def test_best_candidates_are_the_top_k_of_the_whole_row(parts, block, k):
    """Top-k through the blocks with the largest maxima gives what top_k over
    the whole row gives: the same values and ids, best first, lower id first
    on ties (rows with heavy ties, one huge logit, all equal)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(7)
    logits = np.stack([rng.standard_normal(48), rng.integers(0, 4, 48), np.zeros(48),
                       np.where(np.arange(48) == 40, 1e30, rng.standard_normal(48))]).astype(np.float32)
    rows, vocab = logits.shape
    slices = jnp.asarray(logits.reshape(rows, parts, vocab // parts).transpose(1, 0, 2))
    values, ids = sampler._best(slices, k, block)
    want_values, want_ids = jax.lax.top_k(jnp.asarray(logits), k)
    assert np.asarray(ids).tolist() == np.asarray(want_ids).tolist()
    np.testing.assert_array_equal(np.asarray(values), np.asarray(want_values))


def test_every_sampling_temperature_shares_one_compiled_sampler(tiny):
    """The temperature is data: after one sampled call, calls at other temperatures (consensus voting's
    five, maj@k's) ask XLA for no new program, and the temperature still acts (near 0 the samples are the
    greedy tokens; at 50 they are not). A budget of 11 tokens: a program no other test compiles."""
    from showwork import xla_cache

    xla_cache.enable()
    prompts = ["12 plus 30 is", "The answer to 7 times 6"]

    def run(temperature):
        settings = sampler.SampleSettings(max_new_tokens=11, temperature=temperature, top_k=20)
        before = xla_cache.counts().requested
        tokens = sampler.generate(tiny, prompts, settings, seed=5, batch_size=2).tokens
        return tokens, xla_cache.counts().requested - before

    _, first = run(0.7)
    assert first >= 1  # the sampled program was compiled (or loaded) once
    for temperature in (0.2, 0.4, 1.0, 50.0):
        assert run(temperature)[1] == 0, temperature
    cold, _ = run(1e-4)
    hot, _ = run(50.0)
    greedy, _ = run(0.0)
    assert cold == greedy and hot != greedy
