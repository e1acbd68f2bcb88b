"""The audit trail: one JSON line per instance and per delivery, rotated, never with PHI.

Lines carry the time, the spool id, the calling AE title, the pseudonymised UIDs and patient
pseudonym of the clean object (never an original value), what was done (counts), the outcome
and the destination. The spool id joins an instance's lines: ``cleaned`` (or ``quarantined``),
then ``delivered`` (or ``dead-lettered``) once per destination.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["AuditTrail"]


class AuditTrail:
    """Appends JSON lines to a size-rotated file (or nowhere, when ``path`` is None)."""

    def __init__(self, path: Path | None, *, max_mb: int = 100, backups: int = 10) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._handler: logging.Handler | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=max_mb * 1024 * 1024, backupCount=backups, encoding="utf-8"
            )

    def write(self, event: str, **fields: Any) -> None:
        if self._handler is None:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **fields}
        line = json.dumps(record, sort_keys=False, default=str)
        with self._lock:
            self._handler.emit(
                logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"})
            )

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
