"""Fresh training problems aimed at what the model failed (self-teaching's targeted examples).

For each failure kind of a round (showwork.task.diagnosis), new problems like
the failed ones, each with its reference worked solution to learn from:

* `regenerated`: where the failed row names its template (reasoning-gym's
  gsm_symbolic draws every item from one of its generators), the same template
  drawn again with new names and numbers;
* `nearest`: otherwise (GSM8K, or a task without templates), the unused
  training row whose question shares the most words with the failed one.

Never a question of the eval split, never one already chosen this round (compared as
data.question_key normalizes them).
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable, Iterator

# How many items of a freshly seeded dataset to look through for one template (gsm_symbolic has
# about a hundred; each item picks one at random).
SEARCH = 4000
_WORD = re.compile(r"[a-z]+")


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little")


def regenerated(template: str, seed: int) -> Iterator[dict]:
    """Raw records drawn from `template` ("task#generator"), a fresh dataset per seed."""
    from showwork.task import word_problems
    from showwork.task.data import rg_record

    task, _, generator = template.partition("#")
    if task == "word-problems":
        yield from word_problems.regenerated(generator, seed, SEARCH)
        return
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(task, size=SEARCH, seed=seed)
    for i, index in enumerate(getattr(dataset, "task_indices", [])):
        if str(index) == generator:
            yield rg_record(dataset[i], template)


def _words(question: str) -> set[str]:
    return set(_WORD.findall(question.lower()))


def nearest(question: str, pool: list[dict], taken: set[str]) -> dict | None:
    """The pool row (its question not taken: data.question_key) whose question shares the largest share of
    words with `question`."""
    from showwork.task.data import question_key

    mine = _words(question)
    best, score = None, -1.0
    for row in pool:
        if question_key(row["question"]) in taken:
            continue
        theirs = _words(row["question"])
        overlap = len(mine & theirs) / (len(mine | theirs) or 1)
        if overlap > score:
            best, score = row, overlap
    return best


def targeted(failed: dict[str, list[dict]], pool: list[dict], per_kind: int, round_: int,
             to_row: Callable[[dict], dict | None], avoid: set[str]) -> list[dict]:
    """`per_kind` new rows per failure kind, cycling through that kind's failed rows.

    `failed`: kind -> failed rows (dicts with id, question, template?); `pool`: unused training
    rows for `nearest`; `to_row`: a raw record -> a formatted row, or None when it is rejected;
    `avoid`: questions never to return, as data.question_key gives them (the eval split, the round's own
    questions): a regenerated draw that re-cases or re-spaces an eval question is still that question.
    """
    from showwork.task.data import question_key

    taken, out = set(avoid), []
    for kind, rows in failed.items():
        made = 0
        for attempt in range(per_kind * 4):
            if made == per_kind or not rows:
                break
            source = rows[attempt % len(rows)]
            row = _one(source, kind, pool, taken, round_, attempt, to_row)
            if row is not None:
                taken.add(question_key(row["question"]))
                out.append({**row, "targeted_kind": kind, "targets": source["id"]})
                made += 1
    return out


def _one(source: dict, kind: str, pool: list[dict], taken: set[str], round_: int, attempt: int,
         to_row) -> dict | None:
    from showwork.task.data import question_key

    if source.get("template"):
        for record in regenerated(source["template"], _seed(source["id"], kind, round_, attempt)):
            row = to_row(record)
            if row is not None and question_key(row["question"]) not in taken:
                return {**row, "how": "regenerated"}
    row = nearest(source["question"], pool, taken)  # no template, or none of its draws was usable
    return {**row, "how": "nearest"} if row is not None else None
