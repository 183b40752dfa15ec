"""Supervised fine-tuning: full or LoRA, loss on completion tokens only.

Reads `data/train.jsonl` (prompt, target) from the bus; writes checkpoints
(`sft/checkpoints`), TensorBoard scalars and `sft/metrics.jsonl`, the model
with LoRA merged as a Hugging Face directory (`sft/model`), and the marker.
A run killed or preempted resumes from its newest checkpoint with the same
data order: the order is a pure function of (seed, epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from showwork import training
from showwork.bus import Bus, StageResult, run_once


@dataclass
class Sequences:
    prompts: list[list[int]]
    completions: list[list[int]]
    truncated: int
    dropped: int


def tokenize(rows: list[dict], tokenizer, max_seq_len: int) -> Sequences:
    """Prompt (with BOS) and target ids; targets cut to fit, prompts that cannot fit dropped."""
    prompts, completions, truncated, dropped = [], [], 0, 0
    for row in rows:
        p = tokenizer.encode(row["prompt"], bos=True)
        c = tokenizer.encode(row["target"])
        room = max_seq_len - len(p)
        if room < 8:  # not even a few target tokens fit: nothing to learn from
            dropped += 1
            continue
        if len(c) > room:
            c = c[:room]
            truncated += 1
        prompts.append(p)
        completions.append(c)
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


def total_steps(n: int, batch: int, accumulation: int, epochs: int, max_steps: int | None) -> int:
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(epochs * n / (batch * accumulation)))


def make_step_fns(graphdef, tx):
    def loss_fn(trainable, frozen, prompt, completion, mask):
        logps = training.completion_logps(graphdef, (trainable, frozen), prompt, completion, mask)
        return -(logps * mask).sum() / jnp.maximum(mask.sum(), 1.0)

    return jax.jit(jax.value_and_grad(loss_fn)), training.make_apply(tx)


def train(bus: Bus, loaded, rows: list[dict], *, stage: str, seed: int, batch: int, accumulation: int,
          epochs: int, max_steps: int | None, max_seq_len: int, opt, schedule, checkpoint_every: int,
          keep_checkpoints: int, digest: str, log) -> dict:
    """Train `loaded.model` in place on rows' prompt/target; returns final metrics."""
    seqs = tokenize(rows, loaded.tokenizer, max_seq_len)
    if not seqs.prompts:
        raise ValueError(f"no training sequences fit max_seq_len={max_seq_len}")
    n = len(seqs.prompts)
    steps = total_steps(n, batch, accumulation, epochs, max_steps)
    tx = training.optimizer(opt.learning_rate, opt.b1, opt.b2, opt.weight_decay, opt.max_grad_norm, steps,
                            training.warmup_steps(schedule.warmup_steps, schedule.warmup_ratio, steps),
                            schedule.end_value_ratio)
    graphdef, trainable, frozen = training.split(loaded.model)
    opt_state = tx.init(trainable)
    ckpt = training.Checkpoints(bus, f"{stage}/checkpoints", keep_checkpoints, checkpoint_every)
    start = 0
    newest = ckpt.restore_newest((trainable, opt_state), log)
    if newest is not None:
        (trainable, opt_state), meta, latest = newest
        if meta.get("digest") != digest:
            raise ValueError(f"checkpoint {ckpt.uri}/{latest} belongs to another config ({meta.get('digest')})")
        start = latest
        log.info("resuming from checkpoint", step=start, of=steps)
    grad_fn, apply = make_step_fns(graphdef, tx)
    # One prompt width for the run and completions in 128-token buckets: a
    # handful of compiled shapes instead of one per length (compiles cost
    # more than the padding on CPU and TPU alike). A bucket never reaches
    # past the run's longest completion: data cut at max_seq_len is all
    # full-length, and rounding it up to the next bucket cost 19% more
    # positions on the benchmark (96 + 416 tokens packed as 96 + 512).
    prompt_len = training.bucket_len(max(len(p) for p in seqs.prompts), 32)
    longest = max(len(c) for c in seqs.completions)
    metrics = training.Metrics(bus, stage, f"{stage}/metrics.jsonl", resume_step=start)
    last = {}
    with training.PreemptionGuard() as guard:
        for step in range(start, steps):
            with training.StepTimer() as timer:
                grads_sum, losses, tokens = None, [], 0
                for micro in range(accumulation):
                    idx = order(n, seed, (step * accumulation + micro) * batch, batch)
                    completions = [seqs.completions[i] for i in idx]
                    clen = training.capped_bucket(max(len(c) for c in completions), 128, longest)
                    prompt, completion, mask = training.pack([seqs.prompts[i] for i in idx], completions,
                                                             prompt_len=prompt_len, completion_len=clen)
                    loss, grads = grad_fn(trainable, frozen, prompt, completion, mask)
                    grads_sum = grads if grads_sum is None else jax.tree.map(jnp.add, grads_sum, grads)
                    losses.append(float(loss))
                    tokens += int(mask.sum() + (prompt != 0).sum())
                grads = jax.tree.map(lambda g: g / accumulation, grads_sum)
                lr = training.current_lr(opt_state)
                trainable, opt_state, grad_norm = apply(trainable, opt_state, grads)
                jax.block_until_ready(trainable)
            last = {"loss": float(np.mean(losses)), "learning_rate": lr, "grad_norm": float(grad_norm),
                    "tokens_per_second": tokens / timer.seconds}
            metrics.log(step + 1, **last)
            log.info("sft step", step=step + 1, of=steps, **{k: round(v, 6) for k, v in last.items()})
            meta = {"digest": digest, "step": step + 1}
            # Metrics first: a kill between the two then leaves rows past the
            # checkpoint, which the resumed run drops; the other order would
            # lose the rows of steps the checkpoint already holds.
            if ckpt.due(step + 1):
                metrics.flush()
            saved = ckpt.save(step + 1, (trainable, opt_state), meta)
            if guard.requested:
                training.stop_for_preemption(ckpt, metrics, step + 1, (trainable, opt_state), meta, saved)
    ckpt.save(steps, (trainable, opt_state), {"digest": digest, "step": steps}, force=True)
    ckpt.close()
    metrics.close()
    nnx.update(loaded.model, trainable)
    return {**last, "steps": steps, "sequences": n, "truncated": seqs.truncated, "dropped_too_long": seqs.dropped}


