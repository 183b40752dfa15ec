"""One JobSet per stage: a rendered overlay split by replicated job and submitted in order.

A pipeline overlay renders one JobSet whose replicated jobs wait for each other
with `dependsOn`. Under Kueue that JobSet is one workload: admitted only when
the queue has quota for every stage's pods at once, and holding it until the
report is written. Split into one JobSet per replicated job and submitted when
the jobs it depends on have completed, each stage is its own workload and
quota is released between stages.

Each stage's JobSet keeps everything of the original that applies to it: the
labels (Kueue's queue name among them) and annotations (exclusive topology),
the pod template, `ttlSecondsAfterFinished`, and the `failurePolicy` rules that
target it or every job (`maxRestarts` too); `dependsOn` is dropped, because
the order is kept here. Each stage's `activeDeadlineSeconds` is its recipe's
(the `deadlines` section, showwork.deadlines), whatever the overlay rendered. Names are `<jobset>-<stage>`, labelled
`showwork.dev/pipeline` and `showwork.dev/stage` (`kubectl get jobsets -l
showwork.dev/pipeline=<jobset>`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from showwork.manifests import jobset, rendered

JOBSET_GROUP, JOBSET_VERSION = "jobset.x-k8s.io", "v1alpha2"
PIPELINE_LABEL, STAGE_LABEL = "showwork.dev/pipeline", "showwork.dev/stage"
# Stage JobSets' states, from the JobSet's status conditions.
COMPLETED, FAILED, RUNNING = "Completed", "Failed", "running"


def in_order(js: dict) -> list[dict]:
    """Replicated jobs so that each comes after every job it depends on."""
    pending, done, out = list(js["spec"]["replicatedJobs"]), set(), []
    while pending:
        ready = [rj for rj in pending if all(d["name"] in done for d in rj.get("dependsOn", []))]
        if not ready:
            raise ValueError("dependsOn has a cycle or names a missing job")
        pending.remove(ready[0])
        done.add(ready[0]["name"])
        out.append(ready[0])
    return out


def _rules_for(rules: list[dict], stage: str) -> list[dict]:
    """failurePolicy rules that apply to `stage`, targeting it alone (or every job, as written)."""
    out = []
    for rule in rules:
        targets = rule.get("targetReplicatedJobs")
        if targets and stage not in targets:
            continue
        rule = copy.deepcopy(rule)
        if targets:
            rule["targetReplicatedJobs"] = [stage]
        out.append(rule)
    return out


@dataclass(frozen=True)
class Stage:
    name: str  # the replicated job's name
    after: tuple[str, ...]  # stages that must have completed first
    manifest: dict  # its own JobSet


def stage_jobset(js: dict, rj: dict) -> dict:
    """The JobSet that runs replicated job `rj` of `js` alone."""
    meta = copy.deepcopy(js["metadata"])
    pipeline = meta["name"]
    meta["name"] = f"{pipeline}-{rj['name']}"
    meta.setdefault("labels", {}).update({PIPELINE_LABEL: pipeline, STAGE_LABEL: rj["name"]})
    spec = {k: copy.deepcopy(v) for k, v in js["spec"].items() if k not in ("replicatedJobs", "failurePolicy",
                                                                          "successPolicy")}
    job = {k: copy.deepcopy(v) for k, v in rj.items() if k != "dependsOn"}
    spec["replicatedJobs"] = [job]
    policy = js["spec"].get("failurePolicy")
    if policy is not None:
        policy = copy.deepcopy(policy)
        if "rules" in policy:
            policy["rules"] = _rules_for(policy["rules"], rj["name"])
        spec["failurePolicy"] = policy
    success = js["spec"].get("successPolicy")
    if success and (not success.get("targetReplicatedJobs") or rj["name"] in success["targetReplicatedJobs"]):
        spec["successPolicy"] = {**success, **({"targetReplicatedJobs": [rj["name"]]}
                                              if success.get("targetReplicatedJobs") else {})}
    return {"apiVersion": js["apiVersion"], "kind": "JobSet", "metadata": meta, "spec": spec}


def split(docs: list[dict]) -> tuple[list[dict], list[Stage]]:
    """A rendered overlay as (the other resources, the stages in dependsOn order)."""
    js = jobset(docs)
    for rj in js["spec"]["replicatedJobs"]:
        for dep in rj.get("dependsOn", []):
            if dep.get("status", "Complete") != "Complete":
                raise ValueError(f"{rj['name']} depends on {dep['name']} being {dep['status']}; one JobSet per "
                                 "stage can only wait for a stage to complete")
    others = [d for d in docs if d is not js]
    stages = [Stage(rj["name"], tuple(d["name"] for d in rj.get("dependsOn", [])), stage_jobset(js, rj))
              for rj in in_order(js)]
    return others, stages


class Cluster(Protocol):
    """What submitting needs from a cluster (KubeCluster; a recording fake in the tests)."""

    def apply(self, doc: dict) -> str: ...  # "created" or "exists"
    def create_jobset(self, manifest: dict) -> str: ...  # "created" or "exists"
    def jobset_state(self, name: str) -> tuple[str, str]: ...  # (COMPLETED | FAILED | RUNNING, message)


def state_of(obj: dict) -> tuple[str, str]:
    """A JobSet object's state from its status conditions."""
    for cond in obj.get("status", {}).get("conditions", []):
        if cond.get("status") == "True" and cond.get("type") in (COMPLETED, FAILED):
            return cond["type"], f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
    return RUNNING, ""


@dataclass
class Outcome:
    completed: list[str] = field(default_factory=list)
    failed: str | None = None  # the stage whose JobSet failed
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.failed is None


