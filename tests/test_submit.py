"""One JobSet per stage (`python -m jobs.pipeline --submit`): how a rendered overlay is split,
and how the stages reach a cluster through the real `kubernetes` client.

The cluster is a fake API server under the client's REST layer: it records every
request, answers 201/409/404 as the API server does, and moves each JobSet it
holds from running to Completed (or Failed, for the stages a test fails) after a
few reads, as the JobSet controller would.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import dataclass, field
from urllib.parse import unquote

import pytest
import yaml

from conftest import REPO
from jobs import pipeline as pipeline_job
from showwork import submit
from test_k8s import OVERLAYS, admit, kueue_objects, queue_flavors, needs_kubectl, render, shared, strict, with_component


def stage_names(stages):
    return [s.name for s in stages]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_stage_jobset_holds_its_replicated_job_unchanged_and_only_its_rules(overlay):
    docs = render(overlay)
    js = submit.jobset(docs)
    others, stages = submit.split(copy.deepcopy(docs))
    assert [d["metadata"]["name"] for d in others] == [d["metadata"]["name"] for d in docs if d["kind"] != "JobSet"]
    assert stage_names(stages) == [rj["name"] for rj in submit.in_order(js)]
    rules = js["spec"].get("failurePolicy", {}).get("rules", [])
    for st in stages:
        (original,) = [rj for rj in js["spec"]["replicatedJobs"] if rj["name"] == st.name]
        (job,) = st.manifest["spec"]["replicatedJobs"]
        assert job == {k: v for k, v in original.items() if k != "dependsOn"}
        assert st.after == tuple(d["name"] for d in original.get("dependsOn", []))
        meta = st.manifest["metadata"]
        assert meta["name"] == f"{js['metadata']['name']}-{st.name}"
        assert meta["labels"] == {**js["metadata"].get("labels", {}), submit.PIPELINE_LABEL: js["metadata"]["name"],
                                  submit.STAGE_LABEL: st.name}
        assert meta.get("annotations") == js["metadata"].get("annotations")
        mine = st.manifest["spec"].get("failurePolicy", {}).get("rules", [])
        assert [r["name"] for r in mine] == [r["name"] for r in rules
                                             if st.name in r.get("targetReplicatedJobs", [st.name])]
        assert all(r.get("targetReplicatedJobs", [st.name]) == [st.name] for r in mine)


@needs_kubectl
@pytest.mark.parametrize("overlay", ["hybrid-v5e-16", "hybrid-cpu", "eval-only-v5e-8"])
def test_stage_jobsets_validate_against_the_jobset_crd(overlay):
    import jsonschema

    crd = yaml.safe_load(shared("schemas/jobset-v0.12.0-crd.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2")
    validator = jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))
    for st in submit.split(render(overlay))[1]:
        errors = list(validator.iter_errors(st.manifest))
        assert not errors, (st.name, [f"{list(e.path)}: {e.message[:200]}" for e in errors[:3]])


@needs_kubectl
def test_under_kueue_each_stage_is_its_own_workload_needing_less_quota_than_the_whole(tmp_path):
    objects = kueue_objects()
    docs = with_component("hybrid-v5e-8", "kueue", tmp_path)
    queue = queue_flavors(objects)

    def chips(js):
        chosen, held = admit(js, queue)
        assert None not in chosen.values(), chosen
        return sum(need.get("google.com/tpu", 0) for need in held.values())

    whole = chips(submit.jobset(docs))
    stages = submit.split(docs)[1]
    for st in stages:
        labels = st.manifest["metadata"]["labels"]
        assert labels["kueue.x-k8s.io/queue-name"] == submit.jobset(docs)["metadata"]["labels"][
            "kueue.x-k8s.io/queue-name"]
    per_stage = {st.name: chips(st.manifest) for st in stages}
    # The README's numbers: one JobSet holds 48 chips of quota; a stage at a time at most 32 (eval's shards).
    assert whole == 48 and max(per_stage.values()) == 32 and per_stage["sft"] == per_stage["grpo"] == 8


def test_a_dependency_on_readiness_is_refused():
    js = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "p"},
          "spec": {"replicatedJobs": [{"name": "a", "template": {}},
                                      {"name": "b", "template": {}, "dependsOn": [{"name": "a", "status": "Ready"}]}]}}
    with pytest.raises(ValueError, match="b depends on a being Ready"):
        submit.split([js])


def test_a_dependency_cycle_is_refused():
    js = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "p"},
          "spec": {"replicatedJobs": [{"name": "a", "template": {}, "dependsOn": [{"name": "b", "status": "Complete"}]},
                                      {"name": "b", "template": {}, "dependsOn": [{"name": "a", "status": "Complete"}]}]}}
    with pytest.raises(ValueError, match="cycle"):
        submit.split([js])


@dataclass
class _HttpResponse:  # what the client's RESTResponse wraps (urllib3's response)
    status: int
    reason: str
    data: bytes
    headers: dict = field(default_factory=lambda: {"content-type": "application/json"})


@dataclass
class FakeApiServer:
    """Stands in for the client's REST layer: objects by URL path, JobSets that finish after `polls` reads."""

    polls: int = 2
    fail: set[str] = field(default_factory=set)  # stage names whose JobSet ends Failed
    objects: dict[str, dict] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path)

    def request(self, method, url, headers=None, body=None, post_params=None, _request_timeout=None):
        from kubernetes.client import rest

        path, _, query = ("/" + url.split("://", 1)[-1].split("/", 1)[1]).partition("?")
        self.calls.append((method, path))
        if method == "POST":
            body = json.loads(body) if isinstance(body, (str, bytes)) else body
            key = f"{path}/{body['metadata']['name']}"
            if key in self.objects:
                return rest.RESTResponse(_HttpResponse(409, "Conflict", b'{"reason": "AlreadyExists"}'))
            self.objects[key] = body
            return rest.RESTResponse(_HttpResponse(201, "Created", json.dumps(body).encode()))
        if method == "GET" and path.endswith(("/jobsets", "/jobs", "/pods")):  # a list, by label selector
            selector = dict(p.split("=", 1) for p in unquote(query.partition("labelSelector=")[2].split("&")[0])
                            .split(",") if p)
            items = [o for k, o in self.objects.items() if k.rsplit("/", 1)[0] == path
                     and selector.items() <= o["metadata"].get("labels", {}).items()]
            return rest.RESTResponse(_HttpResponse(200, "OK", json.dumps({"items": items}).encode()))
        if method == "GET":
            if path not in self.objects:
                return rest.RESTResponse(_HttpResponse(404, "Not Found", b'{"reason": "NotFound"}'))
            obj = self.objects[path]
            if obj["kind"] == "JobSet":
                self._advance(path, obj)
            return rest.RESTResponse(_HttpResponse(200, "OK", json.dumps(obj).encode()))
        raise AssertionError(f"unexpected {method} {path}")

    def _advance(self, path: str, obj: dict) -> None:
        self.reads[path] = self.reads.get(path, 0) + 1
        if self.reads[path] >= self.polls and "status" not in obj:
            failed = obj["metadata"]["labels"].get(submit.STAGE_LABEL) in self.fail
            kind = submit.FAILED if failed else submit.COMPLETED
            reason = "FailedJobs" if failed else "AllJobsCompleted"
            obj["status"] = {"conditions": [{"type": kind, "status": "True", "reason": reason,
                                             "message": f"jobset {kind.lower()}"}]}

    def jobsets_created(self) -> list[str]:
        return [p.rsplit("/", 1)[-1] for p in self.objects if "/jobsets/" in p]


