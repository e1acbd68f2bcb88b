"""Durable, private file writes: a crash leaves either the old state or the new one, never
half, and what is written is readable by whom the administrator chose, whatever the umask.

Temp file in the same folder, write, fsync, ``os.replace``, fsync of the folder; the temp
file is removed if anything fails. Modes are set explicitly (``fchmod``/``chmod``), never left
to the process umask: the spool holds originals full of PHI, and a service started with
umask 022 must not make them world-readable. The spool, the audit trail and the folder
destination build on this.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import stat
import tempfile
import threading
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import cast

__all__ = [
    "Access",
    "fsync_dir",
    "make_dirs",
    "set_dir_mode",
    "start_writeback",
    "umask_file_mode",
    "write_atomic",
    "write_temp",
]


class Access(StrEnum):
    """Who may read what the node writes: its own user only, or its group too.

    ``private`` (the default everywhere): files 0600, folders 0700. ``group``: files 0640,
    folders 0750, for a group the administrator chose (the node's group, or the group of a
    setgid folder). Nothing is ever world-readable.
    """

    PRIVATE = "private"
    GROUP = "group"

    @property
    def file_mode(self) -> int:
        return 0o640 if self is Access.GROUP else 0o600

    @property
    def dir_mode(self) -> int:
        return 0o750 if self is Access.GROUP else 0o700

    @classmethod
    def of_folder(cls, path: Path) -> Access:
        """The access a folder was given (group when its group may enter it); private when
        it does not exist."""
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return cls.PRIVATE
        return cls.GROUP if mode & stat.S_IXGRP else cls.PRIVATE


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing dirty pages out, do not wait
_WRITEBACK_WAITING = 64  # write-outs queued at most (a disk that falls behind skips the rest)


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2) from the C library (Python's os module lacks it)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError, TypeError):
        return None  # not Linux, or no such call: the final fsync does all the work
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], call)


_SYNC_RANGE = _sync_file_range()


def start_writeback(fd: int) -> None:
    """Have the kernel start writing ``fd``'s dirty pages to disk soon, without waiting.

    A file that arrives over the network is written while it arrives: starting its write-out
    as it grows leaves the fdatasync that makes it durable only the tail and the journal commit
    to wait for (0.98 -> 0.21 ms for a 0.5 MB file on the CI disk). This only starts I/O and
    proves nothing: durability is still that fdatasync's, which follows. The call is made on
    a thread of its own (a duplicate of ``fd``, closed after it): submitting the I/O costs the
    caller's CPU (~0.1-0.3 ms per 256 KiB here), and the caller is the thread that receives.
    A no-op where the call does not exist or fails (the fdatasync then does it all)."""
    if _SYNC_RANGE is not None:
        _WRITEBACK.submit(fd)


class _Writeback:
    """The thread that starts write-outs (:func:`start_writeback`), one per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._pid = 0  # the process whose thread runs (a fork has none)

    def submit(self, fd: int) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()
                    threading.Thread(
                        target=self._run,
                        args=(self._queue,),
                        name="dicomnode-writeback",
                        daemon=True,
                    ).start()
                    self._pid = os.getpid()
        if self._queue.qsize() >= _WRITEBACK_WAITING:
            return  # the disk is behind: the fdatasync will do it (no descriptors piled up)
        try:
            duplicate = os.dup(fd)
        except OSError:
            return
        self._queue.put(duplicate)

    @staticmethod
    def _run(fds: queue.SimpleQueue[int]) -> None:
        assert _SYNC_RANGE is not None
        while True:
            fd = fds.get()
            try:
                _SYNC_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
            finally:
                os.close(fd)


_WRITEBACK = _Writeback()


def _read_umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, for a moment, for
    every thread); the ``os.umask`` round trip only where /proc does not say."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def umask_file_mode() -> int:
    """The mode a plain ``open`` would give a new file now (offline outputs keep this)."""
    return 0o666 & ~_read_umask()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def set_dir_mode(path: Path, mode: int) -> None:
    """Give a folder exactly ``mode``, keeping a setgid bit it has (inherited from a setgid
    parent: the administrator's way of choosing the group)."""
    current = os.stat(path).st_mode
    wanted = mode | (current & stat.S_ISGID)
    if stat.S_IMODE(current) != wanted:
        os.chmod(path, wanted)


def make_dirs(path: Path, mode: int, *, gid: int | None = None) -> None:
    """``mkdir -p`` where every folder created gets exactly ``mode`` (and group ``gid``);
    folders that exist already are left as they are (``/var/lib``...).

    ``mkdir`` applies the umask, which only removes bits, so a new folder is never more open
    than ``mode``, even for the moment before its ``chmod``.
    """
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_dirs(path.parent, mode, gid=gid)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            return
    if gid is not None:
        os.chown(path, -1, gid)
    set_dir_mode(path, mode)


def write_temp(
    folder: Path,
    data: bytes | Sequence[bytes | bytearray],
    *,
    fsync: bool = True,
    mode: int | None = None,
) -> Path:
    """Write ``data`` to a new temporary file in ``folder`` (fsynced); the caller links or
    renames it into place and removes it. On failure nothing is left behind.

    The file gets ``mode`` whatever the umask; ``None``: what the umask allows (offline
    outputs, in a folder the user chose). The node always says which mode.
    """
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)  # 0600 from the start
    try:
        os.fchmod(fd, umask_file_mode() if mode is None else mode)
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
    mode: int | None = None,
    dir_mode: int | None = None,
) -> None:
    """Write ``data`` (bytes, or a list of buffers) to ``path`` atomically, durably when
    ``fsync``. The temporary file is made in ``tmp_dir`` (same file system) or beside
    ``path``, so that a reader of the target folder never sees it.

    ``mode``: the file's mode whatever the umask (``None``: what the umask allows, for
    offline outputs); ``dir_mode``: the mode of folders created on the way (``None``: the
    umask's).
    """
    if dir_mode is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        make_dirs(path.parent, dir_mode)
    tmp = write_temp(tmp_dir or path.parent, data, fsync=fsync, mode=mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)
