"""Shared fixtures: repo paths, a real fake-gcs-server, a bus on either backend."""

from __future__ import annotations

import collections
import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "k8s" / "base" / "recipes"
TIERS = REPO / "k8s" / "components"
SHARED = REPO.parent / "shared"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: loads the real Gemma 3 270M or trains; minutes on CPU")
    # Separate CI steps with their own budgets (make test-containers, make test-learning; .ci/run).
    config.addinivalue_line("markers", "containers: builds the images and runs them as the pods run")
    config.addinivalue_line("markers", "learning: trains the real Gemma 3 270M until it measurably learns")
    # One persistent XLA compilation cache for the whole run, in-process and in every job a test
    # starts (they inherit the environment): a program another test already compiled is loaded, not
    # compiled again, as the jobs do with theirs (showwork.xla_cache).
    import tempfile

    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="showwork-xla-"))
    # Programs under 0.2 s are compiled again rather than kept: serialising every one costs the suite
    # more than it saves (tests/test_xla_cache.py runs jobs without it, as users do).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_collection_modifyitems(config, items):
    """The slow tests first (a stable sort: each group keeps its order). The two workers take the
    minutes-long tests while there is other work to balance them against; collected last, as the
    alphabetical order left them (tests/recipes, tests/train), one worker ran the last of them alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# Seconds spent in each test file (setup, call and teardown of its tests), for the report's end: where
# the suite's time goes by file, beside --durations' slowest single tests. Under xdist the controller
# receives every worker's reports, so it sums the whole run.
FILE_SECONDS: collections.Counter = collections.Counter()
FILE_TESTS: collections.Counter = collections.Counter()


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    FILE_SECONDS[path] += report.duration
    FILE_TESTS[path] += report.when == "call"


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput") or not FILE_SECONDS:  # an xdist worker: the controller reports
        return
    total = sum(FILE_SECONDS.values())
    terminalreporter.section(f"test seconds by file: {total:.0f} s in all")
    for path, seconds in FILE_SECONDS.most_common(15):
        terminalreporter.write_line(f"{seconds:8.1f}s {100 * seconds / total:5.1f}% {FILE_TESTS[path]:5d} tests {path}")


@pytest.fixture(scope="session")
def gcs_server():
    """A real fake-gcs-server binary on a free loopback port (sets STORAGE_EMULATOR_HOST)."""
    from gcs_emulator import GcsEmulator

    server = GcsEmulator().start()
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="showwork-local", credentials=AnonymousCredentials())
    client.create_bucket("showwork-test")
    yield server
    server.stop()
    os.environ.pop("STORAGE_EMULATOR_HOST", None)


@pytest.fixture(params=["local", "gcs"])
def bus(request, tmp_path):
    """A fresh bus root, on a local directory and on fake-gcs-server."""
    from showwork.bus import Bus

    if request.param == "local":
        return Bus(str(tmp_path / "run"))
    request.getfixturevalue("gcs_server")
    return Bus(f"gs://showwork-test/runs/{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def gemma270m():
    from showwork.model import loader

    return loader.load("gemma3-270m")


@pytest.fixture(scope="session")
def tiny():
    from showwork.model import tiny as tiny_model

    return tiny_model.load()


def simulated_chips(n: int) -> str:
    """XLA_FLAGS for n simulated chips on this host's CPU.

    XLA's CPU collectives abort the process when a participant has not reached an all-reduce within
    40 s. On 2 cores shared by two test workers, each running several simulated chips, a chip's thread
    can wait that long for a core: CI on 2026-12-01 aborted a 2x2-mesh test that way, each pair of chips
    with one participant arrived. A longer deadline lets the starved thread arrive; a collective that
    truly hangs is still ended by the caller's subprocess timeout.
    """
    return f"--xla_force_host_platform_device_count={n} --xla_cpu_collective_call_terminate_timeout_seconds=540"


def job_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "lib"), str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env
