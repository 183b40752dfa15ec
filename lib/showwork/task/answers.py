"""The one definition of "correct", shared by rewards and evaluation.

Model output is untrusted text: every function here runs in time linear in
the input (no regex that can backtrack catastrophically), never raises on
odd input, and caps the length of a number it will interpret.

Extraction order (first that finds something wins):
  1. the last `<answer>…</answer>` block (innermost if tags are nested);
  2. the last `\\boxed{…}` (balanced braces);
  3. the last `#### N` line (GSM8K's own format);
  4. the last "the answer is N" / "final answer: N";
  5. the last number anywhere.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# Longest numeric token we interpret; longer digit runs are noise, and Python
# refuses int() of more than 4300 digits anyway.
MAX_NUMBER_CHARS = 64

REASONING_OPEN, REASONING_CLOSE = "<reasoning>", "</reasoning>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# One number: optional sign, digits with optional thousands separators,
# optional decimals, optional fraction or exponent. Possessive-free but
# unambiguous, so matching is linear.
_NUMBER = re.compile(
    r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?"
    r"|[-+−]?\.\d+"
)
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*:)\s*:?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Extraction:
    text: str | None  # the raw answer string found, None if nothing
    method: str  # "xml", "boxed", "hashes", "answer_is", "last_number" or "none"
    value: str | None  # canonical number, None if not numeric


def _ascii_digits(text: str) -> str:
    """Map other scripts' decimal digits (٣, ３) to ASCII; leave the rest."""
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch.isdecimal() and not ch.isascii():
            out.append(str(unicodedata.decimal(ch)))
        elif ch == "−":  # U+2212 minus sign
            out.append("-")
        else:
            out.append(ch)
    return "".join(out)


def _last_block(text: str, opening: str, closing: str) -> str | None:
    """Content of the last complete opening...closing block, innermost if nested."""
    end = text.rfind(closing)
    if end < 0:
        return None
    start = text.rfind(opening, 0, end)
    if start < 0:
        return None
    return text[start + len(opening):end].strip()


def xml_answer(text: str) -> str | None:
    """Content of the last complete <answer> block, innermost if nested."""
    return _last_block(text, ANSWER_OPEN, ANSWER_CLOSE)


def xml_reasoning(text: str) -> str | None:
    """Content of the last complete <reasoning> block, innermost if nested."""
    return _last_block(text, REASONING_OPEN, REASONING_CLOSE)


