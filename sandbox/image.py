"""The base image every sandbox runs: a C/C++ toolchain, cmake, ccache, git and python3.

Order of preference: an image already tagged locally; `FROM debian:bookworm-slim` when a registry answers;
otherwise debootstrap + `docker import`, since Debian's package mirror is reachable where registries are not.
The tag carries a digest of the recipe, so a changed recipe builds a new image instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors
import requests

from ..errors import ImageBuildError

PACKAGES = ("gcc", "g++", "make", "cmake", "ccache", "git", "python3", "python3-numpy", "procps", "ca-certificates")
SUITE = "bookworm"
SANDBOX_UID = 10001
REPOSITORY = "readfirst/base"
_RECIPE = f"{SUITE}:{','.join(PACKAGES)}:uid={SANDBOX_UID}:v1"
TAG = hashlib.sha256(_RECIPE.encode()).hexdigest()[:12]
IMAGE = f"{REPOSITORY}:{TAG}"
ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Say = Callable[[str], None]
# A Debian package name (policy 5.6.1: lower case letters, digits, + - .; no leading - so never an option).
# Matched whole with fullmatch: a pattern ending in `$` also admits a final newline.
_DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.\-]*")
# The names arrive as "$@" (arguments of this fixed script), never as its text; `--` ends apt-get's options.
_INSTALL_SCRIPT = ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                   '--no-install-recommends -- "$@" && rm -rf /var/lib/apt/lists/*')


def is_debian_package(name: str) -> bool:
    return isinstance(name, str) and _DEBIAN_PACKAGE.fullmatch(name) is not None


def install_command(packages: tuple[str, ...] | list[str]) -> list[str]:
    """The argument vector that installs `packages` in a container: each name one argument of a fixed script."""
    return ["/bin/sh", "-c", _INSTALL_SCRIPT, "install-packages", *packages]


def debian_mirror(sources_dir: Path = Path("/etc/apt/sources.list.d")) -> str:
    """The Debian mirror this machine's apt uses; the public one when none is configured."""
    for f in sorted(sources_dir.glob("*.sources")):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split(":", 1)[1].split()[0]
    return "http://deb.debian.org/debian"


def ensure_image(client: docker.DockerClient, *, rebuild: bool = False, say: Say = lambda _: None,
                 packages: tuple[str, ...] = ()) -> str:
    """Return the tag of a usable image, building it when needed: the base image, or the base image with extra
    Debian packages (a target's readfirst.toml names them) installed on top, tagged by their list."""
    bad = [p for p in packages if not is_debian_package(p)]
    if bad:  # a name reaches apt-get as root with the host's network: refused before the engine is asked
        raise ImageBuildError(f"{bad[0]!r} is not a Debian package name")
    base = _ensure_base(client, rebuild=rebuild, say=say)
    extra = tuple(sorted(set(packages) - set(PACKAGES)))
    if not extra:
        return base
    tag = hashlib.sha256(f"{TAG}:{','.join(extra)}".encode()).hexdigest()[:12]
    derived = f"{REPOSITORY}-extra:{tag}"
    if not rebuild and _exists(client, derived):
        return derived
    say(f"adding {', '.join(extra)} to the sandbox image")
    # Installed as root with the host's network (the engine has no bridge), then committed: no registry needed.
    container = client.containers.create(IMAGE, install_command(extra), user="0:0", network_mode="host")
    try:
        container.start()
        status = container.wait(timeout=1800)  # docker-py: a timeout is a requests error, caught below
        if status.get("StatusCode") != 0:
            logs = container.logs(tail=30).decode(errors="replace")
            raise ImageBuildError(f"installing {', '.join(extra)} in the sandbox image failed: {logs[-1500:]}")
        repository, _, name = derived.partition(":")
        container.commit(repository=repository, tag=name, changes=[f"ENV PATH={ENV_PATH}", "ENV HOME=/tmp"])
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise ImageBuildError(f"installing {', '.join(extra)} in the sandbox image failed: {e}") from e
    finally:
        container.remove(force=True)
    return derived


def _ensure_base(client: docker.DockerClient, *, rebuild: bool, say: Say) -> str:
    if not rebuild and _exists(client, IMAGE):
        return IMAGE
    if _registry_answers(client):
        say("building the base image FROM debian:bookworm-slim")
        _build_from_registry(client)
    else:
        say("no container registry answers: building the base image with debootstrap (a few minutes)")
        _build_with_debootstrap(client, say)
    return IMAGE


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _registry_answers(client: docker.DockerClient) -> bool:
    try:
        client.images.pull("debian", tag=f"{SUITE}-slim")
        return True
    except docker.errors.APIError:
        return False


def _passwd_lines() -> tuple[str, str]:
    return (f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/tmp:/bin/sh\n", f"sandbox:x:{SANDBOX_UID}:\n")


def _build_from_registry(client: docker.DockerClient) -> None:
    passwd, group = _passwd_lines()
    dockerfile = (
        f"FROM debian:{SUITE}-slim\n"
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        f"{' '.join(PACKAGES)} && rm -rf /var/lib/apt/lists/*\n"
        f"RUN echo '{passwd.strip()}' >> /etc/passwd && echo '{group.strip()}' >> /etc/group\n"
        "ENV HOME=/tmp\n"
    )
    try:
        # The engine runs without a bridge here; a build that needs the network uses the host's.
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=IMAGE, network_mode="host", rm=True)
    except (docker.errors.BuildError, docker.errors.APIError) as e:
        raise ImageBuildError(f"building the base image from debian:{SUITE}-slim failed: {e}") from e


def _build_with_debootstrap(client: docker.DockerClient, say: Say) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("building the base image with debootstrap needs root; run the set-up as root "
                              f"or load an image tagged {IMAGE}")
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install -y debootstrap)")
    with tempfile.TemporaryDirectory(prefix="readfirst-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root),
               debian_mirror()]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageBuildError("debootstrap failed: " + (proc.stdout + proc.stderr)[-2000:])
        passwd, group = _passwd_lines()
        with open(root / "etc/passwd", "a") as f:
            f.write(passwd)
        with open(root / "etc/group", "a") as f:
            f.write(group)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(root / junk, ignore_errors=True)
        tarball = Path(tmp) / "rootfs.tar"
        say("importing the root file system into Docker")
        proc = subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageBuildError("packing the root file system failed: " + proc.stderr[-2000:])
        try:
            client.api.import_image_from_file(str(tarball), repository=REPOSITORY, tag=TAG,
                                              changes=[f"ENV PATH={ENV_PATH}", "ENV HOME=/tmp",
                                                       'CMD ["/bin/sh"]'])
            client.images.get(IMAGE)
        except docker.errors.APIError as e:
            raise ImageBuildError(f"docker import of the base image failed: {e}") from e
