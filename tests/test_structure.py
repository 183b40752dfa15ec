"""The shape of the code, checked by reading it (no model, no training).

This file proves that:

- nothing under lib/showwork imports `jobs` (the library never reaches back
  into the container wrappers);
- lib/showwork's units (each subpackage, each top-level module) import each
  other without a cycle, counting imports inside functions too (the cycle
  finder itself is tested on a planted cycle);
- no function in lib/showwork or jobs/ is longer than 60 lines;
- every field of every config dataclass reachable from `Config` is read
  somewhere, so the recipe files hold no option that does nothing;
- every shipped recipe x tier keeps the stage digests it had before the
  package redesign (tests/golden/stage_digests.json), so a resumed run is
  not refused; the one deliberate change, the eval digest covering the
  `self_teach` section, is tested on its own.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import types
import typing
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import RECIPES, REPO, TIERS
from showwork import config, stages

LIB = REPO / "lib" / "showwork"
JOBS = REPO / "jobs"
GOLDEN = REPO / "tests" / "golden" / "stage_digests.json"
TIER_NAMES = ("cpu", "v5e-4", "v5e-8", "v5e-16")
MAX_FUNCTION_LINES = 60


# ---------------------------------------------------------------- reading code


def python_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


def module_name(path: Path) -> str:
    """showwork.model.loader for lib/showwork/model/loader.py; showwork.model for its __init__."""
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    """Whether a dotted name is a module or package of this repo (showwork.x under lib/, jobs.x at the root)."""
    for root in (LIB.parent, REPO):
        base = root.joinpath(*dotted.split("."))
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return True
    return False


def imported_modules(path: Path):
    """(dotted module name, node) for every import in the file, at any depth.

    `from a.b import c` names a.b.c when c is a module of this repo, else
    a.b (c is a name defined there). Relative imports are made absolute.
    """
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if is_module(sub) else base), node


# ---------------------------------------------------------------- 1. jobs


def test_no_module_under_lib_imports_jobs():
    offenders = [
        f"{where(path, node)}: imports {name}"
        for path in python_files(LIB)
        for name, node in imported_modules(path)
        if name == "jobs" or name.startswith("jobs.")
    ]
    assert not offenders, "lib/showwork must not import jobs/:\n" + "\n".join(offenders)


# ---------------------------------------------------------------- 2. cycles


def units() -> set[str]:
    """Each subpackage and each top-level module of showwork; `__init__` is the package itself."""
    packages = {p.name for p in LIB.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in LIB.glob("*.py")}
    return packages | modules


def unit_of(dotted: str, known: set[str]) -> str | None:
    """The unit a showwork module name belongs to; None outside showwork.

    A name that is no unit (`from showwork import VERSION`) is the package's
    own __init__.
    """
    parts = dotted.split(".")
    if parts[0] != "showwork":
        return None
    if len(parts) == 1 or parts[1] not in known:
        return "__init__"
    return parts[1]


def unit_of_file(path: Path) -> str:
    rel = path.relative_to(LIB)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def import_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    """unit -> units it imports, and one file:line per edge."""
    known = units()
    graph: dict[str, set[str]] = {u: set() for u in known}
    evidence: dict[tuple[str, str], str] = {}
    for path in python_files(LIB):
        source = unit_of_file(path)
        for name, node in imported_modules(path):
            target = unit_of(name, known)
            if target is None or target == source:
                continue
            graph[source].add(target)
            evidence.setdefault((source, target), where(path, node))
    return graph, evidence


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as [a, b, ..., a], or None; depth-first search with three colours."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = defaultdict(int)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour[nxt] == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == WHITE:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = BLACK
        return None

    for start in sorted(graph):
        if colour[start] == WHITE:
            found = visit(start)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert find_cycle(acyclic) is None
    planted = {**acyclic, "c": {"d"}}  # a -> c -> d -> a
    cycle = find_cycle(planted)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert all(b in planted[a] for a, b in zip(cycle, cycle[1:]))
    assert find_cycle({"x": {"x"}}) == ["x", "x"]


def test_the_import_graph_sees_imports_inside_functions_and_all_import_forms():
    """The graph is only as good as its parsing: check it on what the library is known to do."""
    graph, evidence = import_graph()
    assert {"task", "model", "sample", "train", "eval", "config", "stages", "pipeline"} <= set(graph)
    assert "stages" in graph["pipeline"] and "eval" in graph["pipeline"]  # from showwork.eval import ...
    assert "stages" in graph["train"]  # from showwork import stages
    assert "task" in graph["config"]  # from showwork.task.rewards import REWARDS


def test_packages_import_each_other_without_cycles():
    graph, evidence = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        lines = [f"  {a} -> {b}  ({evidence[a, b]})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle " + " -> ".join(cycle) + ":\n" + "\n".join(lines))


# ---------------------------------------------------------------- 3. length


def long_functions(root: Path) -> list[str]:
    return [
        f"{where(path, node)} {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for path in python_files(root)
        for node in ast.walk(parse(path))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


@pytest.mark.parametrize("root", [LIB, JOBS], ids=["lib", "jobs"])
def test_no_function_in_lib_is_over_60_lines(root):
    offenders = long_functions(root)
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines (def line to last line):\n" + "\n".join(offenders)


# ---------------------------------------------------------------- 4. config fields


def dataclasses_in(tp) -> list[type]:
    """The dataclasses a field type names, through Optional, unions, tuples and dicts."""
    if dataclasses.is_dataclass(tp):
        return [tp]
    if typing.get_origin(tp) in (typing.Union, types.UnionType, tuple, dict, list, typing.Literal):
        if typing.get_origin(tp) is typing.Literal:
            return []
        return [dc for arg in typing.get_args(tp) for dc in dataclasses_in(arg)]
    return []


def config_classes(root: type = config.Config) -> list[type]:
    """Every dataclass reachable from Config, Config first."""
    seen: list[type] = []
    todo = [root]
    while todo:
        cls = todo.pop(0)
        if cls in seen:
            continue
        seen.append(cls)
        for tp in typing.get_type_hints(cls).values():
            todo.extend(dataclasses_in(tp))
    return seen


READING_METHODS_IN_CONFIG = ("problems", "mesh_for_eval", "session_steps", "total_steps", "by_job")


def attribute_reads(tree: ast.AST) -> set[str]:
    """Attribute names read in a tree: `x.name` and getattr(x, "name")."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            names.add(node.args[1].value)
    return names


