"""The exceptions dicomnode raises, in one tree.

::

    DicomnodeError
    ├── ConfigError                 a configuration or rule file is wrong: names the file, the
    │                               setting or rule, and the fix; the node refuses to start
    ├── SecretError                 no usable pseudonym secret: the node refuses to start
    ├── StartupError                the node cannot start here and now (another node holds the
    │                               spool, a port is taken, the bind address is not this
    │                               host's): names the setting, the address and the fix
    └── InstanceError               one instance cannot be cleaned with certainty: it goes to
        │                           quarantine (``reason`` names the folder), never downstream
        ├── UnreadableInstanceError the bytes are not a DICOM instance we can parse
        ├── UnsupportedInstanceError a valid object we do not de-identify (DICOMDIR, no SOP
        │                           Instance UID, a transfer syntax we cannot write)
        └── ScrubError              a rule could not be applied to a value

Operators see ``str(error)``: it says what happened and what to do, and never carries a
value taken from the instance (no PHI in messages).
"""

from __future__ import annotations


class DicomnodeError(Exception):
    """Base of every error dicomnode raises on purpose."""


class ConfigError(DicomnodeError):
    """A configuration or rule file cannot be used as it is."""


class SecretError(DicomnodeError):
    """The site secret for pseudonyms is missing or unusable."""


class StartupError(DicomnodeError):
    """The node cannot start as configured, for a reason outside its files (exit code 2)."""


class InstanceError(DicomnodeError):
    """An instance cannot be cleaned with certainty; it must be quarantined.

    ``reason`` is a short, stable slug used as the quarantine folder name and as a metric
    label; the message gives the detail.
    """

    reason = "instance-error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class UnreadableInstanceError(InstanceError):
    """The data is not DICOM, is truncated, or is malformed past recovery."""

    reason = "unreadable"


class UnsupportedInstanceError(InstanceError):
    """A well-formed object that dicomnode does not de-identify."""

    reason = "unsupported"


class ScrubError(InstanceError):
    """A rule of the profile could not be applied."""

    reason = "scrub-failed"


def panicked(exc: BaseException) -> bool:
    """Is ``exc`` a panic of a codec written in Rust? pyo3 raises it as
    ``pyo3_runtime.PanicException``, a ``BaseException`` that ``except Exception`` lets
    through: pylibjpeg-rle 2.2 panics on a corrupt RLE frame (an index out of bounds), which
    killed the worker; every such instance cost worker restarts before its quarantine. Those
    who catch ``Exception`` around third-party code take these too."""
    return type(exc).__module__ == "pyo3_runtime"
