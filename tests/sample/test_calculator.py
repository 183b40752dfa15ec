"""Sampling with a calculator in the loop (showwork.sample.calculator): rounds that stop at "=",
the value written in, the model's budget kept; on a scripted model and on the real 270M."""

from __future__ import annotations

import re

import pytest

from showwork.sample import calculator, sampler
from showwork.task import arithmetic

STOP = ("</answer>",)
MERGED = 0x10000


class Scripted:
    """A model that writes `segments` in turn, one per "=" already in its completion, and writes its
    own (wrong) value after a "=" nobody filled. One character is one token."""

    def __init__(self, prompt: str, segments: list[str], own_value: str = " 23", merge: str = ""):
        self.prompt, self.segments, self.own_value, self.rounds = prompt, segments, own_value, 0
        self.calls = []
        self.merge = merge  # characters the last token of a "=" stop carries after the "="

    class Tokenizer:
        """One id a character, but encoding merges "ab" into one id (MERGED), as SentencePiece merges:
        a row whose text were encoded again would show MERGED where the model wrote "a", "b"."""

        @staticmethod
        def decode(ids):
            return "".join("ab" if i == MERGED else chr(i) for i in ids)

        @staticmethod
        def encode(text, bos=False):
            return [1] * bos + [MERGED if part == "ab" else ord(part) for part in re.findall(r"ab|.", text, re.S)]

    tokenizer = Tokenizer()

    def continuation(self, completion: str) -> str:
        k = completion.count("=")
        if completion.endswith("="):  # the calculator wrote nothing: the model does
            return self.own_value + self.segments[k] if k < len(self.segments) else self.own_value
        return "".join(self.segments[k:]) if k < len(self.segments) else ""

    def generate(self, loaded, prompts, settings, *, batch_size, stop_strings, row_seeds, prompt_ids, group,
                 prompt_len, budgets):
        self.rounds += 1
        self.calls.append({"prompt_ids": prompt_ids, "group": group, "prompt_len": prompt_len, "budgets": budgets})
        out = sampler.Samples([], [], [], [], [])
        for prompt, given, budget in zip(prompts, prompt_ids, budgets):
            start = self.tokenizer.encode(self.prompt, bos=True)
            assert given[:len(start)] == start and MERGED not in given[len(start):]  # ids, not the text encoded again
            assert self.tokenizer.decode(given) == self.tokenizer.decode(start) + prompt[len(self.prompt):]
            text = self.continuation(prompt[len(self.prompt):])
            stops = [text.index(s) + len(s) for s in stop_strings if s in text]
            cut = min(stops) if stops else len(text)
            merged = self.merge if stops and text[:cut].endswith("=") else ""
            text = (text[:cut] + merged)[:budget]  # as the sampler: a row stops at its own budget
            ids = [ord(c) for c in text]
            out.texts.append(text)
            out.tokens.append(ids)
            out.completion_ids.append(ids)
            out.prompt_tokens.append([])
            out.stopped.append(bool(stops) and cut <= budget)
            out.decode_steps = max(out.decode_steps, len(ids))
        return out


def run(monkeypatch, model: Scripted, max_new: int = 256, rows: int = 1):
    monkeypatch.setattr(sampler, "generate", model.generate)
    return calculator.generate(model, [model.prompt] * rows, sampler.SampleSettings(max_new_tokens=max_new),
                               row_seeds=list(range(rows)), stop_strings=STOP)


def test_each_value_the_model_asks_for_is_the_calculators(monkeypatch):
    model = Scripted("Q: 48 clips in April, half as many in May, and 5 more. ",
                     ["Half of 48 is 48 / 2 =", ". Then 24 + 5 =", " clips.\n<answer>29</answer>"])
    out = run(monkeypatch, model, rows=2)
    want = "Half of 48 is 48 / 2 = 24. Then 24 + 5 = 29 clips.\n<answer>29</answer>"
    assert out.texts == [want, want] and out.inserts == [2, 2] and out.stopped == [True, True]
    assert arithmetic.wrong(out.texts[0]) == []
    assert out.tokens[0] == len(want) - len(" 24") - len(" 29")  # the model's tokens only
    assert model.rounds == 3


def test_an_equals_that_closes_no_expression_is_left_to_the_model(monkeypatch):
    model = Scripted("Q: ", ["Let x =", ", so 2 + 3 =", ".\n<answer>5</answer>"], own_value=" the count")
    out = run(monkeypatch, model)
    assert out.texts == ["Let x = the count, so 2 + 3 = 5.\n<answer>5</answer>"] and out.inserts == [1]


def test_gsm8k_annotations_are_closed_as_gsm8k_writes_them(monkeypatch):
    model = Scripted("Q: ", ["She sold <<48/2=", "24 clips.\n<answer>24</answer>"])
    out = run(monkeypatch, model)
    assert out.texts == ["She sold <<48/2=24>>24 clips.\n<answer>24</answer>"]


def test_the_budget_counts_the_models_tokens_and_cuts_a_later_round(monkeypatch):
    model = Scripted("Q: ", ["48 / 2 =", " and then a long tail of words that never stops"])
    out = run(monkeypatch, model, max_new=20)
    assert out.tokens == [20] and out.stopped == [False] and out.inserts == [1]
    assert out.texts == ["48 / 2 = 24 and then a "]  # 8 tokens, the value, 12 more
    assert [c["budgets"] for c in model.calls] == [[20], [12]]  # the second round decodes only what is left
    assert out.decode_steps == 20


