"""Crash-safe file writes: the one atomic writer of checkpoints and saved models, and the check
that an output folder is writable."""
from __future__ import annotations

import errno
import os
import tempfile

import torch

from .errors import CheckpointError

__all__ = ["atomic_save", "make_writable_dir", "is_disk_full"]


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


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to a temp file in the folder of ``path``, fsync it, rename it over
    ``path``, fsync the folder.

    A crash or a full disk at any point leaves either the old file or the new one, never half of
    one, and no temp file. A full disk raises :class:`CheckpointError` naming the folder; other
    errors propagate unchanged.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
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
