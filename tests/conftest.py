"""Shared fixtures: a throw-away home per test, the shared artifact cache, and the Docker engine.

Each test gets its own READFIRST_HOME. Expensive artifacts (base image, llama.cpp source and builds, the model)
live in the user's default cache, so the set-up's work is reused by the test run and between test runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from readfirst.config import Paths

SHARED_CACHE = Paths.resolve(environ={k: v for k, v in os.environ.items() if k != "READFIRST_HOME"}).cache


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("READFIRST_HOME", str(home))
    monkeypatch.setenv("READFIRST_CACHE", str(SHARED_CACHE))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield home


@pytest.fixture
def paths(_isolated_home) -> Paths:
    return Paths.resolve()


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    return SHARED_CACHE


@pytest.fixture(scope="session")
def docker_client():
    """A client for the running engine. Under CI a missing engine fails the run instead of skipping it."""
    from readfirst.sandbox.engine import connect
    client = connect()
    if client is None:
        if os.environ.get("CI"):
            pytest.fail("no Docker engine answers; the set-up must start it")
        pytest.skip("no Docker engine answers (start it with `readfirst setup`)")
    return client


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    from readfirst.sandbox.image import ensure_image
    return ensure_image(docker_client)
