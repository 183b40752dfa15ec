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
    counts = {"train": 400, "eval": 64}
    costs = dict((s.key, eta.work(demo, s, counts)) for s in stages.plan(demo))
    # LoRA: a trained token costs 2 forward tokens. SFT: 60 steps x 4 rows x 320 tokens.
    assert costs["sft"] == 60 * 4 * 320 * 2
    # GRPO: 3 steps x 2 prompts x 4 completions; 160 generated, then 256 + 160 scored by the policy and
    # the reference (beta > 0) and trained once.
    assert costs["grpo/s-0"] == 3 * 2 * 4 * (160 + 416 * (2 + 2))
    # Evaluation: 64 questions on the CPU tier's two shards, greedy, up to 160 new tokens each.
    assert costs["eval/base/shard-0-of-2"] == costs["eval/grpo/shard-1-of-2"] == 32 * 160
    assert costs["data"] == costs["report"] == 0


def test_after_the_demos_sft_the_eta_prices_the_rest_at_sfts_rate_not_its_length(demo):
    """The defect this replaces: after a 720 s SFT, mean-time-per-stage promised 5 x 720 s for a short GRPO
    session and three evaluations."""
    counts = {"train": 400, "eval": 64}
    plan = units(demo, counts)
    est = eta.Estimator()
    est.finish("data", 0.0, 6.0)
    est.finish("sft", plan[1][1], 720.0)
    left = est.remaining(plan[2:])
    rate = 720.0 / plan[1][1]
    expected = rate * (plan[2][1] + 3 * 64 * 160) + 6.0  # the report priced as the data stage was
    assert left == pytest.approx(expected)
    assert 300 < left < 720  # what the demo measured for these stages: about 8 minutes


def test_a_stage_like_a_finished_one_is_priced_at_that_ones_rate(demo):
    plan = units(demo, {"train": 400, "eval": 64})
    est = eta.Estimator()
    est.finish("sft", plan[1][1], 720.0)
    est.finish("grpo", plan[2][1], 90.0)
    est.finish("eval", plan[3][1], 150.0)  # decoding is dearer per unit than training here
    assert est.remaining([plan[4], plan[5]]) == pytest.approx(300.0)


def test_no_estimate_before_any_model_work_is_measured(demo):
    plan = units(demo, {"train": 400, "eval": 64})
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
