"""How readfirst's Ray client authenticates to a cluster: Ray's token authentication, never an open cluster.

A Ray cluster runs whatever code a connected client sends, as the user its nodes run as (root on a cloud VM,
and Docker's socket makes any user root). So readfirst only talks to clusters started with RAY_AUTH_MODE=token
(deploy/skypilot-ray.yaml and tests/ray_local.py start them so), and its client always sends the cluster's token:
from the file --ray-token-file / READFIRST_RAY_TOKEN_FILE names, else where Ray itself looks (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token). Ray reads these from the environment when it starts its client, so they
are set here, before ray.init.

A cluster on this machine listens on 127.0.0.1 only (tests/ray_local.py); Ray's client would swap that address
for the machine's external one, where nothing answers, unless told this machine is no cluster.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import ReadfirstError

TOKEN_FILE_ENV = "READFIRST_RAY_TOKEN_FILE"
_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


class RayTokenMissing(ReadfirstError):
    """No token for the Ray cluster: readfirst does not join a cluster without one."""


def prepare_client(address: str, token_file: str | Path | None = None) -> None:
    """Set the environment Ray's client reads: token mode, the token's file, and loopback kept as loopback."""
    token_file = token_file or os.environ.get(TOKEN_FILE_ENV)
    if token_file:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise RayTokenMissing(f"the Ray token file {path} cannot be read ({e.strerror})") from None
        if not token:
            raise RayTokenMissing(f"the Ray token file {path} is empty")
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(path.resolve())
        os.environ.pop("RAY_AUTH_TOKEN", None)  # Ray prefers it to the file
    elif not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
              or (Path.home() / ".ray" / "auth_token").is_file()):
        raise RayTokenMissing("no token for the Ray cluster: pass the file that holds it with --ray-token-file "
                              f"(or {TOKEN_FILE_ENV}); readfirst joins only clusters started with "
                              "RAY_AUTH_MODE=token, as deploy/skypilot-ray.yaml starts them")
    os.environ["RAY_AUTH_MODE"] = "token"
    if address.startswith(_LOOPBACK):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:
        _reread(loopback=address.startswith(_LOOPBACK))


def _reread(loopback: bool) -> None:
    """Ray reads these variables when it is imported, and a process may have imported it before (a test, a
    bench): its configuration and token cache are read again, as Ray's own ray.init does for a new cluster."""
    try:  # Ray's internals (as ray._private.authentication_test_utils resets them): the pinned Ray's
        from ray._private import ray_constants
        from ray._raylet import AuthenticationTokenLoader, Config
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        if loopback:
            ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError) as e:
        raise ReadfirstError(f"this Ray ({_version()}) cannot be given the cluster's token after its import: "
                             f"readfirst needs ray==2.60.0 (pip install 'readfirst[ray]'): {e}") from None


def _version() -> str:
    return getattr(sys.modules.get("ray"), "__version__", "unknown version")
