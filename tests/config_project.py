"""A real third-party project for the config target: LZ4's block compressor (lz4.c and lz4.h, vendored by the
lz4 4.4.5 sdist on PyPI), with a harness of ours (a Makefile, a bench that prints METRIC lines, a round-trip
test) and a readfirst.toml. No helpers of its own are tested here; test_config_target.py uses them.

The upstream carries a planted slowdown (a redundant pass over the input in LZ4_compress_default); its fork
is a git copy with that pass removed among unrelated commits, so a run that reads the fork has one known win
to find.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

from readfirst.sources import SdistSpec, fetch_sdist

LZ4 = SdistSpec("lz4", "4.4.5", "lz4libs")

ANCHOR = "int LZ4_compress_default(const char* src, char* dst, int srcSize, int maxOutputSize)\n{\n"
SLOWDOWN = ("    {   /* checksum the input first (three passes) */\n"
            "        volatile unsigned sink = 0; int pass, i;\n"
            "        for (pass = 0; pass < 3; pass++) for (i = 0; i < srcSize; i++) sink += (unsigned char)src[i];\n"
            "    }\n")

BENCH_C = r"""#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "../lz4/lz4.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    int size = 4 << 20, rounds = argc > 1 ? atoi(argv[1]) : 20;
    char *src = malloc(size), *dst = malloc(LZ4_compressBound(size));
    unsigned x = 12345;
    for (int i = 0; i < size; i++) {  /* text-like, partly compressible, the same every run */
        x = x * 1103515245u + 12345u;
        src[i] = "abcdefgh    lz4 "[(x >> 16) & 15];
        if ((x >> 8) % 7 == 0) src[i] = (char)(x >> 24);
    }
    int n = LZ4_compress_default(src, dst, size, LZ4_compressBound(size));  /* warm */
    double t0 = now();
    for (int r = 0; r < rounds; r++) n = LZ4_compress_default(src, dst, size, LZ4_compressBound(size));
    double dt = now() - t0;
    printf("METRIC mb_per_s=%.3f\nMETRIC ratio=%.4f\n", rounds * (size / 1e6) / dt, (double)size / n);
    return n > 0 ? 0 : 1;
}
"""

TEST_C = r"""#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../lz4/lz4.h"

static int roundtrip(const char *name, const char *src, int size) {
    char *dst = malloc(LZ4_compressBound(size)), *back = malloc(size + 1);
    int n = LZ4_compress_default(src, dst, size, LZ4_compressBound(size));
    int m = n > 0 ? LZ4_decompress_safe(dst, back, n, size) : -1;
    int ok = m == size && memcmp(src, back, size) == 0;
    printf("%s %s (%d -> %d bytes)\n", ok ? "ok" : "FAIL", name, size, n);
    free(dst); free(back);
    return ok;
}

int main(void) {
    static char zeros[100000], noise[100000], text[100000];
    unsigned x = 7;
    for (int i = 0; i < 100000; i++) { x = x * 1664525u + 1013904223u; noise[i] = (char)(x >> 24);
                                        text[i] = "the quick brown fox "[i % 20]; }
    int ok = roundtrip("zeros", zeros, sizeof zeros) & roundtrip("noise", noise, sizeof noise)
           & roundtrip("text", text, sizeof text) & roundtrip("tiny", "a", 1);
    return ok ? 0 : 1;
}
"""

MAKEFILE = """CFLAGS ?= -O2
all: bench/lz4bench tests/roundtrip
bench/lz4bench: bench/bench.c lz4/lz4.c lz4/lz4.h
\t$(CC) $(CFLAGS) -o $@ bench/bench.c lz4/lz4.c
tests/roundtrip: tests/roundtrip.c lz4/lz4.c lz4/lz4.h
\t$(CC) $(CFLAGS) -o $@ tests/roundtrip.c lz4/lz4.c
test: tests/roundtrip
\t./tests/roundtrip
"""

CONFIG = """[target]
name = "lz4"
hot_paths = ["lz4/**"]
protected = ["bench/**", "tests/**", "Makefile"]
description = "LZ4 block compression, lz4.c of the lz4 4.4.5 sdist"

[build]
command = "make -j2"
timeout_s = 300

[test]
command = "make test"
timeout_s = 120

[bench]
command = "{bench}"
timeout_s = {bench_timeout}

