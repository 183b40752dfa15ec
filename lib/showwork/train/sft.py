"""Supervised fine-tuning: full or LoRA, loss on completion tokens only.

Reads `data/train.jsonl` (prompt, target) from the bus; writes checkpoints
(`sft/checkpoints`), TensorBoard scalars and `sft/metrics.jsonl`, the model
with LoRA merged as a Hugging Face directory (`sft/model`), and the marker.
A run killed or preempted resumes from its newest checkpoint with the same
data order: the order is a pure function of (seed, epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from showwork.errors import UsageError
from showwork import stages
from showwork.bus import Bus, StageResult, run_once
from showwork.config import SftConfig
from showwork.model import export, loader, lora, meshes
from showwork.sample import forward
from showwork.sample.logprobs import completion_logps, packed_logps
from showwork.train import loop, packing, step as step_lib


@dataclass
class Sequences:
    prompts: list[list[int]]
    completions: list[list[int]]
    truncated: int
    dropped: int


def fit(row: dict, tokenizer, max_seq_len: int) -> tuple[list[int], list[int], bool] | None:
    """(prompt ids with BOS, target ids cut to fit, whether cut), or None when the prompt leaves no room."""
    p = tokenizer.encode(row["prompt"], bos=True)
    c = tokenizer.encode(row["target"])
    room = max_seq_len - len(p)
    if room < 8:  # not even a few target tokens fit: nothing to learn from
        return None
    return p, c[:room], len(c) > room


def tokenize(rows: list[dict], tokenizer, max_seq_len: int) -> Sequences:
    """Prompt (with BOS) and target ids; targets cut to fit, prompts that cannot fit dropped."""
    prompts, completions, truncated, dropped = [], [], 0, 0
    for row in rows:
        fitted = fit(row, tokenizer, max_seq_len)
        if fitted is None:
            dropped += 1
            continue
        prompts.append(fitted[0])
        completions.append(fitted[1])
        truncated += fitted[2]
    return Sequences(prompts, completions, truncated, dropped)


def order(n: int, seed: int, start: int, count: int) -> list[int]:
    """Row indices for positions [start, start+count) of the epoch-after-epoch stream.

    Epoch e is a permutation drawn from (seed, e) alone, so any position can
    be found again after a restart without replaying the stream.
    """
    out = []
    for q in range(start, start + count):
        epoch, offset = divmod(q, n)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[offset]))
    return out


def make_step_fns(graphdef, tx, compute=None, packed: bool = False):
    """(loss and gradient, optimizer update, loss alone) for the step and the held-out loss.

    `compute` casts the float32 master weights to the dtypes the model computes in (step.master);
    `packed` takes packing.Batch's arrays instead of (prompt, completion, mask).
    """
    compute = compute or (lambda tree: tree)

    def loss_fn(trainable, frozen, *batch):
        states = (compute(trainable), frozen)
        if packed:
            *inputs, mask = batch
            logps = packed_logps(graphdef, states, *inputs)
        else:
            prompt, completion, mask = batch
            logps = completion_logps(graphdef, states, prompt, completion, mask)
        return -(logps * mask).sum() / jnp.maximum(mask.sum(), 1.0)

    return jax.jit(jax.value_and_grad(loss_fn)), step_lib.make_apply(tx), jax.jit(loss_fn)


def held_out_loss(loss_fn, trainable, frozen, seqs: Sequences, batch: int) -> float:
    """Mean completion-token loss over held-out sequences, in batches of `batch` (no gradient)."""
    total, tokens = 0.0, 0.0
    for start in range(0, len(seqs.prompts), batch):
        prompt, completion, mask = forward.pack(seqs.prompts[start:start + batch],
                                                seqs.completions[start:start + batch], completion_bucket=128)
        total += float(loss_fn(trainable, frozen, prompt, completion, mask)) * float(mask.sum())
        tokens += float(mask.sum())
    return total / max(tokens, 1.0)


class Padded:
    """Rows are examples: prompt left-padded to the run's width, completion to a 128-token bucket."""

    packed = False

    def __init__(self, seqs: Sequences):
        self.seqs, self.rows = seqs, len(seqs.prompts)
        # One prompt width for the run and completions in 128-token buckets: a
        # handful of compiled shapes instead of one per length. A bucket never
        # reaches past the run's longest completion: data cut at max_seq_len is
        # all full-length, and rounding it up to the next bucket would pad every
        # row of it (docs/BENCHMARKS.md).
        self.prompt_len = forward.bucket(max(len(p) for p in seqs.prompts))
        self.longest = max(len(c) for c in seqs.completions)

    def batch(self, idx: list[int]) -> tuple[tuple, int]:
        """The arrays of rows `idx` and their real (non-pad) token count."""
        completions = [self.seqs.completions[i] for i in idx]
        clen = forward.capped_bucket(max(len(c) for c in completions), 128, self.longest)
        prompt, completion, mask = forward.pack([self.seqs.prompts[i] for i in idx], completions,
                                                prompt_len=self.prompt_len, completion_len=clen)
        return (prompt, completion, mask), int(mask.sum() + (prompt != 0).sum())


