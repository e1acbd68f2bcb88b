"""Small socket helpers shared by the listener (ingest) and the sender (forward)."""

from __future__ import annotations

import socket

from pynetdicom import evt

__all__ = ["set_nodelay"]


def set_nodelay(event: evt.Event) -> None:
    """Nagle off on association sockets: otherwise each small PDU waits ~40 ms for an ACK."""
    transport = event.assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