def submit(cluster: Cluster, others: list[dict], stages: list[Stage], logger, poll_s: float = 30.0,
           sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Apply the resources, then submit each stage's JobSet once the stages it depends on have
    completed (stages whose dependencies are met run side by side); stop at the first that fails.

    A JobSet that already exists is waited for, not replaced: submitting again after a failure or an
    interruption picks up where the pipeline stands (delete a failed stage's JobSet to retry it).
    """
    for doc in others:
        logger.info("resource", kind=doc["kind"], name=doc["metadata"]["name"], result=cluster.apply(doc))
    outcome, started = Outcome(), {}
    while len(outcome.completed) < len(stages):
        for st in stages:
            if st.name not in started and all(a in outcome.completed for a in st.after):
                result = cluster.create_jobset(st.manifest)
                started[st.name] = clock()
                logger.info("stage submitted", stage=st.name, jobset=st.manifest["metadata"]["name"], result=result)
        moved = False
        for st in stages:
            if st.name not in started or st.name in outcome.completed:
                continue
            state, message = _state(cluster, st.manifest["metadata"]["name"], logger, sleep, poll_s)
            if state == FAILED:
                logger.error("stage failed", stage=st.name, message=message)
                outcome.failed, outcome.message = st.name, message
                return outcome
            if state == COMPLETED:
                outcome.completed.append(st.name)
                moved = True
                logger.info("stage completed", stage=st.name, seconds=round(clock() - started[st.name], 1))
        if not moved:
            sleep(poll_s)
    return outcome


def _state(cluster: Cluster, name: str, logger, sleep, poll_s: float, attempts: int = 5) -> tuple[str, str]:
    """A stage's state, riding out an API server that answers 5xx or not at all for a while; a JobSet
    that is gone (deleted by hand, or by its ttlSecondsAfterFinished) ends the submission clearly."""
    from showwork.errors import RunError

    for attempt in range(attempts):
        try:
            return cluster.jobset_state(name)
        except Exception as err:  # the client's ApiException, urllib3's connection errors
            status = getattr(err, "status", None)
            if status == 404:
                raise RunError(f"JobSet {name} is gone (deleted, or its ttlSecondsAfterFinished ran out); "
                               "submit again to recreate the stages that have no JobSet") from None
            if status is not None and status < 500 or attempt == attempts - 1:
                raise
            logger.warning("cannot read a stage's JobSet; trying again", jobset=name, error=str(err)[:200])
            sleep(poll_s)
    raise AssertionError("unreachable")


def context_namespace() -> str | None:
    """The namespace of the kube config's current context, as kubectl would use it."""
    try:
        from kubernetes import config

        _, current = config.list_kube_config_contexts()
        return current.get("context", {}).get("namespace")
    except Exception:  # no kube config (in a pod: the caller says --namespace)
        return None


def connect():
    """A `kubernetes` client from the kube config, or in a pod from its service account."""
    from kubernetes import client, config

    try:
        config.load_kube_config()
    except Exception:
        config.load_incluster_config()
    return client.ApiClient()


class KubeCluster:
    """A cluster through the `kubernetes` client (the kube config, or the pod's service account)."""

    def __init__(self, namespace: str, api_client=None):
        from kubernetes import client

        api_client = api_client or connect()
        self.api, self.namespace = api_client, namespace
        self.custom = client.CustomObjectsApi(api_client)

    def apply(self, doc: dict) -> str:
        from kubernetes import utils

        try:
            utils.create_from_dict(self.api, doc, namespace=self.namespace)
        except utils.FailToCreateError as err:
            # Kept as is: kustomize names ConfigMaps by their content's hash, so one that exists is this one.
            if all(getattr(e, "status", None) == 409 for e in err.api_exceptions):
                return "exists"
            raise
        return "created"

    def create_jobset(self, manifest: dict) -> str:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.create_namespaced_custom_object(JOBSET_GROUP, JOBSET_VERSION, self.namespace, "jobsets",
                                                        manifest)
        except ApiException as err:
            if err.status == 409:
                return "exists"
            raise
        return "created"

    def jobset_state(self, name: str) -> tuple[str, str]:
        return state_of(self.custom.get_namespaced_custom_object(JOBSET_GROUP, JOBSET_VERSION, self.namespace,
                                                                 "jobsets", name))


def render(overlay: str, log=None) -> tuple[list[dict], list[Stage]]:
    """`rendered(overlay)` split as `split` does, each stage's deadline its recipe's."""
    from showwork import deadlines
    from showwork.errors import UsageError

    docs = rendered(overlay)
    try:
        # The recipe is the home of each stage's deadline: what the overlay rendered is overridden.
        for job, was, recipe in deadlines.apply(jobset(docs), deadlines.wanted(docs)):
            if log:
                log.warning("deadline from the recipe", stage=job, rendered_seconds=was, recipe_seconds=recipe)
        return split(docs)
    except (ValueError, KeyError) as err:
        raise UsageError(f"{overlay}: {err}") from None


def emit(others: list[dict], stages: list[Stage], out) -> list:
    """Write what submit would send, one file per step in order: 00-resources.yaml, 01-<stage>.yaml, …"""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "00-resources.yaml"]
    files[0].write_text(yaml.safe_dump_all(others, sort_keys=False))
    for i, st in enumerate(stages, 1):
        files.append(out / f"{i:02d}-{st.name}.yaml")
        after = ", ".join(st.after) or "nothing"
        files[-1].write_text(f"# submitted once these stages' JobSets have completed: {after}\n"
                             + yaml.safe_dump(st.manifest, sort_keys=False))
    return files
