"""Evaluation shards, voting and the report: shard-count independence, retries, refusal."""

import json
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import REPO, TIERS, job_env
from showwork import stages
from showwork.bus import Bus
from showwork.eval import evaluate, report, voting

CPU = TIERS / "cpu" / "tier.yaml"

TINY_EVAL = """recipe: tiny-eval
model: {name: tiny}
data: {source: reasoning-gym, train_size: 4, eval_size: 7, seed: 9}
eval:
  models: [base]
  methods: [greedy, majority, consensus]
  samples: 3
  temperature: 0.8
  consensus_temperatures: [0.3, 1.0]
  max_tokens: 12
"""


@pytest.mark.parametrize("values, answer, count, margin", [
    (["18", "18", "7"], "18", 2, 1 / 3),
    (["7", "18", "18", "7"], "7", 2, 0.0),  # tie: the earliest answer wins
    (["18", "7", "7", "18"], "18", 2, 0.0),
    ([None, None, "5"], "5", 1, 1 / 3),  # "no answer" never beats a real one
    ([None, None, None], None, 0, 0.0),
    ([], None, 0, 0.0),
    (["3"], "3", 1, 1.0),
])
def test_majority(values, answer, count, margin):
    vote = voting.majority(values)
    assert (vote.answer, vote.count) == (answer, count)
    assert vote.margin == pytest.approx(margin)


def test_numeric_equivalents_are_one_answer():
    from showwork.task import answers

    texts = ["<answer>18</answer>", "<answer>18.0</answer>", "<answer>$18</answer>", "<answer>17</answer>"]
    vote = voting.majority([answers.extract(t).value for t in texts])
    assert (vote.answer, vote.count, vote.total) == ("18", 3, 4)


def test_shard_rows_partition():
    rows = list(range(10))
    parts = [evaluate.shard_rows(rows, i, 3) for i in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError, match="does not exist"):
        evaluate.shard_rows(rows, 3, 3)


def test_score_sample():
    s = evaluate.score("<reasoning>48 / 2 = 24, 48 + 24 = 72</reasoning><answer>72</answer>", "72")
    assert s["correct"] and s["well_formed"] and s["reasoning_words"] == 10
    assert not s["lm_eval_strict"] and s["lm_eval_flexible"]
    s = evaluate.score("so 48+24=72\n#### 72", "72")
    assert s["correct"] and not s["well_formed"] and s["lm_eval_strict"] and s["lm_eval_flexible"]


def test_wilson_interval():
    assert report.wilson(0, 10)[0] == 0.0 and report.wilson(10, 10)[1] == 1.0
    low, high = report.wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)


def records(correct_by_method):
    out = []
    for qid, methods in correct_by_method.items():
        out.append({"id": qid, "question": f"q{qid}", "gold": "1", "methods": {
            m: {"correct": c, "margin": 1.0, "samples": [{"correct": c, "well_formed": True, "reasoning_words": 55,
                                                          "lm_eval_strict": False, "lm_eval_flexible": c}]}
            for m, c in methods.items()}})
    return out


def test_compute_fixed_broke_and_unsolved():
    base = records({"a": {"greedy": True, "majority": True}, "b": {"greedy": False, "majority": True},
                    "c": {"greedy": False, "majority": False}, "d": {"greedy": True, "majority": False}})
    tuned = records({"a": {"greedy": False, "majority": True}, "b": {"greedy": True, "majority": True},
                     "c": {"greedy": False, "majority": False}, "d": {"greedy": True, "majority": True}})
    m = report.compute({"base": base, "grpo": tuned}, ["greedy", "majority"])
    assert m["models"]["base"]["greedy"]["accuracy"] == 0.5
    assert m["between_methods"]["base"]["greedy->majority"] == {"fixed": 1, "broke": 1, "questions": 4}
    assert m["between_models"]["base->grpo"]["greedy"] == {"fixed": 1, "broke": 1, "questions": 4}
    assert m["between_models"]["base->grpo"]["majority"] == {"fixed": 1, "broke": 0, "questions": 4}
    assert [u["id"] for u in m["unsolved"]] == ["c"]
    assert m["by_reasoning_length"]["base"]["greedy"] == {"50-59": {"samples": 4, "accuracy": 0.5}}


def run(*args, **kw):
    done = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, env=job_env(**kw),
                          capture_output=True, text=True, timeout=900)
    return done