def reads_outside_config(roots) -> set[str]:
    return {name for root in roots for path in python_files(root)
            if path != LIB / "config.py" for name in attribute_reads(parse(path))}


def reads_inside_config() -> set[str]:
    """What config.py's own methods read: its checks (`problems`) and the quantities it derives
    for the jobs (`mesh_for_eval`, `session_steps`, `total_steps`, `by_job`)."""
    return {name for node in ast.walk(parse(LIB / "config.py"))
            if isinstance(node, ast.FunctionDef) and node.name in READING_METHODS_IN_CONFIG
            for name in attribute_reads(node)}


def test_the_config_walk_reaches_nested_sections():
    classes = config_classes()
    for cls in (config.LoraConfig, config.OptimizerConfig, config.RolloutConfig, config.MeshConfig,
                config.SelfTeachConfig, config.EvalConfig):
        assert cls in classes


def test_every_config_field_is_read_by_some_module():
    lib_reads = reads_outside_config([LIB]) | reads_inside_config()
    anywhere = lib_reads | reads_outside_config([JOBS])
    unread = []
    for cls in config_classes():
        for f in dataclasses.fields(cls):
            readers = anywhere if cls is config.Config and f.name in ("sources", "description") else lib_reads
            if f.name not in readers:
                unread.append(f"{cls.__name__}.{f.name}")
    assert not unread, ("config fields no module reads (an option that does nothing: read it, or drop it "
                        "from config.py and the recipes):\n" + "\n".join(unread))


# ---------------------------------------------------------------- 5. digests


def golden() -> dict[str, dict[str, str]]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def tier_file(tier: str) -> Path:
    return TIERS / tier / "tier.yaml"


def load(entry: str) -> config.Config:
    recipe, tier = entry.split(" ")
    return config.load(RECIPES / f"{recipe}.yaml", tier_file(tier))


def loadable_combinations() -> list[str]:
    out = []
    for recipe in sorted(RECIPES.glob("*.yaml")):
        for tier in TIER_NAMES:
            try:
                config.load(recipe, tier_file(tier))
            except config.ConfigError:
                continue
            out.append(f"{recipe.stem} {tier}")
    return out


@pytest.mark.parametrize("entry", sorted(golden()))
def test_stage_digests_of_every_shipped_recipe_are_unchanged(entry):
    cfg = load(entry)
    expected = golden()[entry]
    plan = stages.plan(cfg)
    assert {s.key for s in plan} == set(expected), f"{entry}: plan() gives other stages than the golden file"
    changed = [
        f"{s.key}: {stages.digest(cfg, s)} (golden {expected[s.key]})"
        for s in plan
        # The eval digest now covers self_teach (a fix): only those shards may differ.
        if not (s.name == "eval" and cfg.self_teach is not None)
        and stages.digest(cfg, s) != expected[s.key]
    ]
    assert not changed, f"{entry}: stage digests changed; existing runs would be refused:\n" + "\n".join(changed)


def test_every_loadable_recipe_and_tier_is_in_the_golden_file():
    missing = sorted(set(loadable_combinations()) - set(golden()))
    assert not missing, (
        f"recipe x tier combinations missing from {GOLDEN.relative_to(REPO)}: {missing}. A new recipe's "
        "digests are added deliberately: add an entry '<recipe> <tier>' mapping each stage key of "
        "stages.plan(cfg) to stages.digest(cfg, stage)")


def test_the_eval_digest_covers_the_self_teach_section():
    cfg = load("self-teach cpu")
    assert cfg.self_teach is not None
    shard = next(s for s in stages.plan(cfg) if s.name == "eval")
    changed = dataclasses.replace(
        cfg, self_teach=dataclasses.replace(cfg.self_teach, questions=cfg.self_teach.questions + 1))
    assert stages.digest(cfg, shard) != stages.digest(changed, shard)
