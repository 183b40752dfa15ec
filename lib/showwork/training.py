"""What SFT and GRPO share: trainable state, the optimizer, completion log-probs,
checkpoints on the bus, preemption, metrics, and the merged export.

We run our own small step loop rather than tunix's PeftTrainer/GRPOLearner
loops. Those loops reset the data-shuffle RNG on resume (google/tunix#2288)
and skip unconsumed data with several iterations (google/tunix#2290); here
the data order and every random key are pure functions of (seed, step), and
a checkpoint holds the trainable parameters, the optimizer state and the
step, so a resumed run is bit-for-bit the uninterrupted one. The maths
(advantages, KL, loss aggregation) comes from tunix's `algo_core`/`common`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from showwork.bus import Bus
from showwork.models import PAD_ID, host_array
from showwork.logprobs import token_logps
from showwork.sampling import final_hidden

# ---------------------------------------------------------------- state


def trainable_filter(model: nnx.Module):
    """LoRA params when the model has adapters, else every param (full fine-tuning)."""
    has_lora = any(True for _ in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
    return nnx.LoRAParam if has_lora else nnx.Param


def split(model: nnx.Module):
    """(graphdef, trainable, frozen) for a functional train step."""
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(model), ...)
    return graphdef, trainable, frozen


def optimizer(learning_rate: float, b1: float, b2: float, weight_decay: float, max_grad_norm: float,
              total_steps: int, warmup_steps: int, end_value_ratio: float) -> optax.GradientTransformation:
    """AdamW on a linear-warmup, cosine-to-a-floor schedule, after global-norm clipping."""
    warmup = min(warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else learning_rate,
        peak_value=learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=learning_rate * end_value_ratio,
    )
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.inject_hyperparams(optax.adamw)(learning_rate=schedule, b1=b1, b2=b2, weight_decay=weight_decay),
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
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, optax.global_norm(grads)

    return jax.jit(apply, donate_argnums=(0, 1))


def warmup_steps(steps: int, ratio: float, total: int) -> int:
    return steps if steps else int(round(ratio * total))


def current_lr(opt_state) -> float:
    return float(opt_state[1].hyperparams["learning_rate"])


# ---------------------------------------------------------------- batches and log-probs

# Rows of the output projection alive at once in completion_logps: 256 rows
# of Gemma's 262k-token vocabulary are 268 MB of float32 logits, large enough
# that each chunk's matmul still runs at full speed.
LOGPS_CHUNK = 256


def bucket_len(n: int, size: int) -> int:
    return max(size, -(-n // size) * size)


def capped_bucket(n: int, size: int, cap: int) -> int:
    """bucket_len(n, size), but never past `cap` (the longest length the run has): data cut to a
    maximum length is all that length, and the next bucket up would pad every row of it."""
    if n > cap:
        raise ValueError(f"length {n} is over the cap {cap}")
    return min(bucket_len(n, size), cap)


def pack(prompts: list[list[int]], completions: list[list[int]], prompt_bucket: int = 32,
         completion_bucket: int = 32, prompt_len: int | None = None,
         completion_len: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pad prompts to P, right-pad completions to C.

    P and C are bucketed (multiples of the bucket sizes) to limit
    recompiles, or fixed by `prompt_len` / `completion_len` (GRPO, where
    the rollout limits are known) to compile once.
    Returns (prompt [B, P], completion [B, C], completion_mask [B, C]).
    """
    plen = prompt_len or bucket_len(max(len(p) for p in prompts), prompt_bucket)
    clen = completion_len or bucket_len(max(max(len(c) for c in completions), 1), completion_bucket)
    if max(len(p) for p in prompts) > plen or max(len(c) for c in completions) > clen:
        raise ValueError(f"sequence longer than the fixed pack length ({plen}, {clen})")
    prompt = np.full((len(prompts), plen), PAD_ID, np.int32)
    completion = np.full((len(prompts), clen), PAD_ID, np.int32)
    mask = np.zeros((len(prompts), clen), np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        prompt[i, plen - len(p):] = p
        completion[i, :len(c)] = c
        mask[i, :len(c)] = 1.0
    return prompt, completion, mask


def completion_logps(graphdef, states: tuple, prompt, completion, completion_mask, temperature: float = 1.0,
                     chunk: int = LOGPS_CHUNK):
    """Per-token log-probs [B, C] of `completion` given left-padded `prompt`.

    Logits are computed only for the C positions that predict completion
    tokens (the output projection is most of the model's FLOPs), `chunk`
    rows at a time (see logprobs.py: the full [B, C, V] logits never exist).
    """
    tokens = jnp.concatenate([prompt, completion], axis=1)
    valid = jnp.concatenate([prompt != PAD_ID, completion_mask > 0], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    n = tokens.shape[1]
    causal = jnp.tril(jnp.ones((n, n), jnp.bool_))[None]
    attn = causal & valid[:, None, :]
    plen, clen = prompt.shape[1], completion.shape[1]
    hidden, _ = final_hidden(graphdef, _merged(states), tokens, positions, None, attn)
    model = nnx.merge(graphdef, *states)
    rows = hidden[:, plen - 1:plen + clen - 1]
    b, c, d = rows.shape
    logps = token_logps(rows.reshape(b * c, d), model.embedder.input_embedding.value, completion.reshape(-1),
                        getattr(model.config, "final_logit_softcap", None), temperature, chunk)
    return logps.reshape(b, c)


def _merged(states: tuple):
    return nnx.merge_state(*states) if len(states) > 1 else states[0]


# ---------------------------------------------------------------- checkpoints


class DamagedCheckpoint(ValueError):
    """A committed checkpoint whose files are missing, cut or unreadable."""


COMMIT = "COMMIT.json"


class Checkpoints:
    """Checkpoints of (trainable params, optimizer state) + JSON metadata, on the bus.

    A step is written by orbax into a local staging directory, its files are
    copied to `<prefix>/<step>/` on the bus, and a commit record
    `<prefix>/<step>/COMMIT.json` (every file with its size, and the
    metadata) is created last. Only committed steps exist for readers, so a
    checkpoint cut short by a kill is never restored, and a restore checks
    every file's size before orbax reads it.

    Why not orbax straight onto gs://: orbax finalizes a GCS checkpoint from a
    background thread through gcsfs, outside our retry policy, and against
    fake-gcs-server that finalize never returned. Going through the bus gives
    checkpoints the same bounded retries, the same errors and the same
    fault-injection tests as every other file.

    The arrays are stored as a flat, numbered list: their tree structure is
    rebuilt from the live model and optimizer, which are constructed the same
    way on every run, and restore checks count and shapes. They are gathered
    to host memory first (every host, so multi-host slices work): the state we
    train, LoRA or full fine-tuning of a sub-billion model, fits there.
    Process 0 writes; every process reads.
    """

    def __init__(self, bus: Bus, prefix: str, keep: int, every: int):
        import orbax.checkpoint as ocp

        self.bus, self.prefix = bus, prefix.strip("/")
        self.keep, self.every = max(1, keep), max(1, every)
        self.staging = Path(tempfile.mkdtemp(prefix="showwork-ckpt-"))
        me = jax.process_index()
        # Each process checkpoints on its own into local disk: no cross-host barriers.
        self.checkpointer = ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}))

    @property
    def uri(self) -> str:
        return self.bus.uri(self.prefix)

    def steps(self) -> list[int]:
        """Committed steps, oldest first."""
        steps = []
        for key in self.bus.list(self.prefix):
            head, _, name = key[len(self.prefix) + 1:].partition("/")
            if name == COMMIT and head.isdigit():
                steps.append(int(head))
        return sorted(steps)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def due(self, step: int) -> bool:
        """Whether `save(step, ...)` will write a checkpoint."""
        return step % self.every == 0

    def save(self, step: int, tree, meta: dict, force: bool = False) -> bool:
        if not force and not self.due(step):
            return False
        commit_key = f"{self.prefix}/{step}/{COMMIT}"
        if self.bus.exists(commit_key):
            return True
        leaves = [host_array(x) for x in jax.tree.leaves(tree)]  # a collective: every process
        if jax.process_index() != 0:
            return True
        local = self.staging / str(step)
        shutil.rmtree(local, ignore_errors=True)
        self.checkpointer.save(local, {f"{i:05d}": x for i, x in enumerate(leaves)})
        self.checkpointer.wait_until_finished()
        # Files of an earlier, uncommitted attempt at this step would be
        # harmless (never listed in a commit) but would pile up.
        for key in self.bus.list(f"{self.prefix}/{step}"):
            self.bus.delete(key)
        files = {}
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = path.relative_to(local).as_posix()
            self.bus.put_file(f"{self.prefix}/{step}/{rel}", path)
            files[rel] = path.stat().st_size
        shutil.rmtree(local, ignore_errors=True)
        shapes = [[list(x.shape), str(x.dtype)] for x in leaves]
        self.bus.create(commit_key, json.dumps({"step": step, "meta": meta, "files": files, "arrays": shapes},
                                               sort_keys=True).encode())
        for old in self.steps()[:-self.keep]:
            self.delete(old)
        return True

    def delete(self, step: int) -> None:
        """Uncommit first, so a kill halfway leaves only ignored files."""
        self.bus.delete(f"{self.prefix}/{step}/{COMMIT}")
        for key in self.bus.list(f"{self.prefix}/{step}"):
            self.bus.delete(key)

    def restore(self, step: int, like):
        """(tree shaped and placed like `like`, meta) from checkpoint `step`.

        Raises DamagedCheckpoint when the files do not match the commit
        record or orbax cannot read them; a BusError (the bucket, not the
        checkpoint, is failing) passes through.
        """
        where = f"{self.uri}/{step}"
        raw = self.bus.read_bytes(f"{self.prefix}/{step}/{COMMIT}")  # a BusError passes through
        try:
            commit = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DamagedCheckpoint(f"{where}: {COMMIT} is not valid JSON ({err})") from None
        leaves, treedef = jax.tree.flatten(like)
        wanted = [[list(np.shape(x)), str(x.dtype)] for x in leaves]
        if commit.get("arrays") != wanted:
            # Not damage: another model or optimizer wrote it. Refuse, keep it.
            raise ValueError(f"{where} holds arrays {_summary(commit.get('arrays'))}, this model and optimizer "
                             f"need {_summary(wanted)}: was it written by another config?")
        local = self.staging / f"restore-{step}"
        shutil.rmtree(local, ignore_errors=True)
        try:
            for rel, size in commit["files"].items():
                try:
                    self.bus.get_file(f"{self.prefix}/{step}/{rel}", local / rel)
                except FileNotFoundError:
                    raise DamagedCheckpoint(f"{where}: {rel} is missing") from None
                if (local / rel).stat().st_size != size:
                    raise DamagedCheckpoint(f"{where}: {rel} has {(local / rel).stat().st_size} bytes, "
                                            f"its commit record says {size}")
            target = {f"{i:05d}": np.empty(np.shape(x), x.dtype) for i, x in enumerate(leaves)}
            try:
                arrays = self.checkpointer.restore(local, target)
            except Exception as err:  # orbax and tensorstore raise many kinds for bad files
                raise DamagedCheckpoint(f"{where}: {type(err).__name__}: {err}"[:600]) from None
        finally:
            shutil.rmtree(local, ignore_errors=True)
        new = [_placed(np.asarray(arrays[f"{i:05d}"], dtype=x.dtype), x) for i, x in enumerate(leaves)]
        return jax.tree.unflatten(treedef, new), dict(commit["meta"])

    def restore_newest(self, like, log, at_least: int = 0):
        """(tree, meta, step) from the newest readable checkpoint >= `at_least`, or None.

        A checkpoint whose files were damaged after it was committed (cut,
        deleted, overwritten) is reported, removed so the replayed step can
        save it again, and the one before it is used. Replaying from an older
        step gives the same weights: data order and sampling keys are pure
        functions of the step.
        """
        for step in reversed(self.steps()):
            if step < at_least:
                break
            try:
                tree, meta = self.restore(step, like)
            except DamagedCheckpoint as err:
                log.warning("checkpoint unreadable; removing it and using an older one", step=step,
                            directory=self.uri, error=str(err)[:400])
                if jax.process_index() == 0:
                    self.delete(step)
                continue
            return tree, meta, step
        return None

    def close(self):
        self.checkpointer.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def _summary(arrays) -> str:
    if not isinstance(arrays, list):
        return "(not recorded)"
    return f"{len(arrays)} arrays, {sum(int(np.prod(shape)) for shape, _ in arrays)} values"


