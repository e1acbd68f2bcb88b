"""dicomnode._responses: C-STORE responses encoded directly, the bytes pynetdicom sends."""

from __future__ import annotations

from typing import Any

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from dicomnode._responses import encode_store_response

CT = "1.2.840.10008.5.1.4.1.1.2"


def _response(**fields: Any) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = fields.pop("MessageID", 7)
    rsp.MessageIDBeingRespondedTo = fields.pop("MessageIDBeingRespondedTo", 7)
    for name, value in fields.items():
        setattr(rsp, name, value)
    return rsp


def _pynetdicom(rsp: C_STORE, max_pdu: int = 0) -> list[bytes]:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
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
