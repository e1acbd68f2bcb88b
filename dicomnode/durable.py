"""Durable file writes: a crash leaves either the old state or the new one, never half.

Temp file in the same folder, write, fsync, ``os.replace``, fsync of the folder; the temp
file is removed if anything fails. The spool and the folder destination build on this.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic", "write_temp"]

# mkstemp creates 0600 files; outputs get the usual mode under the process umask instead.
_UMASK = os.umask(0)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(
    folder: Path, data: bytes | Sequence[bytes | bytearray], *, fsync: bool = True
) -> Path:
    """Write ``data`` to a new temporary file in ``folder`` (fsynced); the caller links or
    renames it into place and removes it. On failure nothing is left behind."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes | bytearray):
                fh.write(data)
            else:
                for chunk in data:
                    fh.write(chunk)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def write_atomic(
    path: Path,
    data: bytes | Sequence[bytes | bytearray],
    *,
    fsync: bool = True,
    tmp_dir: Path | None = None,
) -> None:
    """Write ``data`` (bytes, or a list of buffers) to ``path`` atomically, durably when
    ``fsync``. The temporary file is made in ``tmp_dir`` (same file system) or beside
    ``path``, so that a reader of the target folder never sees it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temp(tmp_dir or path.parent, data, fsync=fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)
