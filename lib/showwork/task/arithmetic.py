"""The arithmetic a solution writes out ("48 / 2 = 24", "3 x 4 + 2 = 14"), found and checked.

Worked solutions state each step as an expression and its value. Checking every
such equation separates a slip in arithmetic (the plan was right, a sum was
not) from a wrong setup (every written sum is right, the answer still is
not), which is what self-teaching's error analysis reports.

Safe by construction: numbers and the four operators only, evaluated exactly
with fractions (no `eval`), at most 8 operators and 15 digits per number, and
only the first 20,000 characters of a text; a number too long to convert is not judged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_NUM = r"\$?\d{1,15}(?:,\d{3}){0,4}(?:\.\d{1,10})?"
_OP = r"[-+*/×x÷]"
# An expression of 2..9 numbers, "=", and its stated value; not preceded by a digit or a dot, so
# "12.5" is not read as "2.5", nor followed by one.
# A stated percentage ("30 / 120 = 25%") is a different claim: not judged.
_EQUATION = re.compile(rf"(?<![\d.,])(-?{_NUM}(?:[ \t]*{_OP}[ \t]*{_NUM}){{1,8}})[ \t]*=[ \t]*(-?{_NUM})(?!\d|%|,\d)")
_TOKEN = re.compile(rf"{_NUM}|{_OP}")
MAX_CHARS = 20_000


@dataclass(frozen=True)
class Equation:
    text: str  # as written, "48 / 2 = 24"
    value: Fraction  # the expression's exact value
    stated: Fraction  # what the text says it is

    @property
    def correct(self) -> bool:
        """Equal, or the stated value is the exact one rounded to the decimals it shows."""
        places = len(self.text.rsplit("=", 1)[1].strip().partition(".")[2])
        # <=: a value exactly half-way (1/8 = 0.125) is right rounded either way (0.12 or 0.13).
        return abs(self.value - self.stated) <= Fraction(1, 2 * 10 ** places) if places else self.value == self.stated


def _number(token: str) -> Fraction:
    return Fraction(token.replace("$", "").replace(",", ""))


def evaluate(expression: str) -> Fraction | None:
    """The exact value of `a op b op c ...` with * and / before + and -; None on division by zero."""
    expression = expression.strip()
    sign = -1 if expression.startswith("-") else 1
    tokens = _TOKEN.findall(expression.lstrip("-"))
    terms, term, op = [], sign * _number(tokens[0]), None
    for token in tokens[1:]:
        if re.fullmatch(_OP, token):
            op = token
            continue
        value = _number(token)
        if op in "*×x":
            term *= value
        elif op in "/÷":
            if value == 0:
                return None
            term /= value
        else:
            terms.append(term)
            term = value if op == "+" else -value
    return sum(terms, Fraction(0)) + term


def equations(text: str) -> list[Equation]:
    """Every `expression = value` in the text, in order."""
    out = []
    if not isinstance(text, str):
        return out
    for match in _EQUATION.finditer(text[:MAX_CHARS]):
        try:
            value = evaluate(match.group(1))
        except (ValueError, ZeroDivisionError):
            continue
        if value is not None:
            out.append(Equation(match.group(0), value, _number(match.group(2).lstrip("-")) *
                                (-1 if match.group(2).startswith("-") else 1)))
    return out


def wrong(text: str) -> list[str]:
    """The equations the text gets wrong, as written."""
    return [e.text for e in equations(text) if not e.correct]


# ---------------------------------------------------------------- the calculator

# What a calculator completes: a text that ends in an expression and "=", written out
# ("48 / 2 =") or as a GSM8K annotation ("<<48/2="); the last 200 characters are enough.
_OPEN = re.compile(rf"(<<[ \t]*)?(?<![\d.,])(-?{_NUM}(?:[ \t]*{_OP}[ \t]*{_NUM}){{1,8}})[ \t]*=[ \t]*$")
# An expression that is the tail of a longer one is not completed: "(2 + 3) * 4 + 1 =", "2^3 * 5 =",
# nine operators (one more than the grammar reads), "x3 + 4 =".
_GLUED = re.compile(r"[A-Za-z0-9)\]^%$]\Z")
_AFTER_OPERATOR = re.compile(rf"(?:{_OP}|[()\[\]^%])[ \t]*\Z")
CALC_TAIL = 200
CALC_LIMIT = Fraction(10) ** 15  # no larger result is written (nor is one with more digits read)


def written(value: Fraction) -> str:
    """A value as a worked solution writes it: 24, 12.5, 0.33, 0.13 (two decimals at most, the
    exact value rounded half away from zero), -3."""
    if value.denominator == 1:
        return str(value.numerator)
    cents = int(abs(value) * 100 + Fraction(1, 2))  # floor of |value| x 100 + 1/2
    if cents == 0:
        return "0"
    whole, part = divmod(cents, 100)
    text = f"{whole}.{part:02d}".rstrip("0").rstrip(".")
    return f"-{text}" if value < 0 else text


def calculate(text: str) -> str | None:
    """What a calculator writes after `text`, when it ends in an open equation ("48 / 2 =" or
    "<<48/2="): " 24" or, in GSM8K's annotation, "24>>"; None when it does not end in one (an
    "x =", a "=" after words), the value is undefined (division by zero) or too large."""
    tail = text[-CALC_TAIL:]
    match = _OPEN.search(tail)
    if match is None:
        return None
    before = tail[:match.start()]
    if not match.group(1) and (_GLUED.search(before) or _AFTER_OPERATOR.search(before)):
        return None
    try:
        value = evaluate(match.group(2))
    except (ValueError, ZeroDivisionError):
        return None
    if value is None or abs(value) >= CALC_LIMIT:
        return None
    if match.group(1):
        return f"{written(value)}>>"
    return written(value) if text.endswith((" ", "\t")) else f" {written(value)}"
