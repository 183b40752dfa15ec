"""The report: merge every evaluation shard, compute the numbers, draw the plots.

Outputs under `report/`: `metrics.json` (every number), `report.md`,
`report.html` (self-contained: plots embedded), and the PNG plots.
Merging refuses an incomplete shard set and names the missing shards.
Everything is computed from records sorted by question id, so the result
does not depend on how the questions were sharded.
"""

from __future__ import annotations

import base64
import html
import io
import math
from statistics import mean

import numpy as np

from showwork import stages
from showwork.markdown import cell
from showwork.errors import RunError
from showwork.bus import Bus, StageResult, read_marker, run_once, verify_outputs

LENGTH_BUCKETS = (0, 10, 20, 30, 40, 50, 60, 80, 100, 150)


class IncompleteShards(RunError):
    """Some evaluation shards have not finished: the report names them and waits."""


# ---------------------------------------------------------------- loading


def load_model_records(bus: Bus, model: str, count: int) -> list[dict]:
    """All records of one model, from shards 0..count-1, sorted by id."""
    markers = {i: read_marker(bus, stages.shard_key(model, i, count)) for i in range(count)}
    missing = [stages.shard_key(model, i, count) for i, marker in markers.items() if marker is None]
    if missing:
        raise IncompleteShards(
            f"cannot merge {model!r}: {len(missing)} of {count} shards have not finished: "
            + ", ".join(bus.uri(m + ".jsonl") for m in missing))
    records = []
    for i, marker in markers.items():
        verify_outputs(bus, marker)  # a shard file cut or replaced after its marker is refused
        records.extend(bus.read_jsonl(stages.shard_key(model, i, count) + ".jsonl"))
    ids = [r["id"] for r in records]
    if len(ids) != len(set(ids)):
        raise RunError(f"duplicate question ids across {model!r} shards")
    return sorted(records, key=lambda r: r["id"])


# ---------------------------------------------------------------- numbers


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sound at 0% and 100%)."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bucket_label(words: int) -> str:
    for low, high in zip(LENGTH_BUCKETS, LENGTH_BUCKETS[1:]):
        if low <= words < high:
            return f"{low}-{high - 1}"
    return f"{LENGTH_BUCKETS[-1]}+"


def method_metrics(records: list[dict], method: str) -> dict:
    results = [r["methods"][method] for r in records if method in r["methods"]]
    n = len(results)
    correct = sum(bool(x["correct"]) for x in results)
    samples = [s for x in results for s in x["samples"]]
    low, high = wilson(correct, n)
    # greedy+calc: how many values the calculator wrote, per sample, beside what it scored.
    inserted = [s["calculator_inserts"] for s in samples if "calculator_inserts" in s]
    return {
        **({"mean_calculator_inserts": mean(inserted)} if inserted else {}),
        "questions": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci95": [round(low, 4), round(high, 4)],
        "format_compliance": mean(s["well_formed"] for s in samples) if samples else 0.0,
        "mean_reasoning_words": mean(s["reasoning_words"] for s in samples) if samples else 0.0,
        "sample_accuracy": mean(s["correct"] for s in samples) if samples else 0.0,
        "lm_eval_strict_match": mean(s["lm_eval_strict"] for s in samples) if samples else 0.0,
        "lm_eval_flexible_extract": mean(s["lm_eval_flexible"] for s in samples) if samples else 0.0,
        "mean_margin": mean(x["margin"] for x in results) if results else 0.0,
    }


def fixed_broke(before: dict[str, bool], after: dict[str, bool]) -> dict:
    common = sorted(set(before) & set(after))
    return {
        "fixed": sum(1 for q in common if after[q] and not before[q]),
        "broke": sum(1 for q in common if before[q] and not after[q]),
        "questions": len(common),
    }


