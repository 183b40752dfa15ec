"""Self-teaching: rounds of sample → analyse → keep and target → fine-tune (DSA-CAST; STaR/RFT at one
round without targeting).

Each round takes the next `questions` training rows and, with the current model:

1. samples k solutions per question;
2. diagnoses every sample (showwork.task.diagnosis: correct, length, format,
   arithmetic — a written equation is false — or setup) and writes the round's
   error analysis;
3. keeps the distinct verified samples (well-formed, right, every equation true) and
   adds `targeted_per_kind` fresh problems per failure kind, with their reference
   solutions (showwork.task.targeted: the failed template drawn again with new
   numbers, or the nearest unused training problem);
4. fine-tunes on those (its own schedule per round), and goes on with the result.

Bus, per round r: `self-teach/round-r/samples.jsonl` (every sample with its kind
and wrong equations), `analysis.json`, `targeted.jsonl`; for the stage:
`self-teach/samples.jsonl` (what it trained on), `yield.json` (kept of sampled,
per round and in total) and `analysis.json` (every round's analysis, for the
report). A restarted stage reuses finished rounds' samples and checkpoints.
"""

from __future__ import annotations

from showwork.errors import RunError, UsageError
from showwork import stages
from showwork.bus import Bus, StageResult, run_once
from showwork.config import SelfTeachConfig
from showwork.model import export, loader, lora, meshes
from showwork.sample import sampler
from showwork.task import answers, arithmetic, data, diagnosis, targeted
from showwork.task.prompts import END_OF_TURN
from showwork.train import sft


def round_key(round_: int, name: str) -> str:
    return f"self-teach/round-{round_}/{name}"


def verified(body: str, gold: str) -> bool:
    """A trace worth learning from: well-formed, the gold answer, and no false equation on the way
    (diagnosis's `correct`; a right answer reached through a slip is not kept)."""
    return (answers.check_format(body).well_formed and answers.is_correct(body, gold)
            and not arithmetic.wrong(answers.xml_reasoning(body) or body))


def keepers(rows: list[dict], texts: list[str], k: int, keep_per_question: int) -> tuple[list[dict], dict]:
    """Filter k samples per row (row-major) to verified, distinct ones."""
    kept, solved = [], 0
    for i, row in enumerate(rows):
        seen, mine = set(), []
        for text in texts[i * k:(i + 1) * k]:
            body = text.strip()
            if body in seen or not verified(body, row["answer"]):
                continue
            seen.add(body)
            mine.append({**row, "target": body + END_OF_TURN, "source": "self-teach"})
        solved += bool(mine)
        kept.extend(mine[:keep_per_question])
    sampled = len(rows) * k
    return kept, {"questions": len(rows), "questions_solved": solved, "samples": sampled,
                  "kept": len(kept), "yield": len(kept) / sampled if sampled else 0.0}


def round_rows(rows: list[dict], questions: int, round_: int) -> list[dict]:
    """Round r's questions: the next `questions` training rows, wrapping around a short split."""
    if not rows:
        return []
    start = (round_ * questions) % len(rows)
    return [rows[(start + i) % len(rows)] for i in range(min(questions, len(rows)))]


