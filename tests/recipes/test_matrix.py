"""Every recipe on every tier we document it with, end to end through the job entry points.

Each cell: the recipe and tier files as shipped plus a shrinking override
(matrix.ALLOWED), the model swapped for its family's stand-in, on as many
host devices as the tier's mesh has, in the tier's dtype. Single-host tiers
run `jobs.pipeline` (every stage in one process, as `make demo` does);
multi-host tiers run data-prep on "CPU" and each training stage as `hosts`
processes joined by jax.distributed on localhost, then the eval shards and
the report (single-host pods, as on every tier) in one `jobs.pipeline`
process. All cells share one SHOWWORK_CACHE, so compiled programs are
reused across cells.
"""

from __future__ import annotations

import json
import random
import time

import pytest
import yaml

import self_teach_check
import standins
from recipes import matrix
from showwork import config, stages

CELLS = matrix.cells()
# Two layers (Gemma 2: one local, one global; Gemma 3: two local): every recipe's path runs at a third
# of the compile time of the six-layer stand-ins; tests/model/test_families.py covers the full patterns.
LAYERS = 2


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Stand-in weights of every family, staged-style data files, one cache for every cell."""
    root = tmp_path_factory.mktemp("matrix")
    cache = root / "cache"
    models = {name: str(standins.write(name, root / "models", layers=LAYERS, width=standins.NARROW))
              for name in standins.STAND_INS}
    return {"root": root, "cache": cache, "models": models, "data": write_data(root / "data")}


def write_data(directory):
    """GSM8K-layout train/test files (with calculator annotations and `####`), glaive-layout traces and
    MBPP-layout code problems."""
    directory.mkdir(parents=True)
    rng = random.Random(0)

    def gsm(n):
        for _ in range(n):
            a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
            total = (a + b) * c
            yield {"question": f"Sam has {a} red and {b} blue marbles and buys {c} times as many. How many now?",
                   "answer": f"He has {a}+{b}=<<{a}+{b}={a + b}>>{a + b}. Then {a + b}*{c}=<<{a + b}*{c}={total}>>"
                             f"{total}.\n#### {total}"}

    def glaive(n):
        for q in gsm(n):
            steps, _, final = q["answer"].partition("####")
            yield {"prompt": q["question"], "response": f"<think>{steps.strip()}</think> {final.strip()}"}

    def mbpp(first, n):  # MBPP's layout: a task, a reference solution, assert lines
        for k in range(first, first + n):
            yield {"task_id": k, "text": f"Write a function times_{k}(x) that multiplies x by {k + 2}.",
                   "code": f"def times_{k}(x):\n    return x * {k + 2}",
                   "test_list": [f"assert times_{k}({j}) == {j * (k + 2)}" for j in (1, 3, 7)], "test_setup_code": ""}

    files = {}
    for name, rows in (("gsm8k-train", gsm(40)), ("gsm8k-test", gsm(20)), ("glaive", glaive(60)),
                       ("code-train", mbpp(0, 20)), ("code-test", mbpp(100, 20))):
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[name] = str(path)
    # What a first glaive run leaves for its continuation (data.start_after): its data/stats.json.
    from showwork.config import DataConfig
    from showwork.task import data

    train, _, stats = data.build_splits(DataConfig(source="glaive", path=files["glaive"], order="source",
                                                   train_size=16, eval_size=1))
    first_run = directory / "first-run" / "data"
    first_run.mkdir(parents=True)
    (first_run / "stats.json").write_text(json.dumps(stats))
    (first_run / "train.jsonl").write_text("".join(json.dumps(data.formatted(r, "")) + "\n" for r in train))
    return {"gsm8k": {"path": files["gsm8k-train"], "eval_path": files["gsm8k-test"]},
            "glaive": {"path": files["glaive"]},
            "code": {"path": files["code-train"], "eval_path": files["code-test"]},
            "continuation": {"start_after": str(first_run / "stats.json")}}


def test_the_matrix_holds_every_recipe_and_every_documented_pairing():
    recipes = {p.stem for p in matrix.RECIPES.glob("*.yaml")}
    assert {c.recipe for c in CELLS} == recipes  # a recipe no README row or overlay names is a doc bug
    assert matrix.overlay_cells() <= set(CELLS)
    assert matrix.Cell("hybrid", "v5e-16") in CELLS and matrix.Cell("efficiency", "v5e-4") in CELLS
    assert all(c.tier_file.is_file() and c.recipe_file.is_file() for c in CELLS)


def test_readme_cells_read_every_backticked_recipe_and_tier():
    readme = ("## Recipes\n\n| recipe | reproduces | model | tier | expected |\n| --- | --- | --- | --- | --- |\n"
              "| `a`, `b` | x | y | `cpu`, `v5e-8` | z |\n| `c` | x | y | `v5e-4` (spot) | z |\n\n## Next\n| `d` |")
    assert matrix.readme_cells(readme) == {matrix.Cell(r, t) for r in "ab" for t in ("cpu", "v5e-8")} | {
        matrix.Cell("c", "v5e-4")}


@pytest.mark.parametrize("keys", [
    {"tier": {"dtype": "float32"}}, {"tier": {"mesh": {"shape": [1, 1]}}}, {"model": {"lora": {"rank": 4}}},
    {"grpo": {"rewards": {"answer": 1.0}}}, {"grpo": {"sessions": 1}}, {"eval": {"methods": ["greedy"]}},
    {"model": {"lora": None}}, {"sft": {"optimizer": {"learning_rate": 1.0}}},
])
def test_the_override_may_not_change_what_the_recipe_is(keys):
    with pytest.raises(ValueError, match="may not set"):
        matrix.check_override(keys)


def _load(path):
    return yaml.safe_load(path.read_text())


@pytest.mark.slow  # trains and evaluates: tens of seconds to minutes a cell
@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_cell_runs_end_to_end_in_its_tier(cell, shared, tmp_path):
    recipe, tier = _load(cell.recipe_file), _load(cell.tier_file)["tier"]
    name = recipe["model"]["name"]
    doc = matrix.override(recipe, tier, shared["models"][name], shared["data"])
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump(doc))
    configs = [cell.recipe_file, cell.tier_file, override]
    cfg = config.load(*configs)
    if cfg.self_teach is not None:  # self-teaching keeps only correct samples: a random model has none
        doc["model"]["path"] = str(competent_standin(cfg, tmp_path / "competent"))
        override.write_text(yaml.safe_dump(doc))
        cfg = config.load(*configs)
    shipped = config.load(cell.recipe_file, cell.tier_file)
    assert (cfg.tier.dtype, cfg.tier.mesh, cfg.model.lora, cfg.data.sources()) == (
        shipped.tier.dtype, shipped.tier.mesh, shipped.model.lora, shipped.data.sources())
    root = tmp_path / "runs"
    if cfg.tier.hosts == 1:
        done = matrix.job("jobs.pipeline", configs, root, matrix.devices(cfg.tier.mesh.shape), shared["cache"])
        assert done.returncode == 0, done.stderr[-4000:]
    else:
        run_as_pods(cfg, configs, root, shared["cache"])
    check_report(cfg, root / cfg.recipe)


def competent_standin(cfg, directory):
    """The family's stand-in, fully fine-tuned until it writes the cell's own first training solutions
    (the rows self-teaching samples), so the stage has correct samples to keep, as a trained model would."""
    from showwork import log
    from showwork.bus import Bus
    from showwork.config import OptimizerConfig, ScheduleConfig, SftConfig
    from showwork.task import data
    from showwork.train import sft

    build, _ = standins.STAND_INS[cfg.model.name]
    loaded = build(0, layers=LAYERS, width=standins.NARROW)
    train, _, _ = data.build_splits(cfg.data)
    rows = [data.formatted(r, cfg.prompt.system) for r in train[:cfg.self_teach.questions]]
    settings = SftConfig(max_steps=60, max_seq_len=512, checkpoint_every=10**6, schedule=ScheduleConfig(),
                         optimizer=OptimizerConfig(learning_rate=1e-2, weight_decay=0.0))
    sft.train(Bus(str(directory / "bus")), loaded, rows, settings, len(rows), "memorise", "-", log.get("matrix"))
    return standins.write(cfg.model.name, directory, loaded=loaded)


def run_as_pods(cfg, configs, root, cache):
    """A multi-host tier's data and training stages as its JobSet runs them: data-prep on one CPU, each
    training stage as `hosts` processes of mesh/hosts devices joined by jax.distributed. Its eval shards
    are single-host pods like every other tier's, run here by one `jobs.pipeline --from eval` process
    (one simulated host of `hosts` processes: the pipeline joins a jax.distributed runtime of one)."""
    hosts, per_host = cfg.tier.hosts, matrix.devices(cfg.tier.mesh.shape) // cfg.tier.hosts
    for stage in stages.plan(cfg):
        began = time.perf_counter()
        if stage.name == "data":
            results = [matrix.job("jobs.prepare_data", configs, root, 1, cache)]
        elif stage.name in ("eval", "report"):
            break
        else:
            module = {"sft": "jobs.sft", "self-teach": "jobs.self_teach", "grpo": "jobs.grpo_session"}[stage.name]
            flags = ("--session", str(stage.args[0])) if stage.name == "grpo" else ()
            results = matrix.hosts_job(module, configs, root, hosts, per_host, cache, *flags)
        for done in results:
            assert done.returncode == 0, f"{stage.label}: {done.stderr[-4000:]}"
        print(f"{stage.label}: {time.perf_counter() - began:.1f} s")
    done = matrix.job("jobs.pipeline", configs, root, matrix.devices(cfg.tier.mesh.shape), cache, "--from", "eval",
                      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{matrix.free_port()}", JAX_NUM_PROCESSES="1",
                      JAX_PROCESS_ID="0")
    assert done.returncode == 0, done.stderr[-4000:]


def check_report(cfg, run):
    """The report exists and every accuracy in metrics.json is recomputed from the shard records; a
    GRPO recipe's report shows the completions its first and last step logged."""
    assert (run / "report" / "report.html").is_file()
    if cfg.grpo is not None and cfg.grpo.log_completions and cfg.grpo.num_completions_to_print:
        logged = [json.loads(line) for path in sorted((run / "grpo").glob("s-*/samples.jsonl")) for line in path.open()]
        assert logged and all(len(r["completions"]) == cfg.grpo.num_generations for r in logged)
        shown = (run / "report" / "report.md").read_text()
        assert "## GRPO completions" in shown and logged[0]["prompt"][:40].replace("\n", " ⏎ ") in shown
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    if cfg.self_teach is not None:
        self_teach_check.check_run(run, cfg.self_teach.rounds, cfg.self_teach.targeted_per_kind)
        assert metrics["self_teach"] == json.loads((run / "self-teach" / "analysis.json").read_text())
        assert "## Self-teaching: error analysis per round" in (run / "report" / "report.md").read_text()
    eval_rows = sum(1 for _ in (run / "data" / "eval.jsonl").open())
    assert eval_rows > 0
    for model in cfg.eval.models:
        records = [json.loads(line) for path in sorted((run / "eval" / model).glob("shard-*.jsonl"))
                   for line in path.open()]
        assert sorted(r["id"] for r in records) == sorted({r["id"] for r in records}) and len(records) == eval_rows
        if "loss" in cfg.eval.methods:  # loss per target token, from each record's summed NLL and tokens
            kept = [r["methods"]["loss"] for r in records if not r["methods"]["loss"].get("dropped")]
            assert kept and metrics["held_out_loss"][model]["loss"] == pytest.approx(
                sum(x["nll"] for x in kept) / sum(x["tokens"] for x in kept), abs=1e-5)
        for method in (m for m in cfg.eval.methods if m != "loss"):
            got = metrics["models"][model][method]
            correct = sum(bool(r["methods"][method]["correct"]) for r in records)
            assert (got["questions"], got["correct"]) == (eval_rows, correct), (model, method)
            assert got["accuracy"] == pytest.approx(correct / eval_rows)
            check_sources(cfg, metrics, records, model, method)
        if model != "base":  # trained models went through export and reload
            exported = json.loads((run / stages.eval_model_key(cfg, model) / "config.json").read_text())
            assert exported["model_type"] in ("gemma3_text", "gemma2")


def check_sources(cfg, metrics, records, model, method):
    """A mixed recipe's report splits accuracy by source, recomputed here; code rows were scored by
    running their code against their tests (every sample carries the sandbox's verdict)."""
    sources = cfg.data.sources()
    if len(sources) == 1:
        assert "by_source" not in metrics
        return
    per = metrics["by_source"][model][method]
    assert set(per) == {r["source"] for r in records} == set(sources)
    for source, got in per.items():
        mine = [r for r in records if r["source"] == source]
        assert (got["questions"], got["correct"]) == (len(mine), sum(r["methods"][method]["correct"] for r in mine))
    for r in records:
        samples = r["methods"][method]["samples"]
        assert all(("status" in s) == (r["source"] == "code") for s in samples)