def sign_test(fixed: int, broke: int) -> float:
    """Two-sided exact sign test of fixes against breaks (binomial, p = 1/2): how likely a split at
    least this uneven is if the change helped and hurt questions alike. Unchanged questions carry no
    information about the direction and are left out, as in McNemar's exact test."""
    n = fixed + broke
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(fixed, broke) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def by_length(records: list[dict], method: str) -> dict[str, dict]:
    """Accuracy of individual samples by their reasoning length (words)."""
    buckets: dict[str, list[bool]] = {}
    for r in records:
        for s in r["methods"].get(method, {}).get("samples", []):
            buckets.setdefault(bucket_label(s["reasoning_words"]), []).append(bool(s["correct"]))
    order = [bucket_label(b) for b in LENGTH_BUCKETS]
    return {k: {"samples": len(buckets[k]), "accuracy": mean(buckets[k])} for k in order if k in buckets}


def between_models_by_source(records_by_model: dict[str, list[dict]], outcome: dict, methods: list[str]) -> dict:
    """Fixed and broke between consecutive models within each source: a mixed eval set's sources can
    move apart (the demo's own task and the gsm_symbolic questions scored beside it)."""
    source_of = {r["id"]: r.get("source", "") for recs in records_by_model.values() for r in recs}
    models = list(records_by_model)
    out: dict = {}
    for a, b in zip(models, models[1:]):
        out[f"{a}->{b}"] = {meth: {src: fixed_broke(*({q: ok for q, ok in outcome[m][meth].items()
                                                       if source_of[q] == src} for m in (a, b)))
                                   for src in sorted(set(source_of.values()))} for meth in methods}
    return out


def by_source(records: list[dict], method: str) -> dict[str, dict]:
    """Accuracy per data source (a mixed recipe: math answers and code that passes its tests)."""
    out = {}
    for source in sorted({r.get("source", "") for r in records}):
        results = [r["methods"][method] for r in records if r.get("source", "") == source and method in r["methods"]]
        correct, n = sum(bool(x["correct"]) for x in results), len(results)
        low, high = wilson(correct, n)
        out[source] = {"questions": n, "correct": correct, "accuracy": correct / n if n else 0.0,
                       "ci95": [round(low, 4), round(high, 4)]}
    return out


def sampled_methods(methods: list[str]) -> list[str]:
    """The methods scored by accuracy (every one but `loss`)."""
    return [m for m in methods if m != "loss"]


def held_out_reward(records_by_model: dict[str, list[dict]], methods: list[str], weights: dict[str, float]) -> dict:
    """The GRPO reward (the recipe's weights) of every held-out sample: per model and method its mean
    over questions (each question's samples averaged) with a 95% bootstrap interval; between
    consecutive models the paired change on the questions both answered. Code rows are left out
    (their reward runs the sandbox again; pass@1 is their accuracy)."""
    from showwork.task.rewards import combined

    per_question: dict = {}
    for model, recs in records_by_model.items():
        per_question[model] = {}
        for meth in methods:
            rows = [(r, r["methods"][meth]["samples"]) for r in recs
                    if meth in r["methods"] and not any(x.get("method") == "code" for x in r["methods"][meth]["samples"])]
            per_question[model][meth] = {r["id"]: mean(combined(weights, [r["question"]] * len(ss), [x["text"] for x in ss],
                                                                [r["gold"]] * len(ss))[0]) for r, ss in rows if ss}
    out: dict = {"held_out_reward": {}, "held_out_reward_changes": {}}
    for model, per in per_question.items():
        out["held_out_reward"][model] = {}
        for meth, table in per.items():
            col = np.asarray(list(table.values()), np.float64)
            low, high = _bootstrap([col], np.mean) if len(col) else (0.0, 0.0)
            out["held_out_reward"][model][meth] = {"questions": len(col), "mean": round(float(col.mean()), 5) if len(col) else 0.0,
                                                   "ci95": [round(low, 5), round(high, 5)]}
    models = list(per_question)
    for a, b in zip(models, models[1:]):
        out["held_out_reward_changes"][f"{a}->{b}"] = {}
        for meth in methods:
            common = sorted(set(per_question[a][meth]) & set(per_question[b][meth]))
            diff = np.asarray([per_question[b][meth][q] - per_question[a][meth][q] for q in common], np.float64)
            low, high = _bootstrap([diff], np.mean) if common else (0.0, 0.0)
            out["held_out_reward_changes"][f"{a}->{b}"][meth] = {
                "questions": len(common), "change": round(float(diff.mean()), 5) if common else 0.0,
                "ci95": [round(low, 5), round(high, 5)]}
    return out


