"""The images as built, run as the rendered JobSet's pods run them.

The four images are built from this checkout as skaffold builds them
(scripts/build-images.sh; with no registry reachable, on a Python base built
from Debian's packages). tests/k8s/hybrid-cpu-tiny is k8s/overlays/hybrid-cpu
unchanged but for the recipe (the tiny stand-in); tests/podrunner.py runs
its `kubectl kustomize` output as containers, pod by pod, with each pod's
image, args, env, volumes and security context, and judges each pod's end
by the rendered pod failure policy. Where docker is missing the tests skip,
except under SHOWWORK_REQUIRE_CONTAINERS=1 (CI sets it), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO, job_env
from podrunner import Runner, jobset, stop_after
from showwork.bus import Bus

pytestmark = pytest.mark.containers  # its own CI step: make test-containers

TESTS_K8S = REPO / "tests" / "k8s"
REQUIRED = os.environ.get("SHOWWORK_REQUIRE_CONTAINERS") == "1"


def _unavailable(why: str):
    if REQUIRED:
        pytest.fail(f"SHOWWORK_REQUIRE_CONTAINERS=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def images():
    """The base and four stage images (:local), built from this checkout."""
    if shutil.which("docker") is None or shutil.which("kubectl") is None:
        _unavailable("docker or kubectl is not installed")
    if subprocess.run(["docker", "info"], capture_output=True).returncode:
        _unavailable("the docker daemon is not running")
    # The official base (the Dockerfile's digest-pinned default) where a registry answers; else Debian's.
    default = re.search(r"^ARG PYTHON_BASE=(\S+)$", (REPO / "images" / "base.Dockerfile").read_text(), re.M)[1]
    try:
        official = subprocess.run(["docker", "pull", "-q", default], capture_output=True, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        official = False
    build = [str(REPO / "scripts" / "build-images.sh")] + ([] if official else ["--debian-base"])
    done = subprocess.run(build, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout.strip()


def render(overlay: str) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(TESTS_K8S / overlay)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def weights(bus: Bus, key: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(bus.read_bytes(key))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The same recipe and tier as local processes (`jobs.pipeline`, as `make demo` runs it)."""
    root = tmp_path_factory.mktemp("local")
    config = root / "config"
    config.mkdir()
    docs = render("hybrid-cpu-tiny")
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("showwork-recipes"):
            for key in ("hybrid.yaml", "tier.yaml"):
                (config / key).write_text(d["data"][key])
    done = subprocess.run([sys.executable, "-m", "jobs.pipeline", str(config / "hybrid.yaml"),
                           str(config / "tier.yaml"), "--root", str(root / "bus"), "--run-id", "hybrid-001"],
                          cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return Bus(str(root / "bus" / "hybrid-001"))


@pytest.fixture(scope="module")
def pvc_run(images, tmp_path_factory):
    """The tiny hybrid-cpu JobSet as containers, its bus the PersistentVolumeClaim (a host directory)."""
    work = tmp_path_factory.mktemp("pvc")
    bus_dir = work / "bus"
    bus_dir.mkdir()
    runner = Runner(render("hybrid-cpu-tiny"), bus_dir, work)
    return runner, runner.run(), Bus(str(bus_dir / "hybrid-001"))


def same_report(a: Bus, b: Bus):
    ma, mb = a.read_json("report/metrics.json"), b.read_json("report/metrics.json")
    for m in (ma, mb):
        m.pop("generated_at", None), m.pop("run", None)
    assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True)


def docker_flags(runner: Runner, job: str) -> list[str]:
    (rj,) = [r for r in jobset(runner.docs)["spec"]["replicatedJobs"] if r["name"] == job]
    return runner.docker_run(rj, 0 if job == "eval" else None, "probe")


def test_the_rendered_jobset_runs_as_containers_to_the_local_pipelines_report(pvc_run, local_run):
    """Every replicated job completes in dependsOn order; every pod ran read-only as 10001 with every
    capability dropped and no network; the two eval shards ran as two pods at once; the report is the
    one the same recipe gives as local processes."""
    runner, results, bus = pvc_run
    assert results == {j: "Complete" for j in ("data-prep", "sft", "grpo", "eval", "report")}, \
        [(p.job, p.index, p.exit_code, p.log[-1500:]) for p in runner.pods if p.exit_code]
    assert sorted((p.job, p.index or 0, p.exit_code) for p in runner.pods) == [
        ("data-prep", 0, 0), ("eval", 0, 0), ("eval", 1, 0), ("grpo", 0, 0), ("report", 0, 0), ("sft", 0, 0)]
    shards = [p for p in runner.pods if p.job == "eval"]
    assert max(p.started for p in shards) < min(p.started + p.seconds for p in shards)  # side by side
    for job in ("data-prep", "sft", "grpo", "eval", "report"):
        flags = " ".join(docker_flags(runner, job))
        for needed in ("--read-only", "--user 10001:10001", "--cap-drop ALL", "--security-opt no-new-privileges",
                       "--network none", "/tmp:rw,size="):
            assert needed in flags, (job, needed, flags)
    assert set(runner.injected) == {"JOB_COMPLETION_INDEX", "network", "persistentVolumeClaim"}, runner.injected
    assert all(bus.exists(f"eval/{m}/shard-{i}-of-2/_SUCCESS") for m in ("base", "sft", "grpo") for i in range(2))
    same_report(bus, local_run)
    # The images hold what the lock pins: the markers record the packages each stage ran with.
    versions = bus.read_json("sft/_SUCCESS")["versions"]
    assert versions["jax"] == "0.10.2" and versions["showwork"] == "0.1.0", versions