def evaluate_and_report(recipe, root, shards: int = 2) -> None:
    """Every eval shard as its own job (JOB_COMPLETION_INDEX), then the report, as the pods run them."""
    for index in range(shards):
        done = run("jobs.evaluate", recipe, CPU, "--root", root, "--shards", str(shards),
                   JOB_COMPLETION_INDEX=str(index))
        assert done.returncode == 0, done.stderr[-3000:]
    done = run("jobs.report", recipe, CPU, "--root", root, "--shards", str(shards))
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    recipe = root / "recipe.yaml"
    recipe.write_text(TINY_EVAL)
    done = run("jobs.prepare_data", recipe, CPU, "--root", root / "runs")
    assert done.returncode == 0, done.stderr
    return root, recipe


def test_three_shards_merge_to_the_same_metrics_as_one(prepared, tmp_path):
    root, recipe = prepared
    one, three = tmp_path / "one", tmp_path / "three"
    for target in (one, three):
        shutil.copytree(root / "runs", target)
    done = run("jobs.evaluate", recipe, CPU, "--root", one, "--shards", "1")
    assert done.returncode == 0, done.stderr
    assert run("jobs.report", recipe, CPU, "--root", one, "--shards", "1").returncode == 0

    for index in (0, 2):
        assert run("jobs.evaluate", recipe, CPU, "--root", three, "--shards", "3",
                   JOB_COMPLETION_INDEX=str(index)).returncode == 0
    refused = run("jobs.report", recipe, CPU, "--root", three, "--shards", "3")
    assert refused.returncode != 0 and "shard-1-of-3" in refused.stderr and "1 of 3 shards" in refused.stderr

    bus3 = Bus(str(three / "tiny-eval"))
    # A shard killed mid-write leaves no records file; a retried pod re-runs it whole.
    bus3.write_text("eval/base/shard-1-of-3.jsonl", '{"id": "partial"')
    assert run("jobs.evaluate", recipe, CPU, "--root", three, "--shards", "3", JOB_COMPLETION_INDEX="1").returncode == 0
    again = run("jobs.evaluate", recipe, CPU, "--root", three, "--shards", "3", JOB_COMPLETION_INDEX="1")
    assert "skipping" in again.stderr
    assert run("jobs.report", recipe, CPU, "--root", three, "--shards", "3").returncode == 0

    m1 = json.loads((one / "tiny-eval" / "report" / "metrics.json").read_text())
    m3 = json.loads((three / "tiny-eval" / "report" / "metrics.json").read_text())
    assert m1 == m3
    assert m1["models"]["base"]["greedy"]["questions"] == len(Bus(str(one / "tiny-eval")).read_jsonl("data/eval.jsonl"))
    shard_lines = sum(len(bus3.read_jsonl(f"eval/base/shard-{i}-of-3.jsonl")) for i in range(3))
    assert shard_lines == m1["models"]["base"]["greedy"]["questions"]  # no duplicates from the retry

    record = bus3.read_jsonl("eval/base/shard-0-of-3.jsonl")[0]
    assert set(record["methods"]) == {"greedy", "majority", "consensus"}
    assert len(record["methods"]["majority"]["samples"]) == 3
    assert [s["temperature"] for s in record["methods"]["consensus"]["samples"]] == [0.3, 1.0]
    sample = record["methods"]["greedy"]["samples"][0]
    assert {"text", "extracted", "correct", "well_formed", "reasoning_words", "lm_eval_strict"} <= set(sample)

    page = (three / "tiny-eval" / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "<table>" in page
    md = (three / "tiny-eval" / "report" / "report.md").read_text()
    assert "lm-eval strict-match" in md and "![Accuracy per model and method](accuracy.png)" in md


# Written for this test in GSM8K's format (question, worked answer ending `#### N`).
GSM8K_STYLE = [
    ("A baker makes 24 muffins and sells 9 of them. How many muffins are left?",
     "24 - 9 = <<24-9=15>>15 muffins are left.\n#### 15"),
    ("Tom has 3 boxes with 12 pencils in each box. How many pencils does he have?",
     "3 * 12 = <<3*12=36>>36 pencils.\n#### 36"),
    ("A farm sells eggs at $2 per dozen. How much do 5 dozen eggs cost?",
     "5 * 2 = <<5*2=10>>10 dollars.\n#### 10"),
    ("Lisa read 45 pages on Monday and twice as many on Tuesday. How many pages did she read in total?",
     "Tuesday: 45 * 2 = <<45*2=90>>90. Total: 45 + 90 = <<45+90=135>>135.\n#### 135"),
    ("A school buys 9 buses that each seat 1,200 students over a year. How many seats is that?",
     "9 * 1200 = <<9*1200=10800>>10800.\n#### 10,800"),
    ("Sam had 50 stickers and gave 7 to each of his 4 friends. How many stickers does he have now?",
     "7 * 4 = <<7*4=28>>28 given away. 50 - 28 = <<50-28=22>>22.\n#### 22"),
]


def _number(text):
    """The test's own reading of a number: commas, `$` and a trailing `.0` ignored."""
    if text is None:
        return None
    cleaned = text.replace(",", "").replace("$", "").strip()
    try:
        value = float(cleaned)
    except ValueError:
        return cleaned
    return int(value) if value == int(value) else value


@pytest.mark.slow
def test_real_model_report_matches_shard_records_recomputed(tmp_path):
    """Gemma 3 270M, greedy and maj@4 over two shards: every number the report
    prints is recomputed here from the shard records without the report code."""
    import re
    from collections import Counter

    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GSM8K_STYLE))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""recipe: real-eval
