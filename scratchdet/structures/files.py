"""Crash-safe file writes: the one atomic writer of checkpoints and saved models, and the check
that an output folder is writable."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from typing import IO, Callable

import torch

from .errors import CheckpointError

__all__ = ["atomic_save", "atomic_write", "atomic_write_json", "make_writable_dir", "is_disk_full"]


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` means the disk (or the quota) ran out of space. torch's zip writer does not
    raise an OSError then, but ``RuntimeError: [enforce fail at inline_container.cc:...] ...
    unexpected pos`` or "... file write failed"."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    if isinstance(exc, RuntimeError):
        text = str(exc)
        return "unexpected pos" in text or "file write failed" in text
    return False


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 less the umask): a temp file from mkstemp is
    0o600, and a model renamed from it would be unreadable to everyone but its owner."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into a temp file in the folder of ``path``, fsync it, give it the mode a new file
    gets, rename it over ``path``, fsync the folder.

    A crash or a full disk at any point leaves either the old file or the new one, never half of
    one, and no temp file. A full disk raises :class:`CheckpointError` naming the folder; other
    errors propagate unchanged.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        os.fchmod(fd, _new_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise CheckpointError(f"the disk is full: no space left in {folder} to write {os.path.basename(path)} "
                                  "(nothing was replaced); free some space and run again") from None
        raise
    _fsync_folder(folder)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path: str | os.PathLike, data) -> None:
    """``data`` as indented JSON at ``path``, through :func:`atomic_write`."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode("utf-8")))


def make_writable_dir(path: str | os.PathLike) -> None:
    """Create ``path`` if needed and write a probe file there; OSError if that fails. The probe has
    a unique name, so processes checking one folder at once (torchrun's ranks) do not delete each
    other's."""
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        os.unlink(probe)