def compute(records_by_model: dict[str, list[dict]], methods: list[str],
            reward_weights: dict[str, float] | None = None) -> dict:
    """Every number in the report, from merged records (model order = report order); with
    `reward_weights` (a GRPO recipe's rewards) also each model's held-out reward."""
    # metrics.json is written with sorted keys; these lists keep the report's order.
    out: dict = {"model_order": list(records_by_model), "method_order": list(methods),
                 "models": {}, "between_methods": {}, "between_models": {}, "by_reasoning_length": {}, "unsolved": []}
    if "loss" in methods:
        out.update(held_out_loss(records_by_model))
    methods = sampled_methods(methods)
    if not methods:
        return out
    outcome = {m: {meth: {r["id"]: bool(r["methods"][meth]["correct"]) for r in recs if meth in r["methods"]}
                   for meth in methods} for m, recs in records_by_model.items()}
    if len({r.get("source", "") for recs in records_by_model.values() for r in recs}) > 1:
        out["by_source"] = {m: {meth: by_source(recs, meth) for meth in methods} for m, recs in records_by_model.items()}
    for model, recs in records_by_model.items():
        out["models"][model] = {meth: method_metrics(recs, meth) for meth in methods}
        out["by_reasoning_length"][model] = {meth: by_length(recs, meth) for meth in methods}
        base = methods[0]
        out["between_methods"][model] = {f"{base}->{meth}": fixed_broke(outcome[model][base], outcome[model][meth])
                                         for meth in methods[1:]}
    models = list(records_by_model)
    for a, b in zip(models, models[1:]):
        out["between_models"][f"{a}->{b}"] = {meth: fixed_broke(outcome[a][meth], outcome[b][meth]) for meth in methods}
    if "by_source" in out:
        out["between_models_by_source"] = between_models_by_source(records_by_model, outcome, methods)
    if reward_weights:
        out.update(held_out_reward(records_by_model, methods, reward_weights))
    solved = {}
    for model, recs in records_by_model.items():
        for r in recs:
            solved[r["id"]] = solved.get(r["id"], False) or any(r["methods"][m]["correct"] for m in methods
                                                                if m in r["methods"])
    questions = {r["id"]: r for recs in records_by_model.values() for r in recs}
    out["unsolved"] = [{"id": q, "question": questions[q]["question"], "gold": questions[q]["gold"]}
                       for q in sorted(solved) if not solved[q]]
    return out


def _loss_table(recs: list[dict]) -> dict[str, tuple[float, int]]:
    """Question id -> (summed target NLL, target tokens), rows the prompt alone filled left out."""
    return {r["id"]: (r["methods"]["loss"]["nll"], r["methods"]["loss"]["tokens"]) for r in recs
            if "loss" in r["methods"] and not r["methods"]["loss"].get("dropped")}


