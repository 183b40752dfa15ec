"""answers.py: extraction, normalisation and format checks on realistic completions."""

import time

import pytest

from showwork.task import answers

# (completion, expected canonical value, expected method)
EXTRACTION = [
    ("<reasoning>48/2 = 24, 48 + 24 = 72</reasoning>\n<answer>72</answer>", "72", "xml"),
    ("<reasoning>r</reasoning><answer> 10,800 </answer>", "10800", "xml"),
    ("<reasoning>r</reasoning><answer>$1,200.50</answer>", "1200.5", "xml"),
    ("<reasoning>r</reasoning><answer>3/4</answer>", "0.75", "xml"),
    ("<reasoning>r</reasoning><answer>1/3</answer>", "1/3", "xml"),
    ("<reasoning>r</reasoning><answer>-5</answer>", "-5", "xml"),
    ("<reasoning>r</reasoning><answer>5.0</answer>", "5", "xml"),
    ("<reasoning>r</reasoning><answer>72.</answer>", "72", "xml"),
    ("<reasoning>r</reasoning><answer>18 apples</answer>", "18", "xml"),
    ("<reasoning>r</reasoning><answer>50%</answer>", "50", "xml"),
    ("<reasoning>r</reasoning><answer>−7</answer>", "-7", "xml"),
    ("<reasoning>r</reasoning><answer>٧٢</answer>", "72", "xml"),
    ("<reasoning>r</reasoning><answer>７２</answer>", "72", "xml"),
    ("<reasoning>r</reasoning><answer>0.5</answer>", "0.5", "xml"),
    ("<reasoning>r</reasoning><answer>.5</answer>", "0.5", "xml"),
    ("<reasoning>r</reasoning><answer>1,000,000</answer>", "1000000", "xml"),
    ("<reasoning>r</reasoning><answer>2.50 dollars.</answer>", "2.5", "xml"),
    ("<reasoning>r</reasoning><answer>1e3</answer>", "1000", "xml"),
    # two answers: the last complete block is the final word
    ("<answer>3</answer> wait, no <answer>4</answer>", "4", "xml"),
    # nested tags: the innermost of the last block
    ("<answer><answer>9</answer></answer>", "9", "xml"),
    # ambiguous or non-numeric answer blocks give no value
    ("<reasoning>r</reasoning><answer>3 or 4</answer>", None, "xml"),
    ("<reasoning>r</reasoning><answer>1,2,3</answer>", None, "xml"),
    ("<reasoning>r</reasoning><answer>seventy-two</answer>", None, "xml"),
    ("<reasoning>r</reasoning><answer>1e999999</answer>", None, "xml"),
    ("<reasoning>r</reasoning><answer>NaN</answer>", None, "xml"),
    ("<reasoning>r</reasoning><answer>inf</answer>", None, "xml"),
    ("<reasoning>r</reasoning><answer>3/0</answer>", None, "xml"),
    ("<reasoning>r</reasoning><answer>" + "9" * 100 + "</answer>", None, "xml"),
    # unclosed answer tag falls through to the last number
    ("<reasoning>2+2=4</reasoning><answer>4", "4", "last_number"),
    ("The total is \\boxed{42}.", "42", "boxed"),
    ("So \\boxed{\\frac{3}{4}} hmm", None, "boxed"),
    ("We get \\boxed{1,234}", "1234", "boxed"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72", "hashes"),
    ("steps...\n#### $1,080", "1080", "hashes"),
    ("Therefore, the answer is 18.", "18", "answer_is"),
    ("The final answer is: $25.50 per hour", "25.5", "answer_is"),
    ("Final answer: 12", "12", "answer_is"),
    ("THE ANSWER IS -3 degrees", "-3", "answer_is"),
    ("She has 3 apples and buys 5 more, so 8 apples", "8", "last_number"),
    ("He paid $10,800 in total.", "10800", "last_number"),
    ("I am not sure.", None, "none"),
    ("", None, "none"),
    ("<answer></answer>", None, "none"),
    ("<reasoning>no numbers at all</reasoning>", None, "none"),
]


@pytest.mark.parametrize("completion, value, method", EXTRACTION)
def test_extraction(completion, value, method):
    found = answers.extract(completion)
    assert found.method == method
    assert found.value == value


def test_table_is_large_and_varied():
    assert len(EXTRACTION) >= 40
    assert {m for _, _, m in EXTRACTION} == {"xml", "boxed", "hashes", "answer_is", "last_number", "none"}


@pytest.mark.parametrize("a, b, same", [
    ("18", "18.0", True), ("$18", "18", True), ("18.00", "$18", True), ("10,800", "10800", True),
    ("3/4", "0.75", True), ("1/3", "0.333", False), ("-5", "5", False), ("18", "eighteen", False),
    (None, "1", False), ("1e999999", "1e999999", False),
])
def test_same_number(a, b, same):
    assert answers.same_number(a, b) is same


@pytest.mark.parametrize("completion, gold, correct", [
    ("<reasoning>48+24=72</reasoning><answer>72</answer>", "72", True),
    ("<reasoning>r</reasoning><answer>72.0</answer>", "72", True),
    ("<reasoning>r</reasoning><answer>$72</answer>", "72", True),
    ("<reasoning>r</reasoning><answer>71</answer>", "72", False),
    ("the answer is 72", "72", True),
    ("no idea", "72", False),
])
def test_is_correct(completion, gold, correct):
    assert answers.is_correct(completion, gold) is correct


@pytest.mark.parametrize("text, has_r, has_a, well, words", [
    ("<reasoning>one two three</reasoning>\n<answer>5</answer>", True, True, True, 3),
    ("  <reasoning>a b</reasoning><answer>5</answer>\n", True, True, True, 2),
    ("<reasoning>a</reasoning><answer>5</answer> trailing chatter", True, True, False, 1),
    ("Sure! <reasoning>a</reasoning><answer>5</answer>", True, True, False, 1),
    ("<answer>5</answer><reasoning>a</reasoning>", True, True, False, 1),
    ("<reasoning>a</reasoning>text<answer>5</answer>", True, True, False, 1),
    ("<reasoning>a</reasoning><answer>5</answer><answer>6</answer>", True, True, False, 1),
    ("<reasoning><reasoning>a</reasoning></reasoning><answer>5</answer>", True, True, False, 1),
    ("<reasoning>a</reasoning>", True, False, False, 1),
    ("<answer>5</answer>", False, True, False, 0),
    ("<reasoning></reasoning><answer>5</answer>", False, True, False, 0),
    ("plain text", False, False, False, 0),
])
def test_format(text, has_r, has_a, well, words):
    flags = answers.check_format(text)
    assert (flags.has_reasoning, flags.has_answer, flags.well_formed, flags.reasoning_words) == (has_r, has_a, well, words)


ADVERSARIAL = {
    "100k of text": "word " * 20_000 + "<answer>7</answer>",
    "100k of digits": "1" * 100_000,
    "100k digits and commas": "1," * 50_000,
    "thousands of open tags": "<answer>" * 20_000 + "5",
    "thousands of close tags": "</answer>" * 20_000,
    "nested reasoning": "<reasoning>" * 10_000 + "x" + "</reasoning>" * 10_000 + "<answer>1</answer>",
    "alternating tags": "<answer>1</answer>" * 10_000,
    "unclosed boxed": "\\boxed{" + "{" * 50_000,
    "many boxed": "\\boxed{1}" * 10_000,
    "answer is spam": "the answer is " * 10_000,
    "hashes spam": "####" * 25_000,
    "unicode digits": "٣" * 100_000,
    "exponent bait": "<answer>1e999999999</answer>",
    "slash chains": "1/" * 50_000,
    "whitespace": " " * 100_000 + "\n" * 1000,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_completions_are_fast_and_safe(name):
    text = ADVERSARIAL[name]
    start = time.perf_counter()
    found = answers.extract(text)
    flags = answers.check_format(text)
    answers.is_correct(text, "5")
    elapsed = time.perf_counter() - start
    assert elapsed < 0.05, f"{name}: {elapsed * 1000:.1f} ms"
    assert found.method in {"xml", "boxed", "hashes", "answer_is", "last_number", "none"}
    assert isinstance(flags.well_formed, bool)


def test_non_string_input_is_not_an_answer():
    assert answers.extract(None).value is None
    assert answers.check_format(None).well_formed is False
