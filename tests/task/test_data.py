"""data.py and jobs/prepare_data.py: cleaning, malformed rows, splits, the job on the bus."""

import csv
import json
import subprocess
import sys
from collections import Counter

import pytest

from conftest import REPO, RECIPES, TIERS, job_env
from showwork.bus import Bus
from showwork.config import DataConfig
from showwork.task import answers, data

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
               "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
               "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"},
    {"question": "A company pays each of its 30 employees $360 a month. How much does it pay in total?",
     "answer": "It pays <<30*360=10800>>10800 dollars.\n#### 10,800"},
]


@pytest.mark.parametrize("text, mode, expected", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.", "readable", "Natalia sold 48/2 = 24 clips."),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.", "drop", "Natalia sold 48/2 = 24 clips."),
    ("It pays <<30*360=10800>>10800 dollars.", "readable", "It pays 30*360 = 10800 dollars."),
    ("It pays <<30*360=10800>>10800 dollars.", "drop", "It pays 10800 dollars."),
    ("It pays <<30*360=10800>>10800 dollars.", "keep", "It pays <<30*360=10800>>10800 dollars."),
    ("earned 0.2 x 50 = $<<0.2*50=10>>10.", "readable", "earned 0.2 x 50 = $10."),
    ("Total <<2+3=5>>", "readable", "Total 2+3 = 5"),
    ("a <<broken annotation", "readable", "a broken annotation"),
    ("no annotations here", "readable", "no annotations here"),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.", "parentheses", "Natalia sold 48/2 = (48/2=24)24 clips."),
    ("It pays <<30*360=10800>>10800 dollars.", "parentheses", "It pays (30*360=10800)10800 dollars."),
    ("a <<broken annotation", "parentheses", "a (broken annotation"),
])
def test_clean_calculator(text, mode, expected):
    assert data.clean_calculator(text, mode) == expected


@pytest.mark.parametrize("text, steps, gold", [
    ("a\nb\n#### 72", "a\nb", "72"),
    ("#### 5", "", "5"),
    ("steps only", "steps only", None),
    ("x #### 1 #### 2", "x #### 1", "2"),
    ("x\n####   ", "x", None),
])
def test_split_solution(text, steps, gold):
    assert data.split_solution(text) == (steps, gold)


@pytest.mark.parametrize("record, reason", [
    ({"answer": "x\n#### 1"}, "missing_question"),
    ({"question": "   ", "answer": "x\n#### 1"}, "missing_question"),
    ({"question": "q?"}, "missing_answer"),
    ({"question": "q?", "answer": ""}, "missing_answer"),
    ({"question": "q?", "answer": "no final line"}, "missing_final_answer"),
    ({"question": "q?", "answer": "x\n#### about seven"}, "non_numeric_answer"),
    ({"question": "q?", "answer": "#### 7"}, "missing_solution"),
    ({"question": "q" * 3000, "answer": "x\n#### 7"}, "question_too_long"),
    ({"question": "q?", "answer": "x" * 9000 + "\n#### 7"}, "solution_too_long"),
    ({"question": 5, "answer": "x\n#### 7"}, "missing_question"),
])
def test_malformed_records_are_rejected_with_a_reason(record, reason):
    row = data.to_row(record, "gsm8k", "readable", 2000, 8000)
    assert isinstance(row, data.Rejected) and row.reason == reason


def test_good_record_becomes_a_clean_row():
    row = data.to_row(GSM8K_ROWS[2], "gsm8k", "readable", 2000, 8000)
    assert row.answer == "10800"
    assert row.solution == "It pays 30*360 = 10800 dollars."
    assert row.id == data.stable_id("gsm8k", GSM8K_ROWS[2]["question"])


def test_formatted_row_has_chat_prompt_and_well_formed_target():
    row = data.to_row(GSM8K_ROWS[0], "gsm8k", "readable", 2000, 8000)
    out = data.formatted(row, "Show your work.")
    assert out["prompt"].startswith("<start_of_turn>user\nShow your work.\n\nNatalia")
    assert out["prompt"].endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert out["target"].endswith("<end_of_turn>")
    body = out["target"][: -len("<end_of_turn>")]
    assert answers.check_format(body).well_formed
    assert answers.is_correct(body, "72")