def _bootstrap(columns: list[np.ndarray], stat, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of `stat` over questions resampled with replacement (paired: the same
    resampled questions in every column)."""
    rng = np.random.default_rng(seed)
    n = len(columns[0])
    values = [stat(*(c[idx] for c in columns)) for idx in rng.integers(0, n, size=(draws, n))]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def held_out_loss(records_by_model: dict[str, list[dict]]) -> dict:
    """Per model: loss per target token (nats), its 95% bootstrap interval over questions, perplexity;
    between consecutive models: the change in loss on the questions both scored, paired interval."""
    per_token = lambda nll, tok: nll.sum() / max(tok.sum(), 1)  # noqa: E731
    tables = {m: _loss_table(recs) for m, recs in records_by_model.items()}
    out: dict = {"held_out_loss": {}, "held_out_loss_changes": {}}
    for model, table in tables.items():
        nll, tok = (np.asarray([v[k] for v in table.values()], np.float64) for k in (0, 1))
        loss = float(per_token(nll, tok)) if len(tok) else 0.0
        low, high = _bootstrap([nll, tok], per_token) if len(tok) else (0.0, 0.0)
        out["held_out_loss"][model] = {
            "questions": len(table), "dropped": len(records_by_model[model]) - len(table), "tokens": int(tok.sum()),
            "loss": round(loss, 5), "ci95": [round(low, 5), round(high, 5)], "perplexity": round(math.exp(loss), 4)}
    models = list(tables)
    for a, b in zip(models, models[1:]):
        common = sorted(set(tables[a]) & set(tables[b]))
        cols = [np.asarray([tables[m][q][k] for q in common], np.float64) for m in (a, b) for k in (0, 1)]
        change = lambda na, ta, nb, tb: per_token(nb, tb) - per_token(na, ta)  # noqa: E731
        low, high = _bootstrap(cols, change) if common else (0.0, 0.0)
        out["held_out_loss_changes"][f"{a}->{b}"] = {
            "questions": len(common), "change": round(float(change(*cols)), 5) if common else 0.0,
            "ci95": [round(low, 5), round(high, 5)]}
    return out


# ---------------------------------------------------------------- plots


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plot_accuracy(metrics: dict, methods: list[str]) -> bytes:
    """Accuracy (with 95% CI) and format compliance, per model and method.

    The accuracy axis zooms to the data (a 270M model's 5% is invisible on
    a 0-100% axis); format compliance keeps the full 0-100% scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(metrics["models"])
    fig, (ax, fmt) = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / max(1, len(methods))
    top = 0.0
    for j, meth in enumerate(methods):
        rows = [metrics["models"][m][meth] for m in models]
        accs = [r["accuracy"] for r in rows]
        lows = [a - r["ci95"][0] for a, r in zip(accs, rows)]
        highs = [r["ci95"][1] - a for a, r in zip(accs, rows)]
        top = max([top] + [r["ci95"][1] for r in rows])
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(models))]
        bars = ax.bar(xs, accs, width, yerr=[lows, highs], capsize=3, label=meth)
        ax.bar_label(bars, labels=[f"{100 * a:.1f}%" for a in accs], fontsize=7, padding=2)
        fmt.bar(xs, [r["format_compliance"] for r in rows], width, label=meth)
    for axis, label, title in ((ax, "accuracy (95% CI)", "Accuracy"), (fmt, "well-formed samples", "Format compliance")):
        axis.set_xticks(range(len(models)), models)
        axis.set_ylabel(label)
        axis.set_title(title)
        axis.legend(fontsize=8)
    ax.set_ylim(0, min(1.0, max(0.1, top * 1.15)))
    fmt.set_ylim(0, 1.05)
    return _png(fig)


def plot_length(metrics: dict, method: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for model, per_method in metrics["by_reasoning_length"].items():
        rows = per_method.get(method, {})
        if rows:
            ax.plot(list(rows), [v["accuracy"] for v in rows.values()], marker="o", label=model)
    ax.set_xlabel("reasoning length (words)")
    ax.set_ylabel(f"{method} sample accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy by reasoning length")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=45)
    return _png(fig)