def kube(server: FakeApiServer, namespace: str = "showwork") -> submit.KubeCluster:
    from kubernetes import client

    api = client.ApiClient(client.Configuration(host="https://cluster.test"))
    api.rest_client = server
    return submit.KubeCluster(namespace, api_client=api)


class Logger:
    def __init__(self):
        self.events = []

    def info(self, event, **kw):
        self.events.append((event, kw))

    error = warning = info


def created_after_completed(server: FakeApiServer, stages) -> None:
    """No stage's JobSet was created before every stage it depends on was read back Completed."""
    for st in stages:
        create = server.calls.index(("POST", "/apis/jobset.x-k8s.io/v1alpha2/namespaces/showwork/jobsets"),
                                    _nth_jobset_post(server, st.manifest["metadata"]["name"]))
        for dep in st.after:
            name = next(s for s in stages if s.name == dep).manifest["metadata"]["name"]
            path = f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/showwork/jobsets/{name}"
            reads = [i for i, c in enumerate(server.calls) if c == ("GET", path)]
            assert len(reads) >= server.polls and reads[server.polls - 1] < create, (st.name, dep)


def _nth_jobset_post(server: FakeApiServer, name: str) -> int:
    posts = [i for i, c in enumerate(server.calls) if c[0] == "POST" and c[1].endswith("/jobsets")]
    return posts[server.jobsets_created().index(name)]


