"""Each stage's cluster deadline comes from its recipe (showwork.deadlines): every shipped overlay
renders its recipe's deadlines, the block addresses Jobs by name, and `make configure` and
`--submit` carry a recipe's edited deadline to the cluster."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from showwork import config, deadlines, submit
from test_k8s import OVERLAYS, RECIPES, KUBECTL, needs_kubectl, render

sys.path.insert(0, str(REPO / "scripts"))
import configure  # noqa: E402


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlays_job_deadlines_are_its_recipes(overlay):
    docs = render(overlay)
    assert deadlines.check(docs) == [], f"python -m showwork.deadlines k8s/overlays/{overlay} prints the block"
    assert set(deadlines.wanted(docs)) == set(deadlines.current(docs)), "every Job has a recipe deadline"


@needs_kubectl
def test_the_demo_overlay_carries_the_demo_recipes_short_deadlines_not_the_bases():
    """The demo's recipe sets hours, not days: the block in demo-cpu is what makes the test above hold."""
    docs = render("demo-cpu")
    want = deadlines.seconds(config.load(RECIPES / "demo.yaml", REPO / "k8s/components/cpu/tier.yaml").deadlines)
    assert deadlines.current(docs) == want and want["sft"] == 4 * 3600
    assert deadlines.current(render("hybrid-cpu"))["sft"] == 72 * 3600
    assert not [d for d in docs if d["metadata"]["name"].startswith(deadlines.CONFIGMAP)], "kustomize keeps it"


@needs_kubectl
def test_check_names_each_job_whose_rendered_deadline_is_not_its_recipes():
    docs = render("demo-cpu")
    js = submit.jobset(docs)
    js["spec"]["replicatedJobs"][2]["template"]["spec"]["activeDeadlineSeconds"] = 259200
    name = js["spec"]["replicatedJobs"][2]["name"]
    assert deadlines.check(docs) == [f"{name}: activeDeadlineSeconds 259200, the recipe says 14400"]


@needs_kubectl
def test_a_kueue_limit_below_the_sum_of_the_deadlines_is_named():
    docs = render("demo-cpu")
    submit.jobset(docs)["metadata"].setdefault("labels", {})[deadlines.KUEUE_MAX_EXEC] = "36000"
    assert deadlines.check(docs) == [f"{deadlines.KUEUE_MAX_EXEC} 36000 is below the sum of the Jobs' "
                                     f"deadlines, {3600 + 3 * 14400 + 3600}"]


@needs_kubectl
def test_the_printed_block_composes_over_an_overlay_that_carries_one(tmp_path, capsys):
    """A user's overlay over demo-cpu (which carries a block) pastes what `python -m showwork.deadlines`
    prints for it: its ConfigMap is named after the overlay, so the two do not clash."""
    import os

    mine = tmp_path / "mine"
    mine.mkdir()
    base = {"resources": [os.path.relpath(REPO / "k8s" / "overlays" / "demo-cpu", mine)],
            "configMapGenerator": [{"name": "showwork-run", "behavior": "merge",
                                    "literals": ["SHOWWORK_RECIPE=hybrid"]}]}
    (mine / "kustomization.yaml").write_text(yaml.safe_dump(base))
    deadlines.main([str(mine)])
    block = yaml.safe_load(capsys.readouterr().out)
    assert block["configMapGenerator"][0]["name"] == "showwork-deadlines-mine"
    base["configMapGenerator"] += block["configMapGenerator"]
    (mine / "kustomization.yaml").write_text(yaml.safe_dump({**base, "replacements": block["replacements"]}))
    out = subprocess.run([KUBECTL, "kustomize", str(mine)], capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert deadlines.check(docs) == [] and deadlines.current(docs)["sft"] == 72 * 3600  # hybrid's defaults


@needs_kubectl
def test_the_block_addresses_each_job_by_name_whatever_their_order(tmp_path):
    """A user's overlay may reorder jobs or drop some (the block then names only those it has): the
    replacements follow names, not list positions."""
    js = submit.jobset(render("hybrid-cpu"))
    js["spec"]["replicatedJobs"].reverse()
    del js["spec"]["replicatedJobs"][1]  # eval gone
    (tmp_path / "jobset.yaml").write_text(yaml.safe_dump(js))
    table = {"report": 60, "grpo": 7200, "sft": 3600, "data-prep": 600}
    block = deadlines.kustomization(table)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["jobset.yaml"], **block}))
    out = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    (rendered,) = [d for d in yaml.safe_load_all(out) if d]
    got = {rj["name"]: rj["template"]["spec"]["activeDeadlineSeconds"] for rj in rendered["spec"]["replicatedJobs"]}
    assert got == table and [rj["name"] for rj in rendered["spec"]["replicatedJobs"]] == \
        ["report", "grpo", "sft", "data-prep"]