def plot_training(curves: dict[str, list[dict]]) -> bytes | None:
    """Loss (SFT) and reward (GRPO) per step, from the stages' TensorBoard logs."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], curves.items()):
        key = "loss" if name.startswith("sft") or name.startswith("self-teach") else "reward"
        ax.plot([r["step"] for r in rows], [r.get(key, float("nan")) for r in rows], label=key)
        held_out = [r for r in rows if "eval_loss" in r]  # sft.eval_every: loss on the held-out rows
        if held_out:
            ax.plot([r["step"] for r in held_out], [r["eval_loss"] for r in held_out], "o-", label="held-out loss")
            ax.legend()
        ax.set_title(f"{name}: {key}")
        ax.set_xlabel("step")
    return _png(fig)


def training_curves(bus: Bus) -> dict[str, list[dict]]:
    """Per-stage rows of scalars, read from the stages' TensorBoard event files
    (`<stage>/tensorboard/`); a stage without event files, or with a damaged
    one (CRC mismatch), falls back to its metrics.jsonl copy."""
    from showwork.eval import events

    curves = {}
    for stage in stages.TRAINING_DIRS:
        # Event file names start with their creation time: name order is write order.
        files = sorted((k for k in bus.list(stages.tensorboard_key(stage)) if "tfevents" in k),
                       key=lambda k: k.rsplit("/", 1)[-1])
        try:
            rows = events.curves([bus.read_bytes(k) for k in files])
        except events.CorruptEvents:
            rows = []
        if not rows:
            rows = sorted((r for key in sorted(k for k in bus.list(stage) if k.endswith("metrics.jsonl"))
                           for r in bus.read_jsonl(key)), key=lambda r: r["step"])
        if rows:
            curves[stage] = rows
    return curves


def grpo_samples(bus: Bus) -> dict[str, list[dict]]:
    """The completions GRPO logged at its first and at its last step (grpo.log_completions), read
    from every session's samples.jsonl; empty when it logged none (or the recipe has no GRPO)."""
    rows, session = [], 0
    while bus.exists(stages.samples_key(stages.grpo_key(session))):
        rows += bus.read_jsonl(stages.samples_key(stages.grpo_key(session)))
        session += 1
    if not rows:
        return {}
    first, last = min(r["step"] for r in rows), max(r["step"] for r in rows)
    return {"first": [r for r in rows if r["step"] == first], "last": [r for r in rows if r["step"] == last]}


def samples_markdown(samples: dict[str, list[dict]], prompts: int = 2) -> list[str]:
    """GRPO's logged completions, its first step beside its last, one table per logged prompt."""
    if not samples:
        return []
    first, last = samples["first"], samples["last"]
    lines = [f"## GRPO completions: step {first[0]['step']} beside step {last[0]['step']}", "",
             "Each completion with its total reward (r) and advantage (A); all of them are in "
             "`grpo/s-*/samples.jsonl` and in TensorBoard's text tab.", ""]
    for a, b in list(zip(first, last))[:prompts]:
        lines += [f"| | step {a['step']} | step {b['step']} |", "|---|---|---|",
                  f"| prompt | {cell(a['prompt'], 200)} | {cell(b['prompt'], 200)} |",
                  f"| gold | {cell(a['answer'], 280)} | {cell(b['answer'], 280)} |"]
        for j, (x, y) in enumerate(zip(a["completions"], b["completions"])):
            lines.append(f"| {j + 1} | r {x['reward']:.2f}, A {x['advantage']:+.2f}: {cell(x['text'], 280)} "
                         f"| r {y['reward']:.2f}, A {y['advantage']:+.2f}: {cell(y['text'], 280)} |")
        lines.append("")
    return lines


# ---------------------------------------------------------------- documents


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(metrics: dict, methods: list[str], title: str, images: dict[str, str], description: str = "",
             samples: dict | None = None, self_teach: list[dict] | None = None) -> str:
    """The report as markdown; `images` maps caption -> PNG file name; `description` is the recipe's.

    Order: what a reader wants first (the accuracy table and its plots, or the held-out loss),
    then where models differ, then reasoning length, then the unsolved list.
    """
    def figure(name: str) -> list[str]:
        caption = next((c for c, n in images.items() if n == name), None)
        return [f"![{caption}]({name})", ""] if caption else []

    lines = [f"# {title}", ""] + ([description.strip(), ""] if description.strip() else [])
    if "held_out_loss" in metrics:
        lines += loss_markdown(metrics)
    methods = sampled_methods(methods)
    if methods:
        lines += accuracy_markdown(metrics, methods, figure)
        lines += reward_markdown(metrics)
    else:
        lines += figure("training.png")
    lines += samples_markdown(samples or {})
    lines += self_teach_markdown(self_teach or [])
    if methods:
        lines += [f"## Unsolved by every model and method ({len(metrics['unsolved'])})", ""]
        for q in metrics["unsolved"][:50]:
            lines.append(f"* `{q['id']}` (gold {q['gold']}): {q['question'][:160]}")
        if len(metrics["unsolved"]) > 50:
            lines.append(f"* … and {len(metrics['unsolved']) - 50} more in metrics.json")
        lines.append("")
    return "\n".join(lines)


