"""The training loop SFT and GRPO share: resume from the newest checkpoint of
this config, run steps, log metrics, save on a cadence, stop cleanly on SIGTERM.

A stage differs only in its step: `run` takes a function from (step,
trainable, opt_state) to (trainable, opt_state, scalars). Every random key
and the data order are functions of (seed, step), so a resumed run is
bit-for-bit the uninterrupted one (tested).
"""

from __future__ import annotations

import math
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from flax import nnx

from showwork.errors import RunError, UsageError
from showwork.markdown import cell
from showwork import memory, stages
from showwork.bus import Bus
from showwork.train.checkpoints import Checkpoints

class NonFiniteSteps(RunError):
    """Too many consecutive steps had a non-finite gradient: the run stops rather than train on."""


def refused(scalars: dict) -> bool:
    """Whether the optimizer refused this step (step.make_apply keeps the state when the gradient is not finite)."""
    return not math.isfinite(scalars.get("grad_norm", 0.0))


class Preempted(Exception):
    """Raised after a checkpoint was saved because SIGTERM arrived."""


class PreemptionGuard:
    """Turns SIGTERM into a flag the step loop checks between steps.

    GKE sends SIGTERM and waits terminationGracePeriodSeconds before SIGKILL;
    the loop saves a checkpoint at the next step boundary and the job exits 75
    (errors.EXIT_PREEMPTED: "run me again"; 0 would make a deleted pod Succeeded).
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
        return False


# The key under which a step returns non-scalar records to log (GRPO's sampled completions).
SAMPLES = "samples"


class Metrics:
    """Per-step scalars: TensorBoard events under `<prefix>/tensorboard` and a JSONL
    copy at `jsonl_key`, both on the bus; with `samples_key`, readable samples too
    (TensorBoard text and JSONL).

    Event files are written locally (tensorboardX cannot write gs:// without
    TensorFlow) and copied to the bus on `flush`. A resumed run keeps the
    JSONL rows up to the step it resumes from, so the log has every step once.
    """

    def __init__(self, bus: Bus, prefix: str, jsonl_key: str, resume_step: int = 0, samples_key: str | None = None):
        from tensorboardX import SummaryWriter

        self.bus, self.prefix, self.jsonl_key, self.samples_key = bus, prefix, jsonl_key, samples_key
        self.local = Path(tempfile.mkdtemp(prefix="showwork-tb-"))
        # A unique suffix: a resumed run started within the same second must not
        # overwrite the first run's event file on the bus.
        self.writer = SummaryWriter(str(self.local), filename_suffix=f".{uuid.uuid4().hex[:8]}")
        self.rows = self._kept(jsonl_key, resume_step)
        self.samples = self._kept(samples_key, resume_step) if samples_key else []

    def _kept(self, key: str, resume_step: int) -> list[dict]:
        """The rows a resumed run keeps: those of steps up to the checkpoint it resumes from."""
        if resume_step and self.bus.exists(key):
            return [r for r in self.bus.read_jsonl(key) if r["step"] <= resume_step]
        return []

    def log(self, step: int, **scalars):
        for name, value in scalars.items():
            self.writer.add_scalar(name, float(value), step)
        self.rows.append({"step": step, **{k: float(v) for k, v in scalars.items()}})

    def log_samples(self, step: int, records: list[dict]):
        rows = [{"step": step, **r} for r in records]
        self.samples.extend(rows)
        self.writer.add_text("samples", "\n\n".join(sample_markdown(r) for r in rows), step)

    def flush(self):
        self.writer.flush()
        for path in self.local.rglob("*"):
            if path.is_file():
                self.bus.write_bytes(f"{stages.tensorboard_key(self.prefix)}/{path.relative_to(self.local).as_posix()}",
                                     path.read_bytes())
        self.bus.write_jsonl(self.jsonl_key, self.rows)
        if self.samples_key:
            self.bus.write_jsonl(self.samples_key, self.samples)

    def close(self):
        self.flush()
        self.writer.close()


def sample_markdown(row: dict) -> str:
    """One logged prompt and its completions as TensorBoard's text plugin renders it (markdown)."""
    lines = [f"**step {row['step']}**, gold {cell(row['answer'])}", "",
             "> " + row["prompt"].replace("\r", "").replace("\n", "\n> "), "",
             "| reward | advantage | tokens | completion |", "|---|---|---|---|"]
    for c in row["completions"]:
        lines.append(f"| {c['reward']:.3g} | {c['advantage']:.3g} | {c['tokens']} | {cell(c['text'])} |")
    return "\n".join(lines)


@dataclass
class StepTimer:
    start: float = 0.0

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def _stop_for_preemption(ckpt: Checkpoints, metrics: Metrics, step: int, tree, meta: dict, saved: bool):
    """SIGTERM arrived: make sure `step` is checkpointed, flush metrics, raise Preempted."""
    if not saved:
        ckpt.save(step, tree, meta, force=True)
    metrics.close()
    ckpt.close()
    raise Preempted(f"SIGTERM: saved step {step}")


