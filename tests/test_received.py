"""dicomnode._received: pynetdicom's file for a C-STORE data set, opened and begun cheaply."""

from __future__ import annotations

import os
import stat
import tempfile
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.filewriter import write_file_meta_info as pydicom_write_file_meta_info
from pynetdicom import dimse_messages
from pynetdicom.dsutils import create_file_meta as pynetdicom_create_file_meta

import dicomnode.ingest  # noqa: F401 - installs dicomnode._received, as a listener does
from dicomnode._received import (
    EncodedFileMeta,
    ReceivedFile,
    create_file_meta,
    write_file_meta_info,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.1.99",
]


def _pydicom(**uids: str) -> bytes:
    out = BytesIO()
    pydicom_write_file_meta_info(out, pynetdicom_create_file_meta(**uids))  # type: ignore[arg-type]
    return out.getvalue()


def _ours(**uids: str) -> bytes:
    out = BytesIO()
    write_file_meta_info(out, create_file_meta(**uids))
    return out.getvalue()


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("instance", ["1.2.3", "1.2.34", "2.25." + "9" * 59, "1." + "2" * 62])
def test_the_file_meta_is_pydicom_s_byte_for_byte(syntax: str, instance: str) -> None:
    uids = {"sop_class_uid": CT, "sop_instance_uid": instance, "transfer_syntax": syntax}
    assert isinstance(create_file_meta(**uids), EncodedFileMeta)
    assert _ours(**uids) == _pydicom(**uids)


@pytest.mark.parametrize("instance", ["", "1.2.3 ", "1.2.\u00e93", "1." + "2" * 70, "x" * 10])
def test_a_uid_that_is_not_a_plain_one_goes_to_pydicom(instance: str) -> None:
    """A sender's malformed UID is written as pydicom writes it (or refused as pydicom
    refuses it), never by our encoder."""
    uids = {"sop_class_uid": CT, "sop_instance_uid": instance, "transfer_syntax": SYNTAXES[1]}
    assert not isinstance(create_file_meta(**uids), EncodedFileMeta)
    try:
        expected: bytes | type[Exception] = _pydicom(**uids)
    except Exception as exc:
        expected = type(exc)
    if isinstance(expected, bytes):
        assert _ours(**uids) == expected
    else:
        with pytest.raises(expected):
            _ours(**uids)


def test_the_received_file_is_new_private_and_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    umask = os.umask(0)  # the mode must not depend on it
    try:
        first = ReceivedFile(delete=False, mode="wb", suffix=".dcm")
        second = ReceivedFile(delete=False, mode="wb", suffix=".dcm")
    finally:
        os.umask(umask)
    assert first.name != second.name
    assert Path(first.name).parent == tmp_path and first.name.endswith(".dcm")
    assert stat.S_IMODE(os.stat(first.name).st_mode) == 0o600
    data = os.urandom(3 * 1024 * 1024 + 1)
    assert first.write(memoryview(data)[1:]) == len(data) - 1
    first.file.flush()  # what pynetdicom calls after each fragment
    first.close()
    second.close()
    assert Path(first.name).read_bytes() == data[1:]
    with pytest.raises(ValueError):
        ReceivedFile(delete=True, mode="wb")


def test_pynetdicom_uses_them_in_this_process() -> None:
    assert dimse_messages.NamedTemporaryFile is ReceivedFile  # type: ignore[attr-defined]
    assert dimse_messages.create_file_meta is create_file_meta  # type: ignore[attr-defined]
    assert dimse_messages.write_file_meta_info is write_file_meta_info  # type: ignore[attr-defined]
