"""Logging, set up the same way by the command line and by every worker process.

Our own log lines never carry a value from an instance (DESIGN: "log events, never PHI").
Libraries are another matter: pydicom warns with the value it found wrong ("Invalid value for
VR UI: '1.2.3.Smith'"), and Python's warnings carry the message whole. Every record from a
library, and every captured warning, is cut to the kind of problem before it reaches a
handler: the text up to the first quoted or listed value, then "(value withheld)".
"""

from __future__ import annotations

import json
import logging
import re
import warnings

__all__ = ["JsonFormatter", "redact_library_message", "setup_logging"]

# Loggers whose messages may quote values from an instance.
_LIBRARIES = (
    "pydicom",
    "pynetdicom",
    "py.warnings",
    "PIL",
    "rapidocr",
    "onnxruntime",
    "httpx",
    "httpcore",
)
# A value starts at a quote (also b'..' reprs), after ": " or "= ", or in angle brackets.
_VALUE = re.compile(r"""["'`<]|:\s|=\s|\bb'""")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def redact_library_message(message: str) -> str:
    """The kind of problem a library reports, without the value it quotes."""
    prefix = ""
    head, sep, rest = message.partition("Warning: ")
    if sep and head.count(":") >= 2:
        # A captured warning, "path:line: UserWarning: text\n  source line": keep the category.
        prefix = head.rsplit(" ", 1)[-1] + "Warning: "
        message = rest.split("\n", 1)[0]
    match = _VALUE.search(message)
    if match is None:
        return prefix + message[:200]
    return prefix + message[: match.start()].rstrip(" :=,-") + " (value withheld)"


class _RedactLibraries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_LIBRARIES):
            record.msg = redact_library_message(record.getMessage())
            record.args = ()
            record.exc_info = None  # a library's traceback may quote values too
            record.exc_text = None
        return True


def setup_logging(level: int | str = logging.INFO, form: str = "text", verbose: int = 0) -> None:
    """Configure the root logger: one stream handler, our format, libraries redacted.

    Called once by the CLI and once by each worker process (spawned processes start with no
    logging configured), so that both write the same format and neither leaks values.

    pynetdicom logs every association at INFO and every failed attempt at ERROR (a destination
    that is down gave two lines and a ResourceWarning per retry): our own line says what
    happened (the forwarder's retry, ``echo``'s sentence, the gate's refusal), so pynetdicom
    is silent unless ``verbose`` (-v: its warnings and errors, -vvv: everything) or the level
    is DEBUG. httpx logs every request at INFO: only its warnings, unless -vvv.
    """
    handler = logging.StreamHandler()
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactLibraries())
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn(...) goes through the filter above
    warnings.simplefilter("default")  # each distinct warning once per place, not a flood
    # ...but not ResourceWarning, which Python itself hides outside development: a library's
    # unclosed socket after a failed connection said nothing an operator can act on, once per
    # retry.
    warnings.filterwarnings("ignore", category=ResourceWarning)
    # pydicom logs each of its warnings a second time, on every occurrence: the captured
    # warning (once per place) is enough.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    quiet = verbose == 0 and root.getEffectiveLevel() > logging.DEBUG
    detail = logging.DEBUG if verbose >= 3 else logging.WARNING
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL if quiet else detail)
    logging.getLogger("httpx").setLevel(detail)
