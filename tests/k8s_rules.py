"""What Kubernetes and JobSet do when a pod ends, as their documentation and sources say, applied to
our rendered manifests. Used by tests/test_k8s_endings.py; no cluster needed.

* A pod that Succeeded never reaches the pod failure policy: the Job counts it complete.
* A Failed pod: the first podFailurePolicy rule that matches decides. `Ignore` recreates it
  without counting; `FailJob` fails the Job with reason PodFailurePolicy and the controller's
  message; `Count` (or no match) counts it against backoffLimit (backoffLimitPerIndex for an
  indexed Job that sets it); past the limit the Job fails with BackoffLimitExceeded.
* A failed child Job: the first JobSet failurePolicy rule whose target replicated jobs, reasons
  and message patterns match decides; none matching means RestartJobSet, counted against
  maxRestarts (over it, the JobSet fails).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Messages the Job controller writes (kubernetes pkg/controller/job/pod_failure_policy.go).
EXIT_MESSAGE = "Container {container} for pod ns/pod-0 failed with exit code {code} matching FailJob rule at index {i}"
CONDITION_MESSAGE = "Pod ns/pod-0 has condition {condition} matching FailJob rule at index {i}"


@dataclass(frozen=True)
class Ending:
    """How one pod ended: its phase, its container's exit code, its conditions."""

    name: str
    phase: str  # Succeeded or Failed
    exit_code: int
    conditions: tuple[str, ...] = ()


ENDINGS = {
    "finished": Ending("finished", "Succeeded", 0),
    # Node drain, API eviction, Kueue or priority preemption: the pod gets DisruptionTarget, our
    # trainer gets SIGTERM, saves and exits 75.
    "drained": Ending("drained", "Failed", 75, ("DisruptionTarget",)),
    # GKE spot shutdown: the kubelet fails the pod with DisruptionTarget, whatever it exits with.
    "spot shutdown": Ending("spot shutdown", "Failed", 143, ("DisruptionTarget",)),
    # A pod deleted by hand or by a controller without the condition: SIGTERM, checkpoint, 75.
    "deleted": Ending("deleted", "Failed", 75),
    # The kubelet evicts a pod whose emptyDir passed its sizeLimit (a DisruptionTarget too).
    "emptyDir over its limit": Ending("emptyDir over its limit", "Failed", 137, ("DisruptionTarget",)),
    "OOM killed": Ending("OOM killed", "Failed", 137),
    "bug": Ending("bug", "Failed", 1),
    "bad config": Ending("bad config", "Failed", 2),
}


@dataclass(frozen=True)
class JobOutcome:
    action: str  # complete, retry (not counted), retry-counted, fail
    reason: str = ""
    message: str = ""


def job_outcome(job: dict, container: str, ending: Ending, failures_before: int = 0) -> JobOutcome:
    """What the Job controller does with a pod of `job` (a Job spec) that ended as `ending`."""
    if ending.phase == "Succeeded":
        return JobOutcome("complete")
    for i, rule in enumerate(job.get("podFailurePolicy", {}).get("rules", [])):
        message = _match(rule, container, ending, i)
        if message is None:
            continue
        if rule["action"] == "Ignore":
            return JobOutcome("retry")
        if rule["action"] == "FailJob":
            return JobOutcome("fail", "PodFailurePolicy", message)
        break  # Count: the default handling
    limit = job.get("backoffLimitPerIndex", job.get("backoffLimit", 6))
    if failures_before + 1 > limit:
        # An index out of retries: with maxFailedIndexes reached the Job fails at once.
        reason = ("BackoffLimitExceeded" if "backoffLimitPerIndex" not in job
                  else "MaxFailedIndexesExceeded" if "maxFailedIndexes" in job else "FailedIndexes")
        return JobOutcome("fail", reason)
    return JobOutcome("retry-counted")


def _match(rule: dict, container: str, ending: Ending, index: int) -> str | None:
    """The controller's message when `rule` matches the ending, else None."""
    if "onExitCodes" in rule:
        req = rule["onExitCodes"]
        if req.get("containerName", container) != container or ending.exit_code == 0:
            return None
        inside = ending.exit_code in req["values"]
        if inside == (req["operator"] == "In"):
            return EXIT_MESSAGE.format(container=container, code=ending.exit_code, i=index)
        return None
    for pattern in rule.get("onPodConditions", []):
        if pattern["type"] in ending.conditions and pattern.get("status", "True") == "True":
            return CONDITION_MESSAGE.format(condition=pattern["type"], i=index)
    return None


def jobset_action(jobset: dict, replicated_job: str, outcome: JobOutcome) -> str:
    """The JobSet controller's action on a child Job of `replicated_job` that failed with `outcome`."""
    policy = jobset["spec"].get("failurePolicy", {})
    for rule in policy.get("rules", []):
        targets = rule.get("targetReplicatedJobs") or []
        reasons = rule.get("onJobFailureReasons") or []
        patterns = rule.get("onJobFailureMessagePatterns") or []
        if targets and replicated_job not in targets:
            continue
        if reasons and outcome.reason not in reasons:
            continue
        if patterns and not any(re.search(p, outcome.message) for p in patterns):
            continue
        return rule["action"]
    return "RestartJobSet" if policy.get("maxRestarts", 0) > 0 else "FailJobSet"
