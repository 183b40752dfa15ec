"""Sampling with a calculator in the loop, as the GSM8K paper evaluated its models.

A small model's plan is often right and its sums wrong. Here, when a row writes an
expression and "=" ("48 / 2 =", or GSM8K's annotation "<<48/2="), the row stops, the host
computes the value with showwork.task.arithmetic (numbers and + - * / only, exact
fractions, no `eval`, bounded size), writes it after the "=" (" 24", or "24>>"), and the row
goes on from there. Rows run in rounds through the one sampler (`sampler.generate`): each
round stops rows at "=" as well as at the caller's stop strings, and a row that stopped at an
equation is prefilled again with what it wrote and the value, and continues. A "=" that
closes no expression ("x =") is left to the model.

What the calculator wrote is never the model's: evaluation reports it as its own method
(`greedy+calc`), never mixed into plain greedy accuracy, and each sample records how many
values were inserted. The token budget counts the model's tokens only. Greedy rows give the
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


def generate(loaded, prompts: list[str], settings: sampler.SampleSettings, *, row_seeds: list[int],
             batch_size: int = 8, stop_strings: tuple[str, ...] = ()) -> CalcSamples:
    """Complete each prompt with the calculator writing every value the model asks for."""
    n = len(prompts)
    texts, inserts, used, stops = [""] * n, [0] * n, [0] * n, [0] * n
    stopped, active, rounds = [False] * n, list(range(n)), 0
    while active:
        out = sampler.generate(loaded, [prompts[i] + texts[i] for i in active], settings, batch_size=batch_size,
                               stop_strings=tuple(stop_strings) + (EQUALS,),
                               row_seeds=[(row_seeds[i] + 7919 * rounds) % 2**32 for i in active])
        rounds += 1
        still = []
        for j, i in enumerate(active):
            text, count = out.texts[j], len(out.tokens[j])
            if used[i] + count > settings.max_new_tokens:  # a later round ran past the row's budget
                count = settings.max_new_tokens - used[i]
                texts[i] += loaded.tokenizer.decode(out.tokens[j][:count])
                used[i] += count
                continue
            used[i] += count
            end = _stopped_at_equals(out, j, tuple(stop_strings))
            if end is None:  # a stop token, a stop string or the budget: the row is done
                texts[i] += text
                stopped[i] = out.stopped[j]
                continue
            value = calculate(texts[i] + text[:end])
            texts[i] += text if value is None else text[:end] + value  # "x =": the model's own text
            inserts[i] += value is not None
            stops[i] += 1
            if used[i] < settings.max_new_tokens and stops[i] < MAX_STOPS:
                still.append(i)
        active = still
    return CalcSamples(texts, inserts, used, stopped)