@needs_kubectl
def test_submit_creates_resources_then_each_stage_after_the_ones_it_depends_on_completed():
    others, stages = submit.split(render("hybrid-v5e-16"))
    server, sleeps = FakeApiServer(), []
    outcome = submit.submit(kube(server), others, stages, Logger(), poll_s=7, sleep=sleeps.append)
    assert outcome.ok and outcome.completed == ["data-prep", "sft", "grpo", "eval", "report"]
    first_jobset = next(i for i, c in enumerate(server.calls) if c[1].endswith("/jobsets"))
    posts = [c[1] for c in server.calls[:first_jobset] if c[0] == "POST"]
    assert posts == ["/api/v1/namespaces/showwork/serviceaccounts", "/api/v1/namespaces/showwork/configmaps",
                     "/api/v1/namespaces/showwork/configmaps"]
    assert server.jobsets_created() == [st.manifest["metadata"]["name"] for st in stages]
    created_after_completed(server, stages)
    sent = server.objects[f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/showwork/jobsets/{stages[2].manifest['metadata']['name']}"]
    assert {k: v for k, v in sent.items() if k != "status"} == stages[2].manifest
    assert sleeps and set(sleeps) == {7}


@needs_kubectl
def test_a_failed_stage_stops_the_pipeline_and_nothing_after_it_is_submitted():
    others, stages = submit.split(render("hybrid-v5e-16"))
    server = FakeApiServer(fail={"sft"})
    outcome = submit.submit(kube(server), others, stages, Logger(), sleep=lambda s: None)
    assert not outcome.ok and outcome.failed == "sft" and outcome.completed == ["data-prep"]
    assert "FailedJobs" in outcome.message
    assert [n.rsplit("-", 1)[-1] for n in server.jobsets_created()] == ["prep", "sft"]


@needs_kubectl
def test_submitting_again_waits_for_existing_stages_and_creates_only_the_missing_ones():
    others, stages = submit.split(render("hybrid-v5e-16"))
    server = FakeApiServer(fail={"grpo"})
    assert submit.submit(kube(server), others, stages, Logger(), sleep=lambda s: None).failed == "grpo"
    # The user deletes the failed stage's JobSet and submits again: finished stages are not run twice.
    grpo = stages[2].manifest["metadata"]["name"]
    del server.objects[f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/showwork/jobsets/{grpo}"]
    server.fail.clear()
    before, log = len(server.objects), Logger()
    outcome = submit.submit(kube(server), others, stages, log, sleep=lambda s: None)
    assert outcome.ok and outcome.completed == ["data-prep", "sft", "grpo", "eval", "report"]
    results = {kw.get("stage", kw.get("name")): kw["result"] for e, kw in log.events if "result" in kw}
    assert results["data-prep"] == results["sft"] == "exists" and results["grpo"] == "created"
    assert all(results[d["metadata"]["name"]] == "exists" for d in others)
    assert len(server.objects) == before + 3  # grpo again, eval, report


def test_stages_whose_dependencies_are_met_run_side_by_side():
    def rj(name, *after):
        return {"name": name, "template": {"spec": {}},
                "dependsOn": [{"name": a, "status": "Complete"} for a in after]}

    js = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "p", "labels": {}},
          "spec": {"replicatedJobs": [rj("data"), rj("eval-base", "data"), rj("sft", "data"),
                                      rj("report", "eval-base", "sft")]}}
    others, stages = submit.split([js])
    server = FakeApiServer(polls=3)
    assert submit.submit(kube(server), others, stages, Logger(), sleep=lambda s: None).ok
    posts = [i for i, c in enumerate(server.calls) if c[0] == "POST"]
    reads = [i for i, c in enumerate(server.calls) if c[0] == "GET"]
    # eval-base and sft are both created before either is read: they run together.
    assert posts[1] < posts[2] < min(i for i in reads if i > posts[1])
    created_after_completed(server, stages)


@needs_kubectl
def test_submit_cli_emits_the_manifests_it_would_submit_in_order(tmp_path):
    overlay = REPO / "k8s" / "overlays" / "hybrid-v5e-16"
    out = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--submit", str(overlay), "--emit",
                          str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == ["00-resources.yaml", "01-data-prep.yaml", "02-sft.yaml", "03-grpo.yaml",
                                       "04-eval.yaml", "05-report.yaml"]
    assert out.stdout.split() == [str(f) for f in files]
    others, stages = submit.split(render("hybrid-v5e-16"))
    assert list(yaml.safe_load_all(files[0].read_text())) == others
    for f, st in zip(files[1:], stages):
        assert yaml.safe_load(f.read_text()) == st.manifest
        assert f.read_text().startswith(f"# submitted once these stages' JobSets have completed: "
                                        f"{', '.join(st.after) or 'nothing'}\n")