class Packed:
    """Rows are packed sequences of whole examples (showwork.train.packing), all of one shape: packed
    rows are nearly full, so one compiled step serves the run."""

    packed = True

    def __init__(self, seqs: Sequences, max_seq_len: int):
        lengths = [len(p) + len(c) for p, c in zip(seqs.prompts, seqs.completions)]
        self.seqs, self.groups = seqs, packing.plan(lengths, max_seq_len)
        self.rows = len(self.groups)
        sizes = [packing.sizes(seqs.prompts, seqs.completions, g) for g in self.groups]
        self.length = forward.capped_bucket(max(n for n, _ in sizes), 128, max_seq_len)
        self.targets = forward.capped_bucket(max(k for _, k in sizes), 128, max_seq_len)

    def batch(self, idx: list[int]) -> tuple[tuple, int]:
        groups = [self.groups[i] for i in idx]
        arrays = packing.arrays(self.seqs.prompts, self.seqs.completions, groups, self.length, self.targets)
        return tuple(arrays), int((arrays.segments > 0).sum())


def make_step(rows: Padded | Packed, sft: SftConfig, batch: int, parts: tuple, held_out: Sequences | None = None):
    """SFT's step for train.loop: `gradient_accumulation` micro-batches of `batch` rows, one update;
    every `eval_every` steps also the loss on `held_out` (logged as `eval_loss`).
    `parts` = (graphdef, frozen, tx, compute)."""
    graphdef, frozen, tx, compute = parts
    grad_fn, apply, loss_fn = make_step_fns(graphdef, tx, compute, packed=rows.packed)
    accumulation = sft.gradient_accumulation
    # The held-out loss is always on unpacked rows (held_out_loss pads them).
    held_loss = make_step_fns(graphdef, tx, compute)[2] if held_out and rows.packed else loss_fn

    def step(index: int, trainable, opt_state):
        with loop.StepTimer() as timer:
            grads_sum, losses, tokens = None, [], 0
            for micro in range(accumulation):
                arrays, real = rows.batch(order(rows.rows, sft.seed, (index * accumulation + micro) * batch, batch))
                loss, grads = grad_fn(trainable, frozen, *arrays)
                grads_sum = grads if grads_sum is None else step_lib.add(grads_sum, grads)
                losses.append(float(loss))
                tokens += real
            grads = grads_sum if accumulation == 1 else step_lib.divided(grads_sum, accumulation)
            trainable, opt_state, grad_norm = apply(trainable, opt_state, grads)
            jax.block_until_ready(trainable)
        # Read after the update: the rate this step applied (optax records it there). Tokens are
        # real ones (no padding), so packed and padded runs compare.
        scalars = {"loss": float(np.mean(losses)), "learning_rate": step_lib.current_lr(opt_state),
                   "grad_norm": float(grad_norm), "tokens_per_second": tokens / timer.seconds}
        if held_out and held_out.prompts and sft.eval_every and (index + 1) % sft.eval_every == 0:
            scalars["eval_loss"] = held_out_loss(held_loss, trainable, frozen, held_out, batch)
        return trainable, opt_state, scalars

    return step


