"""rewards.py: every seed reward against completions scored by hand; adversarial inputs."""

import time

import pytest

from showwork.task import rewards

GOOD = "<reasoning>48 / 2 = 24 clips in May. 48 + 24 = 72 in total.</reasoning>\n<answer>72</answer>"
WRONG = "<reasoning>48 + 48 = 96</reasoning><answer>96</answer>"
CLOSE = "<reasoning>about</reasoning><answer>70</answer>"  # 70/72 = 0.972: within 10%
NEAR = "<reasoning>about</reasoning><answer>60</answer>"  # 60/72 = 0.833: within 20%
SPACED = "<reasoning>r</reasoning><answer>1 000</answer>"
NO_TAGS = "The answer is 72."
DOUBLE = "<reasoning>a</reasoning><answer>72</answer><answer>72</answer>"
TEXT_ANSWER = "<reasoning>r</reasoning><answer>seventy-two</answer>"
STEPS = ("<reasoning>\n1. She sold 48 clips in April.\n2. In May she sold 48 / 2 = 24.\n"
         "3. Total is 48 + 24 = 72.\n</reasoning>\n<answer>72</answer>")
LONG = "<reasoning>" + " ".join(["word"] * 60) + "</reasoning><answer>72</answer>"


def one(fn, completion, gold="72"):
    return fn(["q"], [completion], [gold])[0]


@pytest.mark.parametrize("completion, expected", [
    (GOOD, 3.0), (WRONG, 3.0), (NO_TAGS, 0.0), (DOUBLE, 0.0), ("  " + GOOD + "\n", 3.0), (GOOD + " extra", 0.0),
])
def test_format_exact(completion, expected):
    assert one(rewards.format_exact, completion) == expected


@pytest.mark.parametrize("completion, expected", [
    (GOOD, 2.0),  # four tags once each
    (NO_TAGS, -2.0),  # four missing
    (DOUBLE, 0.0),  # reasoning tags once (+0.5 +0.5), answer tags twice (-0.5 -0.5)
    ("<reasoning>x</reasoning>", 0.0),  # two present, two missing
])
def test_format_approx(completion, expected):
    assert one(rewards.format_approx, completion) == expected


@pytest.mark.parametrize("completion, gold, expected", [
    (GOOD, "72", 3.0),
    ("<reasoning>r</reasoning><answer>72.0</answer>", "72", 3.0),
    ("<reasoning>r</reasoning><answer>$72</answer>", "72", 3.0),
    (SPACED, "1000", 1.5),
    (CLOSE, "72", 0.5),
    (NEAR, "72", 0.25),
    (WRONG, "72", -1.0),
    (TEXT_ANSWER, "72", -1.0),
    (NO_TAGS, "72", 0.0),
    ("<reasoning>r</reasoning><answer>5</answer>", "0", -1.0),
])
def test_answer(completion, gold, expected):
    assert one(rewards.answer_match, completion, gold) == expected


@pytest.mark.parametrize("completion, expected", [
    (GOOD, 1.5), ("<reasoning>r</reasoning><answer>72 clips</answer>", 1.5),
    ("<reasoning>r</reasoning><answer>about 72, maybe 73</answer>", 1.5), (WRONG, 0.0), (NO_TAGS, 0.0),
])
def test_numbers(completion, expected):
    assert one(rewards.numbers, completion) == expected


WRONG_LONG = "<reasoning>" + " ".join(["w"] * 25) + "</reasoning><answer>9</answer>"


@pytest.mark.parametrize("completion, expected", [
    (LONG, 2.1),  # 60 words: r = 0.5, tagged right: a = 1 -> (0.3 + 0.4) * 3
    (GOOD, 1.2),  # 12 words: r = 0; right: 0.4 * 3
    (WRONG_LONG, 0.9),  # 25 words, wrong: 0.6 * 0.5 * 3
    (NO_TAGS, 0.0),  # right, but not inside <answer>: no credit
    ("<reasoning>r</reasoning><answer>72.0</answer>", 1.2),  # the same number
    (WRONG, 0.0),
])
def test_trajectory(completion, expected):
    assert one(rewards.trajectory, completion) == pytest.approx(expected)


def test_trajectory_ranks_right_and_short_above_wrong_and_long():
    """The ordering the trajectory system relied on."""
    assert one(rewards.trajectory, GOOD) > one(rewards.trajectory, WRONG_LONG)


@pytest.mark.parametrize("completion, expected", [
    # format 3.0, depth 3 steps * 0.3 = 0.9, answer 3.0 -> 0.9 + 0.36 + 0.9
    (STEPS, 2.16),
    # format 3.0, depth 0.5 (60 words, no steps), answer 3.0 -> 0.9 + 0.2 + 0.9
    (LONG, 2.0),
    # format 3.0, depth 0, wrong -> 0.9
    (WRONG, 0.9),
    # both blocks but not well formed: format 0; answer inside the last <answer> -> 0.9
    (DOUBLE, 0.9),
    (NO_TAGS, 0.0),  # right, but no tags: nothing
])
def test_hybrid(completion, expected):
    assert one(rewards.hybrid, completion) == pytest.approx(expected)