model: {{name: gemma3-270m}}
data: {{source: gsm8k, path: {data}, train_size: 0, eval_size: 6}}
eval:
  models: [base]
  methods: [greedy, majority]
  samples: 4
  temperature: 0.7
  max_tokens: 64
""")
    root = tmp_path / "runs"
    assert run("jobs.prepare_data", recipe, CPU, "--root", root).returncode == 0
    evaluate_and_report(recipe, root)
    bus = Bus(str(root / "real-eval"))
    metrics = bus.read_json("report/metrics.json")
    records = bus.read_jsonl("eval/base/shard-0-of-2.jsonl") + bus.read_jsonl("eval/base/shard-1-of-2.jsonl")
    assert sorted(r["gold"] for r in records) == sorted(["15", "36", "10", "135", "10800", "22"])

    answer_tag = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
    for method, k in (("greedy", 1), ("majority", 4)):
        correct_questions, samples_right, well_formed, samples_seen = 0, 0, 0, 0
        for r in records:
            result = r["methods"][method]
            assert len(result["samples"]) == k
            votes = Counter()
            first_seen = {}
            for i, s in enumerate(result["samples"]):
                assert s["temperature"] == (0.0 if method == "greedy" else 0.7)
                # The recorded text is what the model wrote: at most 64 tokens, stopped at </answer>.
                if "</answer>" in s["text"]:  # nothing after it but the rest of its last token (`>.`)
                    assert len(s["text"].split("</answer>", 1)[1]) <= 3, s["text"]
                tagged = answer_tag.findall(s["text"])
                if tagged and s["method"] == "xml" and isinstance(_number(tagged[-1]), (int, float)):
                    assert _number(s["extracted"]) == _number(tagged[-1])
                right = s["extracted"] is not None and _number(s["extracted"]) == _number(r["gold"])
                assert s["correct"] == right
                samples_right += right
                samples_seen += 1
                stripped = s["text"].strip()
                ours_well_formed = (stripped.startswith("<reasoning>") and stripped.endswith("</answer>")
                                    and all(stripped.count(t) == 1 for t in
                                            ("<reasoning>", "</reasoning>", "<answer>", "</answer>")))
                if not ours_well_formed:
                    assert not s["well_formed"]
                well_formed += s["well_formed"]
                if s["extracted"] is not None:
                    key = _number(s["extracted"])
                    votes[key] += 1
                    first_seen.setdefault(key, i)
            if votes:
                top = max(votes.values())
                winner = min((key for key in votes if votes[key] == top), key=first_seen.get)
            else:
                winner = None
            assert (_number(result["vote"]) if result["vote"] is not None else None) == winner
            question_right = winner is not None and winner == _number(r["gold"])
            assert result["correct"] == question_right
            correct_questions += question_right
        reported = metrics["models"]["base"][method]
        assert reported["questions"] == 6 and reported["correct"] == correct_questions
        assert reported["accuracy"] == pytest.approx(correct_questions / 6)
        assert reported["sample_accuracy"] == pytest.approx(samples_right / samples_seen)
        assert reported["format_compliance"] == pytest.approx(well_formed / samples_seen)
        md = bus.read_text("report/report.md")
        assert f"{100 * correct_questions / 6:.1f}%" in md


def test_report_html_renders_in_headless_chromium(tmp_path):
    """The self-contained page opens in a real browser and shows its plots."""
    import shutil as sh

    chromium = sh.which("chromium") or sh.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    from showwork.bus import run_once, StageResult

    bus = Bus(str(tmp_path / "run"))
    outcomes = {"base": [False, False, True, False], "sft": [True, False, True, True]}
    for model, correct in outcomes.items():
        recs = records({f"q{i}": {"greedy": c} for i, c in enumerate(correct)})
        key = stages.shard_key(model, 0, 1)
        bus.write_jsonl(key + ".jsonl", recs)
        run_once(bus, key, "d", lambda key=key: StageResult(outputs=[key + ".jsonl"], metrics={"questions": 4}))
    report.build(bus, ["base", "sft"], ["greedy"], 1, "showwork report: browser check")
    page = tmp_path / "run" / "report" / "report.html"
    shot = tmp_path / "shot.png"
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--disable-background-networking", "--hide-scrollbars", "--window-size=1200,1400",
                           f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr[-2000:]
    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (1400, 1200)
    # matplotlib's first colour (#1f77b4) fills the bars: the plots were drawn, not broken images.
    blue = np.all(np.abs(pixels - np.array([0x1F, 0x77, 0xB4]) / 255) < 0.05, axis=-1)
    assert blue.sum() > 2000
    # Table borders and text: the page is not blank.
    assert (pixels.mean(axis=-1) < 0.5).sum() > 5000


def test_training_curves_come_from_tensorboard_event_files(tmp_path):
    """What TensorBoard shows is what the report plots: scalars written by
    tensorboardX, read back without TensorFlow, replayed steps deduplicated."""
    from tensorboardX import SummaryWriter

    from showwork.eval import events

    bus = Bus(str(tmp_path / "run"))
    for run, steps in (("first", range(1, 5)), ("resumed", range(3, 7))):  # steps 3-4 replayed
        local = tmp_path / run
        writer = SummaryWriter(str(local), filename_suffix=f".{run}")
        for step in steps:
            writer.add_scalar("loss", 10.0 - step + (0.5 if run == "resumed" else 0.0), step)
            writer.add_scalar("learning_rate", 1e-4, step)
        writer.close()
        for path in local.iterdir():
            bus.write_bytes(f"sft/tensorboard/{path.name}", path.read_bytes())
    curves = report.training_curves(bus)
    assert [r["step"] for r in curves["sft"]] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in curves["sft"]] == [9.0, 8.0, 7.5, 6.5, 5.5, 4.5]
    data = bus.read_bytes(bus.list("sft/tensorboard")[0])
    assert events.scalars(data[: len(data) - 5])[:2] == events.scalars(data)[:2]  # a torn tail is dropped
    assert len(events.scalars(data[: len(data) - 5])) == len(events.scalars(data)) - 1


@pytest.mark.parametrize("where", ["length", "data"])
def test_a_damaged_event_record_is_an_error_and_the_report_falls_back_to_jsonl(tmp_path, where):
    """A flipped byte is damage, not a torn tail: the CRC says so (a corrupt length used to read as a
    short file). The report then plots the stage's metrics.jsonl copy instead."""
    from tensorboardX import SummaryWriter

    from showwork.eval import events

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(1, 4):
        writer.add_scalar("loss", 5.0 - step, step)
    writer.close()
    data = bytearray(next((tmp_path / "tb").iterdir()).read_bytes())
    first = struct.unpack_from("<Q", data, 0)[0] + 16  # the file-version record; damage the next one
    data[first + (2 if where == "length" else 14)] ^= 0x01
    with pytest.raises(events.CorruptEvents, match=f"its {where} fails its CRC"):
        events.scalars(bytes(data))
    bus = Bus(str(tmp_path / "run"))
    bus.write_bytes("sft/tensorboard/events.out.tfevents.1.x", bytes(data))
    bus.write_jsonl("sft/metrics.jsonl", [{"step": 1, "loss": 9.0}, {"step": 2, "loss": 8.0}])
    assert [r["loss"] for r in report.training_curves(bus)["sft"]] == [9.0, 8.0]


