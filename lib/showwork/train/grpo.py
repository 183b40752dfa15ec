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

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from showwork.errors import UsageError
from showwork import memory, stages
from showwork.bus import Bus, StageResult, run_once
from showwork.config import GrpoConfig
from showwork.model import export, loader, lora, meshes
from showwork.sample import calculator, forward, sampler
from showwork.sample.logprobs import completion_logps
from showwork.task import rewards as rewards_lib
from showwork.train import loop, objective, step as step_lib

# ---------------------------------------------------------------- the step functions


def make_step_fns(graphdef, tx, obj: objective.Objective, temperature: float, compute=None):
    """(log-probs, loss and gradient, optimizer update) for the objective `obj`; `compute` casts
    the float32 master weights to the dtypes the model computes in (step.master)."""
    compute = compute or (lambda tree: tree)

    def logps_fn(trainable, frozen, prompt, completion, mask):
        return completion_logps(graphdef, (compute(trainable), frozen), prompt, completion, mask, temperature)

    logps_jit = jax.jit(logps_fn)

    def loss_fn(trainable, frozen, prompt, completion, mask, old, ref, adv, totals=None):
        logps = logps_fn(trainable, frozen, prompt, completion, mask)
        # old=None: one update per rollout, so the sampling policy is the
        # current one; its log-probs are these, held constant (ratio 1, the
        # same gradient) without a forward pass to compute them again.
        old = jax.lax.stop_gradient(logps) if old is None else old
        return objective.loss(logps, old, ref, adv, mask, obj, totals)

    return logps_jit, jax.jit(jax.value_and_grad(loss_fn, has_aux=True)), step_lib.make_apply(tx)


def micro_batches(n: int, size: int | None) -> list[slice]:
    """The step's n completions in gradient passes of `size` (one pass when size is None or >= n)."""
    if not size or size >= n:
        return [slice(0, n)]
    if n % size:
        raise UsageError(f"grpo.micro_batch {size} does not divide the step's {n} completions")
    return [slice(i, i + size) for i in range(0, n, size)]


def gradient(grad_fn, trainable, frozen, batch: tuple, old, ref, adv, passes: list[slice]):
    """(loss, aux, gradient) of the step's batch, summed over its micro-batches' passes.

    Each pass divides by the whole batch's counts (objective.aggregate's `totals`), so the sum is
    the batch's loss and gradient whatever the aggregation mode, while only one micro-batch's
    activations are held at a time. `old` and `ref` are per-pass lists (or None)."""
    totals = objective.counts(batch[2]) if len(passes) > 1 else None
    loss = aux = grads = None
    for i, part in enumerate(passes):
        (l, a), g = grad_fn(trainable, frozen, *(x[part] for x in batch), None if old is None else old[i],
                            None if ref is None else ref[i], adv[part], totals)
        loss, aux, grads = (l, a, g) if grads is None else (loss + l, step_lib.add(aux, a), step_lib.add(grads, g))
    return loss, aux, grads


def pass_logps(logps_fn, weights, frozen, batch: tuple, passes: list[slice]) -> list:
    """Log-probs of the batch under `weights`, one pass per micro-batch."""
    return [logps_fn(weights, frozen, *(x[part] for x in batch)) for part in passes]


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


# ---------------------------------------------------------------- one session


def fitting_prompts(rows: list[dict], tokenizer, max_prompt_length: int, log) -> tuple[list[dict], list[int]]:
    """The rows whose prompt fits the rollout's budget, with their token counts.

    Longer prompts are left out (counted), so every step packs to one fixed
    shape and compiles once.
    """
    lengths = [len(tokenizer.encode(r["prompt"], bos=True)) for r in rows]
    fits = [(r, n) for r, n in zip(rows, lengths) if n <= max_prompt_length]
    if not fits:
        raise UsageError(f"no training prompt fits rollout.max_prompt_length={max_prompt_length}")
    if len(fits) < len(rows):
        log.warning("prompts longer than max_prompt_length left out", left_out=len(rows) - len(fits), kept=len(fits))
    return [r for r, _ in fits], [n for _, n in fits]


@dataclasses.dataclass
class Round:
    """One sampling round of a step: `batch` prompts, G completions each, their rewards."""

    rows: list[dict]
    prompts: list[str]
    gold: list[str]
    samples: sampler.Samples
    totals: np.ndarray  # what each completion is trained on: the weighted rewards plus overlong shaping
    per_reward: dict[str, np.ndarray]
    graded: np.ndarray  # the weighted rewards alone: dynamic sampling keeps groups where these differ
    # With rollout.calculator: per completion id, 1 where the policy sampled it, 0 where the calculator
    # wrote it (out of the loss); None without the calculator (every id is the policy's).
    sampled: list[list[int]] | None = None
    model_tokens: list[int] | None = None  # tokens the policy generated per completion (the budget's count)


