"""Kubernetes packaging, proven offline with real tools: kustomize renders, schemas
validate, policies hold, Dockerfiles lint, and the CPU overlay's rendered commands
run as local processes in dependsOn order on a local bus."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SHARED, job_env, simulated_chips
from podrunner import expand
from showwork import config, stages
from showwork.submit import in_order, jobset

RECIPES = REPO / "k8s" / "base" / "recipes"

OVERLAYS = sorted(p.name for p in (REPO / "k8s" / "overlays").iterdir() if p.is_dir())
DOCKERFILES = sorted((REPO / "images").glob("*.Dockerfile"))
KUBECTL = shutil.which("kubectl")
TPU_CHIPS_PER_HOST = {"2x2": 4, "2x4": 8, "4x4": 4}  # GKE TPU v5e: ct5lp-hightpu-4t / -8t
TPU_HOSTS = {"2x2": 1, "2x4": 1, "4x4": 4}

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")


def shared(path: str) -> Path:
    full = SHARED / path
    if not full.exists():
        pytest.skip(f"{full} is missing: these checks need ../shared beside the repository (CI has it)")
    return full


_rendered: dict[str, list[dict]] = {}


def render(overlay: str) -> list[dict]:
    if overlay not in _rendered:
        out = subprocess.run([KUBECTL, "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        _rendered[overlay] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return copy.deepcopy(_rendered[overlay])


def pod_specs(js):
    for rj in js["spec"]["replicatedJobs"]:
        yield rj["name"], rj["template"]["spec"]["template"]["spec"]


def configmaps(docs) -> dict[str, dict]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


def run_settings(docs, spec) -> dict[str, str]:
    env = {}
    cms = configmaps(docs)
    for c in spec["containers"]:
        for src in c.get("envFrom", []):
            env.update(cms[src["configMapRef"]["name"]])
        env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


def tier_of(docs) -> dict:
    recipes = next(data for name, data in configmaps(docs).items() if name.startswith("showwork-recipes"))
    return yaml.safe_load(recipes["tier.yaml"])["tier"]


# ---------------------------------------------------------------- render and validate


def test_overlays_cover_the_documented_set():
    assert {"hybrid-cpu", "hybrid-v5e-8", "grpo-baseline-v5e-8", "efficiency-v5e-4", "relay-consensus-v5e-8",
            "eval-only-cpu", "eval-only-v5e-8", "hybrid-v5e-16"} <= set(OVERLAYS)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_objects_validate_strictly(overlay):
    import kubernetes_validate

    for doc in render(overlay):
        if doc["kind"] != "JobSet":
            kubernetes_validate.validate(doc, "1.33.0", strict=True)


def strict(schema):
    """The CRD schema with unknown properties forbidden, as `kubectl --validate=strict` would."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobset_validates_against_its_crd(overlay):
    import jsonschema

    crd = yaml.safe_load(shared("schemas/jobset-v0.12.0-crd.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2")
    schema = strict(version["schema"]["openAPIV3Schema"])
    js = jobset(render(overlay))
    assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(js), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message[:200]}" for e in errors[:5]]


