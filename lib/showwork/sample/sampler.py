"""Batched sampling with a KV cache over the tunix Gemma modules.

Used by evaluation and by GRPO rollouts. Design choices (and why):
* Prompts are left-padded to a bucket length (a multiple of `forward.PROMPT_BUCKET`)
  and the whole decode runs in one `lax.while_loop`, so a new batch of
  questions reuses the compiled program instead of recompiling per length.
* Prefill computes logits only for the last prompt position (the 262k-row
  output projection is most of the FLOPs; tunix's sampler projects every
  prompt position).
* Top-k runs before top-p: we take the k best logits with `lax.top_k` and
  apply the nucleus cut inside them, so no step sorts the full vocabulary.
  top-p without top-k uses the best `TOP_P_CANDIDATES` tokens; the mass
  outside them is negligible for a trained LM and this keeps every step
  sort-free.
* The loop exits as soon as every row has produced a stop token or a stop
  sequence (evaluation stops at `</answer>`: what follows cannot change the
  score, and a base model that keeps talking would otherwise run to the
  token limit).
* Plain Gemma 3 weights run through `showwork.sample.decoder`, a forward pass with
  the weights and the KV cache laid out for the decode loop (faster a step
  than tunix's modules: docs/BENCHMARKS.md); adapted or quantized models and
  Gemma 2 run through the modules. Greedy and top-k picks read the
  projection's vocabulary slices directly, block by block (`_best`).
* Deterministic: the same seed, prompts and settings give the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from showwork.model import families
from showwork.model.loaded import Loaded
from showwork.model.tokenizer import EOS_ID, PAD_ID
from showwork.sample import decoder, logprobs
from showwork.sample.forward import bucket, final_hidden
TOP_P_CANDIDATES = 256


@dataclass(frozen=True)
class SampleSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None


@dataclass
class Samples:
    texts: list[str]
    tokens: list[list[int]]  # generated ids, stop token excluded
    completion_ids: list[list[int]]  # generated ids including the stop token (what training scores)
    prompt_tokens: list[list[int]]  # BOS + prompt ids, unpadded
    stopped: list[bool]  # ended with a stop token (not cut by max_new_tokens)
    decode_steps: int = 0  # decode-loop steps the call ran, summed over its batches (what it cost)


def _choose(slices, keys, temperature, top_k: int | None, top_p: float | None):
    """One token per row from float32 logits given as vocabulary slices [C, B, V / C] (see `project`),
    row b drawn with keys[b]; greedy when `temperature` is None or a number <= 0 (a traced temperature
    samples).

    Per-row keys make a row's sample independent of which other rows share
    its batch, so results do not depend on batching or sharding.
    """
    if temperature is None or (isinstance(temperature, (int, float)) and temperature <= 0.0):
        return _best(slices, 1)[1][:, 0].astype(jnp.int32)
    k = top_k or (TOP_P_CANDIDATES if top_p is not None and top_p < 1.0 else None)
    if k is None:  # the whole vocabulary
        logits = jnp.moveaxis(slices, 0, 1).reshape(slices.shape[1], -1) / temperature
        return jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, logits).astype(jnp.int32)
    values, ids = _best(slices, min(k, slices.shape[0] * slices.shape[2]))
    return jax.vmap(lambda key, v, i: _choose_among(v / temperature, i, key, top_p))(keys, values, ids)


def _choose_among(values, ids, key, top_p: float | None):
    """Draw from candidates sorted best first ([k] logits, already divided by the temperature)."""
    if top_p is not None and top_p < 1.0:
        probs = jax.nn.softmax(values)
        before = jnp.cumsum(probs) - probs  # mass strictly above each candidate
        values = jnp.where(before < top_p, values, -jnp.inf)  # the best token always survives
    return ids[jax.random.categorical(key, values)].astype(jnp.int32)


# Top-k and greedy picks look at the vocabulary in blocks of this many
# logits (when it divides a slice).
PICK_BLOCK = 512


def _best(slices, k: int, block: int = PICK_BLOCK):
    """Each row's k largest logits, best first, and their token ids ([B, k] each) from [C, B, W] slices.

    A row's k best logits lie in the k blocks with the largest maxima (a
    logit outside them has k larger ones above it, the blocks' maxima), so
    top_k runs over those k blocks (k x `block` candidates) instead of the
    whole 262k vocabulary, after a plain max over blocks. With k = 1 this is
    the greedy pick, several times faster on XLA:CPU than top_k(·, 1) or
    argmax over whole rows (whose variadic reduce is slow), and the slices
    are read as they are, without first transposing them to [B, V]
    (timings in docs/BENCHMARKS.md).
    """
    parts, rows, width = slices.shape
    size = block if width % block == 0 else width
    count = width // size
    blocks = slices.reshape(parts, rows, count, size)
    maxima = jnp.transpose(blocks.max(axis=-1), (1, 0, 2)).reshape(rows, parts * count)  # vocabulary order
    _, chosen = jax.lax.top_k(maxima, min(k, parts * count))  # [B, nb]
    chosen = jnp.sort(chosen, axis=-1)  # candidates in vocabulary order: ties go to the lower id, as in top_k
    part, at = chosen // count, chosen % count
    candidates = blocks[part, jnp.arange(rows)[:, None], at]  # [B, nb, size]
    ids = (part * width + at * size)[..., None] + jnp.arange(size)
    values, where = jax.lax.top_k(candidates.reshape(rows, -1), k)
    return values, jnp.take_along_axis(ids.reshape(rows, -1), where, axis=-1)


def _empty_cache(config, batch: int, size: int, dtype) -> dict:
    shape = (batch, size, config.num_kv_heads, config.head_dim)
    return {
        f"layer_{i}": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                       "end_index": jnp.zeros((batch,), jnp.int32)}
        for i in range(config.num_layers)
    }


# Vocabulary slices of the sampler's output projection (logprobs.logit_slices):
# faster for decode's few rows on XLA:CPU (docs/BENCHMARKS.md), identical logits.
PROJECTION_PARTS = 2


def project(embedding, softcap: float | None, hidden):
    """Hidden rows [B, D] -> float32 logits through the tied embedding, as vocabulary slices [C, B, V / C]."""
    parts = PROJECTION_PARTS if embedding.shape[0] % PROJECTION_PARTS == 0 else 1
    return logprobs.logit_slices(hidden, embedding, softcap, parts)


# A stop sequence: the token ids before its last token, and every token id
# that can end it (see stop_sequences).
StopSequence = tuple[tuple[int, ...], tuple[int, ...]]


def stop_sequences(tokenizer, texts: tuple[str, ...]) -> tuple[StopSequence, ...]:
    """The token spellings of each stop string.

    SentencePiece spells `</answer>` differently after a space (`▁</`) than
    after a newline or a digit (`</`), and merges its last character with
    what follows (`>.`, `>,`): so each spelling is its leading tokens plus
    the set of tokens that start with its last piece. A spelling we still
    miss only means the row runs on to its end-of-turn token.
    """
    found: list[StopSequence] = []
    for text in texts:
        for spelled in (tokenizer.encode(text), tokenizer.encode(" " + text)):
            if not spelled:
                continue
            finals = tuple(tokenizer.ids_starting_with(tokenizer.piece(spelled[-1])))
            sequence = (tuple(spelled[:-1]), finals)
            if sequence not in found:
                found.append(sequence)
    return tuple(found)


def _ends_with(out, step, sequence: StopSequence):
    """Rows whose tokens up to `step` end with `sequence` ([B] bool)."""
    prefix, finals = sequence
    length = len(prefix) + 1
    start = jnp.maximum(step - length + 1, 0)
    window = jax.lax.dynamic_slice_in_dim(out, start, length, axis=1)
    last = jnp.isin(window[:, -1], jnp.asarray(finals, jnp.int32))
    if prefix:
        last = last & jnp.all(window[:, :-1] == jnp.asarray(prefix, jnp.int32)[None], axis=1)
    return (step >= length - 1) & last


def _cut(gen: list[int], stop_ids: tuple[int, ...], sequences: tuple[StopSequence, ...]) -> tuple[list[int], list[int]]:
    """(kept ids incl. what stopped the row, text ids) for one generated row.

    A stop token is left out of the text; a stop sequence (`</answer>`)
    stays in it, since it is part of the answer's format.
    """
    for i, t in enumerate(gen):
        if t in stop_ids:
            return gen[:i + 1], gen[:i]
        for prefix, finals in sequences:
            n = len(prefix)
            if t in finals and i >= n and tuple(gen[i - n:i]) == prefix:
                return gen[:i + 1], gen[:i + 1]
    kept = [t for t in gen if t != PAD_ID]
    return kept, kept


def _module_path(model, rows: int, size: int):
    """(run, cache, repeat) sampling through the model's own modules (LoRA-wrapped, quantized, Gemma 2)."""
    graphdef, params = nnx.split(model)
    cache = _empty_cache(model.config, rows, size, model.embedder.input_embedding[...].dtype)

    def run(tokens, positions, cache, start, valid):
        query = start + jnp.arange(tokens.shape[1])
        mask = (jnp.arange(size)[None, None, :] <= query[None, :, None]) & valid[:, None, :]
        return final_hidden(graphdef, params, tokens, positions, cache, mask)

    def repeat(cache, group):
        return jax.tree.map(lambda x: jnp.repeat(x, group, axis=0), cache)
    return run, cache, repeat