def test_a_row_that_keeps_writing_equations_ends_after_max_stops(monkeypatch):
    model = Scripted("Q: ", ["\n1 + 1 ="] * (calculator.MAX_STOPS + 5))
    out = run(monkeypatch, model, max_new=10_000)
    assert out.inserts == [calculator.MAX_STOPS] and out.stopped == [False] and model.rounds == calculator.MAX_STOPS


def test_a_row_that_keeps_writing_equals_signs_that_close_nothing_ends_after_max_stops(monkeypatch):
    """Every "=" costs a round, filled or not: rounds are bounded by stops, not only by the budget."""
    model = Scripted("Q: ", ["so x ="] * (calculator.MAX_STOPS + 5), own_value="")
    out = run(monkeypatch, model, max_new=10_000)
    assert out.inserts == [0] and model.rounds == calculator.MAX_STOPS


def test_an_equals_merged_with_what_follows_has_that_tail_replaced_by_the_value(monkeypatch):
    """SentencePiece may spell "=" together with the model's next characters ("=2"): the row stopped
    there, the model's "2" is dropped and the calculator's value written instead."""
    model = Scripted("Q: ", ["48 / 2 =", ". Done.\n<answer>24</answer>"], merge=" 2")
    out = run(monkeypatch, model)
    assert out.texts == ["48 / 2 = 24. Done.\n<answer>24</answer>"] and out.inserts == [1]


@pytest.mark.slow
def test_on_the_real_model_every_equation_it_writes_is_right(gemma270m):
    """Gemma 3 270M continuing a list of sums it makes up: with the calculator none is wrong (plain
    greedy, on the same prompt, gets at least one wrong)."""
    prompt = "23 * 47 = 1081\n358 + 467 = 825\n64 * 29 = 1856\n"
    settings = sampler.SampleSettings(max_new_tokens=48)
    plain = sampler.generate(gemma270m, [prompt], settings, batch_size=1).texts[0]
    calc = calculator.generate(gemma270m, [prompt], settings, row_seeds=[0], batch_size=1)
    assert calc.inserts[0] >= 2 and arithmetic.equations(calc.texts[0])
    assert arithmetic.wrong(calc.texts[0]) == [], calc.texts[0]
    assert calc.tokens[0] <= 48
    assert arithmetic.wrong(plain), plain  # on this CPU plain greedy writes 120 * 18 = 1848
    print("plain:", plain, "calc:", calc.texts[0], sep="\n")


def mask_string(out, row=0) -> str:
    """The row's completion with the calculator's characters shown as '#' (scripted: one char, one id)."""
    return "".join(chr(i) if m else "#" for i, m in zip(out.completion_ids[row], out.sampled[row]))


def test_rows_go_on_from_their_ids_and_the_calculators_ids_are_marked_not_sampled(monkeypatch):
    """What a trainer scores: the completion's ids are the ones the rows conditioned on, round after
    round, and `sampled` is 0 exactly on what the calculator wrote (GRPO masks those out of its loss)."""
    model = Scripted("Q: 48 clips. ", ["Half is about 48 / 2 =", ". Then 24 + 5 =", " clips.\n<answer>29</answer>"])
    monkeypatch.setattr(sampler, "generate", model.generate)
    out = calculator.generate(model, [model.prompt] * 2, sampler.SampleSettings(max_new_tokens=256),
                              row_seeds=[0, 1], stop_strings=STOP, group=2, prompt_len=64)
    assert mask_string(out) == "Half is about 48 / 2 =###. Then 24 + 5 =### clips.\n<answer>29</answer>"
    assert model.Tokenizer.decode(out.completion_ids[1]) == out.texts[1]
    assert out.prompt_tokens[0] == model.Tokenizer.encode(model.prompt, bos=True)
    # The first round shares the group's prefill at the fixed length; later rows differ.
    assert [(c["group"], c["prompt_len"]) for c in model.calls] == [(2, 64), (1, None), (1, None)]
    assert model.calls[1]["prompt_ids"][0] == out.prompt_tokens[0] + out.completion_ids[0][:len("Half is about 48 / 2 = 24")]


def test_a_merged_tail_is_not_the_models_the_equals_spelled_again_is_the_calculators(monkeypatch):
    model = Scripted("Q: ", ["48 / 2 =", ". Done.\n<answer>24</answer>"], merge=" 2")
    out = run(monkeypatch, model)
    assert mask_string(out) == "48 / 2 =###. Done.\n<answer>24</answer>"
    assert out.tokens == [len("48 / 2 = 2") + len(". Done.\n<answer>24</answer>")]  # the model wrote " 2" too


def test_a_token_holding_the_equals_and_more_is_spelled_again_up_to_the_equals():
    """SentencePiece's "=2" as one token: the model's "=" inside it is written again as "=" (the
    calculator's, as the value is), the rest of the model's ids kept as sampled."""
    pieces = {1: "48 / 2 ", 2: "=2", 3: "=", 4: " 24"}

    class Tok:
        @staticmethod
        def decode(ids):
            return "".join(pieces[i] for i in ids)

        @staticmethod
        def encode(text, bos=False):
            return {"=": [3], " 24": [4]}[text]

    ids, sampled = calculator._filled(Tok, [1, 2], "48 / 2 =2", len("48 / 2 ="), " 24")
    assert ids == [1, 3, 4] and sampled == [1, 0, 0]
