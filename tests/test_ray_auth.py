"""sandbox.ray_auth on this machine's environment: the token is found or refused in a sentence, and a Ray whose
internals moved is said as such, never a traceback."""

from __future__ import annotations

import sys

import pytest

from readfirst.errors import ReadfirstError
from readfirst.sandbox import ray_auth

SET_BY_IT = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
             ray_auth.TOKEN_FILE_ENV)


def _clean_env(monkeypatch) -> None:
    """prepare_client sets these in os.environ: each is put back as it was after the test, absent or not."""
    for name in SET_BY_IT:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_a_ray_whose_internals_moved_is_a_sentence(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    token = tmp_path / "token"
    token.write_text("t" * 64)
    _clean_env(monkeypatch)
    monkeypatch.setitem(sys.modules, "ray._raylet", None)  # its import now fails, as a moved module's would
    with pytest.raises(ReadfirstError, match="ray==2.60.0"):
        ray_auth.prepare_client("10.0.0.1:6379", token)


def test_no_token_anywhere_is_refused_in_a_sentence(tmp_path, monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ray_auth.RayTokenMissing, match="--ray-token-file"):
        ray_auth.prepare_client("10.0.0.1:6379")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ray_auth.RayTokenMissing, match="is empty"):
        ray_auth.prepare_client("10.0.0.1:6379", tmp_path / "empty")
