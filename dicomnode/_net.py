"""Small socket helpers shared by the listener (ingest) and the sender (forward)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterable

from pynetdicom import evt
from pynetdicom.transport import AssociationSocket

GROUP_BYTES = 1 << 20  # how much of a data set is written or queued at once: bounded memory

__all__ = ["GROUP_BYTES", "PduWriter", "send_within", "set_nodelay"]


def set_nodelay(event: evt.Event) -> None:
    """Nagle off on association sockets: otherwise each small PDU waits ~40 ms for an ACK."""
    transport = event.assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send_within(sock: socket.socket, data: bytes, idle_s: float | None) -> None:
    """``sock.sendall(data)`` that gives up (``TimeoutError``) when the peer takes nothing
    for ``idle_s`` seconds (None: waits as long as it takes), without touching the socket's
    blocking mode or timeout: another thread (pynetdicom's DUL) reads from it meanwhile."""
    view = memoryview(data)
    poller: select.poll | None = None
    while view:
        try:
            sent = sock.send(view, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            if poller is None:
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
            if not poller.poll(None if idle_s is None else max(1, int(idle_s * 1000))):
                raise TimeoutError(f"the peer took no data for {idle_s:g} s") from None
            continue
        view = view[sent:]


class PduWriter(AssociationSocket):
    """An association's socket that the thread sending a DIMSE message can write the
    message's PDUs to itself (:meth:`send_pdus`, used by ``dicomnode._commands``), instead of
    handing them to pynetdicom's DUL thread one by one; the DUL thread's own writes
    (:meth:`send`) never land in the middle of such a message. Subclasses set
    ``_send_lock`` where they take over a socket."""

    _send_lock: threading.Lock

    def send(self, bytestream: bytes) -> None:
        """pynetdicom's send (the DUL thread's PDUs), under the lock."""
        with self._send_lock:
            self.send_locked(bytestream)

    def send_locked(self, bytestream: bytes) -> None:
        super().send(bytestream)

    def send_pdus(self, pdus: Iterable[bytes], idle_s: float | None) -> bool:
        """Write encoded PDUs on the calling thread, in groups of about 1 MiB; False, having
        written nothing, where this connection is not a plain TCP one (TLS: only the DUL
        thread may use an SSL socket). A peer that takes nothing for ``idle_s`` seconds, or
        a connection that fails, raises ``OSError`` after shutting the connection down (the
        DUL thread sees it closed and pynetdicom aborts the association)."""
        sock = self.socket
        if type(sock) is not socket.socket:
            return False
        if not self._send_lock.acquire(timeout=-1 if idle_s is None else idle_s):
            raise TimeoutError("the DUL thread has been sending for too long")
        try:
            try:
                group: list[bytes] = []
                size = 0
                for pdu in pdus:
                    if len(pdu) >= GROUP_BYTES:  # a peer with no PDU limit: one large PDV
                        if group:
                            send_within(sock, b"".join(group), idle_s)
                            group, size = [], 0
                        send_within(sock, pdu, idle_s)  # as it is: no copy
                        continue
                    group.append(pdu)
                    size += len(pdu)
                    if size >= GROUP_BYTES:
                        send_within(sock, b"".join(group), idle_s)
                        group, size = [], 0
                if group:
                    send_within(sock, b"".join(group), idle_s)
            except OSError:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                raise
        finally:
            self._send_lock.release()
        return True
