"""Writing files so that they survive a crash or power loss whole: the model store's versions and the
lifecycle files. A rename is only durable once the directory holding it is fsynced too."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (the directory entry is the caller's: `fsync_dir`)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably: readers see the old content or the new, whole
    (a temporary file beside it, fsynced, renamed over it, then the directory fsynced)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory, deepest first (``root`` last)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for file in files:
            path = Path(dirpath) / file
            if path.is_symlink():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
