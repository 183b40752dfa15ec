"""Written arithmetic found and checked exactly (self-teaching's arithmetic-slip detector)."""

from fractions import Fraction

import pytest

from showwork.task import arithmetic


@pytest.mark.parametrize("text, found", [
    ("48 / 2 = 24", [("48 / 2 = 24", True)]),
    ("Natalia sold 48/2=25 clips", [("48/2=25", False)]),
    ("He has 3 x 4 + 2 = 14 apples", [("3 x 4 + 2 = 14", True)]),  # x as times, precedence
    ("1+2*3=7", [("1+2*3=7", True)]),
    ("1+2*3=9", [("1+2*3=9", False)]),  # left to right would say 9: precedence says 7
    ("100 / 4 / 5 = 5", [("100 / 4 / 5 = 5", True)]),
    ("10 - 3 - 2 = 5", [("10 - 3 - 2 = 5", True)]),
    ("-5 + 3 = -2", [("-5 + 3 = -2", True)]),
    ("12.5 * 2 = 25", [("12.5 * 2 = 25", True)]),
    ("7/3 = 2.33", [("7/3 = 2.33", True)]),  # rounded to the places it shows
    ("7/3 = 2.34", [("7/3 = 2.34", False)]),
    ("7/2 = 3", [("7/2 = 3", False)]),  # no rounding to a whole number
    ("$1,200 * 2 = $2,400", [("$1,200 * 2 = $2,400", True)]),
    ("6 ÷ 3 = 2 and 2 × 5 = 10", [("6 ÷ 3 = 2", True), ("2 × 5 = 10", True)]),
    ("2+2 = 5 and 3*3 = 9", [("2+2 = 5", False), ("3*3 = 9", True)]),
    ("x = 5, total = 12", []),  # no arithmetic written
    ("5 / 0 = 1", []),  # undefined: not judged
    ("20 % 3 = 2", []),  # not one of the four operators
    ("30 / 120 = 25% of them", []),  # a stated percentage: another claim, not judged
    ("1" + ",000" * 1500 + " + 1 = 2", []),  # a number too long to be one: not judged, no crash
    ("", []),
])
def test_equations_are_found_and_checked(text, found):
    assert [(e.text, e.correct) for e in arithmetic.equations(text)] == found


def test_values_are_exact_fractions():
    (eq,) = arithmetic.equations("1/3 + 1/3 + 1/3 = 1")
    assert eq.value == Fraction(1) and eq.correct


def test_a_long_run_of_digits_costs_one_pass():
    import time

    text = "1" * 100_000 + " + 2 = 3 " + "9+" * 50_000
    started = time.perf_counter()
    arithmetic.equations(text)
    assert time.perf_counter() - started < 1.0


def test_non_text_has_no_equations():
    assert arithmetic.equations(None) == [] and arithmetic.wrong(None) == []


@pytest.mark.parametrize("text, written", [
    ("Half of them: 48 / 2 =", " 24"),
    ("so <<48/2=", "24>>"),  # GSM8K's calculator annotation
    ("3 x 4 + 2 = ", "14"),  # a space already written: none added
    ("10 / 3 =", " 3.33"),  # two decimals at most
    ("7 / 2 =", " 3.5"),
    ("5 - 8 =", " -3"),
    ("$1,200 - $200 =", " 1000"),
    ("12.5 * 2=", " 25"),
    ("1 / 3 - 1 / 3 =", " 0"),
    ("x =", None),  # no expression before the "="
    ("the number 7 =", None),  # one number is no sum
    ("5 / 0 =", None),  # undefined
    ("999999999999999 * 999999999999999 =", None),  # too large to write
    ("48 / 2 = 24", None),  # closed already
    ("48 / 2 = 24. Then 24 + 5 =", " 29"),  # only the last, open one
    ("1 / 8 =", " 0.13"),  # the exact value rounded half away from zero, not a float's 0.12
    ("-3 / 8 =", " -0.38"),
    ("<< 3*4=", "12>>"),
    ("Step 1: 2 + 2 =", " 4"),
    # The tail of a longer expression is not the expression: nothing is written.
    ("(2 + 3) * 4 + 1 =", None),
    ("2^3 * 5 =", None),
    ("1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 =", None),  # nine operators: one more than the grammar reads
    ("x3 + 4 =", None),
])
def test_the_calculator_completes_an_open_equation_and_nothing_else(text, written):
    assert arithmetic.calculate(text) == written
    if written is not None and not written.endswith(">>"):  # what it writes, the checker accepts
        assert arithmetic.wrong(text + written) == []
