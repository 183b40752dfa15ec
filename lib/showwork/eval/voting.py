"""Majority voting over extracted answers.

Answers are compared by their canonical numeric form (`answers.normalize`),
so `18`, `18.0` and `$18` are one answer. Rules:
* "no answer" (None) never wins against a real answer; it wins only when no
  sample produced one, and then the vote is None.
* Ties are broken by the earliest sample that gave the answer: sample order
  is the sampling order (for consensus, the temperature list in config
  order, coolest first), so a tie goes to the answer found first. This is
  deterministic and needs no second source of randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Vote:
    answer: str | None  # the winning canonical answer, None if no sample answered
    count: int  # samples that gave the winner
    total: int  # samples voted over (answered or not)
    margin: float  # (winner - runner-up) / total, 0 on a tie or no answer


def majority(values: Sequence[str | None]) -> Vote:
    """Vote over canonical answers (None for a sample without one)."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        if value is None:
            continue
        counts[value] = counts.get(value, 0) + 1
        first.setdefault(value, i)
    total = len(values)
    if not counts:
        return Vote(None, 0, total, 0.0)
    ranked = sorted(counts, key=lambda v: (-counts[v], first[v]))
    winner = ranked[0]
    runner_up = counts[ranked[1]] if len(ranked) > 1 else 0
    return Vote(winner, counts[winner], total, (counts[winner] - runner_up) / total if total else 0.0)
