"""git repositories readfirst did not create: a folder given to `kb ingest path` or `run --papers`, a project
and a fork given as local folders. Their `.git/config` (fsmonitor, hooks, pager, textconv, includeIf, signature
programs) must never act on the host, a `.git` that leads out of the folder must never be followed, and a
folder linked out of the tree must never be read."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from readfirst.config import Paths
from readfirst.errors import KnowledgeBaseError, SourceError
from readfirst.knowledge_base.chunking import Skipped, Unit
from readfirst.knowledge_base.ingest import fork_recipe, paper_recipes, recipe_units
from readfirst.sources import prepare_source

pytestmark = pytest.mark.timeout(120)

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost", "GIT_CONFIG_NOSYSTEM": "1"}
KERNEL = "".join(f"static int add{i}(int a, int b)\n{{\n    int s = a + b;\n    return s * {i};\n}}\n\n"
                 for i in range(12))


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=GIT_ENV)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _repo(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    _git(root, "init", "-q", "-b", "main")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "initial")
    return root


def _arm(repo: Path, how: str, canary: Path) -> None:
    """Plant, after the last commit, a configuration that runs `touch canary` if git reads it."""
    touch = f"touch {canary}"
    config = repo / ".git" / "config"
    if how == "fsmonitor":
        config.write_text(config.read_text() + f"[core]\n\tfsmonitor = {touch}\n")
    elif how == "hooks":
        hooks = repo / "evil-hooks"
        hooks.mkdir()
        for name in ("post-checkout", "post-merge", "reference-transaction", "pre-commit", "post-index-change",
                     "pre-auto-gc", "post-rewrite", "fsmonitor-watchman", "push-to-checkout", "pre-receive",
                     "update", "post-update"):
            (hooks / name).write_text(f"#!/bin/sh\n{touch}\n")
            (hooks / name).chmod(0o755)
            (repo / ".git" / "hooks" / name).write_text(f"#!/bin/sh\n{touch}\n")
            (repo / ".git" / "hooks" / name).chmod(0o755)
        config.write_text(config.read_text() + f"[core]\n\thooksPath = {hooks}\n")
    elif how == "pager":
        config.write_text(config.read_text() + f"[core]\n\tpager = {touch}\n[pager]\n\tls-files = {touch}\n"
                          f"\tlog = {touch}\n\tshow = {touch}\n\tdiff = {touch}\n")
    elif how == "textconv":
        (repo / ".gitattributes").write_text("* diff=evil filter=evil\n")
        _git(repo, "add", ".gitattributes")
        _git(repo, "commit", "-q", "-m", "attributes")
        config.write_text(config.read_text() + f"[diff \"evil\"]\n\ttextconv = sh -c '{touch}'\n"
                          f"\tcommand = sh -c '{touch}'\n[diff]\n\texternal = sh -c '{touch}'\n"
                          f"[filter \"evil\"]\n\tclean = sh -c '{touch}'\n\tsmudge = sh -c '{touch}'\n")
    elif how == "includeIf":
        evil = repo.parent / f"{repo.name}-evil.config"
        evil.write_text(f"[core]\n\tfsmonitor = {touch}\n\tsshCommand = {touch}\n")
        config.write_text(config.read_text() + f"[includeIf \"gitdir:/\"]\n\tpath = {evil}\n"
                          f"[include]\n\tpath = {evil}\n")
    elif how == "signature":
        config.write_text(config.read_text() + f"[log]\n\tshowSignature = true\n[gpg]\n\tprogram = {touch}\n"
                          f"[gc]\n\tauto = 1\n")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["fsmonitor", "hooks", "pager", "textconv", "includeIf", "signature"])
def test_a_foreign_folders_git_configuration_never_runs(attack, how):
    canary = attack.root / "CANARY-ran"
    upstream = _repo(attack.root / "upstream", {"ggml/src/ops.c": KERNEL, "README.md": "# upstream\n"})
    fork = attack.root / "fork"
    subprocess.run(["git", "clone", "-q", str(upstream), str(fork)], check=True, env=GIT_ENV)
    (fork / "ggml/src/fused.c").write_text(KERNEL.replace("add", "fused_add"))
    _git(fork, "add", "-A")
    _git(fork, "commit", "-q", "-m", "Fuse the adds")
    docs = _repo(attack.root / "docs", {"kernel.c": KERNEL, "notes.md": "# Notes\nfused kernels save a pass\n"})
    project = _repo(attack.root / "project", {"main.c": KERNEL})
    for repo in (fork, docs, project):
        _arm(repo, how, canary)
    paths = Paths(attack.root / "home", attack.root / "cache")

    ingested = list(recipe_units({"kind": "path", "path": str(docs)}, paths))
    for recipe in paper_recipes([str(docs)]):
        ingested += list(recipe_units(recipe, paths))
    ingested += list(recipe_units(fork_recipe(str(fork), str(upstream)), paths))
    ingested += list(recipe_units(fork_recipe(str(fork), str(upstream), as_trees=True), paths))
    prepared = prepare_source(str(project), paths.sources, paths.sdists)
    if canary.exists():
        attack.escaped(f"the folder's git configuration ({how}) ran a command on the host")
    text = " ".join(c.text for u in ingested if isinstance(u, Unit) for c in u.chunks)
    assert "int s = a + b" in text and "fused_add" in text and "fused kernels" in text
    assert (prepared.path / "main.c").read_text() == KERNEL


def _host_secret_repo(root: Path) -> Path:
    return _repo(root / "elsewhere", {"secret.c": "int CANARY_host_secret(void) { return 42; }\n"
                                      "static int more(int a)\n{\n    return a;\n}\n"})


def _everything_under(root: Path) -> bytes:
    blobs = b""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            blobs += path.read_bytes()
    return blobs


def _secret_reachable(prepared: Path) -> bool:
    listing = subprocess.run(["git", "-C", str(prepared), "log", "--all", "-p", "--no-color"], capture_output=True,
                             text=True, env=GIT_ENV)
    return "CANARY_host_secret" in listing.stdout or "CANARY_host_secret" in _everything_under(prepared).decode(
        "utf-8", "replace")


@pytest.mark.parametrize("how", ["gitdir-file", "git-symlink", "alternates"])
def test_a_git_dir_leading_out_of_the_folder_is_refused(attack, how):
    elsewhere = _host_secret_repo(attack.root)
    project = attack.root / "project"
    project.mkdir()
    (project / "main.c").write_text(KERNEL)
    if how == "gitdir-file":
        (project / ".git").write_text(f"gitdir: {elsewhere / '.git'}\n")
    elif how == "git-symlink":
        (project / ".git").symlink_to(elsewhere / ".git", target_is_directory=True)
    else:
        # Its own .git, whose objects are borrowed from the host repository and whose HEAD names its commit.
        _repo(project / "inner", {"x.c": "int x;\n"})
        (project / "inner" / ".git").rename(project / ".git")
        (project / ".git" / "objects" / "info" / "alternates").write_text(str(elsewhere / ".git" / "objects") + "\n")
        (project / ".git" / "refs" / "heads" / "main").write_text(_git(elsewhere, "rev-parse", "HEAD") + "\n")
    paths = Paths(attack.root / "home", attack.root / "cache")
    try:
        prepared = prepare_source(str(project), paths.sources, paths.sdists)
    except SourceError as e:
        assert "outside" in str(e), e
        assert "\n" not in str(e).strip()
    else:
        if _secret_reachable(prepared.path):
            attack.escaped(f"a project's .git ({how}) cloned another repository of the host")
    ingested: list = []
    for recipe in ({"kind": "path", "path": str(project)}, fork_recipe(str(project), str(elsewhere), as_trees=True)):
        try:
            ingested += list(recipe_units(recipe, paths))
        except KnowledgeBaseError as e:
            assert "outside" in str(e), e
    text = " ".join(c.text for u in ingested if isinstance(u, Unit) for c in u.chunks)
    if "CANARY_host_secret" in text:
        attack.escaped(f"a folder's .git ({how}) made readfirst read another repository of the host")
    if paths.cache.exists() and b"CANARY_host_secret" in _everything_under(paths.sources):
        attack.escaped(f"a project's .git ({how}) copied another repository's files into the cache")


@pytest.mark.parametrize("as_git", [False, True])
def test_a_folder_linked_out_of_the_tree_is_never_read(attack, as_git):
    outside = attack.root / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\nCANARY-5d1e the host's private notes, never to be ingested\n")
    (outside / "secret.c").write_text("int CANARY_linked_dir(void)\n{\n    return 1;\n}\n")
    tree = attack.root / "tree"
    if as_git:
        # Committed as real files, then swapped for a link in the work tree: the listing names docs/secret.md,
        # whose last component is no link at all.
        _repo(tree, {"kernel.c": KERNEL, "docs/secret.md": "# fine\nharmless text of the tree itself\n",
                     "docs/secret.c": "int fine;\n"})
        for f in (tree / "docs").iterdir():
            f.unlink()
        (tree / "docs").rmdir()
    else:
        tree.mkdir()
        (tree / "kernel.c").write_text(KERNEL)
    (tree / "docs").symlink_to(outside, target_is_directory=True)
    paths = Paths(attack.root / "home", attack.root / "cache")
    out = list(recipe_units({"kind": "path", "path": str(tree)}, paths))
    for recipe in paper_recipes([str(tree)]):
        out += list(recipe_units(recipe, paths))
    text = " ".join(c.text for u in out if isinstance(u, Unit) for c in u.chunks)
    if "CANARY" in text:
        attack.escaped("a folder linked out of the tree was read")
    assert "int s = a + b" in text
    if as_git:
        reasons = {s.unit.rsplit(":", 1)[-1]: s.reason for s in out if isinstance(s, Skipped)}
        assert "out of the tree" in reasons.get("docs/secret.md", ""), reasons


def test_a_fifo_named_like_a_source_is_skipped_not_waited_on(attack):
    tree = _repo(attack.root / "tree", {"kernel.c": KERNEL, "pipe.c": "int fine;\n"})
    (tree / "pipe.c").unlink()
    os.mkfifo(tree / "pipe.c")  # committed as a file, a FIFO in the work tree: reading it would block for ever
    out = list(recipe_units({"kind": "path", "path": str(tree)}, Paths(attack.root / "home", attack.root / "c")))
    reasons = {s.unit.rsplit(":", 1)[-1]: s.reason for s in out if isinstance(s, Skipped)}
    assert reasons == {"pipe.c": "not a regular file"}, reasons


@pytest.mark.parametrize("ref", ["--upload-pack=touch CANARY", "-b", "main\n--output=CANARY", ""])
def test_a_ref_that_git_would_read_as_an_option_is_refused(attack, tmp_path, ref):
    project = _repo(tmp_path / "project", {"src/a.c": KERNEL})
    paths = Paths.resolve(tmp_path / "home")
    try:
        prepare_source(str(project), paths.sources, paths.sdists, ref=ref)
    except SourceError as e:
        assert "is not a git ref" in str(e)
    else:
        attack.escaped(f"the ref {ref!r} was handed to git")
    assert not list(tmp_path.rglob("CANARY")) and not list(Path.cwd().glob("CANARY"))


@pytest.mark.parametrize("how", ["objects-pack-link", "objects-fanout-link", "objects-info-link"])
def test_an_object_store_linked_in_parts_out_of_the_folder_is_refused(attack, how):
    """The folder's own `.git/objects` lies inside it, but a folder within it is a link to another repository's
    store: git would read that repository's objects through it."""
    elsewhere = _host_secret_repo(attack.root)
    _git(elsewhere, "repack", "-a", "-d", "-q")
    secret = _git(elsewhere, "rev-parse", "HEAD")
    project = _repo(attack.root / "project", {"main.c": KERNEL})
    objects = project / ".git" / "objects"
    if how == "objects-pack-link":
        shutil.rmtree(objects / "pack")
        (objects / "pack").symlink_to(elsewhere / ".git" / "objects" / "pack", target_is_directory=True)
    elif how == "objects-fanout-link":
        loose = attack.root / "loose"
        shutil.copytree(elsewhere / ".git", loose)
        for pack in (loose / "objects" / "pack").glob("*.pack"):
            moved = pack.rename(attack.root / pack.name)  # else unpack-objects finds every object already there
            pack.with_suffix(".idx").unlink()
            with open(moved, "rb") as f:
                subprocess.run(["git", "-C", str(loose), "unpack-objects", "-q"], stdin=f, check=True, env=GIT_ENV)
        for fanout in (loose / "objects").glob("[0-9a-f][0-9a-f]"):
            if not (objects / fanout.name).exists():
                (objects / fanout.name).symlink_to(fanout, target_is_directory=True)
    else:
        # `objects/info` a link to a folder whose alternates names another repository's store
        shutil.rmtree(objects / "info")
        info = attack.root / "info-elsewhere"
        info.mkdir()
        (info / "alternates").write_text(str(elsewhere / ".git" / "objects") + "\n")
        (objects / "info").symlink_to(info, target_is_directory=True)
    (project / ".git" / "refs" / "heads" / "main").write_text(secret + "\n")
    paths = Paths(attack.root / "home", attack.root / "cache")
    try:
        prepared = prepare_source(str(project), paths.sources, paths.sdists)
    except SourceError as e:
        assert "outside" in str(e), e
    else:
        if _secret_reachable(prepared.path):
            attack.escaped(f"a project's .git/objects ({how}) cloned another repository of the host")
    out: list = []
    try:
        out = list(recipe_units({"kind": "path", "path": str(project)}, paths))
    except KnowledgeBaseError as e:
        assert "outside" in str(e), e
    if "CANARY_host_secret" in " ".join(c.text for u in out if isinstance(u, Unit) for c in u.chunks):
        attack.escaped(f"a folder's .git/objects ({how}) made readfirst read another repository of the host")


