"""Keyed, stateless pseudonyms: HMAC-SHA256 of a site secret.

Every node that holds the same secret maps the same input to the same pseudonym, with no
shared state and no lookup table to protect or lose. Without the secret a pseudonym cannot
be reversed or recomputed from a guess of the original (unlike a plain hash).

The secret comes from the file named by ``DICOMNODE_SECRET_FILE`` or from
``DICOMNODE_SECRET``; never from the configuration file, and it is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from pathlib import Path

from dicomnode.errors import SecretError
from dicomnode.scrub.timeshift import Shift

log = logging.getLogger(__name__)

SECRET_FILE_ENV = "DICOMNODE_SECRET_FILE"
SECRET_ENV = "DICOMNODE_SECRET"
MIN_SECRET_BYTES = 16
# Public on purpose: anyone can recompute demo pseudonyms. For trying the node, never for data.
DEMO_SECRET = b"dicomnode-demo-secret-DO-NOT-USE-FOR-PATIENT-DATA"

_HOW_TO = (
    "create one with 'openssl rand -hex 32 > /etc/dicomnode/secret' (keep it safe: it is "
    f"the key to every pseudonym) and set {SECRET_FILE_ENV}=/etc/dicomnode/secret"
)


def load_secret(*, demo: bool = False) -> bytes:
    """Return the site secret, or the public demo secret when ``demo`` is set.

    Raises :class:`SecretError` when neither variable is set, the file cannot be read, or the
    secret is shorter than 16 bytes.
    """
    path = os.environ.get(SECRET_FILE_ENV)
    value: bytes | None = None
    if path:
        try:
            value = Path(path).read_bytes().strip()
        except OSError as exc:
            raise SecretError(
                f"cannot read the secret file named by {SECRET_FILE_ENV} ({exc.strerror}); "
                "check the path and that the node's user may read it"
            ) from None
    elif os.environ.get(SECRET_ENV):
        value = os.environ[SECRET_ENV].encode("utf-8").strip()
    if value is None:
        if demo:
            log.warning(
                "DEMO MODE: pseudonyms use a PUBLIC secret; anyone can recompute them. "
                "Never send patient data to this node. To run for real, %s",
                _HOW_TO,
            )
            return DEMO_SECRET
        raise SecretError(f"no pseudonym secret: {_HOW_TO} (or run with --demo to try it out)")
    if len(value) < MIN_SECRET_BYTES:
        raise SecretError(
            f"the pseudonym secret is {len(value)} bytes; at least {MIN_SECRET_BYTES} are "
            f"needed: {_HOW_TO}"
        )
    return value


PROJECT_KEY_LABEL = b"dicomnode project pseudonym key v1"


def project_key(secret: bytes, project: str) -> bytes:
    """The pseudonym key of one project: HMAC-SHA256(site secret, label, 0, project name).

    Each project's pseudonyms (UIDs, Patient IDs, date shifts) are keyed by its own key, so
    the same patient gets unrelated pseudonyms in two studies: one study's data cannot be
    linked to another's without the site secret. Every node with the secret derives the same
    key from the name, with no state to share; renaming a project therefore changes its
    pseudonyms. A project configured ``pseudonyms: site`` uses the site secret itself (the
    pseudonyms of a node without projects).
    """
    return hmac.new(
        secret, PROJECT_KEY_LABEL + b"\x00" + project.encode("utf-8"), hashlib.sha256
    ).digest()


class Pseudonymizer:
    """Derives UIDs, identifiers and date shifts from one secret.

    Each kind of value is hashed under its own label, so the same string used as a UID and as
    a patient ID does not give related pseudonyms.
    """

    __slots__ = ("_key", "_max_days", "_min_days", "_uid_cache")

    def __init__(self, secret: bytes, *, date_shift_days: tuple[int, int] = (-3650, -1)) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise SecretError(f"the pseudonym secret must be at least {MIN_SECRET_BYTES} bytes")
        self._key = secret
        self._min_days, self._max_days = date_shift_days
        self._uid_cache: dict[str, str] = {}

    def _digest(self, label: bytes, value: str) -> bytes:
        return hmac.new(self._key, label + b"\x00" + value.encode("utf-8"), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """Map a UID to ``2.25.<integer>``: valid, at most 44 characters, stable everywhere."""
        cached = self._uid_cache.get(value)
        if cached is None:
            number = int.from_bytes(self._digest(b"uid", value)[:16], "big")
            cached = f"2.25.{number}"
            if len(self._uid_cache) > 65536:
                self._uid_cache.clear()
            self._uid_cache[value] = cached
        return cached

    def code(self, value: str, *, label: str = "id", length: int = 16) -> str:
        """A short upper-case code (base32 of the digest) for an identifier."""
        digest = self._digest(label.encode("utf-8"), value)
        return base64.b32encode(digest).decode("ascii")[:length]

    def patient_id(self, value: str, prefix: str = "") -> str:
        """The pseudonym of a Patient ID: ``prefix`` followed by 16 base32 characters."""
        return prefix + self.code(value, label="patient-id")

    def date_shift_days(self, patient_key: str) -> int:
        """Days to add to every date of one patient; the same for all of that patient's data."""
        span = self._max_days - self._min_days + 1
        number = int.from_bytes(self._digest(b"date-shift", patient_key)[:8], "big")
        return self._min_days + number % span

    def shift(self, patient_key: str) -> Shift:
        """The offset of every date and time of one patient: the day shift above plus 1 to
        86399 seconds, so that a time of day is never left as it was."""
        number = int.from_bytes(self._digest(b"time-shift", patient_key)[:8], "big")
        return Shift(self.date_shift_days(patient_key), 1 + number % 86399)