@dataclass(frozen=True)
class Plan:
    """Where a training run keeps its state on the bus and which steps it runs."""

    checkpoints: str  # bus prefix of its checkpoints
    metrics_dir: str  # TensorBoard events go under <metrics_dir>/tensorboard
    metrics_key: str  # the JSONL copy of every step's scalars
    digest: str  # the stage's config digest, recorded in (and checked against) every checkpoint
    every: int  # checkpoint cadence, in steps
    keep: int  # checkpoints kept
    last: int  # the step the run ends at (exclusive of steps done before `first`)
    first: int = 0  # the global step it starts at: GRPO session K starts where K-1 ended
    event: str = "train step"  # the log event of each step
    max_refused: int = 3  # consecutive steps with a non-finite gradient before the run stops (tier.max_refused_steps)
    context: dict = field(default_factory=dict)  # extra fields on each step's log line
    name: str = "this run"  # for messages: "session 1"
    after: str = "the run before it"  # the run whose final checkpoint `first` is: "session 0"
    samples_key: str | None = None  # where a step's SAMPLES records go (JSONL; TensorBoard text too)


def resume(ckpt: Checkpoints, plan: Plan, state, log):
    """(state, start): the newest readable checkpoint in [first, last] of this config, or the
    fresh state at `first`. A run past `first` needs the checkpoint its predecessor left."""
    latest = ckpt.latest_step()
    if latest is not None and latest > plan.last:
        raise UsageError(f"{ckpt.uri} holds step {latest}, past this run's last step {plan.last}")
    newest = ckpt.restore_newest(state, log, at_least=plan.first) if latest is not None else None
    if newest is None:
        if plan.first > 0:
            raise RunError(f"{plan.name} needs {plan.after}'s final checkpoint (step {plan.first}) in {ckpt.uri}")
        return state, plan.first
    state, meta, step = newest
    if meta.get("digest") != plan.digest:
        raise UsageError(f"checkpoint {ckpt.uri}/{step} belongs to another config ({meta.get('digest')})")
    log.info("resuming from checkpoint", step=step, of=plan.last, **plan.context)
    return state, step


StepFn = Callable[[int, object, object], tuple[object, object, dict]]


def run(bus: Bus, plan: Plan, model: nnx.Module, state: tuple, step_fn: StepFn, log) -> tuple[dict, int]:
    """Train `model` in place from `state` = (trainable, opt_state); returns (last step's scalars, start).

    Metrics are flushed before the checkpoint they belong to: a kill between
    the two leaves rows past the checkpoint, which the resumed run drops; the
    other order would lose the rows of steps the checkpoint already holds.
    """
    ckpt = Checkpoints(bus, plan.checkpoints, plan.keep, plan.every)
    (trainable, opt_state), start = resume(ckpt, plan, state, log)
    metrics = Metrics(bus, plan.metrics_dir, plan.metrics_key, resume_step=start, samples_key=plan.samples_key)
    scalars: dict = {}
    in_a_row = 0
    with PreemptionGuard() as guard:
        for step in range(start, plan.last):
            trainable, opt_state, scalars = step_fn(step, trainable, opt_state)
            memory.trim()
            records = scalars.pop(SAMPLES, None)
            if records:
                metrics.log_samples(step + 1, records)
            in_a_row = _count_refusals(in_a_row, step + 1, scalars, plan, log)
            metrics.log(step + 1, **scalars)
            if in_a_row >= plan.max_refused:
                metrics.close()
                ckpt.close()
                raise NonFiniteSteps(f"step {step + 1}: {in_a_row} steps in a row had a non-finite gradient (limit "
                                     f"tier.max_refused_steps={plan.max_refused}); stopping instead of training on: "
                                     "lower the learning rate, check the data, or train in float32")
            log.info(plan.event, **plan.context, step=step + 1, of=plan.last, rss_gb=memory.gigabytes(),
                     **{k: float(f"{v:.6g}") for k, v in scalars.items()})
            meta = {"digest": plan.digest, "step": step + 1}
            if ckpt.due(step + 1):
                metrics.flush()
            saved = ckpt.save(step + 1, (trainable, opt_state), meta)
            if guard.requested and step + 1 < plan.last:
                _stop_for_preemption(ckpt, metrics, step + 1, (trainable, opt_state), meta, saved)
    ckpt.save(plan.last, (trainable, opt_state), {"digest": plan.digest, "step": plan.last}, force=True)
    ckpt.close()
    metrics.close()
    nnx.update(model, trainable)
    return scalars, start


def _count_refusals(in_a_row: int, step: int, scalars: dict, plan: Plan, log) -> int:
    """Consecutive refused steps up to this one (marking a refused step's scalars)."""
    if not refused(scalars):
        return 0
    scalars["refused"] = 1.0
    in_a_row += 1
    log.warning("step refused: non-finite gradient; weights and optimizer state unchanged", step=step,
                in_a_row=in_a_row, limit=plan.max_refused, **plan.context)
    return in_a_row
