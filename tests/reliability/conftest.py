"""Reliability fixtures: a fault-injecting proxy in front of the real fake-gcs-server."""

from __future__ import annotations

import pytest

from reliability.faulty_proxy import FaultyProxy


@pytest.fixture
def faulty_gcs(gcs_server, monkeypatch):
    """Factory: a proxy with the given fault rate; STORAGE_EMULATOR_HOST points at it."""
    proxies = []

    def make(rate: float, seed: int = 0, **kw) -> FaultyProxy:
        proxy = FaultyProxy(gcs_server.url, rate, seed, **kw).__enter__()
        proxies.append(proxy)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        return proxy

    yield make
    for proxy in proxies:
        proxy.__exit__(None, None, None)
