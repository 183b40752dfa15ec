"""The pipeline's ETA: each remaining stage's cost priced at measured rates (showwork.eta)."""

import pytest

from conftest import RECIPES, TIERS
from showwork import config, eta, stages

CPU = TIERS / "cpu" / "tier.yaml"


@pytest.fixture(scope="module")
def demo():
    return config.load(RECIPES / "demo.yaml", CPU)


def units(cfg, counts):
    return [(s.name, eta.work(cfg, s, counts)) for s in stages.plan(cfg)]


def test_the_demo_stages_cost_the_tokens_they_push_through_the_model(demo):
    counts = {"train": 400, "eval": 264}
    costs = dict((s.key, eta.work(demo, s, counts)) for s in stages.plan(demo))
    # LoRA: a trained token costs 2 forward tokens. Packed SFT: 36 steps x 2 sequences x 512 tokens.
    assert costs["sft"] == 36 * 2 * 512 * 2
    # GRPO: 6 steps x 4 prompts x 4 completions; 96 generated, then 192 + 96 scored by the policy and
    # the reference (beta > 0) and trained once.
    assert costs["grpo/s-0"] == 6 * 4 * 4 * (96 + 288 * (2 + 2))
    # Evaluation: 264 questions on the CPU tier's two shards, greedy, up to 128 new tokens each.
    assert costs["eval/base/shard-0-of-2"] == costs["eval/grpo/shard-1-of-2"] == 132 * 128
    assert costs["data"] == costs["report"] == 0


def test_before_the_data_stage_the_counts_include_the_mixed_in_sources(demo):
    # The demo's own word problems (400 + 200) and the 64 gsm_symbolic questions scored beside them.
    assert eta.requested_counts(demo) == {"train": 400, "eval": 264}


def test_after_the_demos_sft_the_eta_prices_the_rest_at_sfts_rate_not_its_length(demo):
    """The defect this replaces: after a 720 s SFT, mean-time-per-stage promised 5 x 720 s for a short GRPO
    session and three evaluations."""
    counts = {"train": 400, "eval": 264}
    plan = units(demo, counts)
    est = eta.Estimator()
    est.finish("data", 0.0, 6.0)
    est.finish("sft", plan[1][1], 249.0)
    left = est.remaining(plan[2:])
    rate = 249.0 / plan[1][1]
    expected = rate * (plan[2][1] + 3 * 264 * 128) + 6.0  # the report priced as the data stage was
    assert left == pytest.approx(expected)
    # What the demo measured for these stages on 2026-12-01 after a 249 s SFT: about 10 minutes
    # (GRPO 216 s, six evaluation shards of about 60 s each).
    assert 400 < left < 900


def test_a_stage_like_a_finished_one_is_priced_at_that_ones_rate(demo):
    plan = units(demo, {"train": 400, "eval": 264})
    est = eta.Estimator()
    est.finish("sft", plan[1][1], 720.0)
    est.finish("grpo", plan[2][1], 90.0)
    est.finish("eval", plan[3][1], 150.0)  # decoding is dearer per unit than training here
    assert est.remaining([plan[4], plan[5]]) == pytest.approx(300.0)


def test_no_estimate_before_any_model_work_is_measured(demo):
    plan = units(demo, {"train": 400, "eval": 264})
    est = eta.Estimator()
    assert est.remaining(plan[1:]) is None
    est.finish("data", 0.0, 4.0)
    assert est.remaining(plan[1:]) is None
    assert est.remaining([("report", 0.0)]) == pytest.approx(4.0)
    assert eta.Estimator().remaining([]) == 0.0


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_every_recipes_model_stages_have_a_positive_cost(recipe):
    cfg = config.load(RECIPES / f"{recipe}.yaml", CPU)
    for name, cost in units(cfg, eta.requested_counts(cfg)):
        assert (cost > 0) == (name not in ("data", "report")), (recipe, name)
