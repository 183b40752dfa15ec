"""Evaluation shards: pod I of N scores questions `i % N == I` of the eval split.

For each question and method, every sample is kept with its extracted
answer, correctness, format flags and reasoning length, plus the vote.
Methods:
* `greedy`: one sample at temperature 0;
* `majority`: k samples at one temperature, majority vote (maj@k);
* `consensus`: one sample at each of several temperatures, majority vote;
* `greedy+calc`: one greedy sample with a calculator in the loop (showwork.sample.calculator:
  each "expression =" the model writes gets its exact value), each sample recording how many
  values the calculator wrote (`calculator_inserts`);
* `loss`: no sampling: the negative log-likelihood of the row's reference
  target given its prompt (teacher forcing, cut as SFT cuts it), summed,
  with its token count; the report turns them into loss and perplexity.
A shard's records are written in one atomic write at the end
(`eval/<model>/shard-I-of-N.jsonl`), so a retried pod can never duplicate
or half-write them, and a finished shard (marker present) is skipped.
"""

from __future__ import annotations

import hashlib
import time

import jax

from showwork.errors import UsageError
from showwork import stages
from showwork.bus import Bus, StageResult, run_once
from showwork.config import EvalConfig
from showwork.eval import voting
from showwork.model import loader, meshes
from showwork.sample import calculator, forward, sampler
from showwork.task import answers, code


def shard_rows(rows: list[dict], index: int, count: int) -> list[dict]:
    if count <= 0 or not 0 <= index < count:
        raise UsageError(f"shard {index} of {count} does not exist")
    return [row for i, row in enumerate(rows) if i % count == index]


def score(text: str, gold: str, tests: str | None = None) -> dict:
    """One sample, scored every way the report needs; a code row (`tests`) by running its code."""
    if tests:
        return score_code(text, tests)
    found = answers.extract(text)
    flags = answers.check_format(text)
    strict, flexible = answers.lm_eval_strict(text), answers.lm_eval_flexible(text)
    return {
        "text": text,
        "extracted": found.value,
        "method": found.method,
        "correct": found.value is not None and found.value == answers.normalize(gold),
        "well_formed": flags.well_formed,
        "reasoning_words": flags.reasoning_words,
        "lm_eval_strict": answers.lm_eval_match(strict, gold),
        "lm_eval_flexible": answers.lm_eval_match(flexible, gold),
    }


PASSED, FAILED = "passed", "failed"  # a code sample's `extracted`: its code passed the row's tests, or not


def score_code(text: str, tests: str) -> dict:
    """A code sample: correct when its code passes the tests in the sandbox. Its `extracted` is
    PASSED or FAILED, or None without code, so maj@k counts as solved when more samples pass than
    fail (every failing program counts against, whatever it is)."""
    (verdict,) = code.verdicts([text], [tests])
    flags = answers.check_format(text)
    found = code.extract(text)
    extracted = None if found is None else PASSED if verdict is not None and verdict.passed else FAILED
    return {"text": text, "extracted": extracted, "method": "code", "correct": extracted == PASSED,
            "status": verdict.status if verdict else "no_code", "well_formed": flags.well_formed,
            "reasoning_words": flags.reasoning_words, "lm_eval_strict": False, "lm_eval_flexible": False}


def method_plan(ev: EvalConfig) -> dict[str, list[float]]:
    """Sampled method -> the temperature of each of its samples, in order (`loss` samples nothing)."""
    plan = {}
    for method in ev.methods:
        if method == "loss":
            continue
        if method in ("greedy", "greedy+calc"):
            plan[method] = [0.0]
        elif method == "majority":
            plan[method] = [ev.temperature] * ev.samples
        elif method == "consensus":
            plan[method] = list(ev.consensus_temperatures)
        else:
            raise UsageError(f"unknown evaluation method {method!r}")
    return plan


