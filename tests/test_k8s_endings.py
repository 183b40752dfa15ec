"""Every way a pod can end, in every rendered overlay, leads to what showwork intends
(docs/RELIABILITY.md "How a pod ends"), by Kubernetes' and JobSet's rules (tests/k8s_rules.py)."""

from __future__ import annotations

import math

import pytest

from k8s_rules import ENDINGS, Ending, JobOutcome, job_outcome, jobset_action
from test_k8s import OVERLAYS, jobset, needs_kubectl, render

TRAINING = {"sft", "grpo"}

# (single-host or multi-host training, other stages) x ending -> what showwork wants.
INTENDED = {
    "training": {"finished": "complete", "drained": "resume", "spot shutdown": "resume", "deleted": "resume",
                 "emptyDir over its limit": "resume", "OOM killed": "retry", "bug": "fail", "bad config": "fail"},
    "multi-host training": {
        "finished": "complete", "drained": "restart as a unit", "spot shutdown": "restart as a unit",
        "deleted": "restart as a unit", "emptyDir over its limit": "restart as a unit",
        "OOM killed": "restart as a unit, counted", "bug": "fail", "bad config": "fail"},
    "other": {"finished": "complete", "drained": "resume", "spot shutdown": "resume",
              "emptyDir over its limit": "resume", "OOM killed": "retry", "bug": "fail", "bad config": "fail"},
}
JOBSET_ACTIONS = {"FailJobSet": "fail", "RestartJobAndIgnoreMaxRestarts": "restart as a unit",
                  "RestartJob": "restart as a unit, counted", "RestartJobSet": "restart everything"}


def what_happens(js: dict, rj: dict, ending: Ending, failures_before: int = 0) -> str:
    job = rj["template"]["spec"]
    container = job["template"]["spec"]["containers"][0]["name"]
    outcome = job_outcome(job, container, ending, failures_before)
    if outcome.action != "fail":
        return {"complete": "complete", "retry": "resume", "retry-counted": "retry"}[outcome.action]
    return JOBSET_ACTIONS[jobset_action(js, rj["name"], outcome)]


def kind(rj: dict) -> str:
    if rj["name"] not in TRAINING:
        return "other"
    return "multi-host training" if rj["template"]["spec"].get("parallelism", 1) > 1 else "training"


def cases():
    for overlay in OVERLAYS:
        for name, ending in ENDINGS.items():
            yield pytest.param(overlay, name, id=f"{overlay}-{name.replace(' ', '_')}")


@needs_kubectl
@pytest.mark.parametrize("overlay, ending", list(cases()))
def test_every_way_a_pod_ends_leads_to_the_intended_outcome(overlay, ending):
    js = jobset(render(overlay))
    for rj in js["spec"]["replicatedJobs"]:
        wanted = INTENDED[kind(rj)].get(ending)
        if wanted is None:  # only training jobs exit 75 on SIGTERM
            continue
        assert what_happens(js, rj, ENDINGS[ending]) == wanted, (rj["name"], ending)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_counted_retries_end_and_every_job_has_a_deadline(overlay):
    """An OOM kill retried past the budget fails the run (single-host) or is counted (multi-host), and
    every Job ends by its deadline however often its pods are ignored and recreated."""
    js = jobset(render(overlay))
    for rj in js["spec"]["replicatedJobs"]:
        job = rj["template"]["spec"]
        assert job.get("activeDeadlineSeconds", 0) > 0, rj["name"]
        budget = job.get("backoffLimitPerIndex", job.get("backoffLimit", 6))
        final = what_happens(js, rj, ENDINGS["OOM killed"], failures_before=budget)
        assert final == ("restart as a unit, counted" if kind(rj) == "multi-host training" else "fail"), rj["name"]


def multi_host_jobs(js: dict) -> list[dict]:
    """Replicated jobs whose pods are the hosts of one slice: the TPU topology they select has more
    chips than one pod asks for (v5e-16's 4x4 is four hosts of 4 chips; an eval shard's 2x2 is one)."""
    out = []
    for rj in js["spec"]["replicatedJobs"]:
        spec = rj["template"]["spec"]["template"]["spec"]
        topology = spec.get("nodeSelector", {}).get("cloud.google.com/gke-tpu-topology")
        per_pod = int(spec["containers"][0]["resources"].get("requests", {}).get("google.com/tpu", 0))
        if topology and per_pod and math.prod(int(x) for x in topology.split("x")) > per_pod:
            out.append(rj)
    return out


@needs_kubectl
def test_some_shipped_overlay_has_multi_host_jobs_for_the_rule_below():
    assert any(multi_host_jobs(jobset(render(o))) for o in OVERLAYS)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_multi_host_training_restarts_as_a_unit_and_stays_on_one_slice(overlay):
    """In every overlay, every job that spans several hosts: no pod-level retries (a lone new worker
    cannot rejoin the others' collectives), JobSet restarts, and all its pods on one node pool."""
    js = jobset(render(overlay))
    jobs = multi_host_jobs(js)
    if not jobs:
        pytest.skip("single-host jobs only")
    assert js["spec"]["failurePolicy"]["maxRestarts"] > 0
    for rj in jobs:
        assert rj["name"] in TRAINING, rj["name"]
        assert rj["template"]["spec"]["backoffLimit"] == 0
        annotations = rj["template"]["metadata"]["annotations"]
        assert annotations["alpha.jobset.sigs.k8s.io/exclusive-topology"] == "cloud.google.com/gke-nodepool"


def test_the_rules_model_follows_the_documented_semantics():
    """k8s_rules itself, on hand-written policies: first match wins, Succeeded never reaches the policy."""
    job = {"backoffLimit": 1, "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [75]}},
        {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "NotIn", "values": [137]}}]}}
    assert job_outcome(job, "c", Ending("x", "Succeeded", 0)).action == "complete"
    assert job_outcome(job, "c", Ending("x", "Failed", 75, ("DisruptionTarget",))).action == "retry"
    failed = job_outcome(job, "c", Ending("x", "Failed", 75))
    assert failed == JobOutcome("fail", "PodFailurePolicy",
                                "Container c for pod ns/pod-0 failed with exit code 75 matching FailJob rule at index 1")
    assert job_outcome(job, "c", Ending("x", "Failed", 3)).message.endswith("at index 2")
    assert job_outcome(job, "c", Ending("x", "Failed", 137)).action == "retry-counted"
    assert job_outcome(job, "c", Ending("x", "Failed", 137), failures_before=1) == JobOutcome(
        "fail", "BackoffLimitExceeded")
    js = {"spec": {"failurePolicy": {"maxRestarts": 2, "rules": [
        {"name": "a", "action": "FailJobSet", "targetReplicatedJobs": ["x"]},
        {"name": "b", "action": "RestartJob", "onJobFailureMessagePatterns": ["exit code 75"]}]}}}
    assert jobset_action(js, "x", failed) == "FailJobSet"
    assert jobset_action(js, "y", failed) == "RestartJob"
    assert jobset_action(js, "y", JobOutcome("fail", "BackoffLimitExceeded")) == "RestartJobSet"
