"""The local pipeline: every stage of a recipe in order, through the same job
entrypoints the cluster runs, on one bus.

Stages: data -> sft -> self-teach -> grpo/s-0 .. grpo/s-(K-1) -> eval/<model>
(every shard) -> report, each present only when the recipe has its section.
Finished stages are skipped by their markers, so re-running a half-finished
run continues it, and re-running a finished one only prints where the
report is.
"""

from __future__ import annotations

import time
from argparse import Namespace
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Stage:
    name: str  # what --from / --only accept: data, sft, self-teach, grpo, eval, report
    label: str  # what the progress line shows
    run: Callable[[], object]


def stages(cfg, bus) -> list[Stage]:
    """The recipe's stages in order, as zero-argument callables."""
    from jobs import evaluate, grpo_session, prepare_data, report, self_teach, sft

    plan = [Stage("data", "prepare data", lambda: prepare_data.main(cfg, bus))]
    if cfg.sft is not None:
        plan.append(Stage("sft", "SFT", lambda: sft.main(cfg, bus)))
    if cfg.self_teach is not None:
        plan.append(Stage("self-teach", "self-teaching", lambda: self_teach.main(cfg, bus)))
    if cfg.grpo is not None:
        for k in range(cfg.grpo.sessions):
            plan.append(Stage("grpo", f"GRPO session {k + 1}/{cfg.grpo.sessions}",
                              lambda k=k: grpo_session.main(cfg, bus, Namespace(session=k))))
    count = cfg.tier.eval_shards
    for model in cfg.eval.models:
        for index in range(count):
            plan.append(Stage("eval", f"evaluate {model} (shard {index + 1}/{count})",
                              lambda model=model, index=index: evaluate.main(
                                  cfg, bus, Namespace(model=[model], shard=index, shards=count))))
    plan.append(Stage("report", "report", lambda: report.main(cfg, bus, Namespace(shards=count))))
    return plan


NAMES = ("data", "sft", "self-teach", "grpo", "eval", "report")


def select(plan: list[Stage], start: str | None, only: str | None) -> list[Stage]:
    for value in (start, only):
        if value is not None and value not in {s.name for s in plan}:
            raise ValueError(f"stage {value!r} is not in this recipe; its stages: "
                             + ", ".join(dict.fromkeys(s.name for s in plan)))
    if only:
        return [s for s in plan if s.name == only]
    if start:
        first = next(i for i, s in enumerate(plan) if s.name == start)
        return plan[first:]
    return plan


def run(cfg, bus, log, start: str | None = None, only: str | None = None) -> float:
    """Run the selected stages, one progress line each; returns total seconds."""
    chosen = select(stages(cfg, bus), start, only)
    began = time.perf_counter()
    spent: list[float] = []
    for n, stage in enumerate(chosen, 1):
        t0 = time.perf_counter()
        log.info("stage start", stage=stage.label, step=f"{n}/{len(chosen)}")
        try:
            stage.run()
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise
            raise SystemExit(0) from None  # preempted: the stage saved its state
        except Exception as err:
            raise RuntimeError(f"stage {stage.label!r} failed: {type(err).__name__}: {err}") from err
        seconds = time.perf_counter() - t0
        spent.append(seconds)
        remaining = len(chosen) - n
        # A crude but honest ETA: the mean of finished stages times what is left.
        eta = remaining * (sum(spent) / len(spent))
        log.info("stage finished", stage=stage.label, step=f"{n}/{len(chosen)}", seconds=round(seconds, 1),
                 elapsed=round(time.perf_counter() - began, 1), eta_seconds=round(eta, 1))
    return time.perf_counter() - began