@needs_kubectl
def test_configure_writes_a_recipes_edited_deadline_into_the_site_overlay(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    shutil.copytree(RECIPES, recipes)
    hybrid = recipes / "hybrid.yaml"
    hybrid.write_text(hybrid.read_text() + "deadlines: {sft: 10, eval: 2.5}\n")
    monkeypatch.setattr(configure, "RECIPES", recipes)
    configure.main(["--project", "acme-ml-42", "--bucket", "acme-bus", "--out", str(tmp_path / "site")])
    for overlay in ("hybrid-v5e-8", "hybrid-v5e-16"):
        out = subprocess.run([KUBECTL, "kustomize", str(tmp_path / "site" / overlay)], capture_output=True,
                             text=True, check=True).stdout
        got = deadlines.current([d for d in yaml.safe_load_all(out) if d])
        assert got == {"data-prep": 7200, "sft": 36000, "grpo": 259200, "eval": 9000, "report": 3600}, overlay
    # An overlay whose recipe keeps the defaults is unchanged by the block.
    out = subprocess.run([KUBECTL, "kustomize", str(tmp_path / "site" / "relay-consensus-v5e-8")],
                         capture_output=True, text=True, check=True).stdout
    assert deadlines.current([d for d in yaml.safe_load_all(out) if d]) == deadlines.current(render("relay-consensus-v5e-8"))


@needs_kubectl
def test_submit_gives_each_stage_its_recipes_deadline_whatever_the_overlay_rendered(tmp_path):
    docs = render("demo-cpu")
    for rj in submit.jobset(docs)["spec"]["replicatedJobs"]:
        rj["template"]["spec"]["activeDeadlineSeconds"] = 1  # an overlay patched out of step with the recipe
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump_all(docs))
    warnings = []

    class Log:
        def warning(self, event, **kw):
            warnings.append((event, kw["stage"], kw["recipe_seconds"]))

    _, stages = submit.render(str(tmp_path / "rendered.yaml"), Log())
    got = {st.name: st.manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["activeDeadlineSeconds"]
           for st in stages}
    assert got == {"data-prep": 3600, "sft": 14400, "grpo": 14400, "eval": 14400, "report": 3600}
    assert warnings == [("deadline from the recipe", job, s) for job, s in got.items()]  # each override said


@pytest.mark.parametrize("value, message", [(0, "must be positive"), (-1, "must be positive"),
                                            ("3d", "expected a number")])
def test_a_deadline_that_is_not_a_positive_number_of_hours_is_refused(tmp_path, value, message):
    recipe = tmp_path / "r.yaml"
    text = (RECIPES / "demo.yaml").read_text().replace("deadlines: {data_prep: 1,", f"deadlines: {{data_prep: {yaml.safe_dump(value).split()[0]},")
    recipe.write_text(text)
    with pytest.raises(config.ConfigError, match=f"deadlines.data_prep: {message}"):
        config.load(recipe, REPO / "k8s/components/cpu/tier.yaml")


@needs_kubectl
def test_an_overlay_without_a_recipe_is_refused_clearly():
    docs = copy.deepcopy(render("demo-cpu"))
    docs = [d for d in docs if not d["metadata"]["name"].startswith("showwork-run")]
    with pytest.raises(ValueError, match="names no SHOWWORK_RECIPE"):
        deadlines.wanted(docs)
