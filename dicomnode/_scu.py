"""Associations this node requests (C-STORE and C-ECHO SCU): the responses go to the sender.

pynetdicom 3.0 runs two consumers of an association's DIMSE message queue
(``DIMSEServiceProvider.msg_queue``): the thread that sends (``Association.send_c_store``
sends the request, then takes the response with ``dimse.get_msg(block=True)``) and the
association's own reactor thread (``Association._run_reactor`` polls every millisecond with
``dimse.get_msg(block=False)`` and hands what it finds to ``_serve_request``, as a request
from the peer). To keep the reactor off a response, each ``send_*`` method "pauses" it::

    sender (send_c_store)                     reactor (_run_reactor loop)
                                              _is_paused = True
    _reactor_checkpoint.clear()               _reactor_checkpoint.wait()
    while not _is_paused: sleep(0.1 ms)       _is_paused = False
    dimse.send_msg(request)                   dimse.get_msg(block=False)
    dimse.get_msg(block=True)                 ...
    _reactor_checkpoint.set()

``_is_paused`` only says that the reactor has *reached* ``wait()``, not that it will stay
there, so the handshake leaks. The interleaving seen here (every stolen response, traced)::

    1. C-STORE n: the reactor is blocked in wait(), _is_paused is True. The response to n
       arrives; the sender takes it and calls _reactor_checkpoint.set(): the reactor is
       notified, but it must get the GIL back to run, and other threads hold it.
    2. The sender goes straight on to C-STORE n+1: clear() (the flag is down again), then
       ``while not _is_paused`` ends at once, as _is_paused is still True from step 1.
       The request goes out; a fast peer (storescp +B on loopback) answers in well under
       a millisecond, and the DUL thread queues the response.
    3. The reactor finally runs. threading.Event.wait() returns True once it was notified,
       even though the flag has been cleared since (Condition.wait does not look at the flag
       again). It sets _is_paused = False and calls get_msg(block=False): the response to
       n+1 is there, it takes it, and _serve_request logs "Received unexpected C-STORE
       service message" (a response is not a valid request) and drops it.
    4. The sender's get_msg(block=True) waits for a response that was already consumed:
       "DIMSE timeout reached while waiting for message response" after dimse_timeout
       (30 s), then an A-ABORT; the object was stored by the peer but counts as FAILED, and
       the rest of the batch is retried.

A second leak follows from the same code: when the reactor returns from a wait() that found
the flag up, but before it sets ``_is_paused = False``, a sender that clears the flag then
sees the stale True and goes ahead. And on an abort (``fsm.AA_2``/``AA_3``/``AA_4``) the
``(None, None)`` put on the queue to wake the waiting sender can be taken by the reactor,
leaving the sender to wait out the DIMSE timeout. All need the reactor to be late by about
one round trip of the peer, which GIL contention (the node's pipeline workers) provides:
with one busy Python thread beside the sender, 1,000 64x64 instances to ``storescp +B``
lost 3 to 4 responses per round.

The cure here: the reactor of an association we request never takes anything off the DIMSE
queue. Such an association carries only our own requests (we propose no SCP role), so
everything the peer sends on it is a response, and it belongs to the ``send_*`` call waiting
for it. :func:`responses_to_sender`, bound to ``EVT_CONN_OPEN`` (fired while the association
is being requested, before ``AE.associate`` starts the reactor thread), makes the DIMSE
provider's non-blocking ``get_msg`` (only ``_run_reactor`` calls it so) answer "nothing";
blocking calls (every ``send_*``) are untouched. The reactor still watches for the peer's
A-RELEASE and A-ABORT, the DUL thread and the network timeout, as before. A request the peer
might send anyway is taken by the waiting sender as an invalid response: pynetdicom logs it and
aborts (``_check_received_status``), and the object is tried again, never lost.

tests/test_forward_stall.py pins the pynetdicom source this relies on.

A second race is in the association request itself. ``ACSE._negotiate_as_requestor`` sends
the A-ASSOCIATE-RQ primitive, waits for the socket's ``_ready`` event (set once the TCP
connect returns) and then reads ``socket._is_connected`` to tell a connection that failed.
Meanwhile the DUL thread sends the request; a peer that rejects at once (our own gate, a
busy PACS) answers with an A-ASSOCIATE-RJ, and the DUL queues the rejection for the user and
closes the socket (``fsm.AE_4``), which sets ``_is_connected`` to False. When that happens
before the ACSE thread looks, pynetdicom takes the rejection for a failed connection: it
calls ``abort()`` ("Aborting Association") and never reads the queued A-ASSOCIATE-RJ, so the
association is neither established nor rejected. A peer that answers with an A-ABORT (or
closes the connection) at once loses its answer the same way. :func:`unread_answer` finds
that answer, so the node reports "rejected (transient): local limit exceeded" rather than
"could not be reached" or "no answer".
"""

from __future__ import annotations

import queue
import ssl
import threading
import time
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.transport import AssociationSocket

from dicomnode._commands import Requests
from dicomnode._net import PduWriter
from dicomnode._wakeup import Wakeup, wait_for_data

_TLS_PIECE = 1 << 16  # bytes per write to a TLS socket, each bounded by its timeout
_LOOK_S = 0.5  # how often a wait for the DUL thread looks whether the association ended

__all__ = [
    "direct_requests",
    "responses_to_sender",
    "unread_answer",
    "unread_rejection",
    "woken",
]


