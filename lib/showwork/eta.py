"""How long the rest of a run will take: each remaining stage's cost, priced at measured rates.

A stage's cost (`work`) counts the tokens it pushes through the model,
weighted as a forward pass of one token = 1: a generated or scored token 1,
a trained token 2 with LoRA and 3 with every weight trained (flops.training's
factors). The price of a unit is measured, never assumed: a stage like one
already finished (the next eval shard, the next GRPO session) is priced at
that stage's own rate; a stage of a kind not yet run at the rate of all work
finished so far. Before any model work has finished there is no estimate
(None), rather than a number made up.

Why not the mean time of finished stages times the stages left (what the
pipeline did before): after the demo's 12-minute SFT it promised 49 minutes
for a short GRPO session and three evaluations that took 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from showwork.stages import Stage


def _trained(cfg) -> float:
    """Units per trained token: 2 with LoRA (the frozen weights need no gradient), 3 without."""
    return 2.0 if cfg.model.lora is not None else 3.0


def _sft_units(sft, rows: int, batch: int, trained: float) -> float:
    steps = sft.total_steps(rows, batch)
    return steps * batch * sft.gradient_accumulation * sft.max_seq_len * trained


def _grpo_units(cfg, session: int) -> float:
    g, r = cfg.grpo, cfg.grpo.rollout
    batch = g.batch_size or cfg.tier.train_batch
    rows = g.session_steps(batch)[session] * batch * g.num_generations
    # Rollout: the prompt once per group, each new token once; then the sequences are scored by the
    # policy (old log-probs) and, with a KL term, the reference, and trained num_iterations times.
    sequence = r.max_prompt_length + r.max_tokens_to_generate
    scored = 1 + (1 if g.beta > 0 else 0)
    return rows * (r.max_tokens_to_generate + sequence * (scored + g.num_iterations * _trained(cfg)))


def _eval_units(cfg, questions: int, count: int) -> float:
    from showwork.eval.evaluate import method_plan

    ev = cfg.eval
    per_question = sum(len(temps) for temps in method_plan(ev).values()) * ev.max_tokens
    if "loss" in ev.methods:
        per_question += ev.max_tokens
    return -(-questions // count) * per_question


def _self_teach_units(cfg) -> float:
    from showwork.task.diagnosis import FAILURES

    st = cfg.self_teach
    generated = st.questions * st.samples_per_question * st.max_tokens
    batch = st.sft.batch_size or cfg.tier.train_batch
    kept = st.questions * st.keep_per_question + st.targeted_per_kind * len(FAILURES)  # at most
    return st.rounds * (generated + _sft_units(st.sft, kept, batch, _trained(cfg)))


def work(cfg, stage: Stage, counts: dict[str, int]) -> float:
    """The stage's cost in units; 0 for stages that run no model (data, report).

    counts: the data stage's rows_out ({"train": n, "eval": m}) once it has
    run, else the recipe's requested sizes.
    """
    if stage.name == "sft":
        return _sft_units(cfg.sft, counts["train"], cfg.sft.batch_size or cfg.tier.train_batch, _trained(cfg))
    if stage.name == "self-teach":
        return _self_teach_units(cfg)
    if stage.name == "grpo":
        return _grpo_units(cfg, stage.args[0])
    if stage.name == "eval":
        questions = counts["eval"] if cfg.eval.questions is None else min(cfg.eval.questions, counts["eval"])
        return _eval_units(cfg, questions, stage.args[2])
    return 0.0


def requested_counts(cfg) -> dict[str, int]:
    """Rows the data stage was asked for, the mixed-in sources' included (what it writes may be fewer)."""
    sources = (cfg.data, *cfg.data.mix)
    return {"train": sum(s.train_size for s in sources), "eval": sum(s.eval_size for s in sources)}


@dataclass
class Estimator:
    """Finished stages' seconds and units; prices the rest."""

    finished: list[tuple[str, float, float]] = field(default_factory=list)  # (name, units, seconds)

    def finish(self, name: str, units: float, seconds: float) -> None:
        self.finished.append((name, units, seconds))

    def _rate(self, name: str) -> float | None:
        same = [(u, s) for n, u, s in self.finished if n == name and u > 0]
        if same:
            return same[-1][1] / same[-1][0]
        done = [(u, s) for _, u, s in self.finished if u > 0]
        return sum(s for _, s in done) / sum(u for u, _ in done) if done else None

    def remaining(self, left: list[tuple[str, float]]) -> float | None:
        """Seconds for the stages still to run, given as (name, units); None when not yet measurable."""
        overhead = [s for _, u, s in self.finished if u == 0]
        total = 0.0
        for name, units in left:
            if units == 0:
                total += sum(overhead) / len(overhead) if overhead else 0.0
                continue
            rate = self._rate(name)
            if rate is None:
                return None
            total += units * rate
        return total