@pytest.mark.parametrize("how", ["head-outside-refs", "head-absolute", "packed-refs-escape", "loose-ref-link"])
def test_refs_naming_files_outside_refs_are_left_out(attack, how):
    """HEAD and the refs are copied as validated text: a name that climbs out of refs/, an absolute one, or a ref
    file that is a link elsewhere never reaches the copy git reads."""
    from readfirst.foreign_git import ForeignRepo
    elsewhere = _host_secret_repo(attack.root)
    secret = _git(elsewhere, "rev-parse", "HEAD")
    project = _repo(attack.root / "project", {"main.c": KERNEL})
    own = _git(project, "rev-parse", "HEAD")
    dotgit = project / ".git"
    if how == "head-outside-refs":
        (dotgit / "HEAD").write_text(f"ref: refs/../../../{elsewhere.name}/.git/refs/heads/main\n")
    elif how == "head-absolute":
        (dotgit / "HEAD").write_text(f"ref: {elsewhere / '.git' / 'refs' / 'heads' / 'main'}\n")
    elif how == "packed-refs-escape":
        (dotgit / "packed-refs").write_text(f"# pack-refs with: peeled fully-peeled sorted\n"
                                            f"{secret} refs/../../{elsewhere.name}/.git/HEAD\n"
                                            f"{secret} refs/heads/../../../x\n{secret} ../outside\n")
    else:
        (dotgit / "refs" / "heads" / "other").symlink_to(elsewhere / ".git" / "refs" / "heads" / "main")
    with ForeignRepo(project) as repo:
        copied = "\n".join(p.read_text() for p in repo.git_dir.rglob("*") if p.is_file() and
                           (p.name in ("HEAD", "packed-refs") or "refs" in p.relative_to(repo.git_dir).parts))
        listed = repo.git("for-each-ref", "--format=%(refname) %(objectname)").stdout
        head = repo.commit("HEAD")
    if secret in copied or secret in listed or ".." in copied or str(elsewhere) in copied:
        attack.escaped(f"a ref ({how}) naming a file outside refs/ reached readfirst's copy:\n{copied}")
    assert head in (own, None), head
