"""The tier's mesh is used: on 4 (simulated) devices with mesh 2x2, SFT
shards its weights FSDP x TP and reaches the weights a 1-device run reaches;
GRPO and an evaluation shard run on the same mesh."""

import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO, TIERS, job_env, simulated_chips
from showwork.bus import Bus

RECIPE = """recipe: mesh
model: {name: tiny, lora: {rank: 4, alpha: 8}}
data: {source: reasoning-gym, train_size: 16, eval_size: 4, seed: 5}
sft: {batch_size: 4, max_steps: 4, max_seq_len: 1024, checkpoint_every: 2, optimizer: {learning_rate: 1.0e-3}}
grpo:
  batch_size: 2
  num_generations: 2
  prompts_per_session: 4
  steps_per_session: 2
  rollout: {max_prompt_length: 512, max_tokens_to_generate: 6, temperature: 1.0, top_k: 20}
  rewards: {format_approx: 1.0}
eval: {models: [grpo], methods: [greedy], max_tokens: 6}
"""

FOUR = "tier: {name: four, mesh: {shape: [2, 2], axes: [fsdp, tp]}, train_batch: 4, eval_batch: 4}\n"


def run(module, recipe, tier, root, *extra, devices):
    env = job_env(XLA_FLAGS=simulated_chips(devices))
    done = subprocess.run([sys.executable, "-m", module, str(recipe), str(tier), "--root", str(root), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_2x2_mesh_shards_training_and_matches_one_device(tmp_path):
    recipe = tmp_path / "mesh.yaml"
    recipe.write_text(RECIPE)
    four = tmp_path / "four.yaml"
    four.write_text(FOUR)
    cpu = TIERS / "cpu" / "tier.yaml"
    for root, tier, devices in (("one", cpu, 1), ("four", four, 4)):
        run("jobs.prepare_data", recipe, tier, tmp_path / root, devices=devices)
        run("jobs.sft", recipe, tier, tmp_path / root, devices=devices)
    sharded = Bus(str(tmp_path / "four" / "mesh")).read_json("sft/_SUCCESS")["metrics"]["sharded_params"]
    single = Bus(str(tmp_path / "one" / "mesh")).read_json("sft/_SUCCESS")["metrics"]["sharded_params"]
    assert single == 0 and sharded > 10  # embedding, attention and MLP weights split over the mesh
    a = load_file(str(tmp_path / "one" / "mesh" / "sft/model/model.safetensors"))
    b = load_file(str(tmp_path / "four" / "mesh" / "sft/model/model.safetensors"))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)

    run("jobs.grpo_session", recipe, four, tmp_path / "four", devices=4)
    run("jobs.evaluate", recipe, four, tmp_path / "four", "--shards", "1", devices=4)
    records = Bus(str(tmp_path / "four" / "mesh")).read_jsonl("eval/grpo/shard-0-of-1.jsonl")
    assert len(records) == 4 and all(r["methods"]["greedy"]["samples"] for r in records)


def test_each_job_of_a_multi_host_tier_runs_where_its_pods_are_placed(tmp_path):
    """v5e-16 as k8s/components/v5e-16 places it: data-prep and the report on a
    CPU node (one device, no mesh), eval shards as single-host pods (4 chips,
    `tier.eval_mesh`), never joining the 4-host runtime the training jobs join."""
    recipe = tmp_path / "multi.yaml"
    recipe.write_text("recipe: mesh\nmodel: {name: tiny}\ndata: {source: reasoning-gym, train_size: 2, eval_size: 4, seed: 5}\n"
                      "eval: {models: [base], methods: [greedy], max_tokens: 6}\n")
    tier = TIERS / "v5e-16" / "tier.yaml"
    run("jobs.prepare_data", recipe, tier, tmp_path, devices=1)
    for shard in range(2):
        run("jobs.evaluate", recipe, tier, tmp_path, "--shards", "2", "--shard", str(shard), devices=4)
    run("jobs.report", recipe, tier, tmp_path, "--shards", "2", devices=1)
    bus = Bus(str(tmp_path / "mesh"))
    assert bus.read_json("report/metrics.json")["model_order"] == ["base"]


DECODE_ON_A_MESH = """
import re, jax, jax.numpy as jnp, numpy as np
from showwork.model import tiny, meshes
from showwork.sample import sampler
mesh = meshes.make_mesh((4, 1), ("fsdp", "tp"))
ids = jnp.tile(jnp.arange(3, 19, dtype=jnp.int32), (4, 1))
valid = jnp.ones((4, 16), bool)
keys = jax.vmap(jax.random.key)(jnp.arange(4, dtype=jnp.uint32))
args = dict(max_new=8, greedy=True, top_k=None, top_p=None, stop_ids=(-1,))
alone = sampler._generate(tiny.load(dtype="bfloat16").model, ids, valid, keys, **args)[0]
sharded = tiny.load(dtype="bfloat16", mesh=mesh)
assert meshes.sharded_params(sharded.model) > 0
with jax.set_mesh(mesh):
    hlo = sampler._generate.lower(sharded.model, ids, valid, keys, **args).compile().as_text()
    out = sampler._generate(sharded.model, ids, valid, keys, **args)[0]
(body,) = re.findall(r"body=%?([\\w.\\-]+)", hlo)
lines = hlo[hlo.index("%" + body + " ") if ("%" + body + " ") in hlo else hlo.index(body + " "):].split("\\n}")[0]
print("gathers", lines.count(" all-gather("), "reduces", lines.count(" all-reduce("),
      "same", bool((np.asarray(out) == np.asarray(alone)).all()))
"""


def test_decoding_on_an_fsdp_mesh_reads_each_chips_weight_shard_and_gathers_none(tmp_path):
    """The TPU plan (bench/accelerator.py) divides decoding's weight reads by the tier's chips: that holds
    because XLA keeps the FSDP-sharded weights in place inside the decode loop and all-reduces the small
    activations instead of all-gathering every weight every step; the tokens are the 1-device tokens."""
    env = job_env(XLA_FLAGS=simulated_chips(4))
    done = subprocess.run([sys.executable, "-c", DECODE_ON_A_MESH], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    gathers, reduces, same = done.stdout.split()[1::2]
    assert gathers == "0" and int(reduces) > 0 and same == "True", done.stdout


PASSES_ON_A_MESH = """
import jax, jax.numpy as jnp, optax
from showwork.config import LoraConfig, OptimizerConfig, ScheduleConfig
from showwork.model import lora, meshes, tiny
from showwork.sample import forward
from showwork.train import grpo, objective, step as step_lib
mesh = meshes.make_mesh((2, 2), ("fsdp", "tp"))
with jax.set_mesh(mesh):
    loaded = tiny.load(dtype="bfloat16", mesh=mesh)
    loaded.model = lora.add(loaded.model, LoraConfig(4, 8.0, lora.DEFAULT_TARGETS))
    graphdef, trainable, frozen = step_lib.split(loaded.model)
    trainable, compute = step_lib.master(trainable)
    reference = trainable
    trainable = jax.tree.map(lambda x: x + 0.01, trainable)
    tx = step_lib.optimizer(OptimizerConfig(1e-3), ScheduleConfig(), 4)
    obj = objective.Objective(0.08, 0.2, 0.2, "grpo", "sequence-mean-token-mean", 8)
    logps_fn, grad_fn, _ = grpo.make_step_fns(graphdef, tx, obj, 1.0, compute)
    batch = forward.pack([[5, 6, 7], [8, 9], [5, 6], [7], [9, 9, 9], [4, 5], [6], [7, 8]],
                         [[10, 11, 12, 13], [14, 15], [16], [17, 18, 19], [20, 21], [22], [23, 24, 25], [26]])
    adv = jnp.array([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1.5, -1.5])
    got = {}
    for size in (None, 2):
        passes = grpo.micro_batches(8, size)
        ref = grpo.pass_logps(logps_fn, reference, frozen, batch, passes)
        loss, aux, grads = grpo.gradient(grad_fn, trainable, frozen, batch, None, ref, adv, passes)
        got[size] = (float(loss), float(aux["kl"]), float(optax.global_norm(grads)), len(passes))
print(meshes.sharded_params(loaded.model), *got[None], *got[2])
"""


def test_a_grpo_update_in_micro_batches_on_a_bfloat16_mesh_is_the_one_pass_update():
    """v5e's dtype on a 2x2 mesh (4 simulated chips), LoRA as the recipes train it: 8 completions in four
    passes of 2 (one per data-parallel replica) give the loss, KL and gradient norm of one pass over all
    8, to bfloat16 rounding, with a reference (beta > 0) and uneven completion lengths."""
    env = job_env(XLA_FLAGS=simulated_chips(4))
    done = subprocess.run([sys.executable, "-c", PASSES_ON_A_MESH], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded, *values = (float(x) for x in done.stdout.split())
    whole, passes = values[:4], values[4:]
    assert sharded > 0 and (whole[3], passes[3]) == (1, 4)
    assert whole[1] > 0 and whole[2] > 0
    for got, want in zip(passes[:3], whole[:3]):
        assert got == pytest.approx(want, rel=2e-2)


ADAPTERS_ON_A_MESH = """
import jax, numpy as np, qwix
from flax import nnx
from showwork import xla_cache
from showwork.model import lora, meshes, tiny
xla_cache.enable()
mesh = meshes.make_mesh((2, 2), ("fsdp", "tp"))
for quantize in (None, "int8"):
    kwargs = {"weight_qtype": quantize, "tile_size": None} if quantize else {}
    provider = qwix.LoraProvider(module_path=lora.DEFAULT_TARGETS, rank=3, alpha=6.0, **kwargs)
    model = tiny.load(dtype="bfloat16", mesh=mesh).model
    before = xla_cache.counts().requested  # before qwix's eager pass compiles the same operations
    ours = lora.apply(model, rank=3, alpha=6.0, quantize=quantize, seed=7)
    programs = xla_cache.counts().requested - before
    eager = qwix.apply_lora_to_model(tiny.load(dtype="bfloat16", mesh=mesh).model, provider, rngs=nnx.Rngs(7),
                                     **lora._example_inputs(None))
    want = dict(nnx.to_flat_state(nnx.state(eager, nnx.LoRAParam)))
    got = dict(nnx.to_flat_state(nnx.state(ours, nnx.LoRAParam)))
    assert want.keys() == got.keys() and len(got) > 8, (len(want), len(got))
    drawn = lora.draw_a({p: (v.get_value().shape, v.get_value().dtype) for p, v in got.items()
                         if str(p[-1]).endswith("_lora_a")}, 7)
    assert len(drawn) == len(got) // 2
    for path in want:
        a, b = want[path].get_value(), got[path].get_value()
        assert (a.shape, a.dtype) == (b.shape, b.dtype), path
        assert b.sharding.is_equivalent_to(a.sharding, a.ndim) and b.sharding.spec == a.sharding.spec, (path, a.sharding, b.sharding)
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if path in drawn:  # A: the host draw, within the bound of qwix's He-uniform draw
            np.testing.assert_array_equal(b, np.asarray(drawn[path], np.float32), err_msg=str(path))
            bound = np.sqrt(6.0 / np.prod(a.shape[:-1]))
            assert np.abs(a).max() <= bound * 1.01 and np.abs(b).max() <= bound * 1.01, path
            assert np.abs(b).max() > bound * 0.5 and not np.array_equal(a, b), path
        else:  # B: zeros, as qwix creates them
            np.testing.assert_array_equal(a, b, err_msg=str(path))
            assert not b.any(), path
    print(quantize, programs, len(got))
"""


def test_adapters_are_created_in_one_program_as_qwix_creates_them_and_placed_as_annotated():
    """lora.apply runs qwix's adapter-creating forward pass compiled (qwix runs it op by op: one XLA program
    per operation) and draws each A on the host. On a 2x2 mesh, plain LoRA and QLoRA: the adapters qwix's
    eager pass creates, with the same shapes, dtypes and sharding specs (their annotation), so a train step
    sees one layout before and after an update; B zero as qwix makes it; A the host draw, within qwix's
    He-uniform bound; and adding them asks XLA for at most a dozen programs (the pass, its inputs, the
    seed), where qwix's eager pass asked for 141 (rank 3: shapes no other call compiled)."""
    env = job_env(XLA_FLAGS=simulated_chips(4))
    done = subprocess.run([sys.executable, "-c", ADAPTERS_ON_A_MESH], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for line in done.stdout.split("\n")[:2]:
        quantize, programs, adapters = line.split()
        assert int(programs) <= 12, line