def sample_round(bus: Bus, loaded, rows: list[dict], st: SelfTeachConfig, batch: int, round_: int, log,
                 digest: str = "") -> list[dict]:
    """Every sample of the round, diagnosed; on the bus after the first attempt (written last), reused
    only by an attempt with the same config digest and the same questions."""
    key, meta_key = round_key(round_, "samples.jsonl"), round_key(round_, "samples-for.json")
    meta = {"digest": digest, "questions": [r["id"] for r in rows], "samples_per_question": st.samples_per_question}
    if bus.exists(key) and (not bus.exists(meta_key) or bus.read_json(meta_key) != meta):
        log.warning("self-teach samples from another config or other questions: sampling again", round=round_)
        bus.delete(key)
    if not bus.exists(key):
        settings = sampler.SampleSettings(st.max_tokens, st.temperature, st.top_k, None)
        k = st.samples_per_question
        prompts = [r["prompt"] for r in rows for _ in range(k)]
        out = sampler.generate(loaded, prompts, settings, seed=st.sft.seed + round_, batch_size=batch)
        diagnosed = [{"id": rows[i // k]["id"], "sample": i % k, "text": text, "truncated": not stopped,
                      **diagnosis.diagnose(text, rows[i // k]["answer"], not stopped)}
                     for i, (text, stopped) in enumerate(zip(out.texts, out.stopped))]
        bus.write_json(meta_key, meta)
        bus.write_jsonl(key, diagnosed)
        log.info("self-teach samples", round=round_, **diagnosis.analysis(diagnosed)["samples_by_kind"])
    return bus.read_jsonl(key)


def round_data(bus: Bus, cfg, rows: list[dict], pool: list[dict], diagnosed: list[dict], round_: int) -> tuple:
    """(the round's training rows, its analysis with yield and targeted counts); written to the bus."""
    st = cfg.self_teach
    kept, stats = keepers(rows, [d["text"] for d in diagnosed], st.samples_per_question, st.keep_per_question)
    made = []
    if st.targeted_per_kind:
        by_id = {r["id"]: r for r in rows}
        failed = {kind: [by_id[q] for q in ids] for kind, ids in diagnosis.failed_by_kind(diagnosed).items()}
        avoid = {data.question_key(r["question"]) for r in [*bus.read_jsonl(stages.EVAL_ROWS), *rows]}
        made = targeted.targeted(failed, pool, st.targeted_per_kind, round_, _formatter(cfg), avoid)
    found = {**diagnosis.analysis(diagnosed), "round": round_, "yield": stats,
             "targeted_by_kind": {k: sum(t["targeted_kind"] == k for t in made) for k in diagnosis.FAILURES},
             "targeted_by_how": {h: sum(t["how"] == h for t in made) for h in ("regenerated", "nearest")}}
    bus.write_jsonl(round_key(round_, "targeted.jsonl"), made)
    bus.write_json(round_key(round_, "analysis.json"), found)
    return kept + made, found


def _formatter(cfg):
    """A raw record (reasoning-gym's or the recipe's source) -> a formatted row, or None if rejected."""
    d = cfg.data

    def to_row(record: dict):
        row = data.to_row(record, d.source, d.calculator_annotations, d.max_question_chars, d.max_solution_chars)
        return None if isinstance(row, data.Rejected) else data.formatted(row, cfg.prompt.system)

    return to_row


def train_round(bus: Bus, cfg, loaded, rows: list[dict], round_: int, digest: str, log) -> dict:
    """Fine-tune the model in place on one round's rows (LoRA merged back when the recipe adapts)."""
    st = cfg.self_teach
    if cfg.model.lora:
        loaded.model = lora.add(loaded.model, cfg.model.lora, st.sft.seed + round_)
    final = sft.train(bus, loaded, rows, st.sft, st.sft.batch_size or cfg.tier.train_batch,
                      f"self-teach/round-{round_}", digest, log, None, cfg.tier.max_refused_steps)
    if cfg.model.lora:
        lora.merge(loaded.model)
    return final


def run(bus: Bus, cfg, log):
    """The self-teaching stage: every round, then export and mark."""
    st = cfg.self_teach
    if st is None:
        raise UsageError(f"recipe {cfg.recipe!r} has no self_teach section")
    stage = stages.Stage("self-teach", "self-teach", "self-teaching")
    digest = stages.digest(cfg, stage)

    def body() -> StageResult:
        train_rows = bus.read_jsonl(stages.TRAIN_ROWS)
        loaded = loader.load_from(bus, stages.start_key(cfg, "self-teach"), cfg.model, cfg.tier.dtype,
                                  meshes.tier_mesh(cfg.tier.mesh), 0, cfg.tier.remat)
        trained, rounds, final = [], [], {}
        for r in range(st.rounds):
            rows = round_rows(train_rows, st.questions, r)
            diagnosed = sample_round(bus, loaded, rows, st, cfg.tier.eval_batch, r, log, digest)
            asked = {row["id"] for row in rows}
            pool = [row for row in train_rows if row["id"] not in asked]
            mine, found = round_data(bus, cfg, rows, pool, diagnosed, r)
            rounds.append(found)
            _write_totals(bus, rounds, trained + mine)
            if not mine:
                raise RunError(f"self-teaching round {r + 1} kept no samples ({found['yield']}): the model solves "
                               f"none of {len(rows)} questions in the required format and no problems were targeted; "
                               "run SFT first, or set self_teach.targeted_per_kind")
            trained += mine
            final = train_round(bus, cfg, loaded, mine, r, digest, log)
        outputs = export.to_bus(bus, stages.model_key("self-teach"), loaded,
                                export.dtype_for(cfg.model, cfg.tier.dtype))
        final["sharded_params"] = meshes.sharded_params(loaded.model)
        metrics = {**rounds[-1]["yield"], **final, "rounds": st.rounds, "trained_rows": len(trained)}
        return StageResult(outputs=outputs + [stages.SELF_TEACH_SAMPLES, stages.SELF_TEACH_YIELD,
                                              stages.SELF_TEACH_ANALYSIS],
                           inputs=[stages.TRAIN_ROWS], metrics=metrics)

    return run_once(bus, stage.key, digest, body, log)


def _write_totals(bus: Bus, rounds: list[dict], trained: list[dict]) -> None:
    """The stage's summary files, rewritten after each round's analysis."""
    samples = sum(r["yield"]["samples"] for r in rounds)
    kept = sum(r["yield"]["kept"] for r in rounds)
    bus.write_json(stages.SELF_TEACH_YIELD, {**rounds[-1]["yield"], "rounds": [r["yield"] for r in rounds],
                                             "total_samples": samples, "total_kept": kept,
                                             "total_yield": kept / samples if samples else 0.0})
    bus.write_json(stages.SELF_TEACH_ANALYSIS, rounds)
    bus.write_jsonl(stages.SELF_TEACH_SAMPLES, trained)