def _loss_records(values: dict[str, tuple[float, int] | None]) -> list[dict]:
    return [{"id": q, "question": q, "gold": "", "methods": {"loss": {"dropped": True} if v is None else
                                                            {"nll": v[0], "tokens": v[1], "truncated": False}}}
            for q, v in values.items()]


def test_held_out_loss_is_per_target_token_with_a_paired_change():
    """Loss = summed NLL / target tokens over the rows scored (a row the prompt alone filled is counted
    as dropped, not as zero); the change between models is on the questions both scored."""
    base = _loss_records({"a": (20.0, 10), "b": (60.0, 20), "c": None})
    tuned = _loss_records({"a": (10.0, 10), "b": (40.0, 20), "c": None})
    m = report.compute({"base": base, "sft": tuned}, ["loss"])
    assert m["held_out_loss"]["base"] == {"questions": 2, "dropped": 1, "tokens": 30, "loss": pytest.approx(80 / 30, abs=1e-5),
                                          "ci95": m["held_out_loss"]["base"]["ci95"],
                                          "perplexity": pytest.approx(2.718281828 ** (80 / 30), rel=1e-4)}
    low, high = m["held_out_loss"]["base"]["ci95"]
    assert 2.0 <= low <= 80 / 30 <= high <= 3.0  # between the two rows' own losses
    change = m["held_out_loss_changes"]["base->sft"]
    assert change["change"] == pytest.approx(50 / 30 - 80 / 30, abs=1e-5) and change["questions"] == 2
    assert change["ci95"][1] < 0  # every resample of the two questions got better
    assert m["models"] == {} and m["unsolved"] == []  # no accuracy for a loss-only evaluation
    md = report.markdown(m, ["loss"], "t", {})
    assert "## Held-out loss" in md and "## Accuracy" not in md and "| base->sft | 2 | -1.0000 |" in md