[objective]
metric = "{metric}"
direction = "higher"
unit = "MB/s"
{objective_extra}
[objective.guards]
ratio = 0.01

[[variants]]
title = "build with -O3"
kind = "build"
env = {{ CFLAGS = "-O3" }}
"""


def lz4_sources(sdists: Path) -> dict[str, str]:
    """lz4.c and lz4.h as the sdist ships them."""
    tarball = fetch_sdist(LZ4, sdists)
    with tarfile.open(tarball) as tar:
        return {name: tar.extractfile(f"lz4-4.4.5/lz4libs/{name}").read().decode() for name in ("lz4.c", "lz4.h")}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout


def patch_at_baseline(repo: Path, old: str, new: str, path: str = "lz4/lz4.c") -> str:
    """A diff of `path` as the baseline commit has it, with `old` (which must be there) replaced by `new`."""
    import difflib
    before = git(repo, "show", f"baseline:{path}")
    assert old in before
    after = before.replace(old, new, 1)
    return f"diff --git a/{path} b/{path}\n" + "".join(difflib.unified_diff(
        before.splitlines(True), after.splitlines(True), f"a/{path}", f"b/{path}"))


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def make_project(dest: Path, sdists: Path, *, bench: str = "./bench/lz4bench 20", bench_timeout: int = 60,
                 metric: str = "mb_per_s", slowdown: bool = True, objective_extra: str = "") -> Path:
    """The upstream project, as a git repository with one commit; `objective_extra`: lines added to its
    [objective] table."""
    sources = lz4_sources(sdists)
    lz4_c = sources["lz4.c"]
    assert ANCHOR in lz4_c, "lz4.c changed: the planted slowdown has no anchor"
    if slowdown:
        lz4_c = lz4_c.replace(ANCHOR, ANCHOR + SLOWDOWN, 1)
    files = {"lz4/lz4.c": lz4_c, "lz4/lz4.h": sources["lz4.h"], "bench/bench.c": BENCH_C,
             "tests/roundtrip.c": TEST_C, "Makefile": MAKEFILE, "README.md": "LZ4 with a harness.\n",
             "readfirst.toml": CONFIG.format(bench=bench, bench_timeout=bench_timeout, metric=metric,
                                            objective_extra=objective_extra)}
    for rel, text in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(dest, "init", "-q", "-b", "main")
    commit_all(dest, "lz4 with a harness")
    return dest


def make_fork(project: Path, dest: Path) -> Path:
    """A git fork of `project`: an unrelated comment change in lz4.h, the fix (the redundant pass removed), and
    a README change."""
    subprocess.run(["git", "clone", "-q", str(project), str(dest)], check=True, capture_output=True)
    header = dest / "lz4/lz4.h"
    text = header.read_text()
    header.write_text(text.replace("Introduction", "Introduction (fork notes: see README)", 1))
    commit_all(dest, "docs: point to the fork's notes")
    source = dest / "lz4/lz4.c"
    source.write_text(source.read_text().replace(SLOWDOWN, "", 1))
    commit_all(dest, "compress: drop the redundant checksum passes")
    (dest / "README.md").write_text("LZ4 with a harness, forked.\n")
    commit_all(dest, "readme")
    return dest


def vendored(fork: Path, dest: Path) -> Path:
    """The fork as a plain tree (no git history), as vendored copies ship."""
    shutil.copytree(fork, dest, ignore=shutil.ignore_patterns(".git"))
    return dest


MOVED_FILE = """/* The fork keeps its public entry points here, in its own style. */
#include "lz4.h"

int
LZ4_compress_default (const char *src, char *dst,
                      int srcSize, int maxOutputSize)
{
\treturn LZ4_compress_fast (src, dst, srcSize, maxOutputSize, 1);
}
"""


def make_moved_fork(project: Path, dest: Path) -> Path:
    """A vendored fork (a plain tree) that moved LZ4_compress_default, without the redundant passes, out of
    lz4.c into a file of its own and reformatted it: no hunk of lz4.c carries the fix, only the function does."""
    shutil.copytree(project, dest, ignore=shutil.ignore_patterns(".git"))
    source = dest / "lz4/lz4.c"
    text = source.read_text()
    start = text.index(ANCHOR)
    end = text.index("}\n", start) + 2
    source.write_text(text[:start] + text[end:])
    (dest / "lz4/lz4_default.c").write_text(MOVED_FILE)
    return dest