def _decoder_path(model, weights: dict, rows: int, size: int):
    """(run, cache, repeat) through showwork.sample.decoder: plain Gemma 3 weights laid out for decoding."""
    config = model.config
    specs = decoder.layer_specs(model)
    cache = decoder.empty_cache(config.num_layers, rows, config.num_kv_heads, config.head_dim, size,
                                weights["embedding"].dtype)

    def run(tokens, positions, cache, start, valid):
        return decoder.forward(weights, specs, tokens, positions, cache, start, valid,
                               kv_heads=config.num_kv_heads, head_dim=config.head_dim)

    def repeat(cache, group):
        return decoder.repeat_cache(cache, group, config.num_kv_heads)
    return run, cache, repeat


@partial(nnx.jit, static_argnames=("max_new", "greedy", "top_k", "top_p", "stop_ids", "sequences"))
def _generate(model, prompt_ids, prompt_valid, row_keys, budgets=None, temperature=1.0, *, max_new, greedy, top_k,
              top_p, stop_ids, sequences=()):
    # prompt_ids holds one row per group of identical prompts; row_keys one
    # per output row. Each group's prompt is prefilled once, then its cache
    # and first logits are repeated for the group's rows. budgets (one per
    # output row, at most max_new) are data, not shapes: a row's own budget
    # costs no new program, and the loop ends when every row is done or spent.
    # The temperature is data too (only greedy or not is a shape of the program): consensus voting's
    # five temperatures and maj@k's share one compiled sampler instead of one each.
    unique, plen = prompt_ids.shape
    batch = row_keys.shape[0]
    group = batch // unique
    size = plen + max_new
    budgets = jnp.full((batch,), max_new, jnp.int32) if budgets is None else budgets
    weights = decoder.weights(model)
    if weights is None:
        run, cache, repeat = _module_path(model, unique, size)
    else:
        run, cache, repeat = _decoder_path(model, weights, unique, size)
    embedding = model.embedder.input_embedding[...]
    softcap = families.final_softcap(model.config)
    valid = jnp.zeros((unique, size), jnp.bool_).at[:, :plen].set(prompt_valid)
    positions = jnp.maximum(jnp.cumsum(prompt_valid, axis=-1) - 1, 0).astype(jnp.int32)
    hidden, cache = run(prompt_ids, positions, cache, 0, valid)
    logits = project(embedding, softcap, hidden[:, -1])
    lengths = prompt_valid.sum(axis=-1).astype(jnp.int32)
    if group > 1:
        cache = repeat(cache, group)
        logits = jnp.repeat(logits, group, axis=1)
        valid, lengths = jax.tree.map(lambda x: jnp.repeat(x, group, axis=0), (valid, lengths))
    stops = jnp.asarray(stop_ids, jnp.int32)

    def body(state):
        step, logits, cache, valid, out, done = state
        keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)
        token = _choose(logits, keys, None if greedy else temperature, top_k, top_p)
        token = jnp.where(done | (step >= budgets), PAD_ID, token)
        out = out.at[:, step].set(token)
        done = done | jnp.isin(token, stops)
        for sequence in sequences:
            done = done | _ends_with(out, step, sequence)
        slot = plen + step
        valid = valid.at[:, slot].set(True)
        pos = (lengths + step)[:, None]
        hidden, cache = run(token[:, None], pos, cache, slot, valid)
        return step + 1, project(embedding, softcap, hidden[:, -1]), cache, valid, out, done

    def cond(state):
        step, _, _, _, _, done = state
        return (step < max_new) & ~jnp.all(done | (step >= budgets))

    out = jnp.full((batch, max_new), PAD_ID, jnp.int32)
    done = jnp.zeros((batch,), jnp.bool_)
    state = (jnp.int32(0), logits, cache, valid, out, done)
    steps, _, _, _, out, done = jax.lax.while_loop(cond, body, state)
    return out, done, steps


