"""GRPO sessions: sample G completions per prompt, reward them, push the policy
toward the better ones within a clipped ratio and a KL leash to the start.

A run is `grpo.sessions` sessions. Session K trains on its own slice of new
prompts mixed with prompts replayed from sessions < K (active review, ratio
`grpo.review_ratio`), starting from the newest checkpoint; it ends with a
checkpoint, an exported model (`grpo/s-K/model`) and a marker
(`grpo/s-K/_SUCCESS`). Steps are numbered globally across sessions, so one
checkpoint directory (`grpo/checkpoints`) serves the relay and resume alike.

The reference policy for the KL term is the model GRPO started from (the SFT
export or the base model): with LoRA that is the same weights with zero
adapters, so it costs no memory.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tunix.rl import common as tunix_common
from tunix.rl.algo_core import compute_advantages

from showwork import rewards as rewards_lib
from showwork import sampling, training
from showwork.bus import Bus, StageResult, run_once

# ---------------------------------------------------------------- the objective


def objective(logps, old_logps, ref_logps, advantages, mask, beta: float, epsilon: float):
    """The GRPO loss (Shao et al. 2024, eq. 21) and diagnostics.

    Per token: -min(r·A, clip(r, 1-ε, 1+ε)·A) + β·KL(π‖π_ref), where r is the
    ratio to the sampling policy. KL uses the k3 estimator ("low_var_kl");
    tokens are averaged per sequence, then over sequences (tunix's
    `sequence-mean-token-mean`).
    """
    ratio = jnp.exp(jnp.clip(logps - old_logps, -20.0, 20.0))
    adv = advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon)
    per_token = jnp.maximum(unclipped, clipped)
    # No reference (beta 0): nothing to measure against, reported as 0.
    kl = jnp.zeros_like(logps) if ref_logps is None else tunix_common.compute_kl_divergence(logps, ref_logps,
                                                                                            "low_var_kl")
    if beta:
        per_token = per_token + beta * kl
    loss = tunix_common.aggregate_loss(per_token, mask, "sequence-mean-token-mean")
    denom = jnp.maximum(mask.sum(), 1.0)
    aux = {"kl": (kl * mask).sum() / denom, "clip_fraction": ((clipped > unclipped) * mask).sum() / denom}
    return loss, aux


def make_step_fns(graphdef, tx, beta: float, epsilon: float, temperature: float):
    def logps_fn(trainable, frozen, prompt, completion, mask):
        return training.completion_logps(graphdef, (trainable, frozen), prompt, completion, mask, temperature)

    logps_jit = jax.jit(logps_fn)

    def loss_fn(trainable, frozen, prompt, completion, mask, old, ref, adv):
        logps = logps_fn(trainable, frozen, prompt, completion, mask)
        # old=None: one update per rollout, so the sampling policy is the
        # current one; its log-probs are these, held constant (ratio 1, the
        # same gradient) without a forward pass to compute them again.
        old = jax.lax.stop_gradient(logps) if old is None else old
        return objective(logps, old, ref, adv, mask, beta, epsilon)

    return logps_jit, jax.jit(jax.value_and_grad(loss_fn, has_aux=True)), training.make_apply(tx)


# ---------------------------------------------------------------- prompts per session


def session_prompts(n_rows: int, session: int, per_session: int, review_ratio: float, seed: int) -> list[int]:
    """Row indices for a session: its new slice plus replayed earlier rows, shuffled.

    New rows come from a fixed seeded order of the training set (wrapping
    when sessions outnumber the data); replayed rows are drawn without
    replacement from every earlier session's slice.
    """
    base = np.random.default_rng([seed, 0xA11]).permutation(n_rows)
    new = [int(base[(session * per_session + i) % n_rows]) for i in range(per_session)]
    replay: list[int] = []
    if session > 0 and review_ratio > 0:
        seen = sorted({int(base[i % n_rows]) for i in range(session * per_session)})
        count = min(len(seen), int(round(per_session * review_ratio)))
        replay = [int(x) for x in np.random.default_rng([seed, session, 0x5EE]).choice(seen, count, replace=False)]
    mixed = new + replay
    return [mixed[i] for i in np.random.default_rng([seed, session]).permutation(len(mixed))]


def steps_per_session(per_session: int, review_ratio: float, batch: int, fixed: int | None) -> int:
    if fixed:
        return fixed
    return max(1, math.ceil(per_session * (1 + review_ratio) / batch))


# ---------------------------------------------------------------- one session


def train_session(bus: Bus, loaded, rows: list[dict], *, session: int, grpo, batch: int, seed: int,
                  digest: str, log, base: nnx.Module | None = None) -> dict:
    """Run session `session` (0-based) on `loaded.model` in place; returns its metrics.

    `base`: with LoRA, the model `add_lora` was given. Rollouts then sample
    from it with the current adapters folded into its weights
    (training.fold_into), which decodes faster than running the adapters;
    None samples from `loaded.model` itself.
    """
    steps = steps_per_session(grpo.prompts_per_session, grpo.review_ratio, batch, grpo.steps_per_session)
    total = steps * grpo.sessions
    first, last = session * steps, (session + 1) * steps
    opt, sch, roll = grpo.optimizer, grpo.schedule, grpo.rollout
    tx = training.optimizer(opt.learning_rate, opt.b1, opt.b2, opt.weight_decay, opt.max_grad_norm, total,
                            training.warmup_steps(sch.warmup_steps, sch.warmup_ratio, total), sch.end_value_ratio)
    graphdef, trainable, frozen = training.split(loaded.model)
    # The starting weights (zero LoRA adapters, or the full model), copied:
    # the optimizer step reuses the trainable arrays' buffers.
    reference = jax.tree.map(jnp.copy, trainable) if grpo.beta else None
    opt_state = tx.init(trainable)
    ckpt = training.Checkpoints(bus, "grpo/checkpoints", grpo.keep_checkpoints, grpo.checkpoint_every)
    start = first
    latest = ckpt.latest_step()
    if latest is not None and latest > last:
        raise ValueError(f"{ckpt.uri} holds step {latest}, past session {session}'s last step {last}")
    newest = ckpt.restore_newest((trainable, opt_state), log, at_least=first) if latest is not None else None
    if newest is not None:
        (trainable, opt_state), meta, latest = newest
        if meta.get("digest") != digest:
            raise ValueError(f"checkpoint {ckpt.uri}/{latest} belongs to another config")
        start = latest
        log.info("resuming GRPO", session=session, step=start)
    elif session > 0:
        raise ValueError(f"session {session} needs session {session - 1}'s final checkpoint (step {first}) in {ckpt.uri}")

    # Prompts over the rollout's prompt budget are left out (counted), so every
    # step packs to one fixed shape and compiles once.
    lengths = [len(loaded.tokenizer.encode(r["prompt"], bos=True)) for r in rows]
    fits = [r for r, n in zip(rows, lengths) if n <= roll.max_prompt_length]
    lengths = [n for n in lengths if n <= roll.max_prompt_length]
    if not fits:
        raise ValueError(f"no training prompt fits rollout.max_prompt_length={roll.max_prompt_length}")
    if len(fits) < len(rows):
        log.warning("prompts longer than max_prompt_length left out", left_out=len(rows) - len(fits), kept=len(fits))
    rows = fits
    order = session_prompts(len(rows), session, grpo.prompts_per_session, grpo.review_ratio, seed)
    # One padded prompt length per session, the bucket of its longest prompt:
    # every step compiles to the same shapes (once), and a dataset of short
    # prompts is not padded to max_prompt_length, which costs every forward
    # pass (measured: 256 vs 160 positions on the benchmark's prompts).
    used = {order[(local * batch + i) % len(order)] for local in range(last - first) for i in range(batch)}
    prompt_len = min(roll.max_prompt_length, training.bucket_len(max(lengths[i] for i in used), sampling.PROMPT_BUCKET))
    logps_fn, grad_fn, apply = make_step_fns(graphdef, tx, grpo.beta, grpo.epsilon, max(roll.temperature, 1e-3))
    settings = sampling.SampleSettings(roll.max_tokens_to_generate, roll.temperature, roll.top_k, roll.top_p)
    metrics = training.Metrics(bus, "grpo", f"grpo/s-{session}/metrics.jsonl", resume_step=start)
    g = grpo.num_generations
    summary: dict = {}
    with training.PreemptionGuard() as guard:
        for step in range(start, last):
            local = step - first
            picked = [rows[order[(local * batch + i) % len(order)]] for i in range(batch)]
            with training.StepTimer() as timer:
                nnx.update(loaded.model, trainable)
                policy = loaded if base is None else dataclasses.replace(loaded, model=training.fold_into(base, loaded.model))
                prompts = [r["prompt"] for r in picked for _ in range(g)]
                gold = [r["answer"] for r in picked for _ in range(g)]
                with training.StepTimer() as sampled:
                    samples = sampling.generate(policy, prompts, settings, seed=seed * 1_000_003 + step,
                                                batch_size=len(prompts), prompt_len=prompt_len, group=g)
                totals, parts = rewards_lib.combined(grpo.rewards, prompts, samples.texts, gold)
                adv = compute_advantages(np.asarray(totals, np.float32), g)
                prompt, completion, mask = training.pack(samples.prompt_tokens, samples.completion_ids,
                                                         prompt_len=prompt_len,
                                                         completion_len=roll.max_tokens_to_generate)
                old = logps_fn(trainable, frozen, prompt, completion, mask) if grpo.num_iterations > 1 else None
                ref = logps_fn(reference, frozen, prompt, completion, mask) if reference is not None else None
                adv = jnp.asarray(adv, jnp.float32)
                for _ in range(grpo.num_iterations):
                    (loss, aux), grads = grad_fn(trainable, frozen, prompt, completion, mask, old, ref, adv)
                    lr = training.current_lr(opt_state)
                    trainable, opt_state, grad_norm = apply(trainable, opt_state, grads)
                jax.block_until_ready(trainable)
            correct = rewards_lib.correct(prompts, samples.texts, gold)
            summary = {
                "reward": float(np.mean(totals)), "correct": float(np.mean(correct)),
                "loss": float(loss), "kl": float(aux["kl"]), "clip_fraction": float(aux["clip_fraction"]),
                "learning_rate": lr, "grad_norm": float(grad_norm),
                "completion_tokens": float(np.mean([len(t) for t in samples.completion_ids])),
                "step_seconds": timer.seconds, "sample_seconds": sampled.seconds,
                **{f"reward_{name}": float(np.mean(v)) for name, v in parts.items()},
            }
            metrics.log(step + 1, **summary)
            log.info("grpo step", session=session, step=step + 1, of=total,
                     **{k: float(f"{v:.4g}") for k, v in summary.items()})
            meta = {"digest": digest, "step": step + 1}
            # Metrics first: a kill between the two then leaves rows past the
            # checkpoint, which the resumed run drops; the other order would
            # lose the rows of steps the checkpoint already holds.
            if ckpt.due(step + 1):
                metrics.flush()
            saved = ckpt.save(step + 1, (trainable, opt_state), meta)
            if guard.requested and step + 1 < last:
                training.stop_for_preemption(ckpt, metrics, step + 1, (trainable, opt_state), meta, saved)
    ckpt.save(last, (trainable, opt_state), {"digest": digest, "step": last}, force=True)
    ckpt.close()
    metrics.close()
    nnx.update(loaded.model, trainable)
    return {**summary, "session": session, "steps": last - start, "global_step": last}


def run(bus: Bus, cfg, session: int, log):
    """The GRPO session stage `grpo/s-<session>`: skip if done; else train, export, mark."""
    from showwork import config as config_lib

    grpo = cfg.grpo
    if grpo is None:
        raise ValueError(f"recipe {cfg.recipe!r} has no grpo section")
    if not 0 <= session < grpo.sessions:
        raise ValueError(f"session {session} out of range: the recipe has {grpo.sessions} session(s)")
    digest = config_lib.digest(model=cfg.model, data=cfg.data, prompt=cfg.prompt, sft=cfg.sft, grpo=grpo,
                               batch=cfg.tier.train_batch)
    stage = f"grpo/s-{session}"

    def body() -> StageResult:
        rows = bus.read_jsonl("data/train.jsonl")
        loaded = training.start_model(bus, cfg, grpo.seed)
        lora = cfg.model.lora
        base = None
        if lora:
            base = loaded.model
            loaded.model = training.add_lora(base, lora.rank, lora.alpha, lora.targets, lora.quantize, grpo.seed)
        final = train_session(bus, loaded, rows, session=session, grpo=grpo, batch=grpo.batch_size or cfg.tier.train_batch,
                              seed=grpo.seed, digest=digest, log=log, base=base)
        if lora:
            training.merged_params(loaded.model)
        outputs = training.export(bus, f"{stage}/model", loaded)
        inputs = ["data/train.jsonl"] + (["sft/model"] if cfg.sft is not None else [])
        return StageResult(outputs=outputs + [f"{stage}/metrics.jsonl"], inputs=inputs, metrics=final)

    return run_once(bus, stage, digest, body, log)
