"""The adversarial suite's bookkeeping: each case counts as tried; an escape (the unsafe outcome happened) or
something left behind (a container of this process, a file outside the case's directory) is counted where the
case finds it, and the session ends with one summary line (docs/RELIABILITY.md quotes it)."""

from __future__ import annotations

import pytest

from .helpers import TALLY, leftover_containers


@pytest.fixture
def attack(request, tmp_path):
    """A case's handle: `attack.escaped(what)` records an escape and fails; the case's containers are looked
    for when it ends."""

    class Attack:
        root = tmp_path

        @staticmethod
        def escaped(what: str) -> None:
            TALLY["escapes"] += 1
            pytest.fail(f"escape: {what}")

        @staticmethod
        def left_behind(what: str) -> None:
            TALLY["left_behind"] += 1
            pytest.fail(f"left behind: {what}")

    TALLY["cases"] += 1
    client = request.getfixturevalue("docker_client") if "docker_client" in request.fixturenames else None
    yield Attack
    if client is not None:
        stray = leftover_containers(client)
        if stray:
            TALLY["left_behind"] += len(stray)
            pytest.fail(f"left behind: {len(stray)} sandbox container(s) of this process")


def pytest_terminal_summary(terminalreporter):
    if TALLY["cases"]:
        terminalreporter.write_line(
            f"adversarial: {TALLY['cases']} cases tried, {TALLY['escapes']} escapes, "
            f"{TALLY['left_behind']} things left behind")
