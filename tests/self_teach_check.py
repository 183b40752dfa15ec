"""What a self-teaching run must show, recounted from what it wrote (used by the recipe matrix and by
the real-270M test): every sample's kind re-diagnosed from its text, each round's analysis recounted
from its samples, and targeted problems of every failure kind the round had, none of them held out."""

from __future__ import annotations

import json
from pathlib import Path

from showwork.task import diagnosis


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_round(run: Path, round_: int, per_kind: int) -> dict:
    """One round's files against a recount; returns its analysis."""
    folder = run / "self-teach" / f"round-{round_}"
    samples = _jsonl(folder / "samples.jsonl")
    analysis = json.loads((folder / "analysis.json").read_text())
    rows = {r["id"]: r for r in _jsonl(run / "data" / "train.jsonl")}
    for s in samples:
        again = diagnosis.diagnose(s["text"], rows[s["id"]]["answer"], s["truncated"])
        assert again == {k: s[k] for k in again}, (s["id"], s["sample"], again)
    recount = diagnosis.analysis(samples)
    assert {k: analysis[k] for k in recount} == recount
    made = _jsonl(folder / "targeted.jsonl")
    assert analysis["targeted_by_kind"] == {k: sum(t["targeted_kind"] == k for t in made) for k in diagnosis.FAILURES}
    failing = [k for k, n in recount["failed_questions_by_kind"].items() if n]
    if per_kind:
        assert all(analysis["targeted_by_kind"][k] >= 1 for k in failing), (failing, analysis["targeted_by_kind"])
    held_out = {r["id"] for r in _jsonl(run / "data" / "eval.jsonl")}
    asked = {s["id"] for s in samples}
    for t in made:
        assert t["id"] not in held_out and t["id"] not in asked and t["targets"] in asked
        if t["how"] == "regenerated":
            assert t["template"] == rows[t["targets"]]["template"] and t["question"] != rows[t["targets"]]["question"]
    return analysis


def check_run(run: Path, rounds: int, per_kind: int) -> None:
    every = json.loads((run / "self-teach" / "analysis.json").read_text())
    assert [a["round"] for a in every] == list(range(rounds))
    for r in range(rounds):
        assert check_round(run, r, per_kind) == every[r]
