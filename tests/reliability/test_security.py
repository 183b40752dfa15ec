"""Security: tokens never leak into logs, files or manifests; nothing from the
bus or from model output is ever evaluated or unpickled, except a completion's code in the code
reward's sandboxed child (showwork.task.sandbox_guard), after its lockdown: the one exemption."""

from __future__ import annotations

import ast
import subprocess
import sys

import yaml

from conftest import REPO, TIERS, job_env

CPU = TIERS / "cpu" / "tier.yaml"
TOKEN = "hf_SHOWWORKtestTOKEN0123456789abcdef"
GCP_KEY = "-----BEGIN PRIVATE KEY-----showwork-test-key"

RECIPE = """recipe: secrets
model: {name: tiny}
data: {source: reasoning-gym, train_size: 4, eval_size: 3, seed: 1}
sft: {max_steps: 2, max_seq_len: 1024, checkpoint_every: 1}
eval: {models: [base, sft], methods: [greedy], max_tokens: 6}
"""


def test_a_token_in_the_environment_never_reaches_logs_or_files(tmp_path):
    recipe = tmp_path / "secrets.yaml"
    recipe.write_text(RECIPE)
    env = job_env(HF_TOKEN=TOKEN, HUGGING_FACE_HUB_TOKEN=TOKEN, GOOGLE_CLOUD_PRIVATE_KEY=GCP_KEY,
                  SHOWWORK_LOG_FORMAT="json")
    # The whole pipeline, with debug-level noise from every stage, and a failing call too.
    done = subprocess.run([sys.executable, "-m", "jobs.pipeline", str(recipe), str(CPU), "--root", str(tmp_path / "runs")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = subprocess.run([sys.executable, "-m", "jobs.report", str(recipe), str(CPU), "--root",
                             str(tmp_path / "empty"), "--shards", "3"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert failed.returncode != 0
    outputs = done.stdout + done.stderr + failed.stdout + failed.stderr
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "report.html" for p in files) and any(p.name == "_SUCCESS" for p in files)
    for secret in (TOKEN, GCP_KEY, "SHOWWORKtestTOKEN"):
        assert secret not in outputs
        for path in files:
            assert secret.encode() not in path.read_bytes(), path


def test_manifests_take_tokens_only_from_secrets(tmp_path):
    rendered = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / "overlays" / "hybrid-v5e-8")],
                              capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    seen = 0
    for doc in yaml.safe_load_all(rendered.stdout):
        if doc and doc["kind"] == "ConfigMap":
            assert not any("TOKEN" in k or "KEY" in k for k in doc.get("data", {})), doc["metadata"]["name"]
        if not doc or doc["kind"] != "JobSet":
            continue
        for job in doc["spec"]["replicatedJobs"]:
            for container in job["template"]["spec"]["template"]["spec"]["containers"]:
                for var in container.get("env", []):
                    if "TOKEN" in var["name"] or "KEY" in var["name"] or "PASSWORD" in var["name"]:
                        assert "value" not in var and var["valueFrom"]["secretKeyRef"]["optional"] is True
                        seen += 1
    assert seen >= 4  # every stage can read a gated model or dataset
    for dockerfile in (REPO / "images").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        assert "TOKEN" not in text and "credentials" not in text.lower(), dockerfile


FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _source_files():
    for folder in ("lib/showwork", "jobs", "scripts", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if not any(part.startswith(".") for part in path.relative_to(REPO).parts):  # skip venvs
                yield path


# The sandbox's child process runs model-written code by design (after limits, seccomp and its audit
# hook are in place; never imported by the package): exec and compile, there and nowhere else.
SANDBOX_CHILD = ("lib/showwork/task/sandbox_guard.py", {"exec", "compile"})


def violations(source: str, name: str) -> list[str]:
    problems = []
    tree = ast.parse(source, filename=name)
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in FORBIDDEN_CALLS \
                and id(node) not in called:
            if not (name == SANDBOX_CHILD[0] and node.id in SANDBOX_CHILD[1]):
                problems.append(f"{where} refers to {node.id} (an alias is a call too)")
        if isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id in FORBIDDEN_CALLS:
                problems.append(f"{where} calls {fn.id}()")
            if isinstance(fn, ast.Attribute) and fn.attr == "load" and isinstance(fn.value, ast.Name) \
                    and fn.value.id in ("yaml", "torch"):
                problems.append(f"{where} {fn.value.id}.load (use yaml.safe_load / safetensors)")
            for kw in node.keywords:
                if kw.arg in ("allow_pickle", "shell") and not (isinstance(kw.value, ast.Constant)
                                                                and kw.value.value is False):
                    problems.append(f"{where} passes {kw.arg}=...")
        if isinstance(node, ast.Import):
            problems += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            problems.append(f"{where} imports from {node.module}")
    return problems


def test_no_eval_exec_or_pickle_anywhere_in_the_product():
    files = list(_source_files())
    assert len(files) > 20
    assert [v for path in files for v in violations(path.read_text(), str(path.relative_to(REPO)))] == []


def test_the_scan_catches_what_it_forbids():
    bad = ("import pickle\nfrom dill import loads\neval('1')\nyaml.load(x)\n"
           "np.load(f, allow_pickle=True)\nsubprocess.run(c, shell=True)\nexec(code)\nrun = exec\n")
    assert len(violations(bad, "bad.py")) == 8
    # The sandbox's child may refer to exec and compile, and to nothing else forbidden; no other file may.
    assert violations("run = exec\nc = compile\n", SANDBOX_CHILD[0]) == []
    assert len(violations("e = eval\nimport pickle\n", SANDBOX_CHILD[0])) == 2
    assert len(violations("run = exec\n", "lib/showwork/task/sandbox.py")) == 1


def test_the_sandbox_child_is_run_never_imported_by_the_product():
    for path in _source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            assert not any("sandbox_guard" in n for n in names + [getattr(node, "module", "") or ""]), path
    assert violations("yaml.safe_load(x)\nnp.load(f, allow_pickle=False)\nimport json\n", "ok.py") == []
