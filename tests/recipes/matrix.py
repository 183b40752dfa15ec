"""The recipe x tier matrix: which cells exist, how each is shrunk, how each runs.

Cells come from what we tell users: the README's Recipes table (a recipe
row names its tiers) and every overlay (`SHOWWORK_RECIPE` plus its tier
component). A recipe or overlay added later joins the matrix by itself.

A cell runs the recipe and tier files as shipped plus one override file
that may change only the model's name and path, data paths and sizes, and
batch sizes (`ALLOWED`); never dtype, mesh, LoRA or quantisation, rewards,
sessions or methods. The model becomes its family's stand-in
(tests/standins.py), on a simulated device mesh of the tier's shape (host
devices), in the tier's dtype.
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "k8s" / "base" / "recipes"
TIERS = REPO / "k8s" / "components"
OVERLAYS = REPO / "k8s" / "overlays"

# Key paths a cell's override may set. Everything else in it is refused.
ALLOWED = {
    ("model", "name"), ("model", "path"),
    ("data", "path"), ("data", "eval_path"), ("data", "train_size"), ("data", "eval_size"), ("data", "offset"),
    ("data", "start_after"),
    # The same mixed sources in the same order, with generated files and small sizes (override checks).
    ("data", "mix"),
    ("data", "max_solution_chars"),
    ("sft", "max_steps"), ("sft", "max_seq_len"), ("sft", "batch_size"), ("sft", "gradient_accumulation"),
    ("grpo", "prompts_per_session"), ("grpo", "steps_per_session"), ("grpo", "batch_size"),
    ("grpo", "rollout", "max_prompt_length"), ("grpo", "rollout", "max_tokens_to_generate"),
    # Scaled with max_tokens_to_generate: the same share of the shrunken budget (DAPO's overlong shaping).
    ("grpo", "overlong_buffer_length"),
    ("self_teach", "questions"), ("self_teach", "max_tokens"),
    ("self_teach", "sft", "max_steps"), ("self_teach", "sft", "max_seq_len"), ("self_teach", "sft", "batch_size"),
    ("eval", "max_tokens"), ("eval", "samples"),
    ("tier", "train_batch"), ("tier", "eval_batch"),
    # Two shards still split, merge and check the set; the tier's own count is the manifests' (test_k8s).
    ("tier", "eval_shards"),
}


@dataclass(frozen=True, order=True)
class Cell:
    recipe: str
    tier: str

    @property
    def id(self) -> str:
        return f"{self.recipe}@{self.tier}"

    @property
    def recipe_file(self) -> Path:
        return RECIPES / f"{self.recipe}.yaml"

    @property
    def tier_file(self) -> Path:
        return TIERS / self.tier / "tier.yaml"


def readme_cells(readme: str) -> set[Cell]:
    """(recipe, tier) pairs of the README's Recipes table: backticked names in its first and tier columns."""
    section = readme.split("## Recipes", 1)[1].split("\n## ", 1)[0]
    lines = []
    for line in section.lstrip("\n").splitlines():  # the section's first table, up to its first other line
        if not line.startswith("|"):
            if lines:
                break
            continue
        lines.append(line)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    tier_col = header.index("tier")
    cells = set()
    for line in lines[2:]:
        cols = [c.strip() for c in line.strip("|").split("|")]
        recipes = re.findall(r"`([^`]+)`", cols[0])
        tiers = re.findall(r"`([^`]+)`", cols[tier_col])
        cells |= {Cell(r, t) for r in recipes for t in tiers}
    return cells


def overlay_cells(overlays: Path = OVERLAYS) -> set[Cell]:
    """(recipe, tier) of every overlay: its SHOWWORK_RECIPE literal and the tier component it includes."""
    cells = set()
    for kfile in sorted(overlays.glob("*/kustomization.yaml")):
        doc = yaml.safe_load(kfile.read_text())
        literals = [lit for gen in doc.get("configMapGenerator", []) for lit in gen.get("literals", [])]
        recipe = [lit.split("=", 1)[1] for lit in literals if lit.startswith("SHOWWORK_RECIPE=")]
        tiers = [Path(c).name for c in doc.get("components", []) if (TIERS / Path(c).name / "tier.yaml").is_file()]
        if len(recipe) != 1 or len(tiers) != 1:
            raise ValueError(f"{kfile}: expected one SHOWWORK_RECIPE and one tier component, got {recipe} {tiers}")
        cells.add(Cell(recipe[0], tiers[0]))
    return cells


def cells() -> list[Cell]:
    return sorted(readme_cells((REPO / "README.md").read_text()) | overlay_cells())