def test_glaive_rows():
    good = {"prompt": "Why is the sky blue?", "response": "<think>Rayleigh scattering...</think>Because of scattering."}
    row = data.to_row(good, "glaive", "readable", 2000, 8000)
    assert (row.solution, row.answer) == ("Rayleigh scattering...", "Because of scattering.")
    bad = data.to_row({"prompt": "q", "response": "no trace"}, "glaive", "readable", 2000, 8000)
    assert bad.reason == "no_reasoning_trace"


def write_jsonl(path, rows, extra_lines=()):
    with open(path, "wb") as f:
        for row in rows:
            f.write((json.dumps(row) + "\n").encode())
        for line in extra_lines:
            f.write(line)


def make_gsm8k_file(path, n=40):
    rows = []
    for i in range(n):
        rows.append({"question": f"Tom has {i + 3} apples and buys {i + 5} more. How many apples does he have?",
                     "answer": f"He has {i + 3}+{i + 5} = <<{i + 3}+{i + 5}={2 * i + 8}>>{2 * i + 8} apples.\n#### {2 * i + 8}"})
    bad = [b'{"question": "broken json"\n', b"\xff\xfe not utf-8\n", b'{"question": "q", "answer": "x\\n#### seven"}\n',
           (json.dumps(rows[0]) + "\n").encode()]  # a duplicate
    write_jsonl(path, rows, bad)
    return rows


def test_build_splits_from_local_jsonl_counts_every_drop(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    make_gsm8k_file(path)
    train, evals, stats = data.build_splits(DataConfig(source="gsm8k", path=str(path), train_size=30, eval_size=5, seed=0))
    assert (len(train), len(evals)) == (30, 5)
    assert not {r.id for r in train} & {r.id for r in evals}
    assert stats["rows_in"] == {"all": 44}
    assert stats["dropped"] == {"bad_encoding": 1, "bad_json": 1, "duplicate": 1, "non_numeric_answer": 1}
    # The split depends on content and seed, not on file order.
    rows = [json.loads(line) for line in path.read_bytes().splitlines()[:40]]
    write_jsonl(tmp_path / "reversed.jsonl", rows[::-1])
    train2, evals2, _ = data.build_splits(DataConfig(source="gsm8k", path=str(tmp_path / "reversed.jsonl"), train_size=30, eval_size=5, seed=0))
    assert [r.id for r in evals2] == [r.id for r in evals]


def test_kaggle_csv_layout(tmp_path):
    path = tmp_path / "main_train.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(GSM8K_ROWS)
    train, evals, stats = data.build_splits(DataConfig(source="gsm8k", path=str(path), train_size=10, eval_size=1, seed=0, calculator_annotations="drop"))
    assert len(train) + len(evals) == 3 and stats["dropped_total"] == 0
    assert sorted(r.answer for r in train + evals) == ["10", "10800", "72"]


def test_separate_eval_file_and_overlap_removed(tmp_path):
    make_gsm8k_file(tmp_path / "train.jsonl", 20)
    write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS)
    train, evals, stats = data.build_splits(DataConfig(source="gsm8k", path=str(tmp_path / "train.jsonl"), eval_path=str(tmp_path / "test.jsonl"), train_size=100, eval_size=100, seed=0))
    assert len(train) == 20 and len(evals) == 3


def test_reasoning_gym_offline_with_disjoint_eval():
    train, evals, stats = data.build_splits(DataConfig(source="reasoning-gym", task="gsm_symbolic", train_size=20, eval_size=10, seed=3))
    assert len(train) == 20 and 0 < len(evals) <= 10
    assert not {r.question for r in train} & {r.question for r in evals}
    for row in train + evals:
        assert answers.normalize(row.answer) == row.answer
        assert "####" not in row.solution and row.solution