@needs_kubectl
def test_submit_cli_exits_1_naming_the_failed_stage(capsys):
    server = FakeApiServer(fail={"eval"})
    overlay = str(REPO / "k8s" / "overlays" / "hybrid-v5e-16")
    with pytest.raises(SystemExit) as ended:
        pipeline_job.submit_main(["--submit", overlay, "--poll-s", "0"], cluster=kube(server, "default"))
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert "stage eval failed" in err and "Completed: data-prep, sft, grpo" in err
    assert not any(n.endswith("-report") for n in server.jobsets_created())


def test_submit_cli_refuses_what_is_not_an_overlay(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--submit", str(tmp_path / "missing")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and "neither an overlay directory nor a rendered YAML file" in out.stderr


def plant_jobs(server: FakeApiServer, jobset: str, stage: str, succeeded: int, phases: list[str]) -> None:
    """The Job and Pods the JobSet controller would have made for one replicated job."""
    job = f"{jobset}-{stage}-0"
    server.objects[f"/apis/batch/v1/namespaces/showwork/jobs/{job}"] = {
        "metadata": {"name": job, "labels": {"jobset.sigs.k8s.io/jobset-name": jobset,
                                             "jobset.sigs.k8s.io/replicatedjob-name": stage}},
        "status": {"succeeded": succeeded}}
    for i, phase in enumerate(phases):
        server.objects[f"/api/v1/namespaces/showwork/pods/{job}-{i}"] = {
            "metadata": {"name": f"{job}-{i}", "labels": {"job-name": job}}, "status": {"phase": phase}}


@needs_kubectl
def test_status_shows_each_stage_of_a_pipeline_submitted_a_stage_at_a_time():
    from showwork import status

    others, stages = submit.split(render("hybrid-v5e-16"))
    server = FakeApiServer(fail={"grpo"})
    submit.submit(kube(server), others, stages, Logger(), sleep=lambda s: None)
    pipeline = submit.jobset(render("hybrid-v5e-16"))["metadata"]["name"]
    plant_jobs(server, f"{pipeline}-sft", "sft", 4, ["Succeeded"] * 4)
    plant_jobs(server, f"{pipeline}-grpo", "grpo", 0, ["Failed", "Running", "Running", "Running"])
    rows = status.cluster_stages(pipeline, "showwork", api_client=kube(server).api)
    assert rows["sft"] == "succeeded 4, active 0, failed 0; pods Succeeded, Succeeded, Succeeded, Succeeded"
    assert rows["grpo"].endswith("pods Failed, Running, Running, Running")
    assert rows["data-prep"] == "waiting (dependsOn)"  # its JobSet exists, its Job is not planted
    assert rows[f"(jobset {pipeline}-sft)"] == "Completed" and rows[f"(jobset {pipeline}-grpo)"] == "Failed"
    assert "eval" not in rows  # never submitted: the stage before it failed


@needs_kubectl
def test_status_reads_a_single_jobset_pipeline_by_its_name():
    from showwork import status

    server = FakeApiServer(polls=1)
    js = submit.jobset(render("hybrid-v5e-16"))
    kube(server).create_jobset(js)
    kube(server).jobset_state(js["metadata"]["name"])  # the fake marks it Completed on its first read
    plant_jobs(server, js["metadata"]["name"], "report", 1, ["Succeeded"])
    rows = status.cluster_stages(js["metadata"]["name"], "showwork", api_client=kube(server).api)
    assert list(rows) == ["data-prep", "sft", "grpo", "eval", "report", "(jobset)"]
    assert rows["report"].startswith("succeeded 1") and rows["(jobset)"] == "Completed"


@needs_kubectl
def test_a_flaky_api_server_is_ridden_out_and_a_vanished_stage_ends_the_submission_clearly():
    from kubernetes.client import rest

    from showwork.errors import RunError

    others, stages = submit.split(render("hybrid-v5e-16"))
    server = FakeApiServer()
    answer = server.request
    flaky = iter([503, 503])

    def sometimes_down(method, url, **kw):
        if method == "GET" and "/jobsets/" in url and next(flaky, None):
            return rest.RESTResponse(_HttpResponse(503, "Service Unavailable", b"{}"))
        return answer(method, url, **kw)

    server.request = sometimes_down
    assert submit.submit(kube(server), others, stages, Logger(), sleep=lambda s: None).ok
    gone = FakeApiServer(polls=3)
    kube(gone).create_jobset(stages[0].manifest)
    del gone.objects[f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/showwork/jobsets/{stages[0].manifest['metadata']['name']}"]
    with pytest.raises(RunError, match="is gone"):
        submit._state(kube(gone), stages[0].manifest["metadata"]["name"], Logger(), lambda s: None, 0)