def round_seed(seed: int, index: int, attempt: int) -> int:
    """The sampling seed of round `attempt` of step `index`: a function of (seed, step, attempt) only,
    so a resumed run samples the same extra rounds. Round 0 keeps the seed steps always had."""
    if attempt == 0:
        return seed * 1_000_003 + index
    return int(np.random.SeedSequence([seed, index, attempt]).generate_state(1)[0])


def extra_prompts(n: int, batch: int, seed: int, index: int, attempt: int) -> list[int]:
    """Positions in the session's prompt order for dynamic sampling's round `attempt` of step `index`."""
    picked = np.random.default_rng([seed, index, attempt, 0xD5]).choice(n, batch, replace=n < batch)
    return [int(i) for i in picked]


@dataclasses.dataclass
class Rollouts:
    """A step's sampling: its scheduled prompts (round 0) and, with dynamic sampling, more rounds
    from the session's prompts until `batch` groups have rewards that differ."""

    grpo: GrpoConfig
    rows: list[dict]
    order: list[int]  # the session's prompts (rows indices), in schedule order
    batch: int
    first: int  # the session's first global step
    prompt_len: int

    def sample(self, policy, index: int, attempt: int, picked: list[dict]) -> Round:
        grpo, g = self.grpo, self.grpo.num_generations
        roll = grpo.rollout
        settings = sampler.SampleSettings(roll.max_tokens_to_generate, roll.temperature, roll.top_k, roll.top_p)
        prompts = [r["prompt"] for r in picked for _ in range(g)]
        gold = [r["answer"] for r in picked for _ in range(g)]
        seed = round_seed(grpo.seed, index, attempt)
        sampled = model_tokens = None
        if roll.calculator:
            calc = calculator.generate(policy, prompts, settings, row_seeds=sampler.default_row_seeds(seed, len(prompts)),
                                       batch_size=len(prompts), group=g, prompt_len=self.prompt_len)
            policy_ids = [[t for t, own in zip(ids, mask) if own] for ids, mask in zip(calc.completion_ids, calc.sampled)]
            samples = sampler.Samples(calc.texts, policy_ids, calc.completion_ids, calc.prompt_tokens, calc.stopped,
                                      calc.decode_steps)
            sampled, model_tokens = calc.sampled, calc.tokens
        else:
            samples = sampler.generate(policy, prompts, settings, seed=seed, batch_size=len(prompts),
                                       prompt_len=self.prompt_len, group=g)
        tests = [r.get("tests") for r in picked for _ in range(g)]
        totals, per_reward = rewards_lib.combined(grpo.rewards, prompts, samples.texts, gold, tests)
        graded, per_reward = np.asarray(totals, np.float64), {k: np.asarray(v, np.float64) for k, v in per_reward.items()}
        totals = graded
        if grpo.overlong_buffer_length:
            per_reward["overlong"] = objective.overlong_penalty(
                model_tokens or [len(c) for c in samples.completion_ids], roll.max_tokens_to_generate,
                grpo.overlong_buffer_length, grpo.overlong_buffer_penalty)
            totals = graded + per_reward["overlong"]
        return Round(picked, prompts, gold, samples, totals, per_reward, graded, sampled, model_tokens)

    def __call__(self, policy, index: int) -> tuple[list[Round], list[tuple[int, int]]]:
        """The step's sampling rounds and its `batch` groups as (round, group) pairs."""
        grpo, g, n = self.grpo, self.grpo.num_generations, len(self.order)
        scheduled = [self.rows[self.order[((index - self.first) * self.batch + i) % n]] for i in range(self.batch)]
        rounds = [self.sample(policy, index, 0, scheduled)]
        if not grpo.dynamic_sampling:
            return rounds, [(0, k) for k in range(self.batch)]
        # As DAPO: a group is kept when its graded rewards differ, not its lengths (overlong shaping).
        masks = [objective.informative(rounds[0].graded, g)]
        while sum(int(m.sum()) for m in masks) < self.batch and len(rounds) < grpo.max_num_gen_batches:
            picks = extra_prompts(n, self.batch, grpo.seed, index, len(rounds))
            rounds.append(self.sample(policy, index, len(rounds), [self.rows[self.order[i]] for i in picks]))
            masks.append(objective.informative(rounds[-1].graded, g))
        return rounds, objective.choose_groups(masks, self.batch)


