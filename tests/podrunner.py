"""Run a rendered JobSet's pods as containers, the way its manifests say they run.

The input is `kubectl kustomize` output. Each replicated job runs after the jobs
its `dependsOn` names; each pod is one `docker run` of the container's image
with its command and args ($(VAR) expanded as the kubelet does), its env
(`envFrom` ConfigMaps, then `env` values), its ConfigMap volumes (files,
read-only), its `emptyDir`s (tmpfs of the size limit), the PersistentVolumeClaim
as a host directory, and its security context (`--read-only`, `--user
uid:gid`, dropped capabilities, no new privileges), CPU and memory limits.
Indexed jobs run their pods in parallel, each with `JOB_COMPLETION_INDEX`.

A pod that ends is judged as the Job controller judges it (k8s_rules.job_outcome:
exit 0 is Succeeded and never reaches the policy; otherwise the first
`podFailurePolicy` rule that matches the exit code, or DisruptionTarget for a
pod the runner disrupted, decides whether it is retried, counted or fails the Job).

What the manifests do not carry and the runner must supply is listed in
`Runner.injected` and printed when a run starts: every env override (an
emulator's address), the network mode, the PVC's host directory (opened to
every user as fsGroup opens it to the pods' group), the completion index.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from k8s_rules import Ending, job_outcome
from showwork.submit import in_order, jobset


def expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) references as the kubelet expands them (unknown ones stay as written)."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def quantity_bytes(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for unit, factor in units.items():
        if value.endswith(unit):
            return int(float(value[:-len(unit)]) * factor)
    return int(value)


@dataclass
class Pod:
    job: str
    index: int | None
    attempt: int
    exit_code: int | None = None
    disrupted: bool = False
    log: str = ""
    started: float = 0.0  # time.monotonic() when docker run was called
    seconds: float = 0.0
    outcome: str = ""  # what the Job controller did with it (k8s_rules.JobOutcome.action)


@dataclass
class Runner:
    docs: list[dict]
    bus_dir: Path  # the PersistentVolumeClaim's contents
    work: Path  # ConfigMap files and container names live here
    env_overrides: dict[str, str] = field(default_factory=dict)  # e.g. SHOWWORK_ROOT for a GCS bus
    network: str = "none"
    injected: dict[str, str] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    # (job name, attempt) -> a function called with the running container's name (fault injection)
    faults: dict[tuple[str, int], object] = field(default_factory=dict)

    def __post_init__(self):
        for key in self.env_overrides:
            self.injected[key] = "an env value the test sets over the manifest's"
        self.injected["network"] = (f"docker --network {self.network}: no cluster network here"
                                    + (" (host: to reach an emulator on loopback)" if self.network == "host" else ""))

    def configmap(self, name: str) -> dict[str, str]:
        (data,) = [d.get("data", {}) for d in self.docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
        return data

    def env(self, pod_spec: dict, index: int | None) -> dict[str, str]:
        container = pod_spec["containers"][0]
        env: dict[str, str] = {}
        for src in container.get("envFrom", []):
            env.update(self.configmap(src["configMapRef"]["name"]))
        env.update(self.env_overrides)
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(item["value"], env)
            elif not item["valueFrom"].get("secretKeyRef", {}).get("optional"):
                raise ValueError(f"{container['name']}: env {item['name']} needs a value the runner cannot give")
        if index is not None:  # the Job controller sets it in every pod of an Indexed Job
            env["JOB_COMPLETION_INDEX"] = str(index)
            self.injected["JOB_COMPLETION_INDEX"] = "the pod's completion index (Indexed Job)"
        return env

    def volumes(self, pod_spec: dict) -> list[str]:
        out, mounts = [], {m["name"]: m for m in pod_spec["containers"][0].get("volumeMounts", [])}
        for volume in pod_spec.get("volumes", []):
            mount = mounts.get(volume["name"])
            if mount is None:
                continue
            path = mount["mountPath"]
            if "configMap" in volume:
                folder = self.work / "configmaps" / volume["configMap"]["name"]
                folder.mkdir(parents=True, exist_ok=True)
                for key, text in self.configmap(volume["configMap"]["name"]).items():
                    (folder / key).write_text(text)
                out += ["-v", f"{folder}:{path}:ro"]
            elif "emptyDir" in volume:
                size = quantity_bytes(volume["emptyDir"].get("sizeLimit", "1Gi"))
                out += ["--tmpfs", f"{path}:rw,size={size},mode=1777"]
            elif "persistentVolumeClaim" in volume:
                # A PVC mounted with fsGroup is writable by the pod's group; a host directory has no
                # fsGroup, so it is opened to every user instead.
                self.bus_dir.chmod(0o777)
                self.injected["persistentVolumeClaim"] = f"host directory {self.bus_dir}, mode 0777 for fsGroup"
                out += ["-v", f"{self.bus_dir}:{path}"]
            else:
                raise ValueError(f"volume {volume['name']}: a kind the runner does not know")
        return out

    def security(self, pod_spec: dict) -> list[str]:
        pod_ctx, ctx = pod_spec.get("securityContext", {}), pod_spec["containers"][0].get("securityContext", {})
        uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup", uid))
        out = ["--user", f"{uid}:{gid}"] if uid is not None else []
        if ctx.get("readOnlyRootFilesystem"):
            out.append("--read-only")
        for cap in ctx.get("capabilities", {}).get("drop", []):
            out += ["--cap-drop", cap]
        if ctx.get("allowPrivilegeEscalation") is False:
            out += ["--security-opt", "no-new-privileges"]
        return out

    def docker_run(self, rj: dict, index: int | None, name: str) -> list[str]:
        pod_spec = rj["template"]["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        env = self.env(pod_spec, index)
        limits = container.get("resources", {}).get("limits", {})
        cmd = ["docker", "run", "--name", name, "--network", self.network, *self.security(pod_spec),
               *self.volumes(pod_spec)]
        if "memory" in limits:
            cmd += ["--memory", str(quantity_bytes(limits["memory"]))]
        if "cpu" in limits:
            cmd += ["--cpus", str(limits["cpu"])]
        for key, value in env.items():
            cmd += ["-e", f"{key}={value}"]
        command = container.get("command")
        if command:
            cmd += ["--entrypoint", command[0]]
        cmd.append(container["image"])
        return cmd + [expand(a, env) for a in (command or [])[1:] + container.get("args", [])]

    def run_pod(self, rj: dict, index: int | None, attempt: int) -> Pod:
        name = f"{self.work.name}-{rj['name']}-{index if index is not None else 0}-{attempt}"
        pod = Pod(rj["name"], index, attempt)
        start = pod.started = time.monotonic()
        cmd = self.docker_run(rj, index, name)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)  # one left by an interrupted run
        started = subprocess.run(cmd[:2] + ["-d"] + cmd[2:], capture_output=True, text=True)
        if started.returncode:
            raise RuntimeError(f"docker run {name}: {started.stderr}")
        fault = self.faults.get((rj["name"], attempt))
        if fault is not None and index in (None, 0):
            pod.disrupted = bool(fault(name))
        waited = subprocess.run(["docker", "wait", name], capture_output=True, text=True, timeout=1800)
        pod.exit_code = int(waited.stdout.strip())
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        pod.log = logs.stdout + logs.stderr
        pod.seconds = time.monotonic() - start
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        self.pods.append(pod)
        return pod

    def run_index(self, rj: dict, index: int | None, outcome: dict) -> None:
        """One completion of a Job: pods until one succeeds, the policy fails the Job, or retries run out."""
        job_spec = rj["template"]["spec"]
        container = job_spec["template"]["spec"]["containers"][0]["name"]
        failures, attempt = 0, 0
        while True:
            pod = self.run_pod(rj, index, attempt)
            attempt += 1
            ending = Ending(f"exit {pod.exit_code}", "Succeeded" if pod.exit_code == 0 else "Failed", pod.exit_code,
                            ("DisruptionTarget",) if pod.disrupted else ())
            judged = job_outcome(job_spec, container, ending, failures)
            pod.outcome = judged.action
            if judged.action == "complete":
                outcome[index] = "Succeeded"
                return
            if judged.action == "fail":
                outcome[index] = f"{judged.reason} (exit {pod.exit_code})"
                return
            failures += judged.action == "retry-counted"

    def run(self) -> dict[str, str]:
        """Every replicated job in dependsOn order; stops at the first that does not complete."""
        results = {}
        for rj in in_order(jobset(self.docs)):
            self.volumes(rj["template"]["spec"]["template"]["spec"])  # records what the PVC needs
            if rj["template"]["spec"].get("completionMode") == "Indexed":
                self.injected["JOB_COMPLETION_INDEX"] = "the pod's completion index (Indexed Job)"
        print("podrunner supplies what the manifests do not carry:", json.dumps(self.injected, indent=1), flush=True)
        for rj in in_order(jobset(self.docs)):
            job_spec = rj["template"]["spec"]
            indexed = job_spec.get("completionMode") == "Indexed"
            indices = list(range(job_spec.get("completions", 1))) if indexed else [None]
            outcome: dict = {}
            threads = [threading.Thread(target=self.run_index, args=(rj, i, outcome)) for i in indices]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results[rj["name"]] = "Complete" if all(v == "Succeeded" for v in outcome.values()) else json.dumps(
                outcome)
            if results[rj["name"]] != "Complete":
                break
        return results


def stop_after(event: str, count: int, grace: int):
    """A fault: once the container has logged `event` `count` times, `docker stop -t grace` it (SIGTERM,
    then SIGKILL after the grace period, as the kubelet ends a pod that is drained or preempted)."""

    def fault(name: str) -> bool:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            done = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
            logs = done.stdout + done.stderr
            if logs.count(f'"event": "{event}"') >= count:
                subprocess.run(["docker", "stop", "-t", str(grace), name], capture_output=True)
                return True
            time.sleep(0.5)
        raise TimeoutError(f"{name} never logged {count} x {event!r}")

    return fault