def test_an_eval_question_that_is_a_training_question_recased_or_respaced_is_dropped(tmp_path):
    def row(q, a):
        return json.dumps({"question": q, "answer": f"{q} has {a}.\n#### {a}"}) + "\n"

    (tmp_path / "train.jsonl").write_text(row("Tom has 3 apples and buys 4. How many now?", 7)
                                          + row("Ann reads 5 pages a day. How many in 3 days?", 15))
    (tmp_path / "test.jsonl").write_text(row("tom has 3 apples  and buys 4.How many now ?", 7)
                                         + row("Ann reads 6 pages a day. How many in 3 days?", 18))
    train, evals, stats = data.build_splits(DataConfig(source="gsm8k", path=str(tmp_path / "train.jsonl"),
                                                       eval_path=str(tmp_path / "test.jsonl"), train_size=2, eval_size=2))
    assert len(train) == 2 and [r.answer for r in evals] == ["18"]
    assert stats["dropped"]["eval_seen_in_train"] == 1
    assert not {data.question_key(r.question) for r in train} & {data.question_key(r.question) for r in evals}


def test_unsupported_file_type(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported data file type"):
        list(data.read_records(str(tmp_path / "x.txt")))


def run_job(*args, env=None):
    return subprocess.run([sys.executable, "-m", "jobs.prepare_data", *map(str, args)], cwd=REPO,
                          env=env or job_env(), capture_output=True, text=True, timeout=300)


def test_job_on_reasoning_gym_writes_layout_skips_and_refuses(tmp_path):
    recipe = RECIPES / "quickstart.yaml"
    tier = TIERS / "cpu" / "tier.yaml"
    first = run_job(recipe, tier, "--root", tmp_path, "--run-id", "r1")
    assert first.returncode == 0, first.stderr
    bus = Bus(str(tmp_path / "r1"))
    assert bus.list("data") == ["data/_SUCCESS", "data/eval.jsonl", "data/stats.json", "data/train.jsonl"]
    marker = bus.read_json("data/_SUCCESS")
    assert marker["stage"] == "data" and marker["metrics"]["train_rows"] == 200
    assert set(marker["versions"]) >= {"jax", "google-tunix"} and marker["finished"] >= marker["started"]
    train = bus.read_jsonl("data/train.jsonl")
    assert len(train) == 200 and set(train[0]) == {"id", "question", "answer", "solution", "source", "prompt", "target",
                                                   "template"}
    assert all(r["template"].startswith("gsm_symbolic#") for r in train)  # self-teaching draws it again
    mtime = (tmp_path / "r1" / "data" / "train.jsonl").stat().st_mtime_ns

    second = run_job(recipe, tier, "--root", tmp_path, "--run-id", "r1")
    assert second.returncode == 0 and "skipping" in second.stderr
    assert (tmp_path / "r1" / "data" / "train.jsonl").stat().st_mtime_ns == mtime

    changed = tmp_path / "changed.yaml"
    changed.write_text("data: {source: reasoning-gym, train_size: 10, eval_size: 5}\n")
    third = run_job(recipe, tier, changed, "--root", tmp_path, "--run-id", "r1")
    assert third.returncode == 2  # a changed config on an old run id is a usage error (showwork.errors)
    assert "already finished with config digest" in third.stderr and "--run-id" in third.stderr


def test_job_on_local_gsm8k_jsonl_reports_bad_rows(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    make_gsm8k_file(path)
    recipe = tmp_path / "local.yaml"
    recipe.write_text(f"recipe: local\nmodel: {{name: tiny}}\n"
                      f"data: {{source: gsm8k, path: {path}, train_size: 30, eval_size: 5}}\n")
    done = run_job(recipe, TIERS / "cpu" / "tier.yaml", "--root", tmp_path)
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "local" / "data" / "stats.json").read_text())
    assert stats["rows_out"] == {"train": 30, "eval": 5}
    assert Counter(stats["dropped"]) == Counter({"bad_encoding": 1, "bad_json": 1, "duplicate": 1, "non_numeric_answer": 1})