def row_seed(seed: int, question_id: str, method: str, sample: int) -> int:
    """A sample's seed from what it is, not where it sits: shard-independent."""
    digest = hashlib.sha256(f"{seed}/{question_id}/{method}/{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def sample_groups(temps: list[float]) -> list[list[int]]:
    """A method's sample indices grouped by temperature, in order of first appearance: the samples of
    one group are drawn in one sampler call, so they fill its batches together (maj@k over a shard of
    3 questions is one batch of 12 rows, not k batches of 3 real rows and padding)."""
    groups: dict[float, list[int]] = {}
    for index, temp in enumerate(temps):
        groups.setdefault(temp, []).append(index)
    return list(groups.values())


def evaluate_rows(loaded, rows: list[dict], plan: dict[str, list[float]], *, max_tokens: int, batch_size: int,
                  seed: int, top_k: int | None, prompt_len: int | None = None,
                  stop_strings: tuple[str, ...] = (), log=None) -> list[dict]:
    """Sample and score every method for every row; one record per row.

    `prompt_len` should be fixed for the whole eval split (not the shard),
    so every shard runs the same shapes and gets the same numbers. With it
    fixed, a sample's tokens depend only on its row, method and index (its
    own seed), not on which samples share its batch (without it, a batch is
    padded to its own longest prompt).
    """
    records = [{"id": r["id"], "question": r["question"], "gold": r["answer"], "source": r.get("source", ""),
                "methods": {}} for r in rows]
    tests = [r.get("tests") for r in rows]
    for method, temps in plan.items():
        drawn: dict[int, list] = {}  # sample index -> (text, calculator inserts) per row
        for indices in sample_groups(temps):
            temp = temps[indices[0]]
            settings = sampler.SampleSettings(max_tokens, temp, top_k if temp > 0 else None, None)
            started = time.perf_counter()
            # Sample-major: the group's first sample for every row, then its second, ...
            prompts = [r["prompt"] for _ in indices for r in rows]
            seeds = [row_seed(seed, r["id"], method, t_index) for t_index in indices for r in rows]
            inserts = [None] * len(prompts)
            if method == "greedy+calc":  # rounds of re-prefilled prompts: no one prompt length
                out = calculator.generate(loaded, prompts, settings, row_seeds=seeds,
                                          batch_size=batch_size, stop_strings=stop_strings)
                inserts = out.inserts
            else:
                out = sampler.generate(loaded, prompts, settings, batch_size=batch_size,
                                       prompt_len=prompt_len, stop_strings=stop_strings, row_seeds=seeds)
            for k, t_index in enumerate(indices):
                part = slice(k * len(rows), (k + 1) * len(rows))
                drawn[t_index] = list(zip(out.texts[part], inserts[part], strict=True))
            if log:
                log.info("sampled", method=method, samples=len(indices), done=len(drawn), of=len(temps),
                         questions=len(rows), samples_per_second=round(len(prompts) / (time.perf_counter() - started), 3))
        for t_index, temp in enumerate(temps):
            for record, (text, inserted), test in zip(records, drawn[t_index], tests, strict=True):
                sample = {**score(text, record["gold"], test), "temperature": temp}
                if inserted is not None:
                    sample["calculator_inserts"] = inserted
                record["methods"].setdefault(method, {"samples": []})["samples"].append(sample)
    for record, test in zip(records, tests):
        expected = PASSED if test else answers.normalize(record["gold"])
        for result in record["methods"].values():
            vote = voting.majority([s["extracted"] for s in result["samples"]])
            result.update(vote=vote.answer, votes=vote.count, margin=vote.margin,
                          correct=vote.answer is not None and vote.answer == expected)
    return records


def target_losses(loaded, rows: list[dict], max_seq_len: int, batch_size: int) -> list[dict]:
    """Per row: the summed negative log-likelihood of its target given its prompt and the target tokens
    scored ({"dropped": True} where the prompt alone leaves no room, as SFT drops such rows)."""
    from flax import nnx

    from showwork.sample.logprobs import completion_logps
    from showwork.train.sft import fit

    graphdef, state = nnx.split(loaded.model)
    logps_fn = jax.jit(lambda st, p, c, m: (completion_logps(graphdef, (st,), p, c, m) * m).sum(-1))
    fitted = [fit(r, loaded.tokenizer, max_seq_len) for r in rows]
    kept = [i for i, f in enumerate(fitted) if f is not None]
    out = [{"dropped": True} for _ in rows]
    for start in range(0, len(kept), batch_size):
        part = kept[start:start + batch_size]
        prompt, completion, mask = forward.pack([fitted[i][0] for i in part], [fitted[i][1] for i in part],
                                                completion_bucket=128)
        sums = jax.device_get(logps_fn(state, prompt, completion, mask))
        for i, total in zip(part, sums):
            out[i] = {"nll": -float(total), "tokens": len(fitted[i][1]), "truncated": fitted[i][2]}
    return out


def shard_headline(records: list[dict], method: str) -> dict:
    """The shard's first method in one number: accuracy, or for `loss` the loss per target token."""
    if method == "loss":
        kept = [r["methods"]["loss"] for r in records if not r["methods"]["loss"].get("dropped")]
        tokens = sum(x["tokens"] for x in kept)
        return {"loss": sum(x["nll"] for x in kept) / tokens if tokens else 0.0}
    first = [r["methods"][method]["correct"] for r in records]
    return {f"{method}_accuracy": sum(first) / len(first) if first else 0.0}


def model_for(bus: Bus, cfg, name: str, mesh):
    """Load the model a report calls `name` (base, sft, self-teach, grpo) on one eval pod's `mesh`."""
    return loader.load_from(bus, stages.eval_model_key(cfg, name), cfg.model, cfg.tier.dtype, mesh)


def run_shard(bus: Bus, cfg, model: str, index: int, count: int, log):
    """Evaluate one shard of one model; skipped if its marker exists with this config."""
    ev = cfg.eval
    stage = stages.Stage("eval", stages.shard_key(model, index, count), f"evaluate {model}", (model, index, count))
    digest = stages.digest(cfg, stage)

    def body() -> StageResult:
        rows = bus.read_jsonl(stages.EVAL_ROWS)
        if ev.questions is not None:
            rows = rows[: ev.questions]
        mine = shard_rows(rows, index, count)
        mesh = meshes.tier_mesh(cfg.tier.mesh_for_eval())
        # An eval pod's mesh, also where the caller runs under the training slice's (the local
        # pipeline on a multi-host tier): jit refuses weights on one mesh under another.
        with jax.set_mesh(mesh):
            loaded = model_for(bus, cfg, model, mesh)
            prompt_len = forward.bucket(max(len(loaded.tokenizer.encode(r["prompt"], bos=True)) for r in rows))
            started = time.perf_counter()
            records = evaluate_rows(loaded, mine, method_plan(ev), max_tokens=ev.max_tokens,
                                    batch_size=cfg.tier.eval_batch, seed=ev.seed, top_k=ev.top_k,
                                    prompt_len=prompt_len, stop_strings=ev.stop_strings, log=log)
            if "loss" in ev.methods:
                for record, loss in zip(records, target_losses(loaded, mine, ev.loss_max_seq_len,
                                                               cfg.tier.eval_batch)):
                    record["methods"]["loss"] = loss
            seconds = time.perf_counter() - started
        bus.write_jsonl(f"{stage.key}.jsonl", records)
        return StageResult(outputs=[f"{stage.key}.jsonl"], inputs=[stages.EVAL_ROWS],
                           metrics={"questions": len(records), "seconds": round(seconds, 1),
                                    "questions_per_second": round(len(records) / seconds, 4) if seconds else 0.0,
                                    **shard_headline(records, ev.methods[0])})

    return run_once(bus, stage.key, digest, body, log)