def make_step(loaded, rollouts: Rollouts, parts: tuple, base: nnx.Module | None):
    """GRPO's step for train.loop: sample G completions per prompt, reward, update `num_iterations` times."""
    graphdef, frozen, reference, tx, compute = parts
    grpo, g = rollouts.grpo, rollouts.grpo.num_generations
    logps_fn, grad_fn, apply = make_step_fns(graphdef, tx, objective.Objective.of(grpo),
                                             max(grpo.rollout.temperature, 1e-3), compute)

    def step(index: int, trainable, opt_state):
        with loop.StepTimer() as timer:
            nnx.update(loaded.model, compute(trainable))  # rollouts sample in the tier's dtype
            policy = loaded if base is None else dataclasses.replace(loaded, model=lora.fold_into(base, loaded.model))
            with loop.StepTimer() as sampled:
                rounds, chosen = rollouts(policy, index)
            memory.trim()  # the rollouts' caches and logits are free: hand them back before the update's passes
            picked = [(rounds[r], k * g + j) for r, k in chosen for j in range(g)]
            totals = np.asarray([rnd.totals[i] for rnd, i in picked])
            completions = [rnd.samples.completion_ids[i] for rnd, i in picked]
            # The calculator's values lengthen a completion past the model's budget: its batches are
            # bucketed (one program per 32-token width) instead of fixed at max_tokens_to_generate.
            prompt, completion, mask = forward.pack([rnd.samples.prompt_tokens[i] for rnd, i in picked], completions,
                                                    prompt_len=rollouts.prompt_len,
                                                    completion_len=None if grpo.rollout.calculator
                                                    else grpo.rollout.max_tokens_to_generate)
            if grpo.rollout.calculator:
                mask = mask * forward.pack_mask([rnd.sampled[i] for rnd, i in picked], mask.shape[1])
            if grpo.mask_truncated_completions:
                mask = objective.drop_truncated(mask, [rnd.samples.stopped[i] for rnd, i in picked])
            batch, passes = (prompt, completion, mask), micro_batches(len(completions), grpo.micro_batch)
            old = pass_logps(logps_fn, trainable, frozen, batch, passes) if grpo.num_iterations > 1 else None
            ref = pass_logps(logps_fn, reference, frozen, batch, passes) if reference is not None else None
            adv = objective.advantages(totals, g, grpo.scale_rewards)
            for _ in range(grpo.num_iterations):
                loss, aux, grads = gradient(grad_fn, trainable, frozen, batch, old, ref,
                                            jnp.asarray(adv, jnp.float32), passes)
                trainable, opt_state, grad_norm = apply(trainable, opt_state, grads)
            jax.block_until_ready(trainable)
        scalars = {"loss": float(loss), "kl": float(aux["kl"]), "clip_fraction": float(aux["clip_fraction"]),
                   # Read after the update: the rate this step applied (optax records it there).
                   "learning_rate": step_lib.current_lr(opt_state), "grad_norm": float(grad_norm),
                   "completion_tokens": float(np.mean([len(c) for c in completions])),
                   **({"calculator_tokens": float(np.mean([len(r.sampled[i]) - sum(r.sampled[i]) for r, i in picked]))}
                      if grpo.rollout.calculator else {}),
                   "informative_groups": float(objective.informative([r.graded[i] for r, i in picked], g).sum()),
                   "step_seconds": timer.seconds, "sample_seconds": sampled.seconds}
        if grpo.log_completions and grpo.num_completions_to_print:
            scalars[loop.SAMPLES] = sample_records(rounds, chosen[:grpo.num_completions_to_print], adv, g)
        return trainable, opt_state, {**round_scalars(grpo, rounds), **scalars}

    return step


def round_scalars(grpo: GrpoConfig, rounds: list[Round]) -> dict:
    """Reward and correctness of the scheduled prompts (round 0): what the policy scores, not the
    informative groups dynamic sampling picked out of more prompts; and how many rounds it took."""
    scheduled = rounds[0]
    out = {"reward": float(np.mean(scheduled.totals)),
           "correct": float(np.mean(rewards_lib.correct(scheduled.prompts, scheduled.samples.texts, scheduled.gold))),
           **{f"reward_{name}": float(np.mean(v)) for name, v in scheduled.per_reward.items()}}
    if grpo.dynamic_sampling:
        out["sampling_rounds"] = float(len(rounds))
    return out


def sample_records(rounds: list[Round], groups: list[tuple[int, int]], adv: np.ndarray, g: int) -> list[dict]:
    """The first trained groups, readable: prompt, gold answer and each completion with its total
    reward, each reward function's value and its advantage (`adv` is laid out as the trained batch)."""
    records = []
    for slot, (r, k) in enumerate(groups):
        rnd = rounds[r]
        completions = [{"text": rnd.samples.texts[k * g + j], "reward": float(rnd.totals[k * g + j]),
                        "rewards": {name: float(v[k * g + j]) for name, v in rnd.per_reward.items()},
                        "advantage": float(adv[slot * g + j]), "tokens": len(rnd.samples.completion_ids[k * g + j]),
                        "stopped": bool(rnd.samples.stopped[k * g + j])} for j in range(g)]
        records.append({"prompt": rnd.rows[k]["prompt"], "answer": str(rnd.rows[k]["answer"]), "round": r,
                        "completions": completions})
    return records