def test_job_config_error_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: x\nmodel: {name: tiny}\ndata: {source: reasonning-gym}\n")
    done = run_job(bad, TIERS / "cpu" / "tier.yaml", "--root", tmp_path)
    assert done.returncode == 2
    assert f"config error: {bad}: data.source: must be one of" in done.stderr
    assert "Traceback" not in done.stderr


def test_job_on_gcs_bus(tmp_path, gcs_server):
    env = job_env(STORAGE_EMULATOR_HOST=gcs_server.url)
    done = run_job(RECIPES / "quickstart.yaml", TIERS / "cpu" / "tier.yaml", "--root", "gs://showwork-test/jobs",
                   "--run-id", "q", env=env)
    assert done.returncode == 0, done.stderr
    bus = Bus("gs://showwork-test/jobs/q")
    assert len(bus.read_jsonl("data/eval.jsonl")) == 50


# ---------------------------------------------------------------- staged hub data: pods never reach a hub


def test_every_hub_sourced_recipe_reads_staged_files():
    import yaml

    for path in sorted(RECIPES.glob("*.yaml")):
        section = yaml.safe_load(path.read_text())["data"]
        if section["source"] in data.STAGED_SPLITS:
            wanted = ["path", "eval_path"] if "test" in data.STAGED_SPLITS[section["source"]] else ["path"]
            assert all(section.get(key) for key in wanted), f"{path.name} would read the hub from its pod"


class _FakeDatasets:
    """Stands in for Hugging Face `datasets` (no hub here): each split is a list of records."""

    class exceptions:  # noqa: N801 (the module's name)
        class DatasetNotFoundError(Exception):
            pass

    def __init__(self, splits):
        self.splits, self.calls = splits, []

    def load_dataset(self, name, config, split, streaming):
        self.calls.append((name, config, split, streaming))
        return iter(self.splits[split])


def _staged_gsm8k(monkeypatch, dest):
    from jobs import stage_data

    fake = _FakeDatasets({"train": GSM8K_ROWS * 2, "test": GSM8K_ROWS[:2]})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    written = stage_data.main(["gsm8k", dest])
    assert fake.calls == [("openai/gsm8k", "main", "train", True), ("openai/gsm8k", "main", "test", True)]
    return written


def test_stage_data_writes_the_files_a_gsm8k_recipe_reads(monkeypatch, tmp_path, capsys):
    train, test = _staged_gsm8k(monkeypatch, str(tmp_path / "staged"))
    assert capsys.readouterr().out.split() == [train, test]
    rows_train, rows_eval, stats = data.build_splits(DataConfig(source="gsm8k", path=train, eval_path=test,
                                                                train_size=3, eval_size=2))
    assert stats["rows_out"] == {"train": 3, "eval": 0}  # the test questions are in train: dropped, counted
    assert stats["dropped"]["eval_seen_in_train"] == 2 and {r.answer for r in rows_train} == {"72", "10", "10800"}


def test_stage_data_limit_keeps_the_first_rows(monkeypatch, tmp_path):
    from jobs import stage_data

    traces = [{"prompt": f"What is {n} + {n}?", "response": f"<think>{n} + {n} = {2 * n}</think> {2 * n}"}
              for n in range(10)]
    monkeypatch.setitem(sys.modules, "datasets", _FakeDatasets({"train": traces}))
    (train,) = stage_data.main(["glaive", str(tmp_path / "glaive"), "--limit", "4"])
    assert [json.loads(line)["prompt"] for line in open(train)] == [t["prompt"] for t in traces[:4]]


def test_a_gs_data_path_is_read_through_the_bus(monkeypatch, gcs_server, tmp_path):
    monkeypatch.setenv("SHOWWORK_CACHE", str(tmp_path / "cache"))
    train, test = _staged_gsm8k(monkeypatch, "gs://showwork-test/data/gsm8k")
    assert train == "gs://showwork-test/data/gsm8k/train.jsonl"
    rows, evals, _ = data.build_splits(DataConfig(source="gsm8k", path=train, eval_path=test, train_size=3,
                                                 eval_size=0))
    assert len(rows) == 3
    with pytest.raises(FileNotFoundError, match="gs://showwork-test/data/gsm8k/nope.jsonl"):
        data.build_splits(DataConfig(source="gsm8k", path="gs://showwork-test/data/gsm8k/nope.jsonl",
                                     eval_path=test, train_size=3, eval_size=1))