def boxed_answer(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    # Bounded scan: a boxed answer longer than 1000 chars is not an answer.
    limit = min(len(text), i + 1000)
    for j in range(i, limit):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def hashes_answer(text: str) -> str | None:
    pos = text.rfind("####")
    if pos < 0:
        return None
    match = _HASHES.match(text, pos)
    value = match.group(1).strip() if match else ""
    return value or None


def answer_is(text: str) -> str | None:
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    if last is None:
        return None
    tail = text[last.end(): last.end() + 200]
    number = _NUMBER.search(_ascii_digits(tail))
    return number.group(0) if number else None


def last_number(text: str) -> str | None:
    # Scan only the tail: the final number of a 100k-character ramble is near
    # its end, and this keeps the cost bounded.
    tail = _ascii_digits(text[-4000:])
    last = None
    for last in _NUMBER.finditer(tail):
        pass
    return last.group(0) if last else None


def extract(text: str) -> Extraction:
    """Find the answer in a completion; see the module docstring for the order."""
    if not isinstance(text, str):
        return Extraction(None, "none", None)
    for method, finder in (
        ("xml", xml_answer),
        ("boxed", boxed_answer),
        ("hashes", hashes_answer),
        ("answer_is", answer_is),
        ("last_number", last_number),
    ):
        found = finder(text)
        if found:
            return Extraction(found, method, normalize(found))
    return Extraction(None, "none", None)


# ---------------------------------------------------------------- numbers


def parse_number(text: str | None) -> Fraction | None:
    """A numeric answer as an exact Fraction, or None if it is not one number.

    Accepts `$1,200.50`, `10,800`, `3/4`, `-5`, `5.0`, `72.`, `18 apples`,
    `50%`, unicode digits. Rejects text with no number, several numbers
    (`3 or 4`), NaN/inf and magnitudes beyond 1e50 (overflow bait).
    """
    if not text:
        return None
    s = _ascii_digits(text.strip())
    if len(s) > 200:
        return None
    numbers = list(_NUMBER.finditer(s))
    if len(numbers) != 1:
        # "1,2,3" style lists and "3 or 4" are ambiguous: not one answer.
        return None
    raw = numbers[0].group(0)
    if len(raw) > MAX_NUMBER_CHARS:
        return None
    rest = (s[: numbers[0].start()] + " " + s[numbers[0].end():]).strip()
    # Allowed around the number: currency, percent, units and punctuation;
    # another digit would mean a second number, which finditer already caught.
    if any(ch.isdigit() for ch in rest):
        return None
    raw = raw.replace("−", "-").replace(",", "").replace(" ", "")
    try:
        if "/" in raw:
            num, den = raw.split("/")
            value = Fraction(Decimal(num)) / Fraction(Decimal(den))
        else:
            dec = Decimal(raw)
            if not dec.is_finite() or abs(dec.adjusted()) > 50:
                return None
            value = Fraction(dec)
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    return value


def normalize(text: str | None) -> str | None:
    """Canonical string for a numeric answer: `18`, `0.75`, `-5`, `1/3`."""
    value = parse_number(text)
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # terminating decimal
        return format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return f"{value.numerator}/{value.denominator}"


def same_number(a: str | None, b: str | None) -> bool:
    """True when both are numbers and equal exactly (`18`, `18.0`, `$18`)."""
    x, y = parse_number(a), parse_number(b)
    return x is not None and y is not None and x == y


def is_correct(completion: str, gold: str) -> bool:
    """The one correctness test: extract, normalise, compare exactly."""
    found = extract(completion)
    return found.value is not None and found.value == normalize(gold)


# ---------------------------------------------------------------- format


@dataclass(frozen=True)
class FormatFlags:
    has_reasoning: bool  # a complete, non-empty reasoning block
    has_answer: bool  # a complete, non-empty answer block
    well_formed: bool  # exactly one reasoning then one answer, nothing else around
    reasoning_words: int  # words in the (last) reasoning block


def check_format(text: str) -> FormatFlags:
    """Strict format: `<reasoning>R</reasoning> <answer>A</answer>`, one of each.

    Whitespace may surround the blocks; anything else (text before the
    reasoning, after the answer, duplicate or nested tags) is not well-formed.
    """
    if not isinstance(text, str):
        return FormatFlags(False, False, False, 0)
    reasoning = xml_reasoning(text)
    answer = xml_answer(text)
    counts = [text.count(tag) for tag in (REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)]
    well = False
    if counts == [1, 1, 1, 1] and reasoning and answer:
        stripped = text.strip()
        r_open, r_close = stripped.find(REASONING_OPEN), stripped.find(REASONING_CLOSE)
        a_open, a_close = stripped.find(ANSWER_OPEN), stripped.find(ANSWER_CLOSE)
        between = stripped[r_close + len(REASONING_CLOSE):a_open]
        well = (
            r_open == 0
            and r_open < r_close < a_open < a_close
            and stripped.endswith(ANSWER_CLOSE)
            and between.strip() == ""
        )
    words = len(reasoning.split()) if reasoning else 0
    return FormatFlags(bool(reasoning), bool(answer), well, words)


# ---------------------------------------------------------------- lm-evaluation-harness

# lm-evaluation-harness's gsm8k task (lm_eval/tasks/gsm8k/gsm8k.yaml): "strict-match"
# takes the first `#### N`, "flexible-extract" the last number-like run; both then
# drop commas, dollar signs and a trailing period before an exact string match.
# We report them beside our own extraction so numbers compare with published ones.
_LM_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_LM_FLEX = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def _lm_clean(text: str) -> str:
    text = text.replace(",", "").replace("$", "")
    return text[:-1] if text.endswith(".") else text


def lm_eval_strict(text: str) -> str | None:
    match = _LM_STRICT.search(text) if isinstance(text, str) else None
    return _lm_clean(match.group(1)) if match else None


def lm_eval_flexible(text: str) -> str | None:
    if not isinstance(text, str):
        return None
    last = None
    for last in _LM_FLEX.finditer(text):
        pass
    return _lm_clean(last.group(0)) if last else None


def lm_eval_match(extracted: str | None, gold: str) -> bool:
    return extracted is not None and extracted == _lm_clean(str(gold))
