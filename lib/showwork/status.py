"""Watching a run: JobSet, Job and Pod state per stage from the cluster, plus the
bus markers, as one table. Works without a cluster (markers only) and says so."""

from __future__ import annotations

from dataclasses import dataclass

from showwork.bus import Bus, read_marker


@dataclass
class Row:
    stage: str
    cluster: str  # Job/Pod state, or "-" without a cluster
    bus: str  # "done" with finish time, or "-"


def bus_stages(bus: Bus) -> dict[str, str]:
    """Every stage marker on the bus: stage -> 'done (<metrics summary>)'."""
    out = {}
    for key in bus.list(""):
        if key.endswith("/_SUCCESS"):
            stage = key[: -len("/_SUCCESS")]
            marker = read_marker(bus, stage)
            seconds = marker.finished - marker.started if marker else 0
            out[stage] = f"done in {seconds:.0f}s"
    return out


def cluster_stages(jobset_name: str, namespace: str, api_client=None) -> dict[str, str]:
    """replicated job -> 'Job succeeded/active/failed; pods …' from the cluster, for the pipeline's one
    JobSet or, submitted a stage at a time (`jobs.pipeline --submit`), for every JobSet labelled with
    its name."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from showwork import submit
    from showwork.submit import JOBSET_GROUP, JOBSET_VERSION, PIPELINE_LABEL

    api_client = api_client or submit.connect()
    custom = client.CustomObjectsApi(api_client)
    try:
        jobsets = [custom.get_namespaced_custom_object(JOBSET_GROUP, JOBSET_VERSION, namespace, "jobsets", jobset_name)]
    except ApiException as err:
        listed = [] if err.status != 404 else custom.list_namespaced_custom_object(
            JOBSET_GROUP, JOBSET_VERSION, namespace, "jobsets",
            label_selector=f"{PIPELINE_LABEL}={jobset_name}")["items"]
        if not listed:
            raise
        jobsets = sorted(listed, key=lambda js: js["metadata"].get("creationTimestamp") or "")
    out: dict[str, str] = {}
    for js in jobsets:
        out.update(_jobset_rows(js, client.BatchV1Api(api_client), client.CoreV1Api(api_client), namespace,
                                "(jobset)" if len(jobsets) == 1 else f"(jobset {js['metadata']['name']})"))
    return out


def _jobset_rows(jobset: dict, batch, core, namespace: str, label: str) -> dict[str, str]:
    name = jobset["metadata"]["name"]
    jobs = batch.list_namespaced_job(namespace, label_selector=f"jobset.sigs.k8s.io/jobset-name={name}")
    out = {}
    for rj in jobset["spec"]["replicatedJobs"]:
        mine = [j for j in jobs.items if j.metadata.labels.get("jobset.sigs.k8s.io/replicatedjob-name") == rj["name"]]
        if not mine:
            out[rj["name"]] = "waiting (dependsOn)"
            continue
        job = mine[0]
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}").items
        phases = sorted(p.status.phase for p in pods)
        out[rj["name"]] = (f"succeeded {job.status.succeeded or 0}, active {job.status.active or 0}, "
                           f"failed {job.status.failed or 0}; pods {', '.join(phases) or 'none'}")
    conditions = [c["type"] for c in jobset.get("status", {}).get("conditions", []) if c.get("status") == "True"]
    out[label] = ", ".join(conditions) or "running"
    return out


def table(rows: list[Row]) -> str:
    width = max([len(r.stage) for r in rows] + [5])
    cw = max([len(r.cluster) for r in rows] + [7])
    lines = [f"{'stage':<{width}}  {'cluster':<{cw}}  bus", "-" * (width + cw + 12)]
    lines += [f"{r.stage:<{width}}  {r.cluster:<{cw}}  {r.bus}" for r in rows]
    return "\n".join(lines)