def glaive_corpus(path, n):
    """A glaive-layout corpus of n records: every 7th has no reasoning trace (rejected), every 11th
    repeats the prompt before it (a duplicate), and record 45 repeats record 2's far later, past the
    first run's rows: source indices and clean rows differ."""
    with path.open("w") as f:
        for i in range(n):
            prompt = f"Explain step {i - 1}." if i % 11 == 10 else "Explain step 2." if i == 45 else f"Explain step {i}."
            response = f"The answer {i}." if i % 7 == 6 else f"<think>Because {i} follows {i - 1}.</think> It is {i}."
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")


def test_a_source_order_continuation_trains_on_the_next_rows(tmp_path):
    """The first run trains on the corpus's first N clean rows and records the source index of the last
    record it trained on; the continuation reads from the next record: disjoint training rows, and
    exactly the next N clean rows of the corpus."""
    corpus = tmp_path / "glaive.jsonl"
    glaive_corpus(corpus, 120)
    everything, _, _ = data.build_splits(DataConfig(source="glaive", path=str(corpus), order="source",
                                                    train_size=1000, eval_size=0))
    first = DataConfig(source="glaive", path=str(corpus), order="source", train_size=30, eval_size=5)
    train1, evals1, stats1 = data.build_splits(first)
    assert [r.id for r in train1] == [r.id for r in everything[:30]]  # the corpus's first 30 clean rows
    assert [r.id for r in evals1] == [r.id for r in everything[30:35]]  # held out: the rows after them
    assert stats1["first_index"] == 0 and stats1["dropped"]["no_reasoning_trace"] > 0
    # The last training row came from this source record (line), whatever was rejected before it.
    lines = corpus.read_text().splitlines()
    assert data.stable_id("glaive", json.loads(lines[stats1["last_index"]])["prompt"]) == train1[-1].id

    first_run = tmp_path / "first" / "data"  # what the first run left on its bus
    first_run.mkdir(parents=True)
    (first_run / "stats.json").write_text(json.dumps(stats1))
    (first_run / "train.jsonl").write_text("".join(json.dumps(data.formatted(r, "s")) + "\n" for r in train1))
    second = DataConfig(source="glaive", path=str(corpus), order="source", train_size=30, eval_size=5,
                        start_after=str(first_run / "stats.json"))
    train2, _, stats2 = data.build_splits(second)
    assert stats2["first_index"] == stats1["last_index"] + 1 < 45
    assert not {r.id for r in train1} & {r.id for r in train2}
    assert [r.id for r in train2] == [r.id for r in everything[30:60]]
    # Record 45 asks record 2's question again: the continuation does not train on it a second time.
    assert stats2["dropped"]["trained_by_previous_run"] == 1

    (first_run / "train.jsonl").unlink()
    with pytest.raises(Exception, match="training rows are needed beside its stats.json"):
        data.build_splits(second)


@pytest.mark.parametrize("section, says", [
    ({"source": "reasoning-gym", "order": "source"}, "not with a generated source"),
    ({"source": "word-problems", "task": "mixed", "order": "source"}, "not with a generated source"),
    ({"source": "glaive", "order": "source", "offset": 10}, "not with a generated source, eval_path or offset"),
    ({"source": "glaive", "start_after": "runs/a/data/stats.json"}, "set order: source"),
])
def test_source_order_settings_that_cannot_work_are_refused(section, says):
    problems = dict(DataConfig(**section).problems())
    assert any(says in m for m in problems.values()), problems


def test_a_continuation_of_a_shuffled_run_is_refused(tmp_path):
    (tmp_path / "stats.json").write_text(json.dumps({"source": "glaive", "rows_out": {"train": 3}}))
    with pytest.raises(Exception, match="did not read its data in source order"):
        data.continuation_start(str(tmp_path / "stats.json"))
