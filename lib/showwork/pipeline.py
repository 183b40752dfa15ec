"""The local pipeline: every stage of a recipe in order (showwork.stages), on one bus.

It calls the same library functions the job entrypoints call, so a local
run and a cluster run write the same files. Finished stages are skipped by
their markers, so re-running a half-finished run continues it, and
re-running a finished one only prints where the report is.
"""

from __future__ import annotations

import time

from showwork.errors import UsageError
from showwork import eta, memory, stages
from showwork.eval import evaluate, report
from showwork.stages import Stage
from showwork.task import data
from showwork.train import grpo, self_teach, sft
from showwork.train.loop import Preempted


def run_stage(cfg, bus, stage: Stage, log):
    """Run one stage of the recipe (skipped by its marker when done); returns (marker, ran)."""
    if stage.name == "data":
        return data.prepare(bus, cfg, log)
    if stage.name == "sft":
        return sft.run(bus, cfg, log)
    if stage.name == "self-teach":
        return self_teach.run(bus, cfg, log)
    if stage.name == "grpo":
        return grpo.run(bus, cfg, stage.args[0], log)
    if stage.name == "eval":
        return evaluate.run_shard(bus, cfg, *stage.args, log)
    return report.run(bus, cfg, log, stage.args[0])


def select(plan: list[Stage], start: str | None, only: str | None) -> list[Stage]:
    for value in (start, only):
        if value is not None and value not in {s.name for s in plan}:
            raise UsageError(f"stage {value!r} is not in this recipe; its stages: "
                             + ", ".join(dict.fromkeys(s.name for s in plan)))
    if only:
        return [s for s in plan if s.name == only]
    if start:
        first = next(i for i, s in enumerate(plan) if s.name == start)
        return plan[first:]
    return plan


def run(cfg, bus, log, start: str | None = None, only: str | None = None) -> float:
    """Run the selected stages, one progress line each; returns total seconds.

    A stage's error passes through unchanged (the job's exit code comes
    from it: showwork.errors), after a line naming the stage; a preempted
    training stage (train.loop.Preempted) has saved its checkpoint and a
    re-run continues it.
    """
    chosen = select(stages.plan(cfg), start, only)
    began = time.perf_counter()
    estimator = eta.Estimator()
    for n, stage in enumerate(chosen, 1):
        t0 = time.perf_counter()
        log.info("stage start", stage=stage.label, step=f"{n}/{len(chosen)}")
        try:
            _, ran = run_stage(cfg, bus, stage, log)
        except Preempted:
            raise
        except Exception as err:
            log.error("stage failed", stage=stage.label, error=type(err).__name__)
            raise
        seconds = time.perf_counter() - t0
        freed = memory.release() if ran else {}
        counts = data_counts(cfg, bus)
        if ran:  # a stage skipped by its marker took no time and says nothing about the rest
            estimator.finish(stage.name, eta.work(cfg, stage, counts), seconds)
        left = estimator.remaining([(s.name, eta.work(cfg, s, counts)) for s in chosen[n:]])
        log.info("stage finished", stage=stage.label, step=f"{n}/{len(chosen)}", seconds=round(seconds, 1),
                 elapsed=round(time.perf_counter() - began, 1),
                 eta_seconds=None if left is None else round(left, 1), **_gigabytes(freed))
    return time.perf_counter() - began


def _gigabytes(freed: dict) -> dict:
    """release()'s resident set before and after, in GB, for the stage line."""
    return {f"{k}_gb": round(v / 1e9, 2) for k, v in freed.items() if k.startswith("rss") and v is not None}


def data_counts(cfg, bus) -> dict[str, int]:
    """Rows the data stage wrote, once it has; else the recipe's requested sizes."""
    if bus.exists(stages.DATA_STATS):
        rows = bus.read_json(stages.DATA_STATS).get("rows_out")
        if rows:
            return {"train": int(rows["train"]), "eval": int(rows["eval"])}
    return eta.requested_counts(cfg)
