"""The copy-back of a fixed-size /out (sandbox.docker_sandbox._copy_tree), on plain directories: what a container
left comes back as what it is, links and FIFOs made again and never followed, files up to the mount's size."""

from __future__ import annotations

import os
import stat

from readfirst.sandbox.docker_sandbox import _copy_tree


def test_results_come_back_as_what_they_are_and_nothing_is_followed(tmp_path):
    src, dest, secret = tmp_path / "src", tmp_path / "dest", tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("SECRET")
    (src / "sub").mkdir(parents=True)
    (src / "bench.json").write_text('{"ok": 1}')
    (src / "sub" / "ops.json").write_text("[]")
    (src / "link.json").symlink_to(secret / "key")
    (src / "dir-link").symlink_to(secret)
    os.mkfifo(src / "fifo")
    with open(src / "sparse", "wb") as f:
        f.truncate(1 << 30)
    dest.mkdir()
    _copy_tree(src, dest, 1 << 20)
    assert (dest / "bench.json").read_text() == '{"ok": 1}' and (dest / "sub" / "ops.json").read_text() == "[]"
    assert os.readlink(dest / "link.json") == str(secret / "key") and (dest / "dir-link").is_symlink()
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
    assert not (dest / "sparse").exists()  # past the budget: left out
    assert "SECRET" not in "".join(p.read_text() for p in dest.rglob("*") if p.is_file() and not p.is_symlink())
