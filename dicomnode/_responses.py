"""C-STORE responses encoded directly, instead of through a pydicom command set per message.

pynetdicom 3.0 sends every response through ``DIMSEServiceProvider.send_msg`` (pinned in
tests/test_hostile_network.py): a new ``C_STORE_RSP`` whose command set is a pydicom
``Dataset`` of every element the message may have, filled from the primitive
(``primitive_to_message``) and encoded by pydicom. For the ~150 bytes of a C-STORE-RSP that is
~0.9 ms of Python on the listener's path (traced: 0.2 ms the message, 0.47 ms filling it,
0.27 ms encoding it), once per instance received; the sender waits for it. :class:`Responses`
(installed per accepted association by the gate) encodes the common case itself, the same
bytes (tests compare them with pynetdicom's): a C-STORE response with a status, the UIDs of
the request when they are plain UIDs, and nothing else. Anything else (a comment, an
offending element, a UID a sender made up that is not plain, a peer whose maximum PDU cannot
hold it in one piece, a handler bound to ``EVT_DIMSE_SENT``) goes to pynetdicom's own path.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

__all__ = ["Responses", "encode_store_response"]

_PLAIN_UID = re.compile(r"[0-9.]{1,64}")
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_COMMAND_LAST = b"\x03"  # message control header: a command set, its last fragment


def encode_store_response(primitive: Any) -> bytes | None:
    """The command set (Implicit VR Little Endian) of a C-STORE response ``primitive`` as
    pynetdicom would encode it, when it has a status, a message ID it answers and plain UIDs
    only; None for anything else."""
    if type(primitive) is not C_STORE:
        return None
    answered, status = primitive.MessageIDBeingRespondedTo, primitive.Status
    if not isinstance(answered, int) or not isinstance(status, int):
        return None
    if not (0 <= answered <= 0xFFFF and 0 <= status <= 0xFFFF):
        return None  # pynetdicom's own checks say what is wrong
    if primitive.OffendingElement is not None or primitive.ErrorComment is not None:
        return None
    if primitive.DataSet is not None:
        return None
    elements = []
    for tag, uid in (
        (0x0002, primitive.AffectedSOPClassUID),
        (0x1000, primitive.AffectedSOPInstanceUID),
    ):
        if uid is None:
            continue
        if not _PLAIN_UID.fullmatch(str(uid)):
            return None
        value = str(uid).encode("ascii")
        elements.append((tag, value + b"\0" if len(value) % 2 else value))
    elements += [
        (0x0100, struct.pack("<H", _C_STORE_RSP)),
        (0x0120, struct.pack("<H", answered)),
        (0x0800, struct.pack("<H", _NO_DATA_SET)),
        (0x0900, struct.pack("<H", status)),
    ]
    body = b"".join(
        struct.pack("<HHI", 0x0000, tag, len(value)) + value for tag, value in sorted(elements)
    )
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


class Responses:
    """An association's ``dimse.send_msg``: C-STORE responses encoded here
    (:func:`encode_store_response`), everything else by pynetdicom."""

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        self._send: Callable[[Any, int], None] = assoc.dimse.send_msg

    @classmethod
    def install(cls, assoc: Association) -> None:
        setattr(assoc.dimse, "send_msg", cls(assoc))  # noqa: B010 - a method, per instance

    def __call__(self, primitive: Any, context_id: int) -> None:
        encoded = encode_store_response(primitive)
        assoc = self._assoc
        limit = assoc.dimse.maximum_pdu_size
        if (
            encoded is None
            or (limit and len(encoded) > limit - 6)
            or assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            self._send(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, _COMMAND_LAST + encoded))
        assoc.dul.send_pdu(pdata)