def default_row_seeds(seed: int, n: int) -> list[int]:
    """Row i's seed when a call gives one seed for all its rows."""
    return [seed * 1_000_003 + i for i in range(n)]


def _check_rows(prompts: list[str], row_seeds: list[int], prompt_ids, group: int, batch_size: int,
                budgets: list[int], max_new: int) -> None:
    """One seed, one budget (and, when given, one id list) per prompt; groups of `group` identical prompts."""
    if len(row_seeds) != len(prompts) or len(budgets) != len(prompts):
        raise ValueError("row_seeds and budgets must have one entry per prompt")
    if any(not 0 <= b <= max_new for b in budgets):
        raise ValueError(f"a row's budget must be between 0 and max_new_tokens ({max_new})")
    if prompt_ids is not None and len(prompt_ids) != len(prompts):
        raise ValueError("prompt_ids must have one row per prompt")
    if group < 1 or batch_size % group or len(prompts) % group:
        raise ValueError(f"group={group} must divide batch_size ({batch_size}) and the number of prompts ({len(prompts)})")
    for start in range(0, len(prompts), group):
        if any(p != prompts[start] for p in prompts[start:start + group]):
            raise ValueError(f"group={group}: prompts {start}..{start + group - 1} are not one prompt repeated")


def _left_padded(chunk: list[list[int]], batch_size: int, prompt_len: int | None):
    """A batch's prompt ids left-padded to `prompt_len` (default: the longest, bucketed) and their
    validity. The batch is filled to full size with empty rows, so the last partial batch
    reuses the program."""
    padded = chunk + [[PAD_ID]] * (batch_size - len(chunk))
    longest = max(len(ids) for ids in padded)
    if prompt_len is not None and longest > prompt_len:
        raise ValueError(f"a prompt has {longest} tokens, more than prompt_len={prompt_len}")
    plen = prompt_len or bucket(longest)
    ids = np.full((batch_size, plen), PAD_ID, np.int32)
    ok = np.zeros((batch_size, plen), bool)
    for r, row in enumerate(padded):
        ids[r, plen - len(row):] = row
        ok[r, plen - len(row):] = row != [PAD_ID]
    return ids, ok


