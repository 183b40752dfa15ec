"""Sampled completions as markdown table cells: whatever a model writes stays in its cell."""

from __future__ import annotations

import pytest

from showwork.eval import report
from showwork.markdown import cell
from showwork.train import loop

NASTY = [
    "<reasoning>2 | 3 = 5</reasoning>\n<answer>5</answer>",
    "line one\r\nline two\rthree",
    "a `code` span and a \\| escaped pipe",
    "||||",
    "",
]


@pytest.mark.parametrize("text", NASTY, ids=range(len(NASTY)))
def test_a_cell_is_one_line_without_pipes_and_shows_tags(text):
    out = cell(text)
    assert "\n" not in out and "\r" not in out and "|" not in out
    assert out.startswith("`") and out.endswith("`") and out.count("`") == 2  # one code span: tags show as text
    if "<answer>" in text:
        assert "<answer>5</answer>" in out


def test_a_cell_is_cut_at_its_limit():
    assert cell("x" * 500, 280) == "`" + "x" * 280 + " …`"


def record(step, texts):
    return {"step": step, "prompt": "Q?\n|x|", "answer": "4|2", "round": 0,
            "completions": [{"text": t, "reward": 1.0, "rewards": {}, "advantage": 0.5, "tokens": 3, "stopped": True}
                            for t in texts]}


def cells_per_row(md: str) -> set[int]:
    rows = [line for line in md.splitlines() if line.startswith("|")]
    return {len(line.strip("|").split("|")) for line in rows}


def test_report_and_tensorboard_tables_keep_every_row_whole():
    samples = {"first": [record(1, NASTY)], "last": [record(9, NASTY[::-1])]}
    md = "\n".join(report.samples_markdown(samples))
    assert "step 1 beside step 9" in md and cells_per_row(md) == {3}
    assert cells_per_row(loop.sample_markdown(record(1, NASTY))) == {4}
    html = report.to_html(md, {}, "t")
    assert "&lt;answer&gt;5&lt;/answer&gt;" in html  # shown, escaped, not read as a tag