def test_loss_rows_match_the_sft_held_out_loss_on_the_same_rows(tiny):
    """The eval method's loss is the SFT loop's held-out loss (sft.eval_every) on the same rows: one
    definition, computed by both (rows cut and dropped alike)."""
    from showwork.train import sft, step as step_lib

    rows = [{"prompt": f"Question {i}: add {i} and {i}.", "target": f"<reasoning>{i}+{i}</reasoning><answer>{2 * i}"
             f"</answer>" + " pad" * (i * 7)} for i in range(1, 7)]
    rows.append({"prompt": "x " * 300, "target": "<answer>1</answer>"})  # the prompt alone fills 64 tokens
    losses = evaluate.target_losses(tiny, rows, max_seq_len=64, batch_size=4)
    assert losses[-1] == {"dropped": True} and any(x["truncated"] for x in losses[:-1])
    ours = sum(x["nll"] for x in losses[:-1]) / sum(x["tokens"] for x in losses[:-1])
    graphdef, trainable, frozen = step_lib.split(tiny.model)
    _, _, loss_fn = sft.make_step_fns(graphdef, None)
    theirs = sft.held_out_loss(loss_fn, trainable, frozen, sft.tokenize(rows, tiny.tokenizer, 64), batch=4)
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_a_loss_evaluation_runs_through_the_jobs_and_reports_loss_only(prepared, tmp_path):
    root, _ = prepared
    recipe = tmp_path / "loss.yaml"
    recipe.write_text(TINY_EVAL.replace("methods: [greedy, majority, consensus]", "methods: [loss]"))
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    evaluate_and_report(recipe, runs)
    bus = Bus(str(runs / "tiny-eval"))
    records = [r for i in range(2) for r in bus.read_jsonl(f"eval/base/shard-{i}-of-2.jsonl")]
    assert all(set(r["methods"]) == {"loss"} for r in records)
    metrics = bus.read_json("report/metrics.json")
    tokens = sum(r["methods"]["loss"]["tokens"] for r in records)
    assert metrics["held_out_loss"]["base"]["loss"] == pytest.approx(
        sum(r["methods"]["loss"]["nll"] for r in records) / tokens, abs=1e-5)
    assert 1.0 < metrics["held_out_loss"]["base"]["perplexity"] < 1e6 and metrics["models"] == {}
    md = bus.read_text("report/report.md")
    assert "## Held-out loss" in md and "## Accuracy" not in md