def test_skaffold_validates_against_its_schema():
    import jsonschema

    schema = json.loads(shared("schemas/skaffold-v4beta13.json").read_text())
    doc = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
    assert not errors, [e.message[:200] for e in errors[:5]]
    built = {a["image"] for a in doc["build"]["artifacts"]}
    for artifact in doc["build"]["artifacts"]:
        assert (REPO / artifact["docker"]["dockerfile"]).exists()
    assert {"showwork-data-prep", "showwork-sft", "showwork-grpo-session", "showwork-eval"} <= built
    assert any(s["groupKind"] == "JobSet.jobset.x-k8s.io" for s in doc["resourceSelector"]["allow"])
    assert {p["name"] for p in doc["profiles"]} >= {"kind", "gke-v5e-8"}
    gke = next(p for p in doc["profiles"] if p["name"] == "gke-v5e-8")
    assert gke["build"]["platforms"] == ["linux/amd64"]  # TPU hosts are x86-64


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    out = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- policy


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_restricted_pod_security_everywhere(overlay):
    for name, spec in pod_specs(jobset(render(overlay))):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False
        mounts = set()
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            requests, limits = c["resources"]["requests"], c["resources"]["limits"]
            # Memory (and chips) are held exactly; TPU pods have no CPU limit (it throttles XLA
            # compilation); ephemeral storage is requested and bounded by the emptyDir's sizeLimit.
            assert requests["memory"] == limits["memory"] and requests.get("google.com/tpu") == limits.get(
                "google.com/tpu"), name
            assert ("cpu" not in limits) == ("google.com/tpu" in limits), name
            assert "cpu" not in limits or limits["cpu"] == requests["cpu"], name
            assert "ephemeral-storage" in requests, name
            mounts |= {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/tmp", "/dev/shm"} <= mounts, name
        assert not any("hostPath" in v for v in spec["volumes"]), name


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tpu_placement_is_consistent(overlay):
    docs = render(overlay)
    tier = tier_of(docs)
    for name, spec in pod_specs(jobset(docs)):
        selector = spec.get("nodeSelector", {})
        chips = spec["containers"][0]["resources"]["limits"].get("google.com/tpu")
        if tier["platform"] != "tpu" or name in ("data-prep", "report"):
            assert chips is None and "cloud.google.com/gke-tpu-topology" not in selector, name
            continue
        topology = selector["cloud.google.com/gke-tpu-topology"]
        assert selector["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5-lite-podslice"
        assert int(chips) == TPU_CHIPS_PER_HOST[topology], (name, topology, chips)
        job = next(rj for rj in jobset(docs)["spec"]["replicatedJobs"] if rj["name"] == name)["template"]["spec"]
        if name == "eval":
            # Eval shards are independent pods: one host each, the tier's eval mesh.
            assert TPU_HOSTS[topology] == 1, (name, topology)
            mesh = tier.get("eval_mesh", tier["mesh"])
        else:
            # Training spans the slice: one pod per host, all at once (JobSet + jax.distributed).
            assert tier["hosts"] == TPU_HOSTS[topology], (name, topology)
            if tier["hosts"] > 1:
                assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == tier["hosts"]
            mesh = tier["mesh"]
        assert math.prod(mesh["shape"]) == TPU_CHIPS_PER_HOST[topology] * TPU_HOSTS[topology], (name, mesh)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_commands_configmaps_and_recipes_are_real(overlay):
    docs = render(overlay)
    js = jobset(docs)
    cms = configmaps(docs)
    names = [rj["name"] for rj in js["spec"]["replicatedJobs"]]
    for rj in js["spec"]["replicatedJobs"]:
        for dep in rj.get("dependsOn", []):
            assert dep["name"] in names[: names.index(rj["name"])] and dep["status"] == "Complete"
    assert names[0] == "data-prep" and names[-2:] == ["eval", "report"]
    for name, spec in pod_specs(js):
        for volume in spec["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in cms, volume
        container = spec["containers"][0]
        image = container["image"].rsplit("/", 1)[-1].split(":")[0].split("@")[0].removeprefix("showwork-")
        dockerfile = REPO / "images" / f"{image}.Dockerfile"
        assert dockerfile.exists(), container["image"]
        module = entrypoint_module(dockerfile)
        if name == "report":
            assert container["command"][-1] == "jobs.report"
            module = "jobs.report"
        assert (REPO / (module.replace(".", "/") + ".py")).exists(), module
        env = run_settings(docs, spec)
        recipe_arg = expand(container["args"][0], env)
        key = recipe_arg.removeprefix("/config/")
        recipes = next(data for n, data in cms.items() if n.startswith("showwork-recipes"))
        assert key in recipes and (REPO / "k8s" / "base" / "recipes" / key).exists(), recipe_arg
        assert expand(container["args"][1], env) == "/config/tier.yaml" and "tier.yaml" in recipes
    eval_job = next(rj for rj in js["spec"]["replicatedJobs"] if rj["name"] == "eval")["template"]["spec"]
    assert eval_job["completionMode"] == "Indexed"
    assert eval_job["completions"] == eval_job["parallelism"] == tier_of(docs)["eval_shards"]


# Stages of a recipe -> the pipeline job that runs them, and the jobs that end at once (exit 0) for a
# recipe without their stage (cli.absent).
JOB_OF_STAGE = {"data": "data-prep", "sft": "sft", "self-teach": "self-teach", "grpo": "grpo", "eval": "eval",
                "report": "report"}
SKIPPABLE = {"sft", "grpo"}
LOCAL_ONLY = {"self-teach"}  # the README says so: the JobSet has no self-teach job


def readme_pairings() -> set[tuple[str, str]]:
    from recipes import matrix

    return {(c.recipe, c.tier) for c in matrix.readme_cells((REPO / "README.md").read_text())}


@needs_kubectl
@pytest.mark.parametrize("recipe, tier", sorted(readme_pairings()))
def test_every_readme_recipe_runs_in_the_pipeline_jobset_of_its_tier_or_is_marked_local_only(recipe, tier, tmp_path):
    """A recipe without an overlay runs in its tier's pipeline JobSet with SHOWWORK_RECIPE set: every
    stage it has has a job, and every job it has no stage for ends at once (sft, grpo: cli.absent)."""
    readme = (REPO / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| ") and f"`{recipe}`" in line.split("|")[1])
    if recipe in LOCAL_ONLY:
        assert "local only" in row
        return
    import os

    k8s = os.path.relpath(REPO / "k8s", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {k8s}/base\ncomponents:\n  - {k8s}/components/{tier}\n"
        f"configMapGenerator:\n  - name: showwork-run\n    behavior: merge\n    literals:\n"
        f"      - SHOWWORK_RECIPE={recipe}\n")
    out = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    jobs = {rj["name"] for rj in jobset(docs)["spec"]["replicatedJobs"]}
    cfg = config.load(RECIPES / f"{recipe}.yaml", REPO / "k8s" / "components" / tier / "tier.yaml")
    needed = {JOB_OF_STAGE[s.name] for s in stages.plan(cfg)}
    assert needed <= jobs, (recipe, tier, needed - jobs)
    assert jobs - needed <= SKIPPABLE, (recipe, tier, jobs - needed)
    recipes = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("showwork-recipes"))
    assert f"{recipe}.yaml" in recipes["data"]


@pytest.mark.parametrize("module, recipe, tier, devices", [
    ("jobs.sft", "trajectory", "v5e-4", 4), ("jobs.sft", "math-code", "v5e-8", 8),
    ("jobs.grpo_session", "sft-full", "v5e-8", 8), ("jobs.self_teach", "hybrid", "cpu", 1)])
def test_a_training_job_whose_stage_the_recipe_lacks_ends_at_once_with_0(module, recipe, tier, devices, tmp_path):
    env = job_env(XLA_FLAGS=simulated_chips(devices), SHOWWORK_LOG_FORMAT="json")
    done = subprocess.run([sys.executable, "-m", module, str(RECIPES / f"{recipe}.yaml"),
                           str(REPO / "k8s" / "components" / tier / "tier.yaml"), "--root", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped: the recipe has no such stage" in done.stdout + done.stderr
    assert not any(tmp_path.rglob("_SUCCESS"))  # nothing written, nothing marked done


def entrypoint_module(dockerfile: Path) -> str:
    match = re.search(r'ENTRYPOINT \["python", "-m", "([\w.]+)"\]', dockerfile.read_text())
    assert match, f"{dockerfile} has no python -m ENTRYPOINT"
    return match.group(1)



# ---------------------------------------------------------------- the manifests, executed

# k8s/overlays/hybrid-cpu's recipe shrunk to the tiny model (also what tests/test_containers.py runs).
TINY_HYBRID = (REPO / "tests" / "k8s" / "hybrid-cpu-tiny" / "hybrid.yaml").read_text()


def differing_paths(a, b, prefix: tuple = ()) -> set[tuple]:
    """Key paths where two YAML documents differ (a dict key present in one only counts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(differing_paths(a.get(k), b.get(k), prefix + (k,)) for k in set(a) | set(b)))
    return set() if a == b else {prefix}


def test_the_manifest_runs_recipe_is_hybrid_changed_only_where_the_recipe_matrix_may_change_it():
    """The container and manifest runs use hybrid.yaml as shipped but for what the recipe matrix may
    shrink (model name, sizes, steps, lengths, samples): rewards, learning rates, methods, models
    evaluated and everything else are the recipe's."""
    from recipes.matrix import ALLOWED

    shipped = yaml.safe_load((REPO / "k8s" / "base" / "recipes" / "hybrid.yaml").read_text())
    changed = differing_paths(shipped, yaml.safe_load(TINY_HYBRID))
    assert ("model", "name") in changed
    assert changed <= ALLOWED, sorted(changed - ALLOWED)


@needs_kubectl
def test_hybrid_cpu_manifests_run_locally_in_dependency_order(tmp_path, gcs_server, monkeypatch):
    root = f"gs://showwork-test/k8s-{uuid.uuid4().hex[:8]}"
    docs = render("hybrid-cpu")
    js = jobset(docs)
    recipes = next(data for n, data in configmaps(docs).items() if n.startswith("showwork-recipes"))
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for key, text in recipes.items():
        (config_dir / key).write_text(text)
    # Same command lines, tiny weights: only the recipe file's contents shrink.
    assert yaml.safe_load(recipes["hybrid.yaml"])["recipe"] == "hybrid"
    (config_dir / "hybrid.yaml").write_text(TINY_HYBRID)

    order, compiled = [], {}
    for rj in in_order(js):
        job_spec = rj["template"]["spec"]
        pod = job_spec["template"]["spec"]
        container = pod["containers"][0]
        env = run_settings(docs, pod)
        # The bus: the rendered SHOWWORK_ROOT (/bus, the kind PVC mount) swapped
        # for a bucket on fake-gcs-server, the GKE overlays' backend: every
        # stage, checkpoints included, talks to it as it would to GCS.
        assert env["SHOWWORK_ROOT"] == "/bus"
        env["SHOWWORK_ROOT"] = root
        env = {name: expand(value, env) for name, value in env.items()}  # as the kubelet does: $(SHOWWORK_ROOT)
        env["STORAGE_EMULATOR_HOST"] = gcs_server.url
        image = container["image"].rsplit("/", 1)[-1].split(":")[0].split("@")[0].removeprefix("showwork-")
        module = entrypoint_module(REPO / "images" / f"{image}.Dockerfile")
        command = container.get("command") or [sys.executable, "-m", module]
        if container.get("command"):
            command = [sys.executable, *container["command"][1:]]
        args = [expand(a, env).replace("/config/", f"{config_dir}/") for a in container["args"]]
        indices = range(job_spec.get("completions", 1)) if job_spec.get("completionMode") == "Indexed" else [None]
        for index in indices:
            extra = {**env, "SHOWWORK_CACHE": str(tmp_path / "cache")}
            if index is not None:
                extra["JOB_COMPLETION_INDEX"] = str(index)
            out = subprocess.run(command + args, cwd=REPO, env=job_env(**extra), capture_output=True, text=True,
                                 timeout=900)
            assert out.returncode == 0, f"{rj['name']} (index {index}) failed:\n{out.stderr[-3000:]}"
            compiled[(rj["name"], index)] = [json.loads(line) for line in out.stderr.splitlines()
                                             if '"event": "xla programs"' in line]
        order.append(rj["name"])
    assert order == ["data-prep", "sft", "grpo", "eval", "report"]

    from showwork.bus import Bus

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    bus = Bus(f"{root}/hybrid-001")
    assert bus.list("grpo/checkpoints") and bus.list("sft/checkpoints")
    metrics = bus.read_json("report/metrics.json")
    assert metrics["model_order"] == ["base", "sft", "grpo"]
    shards = tier_of(docs)["eval_shards"]
    assert shards == 2 and all(bus.exists(f"eval/base/shard-{i}-of-2/_SUCCESS") for i in range(2))
    assert bus.exists("grpo/s-0/model/model.safetensors") and bus.exists("sft/model/model.safetensors")
    # The pods' XLA cache is on the bus ($(SHOWWORK_ROOT)/xla-cache): the second eval shard, a new pod,
    # loads the programs the first one compiled.
    assert Bus(root).list("xla-cache")
    (first,), (second,) = compiled[("eval", 0)], compiled[("eval", 1)]
    assert first["cache"] == second["cache"] == f"{root}/xla-cache"
    assert second["programs_from_cache"] > 0 and second["programs_compiled"] < first["programs_compiled"], compiled


def test_status_without_a_cluster_shows_bus_markers(tmp_path):
    from showwork.bus import Bus, Marker, write_marker

    bus = Bus(str(tmp_path / "r-001"))
    bus.write_text("data/train.jsonl", "{}\n")
    write_marker(bus, Marker(stage="data", digest="d", outputs=["data/train.jsonl"], started=1.0, finished=4.0))
    out = subprocess.run([sys.executable, "-m", "jobs.status", "r-001", "--root", str(tmp_path)], cwd=REPO,
                         env=job_env(KUBECONFIG=str(tmp_path / "missing")), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "cluster: unavailable" in out.stderr and "bus markers only" in out.stderr
    assert "data" in out.stdout and "done in 3s" in out.stdout
    nothing = subprocess.run([sys.executable, "-m", "jobs.status", "nope", "--root", str(tmp_path)], cwd=REPO,
                             env=job_env(KUBECONFIG=str(tmp_path / "missing")), capture_output=True, text=True,
                             timeout=60)
    assert nothing.returncode == 1 and "nothing known about run 'nope'" in nothing.stderr


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kind_overlays_run_the_images_kind_demo_loads(overlay):
    """On the cpu tier (kind, no registry) every image is the tag scripts/kind-demo.sh builds and
    `kind load`s, with IfNotPresent: an untagged image would mean `Always` and ErrImagePull."""
    docs = render(overlay)
    if tier_of(docs)["name"] != "cpu":
        pytest.skip("a GKE overlay: images come from a registry")
    script = (REPO / "scripts" / "kind-demo.sh").read_text()
    loaded = set(re.findall(r'kind load docker-image --name showwork "(showwork-\$\{image\}:local)"', script))
    built = re.search(r"for image in ([a-z -]+); do", script).group(1).split()
    assert loaded and built
    for _, spec in pod_specs(jobset(docs)):
        for c in spec["containers"]:
            name, _, tag = c["image"].partition(":")
            assert tag == "local" and name.removeprefix("showwork-") in built, c["image"]
            assert c["imagePullPolicy"] == "IfNotPresent"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gke_overlays_pull_a_release_image_once_per_node(overlay):
    """On a TPU tier the image is the release's tag, pulled if the node lacks it (IfNotPresent, or
    unset, which Kubernetes resolves to IfNotPresent for a tag other than latest): never Always,
    which would pull the multi-GB image again on every pod restart of every host."""
    docs = render(overlay)
    if tier_of(docs)["name"] == "cpu":
        pytest.skip("a kind overlay: test_kind_overlays_run_the_images_kind_demo_loads")
    for _, spec in pod_specs(jobset(docs)):
        for c in spec["containers"]:
            _, _, tag = c["image"].rsplit("/", 1)[-1].partition(":")  # a registry's :port is not a tag
            assert tag and tag != "latest", c["image"]
            assert c.get("imagePullPolicy", "IfNotPresent") == "IfNotPresent", (c["name"], c.get("imagePullPolicy"))


def image_env() -> dict[str, str]:
    """The ENV the base image sets (every job image builds on it)."""
    text = (REPO / "images" / "base.Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_read_only_pods_have_writable_home_caches_and_bounded_scratch(overlay):
    """HOME, HF_HOME, XDG_CACHE_HOME and SHOWWORK_CACHE lie on a writable emptyDir in every container
    with a read-only root filesystem, and every emptyDir has a size limit."""
    env = image_env()
    assert {"HOME", "HF_HOME", "XDG_CACHE_HOME", "SHOWWORK_CACHE"} <= set(env)
    for name, spec in pod_specs(jobset(render(overlay))):
        for volume in spec["volumes"]:
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), (name, volume["name"])
        writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = [m["mountPath"] for m in c["volumeMounts"] if m["name"] in writable and not m.get("readOnly")]
            values = {**env, **{e["name"]: e["value"] for e in c.get("env", []) if "value" in e}}
            for key in ("HOME", "HF_HOME", "XDG_CACHE_HOME", "SHOWWORK_CACHE"):
                assert any(values[key] == m or values[key].startswith(m.rstrip("/") + "/") for m in mounts), (
                    name, key, values[key])


# ---------------------------------------------------------------- Kueue


def with_component(overlay: str, component: str, tmp_path) -> list[dict]:
    """An overlay composed with a component, as a user composes one (relative paths, as kustomize wants)."""
    import os

    k8s = os.path.relpath(REPO / "k8s", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {k8s}/overlays/{overlay}\ncomponents:\n  - {k8s}/components/{component}\n")
    out = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kueue_objects() -> dict[str, dict]:
    docs = yaml.safe_load_all((REPO / "k8s" / "kueue" / "queues.yaml").read_text())
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def quantity(value) -> float:
    """A Kubernetes quantity (\"100\", \"150Gi\", 8) as a number (bytes for memory)."""
    value = str(value)
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def tolerates(spec: dict, taint: dict) -> bool:
    """The pod tolerates the taint (Kubernetes' toleration matching: key, operator, value, effect)."""
    for t in spec.get("tolerations", []):
        if t.get("effect") not in (None, taint.get("effect")):
            continue
        if t.get("operator", "Equal") == "Exists" and t.get("key") in (None, taint["key"]):
            return True
        if t.get("key") == taint["key"] and t.get("value") == taint.get("value"):
            return True
    return False


def assign_flavor(spec: dict, requests: dict, flavors: list[dict], held: dict, covered: set[str],
                  label_keys: set[str]) -> str | None:
    """The flavor Kueue gives a pod set (kueue's flavorassigner, one resource group): None at once
    when the pod requests a resource the group does not cover; else the first flavor, in the
    ClusterQueue's order, whose taints the pod tolerates, whose node labels match the pod's
    nodeSelector on every key any flavor labels (a selected key the flavor lacks does not match),
    and whose quota, less what `held` holds, fits every request. None when none fits."""
    if any(quantity(v) > 0 and r not in covered for r, v in requests.items()):
        return None
    selector = {k: v for k, v in spec.get("nodeSelector", {}).items() if k in label_keys}
    for flavor in flavors:
        labels = flavor["labels"]
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        if not all(tolerates(spec, taint) for taint in flavor["taints"]):
            continue
        free = {r: quantity(q) - held.get(flavor["name"], {}).get(r, 0.0) for r, q in flavor["quota"].items()}
        if all(quantity(requests.get(r, 0)) <= free.get(r, 0.0) for r in requests if quantity(requests[r]) > 0):
            return flavor["name"]
    return None


def queue_flavors(objects: dict) -> tuple[list[dict], set[str]]:
    """The example ClusterQueue's flavors in its order (name, node labels, taints, quota) and the
    resources its group covers."""
    (queue,) = [v for k, v in objects.items() if k.startswith("ClusterQueue/")]
    (group,) = queue["spec"]["resourceGroups"]
    flavors = []
    for f in group["flavors"]:
        spec = objects[f"ResourceFlavor/{f['name']}"].get("spec", {})
        flavors.append({"name": f["name"], "quota": {r["name"]: r["nominalQuota"] for r in f["resources"]},
                        "labels": spec.get("nodeLabels", {}), "taints": spec.get("nodeTaints", [])})
    return flavors, set(group["coveredResources"])


def admit(js: dict, queue: tuple[list[dict], set[str]]) -> tuple[dict[str, str | None], dict[str, dict[str, float]]]:
    """Kueue's admission of a whole JobSet: each replicated job's pods get a flavor, in order, all
    held at once. Returns (replicated job -> flavor, None where it cannot be admitted; what each
    flavor then holds per resource)."""
    flavors, covered = queue
    label_keys = {k for f in flavors for k in f["labels"]}
    held: dict[str, dict[str, float]] = {}
    chosen = {}
    for rj in js["spec"]["replicatedJobs"]:
        job = rj["template"]["spec"]
        spec = job["template"]["spec"]
        pods = job.get("parallelism", 1) * rj.get("replicas", 1)
        requests = {r: quantity(v) * pods for r, v in spec["containers"][0]["resources"]["requests"].items()}
        flavor = chosen[rj["name"]] = assign_flavor(spec, requests, flavors, held, covered, label_keys)
        if flavor:
            for r, amount in requests.items():
                held.setdefault(flavor, {})[r] = held.get(flavor, {}).get(r, 0.0) + amount
    return chosen, held


@needs_kubectl
@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if not o.endswith("-cpu")])
def test_the_kueue_component_queues_a_jobset_its_example_cluster_queue_can_admit(overlay, tmp_path):
    """Every pod set gets a flavor, TPU pods their topology's and CPU pods (data-prep, report) the
    cpu flavor: a CPU pod given a TPU flavor would get its node labels and wait for ever."""
    objects = kueue_objects()
    js = jobset(with_component(overlay, "kueue", tmp_path))
    labels = js["metadata"]["labels"]
    assert f"LocalQueue/{labels['kueue.x-k8s.io/queue-name']}" in objects
    assert f"WorkloadPriorityClass/{labels['kueue.x-k8s.io/priority-class']}" in objects
    assert f"PriorityClass/{labels['kueue.x-k8s.io/priority-class']}" in objects
    assert all(spec["priorityClassName"] == labels["kueue.x-k8s.io/priority-class"] for _, spec in pod_specs(js))
    deadlines = sum(rj["template"]["spec"]["activeDeadlineSeconds"] for rj in js["spec"]["replicatedJobs"])
    assert deadlines <= int(labels["kueue.x-k8s.io/max-exec-time-seconds"]) < 10 * 86400, (overlay, deadlines)
    queue = queue_flavors(objects)
    flavors = queue[0]
    chosen, _ = admit(js, queue)
    for rj in js["spec"]["replicatedJobs"]:
        spec = rj["template"]["spec"]["template"]["spec"]
        tpu = "google.com/tpu" in spec["containers"][0]["resources"]["requests"]
        flavor = next((f for f in flavors if f["name"] == chosen[rj["name"]]), None)
        assert flavor is not None, f"{overlay}: no flavor admits {rj['name']} beside the rest"
        if tpu:
            assert flavor["labels"] and flavor["labels"].items() <= spec["nodeSelector"].items(), (rj["name"], flavor)
        else:
            assert not flavor["labels"], f"{overlay}: the CPU job {rj['name']} was given TPU flavor {flavor['name']}"


def test_the_flavor_model_follows_kueues_documented_rules():
    """The model above on hand-written cases of Kueue's rules (its flavor-assignment docs): first fit
    in order; taints need tolerations; a nodeSelector key some flavor labels must match; every
    requested resource must be covered; held quota counts."""
    topo = "cloud.google.com/gke-tpu-topology"
    taint = {"key": "google.com/tpu", "value": "present", "effect": "NoSchedule"}
    quota = {"cpu": 8, "memory": "8Gi", "ephemeral-storage": "100Gi", "google.com/tpu": 4}
    bare_tpu = {"name": "v5e-2x2", "quota": quota, "labels": {topo: "2x2"}, "taints": []}
    tpu = {**bare_tpu, "taints": [taint]}
    cpu = {"name": "cpu", "quota": {**quota, "google.com/tpu": 0}, "labels": {}, "taints": []}
    covered, keys = set(quota), {topo}
    cpu_pod = ({}, {"cpu": 1, "memory": quantity("1Gi"), "ephemeral-storage": quantity("10Gi")})
    tpu_spec = {"nodeSelector": {topo: "2x2"},
                "tolerations": [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}]}
    tpu_pod = (tpu_spec, {"cpu": 1, "memory": quantity("1Gi"), "google.com/tpu": 4})
    assert assign_flavor(*cpu_pod, [bare_tpu, cpu], {}, covered, keys) == "v5e-2x2"  # the trap: no taint
    assert assign_flavor(*cpu_pod, [tpu, cpu], {}, covered, keys) == "cpu"  # the taint keeps it off
    assert assign_flavor(*cpu_pod, [cpu, tpu], {"cpu": {"cpu": 8}}, covered, keys) is None  # never spills
    assert assign_flavor(*tpu_pod, [cpu, tpu], {}, covered, keys) == "v5e-2x2"  # no TPU quota in cpu
    assert assign_flavor(*tpu_pod, [cpu, tpu], {"v5e-2x2": {"google.com/tpu": 4}}, covered, keys) is None
    assert assign_flavor({**tpu_spec, "tolerations": []}, tpu_pod[1], [tpu], {}, covered, keys) is None
    other = {**tpu, "labels": {"cloud.google.com/gke-tpu-accelerator": "x"}}  # lacks the selected key
    assert assign_flavor(*tpu_pod, [other], {}, covered, keys | {"cloud.google.com/gke-tpu-accelerator"}) is None
    assert assign_flavor(*cpu_pod, [cpu], {}, covered - {"ephemeral-storage"}, keys) is None  # not covered


def shipped_kustomize_files() -> list[Path]:
    return sorted(p for p in (REPO / "k8s").rglob("*.yaml") if p.parent.name != "recipes")


@pytest.mark.parametrize("path", shipped_kustomize_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_shipped_patch_addresses_a_replicated_job_by_list_position(path):
    """`/spec/replicatedJobs/1` patches whatever job an overlay a user composes put second: every
    component and overlay names the job (`[name=sft]` in a replacement, a merge key in a patch)."""
    text = path.read_text()
    assert not re.search(r"replicatedJobs(/|\.)(\d|-)", text), f"{path}: a replicated job addressed by position"


def rel(target: Path, directory: Path) -> str:
    """`target` as a kustomization in `directory` names it (kustomize takes relative paths)."""
    return os.path.relpath(target, directory)


def user_overlay(root: Path, name: str, kustomization: dict) -> Path:
    d = root / name
    d.mkdir()
    (d / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return d


def build(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)


def with_inserted_job(tmp_path) -> Path:
    """A user's pipeline: base plus a `distill` job between grpo and eval (eval now waits for it)."""
    base = jobset(render_dir(REPO / "k8s" / "base"))
    distill = copy.deepcopy(next(rj for rj in base["spec"]["replicatedJobs"] if rj["name"] == "report"))
    distill["name"] = "distill"
    distill["dependsOn"] = [{"name": "grpo", "status": "Complete"}]
    return user_overlay(tmp_path, "mine", {
        "resources": [rel(REPO / "k8s" / "base", tmp_path / "mine")],
        "patches": [{"target": {"kind": "JobSet"}, "patch": yaml.safe_dump([
            {"op": "add", "path": "/spec/replicatedJobs/3", "value": distill},
            {"op": "replace", "path": "/spec/replicatedJobs/4/dependsOn/0/name", "value": "distill"}])}]})


def render_dir(path: Path) -> list[dict]:
    out = build(path)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@needs_kubectl
def test_components_patch_each_job_by_name_in_a_pipeline_with_a_job_inserted(tmp_path):
    """Over a user's pipeline with an extra job in the middle, the tier and feature components change
    sft, grpo and eval (found by name), leave the inserted job alone and keep the order (JobSet
    requires each dependsOn to name an earlier job)."""
    with_inserted_job(tmp_path)  # tmp_path/mine
    composed_dir = tmp_path / "composed"
    composed = user_overlay(tmp_path, "composed", {
        "resources": ["../mine"],
        "components": [rel(REPO / "k8s" / "components" / c, composed_dir) for c in ("v5e-8", "gcsfuse", "spot")]})
    js = jobset(render_dir(composed))
    assert [rj["name"] for rj in js["spec"]["replicatedJobs"]] == ["data-prep", "sft", "grpo", "distill", "eval", "report"]
    specs = dict(pod_specs(js))
    for name in ("sft", "grpo", "eval"):
        assert specs[name]["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "2x4", name
        assert {t["key"] for t in specs[name]["tolerations"]} == {"google.com/tpu", "cloud.google.com/gke-spot"}, name
        (c,) = specs[name]["containers"]
        assert c["resources"]["limits"]["google.com/tpu"] == "8" and "cpu" not in c["resources"]["limits"], name
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"], name
        assert "affinity" in specs[name], name
    for name in ("data-prep", "distill", "report"):
        assert "nodeSelector" not in specs[name] and "tolerations" not in specs[name] and "affinity" not in specs[name]
        assert all(v["name"] != "models" for v in specs[name]["volumes"]), name
    eval_job = next(rj for rj in js["spec"]["replicatedJobs"] if rj["name"] == "eval")
    assert eval_job["template"]["spec"]["completions"] == 4 and eval_job["dependsOn"][0]["name"] == "distill"


@needs_kubectl
@pytest.mark.parametrize("under, component", [("quickstart-cpu", "spot"), ("quickstart-cpu", "gcsfuse"),
                                              ("base+skip-sft", "v5e-8"), ("base+skip-sft", "v5e-16"),
                                              ("base+skip-sft", "cpu"), ("base+skip-sft", "v5e-4")])
def test_a_component_over_a_pipeline_without_its_job_fails_naming_the_job(tmp_path, under, component):
    """A component never invents a job: over a pipeline without sft, one that patches sft stops the
    build naming `[name=sft]` instead of creating a half-empty replicated job."""
    if under == "base+skip-sft":
        below = user_overlay(tmp_path, "below", {
            "resources": [rel(REPO / "k8s" / "base", tmp_path / "below")],
            "components": [rel(REPO / "k8s" / "components" / "skip-sft", tmp_path / "below")]})
    else:
        below = REPO / "k8s" / "overlays" / under
    composed = user_overlay(tmp_path, "composed", {
        "resources": [rel(below, tmp_path / "composed")],
        "components": [rel(REPO / "k8s" / "components" / component, tmp_path / "composed")]})
    out = build(composed)
    assert out.returncode != 0 and "[name=sft]" in out.stderr, out.stderr[-500:]


@needs_kubectl
def test_a_component_over_a_job_whose_container_is_renamed_fails_instead_of_adding_a_container(tmp_path):
    """Values go to the container named as its job: a pipeline whose sft container has another name
    stops the build (an image-less container would be created otherwise)."""
    user_overlay(tmp_path, "mine", {  # the base, its sft container renamed (a test op checks the position)
        "resources": [rel(REPO / "k8s" / "base", tmp_path / "mine")],
        "patches": [{"target": {"kind": "JobSet"}, "patch": yaml.safe_dump([
            {"op": "test", "path": "/spec/replicatedJobs/1/template/spec/template/spec/containers/0/name", "value": "sft"},
            {"op": "replace", "path": "/spec/replicatedJobs/1/template/spec/template/spec/containers/0/name",
             "value": "trainer"}])}]})
    for component in ("cpu", "v5e-8", "gcsfuse", "spot"):
        composed = user_overlay(tmp_path, component, {
            "resources": ["../mine"], "components": [rel(REPO / "k8s" / "components" / component, tmp_path / component)]})
        out = build(composed)
        assert out.returncode != 0 and "containers.[name=sft]" in out.stderr, (component, out.stderr[-500:])


def test_the_kustomize_schema_is_what_its_script_generates():
    """k8s/base/kustomize-schema.json comes from scripts/kustomize_schema.py (Kubernetes' definitions as
    kubernetes-validate ships them, plus JobSet's merge key)."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "kustomize_schema.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@needs_kubectl
def test_built_in_kinds_keep_their_merge_keys_in_a_build_over_the_base(tmp_path):
    """The base's schema replaces kustomize's built-in one for the whole build: a user's strategic-merge
    patch of a Deployment beside the pipeline still merges containers by name (a schema of JobSet alone
    would replace the list, losing a container and an image)."""
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sidecar"},
                  "spec": {"selector": {"matchLabels": {"app": "s"}}, "template": {
                      "metadata": {"labels": {"app": "s"}},
                      "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}}}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sidecar"},
             "spec": {"template": {"spec": {"containers": [{"name": "b", "env": [{"name": "X", "value": "1"}]}]}}}}
    (mine / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [rel(REPO / "k8s" / "overlays" / "hybrid-cpu", mine), "deployment.yaml"],
        "patches": [{"patch": yaml.safe_dump(patch)}]}))
    (got,) = [d for d in render_dir(mine) if d["kind"] == "Deployment"]
    containers = {c["name"]: c for c in got["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"a", "b"} and containers["b"]["image"] == "b:1"
    assert containers["b"]["env"] == [{"name": "X", "value": "1"}]


@needs_kubectl
def test_a_second_tier_component_is_refused(tmp_path):
    """Every tier's values are the resource PatchValues/tier: a tier over an overlay that has one (v5e-4
    over hybrid-v5e-8) fails to build instead of mixing two tiers' placements."""
    composed = user_overlay(tmp_path, "composed", {
        "resources": [rel(REPO / "k8s" / "overlays" / "hybrid-v5e-8", tmp_path / "composed")],
        "components": [rel(REPO / "k8s" / "components" / "v5e-4", tmp_path / "composed")]})
    out = build(composed)
    assert out.returncode != 0 and "PatchValues.v1alpha1.showwork.dev/tier" in out.stderr, out.stderr[-500:]


@needs_kubectl
def test_skip_components_drop_jobs_by_name_and_rewire_the_next_stage(tmp_path):
    """skip-sft and skip-training remove jobs by name (the merge key in k8s/base/kustomize-schema.json)
    and make the next stage wait for data-prep, in a pipeline with a job inserted as well."""
    with_inserted_job(tmp_path)  # tmp_path/mine
    built = {}
    for skip in ("skip-sft", "skip-training"):
        built[skip] = build(user_overlay(tmp_path, skip, {
            "resources": ["../mine"], "components": [rel(REPO / "k8s" / "components" / skip, tmp_path / skip)]}))
    js = jobset([d for d in yaml.safe_load_all(built["skip-sft"].stdout) if d])
    assert [rj["name"] for rj in js["spec"]["replicatedJobs"]] == ["data-prep", "grpo", "distill", "eval", "report"]
    deps = {rj["name"]: rj.get("dependsOn", [{}])[0].get("name") for rj in js["spec"]["replicatedJobs"]}
    assert deps["grpo"] == "data-prep" and deps["distill"] == "grpo" and deps["eval"] == "distill"
    # Here eval waits for distill, not grpo: skip-training refuses to guess what eval should wait for.
    out = built["skip-training"]
    assert out.returncode != 0 and "[name=grpo]" in out.stderr, out.stderr[-500:]
    js = jobset(render("eval-only-cpu"))
    assert [(rj["name"], rj.get("dependsOn", [{}])[0].get("name")) for rj in js["spec"]["replicatedJobs"]] == \
        [("data-prep", None), ("eval", "data-prep"), ("report", "eval")]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_tagged_and_named_as_skaffold_builds_it(overlay):
    """Kustomize leaves skaffold's artifact names in place (skaffold substitutes what it built and
    pushed); every image has a tag (no implicit `latest` and `Always` pull): `local` on kind, the
    release version on GKE."""
    import tomllib

    artifacts = {a["image"] for a in yaml.safe_load((REPO / "skaffold.yaml").read_text())["build"]["artifacts"]}
    version = tomllib.loads((REPO / "lib" / "pyproject.toml").read_text())["project"]["version"]
    docs = render(overlay)
    wanted = "local" if tier_of(docs)["name"] == "cpu" else version
    for _, spec in pod_specs(jobset(docs)):
        for c in spec["containers"]:
            name, _, tag = c["image"].partition(":")
            assert name in artifacts and tag == wanted, c["image"]
