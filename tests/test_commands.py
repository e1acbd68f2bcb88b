"""dicomnode._commands: C-STORE commands encoded directly, the bytes pynetdicom sends."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification

import dicomnode.forward  # noqa: F401 - the forwarder's pynetdicom settings: files sent as on disk
from dicomnode import _commands as commands
from dicomnode._commands import data_set_fragments, encode_store_request, encode_store_response
from dicomnode._scu import direct_requests, woken
from dicomnode.ingest import Ingest
from tests.test_ingest import listener  # noqa: F401 - the fixture: the node's listener

CT = "1.2.840.10008.5.1.4.1.1.2"


def _response(**fields: Any) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = fields.pop("MessageID", 7)
    rsp.MessageIDBeingRespondedTo = fields.pop("MessageIDBeingRespondedTo", 7)
    for name, value in fields.items():
        setattr(rsp, name, value)
    return rsp


def _pynetdicom(primitive: C_STORE, max_pdu: int = 0) -> list[bytes]:
    """The PDVs pynetdicom's send_msg sends for ``primitive``."""
    response = primitive.MessageIDBeingRespondedTo is not None
    message = C_STORE_RSP() if response else C_STORE_RQ()
    message.primitive_to_message(primitive)
    return [
        data
        for pdata in message.encode_msg(1, max_pdu)
        for _, data in pdata.presentation_data_value_list
    ]


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xA900, 0xC211, 0x0122, 0x0124, 0xB000, 0xFFFF])
@pytest.mark.parametrize(
    "uids",
    [
        {"AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": "1.2.3.4"},
        {"AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": "1.2.3.45"},
        {"AffectedSOPClassUID": "1.2", "AffectedSOPInstanceUID": "2.25." + "1" * 59},
        {"AffectedSOPInstanceUID": "1.2.3"},
        {},
    ],
)
def test_the_bytes_are_pynetdicom_s(status: int, uids: dict[str, str]) -> None:
    for answered in (1, 0xFFFF):
        rsp = _response(Status=status, MessageIDBeingRespondedTo=answered, **uids)
        encoded = encode_store_response(rsp)
        assert encoded is not None
        assert [b"\x03" + encoded] == _pynetdicom(rsp)


@pytest.mark.parametrize(
    "fields",
    [
        {"Status": 0xC211, "ErrorComment": "why"},
        {"Status": 0xA900, "OffendingElement": [0x00080016]},
        {"Status": 0, "AffectedSOPInstanceUID": "1.2.x"},  # not a plain UID: pynetdicom's way
        {"Status": 0, "AffectedSOPClassUID": "1." + "2" * 70},
        {"MessageIDBeingRespondedTo": None, "Status": 0},  # a request
    ],
)
def test_anything_else_is_left_to_pynetdicom(fields: dict[str, Any]) -> None:
    try:
        rsp = _response(**fields)
    except (TypeError, ValueError):
        return  # pynetdicom would not have built it either
    assert encode_store_response(rsp) is None


def test_other_primitives_are_left_to_pynetdicom() -> None:
    from pynetdicom.dimse_primitives import C_ECHO

    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.Status = 0
    assert encode_store_response(echo) is None