def responses_to_sender(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler for associations this node requests: the association
    reactor's poll of the DIMSE queue finds nothing, so each response (and the wake-up an
    abort queues) reaches the ``send_*`` call that waits for it (see the module docstring)."""
    dimse = event.assoc.dimse
    take = dimse.get_msg

    def get_msg(block: bool = False) -> tuple[Any, Any]:
        if not block:  # Association._run_reactor's poll
            return None, None
        return take(block=True)

    dimse.get_msg = get_msg  # type: ignore[method-assign]


class _WokenSocket(PduWriter):
    """A requested association's socket whose ``ready`` waits for data or a wake-up when
    there is nothing to read (``dicomnode._wakeup``), instead of the DUL's 1 ms sleep, that
    the sending thread can write a whole message to (:meth:`send_pdus`), and that counts
    the PDUs the DUL thread writes (:meth:`sent_within`)."""

    _wakeup: Wakeup | None
    _moved: threading.Condition  # notified as the DUL thread's writes move
    sent: int  # PDUs the DUL thread has written (or failed to: the connection then closes)
    _moves: int  # pieces written, ever: progress within a PDU

    @property
    def ready(self) -> bool:
        if super().ready:
            return True
        return wait_for_data(self, self._wakeup) and super().ready

    def send(self, bytestream: bytes) -> None:
        """The DUL thread's PDUs (:class:`PduWriter`), counted."""
        super().send(bytestream)
        with self._moved:
            self.sent += 1
            self._moves += 1
            self._moved.notify_all()

    def send_locked(self, bytestream: bytes) -> None:
        if isinstance(self.socket, ssl.SSLSocket) and len(bytestream) > _TLS_PIECE:
            self._send_tls(self.socket, bytestream)
        else:
            super().send_locked(bytestream)

    def _send_tls(self, sock: ssl.SSLSocket, bytestream: bytes) -> None:
        """pynetdicom's send of one PDU, written ``_TLS_PIECE`` bytes at a time: a TLS
        socket's timeout (:func:`woken`) bounds each whole write, so a large PDU (a peer
        with no PDU limit gets the data set in one) written at once would fail on a link
        that is slow but moving. Same outcome as pynetdicom's: EVT_DATA_SENT, or Evt17."""
        view = memoryview(bytestream)
        try:
            for start in range(0, len(view), _TLS_PIECE):
                sock.sendall(view[start : start + _TLS_PIECE])
                with self._moved:
                    self._moves += 1
                    self._moved.notify_all()
            evt.trigger(self.assoc, evt.EVT_DATA_SENT, {"data": bytestream})
        except Exception:  # as pynetdicom: any failure closes the connection
            self.event_queue.put("Evt17")

    def sent_within(self, count: int, idle_s: float | None) -> None:
        """Wait until the DUL thread has written ``count`` PDUs in all (:attr:`sent`):
        ``TimeoutError`` when its writing moves nothing for ``idle_s`` seconds,
        ``ConnectionError`` when the association ends first."""
        with self._moved:
            seen, since = self._moves, time.monotonic()
            while self.sent < count:
                if self.assoc.is_aborted or not self.assoc.dul.is_alive():
                    raise ConnectionError("the association ended while the data set was sent")
                left = None if idle_s is None else since + idle_s - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"the peer took no data for {idle_s:g} s")
                self._moved.wait(_LOOK_S if left is None else min(_LOOK_S, left))
                if self._moves != seen:
                    seen, since = self._moves, time.monotonic()


def woken(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler for associations this node requests: their two threads wait
    for work instead of polling every millisecond (``dicomnode._wakeup``; an open, idle
    association cost 8-11% of a core, and each C-STORE waited for the reactor's next look).
    Fired on the DUL thread before ``AE.associate`` starts the association's own."""
    assoc = event.assoc
    transport = assoc.dul.socket
    if transport is None or type(transport) is not AssociationSocket:
        return  # not the socket this was written for: pynetdicom's polling, as before
    if isinstance(transport.socket, ssl.SSLSocket) and assoc.network_timeout is not None:
        # Only the DUL thread writes to a TLS socket (send_pdus is plain TCP), and pynetdicom
        # clears the timeout after connecting: a peer that stopped reading held it in send()
        # for ever. Now the blocked send raises after the timeout, and pynetdicom aborts.
        transport.socket.settimeout(assoc.network_timeout)
    wakeup = Wakeup.install(assoc)
    # The same object under the subclass: connect() is still running on it.
    transport.__class__ = _WokenSocket
    cast(_WokenSocket, transport)._wakeup = wakeup
    cast(_WokenSocket, transport)._send_lock = threading.Lock()
    cast(_WokenSocket, transport)._moved = threading.Condition()
    cast(_WokenSocket, transport).sent = 0
    cast(_WokenSocket, transport)._moves = 0
    assoc.bind(evt.EVT_CONN_CLOSE, lambda _event: wakeup.close())


def direct_requests(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler for associations this node requests: C-STORE requests of a
    file have their command set encoded directly, not through pydicom
    (``dicomnode._commands``: ~0.8 ms of the forwarder's CPU per instance)."""
    Requests.install(event.assoc)


def unread_answer(assoc: Association) -> A_ASSOCIATE | A_ABORT | A_P_ABORT | None:
    """The peer's answer to our association request when pynetdicom queued it but never read
    it (the request race in the module docstring): an A-ASSOCIATE-RJ, or an A-ABORT (or the
    A-P-ABORT of a closed connection), which the DUL queues and closes the socket on just
    the same; None when there is none."""
    answers: queue.Queue[Any] = assoc.dul.to_user_queue
    with answers.mutex:
        queued = list(answers.queue)
    for primitive in queued:
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            return primitive
        if isinstance(primitive, (A_ABORT, A_P_ABORT)):
            return primitive
    return None


def unread_rejection(assoc: Association) -> A_ASSOCIATE | None:
    """The peer's A-ASSOCIATE-RJ when pynetdicom queued it but never read it; None when
    there is none."""
    answer = unread_answer(assoc)
    return answer if isinstance(answer, A_ASSOCIATE) else None