def test_a_sigtermed_sft_pod_is_restarted_by_the_policy_and_the_run_ends_as_uninterrupted(
        images, local_run, gcs_server, tmp_path):
    """The bus on fake-gcs-server. The SFT container gets SIGTERM after its second step (`docker stop`
    with the pod's grace period, as a drain or a preemption ends a pod): it saves a checkpoint and
    exits 75; the pod (DisruptionTarget) is retried without counting, as the rendered podFailurePolicy
    says; the new pod resumes; SFT's weights and the report are the uninterrupted run's."""
    docs = render("hybrid-cpu-gcs")
    (sft,) = [r for r in jobset(docs)["spec"]["replicatedJobs"] if r["name"] == "sft"]
    grace = sft["template"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    bus_dir = tmp_path / "bus"
    bus_dir.mkdir()
    runner = Runner(docs, bus_dir, tmp_path, network="host",
                    env_overrides={"STORAGE_EMULATOR_HOST": gcs_server.url},
                    faults={("sft", 0): stop_after("sft step", 2, grace)})
    results = runner.run()
    assert results == {j: "Complete" for j in ("data-prep", "sft", "grpo", "eval", "report")}, \
        [(p.job, p.index, p.exit_code, p.log[-1500:]) for p in runner.pods if p.exit_code]
    assert {"STORAGE_EMULATOR_HOST", "network", "JOB_COMPLETION_INDEX"} <= set(runner.injected), runner.injected
    sft_pods = [p for p in runner.pods if p.job == "sft"]
    assert [(p.exit_code, p.disrupted, p.outcome) for p in sft_pods] == [(75, True, "retry"), (0, False, "complete")]
    assert '"event": "preempted; checkpoint saved, exiting for a restart"' in sft_pods[0].log
    assert '"event": "resuming from checkpoint"' in sft_pods[1].log
    bus = Bus("gs://showwork-test/containers/hybrid-001")
    for key in ("sft/model/model.safetensors", "grpo/s-0/model/model.safetensors"):
        ours, theirs = weights(bus, key), weights(local_run, key)
        assert ours.keys() == theirs.keys()
        for k in ours:
            np.testing.assert_array_equal(ours[k], theirs[k], err_msg=f"{key}: {k}")
    same_report(bus, local_run)


def test_the_packaged_270m_loads_inside_a_read_only_pod(images, tmp_path):
    """The Gemma 3 270M GGUF package assembles its file and the model converts, inside the SFT image
    run as the pods run it (read-only root, user 10001, /tmp the only writable place)."""
    code = ("from showwork.model import loader; m = loader.load('gemma3-270m'); "
            "print('loaded', m.config.num_layers, m.tokenizer.vocab_size)")
    done = subprocess.run(["docker", "run", "--rm", "--read-only", "--user", "10001:10001", "--cap-drop", "ALL",
                           "--security-opt", "no-new-privileges", "--network", "none",
                           "--tmpfs", "/tmp:rw,size=4g,mode=1777", "--entrypoint", "python",
                           "showwork-sft:local", "-c", code], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-3:] == ["loaded", "18", "262144"], done.stdout


def test_the_code_reward_table_inside_the_grpo_image_run_as_a_pod(images):
    """tests/code_cases.py's hostile completions, scored inside the GRPO image as its pods run
    (uid 10001, read-only root, every capability dropped): the same scores, limits and reasons as on
    the host, where the sandbox drops from root to nobody instead."""
    from code_cases import check_table

    done = subprocess.run(["docker", "run", "--rm", "--read-only", "--user", "10001:10001", "--cap-drop", "ALL",
                           "--security-opt", "no-new-privileges", "--tmpfs", "/tmp:rw,size=256m,mode=1777",
                           "-v", f"{REPO / 'tests' / 'code_cases.py'}:/cases/code_cases.py:ro",
                           "--entrypoint", "python", "showwork-grpo-session:local", "/cases/code_cases.py"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["uid"] == 10001
    check_table(result)