def train_session(bus: Bus, loaded, rows: list[dict], session: int, grpo: GrpoConfig, batch: int, digest: str, log,
                  base: nnx.Module | None = None, max_refused: int = 3) -> dict:
    """Run session `session` (0-based) on `loaded.model` in place; returns its metrics.

    `base`: with LoRA, the model `lora.add` was given. Rollouts then sample
    from it with the current adapters folded into its weights
    (lora.fold_into), which decodes faster than running the adapters;
    None samples from `loaded.model` itself.
    """
    steps = grpo.session_steps(batch)
    first, last = sum(steps[:session]), sum(steps[:session + 1])
    tx = (step_lib.optimizer(grpo.optimizer, grpo.schedule, steps[session], offset=first)
          if grpo.schedule_per_session else step_lib.optimizer(grpo.optimizer, grpo.schedule, sum(steps)))
    graphdef, trainable, frozen = step_lib.split(loaded.model)
    trainable, compute = step_lib.master(trainable)
    # The starting weights (zero LoRA adapters, or the full model), copied:
    # the optimizer step reuses the trainable arrays' buffers.
    reference = step_lib.copied(trainable) if grpo.beta else None
    rows, lengths = fitting_prompts(rows, loaded.tokenizer, grpo.rollout.max_prompt_length, log)
    order = session_prompts(len(rows), session, grpo.prompts_per_session, grpo.review_ratio, grpo.seed)
    # One padded prompt length per session, the bucket of its longest prompt:
    # every step compiles to the same shapes (once), and a dataset of short
    # prompts is not padded to max_prompt_length, which every forward pass pays.
    # Dynamic sampling's extra rounds draw from the whole session: its longest prompt counts too.
    used = set(order) if grpo.dynamic_sampling else {
        order[(local * batch + i) % len(order)] for local in range(last - first) for i in range(batch)}
    prompt_len = min(grpo.rollout.max_prompt_length, forward.bucket(max(lengths[i] for i in used)))
    key = stages.grpo_key(session)
    plan = loop.Plan(checkpoints=stages.checkpoints_key("grpo"), metrics_dir="grpo", metrics_key=stages.metrics_key(key),
                     samples_key=stages.samples_key(key),
                     digest=digest, every=grpo.checkpoint_every, keep=grpo.keep_checkpoints, first=first, last=last,
                     event="grpo step", context={"session": session}, name=f"session {session}",
                     after=f"session {session - 1}", max_refused=max_refused)
    step = make_step(loaded, Rollouts(grpo, rows, order, batch, first, prompt_len),
                     (graphdef, frozen, reference, tx, compute), base)
    summary, start = loop.run(bus, plan, loaded.model, (trainable, tx.init(trainable)), step, log)
    return {**summary, "session": session, "steps": last - start, "global_step": last}


def run(bus: Bus, cfg, session: int, log):
    """The GRPO session stage `grpo/s-<session>`: skip if done; else train, export, mark."""
    grpo = cfg.grpo
    if grpo is None:
        raise UsageError(f"recipe {cfg.recipe!r} has no grpo section")
    if not 0 <= session < grpo.sessions:
        raise UsageError(f"session {session} out of range: the recipe has {grpo.sessions} session(s)")
    stage = stages.Stage("grpo", stages.grpo_key(session), f"GRPO session {session + 1}", (session,))
    digest = stages.digest(cfg, stage)

    def body() -> StageResult:
        start = stages.start_key(cfg, "grpo")
        loaded = loader.load_from(bus, start, cfg.model, cfg.tier.dtype, meshes.tier_mesh(cfg.tier.mesh),
                                  grpo.seed, cfg.tier.remat)
        base = None
        if cfg.model.lora:
            base = loaded.model
            loaded.model = lora.add(base, cfg.model.lora, grpo.seed)
        final = train_session(bus, loaded, bus.read_jsonl(stages.TRAIN_ROWS), session, grpo,
                              grpo.batch_size or cfg.tier.train_batch, digest, log, base, cfg.tier.max_refused_steps)
        if cfg.model.lora:
            lora.merge(loaded.model)
        outputs = export.to_bus(bus, stages.model_key(stage.key), loaded,
                                 export.dtype_for(cfg.model, cfg.tier.dtype))
        inputs = [stages.TRAIN_ROWS] + ([start] if start else [])
        logged = [stages.metrics_key(stage.key), stages.samples_key(stage.key)]
        return StageResult(outputs=outputs + logged, inputs=inputs, metrics=final)

    return run_once(bus, stage.key, digest, body, log)