def test_greedy_with_the_calculator_is_reported_as_its_own_method_beside_greedy(prepared, tmp_path):
    """Through the eval and report jobs: `greedy+calc` gets its own records, samples that say how many
    values the calculator wrote, and its own row in the metrics, never folded into greedy's."""
    root, recipe = prepared
    calc = tmp_path / "calc.yaml"
    calc.write_text(TINY_EVAL.replace("methods: [greedy, majority, consensus]", "methods: [greedy, greedy+calc]"))
    shutil.copytree(root / "runs", tmp_path / "runs")
    evaluate_and_report(calc, tmp_path / "runs", shards=1)
    bus = Bus(str(tmp_path / "runs" / "tiny-eval"))
    records = bus.read_jsonl("eval/base/shard-0-of-1.jsonl")
    for record in records:
        assert set(record["methods"]) == {"greedy", "greedy+calc"}
        (sample,) = record["methods"]["greedy+calc"]["samples"]
        assert isinstance(sample["calculator_inserts"], int) and sample["temperature"] == 0.0
        assert "calculator_inserts" not in record["methods"]["greedy"]["samples"][0]
    metrics = json.loads((tmp_path / "runs" / "tiny-eval" / "report" / "metrics.json").read_text())
    base = metrics["models"]["base"]
    assert base["greedy"]["questions"] == base["greedy+calc"]["questions"] == len(records)
    greedy = sum(r["methods"]["greedy"]["correct"] for r in records) / len(records)
    assert base["greedy"]["accuracy"] == pytest.approx(greedy)
    inserted = [r["methods"]["greedy+calc"]["samples"][0]["calculator_inserts"] for r in records]
    assert base["greedy+calc"]["mean_calculator_inserts"] == pytest.approx(sum(inserted) / len(inserted))
    assert "mean_calculator_inserts" not in base["greedy"]


def test_samples_of_one_temperature_fill_batches_together_and_equal_samples_drawn_one_at_a_time(tiny, monkeypatch):
    """maj@4 over 3 questions with batches of 8: the 12 samples take 2 sampler batches, not 4 of 3
    real rows each, and every sample's text is the one its own sampler call draws alone (its seed is
    its row's, method's and index's: batch-mates change nothing). Consensus' repeated temperature
    shares a call; greedy+calc draws through the calculator the same way."""
    from showwork.sample import calculator, sampler

    rows = [{"id": f"q{i}", "question": q, "answer": a, "prompt": f"Q: {q}\nA:"}
            for i, (q, a) in enumerate(GSM8K_STYLE[:3])]
    plan = {"greedy": [0.0], "majority": [0.7] * 4, "consensus": [0.3, 1.0, 0.3], "greedy+calc": [0.0]}
    batches = []
    real = sampler._generate
    monkeypatch.setattr(sampler, "_generate", lambda *a, **kw: batches.append(1) or real(*a, **kw))
    records = evaluate.evaluate_rows(tiny, rows, plan, max_tokens=10, batch_size=8, seed=5, top_k=20,
                                     prompt_len=128)
    sampled = len(batches)
    for method, temps in plan.items():
        for t_index, temp in enumerate(temps):
            settings = sampler.SampleSettings(10, temp, 20 if temp > 0 else None, None)
            seeds = [evaluate.row_seed(5, r["id"], method, t_index) for r in rows]
            prompts = [r["prompt"] for r in rows]
            if method == "greedy+calc":
                alone = calculator.generate(tiny, prompts, settings, row_seeds=seeds, batch_size=8).texts
            else:
                alone = sampler.generate(tiny, prompts, settings, batch_size=8, prompt_len=128, row_seeds=seeds).texts
            assert [r["methods"][method]["samples"][t_index]["text"] for r in records] == alone, (method, t_index)
            assert all(r["methods"][method]["samples"][t_index]["temperature"] == temp for r in records)
    alone_batches = len(batches) - sampled
    calc_batches = alone_batches - 1 - 4 - 3  # what greedy+calc's rounds took, drawn either way
    # greedy 1 + majority 2 (12 rows) + consensus 2 (0.3 twice: 6 rows; 1.0: 3 rows), against 1 + 4 + 3.
    assert sampled == 1 + 2 + 2 + calc_batches
    assert {len(r["methods"]["majority"]["samples"]) for r in records} == {4}
    # The four draws differ: a sample put in another's place would fail the comparison above.
    assert all(len({s["text"] for s in r["methods"]["majority"]["samples"]}) > 1 for r in records)
