"""C-STORE command sets encoded directly, instead of through a pydicom data set per message.

pynetdicom 3.0 sends every message through ``DIMSEServiceProvider.send_msg`` (pinned in
tests/test_hostile_network.py): a new DIMSE message whose command set is a pydicom
``Dataset`` of every element the message may have, filled from the primitive
(``primitive_to_message``) and encoded by pydicom. For the ~150 bytes of a C-STORE command
that is ~0.9 ms of Python (traced on the listener: 0.2 ms the message, 0.47 ms filling it,
0.27 ms encoding it), once per instance, in the listener (the response: the sender waits for
it) and again in the forwarder (the request). The common cases are encoded here, the same
bytes (tests/test_commands.py compares them with pynetdicom's):

- :class:`Responses` (each accepted association, by the gate): a C-STORE response with a
  status and the request's UIDs when they are plain UIDs, written by the association's own
  thread where the connection is plain TCP (the gate's socket is a ``dicomnode._net.PduWriter``);
- :class:`Requests` (each association the forwarder requests: ``dicomnode._scu.direct_requests``): a C-STORE
  request of a file sent as it is on disk (``STORE_SEND_CHUNKED_DATASET``), its data set read
  from the file in fragments as pynetdicom's ``encode_msg`` reads it. Where the association's
  transport can (``dicomnode._scu``: plain TCP), the whole message is written by the sending
  thread as P-DATA-TF PDUs (:func:`p_data_tf`, the same bytes), not handed to the DUL thread
  one PDU at a time (:func:`_writer`); it streams the file in ~1 MiB groups and gives up on a
  peer that takes nothing for the DIMSE timeout (pynetdicom's DUL thread waited forever).
  Over TLS the DUL thread still writes, fed ~1 MiB at a time (:meth:`Requests.queue`).

Anything else (a comment, an offending element, a UID that is not plain, a move originator, a
data set in memory, a peer whose maximum PDU cannot hold the command in one piece, a handler
bound to ``EVT_DIMSE_SENT``) goes to pynetdicom's own path.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, cast, runtime_checkable

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from dicomnode._net import GROUP_BYTES

__all__ = [
    "Requests",
    "Responses",
    "data_set_fragments",
    "encode_store_request",
    "encode_store_response",
    "p_data_tf",
]

_PLAIN_UID = re.compile(r"[0-9.]{1,64}")
_C_STORE_RQ = 0x0001
_C_STORE_RSP = 0x8001
_DATA_SET = 0x0001  # CommandDataSetType as pynetdicom writes it when a data set follows
_NO_DATA_SET = 0x0101
_COMMAND_LAST = b"\x03"  # message control header: a command set, its last fragment
_DATA = b"\x00"  # a data set fragment
_DATA_LAST = b"\x02"  # the data set's last fragment


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
    uids = _uid_elements(primitive)
    if uids is None:
        return None
    return _command_set(
        [
            *uids,
            (0x0100, struct.pack("<H", _C_STORE_RSP)),
            (0x0120, struct.pack("<H", answered)),
            (0x0800, struct.pack("<H", _NO_DATA_SET)),
            (0x0900, struct.pack("<H", status)),
        ]
    )


def encode_store_request(primitive: Any) -> bytes | None:
    """The command set of a C-STORE request ``primitive`` whose data set is a file
    (``_dataset_path``) as pynetdicom would encode it, when it has a message ID, a priority
    and both plain UIDs, and nothing else; None for anything else."""
    if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is not None:
        return None
    if getattr(primitive, "_dataset_path", None) is None or primitive.DataSet is not None:
        return None
    message_id, priority = primitive.MessageID, primitive.Priority
    if not isinstance(message_id, int) or not isinstance(priority, int):
        return None
    if not (0 <= message_id <= 0xFFFF and priority in (0, 1, 2)):
        return None
    if (
        primitive.MoveOriginatorApplicationEntityTitle is not None
        or primitive.MoveOriginatorMessageID is not None
    ):
        return None
    uids = _uid_elements(primitive)
    if uids is None or len(uids) != 2:
        return None
    return _command_set(
        [
            *uids,
            (0x0100, struct.pack("<H", _C_STORE_RQ)),
            (0x0110, struct.pack("<H", message_id)),
            (0x0700, struct.pack("<H", priority)),
            (0x0800, struct.pack("<H", _DATA_SET)),
        ]
    )


def data_set_fragments(source: tuple[Any, int], max_pdu: int) -> Iterator[bytes]:
    """The data set of a file from an offset on (``source``: path, offset), as PDVs with their
    control header, each within ``max_pdu`` (0: no limit), read as they are sent."""
    path, offset = source
    with open(path, "rb") as fh:
        length = fh.seek(0, 2) - fh.seek(offset)
        size = max_pdu - 6 if max_pdu else max(length, 1)
        count = max(1, -(-length // size))
        for index in range(count):
            control = _DATA_LAST if index == count - 1 else _DATA
            yield control + fh.read(size)


def _uid_elements(primitive: Any) -> list[tuple[int, bytes]] | None:
    """The Affected SOP Class and Instance UIDs that are set, even-padded; None when one is
    not a plain UID."""
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
    return elements


def _command_set(elements: list[tuple[int, bytes]]) -> bytes:
    """Implicit VR Little Endian, in tag order, after its group length."""
    body = b"".join(
        struct.pack("<HHI", 0x0000, tag, len(value)) + value for tag, value in sorted(elements)
    )
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def _ours(assoc: Association, encoded: bytes | None) -> bool:
    """``encoded`` is sent here: it fits one fragment of the peer's maximum PDU, and nobody
    listens to EVT_DIMSE_SENT (pynetdicom would describe the message to them)."""
    if encoded is None:
        return False
    limit = assoc.dimse.maximum_pdu_size
    if limit and (limit < 7 or len(encoded) > limit - 6):
        return False
    return not assoc.get_handlers(evt.EVT_DIMSE_SENT)


def p_data_tf(context_id: int, fragments: Iterable[bytes]) -> Iterator[bytes]:
    """Each fragment (a PDV with its message control header) as an encoded P-DATA-TF PDU of
    one presentation data value item (PS3.8 9.3.5), as pynetdicom encodes it."""
    for fragment in fragments:
        yield struct.pack(">BBIIB", 0x04, 0, len(fragment) + 5, len(fragment) + 1, context_id)
        yield fragment


def _writer(assoc: Association) -> Callable[[Iterable[bytes], float | None], bool] | None:
    """The transport's own writer (``dicomnode._scu``'s requested associations) when the
    message may bypass the DUL thread: the association is established (Sta6), nothing is
    waiting in the DUL's queue to go before it, and nobody listens to the PDUs or bytes sent
    (pynetdicom would hand each to them). pynetdicom's DUL thread takes each PDU of a message
    from a queue and runs it through its state machine: ~0.1 ms a PDU, 3 ms of the 5 ms of
    CPU the forwarder spent on a 0.5 MB CT instance at a 16 KB maximum PDU (storescp's and
    Orthanc's default)."""
    writer = getattr(assoc.dul.socket, "send_pdus", None)
    if writer is None or not assoc.dul.to_provider_queue.empty():
        return None
    if assoc.dul.state_machine.current_state != "Sta6":
        return None
    if assoc.get_handlers(evt.EVT_PDU_SENT) or assoc.get_handlers(evt.EVT_DATA_SENT):
        return None
    return cast(Callable[[Iterable[bytes], float | None], bool], writer)


@runtime_checkable
class _CountsSent(Protocol):
    """A transport that counts the PDUs the DUL thread writes (``dicomnode._scu``'s)."""

    sent: int

    def sent_within(self, count: int, idle_s: float | None) -> None: ...


def _send_fragment(assoc: Association, context_id: int, fragment: bytes) -> None:
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, fragment))
    assoc.dul.send_pdu(pdata)