def _placed(host: np.ndarray, like):
    """`host` on the devices and sharding of `like` (each process supplies its own shards)."""
    sharding = getattr(like, "sharding", None)
    if sharding is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


# ---------------------------------------------------------------- preemption


class Preempted(Exception):
    """Raised after a checkpoint was saved because SIGTERM arrived."""


class PreemptionGuard:
    """Turns SIGTERM into a flag the step loop checks between steps.

    GKE sends SIGTERM and waits terminationGracePeriodSeconds before SIGKILL;
    the loop saves a checkpoint at the next step boundary and the job exits 0.
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


# ---------------------------------------------------------------- metrics


class Metrics:
    """Per-step scalars: TensorBoard events under `<prefix>/tensorboard` and a JSONL
    copy at `jsonl_key`, both on the bus.

    Event files are written locally (tensorboardX cannot write gs:// without
    TensorFlow) and copied to the bus on `flush`. A resumed run keeps the
    JSONL rows up to the step it resumes from, so the log has every step once.
    """

    def __init__(self, bus: Bus, prefix: str, jsonl_key: str, resume_step: int = 0):
        from tensorboardX import SummaryWriter

        self.bus, self.prefix, self.jsonl_key = bus, prefix, jsonl_key
        self.local = Path(tempfile.mkdtemp(prefix="showwork-tb-"))
        # A unique suffix: a resumed run started within the same second must not
        # overwrite the first run's event file on the bus.
        self.writer = SummaryWriter(str(self.local), filename_suffix=f".{uuid.uuid4().hex[:8]}")
        self.rows: list[dict] = []
        if resume_step and bus.exists(jsonl_key):
            self.rows = [r for r in bus.read_jsonl(jsonl_key) if r["step"] <= resume_step]

    def log(self, step: int, **scalars):
        for name, value in scalars.items():
            self.writer.add_scalar(name, float(value), step)
        self.rows.append({"step": step, **{k: float(v) for k, v in scalars.items()}})

    def flush(self):
        self.writer.flush()
        for path in self.local.rglob("*"):
            if path.is_file():
                self.bus.write_bytes(f"{self.prefix}/tensorboard/{path.relative_to(self.local).as_posix()}",
                                     path.read_bytes())
        self.bus.write_jsonl(self.jsonl_key, self.rows)

    def close(self):
        self.flush()
        self.writer.close()


@dataclass
class StepTimer:
    start: float = 0.0

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


# ---------------------------------------------------------------- export


def _lora_folds(model: nnx.Module) -> list[tuple[str, nnx.Module, str, jax.Array]]:
    """(module path, module, weight name, W + A·B·alpha/rank) for each LoRA-adapted weight.

    qwix stores `<w>_lora_a` / `<w>_lora_b` next to each adapted weight; for
    einsum weights it also records the einsum it used, from which we read
    how A and B contract back to the weight's layout.

    QLoRA: the frozen base is held quantised (a qwix QArray) and the adapters
    were trained against that quantised base, so they are folded into
    dequantise(Q(W)), the weight the trained model actually computed with,
    not into the original W (whose difference the adapters never saw).
    """
    import qwix
    from qwix._src.providers.ptq import WithAux  # qwix exports no public name for its weight wrapper

    folds = []
    for path, module in nnx.iter_modules(model):
        for name in list(vars(module)):
            if not name.endswith("_lora_a") or getattr(module, name) is None:
                continue
            base = name[: -len("_lora_a")]
            a = getattr(module, name).value
            b = getattr(module, base + "_lora_b").value
            weight = getattr(module, base)
            einsum_str = getattr(module, base + "_lora_einsum_str", None)
            if isinstance(weight, WithAux):
                current = qwix.dequantize(weight.array) if isinstance(weight.array, qwix.QArray) else weight.array
            else:
                current = weight.value
            if einsum_str:
                inputs = einsum_str.split("->")[0].split(",")
                rhs = module.einsum_str.split("->")[0].split(",")[1]
                delta = jnp.einsum(f"{inputs[1]},{inputs[2]}->{rhs}", a, b)
            else:
                delta = (a @ b).reshape(current.shape)
            folds.append((path, module, base, current + (_lora_scale(module, base) * delta).astype(current.dtype)))
    return folds


def merged_params(model: nnx.Module) -> nnx.Module:
    """Fold LoRA adapters into the base weights in place (W += A·B·alpha/rank), for export."""
    from qwix._src.providers.ptq import WithAux

    for _, module, base, merged in _lora_folds(model):
        weight = getattr(module, base)
        if isinstance(weight, WithAux):  # QLoRA: the export holds the plain folded weight
            setattr(module, base, nnx.Param(merged))
        else:
            weight.value = merged
        setattr(module, base + "_lora_a", None)
        setattr(module, base + "_lora_b", None)
    return model


def fold_into(base: nnx.Module, adapted: nnx.Module) -> nnx.Module:
    """`base`, the model `add_lora` wrapped, with `adapted`'s current adapters folded into its weights.

    For sampling: one matmul per weight instead of the adapter's two extra
    skinny ones per projection per decoded token (measured: GRPO's rollout
    of 8 × 128 tokens took 27 s through the adapters, 19 s on the plain
    model). `base` keeps the arrays of the weights that have no adapter
    (the embedding, norms), shared with `adapted`, so the cost is one copy
    of the adapted weights.
    """
    modules = dict(nnx.iter_modules(base))
    for path, _, name, merged in _lora_folds(adapted):
        if path not in modules or not isinstance(getattr(modules[path], name, None), nnx.Param):
            raise ValueError(f"fold_into: the base model has no weight {name!r} at {path}; "
                             "pass the model that add_lora was given")
        getattr(modules[path], name).value = merged
    return base


def _lora_scale(module, base: str) -> float:
    scale = getattr(module, f"_showwork_{base}_lora_scale", None)
    if scale is None:
        raise ValueError("LoRA scale unknown: apply adapters with training.add_lora so export can merge them")
    return scale


def add_lora(model: nnx.Module, rank: int, alpha: float, targets: str, quantize: str | None = None, seed: int = 0):
    """models.apply_lora, recording alpha/rank on each adapted module for the merge."""
    from showwork import models

    remat = getattr(getattr(model, "config", None), "remat_config", None)
    if remat is not None and remat.name != "NONE":
        raise ValueError("LoRA on a model loaded with remat=True: qwix creates the adapters while the model runs, "
                         "which nnx.remat's trace does not allow (remat works with full fine-tuning)")
    model = models.apply_lora(model, rank=rank, alpha=alpha, targets=targets, quantize=quantize, seed=seed)
    for _, module in model.iter_modules():
        for name in list(vars(module)):
            if name.endswith("_lora_a"):
                setattr(module, f"_showwork_{name[:-len('_lora_a')]}_lora_scale", alpha / rank)
    return model


def export(bus: Bus, key_prefix: str, loaded) -> list[str]:
    """Write the model (LoRA merged) as a Hugging Face directory on the bus."""
    from showwork import models

    with tempfile.TemporaryDirectory(prefix="showwork-export-") as tmp:
        models.export_hf(loaded, Path(tmp))
        keys = []
        for path in sorted(Path(tmp).iterdir()):
            key = f"{key_prefix}/{path.name}"
            bus.write_bytes(key, path.read_bytes())
            keys.append(key)
    return keys


def local_model_dir(bus: Bus, key_prefix: str) -> str:
    """A local directory holding the exported model at `key_prefix` (downloaded from GCS if needed)."""
    if not bus.root.startswith("gs://"):
        return bus.uri(key_prefix)
    from showwork.models import cache_dir

    import hashlib

    stamp = bus.read_bytes(f"{key_prefix}/config.json") + bus.uri(key_prefix).encode()
    target = cache_dir() / "bus" / hashlib.sha256(stamp).hexdigest()[:16]
    if not (target / "model.safetensors").exists():
        tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
        for key in bus.list(key_prefix):
            (tmp / Path(key).name).write_bytes(bus.read_bytes(key))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    return str(target)


def start_model(bus: Bus, cfg, seed: int = 0):
    """The model a post-SFT stage starts from: the SFT export when the recipe has SFT, else the base model."""
    from showwork import models

    mesh = models.tier_mesh(cfg.tier.mesh)
    if cfg.sft is not None:
        return models.load_dir(local_model_dir(bus, "sft/model"), cfg.tier.dtype, mesh=mesh, remat=cfg.tier.remat)
    return models.load(cfg.model.name, cfg.model.path, cfg.tier.dtype, seed=seed, mesh=mesh, remat=cfg.tier.remat)


def stop_for_preemption(ckpt: "Checkpoints", metrics: "Metrics", step: int, tree, meta: dict, saved: bool):
    """SIGTERM arrived: make sure `step` is checkpointed, flush metrics, raise Preempted."""
    if not saved:
        ckpt.save(step, tree, meta, force=True)
    metrics.close()
    ckpt.close()
    raise Preempted(f"SIGTERM: saved step {step}")
