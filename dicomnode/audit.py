"""The audit trail: one JSON line per instance and per delivery, rotated, never with PHI.

Lines carry the time, the spool id, the calling AE title, the pseudonymised UIDs and patient
pseudonym of the clean object (never an original value), what was done (counts), the outcome
and the destination. The spool id joins an instance's lines: ``cleaned`` (or ``quarantined``),
then ``delivered`` (or ``dead-lettered``) once per destination.

The file and its rotations are 0600 (``logging.audit_mode: group``: 0640) whatever the
umask: pseudonyms and calling AE titles are not for every local user.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import logging.handlers
import os
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dicomnode.durable import Access, make_dirs

__all__ = ["AuditTrail"]

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


class _PrivateRotatingHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose files get a fixed mode, not the umask's: the first file,
    and each new one after a rotation (the rotated ones keep theirs)."""

    def __init__(self, path: Path, file_mode: int, *, max_bytes: int, backups: int) -> None:
        self.file_mode = file_mode
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.file_mode)
        try:
            os.fchmod(fd, self.file_mode)
        except BaseException:
            os.close(fd)
            raise
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


class AuditTrail:
    """Appends JSON lines to a size-rotated file (or nowhere, when ``path`` is None).

    ``access`` None: as the existing file is (private when there is none), so that a CLI
    command writing to the node's trail keeps the node's choice.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        max_mb: int = 100,
        backups: int = 10,
        access: Access | None = None,
    ) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._handler: logging.Handler | None = None
        if path is not None:
            if access is None:
                access = _access_of_file(path)
            make_dirs(path.parent, access.dir_mode)
            _end_line(path)
            self._handler = _PrivateRotatingHandler(
                path, access.file_mode, max_bytes=max_mb * 1024 * 1024, backups=backups
            )
            for n in range(1, backups + 1):  # rotations written by an older version
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{path}.{n}", access.file_mode)

    def write(self, event: str, *, when: str | None = None, **fields: Any) -> None:
        """Append one line; ``when`` is the time it happened, if not now (a line written at
        start-up for an item cleaned before a crash keeps the time it was cleaned)."""
        if self._handler is None:
            return
        record = {"time": when or time.strftime(TIME_FORMAT), "event": event, **fields}
        line = json.dumps(record, sort_keys=False, default=str)
        with self._lock:
            self._handler.emit(
                logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"})
            )

    def written(self, event: str, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` have an ``event`` line in the current file or the last rotation.

        For start-up after a crash: a line written just before the kill is in one of these
        two; older lines are not searched (they cannot be the ones in doubt).
        """
        wanted = set(ids)
        found: set[str] = set()
        if self.path is None or not wanted:
            return found
        with self._lock:
            if self._handler is not None:
                self._handler.flush()
            for path in (Path(f"{self.path}.1"), self.path):
                try:
                    fh = path.open("rb")
                except FileNotFoundError:
                    continue
                with fh:
                    for line in fh:
                        if b'"id"' not in line or event.encode() not in line:
                            continue
                        try:
                            record = json.loads(line)
                        except ValueError:
                            continue  # a torn last line
                        if (
                            isinstance(record, dict)
                            and record.get("event") == event
                            and record.get("id") in wanted
                        ):
                            found.add(str(record["id"]))
        return found

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()


def _end_line(path: Path) -> None:
    """A kill in the middle of a line leaves it without its newline; end it, so that the
    next line starts on its own (readers skip the torn one)."""
    try:
        with path.open("rb+") as fh:
            if fh.seek(0, os.SEEK_END) and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
                fh.write(b"\n")
    except FileNotFoundError:
        pass


def _access_of_file(path: Path) -> Access:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return Access.PRIVATE
    return Access.GROUP if mode & stat.S_IRGRP else Access.PRIVATE