def test_reasoning_depth_is_capped():
    many = "<reasoning>" + "".join(f"\n{i}. step {i}" for i in range(1, 30)) + " " + "w " * 60 + "</reasoning>"
    assert rewards.reasoning_depth(many) == 2.0
    bullets = "<reasoning>\n- a\n* b\n• c\nStep 4: d</reasoning>"
    assert rewards.reasoning_depth(bullets) == pytest.approx(1.2)


@pytest.mark.parametrize("completion, expected", [
    (GOOD, 30.0),  # 25 + 2 + 2 + 1 (48 / 2 = 24 shown)
    (WRONG, 5.0),  # 2 + 2 + 1 (five words of reasoning: not short)
    ("<reasoning>just think</reasoning><answer>72</answer>", 24.0),  # 25 + 2 + 2 - 5 (two words)
    ("<reasoning>so it is</reasoning><answer>96</answer>", -1.0),  # 2 + 2 - 5
    (NO_TAGS, 5.0),  # 25 correct - 15 format violation - 5 no reasoning at all
    ("<reasoning>48 + 24 = 72</reasoning><answer>72</answer> PS", 15.0),  # 25+2+2+1-15
    ("nothing", -20.0),  # -15 - 5
])
def test_composite(completion, expected):
    assert one(rewards.composite, completion) == expected


def test_composite_ranks_a_right_guess_over_a_worked_wrong_answer_and_under_a_worked_right_one():
    guess = "<reasoning>it is</reasoning><answer>72</answer>"
    scores = [one(rewards.composite, c) for c in (GOOD, guess, WRONG)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 3


def test_combined_weights_and_parts():
    totals, parts = rewards.combined({"format_exact": 0.5, "answer": 2.0}, ["q", "q"], [GOOD, WRONG], ["72", "72"])
    assert parts == {"format_exact": [3.0, 3.0], "answer": [3.0, -1.0]}
    assert totals == [1.5 + 6.0, 1.5 - 2.0]
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.combined({"bogus": 1.0}, ["q"], [GOOD], ["72"])


def test_non_string_completions_score_as_empty():
    for name, fn in rewards.REWARDS.items():
        assert fn(["q"], [None], ["72"]) == fn(["q"], [""], ["72"]), name


ADVERSARIAL = [
    "x" * 100_000,
    "<reasoning>" * 5000 + "</reasoning>" * 5000 + "<answer>" * 5000,
    "<reasoning>" + "1. step\n" * 10_000 + "</reasoning><answer>1e999999</answer>",
    "<reasoning>" + "9 * 9 = " * 10_000 + "</reasoning><answer>NaN</answer>",
    "<answer>" + "٣" * 50_000 + "</answer>",
    "- " * 50_000,
    "<reasoning>" + "1" * 100_000 + "</reasoning><answer>" + "2" * 1000 + "</answer>",
]


@pytest.mark.parametrize("name", sorted(rewards.REWARDS))
@pytest.mark.parametrize("index", range(len(ADVERSARIAL)))
def test_adversarial_completions_bounded_and_safe(name, index):
    start = time.perf_counter()
    value = rewards.REWARDS[name](["q"], [ADVERSARIAL[index]], ["72"])
    # Linear work takes under 20 ms here; backtracking would take seconds. The margin absorbs the
    # other test process sharing the cores.
    assert time.perf_counter() - start < 0.1
    assert len(value) == 1 and isinstance(value[0], float)


# A wrong attempt, as a model at each stage of learning the format writes it; the same completion with its
# answer block cut out is the abstention. The gold answer is 42; 7 earns no closeness credit.
ATTEMPTS = [
    "<reasoning>6 times 7 is 7.</reasoning>\n<answer>7</answer>",  # the format, a wrong answer
    "<reasoning>6 times 7 is 7.\n<answer>7</answer>",  # an unclosed reasoning block
    "6 times 7 is 7.\n<answer>7</answer>",  # an answer block only (the base model's best)
    "<answer>7</answer>",
]


def _recipes_with_grpo():
    from conftest import RECIPES, TIERS
    from showwork import config

    for path in sorted(RECIPES.glob("*.yaml")):
        cfg = config.load(path, TIERS / "cpu" / "tier.yaml")
        if cfg.grpo is not None:
            yield pytest.param(cfg.grpo.rewards, id=path.stem)


@pytest.mark.parametrize("weights", list(_recipes_with_grpo()))
@pytest.mark.parametrize("attempt", ATTEMPTS, ids=["format", "unclosed", "answer-only", "bare"])
def test_no_recipe_rewards_abstaining_over_a_wrong_attempt(weights, attempt):
    """quickstart once rewarded leaving the answer block out (0) over a wrong one (-1): its GRPO learned to
    abstain. Every shipped recipe's reward now ranks the attempt at least as high as the abstention."""
    abstain = attempt[: attempt.index("<answer>")]
    totals, _ = rewards.combined(weights, ["q", "q"], [attempt, abstain], ["42", "42"])
    assert totals[0] >= totals[1], (weights, totals)
