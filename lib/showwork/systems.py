"""The published systems our recipes reproduce, and each one's values: one table.

A recipe names its system (`reference:`) and lists every value it sets otherwise (`differences:`,
each with the system's value, ours and why). `drift` compares a loaded recipe with the table, so a
recipe cannot move away from its system silently (tests/test_systems.py runs it on every shipped
recipe); `markdown` writes the README's per-recipe tables from the same data.

Keys are config keys (`grpo.optimizer.b2`) or a few derived quantities the systems state
directly (`grpo.steps`, `sft.effective_batch`, ...), computed by `value`.
Usage: python scripts/systems_readme.py README.md   (rewrites the README's generated section)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class System:
    title: str
    values: dict  # key -> the system's value


BASELINE_REWARDS = {"format_exact": 1.0, "format_approx": 1.0, "answer": 1.0, "numbers": 1.0}
_BASELINE = {
    "model.name": "gemma3-1b-it", "model.lora.rank": 64, "model.lora.alpha": 64.0,
    "grpo.batch_size": 4, "grpo.steps": 3738, "grpo.num_generations": 4, "grpo.beta": 0.08, "grpo.epsilon": 0.2,
    "grpo.num_iterations": 1, "grpo.optimizer.learning_rate": 3e-6, "grpo.optimizer.b1": 0.9,
    "grpo.optimizer.b2": 0.99, "grpo.optimizer.weight_decay": 0.1, "grpo.optimizer.max_grad_norm": 0.1,
    "grpo.schedule.warmup_ratio": 0.1, "grpo.schedule.end_value_ratio": 0.0, "grpo.rollout.temperature": 0.9,
    "grpo.rollout.top_k": 50, "grpo.rollout.top_p": 1.0, "grpo.rollout.max_tokens_to_generate": 512,
    "grpo.checkpoint_every": 500, "grpo.keep_checkpoints": 4, "grpo.rewards": BASELINE_REWARDS,
    "eval.methods": ["greedy"],
}

SYSTEMS: dict[str, System] = {
    "grpo-baseline": System("GRPO baseline (Gemma 3 1B-IT, tunix's GRPO example)", _BASELINE),
    "efficiency": System("Efficiency build: the baseline with LoRA 32/32 and batch 2",
                         {**_BASELINE, "model.lora.rank": 32, "model.lora.alpha": 32.0, "grpo.batch_size": 2}),
    "full-sft": System("Full SFT on cleaned GSM8K (Gemma 3 1B)", {
        "model.lora": None, "data.source": "gsm8k", "data.calculator_annotations": "parentheses",
        "sft.max_seq_len": 2048, "sft.effective_batch": 64, "sft.optimizer.learning_rate": 2e-5,
        "sft.schedule.warmup_steps": 50, "sft.schedule.end_value_ratio": 0.1, "sft.optimizer.max_grad_norm": 1.0,
        "sft.optimizer.weight_decay": 0.01, "sft.epochs": 10, "sft.steps": 1170, "eval.temperature": 0.7,
    }),
    "trajectory": System("Trajectory reward winner (Gemma 2 2B-IT)", {
        "model.name": "gemma2-2b-it", "model.lora.rank": 64, "model.lora.alpha": 64.0, "grpo.batch_size": 2,
        "grpo.num_generations": 2, "grpo.beta": 0.08, "grpo.epsilon": 0.2, "grpo.optimizer.learning_rate": 5e-5,
        "grpo.rollout.max_tokens_to_generate": 768, "grpo.rewards": {"trajectory": 1.0},
    }),
    "hybrid": System("Recommended hybrid: SFT, then GRPO with the hybrid reward", {
        "data.source": "gsm8k", "sft.epochs": 3, "model.lora.rank": 64, "grpo.batch_size": 4,
        "grpo.optimizer.learning_rate": 3e-6, "grpo.epochs": 2.0, "grpo.rewards": {"hybrid": 1.0},
        "eval.samples": 5,
    }),
    "glaive": System("Glaive SFT (Gemma 2 2B-IT on glaiveai/reasoning-v1-20m)", {
        "model.name": "gemma2-2b-it", "model.lora.rank": 64, "model.lora.alpha": 64.0, "data.source": "glaive",
        "data.order": "source", "data.train_size": 180000, "sft.epochs": 4, "sft.effective_batch": 32,
        "sft.max_seq_len": 2048, "sft.optimizer.learning_rate": 2e-5,
    }),
    "glaive-continue": System("Glaive continuation: the next 100,000 traces, lower rate", {
        "model.name": "gemma2-2b-it", "model.lora.rank": 64, "model.lora.alpha": 64.0, "data.source": "glaive",
        "data.order": "source", "data.continues": True, "data.train_size": 100000, "sft.max_seq_len": 2048,
        "sft.optimizer.learning_rate": 5e-6,
    }),
    "relay": System("Relay with active review (Gemma 2 2B-IT)", {
        "model.name": "gemma2-2b-it", "grpo.sessions": 3, "grpo.prompts_per_session": 500,
        "grpo.review_ratio": 1.0, "grpo.beta": 0.04, "grpo.optimizer.learning_rate": 1e-5, "grpo.batch_size": 16,
        "grpo.rewards": {"composite": 1.0}, "grpo.session_steps": [32, 63, 63], "grpo.schedule_per_session": True,
        "eval.consensus_temperatures": [0.2, 0.4, 0.6, 0.8, 1.0],
    }),
    "dsa-cast": System("DSA-CAST: dual-stream, cognitively-aware self-teaching", {
        "model.lora": None, "training": ["sft", "self-teach", "grpo"], "self_teach.error_analysis": True,
        "self_teach.targeted": True,
    }),
    "math-code": System("Pure GRPO on math + code (Gemma 2 2B-IT)", {
        "model.name": "gemma2-2b-it", "sft": None, "data.sources": ["gsm8k", "code"],
        "grpo.reward_names": ["code_correctness", "format_approx", "format_exact", "math_correctness"],
    }),
}


# ---------------------------------------------------------------- a recipe's values


def _sft_batch(cfg) -> int:
    return (cfg.sft.batch_size or cfg.tier.train_batch) * cfg.sft.gradient_accumulation


def _grpo_steps(cfg) -> list[int]:
    return cfg.grpo.session_steps(cfg.grpo.batch_size or cfg.tier.train_batch)


DERIVED = {
    # reads on from where the run it continues stopped (data.start_after), not a seeded sample
    "data.continues": lambda cfg: cfg.data.start_after is not None,
    # the training stages, in order
    "training": lambda cfg: [s for s in ("sft", "self-teach", "grpo")
                             if getattr(cfg, s.replace("-", "_")) is not None],
    # self-teaching analyses every sample (always: train.self_teach) and adds problems aimed at failures
    "self_teach.error_analysis": lambda cfg: cfg.self_teach is not None,
    "self_teach.targeted": lambda cfg: bool(cfg.self_teach and cfg.self_teach.targeted_per_kind),
    # every source the rows come from (data.source, then data.mix)
    "data.sources": lambda cfg: list(cfg.data.sources()),
    # which rewards, whatever their weights (where a system names its rewards but not their weights)
    "grpo.reward_names": lambda cfg: sorted(cfg.grpo.rewards) if cfg.grpo else None,
    # optimizer steps of SFT as the system counts them: whole batches per epoch, times epochs
    "sft.effective_batch": _sft_batch,
    "sft.steps": lambda cfg: cfg.sft.total_steps(cfg.data.train_size, cfg.sft.batch_size or cfg.tier.train_batch),
    "grpo.steps": lambda cfg: sum(_grpo_steps(cfg)),
    "grpo.session_steps": _grpo_steps,
    # passes over the training prompts: prompts drawn over every session / training rows
    "grpo.epochs": lambda cfg: round(sum(_grpo_steps(cfg)) * (cfg.grpo.batch_size or cfg.tier.train_batch)
                                     / cfg.data.train_size, 2) if cfg.data.train_size else None,
}


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def value(cfg, key: str):
    """The recipe's value at `key`: a config key (dotted) or one of DERIVED."""
    if key in DERIVED:
        return _plain(DERIVED[key](cfg))
    node = cfg
    for part in key.split("."):
        if node is None or not hasattr(node, part):
            raise KeyError(f"{key}: not a config key or a derived quantity ({', '.join(sorted(DERIVED))})")
        node = getattr(node, part)
    return _plain(node)


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def drift(cfg) -> list[str]:
    """Where a recipe and its system disagree without a matching `differences` entry, and entries
    that no longer match (a stale reason, a value changed since, a key the system does not state)."""
    if cfg.reference is None:
        return []
    system = SYSTEMS[cfg.reference].values
    noted = {d.key: d for d in cfg.differences}
    problems = [f"{key}: the system {cfg.reference!r} states no value here" for key in noted if key not in system]
    for key, theirs in system.items():
        ours, entry = value(cfg, key), noted.get(key)
        if entry is None:
            if not same(ours, theirs):
                problems.append(f"{key}: ours {ours!r}, the system's {theirs!r}, and no `differences` entry says why")
        elif same(ours, theirs):
            problems.append(f"{key}: listed as a difference but ours equals the system's {theirs!r}")
        elif not (same(_plain(entry.system), theirs) and same(_plain(entry.ours), ours) and entry.why.strip()):
            problems.append(f"{key}: the entry says system {entry.system!r} / ours {entry.ours!r}; the table says "
                            f"{theirs!r} and the recipe {ours!r} (or the reason is empty)")
    return problems


# ---------------------------------------------------------------- the README's tables

START, END = "<!-- systems:start (python scripts/systems_readme.py README.md) -->", "<!-- systems:end -->"


def _show(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_show(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def markdown(configs) -> str:
    """One table per recipe with a reference: each of its system's values, ours, and why they differ."""
    out = []
    for cfg in configs:
        if cfg.reference is None:
            continue
        system, noted = SYSTEMS[cfg.reference], {d.key: d for d in cfg.differences}
        out += [f"**`{cfg.recipe}`** reproduces {system.title}:", "", "| value | the system | ours | why it differs |",
                "|---|---|---|---|"]
        for key, theirs in system.values.items():
            entry = noted.get(key)
            ours = value(cfg, key)
            why = " ".join((entry.why if entry else "").split()).replace("|", "¦")  # one table cell
            out.append(f"| `{key}` | {_show(theirs)} | {_show(ours)} | {why} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def rewrite(readme: Path, configs) -> bool:
    """Put `markdown(configs)` between the README's markers; whether the file changed."""
    text = readme.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    new = f"{head}{START}\n{markdown(configs)}{END}{tail}"
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text
