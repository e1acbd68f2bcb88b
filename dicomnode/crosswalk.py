"""An append-only, encrypted crosswalk for the honest broker: original -> pseudonym.

Keyed pseudonyms cannot be reversed, which is the point; yet an honest broker sometimes must
re-identify (an incidental finding, a withdrawal of consent). The node therefore appends,
for every PatientID, AccessionNumber and StudyInstanceUID it replaces, one record that only
the holder of a separate private key can read. The node holds the public key alone: a
stolen node, or its backups, reveal nothing.

Format: one record per line, the base64 of an age file (https://age-encryption.org/v1,
X25519 recipient) whose plaintext is a small JSON object padded with spaces to a multiple
of 256 bytes, so that records of ordinary values all have the same length and neither the
kind nor the length of a value can be told from the file (age adds a "grease" stanza of
random length to each header: noise that says nothing about the values). Any line can also be opened with
the ``age`` tool: ``sed -n 5p crosswalk | base64 -d | age -d -i key.txt``.

Appends use ``O_APPEND`` and a single ``write`` per record, so several worker processes can
share one file; each record is on disk (``fdatasync``) before :meth:`CrosswalkWriter.record`
returns.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import pyrage  # type: ignore[import-untyped]

from dicomnode.errors import ConfigError, InstanceError

__all__ = [
    "CrosswalkKind",
    "CrosswalkWriter",
    "check_public_key",
    "generate_keypair",
    "read_crosswalk",
    "write_private_key",
]

log = logging.getLogger(__name__)

BUCKET = 256  # plaintexts are padded to a multiple of this many bytes
_DEDUPE_MAX = 100_000  # remembered records per process; past this, start afresh
_FORMAT = 1
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_PUBLIC = re.compile(rf"age1[{_BECH32}]{{58}}")
_KEYGEN_HINT = "'dicomnode crosswalk-keygen --out KEY_FILE' prints one"


class CrosswalkKind(enum.StrEnum):
    """The values the crosswalk records, by DICOM keyword."""

    PATIENT_ID = "PatientID"
    ACCESSION_NUMBER = "AccessionNumber"
    STUDY_INSTANCE_UID = "StudyInstanceUID"


def check_public_key(text: str) -> str:
    """Return the age X25519 public key in ``text``, stripped; ValueError saying the fix if not.

    The value is never repeated in the message: a private key pasted by mistake must not
    end up in a log.
    """
    key = text.strip()
    if key.upper().startswith("AGE-SECRET-KEY-"):
        raise ValueError(
            "this is a PRIVATE key: it must never be on the node; put its public key "
            "(age1...) here and keep the private key with the honest broker"
        )
    if not _PUBLIC.fullmatch(key):
        raise ValueError(
            "not an age X25519 public key ('age1' and 58 lower-case letters and digits); "
            + _KEYGEN_HINT
        )
    try:
        pyrage.x25519.Recipient.from_str(key)
    except pyrage.RecipientError:
        raise ValueError(
            "not a valid age X25519 public key (its checksum is wrong: copy it again); "
            + _KEYGEN_HINT
        ) from None
    return key


def generate_keypair() -> tuple[str, str]:
    """A new (private, public) age X25519 key pair, as the texts age itself uses."""
    identity = pyrage.x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def write_private_key(path: Path) -> str:
    """Create ``path`` (mode 0600, never overwriting) holding a new private key; return the
    public key.

    The file is an age identity file, so the ``age`` tool reads it too.
    """
    private, public = generate_keypair()
    text = (
        f"# created: {time.strftime('%Y-%m-%dT%H:%M:%S%z')} by dicomnode crosswalk-keygen\n"
        f"# public key: {public}\n"
        f"{private}\n"
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{path} exists; a key is never overwritten (the crosswalk written for it would "
            "become unreadable): choose another file name"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the key file ({exc.strerror})") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write the key file ({exc.strerror})") from None
    os.close(fd)
    _fsync_folder(path.parent)
    return public


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _kind(kind: str) -> CrosswalkKind:
    try:
        return CrosswalkKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in CrosswalkKind)
        raise ValueError(f"crosswalk kind must be one of {known}") from None


def _seal(recipient: Any, kind: CrosswalkKind, original: str, pseudonym: str) -> bytes:
    """One record line: padded JSON, encrypted to the recipient, base64, newline."""
    plain = json.dumps(
        {"v": _FORMAT, "k": kind.value, "o": original, "p": pseudonym},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    size = max(BUCKET, -(-len(plain) // BUCKET) * BUCKET)
    sealed: bytes = pyrage.encrypt(plain.ljust(size, b" "), [recipient])
    return base64.b64encode(sealed) + b"\n"


class CrosswalkWriter:
    """Appends encrypted records to the crosswalk file; one per process (or shared by threads).

    The same (kind, original, pseudonym) is written once per process: a study of 2,000
    instances adds three records, not 6,000. After a restart, records already in the file
    may be written again; readers see duplicates, never conflicts.
    """

    def __init__(self, path: Path, public_key: str) -> None:
        self.path = Path(path)
        try:
            self._recipient = pyrage.x25519.Recipient.from_str(check_public_key(public_key))
        except ValueError as exc:
            raise ConfigError(f"scrub.crosswalk.public_key: {exc}") from None
        self._fd: int | None = None
        self._lock = threading.Lock()
        # Records already written, as keyed digests: the originals are not kept around.
        self._salt = os.urandom(16)
        self._seen: set[bytes] = set()

    def record(self, kind: str, original: str, pseudonym: str) -> None:
        """Append (kind, original, pseudonym) unless this process has written it already.

        ``kind`` is ``PatientID``, ``AccessionNumber`` or ``StudyInstanceUID``; an empty
        original has nothing to re-identify and is not written. Raises
        :class:`~dicomnode.errors.InstanceError` (reason ``crosswalk-failed``) when the file
        cannot be written: the instance must then not go out, since the broker could not
        re-identify it.
        """
        which = _kind(kind)
        if not original:
            return
        digest = hashlib.blake2b(
            "\0".join((which.value, original, pseudonym)).encode("utf-8"),
            digest_size=16,
            key=self._salt,
        ).digest()
        with self._lock:
            if digest in self._seen:
                return
            line = _seal(self._recipient, which, original, pseudonym)
            try:
                fd = self._open()
                written = os.write(fd, line)
                if written != len(line):
                    # A short write (disk full): end the damaged line so the next record
                    # starts on its own; readers skip the damaged one and say so.
                    os.write(fd, b"\n")
                    raise OSError(28, "short write (no space left on device?)")
                os.fdatasync(fd)
            except OSError as exc:
                raise InstanceError(
                    f"cannot append to the crosswalk {self.path} ({exc.strerror}); check free "
                    "disk and that the node's user may write it",
                    reason="crosswalk-failed",
                ) from None
            if len(self._seen) >= _DEDUPE_MAX:
                self._seen.clear()
            self._seen.add(digest)

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(self.path, flags, 0o600)
            created = False
        try:
            mode = os.fstat(fd).st_mode & 0o777
            if mode != 0o600:
                if not created:
                    log.warning("crosswalk %s had mode %o; setting 0600", self.path, mode)
                os.fchmod(fd, 0o600)
            if created:
                _fsync_folder(self.path.parent)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        return fd

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> CrosswalkWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _identities(private_key: str) -> list[Any]:
    """The age identities in ``private_key``: a key, or the text of an age identity file
    (several keys are allowed, e.g. the old and the new one after a rotation)."""
    found = []
    for raw in private_key.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise ConfigError(
                "the private key is not an age X25519 key (a line 'AGE-SECRET-KEY-1...'); "
                "give the file 'dicomnode crosswalk-keygen' wrote"
            ) from None
    if not found:
        raise ConfigError(
            "no private key found (a line 'AGE-SECRET-KEY-1...'); give the file "
            "'dicomnode crosswalk-keygen' wrote"
        )
    return found


def read_crosswalk(path: Path, private_key: str) -> Iterator[tuple[str, str, str]]:
    """Yield (kind, original, pseudonym) for every record ``private_key`` opens, in order.

    Lines written for another key (before a key rotation) or damaged ones (a crash during a
    write) are skipped and counted in a warning; a key that opens none of the records is
    a :class:`~dicomnode.errors.ConfigError`, raised once the file has been read.
    """
    identities = _identities(private_key)
    try:
        handle = open(path, "rb")  # noqa: SIM115 (the generator below closes it)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the crosswalk ({exc.strerror})") from None
    # Errors in the key or the path are raised here, when called, not at the first record.
    return _records(path, handle, identities)


def _records(path: Path, handle: BinaryIO, identities: list[Any]) -> Iterator[tuple[str, str, str]]:
    records = opened = 0
    unopened: list[int] = []
    with handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            records += 1
            try:
                plain = pyrage.decrypt(base64.b64decode(line, validate=True), identities)
                entry = json.loads(plain)
                kind, original, pseudonym = entry["k"], entry["o"], entry["p"]
            except (binascii.Error, pyrage.DecryptError, ValueError, KeyError, TypeError):
                unopened.append(number)
                continue
            opened += 1
            yield str(kind), str(original), str(pseudonym)
    if records and not opened:
        raise ConfigError(
            f"{path}: the key opens none of its {records} record(s); it is not the private "
            "key of the public key in scrub.crosswalk.public_key (or the file is damaged)"
        )
    if unopened:
        shown = ", ".join(map(str, unopened[:10])) + (", ..." if len(unopened) > 10 else "")
        log.warning(
            "%s: %d record(s) not opened by this key (lines %s): written for another key, "
            "or damaged by a crash",
            path,
            len(unopened),
            shown,
        )
