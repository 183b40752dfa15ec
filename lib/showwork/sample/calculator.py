"""Sampling with a calculator in the loop, as the GSM8K paper evaluated its models.

A small model's plan is often right and its sums wrong. Here, when a row writes an
expression and "=" ("48 / 2 =", or GSM8K's annotation "<<48/2="), the row stops, the host
computes the value with showwork.task.arithmetic (numbers and + - * / only, exact
fractions, no `eval`, bounded size), writes it after the "=" (" 24", or "24>>"), and the row
goes on from there. Rows run in rounds through the one sampler (`sampler.generate`): each
round stops rows at "=" as well as at the caller's stop strings, and a row that stopped at an
equation is prefilled again with its ids (the model's tokens and the value's) and continues. A "=" that
closes no expression ("x =") is left to the model.

What the calculator wrote is never the model's: evaluation reports it as its own method
(`greedy+calc`), never mixed into plain greedy accuracy, and each sample records how many
values were inserted; GRPO rollouts (`rollout.calculator`) grade the text with the values in it
and leave the calculator's ids out of the loss (`sampled`). The token budget counts the model's tokens only, and a later round decodes
no further than the row's budget left (the sampler's per-row `budgets`). Greedy rows give the
same text whatever batch they run in; sampled rows draw each round with a seed of their own
(row seed and round).
"""

from __future__ import annotations

from dataclasses import dataclass

from showwork.sample import sampler
from showwork.task.arithmetic import calculate

EQUALS = "="
MAX_STOPS = 32  # per row: a row that keeps stopping at "=" (filled or not) ends its rounds here


@dataclass
class CalcSamples:
    texts: list[str]  # the model's text with the calculator's values in place
    inserts: list[int]  # values the calculator wrote into each row
    tokens: list[int]  # tokens the model generated for each row
    stopped: list[bool]  # ended with a stop token or stop string (not cut by the budget)
    completion_ids: list[list[int]]  # what the rows condition on after the prompt: the model's and the calculator's ids
    sampled: list[list[int]]  # per completion id: 1 where the model sampled it, 0 where the calculator wrote it
    prompt_tokens: list[list[int]]  # BOS + prompt ids
    decode_steps: int = 0  # decode-loop steps over every round and batch (what the rounds cost)


def _stopped_at_equals(out: sampler.Samples, j: int, stop_strings: tuple[str, ...]) -> int | None:
    """Where row j's text ends its last "=", when what stopped the row was a "=" (not a stop token,
    not one of the caller's stop strings, not the budget): the index just past it. The tokenizer
    may have merged the "=" with what follows ("=2", "=$"): that tail is dropped, the
    calculator's value takes its place."""
    text = out.texts[j]
    if not out.stopped[j] or len(out.completion_ids[j]) > len(out.tokens[j]):
        return None
    if any(s in text for s in stop_strings) or EQUALS not in text:
        return None
    return text.rfind(EQUALS) + 1


def _filled(tokenizer, ids: list[int], text: str, end: int, value: str) -> tuple[list[int], list[int]]:
    """The ids a row goes on from after the model wrote `ids` (decoding to `text`) and the calculator
    the value after text[:end], with 1 for each id the model sampled. Tokens that carried
    characters past the "=" ("=2") are not the model's any more: what they held up to the "=" is
    spelled again and counted as the calculator's, like the value."""
    k = len(ids)
    while k and len(tokenizer.decode(ids[:k])) > end:
        k -= 1
    kept = ids[:k]
    written = tokenizer.encode(text[len(tokenizer.decode(kept)):end]) + tokenizer.encode(value)
    return kept + written, [1] * len(kept) + [0] * len(written)


def generate(loaded, prompts: list[str], settings: sampler.SampleSettings, *, row_seeds: list[int],
             batch_size: int = 8, stop_strings: tuple[str, ...] = (), group: int = 1,
             prompt_len: int | None = None) -> CalcSamples:
    """Complete each prompt with the calculator writing every value the model asks for.

    Each round goes on from the row's ids (its prompt, what the model sampled, what the calculator
    wrote), never from its text encoded again, so a trainer scores the very ids the model
    conditioned on (`sampled` masks the calculator's out of a loss). `group` and `prompt_len` are
    the sampler's, for the first round (GRPO's G completions of one prompt); later rounds start
    from rows that differ."""
    tok = loaded.tokenizer
    n = len(prompts)
    prompt_ids = [tok.encode(p, bos=True) for p in prompts]
    texts, inserts, used, stops = [""] * n, [0] * n, [0] * n, [0] * n
    ids, sampled = [[] for _ in range(n)], [[] for _ in range(n)]
    stopped, active, rounds, steps = [False] * n, list(range(n)), 0, 0
    while active:
        out = sampler.generate(loaded, [prompts[i] + texts[i] for i in active], settings, batch_size=batch_size,
                               stop_strings=tuple(stop_strings) + (EQUALS,),
                               row_seeds=[(row_seeds[i] + 7919 * rounds) % 2**32 for i in active],
                               prompt_ids=[prompt_ids[i] + ids[i] for i in active],
                               group=group if rounds == 0 else 1, prompt_len=prompt_len if rounds == 0 else None,
                               budgets=[settings.max_new_tokens - used[i] for i in active])
        rounds += 1
        steps += out.decode_steps
        still = []
        for j, i in enumerate(active):
            text, count = out.texts[j], len(out.tokens[j])
            used[i] += count
            end = _stopped_at_equals(out, j, tuple(stop_strings))
            if end is None:  # a stop token, a stop string or the budget: the row is done
                texts[i] += text
                ids[i] += out.completion_ids[j]  # with its stop token: what a trainer scores
                sampled[i] += [1] * len(out.completion_ids[j])
                stopped[i] = out.stopped[j]
                continue
            value = calculate(texts[i] + text[:end])
            if value is None:  # "x =": the model's own text, and it goes on writing
                texts[i] += text
                ids[i] += out.tokens[j]
                sampled[i] += [1] * count
            else:
                texts[i] += text[:end] + value
                more, mask = _filled(tok, out.tokens[j], text, end, value)
                ids[i] += more
                sampled[i] += mask
            inserts[i] += value is not None
            stops[i] += 1
            if used[i] < settings.max_new_tokens and stops[i] < MAX_STOPS:
                still.append(i)
        active = still
    return CalcSamples(texts, inserts, used, stopped, ids, sampled, prompt_ids, steps)
