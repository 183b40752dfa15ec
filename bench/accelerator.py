"""The TPU plan, and the same work measured on whatever JAX accelerator this machine has.

For each recipe on each TPU tier it documents (tests/recipes/matrix.py: the
README's table and the overlays), its work per step in four kinds:
  sft      a gradient step and update of one micro-batch, every token real
           (batch x max_seq_len, as packed rows are), loss on 7/8 of it
  rollout  GRPO's sampling: batch prompts x G completions of
           max_tokens_to_generate new tokens after max_prompt_length prompt
           tokens, none stopping early (the upper bound)
  update   GRPO's reference log-probs, loss gradient and update on them
  eval     greedy generation for one eval batch (256-token prompts, eval.max_tokens)
The plan: model FLOPs (showwork.model.flops) and, for the two decode-bound
kinds, bytes read, turned into seconds on the tier's v5e chips at a stated
efficiency (40% MFU for training, 50% of HBM bandwidth for decoding), beside
the public anchors.

`--measure` runs the product's own step functions (sft.make_step_fns,
grpo.make_step_fns, the sampler's decode loop) for the named cells on ONE
device of this machine: the model family at its real size with random
weights (the time does not depend on their values) in the tier's dtype,
the batch a whole v5e slice takes in one step. Each work: compile seconds
(first call less the median), steady-state seconds over --repeats (min and
median), tokens/s, MFU against the device's peak (and, decoding, the share of
its memory bandwidth the weight and cache reads reach).

    .venv/bin/python bench/accelerator.py                                      # the plan alone
    python bench/accelerator.py --measure sft-full@v5e-8 grpo-baseline@v5e-8 --json out.json
    .venv/bin/python bench/accelerator.py --measure hybrid@v5e-8 --shrink --repeats 1   # CPU smoke

What carries over from a GPU to a v5e: FLOP counts and bytes exactly; the
efficiency (MFU, bandwidth share) of the same XLA program only roughly: the
TPU compiler, its 128x128 systolic arrays and 16 GiB of HBM per chip differ,
and a slice adds the collectives a single device has none of.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "tests"))

# Dense bf16 matrix FLOP/s and HBM bytes/s per chip, as published: TPU v5e (Google Cloud's TPU v5e
# page), H200 and H100 SXM (NVIDIA's datasheets; their 1,979 TFLOP/s is with 2:4 sparsity).
PEAKS = {"TPU v5 lite": (197e12, 819e9), "NVIDIA H200": (989e12, 4.8e12),
         "NVIDIA H100 80GB HBM3": (989e12, 3.35e12)}
V5E = PEAKS["TPU v5 lite"]
PLAN_MFU, PLAN_BANDWIDTH = 0.40, 0.50
# Public anchors for the plan (their sources' numbers, not ours).
ANCHORS = ("MaxText reports Gemma-2B training at about 58% MFU on v5e; JetStream serves Gemma-2B at "
           "about 8,700 decode tokens/s on a v5e-8.")
SAMPLING = ("rollout", "eval")
KINDS = ("sft", "rollout", "update", "eval")


@dataclasses.dataclass(frozen=True)
class Work:
    """One kind of step at one shape: what is measured once and planned per cell."""

    kind: str  # sft | rollout | update | eval
    model: str
    dtype: str
    full: bool  # every weight trains (else LoRA)
    lora: int
    rows: int  # sequences (sft, update) or prompts (rollout, eval)
    group: int  # completions per prompt (rollout); 1 otherwise
    prompt: int
    completion: int  # target or new tokens
    remat: bool = False
    reference: bool = False  # update: a reference forward pass for the KL term
    micro: int = 0  # update: completions per gradient pass (grpo.micro_batch); 0: all in one

    @property
    def tokens(self) -> int:
        """Tokens the step processes (sft, update) or generates (rollout, eval)."""
        if self.kind in SAMPLING:
            return self.rows * self.group * self.completion
        return self.rows * (self.prompt + self.completion)


def works(cfg) -> list[Work]:
    """The work of one step of each kind a recipe's stages run, on its tier."""
    base = dict(model=cfg.model.name, dtype=cfg.tier.dtype, full=cfg.model.lora is None,
                lora=cfg.model.lora.rank if cfg.model.lora else 0)
    out = []
    if cfg.sft is not None:
        seq = cfg.sft.max_seq_len
        out.append(Work("sft", **base, rows=cfg.sft.batch_size or cfg.tier.train_batch, group=1, prompt=seq // 8,
                        completion=seq - seq // 8, remat=cfg.tier.remat))
    if cfg.grpo is not None:
        roll, prompts = cfg.grpo.rollout, cfg.grpo.batch_size or cfg.tier.train_batch
        shape = dict(prompt=roll.max_prompt_length, completion=roll.max_tokens_to_generate)
        out.append(Work("rollout", **base, rows=prompts, group=cfg.grpo.num_generations, **shape))
        n = prompts * cfg.grpo.num_generations
        out.append(Work("update", **base, rows=n, group=1, remat=cfg.tier.remat, reference=bool(cfg.grpo.beta),
                        micro=cfg.grpo.micro_batch if (cfg.grpo.micro_batch or n) < n else 0, **shape))
    # The decode work of sampled methods; a loss-only evaluation (glaive's) samples nothing and is one
    # forward pass over the held-out rows, not planned here.
    if cfg.eval is not None and cfg.eval.models and any(m != "loss" for m in cfg.eval.methods):
        out.append(Work("eval", **{**base, "full": True, "lora": 0}, rows=cfg.tier.eval_batch, group=1, prompt=256,
                        completion=cfg.eval.max_tokens))
    return out


def work_flops(s, w: Work) -> float:
    from showwork.model import flops

    if w.kind in SAMPLING:
        return flops.generation(s, w.rows, w.group, w.prompt, w.completion)
    scored = flops.scoring(s, w.rows, w.prompt, w.completion)
    return flops.training(scored, w.full) + (scored if w.reference else 0.0)


def work_bytes(s, w: Work) -> float:
    from showwork.model import flops

    return flops.generation_bytes(s, w.rows, w.group, w.prompt, w.completion, 2 if w.dtype == "bfloat16" else 4)


def plan_seconds(s, w: Work, chips: int) -> float:
    """Expected seconds of the step on `chips` v5e chips: training at PLAN_MFU, decoding at the slower of
    PLAN_MFU and PLAN_BANDWIDTH of the slice's memory bandwidth."""
    compute = work_flops(s, w) / (chips * V5E[0] * PLAN_MFU)
    if w.kind not in SAMPLING:
        return compute
    return max(compute, work_bytes(s, w) / (chips * V5E[1] * PLAN_BANDWIDTH))


# ---------------------------------------------------------------- models at their real size


def real_config(name: str, dtype: str, remat: bool, shrink: bool):
    """The tunix config of `name`'s family at its published size (or, `shrink`, two narrow layers of it)."""
    import jax.numpy as jnp
    from tunix.models.gemma import model as gemma
    from tunix.models.gemma3 import model as gemma3

    from showwork.model.loaded import with_remat

    if name.startswith("gemma2"):
        config = gemma.ModelConfig.gemma2_2b()
    elif name.startswith("gemma3-1b"):
        config = gemma3.ModelConfig.gemma3_1b_it()
    else:
        config = gemma3.ModelConfig.gemma3_270m()
    if shrink:
        import standins

        config = dataclasses.replace(config, num_layers=2, num_embed=4096, **standins.NARROW, num_kv_heads=1,
                                     sliding_window_size=8)
        if hasattr(config, "attention_types"):
            config = dataclasses.replace(config, attention_types=config.attention_types[:2])
    if "param_dtype" in {f.name for f in dataclasses.fields(config)}:
        config = dataclasses.replace(config, param_dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    return with_remat(config, remat)


def build(w: Work, shrink: bool):
    """A random model of the work's family, size and dtype (LoRA added where the work trains adapters)."""
    import jax
    from flax import nnx

    from showwork.config import LoraConfig
    from showwork.model import lora, tiny
    from showwork.model.loaded import DTYPES

    config = real_config(w.model, w.dtype, w.remat, shrink)
    model = (tiny.random_gemma2 if hasattr(config, "attention_types") else tiny.random_gemma3)(config)
    # tunix's Gemma 2 has no parameter dtype: cast as our loader does for the tier's dtype.
    nnx.update(model, jax.tree.map(lambda x: x.astype(DTYPES[w.dtype]), nnx.state(model, nnx.Param)))
    if not w.full and w.kind not in SAMPLING:
        model = lora.add(model, LoraConfig(w.lora, float(w.lora)))
    return model, config


# ---------------------------------------------------------------- measuring one work


def timed(run, repeats: int) -> dict:
    """Compile seconds (first call less the median) and steady-state seconds of `run` (blocks until done)."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"first_s": first, "compile_s": max(first - median, 0.0), "step_s_min": min(times),
            "step_s_median": median, "repeats": repeats}


def train_step(w: Work, model):
    """(run one step of SFT's or GRPO's own step functions, the gradient program's memory).

    Float32 master weights and the tier's compute dtype, as the jobs train. The gradient program is
    compiled ahead, timed apart (added to compile_s) and its memory analysis read: what one device
    holds for one gradient pass, the whole pass on it."""
    import jax
    import jax.numpy as jnp

    from showwork.config import OptimizerConfig, ScheduleConfig
    from showwork.train import sft, step as step_lib

    graphdef, trainable, frozen = step_lib.split(model)
    trainable, compute = step_lib.master(trainable)
    tx = step_lib.optimizer(OptimizerConfig(1e-6, 0.9, 0.99, 0.0, 1.0), ScheduleConfig(), 1000)
    state, apply = {"weights": trainable, "opt": tx.init(trainable)}, step_lib.make_apply(tx)
    ids = jax.random.randint(jax.random.key(0), (w.rows, w.prompt + w.completion), 10, 4000, jnp.int32)
    batch = (ids[:, :w.prompt], ids[:, w.prompt:], jnp.ones((w.rows, w.completion), jnp.float32))
    if w.kind == "sft":
        grad_fn, _, _ = sft.make_step_fns(graphdef, tx, compute)
        start = time.perf_counter()
        compiled = grad_fn.lower(trainable, frozen, *batch).compile()
        memory = {"grad_compile_s": time.perf_counter() - start, **program_memory(compiled)}

        def grads(weights):
            return compiled(weights, frozen, *batch)[1]
    else:
        grads, memory = update_gradient(w, graphdef, tx, compute, trainable, frozen, batch)

    def run():
        state["weights"], state["opt"], norm = apply(state["weights"], state["opt"], grads(state["weights"]))
        jax.block_until_ready(norm)

    return run, memory


def update_gradient(w: Work, graphdef, tx, compute, trainable, frozen, batch: tuple):
    """(weights -> GRPO's gradient over the work's passes, the pass program's memory): reference log-probs
    and `grpo.gradient` as the step runs them, the pass compiled ahead to read its memory."""
    import jax
    import jax.numpy as jnp

    from showwork.config import GrpoConfig
    from showwork.train import grpo, objective

    logps_fn, grad_fn, _ = grpo.make_step_fns(graphdef, tx, objective.Objective.of(GrpoConfig()), 0.9, compute)
    reference = jax.tree.map(jnp.copy, trainable) if w.reference else None
    adv = jax.random.normal(jax.random.key(1), (w.rows,), jnp.float32)
    passes = grpo.micro_batches(w.rows, w.micro or None)
    first = tuple(x[passes[0]] for x in batch)
    ref = logps_fn(reference, frozen, *first) if reference is not None else None
    totals = objective.counts(batch[2]) if len(passes) > 1 else None
    start = time.perf_counter()
    compiled = grad_fn.lower(trainable, frozen, *first, None, ref, adv[passes[0]], totals).compile()
    memory = {"grad_compile_s": time.perf_counter() - start, **program_memory(compiled), "passes": len(passes)}

    def grads(weights):
        refs = grpo.pass_logps(logps_fn, reference, frozen, batch, passes) if reference is not None else None
        return grpo.gradient(compiled, weights, frozen, batch, None, refs, adv, passes)[2]

    return grads, memory


def program_memory(compiled) -> dict:
    """GiB a compiled program holds on its device: arguments, outputs (less those aliased) and temporaries."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    held = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"program_gib": held / 2**30, "temp_gib": m.temp_size_in_bytes / 2**30}


def sampling_step(w: Work, model):
    """The sampler's whole decode loop (`sampler._generate`), no row stopping early."""
    import jax
    import jax.numpy as jnp

    from showwork.sample import sampler

    ids = jax.random.randint(jax.random.key(0), (w.rows, w.prompt), 10, 4000, jnp.int32)
    valid = jnp.ones(ids.shape, jnp.bool_)
    keys = jax.vmap(jax.random.key)(jnp.arange(w.rows * w.group, dtype=jnp.uint32))
    settings = dict(temperature=jnp.float32(0.9), greedy=False, top_k=50, top_p=None) if w.kind == "rollout" \
        else dict(greedy=True, top_k=None, top_p=None)

    def run():
        out, _, _ = sampler._generate(model, ids, valid, keys, max_new=w.completion, stop_ids=(-1,), **settings)
        jax.block_until_ready(out)

    return run, {}


def measure(w: Work, repeats: int, shrink: bool) -> dict:
    from showwork.model import flops

    start = time.perf_counter()
    model, config = build(w, shrink)
    built = time.perf_counter() - start
    run, memory = (sampling_step if w.kind in SAMPLING else train_step)(w, model)
    got = {"build_s": built, **memory, **timed(run, repeats)}
    if "grad_compile_s" in got:  # compiled ahead: the first call's compile share lacks it
        got["compile_s"] += got["grad_compile_s"]
    s = flops.shape(config)
    got["flops"] = work_flops(s, w)
    got["tokens_per_s"] = w.tokens / got["step_s_min"]
    got["achieved_tflops"] = got["flops"] / got["step_s_min"] / 1e12
    if w.kind in SAMPLING:
        got["bytes"] = work_bytes(s, w)
        got["achieved_gbs"] = got["bytes"] / got["step_s_min"] / 1e9
    return got


def device_peaks() -> tuple[str, tuple[float, float] | None]:
    import jax

    kind = jax.devices()[0].device_kind
    return kind, PEAKS.get(kind)


# ---------------------------------------------------------------- the plan, the run, the tables


def tpu_cells(names: list[str] | None = None):
    """(cell id, config) of every documented recipe@tier on a TPU tier (or of `names`)."""
    from recipes import matrix

    from showwork import config

    cells = [c for c in matrix.cells() if c.tier != "cpu"]
    if names:
        known = {c.id: c for c in matrix.cells()}
        if unknown := [n for n in names if n not in known]:
            raise SystemExit(f"unknown cells {unknown}; documented: {', '.join(sorted(known))}")
        cells = [known[n] for n in names]
    return [(c.id, config.load(c.recipe_file, c.tier_file)) for c in cells]


def plan(cells) -> list[dict]:
    """One row per cell and kind of work: FLOPs, bytes, and the expected seconds on the tier's chips."""
    import math

    from showwork.model import flops

    rows = []
    for cell, cfg in cells:
        chips = math.prod(cfg.tier.mesh.shape)
        for w in works(cfg):
            s = flops.shape(real_config(w.model, w.dtype, False, False))
            seconds = plan_seconds(s, w, chips)
            rows.append({"cell": cell, "chips": chips, "work": dataclasses.asdict(w), "flops": work_flops(s, w),
                         "bytes": work_bytes(s, w) if w.kind in SAMPLING else None,
                         "plan_s": seconds, "plan_tokens_per_s": w.tokens / seconds})
    return rows


def run_measurements(cells, repeats: int, shrink: bool, budget_s: float, out: Path | None,
                     kinds: tuple[str, ...] = KINDS) -> dict:
    """Measure each distinct work of `cells` once (several cells share a work), within `budget_s`."""
    kind, peaks = device_peaks()
    results = {"device": kind, "peaks": peaks, "measured": {}}
    start = time.perf_counter()
    todo: dict[Work, str] = {}
    for cell, cfg in cells:
        for w in works(cfg):
            if w.kind in kinds:
                todo.setdefault(w, cell)
    for w, cell in todo.items():
        # A smoke run measures small batches and sequences, recorded under the work it stands for.
        ran = dataclasses.replace(w, rows=min(w.rows, 2), group=min(w.group, 2), prompt=min(w.prompt, 16),
                                  completion=min(w.completion, 16), micro=1 if w.micro else 0) if shrink else w
        if time.perf_counter() - start > budget_s:
            results.setdefault("skipped", []).append(dataclasses.asdict(w))
            continue
        try:
            got = measure(ran, repeats, shrink)
        except Exception as e:  # out of device memory, say: recorded, and the next work runs
            results["measured"][key(w)] = {"work": dataclasses.asdict(w), "first_cell": cell,
                                           "error": f"{type(e).__name__}: {str(e)[:400]}"}
            print(json.dumps({"failed": key(w), "error": results["measured"][key(w)]["error"]}), flush=True)
            continue
        if peaks:
            got["mfu"] = got["flops"] / got["step_s_min"] / peaks[0]
            if w.kind in SAMPLING:
                got["bandwidth_share"] = got["bytes"] / got["step_s_min"] / peaks[1]
        results["measured"][key(w)] = {"work": dataclasses.asdict(ran), "first_cell": cell, **got}
        print(json.dumps({"measured": key(w), **{k: v for k, v in got.items() if not isinstance(v, dict)}}),
              flush=True)
        if out:
            out.write_text(json.dumps(results, indent=1) + "\n")
    return results


def key(w: Work) -> str:
    return (f"{w.kind}:{w.model}:{w.dtype}:{'full' if w.full else f'lora{w.lora}'}:{w.rows}x{w.group}:"
            f"{w.prompt}+{w.completion}{':remat' if w.remat else ''}{':ref' if w.reference else ''}"
            f"{f':micro{w.micro}' if w.micro else ''}")


def at_measured_efficiency(row: dict, got: dict | None) -> float | None:
    """The plan's seconds on v5e if the slice reached the efficiency this device measured."""
    if not got or "mfu" not in got:
        return None
    compute = row["flops"] / (row["chips"] * V5E[0] * got["mfu"])
    if row["bytes"] is None:
        return compute
    return max(compute, row["bytes"] / (row["chips"] * V5E[1] * got["bandwidth_share"]))


def table(rows: list[dict], results: dict | None) -> str:
    """The plan as markdown, with this device's measurement beside each row that has one."""
    device = results["device"] if results else "-"
    lines = [f"| cell | work | shape | TFLOP | GB read | v5e plan s | plan tok/s | {device} s (min / median) "
             "| MFU | HBM share | compile s | GiB on one device | v5e s at that efficiency |", "|" + "---|" * 13]
    measured = results["measured"] if results else {}
    for row in rows:
        w = Work(**row["work"])
        shape = (f"{w.rows}x{w.group} {w.prompt}+{w.completion}" + ("" if w.full else f" LoRA {w.lora}")
                 + (f", passes of {w.micro}" if w.micro else ""))
        cols = [row["cell"], w.kind, shape, f"{row['flops'] / 1e12:.2f}",
                f"{row['bytes'] / 1e9:.1f}" if row["bytes"] else "",
                f"{row['plan_s']:.3g}", f"{row['plan_tokens_per_s']:,.0f}"]
        lines.append("| " + " | ".join(cols + measured_columns(row, measured.get(key(w)))) + " |")
    return "\n".join(lines)


def measured_columns(row: dict, got: dict | None) -> list[str]:
    if not got:
        return [""] * 6
    if "error" in got:
        return [got["error"][:60]] + [""] * 5
    at = at_measured_efficiency(row, got)
    return [f"{got['step_s_min']:.3g} / {got['step_s_median']:.3g}", _pct(got.get("mfu")),
            _pct(got.get("bandwidth_share")), f"{got['compile_s']:.1f}",
            f"{got['program_gib']:.1f}" if "program_gib" in got else "", f"{at:.3g}" if at else ""]


def merged(runs: list[dict]) -> dict:
    """One device's measurements from several runs; a later run's success replaces an earlier failure."""
    if len({r["device"] for r in runs}) != 1:
        raise SystemExit(f"--results come from different devices: {sorted({r['device'] for r in runs})}")
    out = {"device": runs[0]["device"], "peaks": runs[0]["peaks"], "measured": {}}
    for run in runs:
        for k, got in run["measured"].items():
            if "error" not in got or k not in out["measured"]:
                out["measured"][k] = got
    return out


def _pct(x: float | None) -> str:
    return f"{100 * x:.1f}%" if x is not None else ""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="*", help="recipe@tier cells to plan (default: every documented TPU cell)")
    p.add_argument("--measure", nargs="*", default=[], help="recipe@tier cells to measure on this machine's device")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="measure only these works")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shrink", action="store_true", help="two narrow layers of each family: a smoke run")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="start no new measurement after this")
    p.add_argument("--json", help="write the plan and the measurements here (updated after each measurement)")
    p.add_argument("--results", nargs="*", default=[],
                   help="earlier --json files whose measurements fill the table (no device needed)")
    args = p.parse_args(argv)

    import jax

    out = Path(args.json) if args.json else None
    rows = plan(tpu_cells(args.cells))
    results = None
    if args.measure:
        print(json.dumps({"device": jax.devices()[0].device_kind, "jax": jax.__version__}), flush=True)
        partial = out.with_suffix(".partial.json") if out else None
        results = run_measurements(tpu_cells(args.measure), args.repeats, args.shrink, args.budget_s, partial,
                                   tuple(args.kinds))
    elif args.results:
        results = merged([json.loads(Path(f).read_text())["results"] for f in args.results])
    summary = {"plan": rows, "results": results, "anchors": ANCHORS,
               "assumptions": {"plan_mfu": PLAN_MFU, "plan_bandwidth_share": PLAN_BANDWIDTH, "v5e_peaks": V5E}}
    print(table(rows, results))
    if out:
        out.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