def reward_markdown(metrics: dict) -> list[str]:
    """Each model's mean GRPO reward on the held-out samples, and the paired change between models."""
    if "held_out_reward" not in metrics:
        return []
    lines = ["## Held-out reward", "",
             "The recipe's GRPO reward of the evaluation samples (per question averaged over its samples), "
             "with 95% intervals by resampling questions; changes are paired on the same questions.", "",
             "| model | method | questions | mean reward | 95% CI |", "|---|---|---|---|---|"]
    for model, per in metrics["held_out_reward"].items():
        for meth, r in per.items():
            lines.append(f"| {model} | {meth} | {r['questions']} | {r['mean']:.3f} | {r['ci95'][0]:.3f}–{r['ci95'][1]:.3f} |")
    lines += ["", "| change | method | questions | mean change | 95% CI |", "|---|---|---|---|---|"]
    for change, per in metrics["held_out_reward_changes"].items():
        for meth, r in per.items():
            lines.append(f"| {change} | {meth} | {r['questions']} | {r['change']:+.3f} | "
                         f"{r['ci95'][0]:+.3f}–{r['ci95'][1]:+.3f} |")
    return lines + [""]


def self_teach_markdown(rounds: list[dict]) -> list[str]:
    """Self-teaching's error analysis, a row per round (train.self_teach writes it)."""
    if not rounds:
        return []
    from showwork.task.diagnosis import FAILURES, KINDS

    lines = ["## Self-teaching: error analysis per round", "",
             "Every sample has one kind: correct; length (ran out of tokens before `</answer>`); format; "
             "arithmetic (a written equation is false); setup (well-formed and wrong, every equation true). "
             "Targeted problems are new problems like the failed ones, with reference solutions.", "",
             "| round | questions solved | " + " | ".join(f"samples {k}" for k in KINDS)
             + " | wrong equations | " + " | ".join(f"targeted {k}" for k in FAILURES) + " | kept |",
             "|" + "---|" * (4 + len(KINDS) + len(FAILURES))]
    for r in rounds:
        lines.append(f"| {r['round'] + 1} | {r['questions_solved']}/{r['questions']} | "
                     + " | ".join(str(r["samples_by_kind"][k]) for k in KINDS)
                     + f" | {r['wrong_equations']}/{r['equations']} | "
                     + " | ".join(str(r["targeted_by_kind"][k]) for k in FAILURES) + f" | {r['yield']['kept']} |")
    return lines + [""]


def loss_markdown(metrics: dict) -> list[str]:
    lines = ["## Held-out loss", "", "Negative log-likelihood of each held-out row's reference target given its "
             "prompt, per target token (teacher forcing; 95% intervals by resampling questions).", "",
             "| model | questions | target tokens | loss (nats/token) | 95% CI | perplexity |", "|---|---|---|---|---|---|"]
    for model, m in metrics["held_out_loss"].items():
        lines.append(f"| {model} | {m['questions']} | {m['tokens']} | {m['loss']:.4f} | "
                     f"{m['ci95'][0]:.4f}–{m['ci95'][1]:.4f} | {m['perplexity']:.3f} |")
    if metrics["held_out_loss_changes"]:
        lines += ["", "| change | questions | loss change | 95% CI (paired) |", "|---|---|---|---|"]
        for change, c in metrics["held_out_loss_changes"].items():
            lines.append(f"| {change} | {c['questions']} | {c['change']:+.4f} | {c['ci95'][0]:+.4f}–{c['ci95'][1]:+.4f} |")
    return lines + [""]


