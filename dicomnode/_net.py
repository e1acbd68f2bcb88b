"""Small socket helpers shared by the listener (ingest) and the sender (forward)."""

from __future__ import annotations

import select
import socket

from pynetdicom import evt

__all__ = ["send_within", "set_nodelay"]


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