def check_override(doc: dict, prefix: tuple = ()) -> None:
    """Refuse any key path of an override outside ALLOWED (a cell must run the recipe as shipped)."""
    for key, value in doc.items():
        path = prefix + (key,)
        if isinstance(value, dict) and path not in ALLOWED:
            check_override(value, path)
        elif path not in ALLOWED:
            raise ValueError(f"the matrix override may not set {'.'.join(path)}")


def override(recipe: dict, tier: dict, model_path: str, data_files: dict[str, dict]) -> dict:
    """The smallest run of `recipe` on `tier` that still goes through every stage it names."""
    data = recipe["data"]
    shards = min(tier.get("eval_shards", 1), 2)
    # The smallest batches the mesh divides: one sequence per data-parallel replica; for GRPO the
    # fewest prompts whose completions split evenly.
    replicas = tier.get("mesh", {}).get("shape", [1])[0]
    generations = recipe.get("grpo", {}).get("num_generations", 4)
    out: dict = {"model": {"path": model_path},
                 "data": {"train_size": min(data.get("train_size", 1000), max(8, 2 * replicas)),
                          "eval_size": min(data.get("eval_size", 100), shards),
                          # Short worked solutions: every SFT batch in one 128-token completion bucket,
                          # so two steps compile once.
                          "max_solution_chars": min(data.get("max_solution_chars", 8000), 200)},
                 "tier": {"train_batch": replicas, "eval_batch": 4, "eval_shards": min(shards, 2)},
                 "eval": {"max_tokens": 8, "samples": 2}}
    if data.get("offset"):
        out["data"]["offset"] = out["data"]["train_size"]  # still "skip the first run's rows"
    if data.get("start_after"):  # a continuation: of a first run on the generated corpus
        out["data"]["start_after"] = data_files["continuation"]["start_after"]
    if data["source"] in data_files:
        out["data"].update(data_files[data["source"]])
    if data.get("mix"):
        out["data"]["mix"] = [{**m, **data_files.get(m["source"], {}), "train_size": min(m.get("train_size", 0), 4),
                               "eval_size": min(m.get("eval_size", 0), 1)} for m in data["mix"]]
    if "sft" in recipe:
        out["sft"] = {"max_steps": 2, "max_seq_len": 384, "batch_size": replicas}
        if recipe["sft"].get("gradient_accumulation", 1) > 1:  # still several passes per update, fewer of them
            out["sft"]["gradient_accumulation"] = 2
    if "grpo" in recipe:
        prompts = replicas // math.gcd(replicas, generations)
        out["grpo"] = {"prompts_per_session": prompts, "steps_per_session": 1, "batch_size": prompts,
                       "rollout": {"max_tokens_to_generate": 8}}
        buffer = recipe["grpo"].get("overlong_buffer_length")
        if buffer:
            budget = recipe["grpo"].get("rollout", {}).get("max_tokens_to_generate", 256)
            out["grpo"]["overlong_buffer_length"] = max(1, round(buffer * 8 / budget))
    if "self_teach" in recipe:
        out["self_teach"] = {"questions": 2, "max_tokens": 160, "sft": {"max_steps": 2, "max_seq_len": 384,
                                                                      "batch_size": replicas}}
    check_override(out)
    return out


def devices(shape) -> int:
    return math.prod(shape)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(device_count: int, cache: Path, **extra) -> dict:
    from conftest import simulated_chips

    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO / "lib"), str(REPO), out.get("PYTHONPATH", "")])
    out["XLA_FLAGS"] = simulated_chips(device_count)
    out["SHOWWORK_CACHE"] = str(cache)
    out["JAX_PLATFORMS"] = "cpu"
    out.update(extra)
    return out


def job(module: str, configs: list[Path], root: Path, device_count: int, cache: Path, *flags: str,
        timeout: int = 900, **extra) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", module, *map(str, configs), "--root", str(root), *flags]
    return subprocess.run(args, cwd=REPO, env=env(device_count, cache, **extra), capture_output=True, text=True,
                          timeout=timeout)


def hosts_job(module: str, configs: list[Path], root: Path, hosts: int, devices_per_host: int, cache: Path,
              *flags: str, timeout: int = 900) -> list[subprocess.CompletedProcess]:
    """`module` as `hosts` processes joined by jax.distributed on localhost: one per simulated TPU host."""
    port = free_port()
    procs = []
    for pid in range(hosts):
        args = [sys.executable, "-m", module, *map(str, configs), "--root", str(root), *flags]
        procs.append(subprocess.Popen(
            args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env(devices_per_host, cache, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    JAX_NUM_PROCESSES=str(hosts), JAX_PROCESS_ID=str(pid))))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results