def accuracy_markdown(metrics: dict, methods: list[str], figure) -> list[str]:
    lines = ["## Accuracy", "", "| model | method | questions | accuracy | 95% CI | format | reasoning words "
              "| lm-eval strict-match | lm-eval flexible-extract |", "|---|---|---|---|---|---|---|---|---|"]
    for model, per in metrics["models"].items():
        for meth in methods:
            m = per[meth]
            lines.append(f"| {model} | {meth} | {m['questions']} | {_pct(m['accuracy'])} | "
                         f"{_pct(m['ci95'][0])}–{_pct(m['ci95'][1])} | {_pct(m['format_compliance'])} | "
                         f"{m['mean_reasoning_words']:.1f} | {_pct(m['lm_eval_strict_match'])} | "
                         f"{_pct(m['lm_eval_flexible_extract'])} |")
    lines += ["", "Accuracy and format use our extraction (answers.py); the lm-eval columns re-score the same "
              "samples with lm-evaluation-harness's GSM8K strict-match and flexible-extract rules.", ""]
    lines += source_markdown(metrics.get("by_source", {}), methods)
    lines += figure("accuracy.png") + figure("training.png")
    if any(metrics["between_methods"].values()):
        lines += ["## Fixed and broke between methods", "", "| model | change | fixed | broke |", "|---|---|---|---|"]
        for model, changes in metrics["between_methods"].items():
            for change, fb in changes.items():
                lines.append(f"| {model} | {change} | {fb['fixed']} | {fb['broke']} |")
        lines.append("")
    if metrics["between_models"]:
        lines += ["## Fixed and broke between models", "",
                  "Sign test: the two-sided chance of a split of fixes and breaks at least this uneven if "
                  "the change helped and hurt questions alike.", "",
                  "| change | method | source | fixed | broke | sign test p |", "|---|---|---|---|---|---|"]
        by_src = metrics.get("between_models_by_source", {})
        for change, per in metrics["between_models"].items():
            for meth, fb in per.items():
                parts = [("all", fb)] + list(by_src.get(change, {}).get(meth, {}).items())
                for src, x in parts:
                    lines.append(f"| {change} | {meth} | {src} | {x['fixed']} | {x['broke']} | "
                                 f"{sign_test(x['fixed'], x['broke']):.3g} |")
        lines.append("")
    lines += ["## Accuracy by reasoning length", "", f"Samples of `{methods[0]}`, bucketed by words of reasoning.", ""]
    lines += ["| model | " + " | ".join(bucket_label(b) for b in LENGTH_BUCKETS) + " |",
              "|---|" + "---|" * len(LENGTH_BUCKETS)]
    for model, per in metrics["by_reasoning_length"].items():
        rows = per[methods[0]]
        cells = [f"{_pct(rows[b]['accuracy'])} (n={rows[b]['samples']})" if b in rows else ""
                 for b in (bucket_label(x) for x in LENGTH_BUCKETS)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += [""] + figure("reasoning_length.png")
    return lines


def source_markdown(per_model: dict, methods: list[str]) -> list[str]:
    """The accuracy table split by source, when the eval rows come from more than one."""
    if not per_model:
        return []
    lines = ["## Accuracy by source", "", "Code rows count as correct when the code passes the problem's tests "
             "in the sandbox (pass@1 for greedy; for sampled methods, more samples pass than fail).", "",
             "| model | method | source | questions | accuracy | 95% CI |", "|---|---|---|---|---|---|"]
    for model, per in per_model.items():
        for meth in methods:
            for source, m in per[meth].items():
                lines.append(f"| {model} | {meth} | {source} | {m['questions']} | {_pct(m['accuracy'])} | "
                             f"{_pct(m['ci95'][0])}–{_pct(m['ci95'][1])} |")
    return lines + [""]


def _inline(text: str) -> str:
    """Escaped text with markdown `code` spans as <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))


def to_html(md_text: str, images: dict[str, bytes], title: str) -> str:
    """A self-contained page: tables and lists from the markdown, plots inline.

    Long lists (the unsolved questions) are folded so the numbers stay on
    the first screen.
    """
    body, items = [], []
    in_table = False

    def close_list():
        if not items:
            return
        listing = "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"
        body.append(f"<details><summary>{len(items)} items</summary>{listing}</details>" if len(items) > 10
                    else listing)
        items.clear()

    for line in md_text.splitlines():
        if line.startswith("* "):
            items.append(_inline(line[2:]))
            continue
        close_list()
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            name = line[line.index("(") + 1:-1]
            data = base64.b64encode(images[name]).decode()
            body.append(f'<img alt="{html.escape(line[2:line.index("]")])}" src="data:image/png;base64,{data}">')
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    close_list()
    if in_table:
        body.append("</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
             "td:first-child,th:first-child{text-align:left}img{max-width:48%;display:inline-block;margin:1em 1%}"
             "code{background:#f3f3f3;padding:0 3px}summary{cursor:pointer;color:#555}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def build(bus: Bus, models: list[str], methods: list[str], shards: int, title: str, description: str = "",
          reward_weights: dict[str, float] | None = None) -> dict:
    """Merge, compute, plot and write the report; returns metrics.json's content."""
    records = {m: load_model_records(bus, m, shards) for m in models}
    metrics = compute(records, methods, reward_weights)
    images, captions, sampled = {}, {}, sampled_methods(methods)
    if sampled:
        images = {"accuracy.png": plot_accuracy(metrics, sampled),
                  "reasoning_length.png": plot_length(metrics, sampled[0])}
        captions = {"Accuracy per model and method": "accuracy.png",
                    "Accuracy by reasoning length": "reasoning_length.png"}
    training_png = plot_training(training_curves(bus))
    if training_png:
        images["training.png"] = training_png
        captions["Training curves"] = "training.png"
    analysis = bus.read_json(stages.SELF_TEACH_ANALYSIS) if bus.exists(stages.SELF_TEACH_ANALYSIS) else None
    if analysis:
        metrics["self_teach"] = analysis
    md_text = markdown(metrics, methods, title, captions, description, grpo_samples(bus), analysis)
    for name, data in images.items():
        bus.write_bytes(stages.report_key(name), data)
    bus.write_json(stages.report_key("metrics.json"), metrics)
    bus.write_text(stages.report_key("report.md"), md_text)
    bus.write_text(stages.report_key("report.html"), to_html(md_text, images, title))
    return metrics


def run(bus: Bus, cfg, log, shards: int | None = None):
    """The report stage: merge every model's shards into report/; skipped if done."""
    count = shards or cfg.tier.eval_shards
    models, methods = list(cfg.eval.models), list(cfg.eval.methods)
    stage = stages.Stage("report", stages.REPORT, "report", (count,))
    digest = stages.digest(cfg, stage)

    def body() -> StageResult:
        weights = dict(cfg.grpo.rewards) if cfg.grpo is not None else None
        metrics = build(bus, models, methods, count, f"showwork report: {cfg.recipe}", cfg.description, weights)
        headline = {f"{m}_{meth}_accuracy": metrics["models"][m][meth]["accuracy"]
                    for m in models for meth in sampled_methods(methods)}
        headline.update({f"{m}_loss": v["loss"] for m, v in metrics.get("held_out_loss", {}).items()})
        plots = ("accuracy.png",) if sampled_methods(methods) else ()
        outputs = [stages.report_key(name) for name in stages.REPORT_FILES + plots]
        return StageResult(outputs=outputs, inputs=[f"eval/{m}" for m in models], metrics=headline)

    return run_once(bus, stage.key, digest, body, log)