def train(bus: Bus, loaded, rows: list[dict], sft: SftConfig, batch: int, stage: str, digest: str, log,
          held_out: list[dict] | None = None, max_refused: int = 3) -> dict:
    """Train `loaded.model` in place on rows' prompt/target; returns final metrics.

    `held_out` rows (prompt/target) give the `eval_loss` logged every `sft.eval_every` steps;
    `max_refused` non-finite steps in a row stop the run (tier.max_refused_steps).
    """
    seqs = tokenize(rows, loaded.tokenizer, sft.max_seq_len)
    if not seqs.prompts:
        raise UsageError(f"no training sequences fit max_seq_len={sft.max_seq_len}")
    source = Packed(seqs, sft.max_seq_len) if sft.packing else Padded(seqs)
    steps = sft.total_steps(source.rows, batch)
    tx = step_lib.optimizer(sft.optimizer, sft.schedule, steps)
    graphdef, trainable, frozen = step_lib.split(loaded.model)
    trainable, compute = step_lib.master(trainable)
    held = tokenize(held_out, loaded.tokenizer, sft.max_seq_len) if held_out and sft.eval_every else None
    plan = loop.Plan(checkpoints=stages.checkpoints_key(stage), metrics_dir=stage, metrics_key=stages.metrics_key(stage),
                     digest=digest, every=sft.checkpoint_every, keep=sft.keep_checkpoints, last=steps,
                     event="sft step", max_refused=max_refused)
    last, _ = loop.run(bus, plan, loaded.model, (trainable, tx.init(trainable)),
                       make_step(source, sft, batch, (graphdef, frozen, tx, compute), held), log)
    packed = {"packed_sequences": source.rows} if sft.packing else {}
    return {**last, "steps": steps, "sequences": len(seqs.prompts), **packed, "truncated": seqs.truncated,
            "dropped_too_long": seqs.dropped}


def train_and_export(bus: Bus, cfg, loaded, rows: list[dict], sft: SftConfig, stage: str, digest: str, log,
                     held_out: list[dict] | None = None) -> dict:
    """Adapt (LoRA when the recipe says), train, merge and export `loaded` as `stage`'s model."""
    if cfg.model.lora:
        loaded.model = lora.add(loaded.model, cfg.model.lora, sft.seed)
    final = train(bus, loaded, rows, sft, sft.batch_size or cfg.tier.train_batch, stage, digest, log, held_out,
                  cfg.tier.max_refused_steps)
    final["sharded_params"] = meshes.sharded_params(loaded.model)
    if cfg.model.lora:
        lora.merge(loaded.model)
    dtype = export.dtype_for(cfg.model, cfg.tier.dtype)
    return {"metrics": final, "outputs": export.to_bus(bus, stages.model_key(stage), loaded, dtype)}


def run(bus: Bus, cfg, log):
    """The SFT stage: skip if done; otherwise load, adapt, train, export, mark."""
    if cfg.sft is None:
        raise UsageError(f"recipe {cfg.recipe!r} has no sft section")
    stage = stages.Stage("sft", "sft", "SFT")
    digest = stages.digest(cfg, stage)

    def body() -> StageResult:
        loaded = loader.load_from(bus, stages.start_key(cfg, "sft"), cfg.model, cfg.tier.dtype,
                                  meshes.tier_mesh(cfg.tier.mesh), cfg.sft.seed, cfg.tier.remat)
        held_out = bus.read_jsonl(stages.EVAL_ROWS) if cfg.sft.eval_every else None
        done = train_and_export(bus, cfg, loaded, bus.read_jsonl(stages.TRAIN_ROWS), cfg.sft, "sft", digest, log,
                                held_out)
        inputs = [stages.TRAIN_ROWS] + ([stages.EVAL_ROWS] if held_out is not None else [])
        return StageResult(outputs=done["outputs"] + [stages.metrics_key("sft")], inputs=inputs,
                           metrics=done["metrics"])

    return run_once(bus, stage.key, digest, body, log)