def _file(tmp_path: Path, pixel_bytes: int) -> tuple[Path, int]:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.PatientName = "NOBODY"
    if pixel_bytes:
        ds.BitsAllocated = 8
        ds.PixelData = bytes(range(256)) * (pixel_bytes // 256) + b"\x07" * (pixel_bytes % 256)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / f"i{pixel_bytes}.dcm"
    ds.save_as(path, enforce_file_format=True)
    _, offset = split_dataset(path)
    return path, offset


def _request(path: Path, offset: int, **fields: Any) -> C_STORE:
    req = C_STORE()
    req.MessageID = fields.pop("MessageID", 3)
    req.Priority = fields.pop("Priority", 2)
    req.AffectedSOPClassUID = fields.pop("AffectedSOPClassUID", CT)
    req.AffectedSOPInstanceUID = fields.pop("AffectedSOPInstanceUID", "1.2.3.4.5")
    for name, value in fields.items():
        setattr(req, name, value)
    req._dataset_path = (path, offset)
    return req


@pytest.mark.parametrize("pixel_bytes", [0, 1, 16_000, 300_001])
@pytest.mark.parametrize("max_pdu", [0, 16_384, 65_536, 262_144])
def test_a_request_of_a_file_is_pynetdicom_s_bytes(
    tmp_path: Path, pixel_bytes: int, max_pdu: int
) -> None:
    """The command and every data set fragment, as pynetdicom's encode_msg gives them."""
    path, offset = _file(tmp_path, pixel_bytes)
    for message_id, priority in ((1, 2), (0xFFFF, 0), (77, 1)):
        req = _request(path, offset, MessageID=message_id, Priority=priority)
        encoded = encode_store_request(req)
        assert encoded is not None
        ours = [b"\x03" + encoded, *data_set_fragments((path, offset), max_pdu)]
        assert ours == _pynetdicom(req, max_pdu)


def test_an_empty_data_set_is_one_empty_last_fragment(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"x" * 10)
    req = _request(path, 10)
    assert list(data_set_fragments((path, 10), 16_384)) == [b"\x02"]
    assert _pynetdicom(req, 16_384)[1:] == [b"\x02"]


@pytest.mark.parametrize(
    "fields",
    [
        {"AffectedSOPInstanceUID": "1.2.x"},
        {"MoveOriginatorApplicationEntityTitle": "MOVER"},
        {"MoveOriginatorMessageID": 5},
        {"MessageIDBeingRespondedTo": 3, "Status": 0},  # a response
    ],
)
def test_other_requests_are_left_to_pynetdicom(tmp_path: Path, fields: dict[str, Any]) -> None:
    path, offset = _file(tmp_path, 0)
    try:
        req = _request(path, offset, **fields)
    except (TypeError, ValueError):
        return  # pynetdicom would not have built it either
    assert encode_store_request(req) is None
    in_memory = _request(path, offset)
    in_memory._dataset_path = None
    in_memory.DataSet = BytesIO(b"\x08\x00\x16\x00")
    assert encode_store_request(in_memory) is None


def test_both_ends_over_a_real_association(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Ingest, list[str]],  # noqa: F811 - test_ingest's fixture
) -> None:
    """A forwarder-style association (``direct_requests``) sends files to the node's own
    listener (``Responses``): every command of both ends takes the direct path, and the
    spool holds each data set byte for byte."""
    sent: list[bytes] = []  # command fragments encoded here, queued or written directly
    real, real_pdus = commands._send_fragment, commands.p_data_tf

    def spy(assoc: Any, context_id: int, fragment: bytes) -> None:
        if fragment[:1] == b"\x03":
            sent.append(fragment)
        real(assoc, context_id, fragment)

    def spy_pdus(context_id: int, fragments: Iterable[bytes]) -> Iterator[bytes]:
        for fragment in fragments:
            if fragment[:1] == b"\x03":
                sent.append(fragment)
            yield from real_pdus(context_id, (fragment,))

    monkeypatch.setattr(commands, "_send_fragment", spy)
    monkeypatch.setattr(commands, "p_data_tf", spy_pdus)
    ingest, received = listener
    ae = AE(ae_title="FORWARDER")
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1",
        ingest.port,
        ae_title="DICOMNODE",
        evt_handlers=[(evt.EVT_CONN_OPEN, direct_requests)],
    )
    assert assoc.is_established
    files = [_file(tmp_path, size) for size in (0, 5_000, 700_001)]
    try:
        statuses = [assoc.send_c_store(path).Status for path, _ in files]
    finally:
        assoc.release()
    assert statuses == [0, 0, 0]
    assert len(sent) == 2 * len(files)  # each request and each response
    stored = sorted(ingest.spool.incoming.iterdir(), key=lambda p: p.stat().st_size)
    assert len(received) == len(stored) == len(files)
    for (path, offset), copy in zip(files, stored, strict=True):
        assert copy.read_bytes()[split_dataset(copy)[1] :] == path.read_bytes()[offset:]


@pytest.mark.parametrize("context_id", [1, 127, 255])
@pytest.mark.parametrize(
    "fragment", [b"\x02", b"\x03" + bytes(range(200)), b"\x00" + b"x" * 16_378]
)
def test_a_p_data_tf_pdu_is_pynetdicom_s_bytes(context_id: int, fragment: bytes) -> None:
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, fragment))
    ours = b"".join(commands.p_data_tf(context_id, [fragment]))
    assert ours == P_DATA_TF(primitive).encode()


def test_the_forwarder_writes_each_message_itself(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Ingest, list[str]],  # noqa: F811 - test_ingest's fixture
) -> None:
    """With the forwarder's handlers (``woken``, ``direct_requests``) every C-STORE request
    goes out through the transport's own writer, none through the DUL thread's queue, at a
    16 KB maximum PDU as storescp and Orthanc offer, and so does the listener's response to
    each; the spool holds each data set byte for byte, and the association carries on with
    pynetdicom's own C-ECHO after them."""
    queued: list[tuple[Any, bytes]] = []  # the listener's responses too: same process
    real = commands._send_fragment

    def spy(assoc: Any, context_id: int, fragment: bytes) -> None:
        queued.append((assoc, fragment))
        real(assoc, context_id, fragment)

    monkeypatch.setattr(commands, "_send_fragment", spy)
    ingest, received = listener
    ae = AE(ae_title="FORWARDER")
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    ae.maximum_pdu_size = 16_384
    assoc = ae.associate(
        "127.0.0.1",
        ingest.port,
        ae_title="DICOMNODE",
        max_pdu=16_384,
        evt_handlers=[(evt.EVT_CONN_OPEN, woken), (evt.EVT_CONN_OPEN, direct_requests)],
    )
    assert assoc.is_established
    files = [_file(tmp_path, size) for size in (0, 5_000, 700_001, 3_000_001)]
    try:
        statuses = [assoc.send_c_store(path).Status for path, _ in files]
        echo = assoc.send_c_echo().Status
    finally:
        assoc.release()
    assert statuses == [0, 0, 0, 0] and echo == 0
    assert queued == []  # neither the requests nor the listener's four responses
    stored = sorted(ingest.spool.incoming.iterdir(), key=lambda p: p.stat().st_size)
    assert len(received) == len(stored) == len(files)
    for (path, offset), copy in zip(files, stored, strict=True):
        assert copy.read_bytes()[split_dataset(copy)[1] :] == path.read_bytes()[offset:]
