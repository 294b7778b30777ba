"""Reading results back from a container's scratch directory without following symlinks out of it.

A container controls what it leaves in /out: a result file could be a symlink to a host secret. Every component
of the path is opened with O_NOFOLLOW, relative to the directory's own descriptor.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_READBACK = 64 * 1024 * 1024


def open_inside(root: Path, relative: str):
    """A regular file under `root`, opened for reading in binary without following a link at any step of the path
    and without waiting on a FIFO; for files read as a stream (a run's trace), where read_bytes_inside's cap does
    not fit."""
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise OSError(f"refusing to read {relative!r}: not a plain relative path")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer that never comes (the
        # container is gone); the file type is checked before anything is read.
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    f = os.fdopen(ffd, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise OSError(f"refusing to read {relative!r}: not a regular file")
    return f


def read_bytes_inside(root: Path, relative: str, *, limit: int = MAX_READBACK) -> bytes:
    with open_inside(root, relative) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"refusing to read {relative!r}: larger than {limit} bytes")
    return data


def read_text_inside(root: Path, relative: str, *, limit: int = MAX_READBACK) -> str:
    return read_bytes_inside(root, relative, limit=limit).decode("utf-8", errors="replace")
