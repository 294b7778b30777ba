"""A cloned project's readfirst.toml is data from a stranger: its `[sandbox] apt` names reach a root shell with
the host's network during the image build, and its `[target] source` names a folder the run copies, mounts and
logs. Injected names (a newline, `;`, `$(...)`, an apt option) are refused by the loader in a sentence naming the
key, and the image build passes names as arguments, never as shell text (run here in a real container with a
recording apt-get: the build itself needs the network). A source outside the file's folder (`..`, `~`, an
absolute path, a link out of the folder) is refused unless the command line names it with --source."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from readfirst.targets import make_spec, open_target, sandbox_packages
from readfirst.targets.config_file import ConfigError, load_config

pytestmark = pytest.mark.timeout(300)

CONFIG = """
[target]
name = "victim"
source = {source}
[build]
command = "true"
[test]
command = "true"
[bench]
command = "true"
[objective]
metric = "x"
[sandbox]
apt = {apt}
"""


def project(root: Path, *, source: str = '"."', apt: str = "[]") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "readfirst.toml"
    path.write_text(CONFIG.format(source=source, apt=apt))
    return path


INJECTIONS = ['"make\\n; touch /tmp/CANARY"', '"make; touch /tmp/CANARY"', '"$(touch /tmp/CANARY)"',
              '"-o APT::Get::AllowUnauthenticated=true"', '"make\\n"', '"make "', '"`id`"']


@pytest.mark.parametrize("name", INJECTIONS)
def test_an_injected_apt_name_is_refused_by_the_loader_naming_the_key(attack, name):
    path = project(attack.root / "proj", apt=f"[{name}]")
    try:
        config = load_config(path)
    except ConfigError as e:
        assert "[sandbox] apt" in str(e) and "\n" not in str(e), str(e)
        return
    attack.escaped(f"the loader accepted the apt name {config.apt!r}")


def test_other_names_from_the_file_are_matched_whole(attack):
    """`$` matches before a final newline: every validator of the file matches the whole string."""
    for edit, key in ((lambda t: t + '[sandbox.env]\n"A\\n" = "1"\n', "[sandbox] env"),
                      (lambda t: t.replace('metric = "x"', 'metric = "x\\n"'), "[objective] metric"),
                      (lambda t: t.replace('name = "victim"', 'name = "victim"\nref = "--upload-pack=touch /x"'),
                       "[target] ref"),
                      (lambda t: t + '[objective.guards]\n"g\\n" = 0.05\n', "[objective.guards] g")):
        path = project(attack.root / "proj")
        path.write_text(edit(path.read_text()))
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert key in str(caught.value), (key, str(caught.value))


@pytest.mark.docker
def test_the_image_build_passes_apt_names_as_arguments_never_as_shell_text(attack, docker_client, base_image):
    from readfirst.sandbox.image import install_command
    hostile = ["make\n; touch /out/CANARY1", "make; touch /out/CANARY2", "$(touch /out/CANARY3)", "`touch /out/C4`"]
    out = attack.root / "out"
    out.mkdir(mode=0o777)
    fake = attack.root / "bin"
    fake.mkdir()
    # apt-get needs the network; this one records the arguments it was given, one per NUL-ended field
    (fake / "apt-get").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> /out/argv\n'
                                  'printf "\\n\\0" >> /out/argv\n')
    (fake / "apt-get").chmod(0o755)
    logs = docker_client.containers.run(base_image, install_command(hostile), user="0:0", network_mode="none",
                                        remove=True, volumes={str(fake): {"bind": "/usr/local/sbin", "mode": "ro"},
                                                              str(out): {"bind": "/out", "mode": "rw"}})
    canaries = sorted(p.name for p in out.iterdir() if p.name.startswith("C"))
    if canaries:
        attack.escaped(f"a package name ran as shell text: {canaries} ({logs!r})")
    calls = [c.split("\0")[:-1] for c in (out / "argv").read_text().split("\n\0") if c]
    install = next(c for c in calls if "install" in c)
    assert install[-len(hostile):] == hostile and install[-len(hostile) - 1] == "--", install


def test_ensure_image_refuses_a_name_that_is_not_a_debian_package(attack):
    from readfirst.errors import ImageBuildError
    from readfirst.sandbox.image import ensure_image

    class NoEngine:  # ensure_image must refuse before it asks the engine for anything
        def __getattr__(self, name):
            attack.escaped(f"ensure_image used the engine ({name}) with a hostile package name")

    with pytest.raises(ImageBuildError, match="not a Debian package name"):
        ensure_image(NoEngine(), packages=("make; touch /tmp/CANARY",))


@pytest.mark.parametrize("key", ["hot_paths", "protected"])
@pytest.mark.parametrize("pattern", ["../outside/**", "/etc/**", "~/.ssh/*", "src/../../outside"])
def test_a_path_pattern_outside_the_project_is_refused_naming_the_key(attack, key, pattern):
    """hot_paths and protected decide what the implementer may edit and what a patch may touch: a pattern that
    names a place outside the project is not a path of the project."""
    path = project(attack.root / "proj")
    path.write_text(path.read_text().replace('name = "victim"', f'name = "victim"\n{key} = ["{pattern}"]'))
    try:
        config = load_config(path)
    except ConfigError as e:
        assert f"[target] {key}" in str(e) and "not a path inside the project" in str(e), str(e)
        return
    attack.escaped(f"{key} = [{pattern!r}] was accepted: {getattr(config, key)}")


def _outside_sources(root: Path) -> dict[str, str]:
    secret = root / "secret"
    secret.mkdir()
    (secret / "secret.txt").write_text("CANARY-5e1f the host's secret\n")
    proj = root / "proj"
    proj.mkdir()
    (proj / "link").symlink_to(secret, target_is_directory=True)
    (proj / "inside").mkdir()
    return {'"../secret"': "a sibling folder", '"~/x"': "the home folder", '"/etc"': "an absolute path",
            '"link"': "a link out of the folder", f'"{secret}"': "the sibling by its absolute path",
            f'"file://{secret}"': "a file:// URL", '"inside/../../secret"': "a path that climbs back out"}


def test_a_source_outside_the_files_folder_is_refused_in_a_sentence(attack):
    for source, what in _outside_sources(attack.root).items():
        path = project(attack.root / "proj", source=source)
        try:
            config = load_config(path)
        except ConfigError as e:
            text = str(e)
            assert "[target] source" in text and "--source" in text and "\n" not in text, text
            continue
        attack.escaped(f"{what} ({source}) was accepted as the source: {config.source}")


def test_a_source_inside_the_folder_still_loads(attack):
    _outside_sources(attack.root)
    for source, expected in (('"."', "proj"), ('"inside"', "inside"), ('"./inside/../inside"', "inside")):
        config = load_config(project(attack.root / "proj", source=source))
        assert Path(config.source).name == expected


def test_an_outside_source_named_with_source_on_the_command_line_is_used(attack):
    _outside_sources(attack.root)
    secret = attack.root / "secret"
    path = project(attack.root / "proj", source='"../secret"')
    spec = make_spec(None, source=str(secret), config_file=str(path), source_given=True)
    config = load_config(spec["config_file"], source=spec.get("source_override"))
    assert config.source == str(secret.resolve())
    assert sandbox_packages(spec) == ()  # the spec loads through the registry too
    # without --source the registry refuses it before any source is prepared
    with pytest.raises(ConfigError, match="--source"):
        open_target(make_spec(None, source="llama.cpp", config_file=str(path)), paths=None, sandbox=None)


def test_readfirst_run_refuses_an_outside_source_in_one_sentence_before_any_run_exists(attack):
    import os
    import subprocess
    import sys
    _outside_sources(attack.root)
    path = project(attack.root / "proj", source='"../secret"')
    home = attack.root / "home"
    proc = subprocess.run([sys.executable, "-m", "readfirst.graph", "run", "--offline", "--target-config", str(path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "READFIRST_HOME": str(home)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "[target] source" in proc.stderr and "--source" in proc.stderr, proc.stderr[-2000:]
    if (home / "runs").is_dir() and any((home / "runs").iterdir()):
        attack.escaped("a run folder was made for a project whose source lies outside it")


def test_a_readfirst_toml_that_is_a_link_a_fifo_or_huge_is_refused_in_a_sentence(attack):
    # The file a cloned project ships: linked to another project's file, its `source = "."` named that project's
    # folder (the link was resolved first); a FIFO or a huge file is no configuration either.
    elsewhere = project(attack.root / "elsewhere")
    cases = {}
    linked = attack.root / "linked"
    linked.mkdir()
    (linked / "readfirst.toml").symlink_to(elsewhere)
    cases["a link to another project's file"] = linked / "readfirst.toml"
    fifo = attack.root / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "readfirst.toml")
    cases["a FIFO"] = fifo / "readfirst.toml"
    huge = attack.root / "huge"
    huge.mkdir()
    with open(huge / "readfirst.toml", "w") as f:
        f.write(CONFIG.format(source='"."', apt="[]"))
        f.write("# " + "x" * (8 << 20) + "\n")
    cases["an 8 MiB file"] = huge / "readfirst.toml"
    for what, path in cases.items():
        try:
            config = load_config(path)
        except ConfigError as e:
            assert "\n" not in str(e) and "readfirst.toml" in str(e), str(e)
            continue
        attack.escaped(f"{what} was loaded as the project's configuration (source {config.source})")