def generate(loaded: Loaded, prompts: list[str], settings: SampleSettings, *, seed: int = 0,
             batch_size: int = 8, stop_ids: tuple[int, ...] | None = None,
             prompt_len: int | None = None, row_seeds: list[int] | None = None,
             stop_strings: tuple[str, ...] = (), group: int = 1,
             prompt_ids: list[list[int]] | None = None, budgets: list[int] | None = None) -> Samples:
    """Complete each prompt (BOS is prepended); rows are processed in batches.

    `prompt_ids`: the prompts' ids as given (BOS included), not encoded from `prompts` (a row
    that goes on from tokens it sampled: showwork.sample.calculator).

    `prompt_len` fixes the padded prompt length (one compiled program for
    every batch); by default it is the batch's longest prompt, bucketed.
    Row i samples with its own key from `row_seeds[i]` (default: seed and
    i), so a row's tokens do not depend on its batch-mates.
    `group`: the prompts come in runs of `group` identical ones (GRPO's G
    completions of one prompt); each run's prompt is prefilled once and its
    KV cache shared by the run's rows (G times less prefill).
    `budgets`: row i generates at most budgets[i] tokens (default: max_new_tokens); rows that
    fill a batch to size have none, so a batch's loop ends when its real rows are done.
    """
    if row_seeds is None:
        row_seeds = default_row_seeds(seed, len(prompts))
    if budgets is None:
        budgets = [settings.max_new_tokens] * len(prompts)
    _check_rows(prompts, row_seeds, prompt_ids, group, batch_size, budgets, settings.max_new_tokens)
    tok = loaded.tokenizer
    stop_ids = tuple(stop_ids or (EOS_ID, tok.end_of_turn_id))
    sequences = stop_sequences(tok, tuple(stop_strings))
    encoded = [list(ids) for ids in prompt_ids] if prompt_ids is not None else [tok.encode(p, bos=True) for p in prompts]
    result = Samples([], [], [], [], [])
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        rows = len(chunk)
        ids, ok = _left_padded(chunk, batch_size, prompt_len)
        seeds = row_seeds[start:start + batch_size] + [0] * (batch_size - rows)
        keys = jax.vmap(jax.random.key)(jnp.asarray(np.asarray([x % 2**32 for x in seeds], np.uint32)))
        spend = jnp.asarray(budgets[start:start + batch_size] + [0] * (batch_size - rows), jnp.int32)
        out, done, steps = _generate(loaded.model, jnp.asarray(ids[::group]), jnp.asarray(ok[::group]), keys, spend,
                                     jnp.float32(max(settings.temperature, 0.0)), max_new=settings.max_new_tokens,
                                     greedy=settings.temperature <= 0.0, top_k=settings.top_k, top_p=settings.top_p,
                                     stop_ids=stop_ids, sequences=sequences)
        out, done = np.asarray(out), np.asarray(done)
        result.decode_steps += int(steps)
        for r in range(rows):
            kept, gen = _cut([int(t) for t in out[r]], stop_ids, sequences)
            result.completion_ids.append(kept)
            result.tokens.append(gen)
            result.texts.append(tok.decode(gen))
            result.prompt_tokens.append(chunk[r])
            result.stopped.append(bool(done[r]))
    return result
