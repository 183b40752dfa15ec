"""The pieces of one optimizer step that SFT and GRPO share: which parameters
train, the optimizer and its schedule, and the jitted update.

We run our own small step loop (train/loop.py) rather than tunix's
PeftTrainer/GRPOLearner loops: those reset the data-shuffle RNG on resume
(google/tunix#2288) and skip unconsumed data with several iterations
(google/tunix#2290). The GRPO maths (advantages, KL, loss aggregation)
comes from tunix's `algo_core`/`common`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from showwork.config import OptimizerConfig, ScheduleConfig


def trainable_filter(model: nnx.Module):
    """LoRA params when the model has adapters, else every param (full fine-tuning)."""
    has_lora = any(True for _ in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
    return nnx.LoRAParam if has_lora else nnx.Param


def split(model: nnx.Module):
    """(graphdef, trainable, frozen) for a functional train step."""
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(model), ...)
    return graphdef, trainable, frozen


def master(trainable):
    """(float32 master copy of the trainable weights, a function casting such a tree back to
    the dtypes the model was loaded in).

    Mixed precision: the optimizer updates float32 weights and keeps float32
    moments, the forward and backward passes run in the tier's dtype (the
    loss casts the master weights on the way in, so gradients arrive in
    float32), and frozen weights stay in the tier's dtype. In pure bfloat16
    a weight of size 0.01 moves in steps of about 4e-5, so an update of
    lr 3e-6 would round to nothing. On a float32 tier both are no-ops.
    """
    dtypes = jax.tree.map(lambda x: x.dtype, trainable)
    if all(d == jnp.float32 for d in jax.tree.leaves(dtypes)):
        return trainable, lambda tree: tree  # no copy: the model's own arrays are the master weights

    @jax.jit
    def compute(tree):
        return jax.tree.map(lambda x, dtype: x.astype(dtype), tree, dtypes)

    return jax.jit(lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree))(trainable), compute


# Whole-tree arithmetic as one compiled program each. The same done leaf by leaf outside jit runs (and
# on first use compiles) one small program per leaf: 72 for a LoRA'd Gemma 3, and on a multi-host
# mesh each of those compiles is paid by every process.
@jax.jit
def add(a, b):
    """Leafwise a + b (gradients summed over micro-batches)."""
    return jax.tree.map(jnp.add, a, b)


@jax.jit
def divided(tree, by):
    """Every leaf divided by the scalar `by`."""
    return jax.tree.map(lambda x: x / by, tree)


@jax.jit
def copied(tree):
    """New buffers holding the same values (a frozen reference the update cannot donate away)."""
    return jax.tree.map(jnp.copy, tree)


def optimizer(opt: OptimizerConfig, sch: ScheduleConfig, total_steps: int,
              offset: int = 0) -> optax.GradientTransformation:
    """AdamW on a linear-warmup, cosine-to-a-floor schedule, after global-norm clipping.

    The schedule runs over `total_steps` optimizer steps starting at step `offset` (a GRPO session
    with its own schedule starts at its first global step; the count lives in the optimizer state).
    """
    learning_rate = opt.learning_rate
    warmup = min(warmup_steps(sch, total_steps), max(total_steps - 1, 0))
    # Warmup starts at peak / (warmup + 1), not 0: step k of the warmup applies (k + 1) / (warmup + 1)
    # of the peak, so no step is spent at rate 0 (optax's and Hugging Face's linear warmups begin at 0,
    # which on a 36-step demo wastes a step).
    curve = optax.warmup_cosine_decay_schedule(
        init_value=learning_rate / (warmup + 1),
        peak_value=learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=learning_rate * sch.end_value_ratio,
    )

    def schedule(count):
        return curve(count - offset)

    return optax.chain(
        optax.clip_by_global_norm(opt.max_grad_norm),
        optax.inject_hyperparams(optax.adamw)(learning_rate=schedule, b1=opt.b1, b2=opt.b2,
                                              weight_decay=opt.weight_decay),
    )


def make_apply(tx: optax.GradientTransformation):
    """The jitted optimizer step: (trainable, opt_state, grads) -> (new trainable, new opt_state, grad norm).

    Weights and optimizer state are donated: XLA writes the new weights and
    moments into the old buffers instead of holding both: for full
    fine-tuning, 12 bytes a parameter not held twice at the step's peak. The
    gradients are not donated (no output is left for their buffers to
    become). The caller must not read the arrays it passed in afterwards; a
    model sharing them is refreshed with nnx.update.
    """

    def apply(trainable, opt_state, grads):
        norm = optax.global_norm(grads)
        updates, new_state = tx.update(grads, opt_state, trainable)
        new = optax.apply_updates(trainable, updates)
        # A non-finite gradient never reaches the weights or the moments: the
        # step is refused (the loop counts it; train.loop.refused).
        ok = jnp.isfinite(norm)
        keep = lambda fresh, old: jnp.where(ok, fresh, old)  # noqa: E731
        return jax.tree.map(keep, new, trainable), jax.tree.map(keep, new_state, opt_state), norm

    return jax.jit(apply, donate_argnums=(0, 1))


def warmup_steps(sch: ScheduleConfig, total: int) -> int:
    """Warmup steps: the schedule's count, or its ratio of the run's steps."""
    return sch.warmup_steps if sch.warmup_steps else int(round(sch.warmup_ratio * total))


def current_lr(opt_state) -> float:
    return float(opt_state[1].hyperparams["learning_rate"])
