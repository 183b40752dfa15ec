"""Seeded GSM-style word problems of one or two steps, with worked solutions.

The embedded demo trains Gemma 3 270M for minutes on two CPU cores. GSM8K and
reasoning-gym's `gsm_symbolic` are mostly problems of two to eight steps with
three-digit arithmetic; a model that small gets nearly none right after such a
short run, so its GRPO groups score all-wrong and have nothing to learn from.
These problems keep GSM8K's shape (a short story, a question, a worked
solution whose every step is written `expression = value`, `#### answer`) with
one or two steps and small numbers, so the demo can show a model that learns
to be right, not only well-formatted.

Each template draws its numbers so every intermediate and final value is a
whole number >= 0. A record is `{"question", "answer", "template"}` in GSM8K's
layout (`answer` = solution lines, then `#### N`), read by `data.to_row` like any
GSM8K record. The same seed always gives the same problems.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator

TASKS = ("one-step", "two-step", "mixed")

_NAMES = ("Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Liam",
          "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tomas", "Uma", "Victor", "Wen", "Yusuf")
_ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "stamps", "books", "shells", "cards", "beads",
          "eggs", "balloons", "coins", "flowers", "toy cars", "crayons")
_GOODS = (("notebook", "notebooks"), ("sandwich", "sandwiches"), ("ticket", "tickets"), ("pen", "pens"),
          ("cup of juice", "cups of juice"), ("kite", "kites"), ("plant", "plants"), ("comic", "comics"))
_CONTAINERS = ("box", "bag", "jar", "pack", "basket", "tray")


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("x", "sh", "ch")) else "s")


def _people(rng: random.Random, n: int) -> list[str]:
    return rng.sample(_NAMES, n)


def _add(rng):
    name, = _people(rng, 1)
    item, a, b = rng.choice(_ITEMS), rng.randint(3, 60), rng.randint(2, 40)
    return (f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?",
            [f"{name} has {a} + {b} = {a + b} {item} now."], a + b)


def _subtract(rng):
    name, friend = _people(rng, 2)
    item, b = rng.choice(_ITEMS), rng.randint(2, 30)
    a = b + rng.randint(1, 50)
    return (f"{name} had {a} {item} and gave {b} of them to {friend}. How many {item} does {name} have left?",
            [f"{name} has {a} - {b} = {a - b} {item} left."], a - b)


def _multiply(rng):
    name, = _people(rng, 1)
    item, box, a, b = rng.choice(_ITEMS), rng.choice(_CONTAINERS), rng.randint(2, 9), rng.randint(2, 12)
    return (f"{name} buys {a} {_plural(box)} of {item}. Each {box} holds {b} {item}. How many {item} does {name} buy?",
            [f"{name} buys {a} * {b} = {a * b} {item}."], a * b)


def _divide(rng):
    name, = _people(rng, 1)
    item, share, friends = rng.choice(_ITEMS), rng.randint(2, 12), rng.randint(2, 8)
    total = share * friends
    return (f"{name} shares {total} {item} equally among {friends} friends. How many {item} does each friend get?",
            [f"Each friend gets {total} / {friends} = {share} {item}."], share)


def _price(rng):
    name, = _people(rng, 1)
    (one, many), price, count = rng.choice(_GOODS), rng.randint(2, 15), rng.randint(2, 9)
    return (f"One {one} costs ${price}. {name} buys {count} {many}. How many dollars does {name} spend?",
            [f"{name} spends {count} * {price} = {count * price} dollars."], count * price)


def _older(rng):
    name, friend = _people(rng, 2)
    age, gap = rng.randint(5, 40), rng.randint(2, 25)
    return (f"{name} is {age} years old. {friend} is {gap} years older than {name}. How old is {friend}?",
            [f"{friend} is {age} + {gap} = {age + gap} years old."], age + gap)


def _pages(rng):
    name, = _people(rng, 1)
    per_day, days = rng.randint(3, 25), rng.randint(2, 9)
    return (f"{name} reads {per_day} pages every day. How many pages does {name} read in {days} days?",
            [f"{name} reads {per_day} * {days} = {per_day * days} pages."], per_day * days)


def _buys_packs(rng):
    name, = _people(rng, 1)
    item, box = rng.choice(_ITEMS), rng.choice(("bag", "pack", "jar", "basket"))
    have, packs, each = rng.randint(2, 40), rng.randint(2, 6), rng.randint(2, 10)
    new = packs * each
    return (f"{name} has {have} {item}. {name} buys {packs} {_plural(box)} with {each} {item} in each {box}. "
            f"How many {item} does {name} have now?",
            [f"The {_plural(box)} hold {packs} * {each} = {new} {item}.", f"{name} has {have} + {new} = {have + new} {item} now."],
            have + new)


def _gives_twice(rng):
    name, first, second = _people(rng, 3)
    item, b, c = rng.choice(_ITEMS), rng.randint(2, 20), rng.randint(2, 20)
    a = b + c + rng.randint(1, 40)
    return (f"{name} had {a} {item}. {name} gave {b} to {first} and {c} to {second}. "
            f"How many {item} does {name} have left?",
            [f"{name} gave away {b} + {c} = {b + c} {item}.", f"{name} has {a} - {b + c} = {a - b - c} {item} left."],
            a - b - c)


def _change(rng):
    name, = _people(rng, 1)
    (_, many), count, price = rng.choice(_GOODS), rng.randint(2, 6), rng.randint(2, 12)
    cost = count * price
    money = cost + rng.randint(1, 40)
    return (f"{name} has ${money}. {name} buys {count} {many} that cost ${price} each. "
            f"How many dollars does {name} have left?",
            [f"The {many} cost {count} * {price} = {cost} dollars.", f"{name} has {money} - {cost} = {money - cost} dollars left."],
            money - cost)


def _wages(rng):
    name, = _people(rng, 1)
    rate, hours, days = rng.randint(5, 20), rng.randint(2, 8), rng.randint(2, 6)
    return (f"{name} earns ${rate} an hour and works {hours} hours a day. How many dollars does {name} earn in {days} days?",
            [f"{name} earns {rate} * {hours} = {rate * hours} dollars a day.",
             f"In {days} days {name} earns {rate * hours} * {days} = {rate * hours * days} dollars."],
            rate * hours * days)


def _two_kinds(rng):
    name, = _people(rng, 1)
    first, second = rng.sample(_ITEMS, 2)
    a, b, days = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 7)
    return (f"Every day {name} collects {a} {first} and {b} {second}. How many things does {name} collect in {days} days?",
            [f"Each day {name} collects {a} + {b} = {a + b} things.", f"In {days} days that is {a + b} * {days} = {(a + b) * days} things."],
            (a + b) * days)


def _split_rest(rng):
    name, = _people(rng, 1)
    item, kept, friends, share = rng.choice(_ITEMS), rng.randint(1, 15), rng.randint(2, 6), rng.randint(2, 9)
    total = kept + friends * share
    return (f"{name} has {total} {item}. {name} keeps {kept} and shares the rest equally among {friends} friends. "
            f"How many {item} does each friend get?",
            [f"{name} shares {total} - {kept} = {total - kept} {item}.",
             f"Each friend gets {total - kept} / {friends} = {share} {item}."],
            share)


Template = Callable[[random.Random], tuple[str, list[str], int]]
ONE_STEP: dict[str, Template] = {"add": _add, "subtract": _subtract, "multiply": _multiply, "divide": _divide,
                                 "price": _price, "older": _older, "pages": _pages}
TWO_STEP: dict[str, Template] = {"buys_packs": _buys_packs, "gives_twice": _gives_twice, "change": _change,
                                 "wages": _wages, "two_kinds": _two_kinds, "split_rest": _split_rest}


def templates(task: str) -> dict[str, Template]:
    """The templates a task draws from: one-step, two-step, or both (mixed, equally often per template)."""
    if task not in TASKS:
        raise ValueError(f"unknown word-problems task {task!r}; choose one of {', '.join(TASKS)}")
    return {"one-step": ONE_STEP, "two-step": TWO_STEP, "mixed": {**ONE_STEP, **TWO_STEP}}[task]


def records(task: str, size: int, seed: int) -> Iterator[dict]:
    """`size` GSM8K-layout records, template chosen uniformly per item, all from one seeded stream."""
    table = templates(task)
    names = sorted(table)
    rng = random.Random(f"word-problems/{task}/{seed}")
    for _ in range(size):
        name = rng.choice(names)
        yield _record(table[name](rng), name)


def _record(drawn: tuple[str, list[str], int], name: str) -> dict:
    question, steps, answer = drawn
    return {"question": question, "answer": "\n".join(steps) + f"\n#### {answer}", "template": f"word-problems#{name}"}


def regenerated(name: str, seed: int, size: int) -> Iterator[dict]:
    """`size` fresh records of one template (self-teaching's targeted draws: the failed problem's
    template with new numbers)."""
    template = {**ONE_STEP, **TWO_STEP}.get(name)
    if template is None:
        raise ValueError(f"unknown word-problems template {name!r}")
    rng = random.Random(f"word-problems#{name}/{seed}")
    for _ in range(size):
        yield _record(template(rng), name)