class _DirectSend:
    """An association's ``dimse.send_msg``: the messages :meth:`encode` knows are sent here
    (its command set, then :meth:`data_set`), everything else by pynetdicom."""

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        self._send: Callable[[Any, int], None] = assoc.dimse.send_msg

    @classmethod
    def install(cls, assoc: Association) -> None:
        setattr(assoc.dimse, "send_msg", cls(assoc))  # noqa: B010 - a method, per instance

    def __call__(self, primitive: Any, context_id: int) -> None:
        assoc = self._assoc
        encoded = self.encode(primitive)
        if not _ours(assoc, encoded):
            self._send(primitive, context_id)
            return
        fragments = itertools.chain(
            (_COMMAND_LAST + cast(bytes, encoded),),
            self.data_set(primitive, assoc.dimse.maximum_pdu_size),
        )
        writer = _writer(assoc)
        if writer is not None and writer(p_data_tf(context_id, fragments), assoc.dimse_timeout):
            return
        self.queue(assoc, context_id, fragments)

    @staticmethod
    def queue(assoc: Association, context_id: int, fragments: Iterable[bytes]) -> None:
        """Hand the message to pynetdicom's DUL thread, as pynetdicom does."""
        for fragment in fragments:
            _send_fragment(assoc, context_id, fragment)

    @staticmethod
    def encode(primitive: Any) -> bytes | None:
        raise NotImplementedError

    @staticmethod
    def data_set(primitive: Any, max_pdu: int) -> Iterator[bytes]:
        return iter(())


class Responses(_DirectSend):
    """An accepted association's ``dimse.send_msg``: C-STORE responses encoded here
    (:func:`encode_store_response`), everything else by pynetdicom."""

    encode = staticmethod(encode_store_response)


class Requests(_DirectSend):
    """A requested association's ``dimse.send_msg``: C-STORE requests of a file encoded here
    (:func:`encode_store_request`; the data set read from the file as pynetdicom reads it),
    everything else by pynetdicom."""

    encode = staticmethod(encode_store_request)

    @staticmethod
    def queue(assoc: Association, context_id: int, fragments: Iterable[bytes]) -> None:
        """Hand the request to the DUL thread (TLS: only that thread may write to an SSL
        socket) at most ~1 MiB ahead of what it has written, and return once it has written
        the last PDU (``dicomnode._scu``'s transport counts them): memory stays bounded for
        any object, and the DIMSE timeout, which pynetdicom counts from this return, is for
        the peer's answer, not for the time the data set takes to leave (a large object over
        a slow but steady link failed)."""
        transport = assoc.dul.socket
        if not isinstance(transport, _CountsSent):
            _DirectSend.queue(assoc, context_id, fragments)
            return
        ahead = max(2, GROUP_BYTES // (assoc.dimse.maximum_pdu_size or GROUP_BYTES))
        queued = transport.sent
        for fragment in fragments:
            transport.sent_within(queued - ahead + 1, assoc.dimse_timeout)
            _send_fragment(assoc, context_id, fragment)
            queued += 1
        transport.sent_within(queued, assoc.dimse_timeout)

    @staticmethod
    def data_set(primitive: Any, max_pdu: int) -> Iterator[bytes]:
        return data_set_fragments(primitive._dataset_path, max_pdu)
