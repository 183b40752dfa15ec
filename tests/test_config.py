"""config.py: strict loading of recipe + tier files, with errors naming key and file."""

import dataclasses
from pathlib import Path

import pytest

from conftest import RECIPES, TIERS
from showwork import config, stages

CPU = TIERS / "cpu" / "tier.yaml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = "recipe: r\nmodel: {name: tiny}\ndata: {source: reasoning-gym}\n"


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_shipped_recipe_loads_with_the_cpu_tier(recipe):
    cfg = config.load(RECIPES / recipe, CPU)
    assert cfg.recipe == Path(recipe).stem
    assert cfg.tier.name == "cpu"
    assert dataclasses.is_dataclass(cfg) and cfg.description


def test_hybrid_recipe_values():
    cfg = config.load(RECIPES / "hybrid.yaml", CPU)
    assert cfg.model.lora.rank == 64  # the system's (showwork.systems)
    assert cfg.sft.optimizer.learning_rate == 2e-5
    assert cfg.sft.schedule.warmup_steps == 50
    assert cfg.grpo.rewards == {"hybrid": 1.0}
    assert cfg.eval.models == ("base", "sft", "grpo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.name = "x"


def test_later_files_override_earlier_key_by_key(tmp_path):
    recipe = write(tmp_path, "r.yaml", MINIMAL + "tier: {name: a, eval_batch: 4, train_batch: 3}\n")
    tier = write(tmp_path, "t.yaml", "tier: {name: b, eval_batch: 16}\n")
    cfg = config.load(recipe, tier)
    assert (cfg.tier.name, cfg.tier.eval_batch, cfg.tier.train_batch) == ("b", 16, 3)
    assert cfg.sources == (str(recipe), str(tier))


@pytest.mark.parametrize("extra, key, words", [
    ("data: {source: reasoning-gym, sorce: x}\n", "data.sorce", "unknown key"),
    ("sft: {epochs: many}\n", "sft.epochs", "expected an integer"),
    ("sft: {epochs: true}\n", "sft.epochs", "expected an integer"),
    ("sft: {optimizer: {learning_rate: fast}}\n", "sft.optimizer.learning_rate", "expected a number"),
    ("model: {name: gpt-5}\n", "model.name", "must be one of"),
    ("model: {name: tiny, lora: {rank: 8}}\n", "model.lora.alpha", "missing required key"),
    ("model: {name: tiny, lora: {rank: 0, alpha: 1}}\n", "model.lora.rank", "must be positive"),
    ("grpo: {num_generations: 1}\n", "grpo.num_generations", "at least 2"),
    ("grpo: {rewards: [answer]}\n", "grpo.rewards", "expected a mapping"),
    ("eval: {methods: greedy}\n", "eval.methods", "expected a list"),
    ("eval: {methods: [greedy, beam]}\n", "eval.methods.1", "must be one of"),
    ("tier: {name: t, eval_shards: 0}\n", "tier.eval_shards", "must be positive"),
    ("tier: {name: t, mesh: {shape: [2, 2], axes: [fsdp]}}\n", "tier.mesh.shape", "axes names"),
    ("bogus: 1\n", "bogus", "unknown key"),
])
def test_bad_values_name_key_and_file(tmp_path, extra, key, words):
    tier = write(tmp_path, "tier.yaml", "tier: {name: t}\n")
    bad = write(tmp_path, "bad.yaml", extra)
    recipe = write(tmp_path, "recipe.yaml", MINIMAL)
    with pytest.raises(config.ConfigError) as err:
        config.load(recipe, tier, bad)
    message = str(err.value)
    assert f": {key}: " in message and words in message
    assert str(bad) in message  # the file that set the bad key


def test_missing_required_section_names_key(tmp_path):
    recipe = write(tmp_path, "r.yaml", "recipe: r\nmodel: {name: tiny}\n")
    with pytest.raises(config.ConfigError, match=r"data: missing required key"):
        config.load(recipe, CPU)


@pytest.mark.parametrize("text, words", [("- a\n- b\n", "top level must be a mapping"), ("a: [\n", "not valid YAML")])
def test_malformed_files(tmp_path, text, words):
    with pytest.raises(config.ConfigError, match=words):
        config.load(write(tmp_path, "x.yaml", text))


def test_missing_file():
    with pytest.raises(config.ConfigError, match="not found"):
        config.load("no/such/recipe.yaml")


def test_digest_is_stable_and_sensitive():
    cfg = config.load(RECIPES / "hybrid.yaml", CPU)
    same = config.load(RECIPES / "hybrid.yaml", CPU)
    assert stages.hash_sections(data=cfg.data) == stages.hash_sections(data=same.data)
    changed = dataclasses.replace(cfg.data, seed=cfg.data.seed + 1)
    assert stages.hash_sections(data=cfg.data) != stages.hash_sections(data=changed)


def test_a_field_added_later_leaves_digests_alone_until_set():
    """model.export_dtype came after runs existed: at its default the digest is the one it had."""
    cfg = config.load(RECIPES / "hybrid.yaml", CPU)
    pre_field = {f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(cfg.model) if f.name != "export_dtype"}
    assert stages.as_data(cfg.model) == stages.as_data(pre_field)
    tier_export = dataclasses.replace(cfg.model, export_dtype="tier")
    assert stages.as_data(tier_export)["export_dtype"] == "tier"
    assert stages.hash_sections(model=tier_export) != stages.hash_sections(model=cfg.model)
