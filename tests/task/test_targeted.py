"""Targeted problems: a failed template drawn again with new numbers, else the nearest unused problem."""

from showwork import config
from showwork.task import data, targeted

SYSTEM = "S"


def to_row(record):
    row = data.to_row(record, "reasoning-gym", "readable", 2000, 8000)
    return None if isinstance(row, data.Rejected) else data.formatted(row, SYSTEM)


def rows(n=12, seed=5):
    train, _, _ = data.build_splits(config.DataConfig(source="reasoning-gym", train_size=n, eval_size=0, seed=seed))
    return [data.formatted(r, SYSTEM) for r in train]


def test_generated_rows_name_their_template():
    assert all(r["template"].startswith("gsm_symbolic#") for r in rows())


def test_a_failed_template_is_drawn_again_with_new_numbers():
    failed = rows()[:2]
    made = targeted.targeted({"arithmetic": failed}, [], per_kind=3, round_=0, to_row=to_row, avoid=set())
    assert len(made) == 3 and {m["how"] for m in made} == {"regenerated"}
    for m in made:
        source = next(f for f in failed if f["id"] == m["targets"])
        assert m["template"] == source["template"] and m["question"] != source["question"]
        assert m["targeted_kind"] == "arithmetic" and m["target"].startswith("<reasoning>")
    assert len({m["id"] for m in made}) == 3
    # Seeded by the failed row, the kind and the round: the same call gives the same problems.
    again = targeted.targeted({"arithmetic": failed}, [], per_kind=3, round_=0, to_row=to_row, avoid=set())
    assert [m["id"] for m in again] == [m["id"] for m in made]


def test_without_a_template_the_nearest_unused_problem_is_taken_and_held_out_ones_never_even_recased():
    def row(i, q):
        return {"id": f"r{i}", "question": q, "prompt": q, "answer": "1", "target": "t"}

    failed = [row(0, "Sam buys 3 red apples and 4 green apples at the market")]
    pool = [row(1, "How many trains leave the station"), row(2, "Ann buys 5 red apples and 2 green pears at the market"),
            row(3, "Sam buys 3 red apples and 4 green apples at the shop"), row(4, "Bob sells apples")]
    # Held out: row 3's question as the eval split might hold it, re-cased and re-spaced.
    held_out = {data.question_key("SAM buys 3 red apples  and 4 green APPLES at the shop")}
    made = targeted.targeted({"setup": failed}, pool, per_kind=2, round_=1, to_row=to_row, avoid=held_out)
    assert [(m["id"], m["how"], m["targets"]) for m in made] == [("r2", "nearest", "r0"), ("r4", "nearest", "r0")]


def test_per_kind_counts_every_failure_kind():
    failed = rows()[:3]
    made = targeted.targeted({"format": failed[:1], "length": failed[1:2], "setup": failed[2:]}, [], per_kind=2,
                             round_=0, to_row=to_row, avoid=set())
    assert [m["targeted_kind"] for m in made] == ["format", "format", "length", "length", "setup", "setup"]


def test_a_regenerated_draw_never_returns_a_held_out_question():
    failed = rows()[:1]
    first = targeted.targeted({"arithmetic": failed}, [], per_kind=3, round_=0, to_row=to_row, avoid=set())
    held_out = {data.question_key(first[0]["question"].upper())}
    again = targeted.targeted({"arithmetic": failed}, [], per_kind=3, round_=0, to_row=to_row, avoid=held_out)
    assert len(again) == 3 and first[0]["question"] not in {m["question"] for m in again}
