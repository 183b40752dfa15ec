"""Recipes hold the values of the systems they reproduce (showwork.systems), or say why not."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import RECIPES, REPO, TIERS
from showwork import config, systems
from showwork.config import Difference

REPRODUCING = {"grpo-baseline": "grpo-baseline", "efficiency": "efficiency", "sft-full": "full-sft",
               "trajectory": "trajectory", "hybrid": "hybrid", "relay-consensus": "relay",
               "glaive-sft": "glaive", "glaive-sft-continue": "glaive-continue", "math-code": "math-code",
               "self-teach": "dsa-cast"}


def load(recipe: str, tier: str = "cpu") -> config.Config:
    return config.load(RECIPES / f"{recipe}.yaml", TIERS / tier / "tier.yaml")


@pytest.mark.parametrize("recipe", sorted(REPRODUCING))
def test_each_reproducing_recipe_names_its_system_and_matches_it_or_says_why(recipe):
    cfg = load(recipe)
    assert cfg.reference == REPRODUCING[recipe]
    assert systems.drift(cfg) == []


def test_only_the_reproducing_recipes_name_a_system():
    named = {path.stem for path in RECIPES.glob("*.yaml") if load(path.stem).reference is not None}
    assert named == set(REPRODUCING)


def _with(cfg, section: str, **changes):
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


def test_a_value_changed_without_an_entry_is_caught():
    cfg = load("grpo-baseline")
    optimizer = dataclasses.replace(cfg.grpo.optimizer, b2=0.999)
    drifted = _with(cfg, "grpo", optimizer=optimizer)
    assert systems.drift(drifted) == [
        "grpo.optimizer.b2: ours 0.999, the system's 0.99, and no `differences` entry says why"]
    # With an entry that states both values and a reason, the difference is documented, not drift.
    documented = dataclasses.replace(drifted, differences=(Difference("grpo.optimizer.b2", 0.99, 0.999, "a test"),))
    assert systems.drift(documented) == []


@pytest.mark.parametrize("entry, says", [
    (Difference("grpo.beta", 0.08, 0.08, "no reason"), "listed as a difference but ours equals"),
    (Difference("grpo.optimizer.b2", 0.99, 0.95, "stale"), "the entry says system 0.99 / ours 0.95"),
    (Difference("grpo.optimizer.b2", 0.9, 0.999, "wrong system value"), "the entry says system 0.9"),
    (Difference("grpo.optimizer.b2", 0.99, 0.999, "  "), "or the reason is empty"),
    (Difference("sft.epochs", 3, 1, "not a value of this system"), "states no value here"),
])
def test_a_wrong_or_stale_difference_is_caught(entry, says):
    cfg = load("grpo-baseline")
    cfg = _with(cfg, "grpo", optimizer=dataclasses.replace(cfg.grpo.optimizer, b2=0.999))
    problems = systems.drift(dataclasses.replace(cfg, differences=(entry,)))
    assert any(says in p for p in problems), problems


def test_derived_quantities_are_the_steps_the_jobs_run():
    """grpo.steps and grpo.session_steps are the steps train/grpo.py runs (GrpoConfig.session_steps:
    session 0 has nothing to replay); sft.steps is SftConfig.total_steps over all epochs."""
    relay = load("relay-consensus", "v5e-8")
    assert systems.value(relay, "grpo.session_steps") == [32, 63, 63]  # 500/16, then (500 + 500)/16
    assert relay.grpo.session_steps(16) == [32, 63, 63]
    assert systems.value(load("grpo-baseline"), "grpo.steps") == 3738
    full = load("sft-full", "v5e-8")
    assert systems.value(full, "sft.effective_batch") == 64
    assert systems.value(full, "sft.steps") == full.sft.total_steps(7473, 16) == 1168
    assert systems.value(load("hybrid"), "grpo.epochs") == 2.0


def test_an_unknown_system_is_refused_with_the_known_names(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text((RECIPES / "trajectory.yaml").read_text().replace("reference: trajectory", "reference: trajectry"))
    with pytest.raises(config.ConfigError, match="reference: unknown system 'trajectry'; known: dsa-cast, efficiency"):
        config.load(recipe, TIERS / "v5e-4" / "tier.yaml")


def test_the_systems_are_left_out_of_stage_digests():
    from showwork import stages

    cfg = load("hybrid")
    bare = dataclasses.replace(cfg, reference=None, differences=())
    assert [stages.digest(cfg, s) for s in stages.plan(cfg)] == [stages.digest(bare, s) for s in stages.plan(bare)]


def test_the_readme_tables_are_generated_from_the_recipes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("systems_readme", REPO / "scripts" / "systems_readme.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(systems.START, 1)[1].split(systems.END, 1)[0]
    assert section == "\n" + systems.markdown(script.shipped()), "run: python scripts/systems_readme.py README.md"
    assert "| `sft.steps` | 1170 | 1168 | the system counts 117 steps per epoch" in section
