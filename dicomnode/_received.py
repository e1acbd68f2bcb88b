"""The file pynetdicom opens for each C-STORE data set as it arrives, at a fraction of the cost.

With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom 3.0 (``DIMSEMessage.decode_msg``, pinned in
tests/test_hostile_network.py) starts every received C-STORE with a ``NamedTemporaryFile``
and a file meta group built as a pydicom ``FileMetaDataset`` and written by pydicom's
``write_file_meta_info``. On the listener's path that is ~1 ms of Python per instance
(py-spy, 0.5 MB CT: ~0.16 ms the temporary file, ~0.9 ms the file meta), on the thread that
receives, for every instance, against ~2 ms for all the rest of the receive.
:func:`install` gives that module cheaper names for the same three things:

- :class:`ReceivedFile`: an unbuffered file created exclusively (``O_EXCL``, mode 0600) under
  a random name in ``tempfile.gettempdir()`` (the spool's ``tmp/``, set by ``Ingest.start``),
  with what pynetdicom and the gate use of a ``NamedTemporaryFile``; each ``write`` writes
  everything (the data goes straight to the file: pynetdicom's ``flush`` has nothing to do).
- :func:`create_file_meta` / :func:`write_file_meta_info`: the same bytes pydicom writes
  (tests compare them), encoded directly when the UIDs are plain UIDs; anything else (a
  sender's malformed UID) goes to pydicom's own functions, as before.
"""

from __future__ import annotations

import io
import os
import re
import struct
import tempfile
import uuid
from typing import Any

from pydicom.filewriter import write_file_meta_info as _pydicom_write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.dsutils import create_file_meta as _pynetdicom_create_file_meta

__all__ = ["EncodedFileMeta", "ReceivedFile", "create_file_meta", "install", "write_file_meta_info"]

_PLAIN_UID = re.compile(r"[0-9.]{1,64}")


class ReceivedFile(io.FileIO):
    """A new file for a data set being received (what pynetdicom needs of its temporary file).

    ``file`` is the file itself (pynetdicom calls ``file.flush()``); ``write`` writes all it is
    given or raises (``io.FileIO`` alone may write less, and pynetdicom ignores the count)."""

    def __init__(self, *, delete: bool = False, mode: str = "wb", suffix: str = "") -> None:
        if delete or mode != "wb":
            raise ValueError("ReceivedFile is only what pynetdicom asks for: wb, not deleted")
        path = os.path.join(tempfile.gettempdir(), uuid.uuid4().hex + suffix)
        super().__init__(path, "xb", opener=_private)

    @property
    def file(self) -> ReceivedFile:
        return self

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            written = super().write(view[done:])
            if not written:
                raise OSError(f"no progress writing {self.name}")
            done += written
        return done


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


class EncodedFileMeta(bytes):
    """A file meta group already encoded (Explicit VR Little Endian, group length first)."""


def create_file_meta(**kwargs: Any) -> Any:
    """pynetdicom's ``create_file_meta``, encoded at once when the UIDs are plain UIDs and the
    implementation's are pynetdicom's (an :class:`EncodedFileMeta`); else pynetdicom's own."""
    uids = (
        kwargs.get("sop_class_uid"),
        kwargs.get("sop_instance_uid"),
        kwargs.get("transfer_syntax"),
    )
    plain = all(isinstance(u, str) and _PLAIN_UID.fullmatch(u) for u in uids)
    if not plain or set(kwargs) - {"sop_class_uid", "sop_instance_uid", "transfer_syntax"}:
        return _pynetdicom_create_file_meta(**kwargs)  # (or another implementation's UID)
    sop_class, sop_instance, syntax = (str(u) for u in uids)
    body = b"".join(
        (
            b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01",
            _element(0x0002, b"UI", sop_class.encode("ascii"), b"\0"),
            _element(0x0003, b"UI", sop_instance.encode("ascii"), b"\0"),
            _element(0x0010, b"UI", syntax.encode("ascii"), b"\0"),
            _IMPLEMENTATION,
        )
    )
    return EncodedFileMeta(b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(body)) + body)


def _element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


_IMPLEMENTATION = _element(
    0x0012, b"UI", str(PYNETDICOM_IMPLEMENTATION_UID).encode("ascii"), b"\0"
) + _element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" ")


def write_file_meta_info(fp: Any, file_meta: Any, enforce_standard: bool = True) -> None:
    """pydicom's ``write_file_meta_info``; an :class:`EncodedFileMeta` is written as it is."""
    if isinstance(file_meta, EncodedFileMeta) and enforce_standard:
        fp.write(file_meta)
        return
    _pydicom_write_file_meta_info(fp, file_meta, enforce_standard=enforce_standard)


def install() -> None:
    """Give pynetdicom's ``dimse_messages`` these three names (every association of this
    process: only a C-STORE received in chunks uses them)."""
    names = {
        "NamedTemporaryFile": ReceivedFile,
        "create_file_meta": create_file_meta,
        "write_file_meta_info": write_file_meta_info,
    }
    for name, replacement in names.items():
        assert hasattr(_dimse_messages, name), f"pynetdicom.dimse_messages has no {name}"
        setattr(_dimse_messages, name, replacement)