def run(bus: Bus, cfg, log, rows: list[dict] | None = None, stage: str = "sft"):
    """The SFT stage: skip if done; otherwise load, adapt, train, export, mark."""
    from showwork import config as config_lib, models

    sft = cfg.sft
    if sft is None:
        raise ValueError(f"recipe {cfg.recipe!r} has no sft section")
    digest = config_lib.digest(model=cfg.model, data=cfg.data, prompt=cfg.prompt, sft=sft,
                               batch=cfg.tier.train_batch)

    def body() -> StageResult:
        train_rows = rows if rows is not None else bus.read_jsonl("data/train.jsonl")
        loaded = models.load(cfg.model.name, cfg.model.path, cfg.tier.dtype, seed=sft.seed,
                             mesh=models.tier_mesh(cfg.tier.mesh), remat=cfg.tier.remat)
        lora = cfg.model.lora
        if lora:
            loaded.model = training.add_lora(loaded.model, lora.rank, lora.alpha, lora.targets, lora.quantize, sft.seed)
        final = train(bus, loaded, train_rows, stage=stage, seed=sft.seed, batch=sft.batch_size or cfg.tier.train_batch,
                      accumulation=sft.gradient_accumulation, epochs=sft.epochs, max_steps=sft.max_steps,
                      max_seq_len=sft.max_seq_len, opt=sft.optimizer, schedule=sft.schedule,
                      checkpoint_every=sft.checkpoint_every, keep_checkpoints=sft.keep_checkpoints,
                      digest=digest, log=log)
        final["sharded_params"] = models.sharded_params(loaded.model)
        if lora:
            training.merged_params(loaded.model)
        outputs = training.export(bus, f"{stage}/model", loaded)
        return StageResult(outputs=outputs + [f"{stage}/metrics.jsonl"], inputs=["data/train.jsonl"], metrics=final)

    return run_once(bus, stage, digest, body, log)
