"""Every sample gets one kind; the analysis counts them; failed questions are grouped by kind."""

import pytest

from showwork.task import diagnosis

RIGHT = "<reasoning>48 / 2 = 24 and 48 + 24 = 72</reasoning>\n<answer>72</answer>"
SLIP = "<reasoning>48 / 2 = 24 and 48 + 24 = 82</reasoning>\n<answer>82</answer>"
SETUP = "<reasoning>48 * 2 = 96</reasoning>\n<answer>96</answer>"
NO_TAGS = "48 / 2 = 24, so 72."
CUT = "<reasoning>48 / 2 = 24 and then we add and then"
CUT_BUT_DONE = "<reasoning>48 + 24 = 72</reasoning>\n<answer>72</answer>"


@pytest.mark.parametrize("text, truncated, kind, wrong", [
    (RIGHT, False, "correct", []),
    (CUT_BUT_DONE, True, "correct", []),  # the budget ran out after the answer: still right
    (SLIP, False, "arithmetic", ["48 + 24 = 82"]),
    (SETUP, False, "setup", []),
    ("<reasoning>48 + 24 = 70</reasoning>\n<answer>72</answer>", False, "arithmetic", ["48 + 24 = 70"]),  # right by luck
    (NO_TAGS, False, "format", []),
    (CUT, True, "length", []),
    (CUT, False, "format", []),  # stopped by itself without tags: a format failure, not length
    ("<reasoning>no sums here</reasoning>\n<answer>5</answer>", False, "setup", []),
])
def test_each_sample_gets_the_first_kind_that_applies(text, truncated, kind, wrong):
    got = diagnosis.diagnose(text, "72", truncated)
    assert got["kind"] == kind and got["wrong_equations"] == wrong


def test_the_analysis_counts_samples_questions_and_equations():
    samples = [{"id": "a", **diagnosis.diagnose(t, "72", c)} for t, c in ((RIGHT, False), (SLIP, False))]
    samples += [{"id": "b", **diagnosis.diagnose(t, "72", c)} for t, c in ((SLIP, False), (CUT, True))]
    samples += [{"id": "c", **diagnosis.diagnose(t, "72", c)} for t, c in ((SETUP, False), (SETUP, False))]
    got = diagnosis.analysis(samples)
    assert got["samples_by_kind"] == {"correct": 1, "length": 1, "format": 0, "arithmetic": 2, "setup": 2}
    assert (got["questions"], got["questions_solved"]) == (3, 1)
    # a's slip does not count: a was solved by another sample.
    assert got["failed_questions_by_kind"] == {"length": 1, "format": 0, "arithmetic": 1, "setup": 1}
    assert (got["equations"], got["wrong_equations"]) == (2 + 2 + 2 + 1 + 1 + 1, 2)
    assert diagnosis.failed_by_kind(samples) == {"setup": ["c"], "arithmetic": ["b"], "length": ["b"]}
