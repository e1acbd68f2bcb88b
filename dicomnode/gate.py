"""The listener's front door: what a stranger on the network can take from the node.

pynetdicom 3.0.4 gives every TCP connection an association thread and counts it against
``maximum_associations`` before the peer has said a word, does the TLS handshake on the
accepting thread, and reads every PDU whole into memory, whatever length its header announces.
So an idle socket held a slot for a minute, one silent TLS connection stalled the listener, and
one header announcing 4 GB took the process to 2 GB. Here, instead:

- **One gate thread** holds each new connection (non-blocking, ``selectors``) until it has sent
  a complete A-ASSOCIATE-RQ, within ``request_timeout_s`` counted from the accept, TLS handshake
  included. The first PDU must be an A-ASSOCIATE-RQ of at most 64 KiB; the called AE title, the
  calling AE title (the ``admit`` callback: the allow-list) and the free association slots are
  checked there, and a refusal gets its A-ASSOCIATE-RJ (or A-ABORT for garbage) from the gate.
  Only an accepted request becomes a pynetdicom association, its bytes replayed, so
  ``max_associations`` counts requests that passed the allow-list, nothing else.
- **Connections per source address** are capped (waiting and associated together); at most
  ``MAX_WAITING`` connections wait for their request at once, the oldest giving way.
- **Every PDU header is checked before its body is read** (``_FramedSocket``): a P-DATA-TF longer
  than the ``max_pdu`` we offered plus ``PDATA_SLACK``, any other PDU over 64 KiB, or an unknown
  PDU type aborts the association (A-ABORT) without allocating. A peer silent in the middle of a
  PDU is cut after ``network_timeout_s`` (pynetdicom's read had no timeout).
- **Every DIMSE message is counted as it arrives** (``_MessageGuard``): a command set over
  64 KiB, or a data set pynetdicom would keep in memory (anything but a C-STORE's) over 1 MiB,
  aborts; a C-STORE data set that passes ``max_instance_bytes`` is no longer written (the
  partial file is emptied and unlinked at once), the rest of it is read and dropped, and the
  store is answered with a failure status (``refused_instance`` tells the C-STORE handler);
  one that goes on for ``MAX_DISCARDED`` (4 GiB) more is aborted.
- **Refusals are logged one line each** (source and why), at most ``RefusalLog.burst`` lines per
  reason in each window, the rest summed up by reason: a flood of garbage cannot flood the log.

What this changes in pynetdicom's behaviour (written against 3.0.4; each function named here is
pinned by a test in tests/test_hostile_network.py that fails when its source changes):

- ``AssociationServer.get_request``: accept only (pynetdicom wraps TLS there, blocking);
- ``ThreadingMixIn.process_request``: new connections go to the gate, which calls it later;
- ``AssociationServer.service_actions``: its ``gc.collect()`` every 60 accepts becomes at
  most one every 30 s (a connection flood made it a full collection per accept);
- ``RequestHandler._create_association``/``handle``: its ``deepcopy`` of the server's supported
  contexts copies them field by field (``_Contexts``: the generic deepcopy of our 171 contexts
  of 12 syntaxes each cost 16 ms of CPU per association, half of accepting one);
  the association's ``AssociationSocket``
  is replaced by a ``_FramedSocket`` that takes over its state (constructing a fresh one would
  queue a second Evt5), its DIMSE provider's
  ``receive_primitive`` is wrapped per association, and the handler thread waits for the
  association to end to give its slot back and delete a partial receive;
- ``AssociationSocket.recv``/``ready``: replay, PDU checks, ``recv_into`` in one piece (these
  rely on ``DULServiceProvider._read_pdu_data`` reading 6 header bytes, then the body);
- ``Association._serve_request``: every C-STORE goes to the storage service whatever its
  SOP Class UID (pynetdicom aborted the association on a class it has no service for), so
  that the C-STORE handler answers a bad instance with a failure status (pinned, with
  ``Association.run_reactor`` firing EVT_REQUESTED before negotiation, in
  tests/test_refusals.py);
- the ``pynetdicom.dul`` logger drops its per-PDU read errors (one line per connection here);
- the two polling loops of an accepted association wait for work instead of sleeping 1 ms
  between looks (``dicomnode._wakeup``): the DUL thread (``DULServiceProvider.run_reactor``, with
  ``_run_loop_delay`` 0) blocks in ``_FramedSocket.ready`` on the socket and a wake-up socket
  that the association's ``to_provider_queue``, ``event_queue``, ``stop_dul`` and ``kill_dul``
  ring; the association thread runs ``woken_reactor`` (pynetdicom's
  ``Association._run_reactor`` with the sleep replaced by a wait on an event that its DIMSE
  ``msg_queue`` and the DUL's ``to_user_queue`` set). Both still look at least every
  ``REACTOR_TICK_S`` (timers, a DUL thread that ended). The forwarders' associations are
  woken the same way (``dicomnode._scu.woken``).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import gc
import logging
import os
import queue
import selectors
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, NamedTuple

from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.fsm import TRANSITION_TABLE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicomnode._commands import Responses
from dicomnode._net import PduWriter
from dicomnode._wakeup import Wakeup, wait_for_data
from dicomnode.durable import start_writeback

log = logging.getLogger(__name__)

__all__ = [
    "HEAD_BYTES",
    "MAX_REQUEST_PDU",
    "MAX_WAITING",
    "PDATA_SLACK",
    "AssociationRequest",
    "GatedServer",
    "Limits",
    "RefusalLog",
    "Rejection",
    "SharedCounts",
    "data_set_head",
    "refused_instance",
]

MIB = 1024 * 1024
MAX_REQUEST_PDU = 64 * 1024  # A-ASSOCIATE-RQ, and every PDU but P-DATA-TF
PDATA_SLACK = 4096  # over the max_pdu we offer: peers that count the PDV header in or not
MAX_WAITING = 256  # connections waiting for their A-ASSOCIATE-RQ at once
MAX_COMMAND_SET = 64 * 1024
MAX_IN_MEMORY_DATA_SET = MIB  # data sets pynetdicom keeps in memory (not a C-STORE's)
MAX_DISCARDED = 4096 * MIB  # read and dropped past max_instance_bytes before aborting
HEAD_BYTES = 64 * 1024  # of each C-STORE data set kept for the handler (data_set_head)
WRITEBACK_BYTES = 128 * 1024  # a received file's write-out is started this often
_HEADS_KEPT = 8  # heads not taken by a handler (an association that ended) are dropped
_GC_EVERY_S = 30.0
_PDU_TYPES = range(0x01, 0x08)
_A_ASSOCIATE_RQ = 0x01
_P_DATA_TF = 0x04
_RQ_FIXED_LENGTH = 68  # PS3.8 9.3.2: version, reserved, called, calling, reserved
_PRESENTATION_CONTEXT_RQ = 0x20
_ABSTRACT_SYNTAX = 0x30


@dataclass(frozen=True)
class Limits:
    """What one peer may take from the node; ``NodeConfig`` fills it."""

    request_timeout_s: float = 5.0
    max_connections_per_address: int = 8
    max_associations: int = 16
    max_pdu: int = 256 * 1024
    network_timeout_s: float = 60.0
    max_instance_bytes: int = 2048 * MIB

    def pdu_limit(self, pdu_type: int) -> int:
        """The longest PDU of this type we read (a 0 max_pdu still gets a 16 MiB ceiling)."""
        if pdu_type == _P_DATA_TF:
            return (self.max_pdu or 16 * MIB) + PDATA_SLACK
        return MAX_REQUEST_PDU


@dataclass(frozen=True)
class AssociationRequest:
    """What the gate read from an A-ASSOCIATE-RQ (AE titles stripped, unprintables as '?');
    ``address`` is the peer's, ``local_address`` the one it connected to (the same address: a
    connection from this host); ``abstract_syntaxes``: those of its presentation contexts, in
    order (empty when the items cannot be read; pynetdicom reads them again, and its reading
    is the one that counts)."""

    calling_ae: str
    called_ae: str
    address: str
    abstract_syntaxes: tuple[str, ...] = ()
    local_address: str = ""


class Rejection(NamedTuple):
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4 result, source, diagnostic), with a reason for counts
    and the words for the log line."""

    result: int
    source: int
    diagnostic: int
    reason: str
    why: str


Admit = Callable[[AssociationRequest], Rejection | None]
Rejected = Callable[[AssociationRequest, Rejection], None]


def _reject_pdu(rejection: Rejection) -> bytes:
    return struct.pack(
        ">BBLBBBB", 0x03, 0, 4, 0, rejection.result, rejection.source, rejection.diagnostic
    )


def _abort_pdu(reason: int) -> bytes:
    """A-ABORT from the service provider (PS3.8 9.3.8): 1 unrecognised PDU, 2 unexpected PDU,
    6 invalid PDU parameter value."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, reason)


def _abstract_syntaxes(pdu: bytes | bytearray) -> tuple[str, ...]:
    """The abstract syntax of each presentation context item (PS3.8 9.3.2.2) of a complete
    A-ASSOCIATE-RQ; empty when an item's length does not fit."""
    out: list[str] = []
    at, end = 6 + _RQ_FIXED_LENGTH, len(pdu)
    while at + 4 <= end:
        item_type, _, length = struct.unpack_from(">BBH", pdu, at)
        body, at = at + 4, at + 4 + length
        if at > end:
            return ()
        if item_type != _PRESENTATION_CONTEXT_RQ:
            continue
        sub = body + 4  # context ID, 3 reserved bytes; then the abstract syntax sub-item first
        if sub + 4 > at:
            return ()
        sub_type, _, sub_length = struct.unpack_from(">BBH", pdu, sub)
        if sub_type != _ABSTRACT_SYNTAX or sub + 4 + sub_length > at:
            return ()
        out.append(bytes(pdu[sub + 4 : sub + 4 + sub_length]).decode("ascii", "replace"))
    return tuple(s.strip(" \x00") for s in out)


def _local_address(sock: socket.socket) -> str:
    try:
        return str(sock.getsockname()[0])
    except OSError:
        return ""


def _ae_title(raw: bytes | bytearray) -> str:
    text = bytes(raw).decode("ascii", "replace").strip(" \x00")
    return "".join(c if c.isprintable() else "?" for c in text)


class RefusalLog:
    """One line per refused connection, at most ``burst`` lines per reason in each
    ``window_s``; beyond that refusals are counted and summed up in one line when the window
    ends. A flood of one kind cannot hide the others, and the log grows by at most
    ``burst`` lines per reason (a short, fixed list) per window, whatever arrives: in each
    listener process, each keeping its own (``node.listeners``)."""

    def __init__(
        self,
        burst: int = 10,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        count: Callable[[str], None] = lambda reason: None,
    ) -> None:
        """``count`` is called with the reason of every refusal, logged or not (metrics)."""
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._count = count
        self._lock = threading.Lock()
        self._started = clock()
        self._lines: collections.Counter[str] = collections.Counter()
        self._held: collections.Counter[str] = collections.Counter()

    def refuse(self, reason: str, line: str, level: int = logging.WARNING) -> None:
        """Log ``line`` unless this window's lines for ``reason`` are spent; count it."""
        self._count(reason)
        with self._lock:
            self._roll()
            if self._lines[reason] >= self.burst:
                self._held[reason] += 1
                return
            self._lines[reason] += 1
        log.log(level, "%s", line)

    def flush(self) -> None:
        """Write the summary of a window that has ended (the gate calls this as it ticks)."""
        with self._lock:
            self._roll()

    def _roll(self) -> None:
        now = self._clock()
        if now - self._started < self.window_s:
            return
        if self._held:
            counts = ", ".join(f"{r}: {n}" for r, n in self._held.most_common())
            log.warning(
                "%d more refused connections in the last %.0f s, not logged one by one (%s)",
                sum(self._held.values()),
                now - self._started,
                counts,
            )
        self._started = now
        self._lines.clear()
        self._held.clear()


# -- refused C-STOREs: the guard marks them, the C-STORE handler answers them ---------------

_refused_lock = threading.Lock()
_refused: set[str] = set()


def refused_instance(path: Path | str) -> bool:
    """True (once) when the C-STORE received into ``path`` passed the instance size limit:
    its partial file is already gone and the handler must answer with a failure status."""
    with _refused_lock:
        try:
            _refused.remove(str(path))
        except KeyError:
            return False
        return True


def data_set_head(assoc: Association, path: Path | str) -> tuple[bytes, bool] | None:
    """The first ``HEAD_BYTES`` of the C-STORE data set ``assoc`` received into ``path``, as
    sent (deflated if its transfer syntax is), and whether that is the whole data set; taken
    while the bytes went by, so that the handler reads no file for it. None when the gate did
    not receive it (then read the file)."""
    guard = assoc.dimse.receive_primitive
    if not isinstance(guard, _MessageGuard):
        return None
    return guard.head(str(path))


class SharedCounts:
    """Association slots and connections per source address, shared by listener processes
    (``node.listeners``), so that ``max_associations`` and ``max_connections_per_address``
    hold for the node as a whole.

    One row per listener, in shared memory under one lock; a total is the sum of the rows,
    and a listener that dies has its row zeroed (:meth:`forget`) before it is replaced, so
    what it held is given back. Source addresses are counted in ``ADDRESS_SLOTS`` buckets by a
    CRC-32 of the address: two addresses that share a bucket share a count (stricter, never
    looser, than the limit). Made in the node's process, passed to each listener process.
    """

    ADDRESS_SLOTS = 1024

    def __init__(self, ctx: Any, listeners: int) -> None:
        self.listeners = listeners
        self._lock = ctx.Lock()
        self._associations = ctx.Array("i", listeners, lock=False)
        self._addresses = ctx.Array("i", listeners * self.ADDRESS_SLOTS, lock=False)

    @staticmethod
    def _bucket(address: str) -> int:
        return zlib.crc32(address.encode(errors="replace")) % SharedCounts.ADDRESS_SLOTS

    def _address_total(self, bucket: int) -> int:
        slots = self.ADDRESS_SLOTS
        return sum(self._addresses[row * slots + bucket] for row in range(self.listeners))

    def address_in(self, row: int, address: str, limit: int) -> bool:
        bucket = self._bucket(address)
        with self._lock:
            if self._address_total(bucket) >= limit:
                return False
            self._addresses[row * self.ADDRESS_SLOTS + bucket] += 1
            return True

    def address_out(self, row: int, address: str) -> None:
        at = row * self.ADDRESS_SLOTS + self._bucket(address)
        with self._lock:
            if self._addresses[at] > 0:
                self._addresses[at] -= 1

    def take_slot(self, row: int, limit: int) -> bool:
        with self._lock:
            if sum(self._associations[:]) >= limit:
                return False
            self._associations[row] += 1
            return True

    def release_slot(self, row: int) -> None:
        with self._lock:
            if self._associations[row] > 0:
                self._associations[row] -= 1

    @property
    def associations(self) -> int:
        """Associations open in all listeners."""
        with self._lock:
            return sum(self._associations[:])

    def forget(self, row: int) -> None:
        """Give back everything listener ``row`` held (it died; its connections are gone).

        A listener killed inside one of the few-microsecond sections above would leave the
        lock taken: one not free within a second is released here, in its name."""
        if not self._lock.acquire(timeout=1.0):
            with contextlib.suppress(ValueError):
                self._lock.release()
            self._lock.acquire()
        try:
            slots = self.ADDRESS_SLOTS
            self._associations[row] = 0
            for at in range(row * slots, (row + 1) * slots):
                self._addresses[at] = 0
        finally:
            self._lock.release()


# -- the server ------------------------------------------------------------------------------


_IMMUTABLE = (str, int, float, type(None))


class _Contexts(list[Any]):
    """The server's supported presentation contexts, which pynetdicom deep-copies for each
    association it accepts (each association negotiates on its own copy). A copy here is made
    field by field: a context's fields are an id, a UID, flags and a list of UIDs, so a new
    list for the list is a deep copy; 0.8 ms against the generic deepcopy's 16 ms for the
    node's contexts. A context with any other kind of field gets the generic deepcopy."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [_copied(context, memo) for context in self]


def _copied(context: Any, memo: dict[int, Any]) -> Any:
    fields = getattr(context, "__dict__", None)
    if fields is None:  # a future pynetdicom's context with __slots__: the generic copy
        return copy.deepcopy(context, memo)
    plain = all(
        isinstance(value, _IMMUTABLE)
        or (type(value) is list and all(isinstance(item, _IMMUTABLE) for item in value))
        for value in fields.values()
    )
    if not plain:
        return copy.deepcopy(context, memo)
    twin = copy.copy(context)
    for name, value in fields.items():
        if type(value) is list:
            setattr(twin, name, list(value))
    return twin


class GatedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the gate in front of it (see the module docstring).

    Build it with ``ae.make_server(address, ..., server_class=GatedServer, limits=...,
    admit=...)`` and call ``start()``.
    """

    daemon_threads = True  # handler threads wait for their association: never join them
    block_on_close = False
    request_queue_size = 128  # pynetdicom's 5 drops SYNs under a connection flood

    def __init__(
        self,
        ae: Any,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        *,
        limits: Limits,
        admit: Admit,
        refusals: RefusalLog | None = None,
        rejected: Rejected = lambda request, rejection: None,
        shared: SharedCounts | None = None,
        listener: int = 0,
        sock: socket.socket | None = None,
    ) -> None:
        """``admit``: the allow-list (and projects), asked once the called AE title is ours;
        ``rejected``: told of each association the gate itself refused (a called AE title not
        ours, no free slot), for the counters that ``admit`` keeps for its own refusals;
        ``shared``: the counts of all listener processes (this one is row ``listener``);
        ``sock``: the listening socket they all accept on (made by the node: see
        ``dicomnode.listeners``), instead of binding ``address``."""
        self.limits = limits
        self.shared = shared
        self.listener = listener
        self._inherited = sock
        self.admit = admit
        self.rejected = rejected
        # Called AE titles answered besides our own (projects matched on the called AE title;
        # ``Ingest.update`` sets them, also on reload).
        self.called_ae_titles: frozenset[str] = frozenset()
        self.refusals = refusals or RefusalLog()
        self._lock = threading.Lock()
        self._per_address: collections.Counter[str] = collections.Counter()
        self._associations = 0
        self._replays: dict[socket.socket, bytes] = {}
        self._last_gc = time.monotonic()
        super().__init__(
            ae,
            address,
            ae_title,
            contexts,
            ssl_context,
            evt_handlers=evt_handlers,
            request_handler=_GatedHandler,
        )
        self.contexts = _Contexts(self.contexts)
        self._gate = _Gate(self)
        _quiet_pynetdicom_reads()

    def start(self) -> None:
        """Start the gate and the accept loop, each on a daemon thread."""
        self._gate.start()
        # Polled every 0.1 s for a stop (socketserver's default, 0.5 s, was part of each stop).
        thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="dicomnode-accept",
            daemon=True,
        )
        thread.start()
        # AssociationServer.shutdown() removes itself from here, as ae.start_server() adds it.
        self.ae._servers.append(self)

    def shutdown(self) -> None:
        """Stop accepting, drop every connection still at the gate; associations carry on."""
        super().shutdown()
        self._gate.stop()

    @property
    def associations(self) -> int:
        """Requests accepted and handed to pynetdicom whose association has not ended."""
        return self._associations

    # -- socketserver hooks -------------------------------------------------------------------

    def server_bind(self) -> None:
        """pynetdicom's bind; or take the node's listening socket (listener processes).

        The node's socket is non-blocking in every process that shares it: all of them wake
        for a new connection, one accept succeeds, the others get EAGAIN (an OSError that
        socketserver ignores) and go back to waiting."""
        if self._inherited is None:
            super().server_bind()
            return
        assert self.socket is not None
        self.socket.close()
        self.socket = self._inherited
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Listen. On the node's socket too: the node only binds it, so that its port takes
        connections once a listener is there to accept them (a second listen() is harmless)."""
        if self._inherited is None:
            super().server_activate()
            return
        assert self.socket is not None
        self.socket.listen(self.request_queue_size)

    def server_close(self) -> None:
        """pynetdicom's close shuts the socket down first, which on the node's shared socket
        would stop every listener process from accepting: close only this process's copy."""
        if self._inherited is None:
            super().server_close()
            return
        assert self.socket is not None
        self.socket.close()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only: the TLS handshake happens at the gate, under its deadline."""
        assert self.socket is not None
        return self.socket.accept()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the new connection to the gate; no thread, no association yet."""
        self._gate.add(request, client_address)

    def service_actions(self) -> None:
        """pynetdicom collects garbage every 60 loops of the accept loop; once per 30 s will do."""
        now = time.monotonic()
        if now - self._last_gc >= _GC_EVERY_S:
            self._last_gc = now
            gc.collect()

    # -- accounting, shared by the gate and the handler threads --------------------------------

    def _count_in(self, address: str) -> bool:
        limit = self.limits.max_connections_per_address
        with self._lock:
            if self._per_address[address] >= limit:
                return False
            if self.shared is not None and not self.shared.address_in(
                self.listener, address, limit
            ):
                return False
            self._per_address[address] += 1
            return True

    def _count_out(self, address: str, association: bool = False) -> None:
        with self._lock:
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]
            if self.shared is not None:
                self.shared.address_out(self.listener, address)
            if association:
                self._associations -= 1
                if self.shared is not None:
                    self.shared.release_slot(self.listener)

    def _take_slot(self) -> bool:
        """One of ``max_associations`` slots (of the node: all listeners), if one is free."""
        limit = self.limits.max_associations
        with self._lock:
            if self._associations >= limit:
                return False
            if self.shared is not None and not self.shared.take_slot(self.listener, limit):
                return False
            self._associations += 1
            return True

    def _hand_over(self, sock: socket.socket, client_address: Any, request_pdu: bytes) -> None:
        """An accepted request (its slot taken): pynetdicom takes the connection, replaying
        ``request_pdu``."""
        with self._lock:
            self._replays[sock] = request_pdu
        try:
            sock.setblocking(True)
            sock.settimeout(self.limits.network_timeout_s)
            ThreadingMixIn.process_request(self, sock, client_address)
        except (OSError, RuntimeError) as exc:  # the peer left, or no thread can be started
            log.error("cannot start the association from %s (%s)", client_address[0], exc)
            with self._lock:
                self._replays.pop(sock, None)
            self._count_out(str(client_address[0]), association=True)
            sock.close()

    def _take_replay(self, sock: Any) -> bytes:
        with self._lock:
            return self._replays.pop(sock, b"")


# -- the gate -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Waiting:
    sock: socket.socket
    client_address: Any
    address: str
    deadline: float
    handshaking: bool
    buf: bytearray = field(default_factory=bytearray)
    length: int = -1  # the PDU length once the 6-byte header is in

    def needed(self) -> int:
        if self.length < 0:
            return 6 - len(self.buf)
        return 6 + self.length - len(self.buf)


class _Gate:
    """One thread, one selector: every connection until its A-ASSOCIATE-RQ is in and judged."""

    def __init__(self, server: GatedServer) -> None:
        self._server = server
        self._selector = selectors.DefaultSelector()
        self._new: collections.deque[tuple[socket.socket, Any]] = collections.deque()
        self._waiting: dict[socket.socket, _Waiting] = {}  # in accept order
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicomnode-gate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5)

    def add(self, sock: socket.socket, client_address: Any) -> None:
        """Called on the accept thread: queue the connection and wake the gate."""
        self._new.append((sock, client_address))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, _mask in self._selector.select(self._timeout()):
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif key.fileobj in self._waiting:
                        self._step(key.data)
                self._take_new()
                self._expire()
                self._server.refusals.flush()
        except Exception:
            log.exception("the connection gate failed; new connections are no longer served")
        finally:
            for waiting in list(self._waiting.values()):
                self._forget(waiting)
            while self._new:
                sock, _address = self._new.popleft()
                sock.close()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _timeout(self) -> float:
        if not self._waiting:
            return 0.5
        first = min(w.deadline for w in self._waiting.values())
        return max(0.0, min(0.5, first - time.monotonic()))

    def _take_new(self) -> None:
        while self._new:
            sock, client_address = self._new.popleft()
            try:
                self._welcome(sock, client_address)
            except Exception:
                log.exception("cannot take a connection from %s", client_address[0])
                sock.close()

    def _welcome(self, sock: socket.socket, client_address: Any) -> None:
        server = self._server
        limits = server.limits
        address = str(client_address[0])
        if not server._count_in(address):
            sock.close()
            server.refusals.refuse(
                "per-address",
                f"refused connection from {address}: {limits.max_connections_per_address} "
                "connections already open from this address (node.max_connections_per_address)",
            )
            return
        if len(self._waiting) >= MAX_WAITING:
            oldest = next(iter(self._waiting.values()))
            self._drop(
                oldest,
                "evicted",
                f"refused connection from {oldest.address}: {MAX_WAITING} connections were "
                "waiting for their A-ASSOCIATE-RQ; the oldest gives way",
            )
        context = server.ssl_context
        try:
            sock.setblocking(False)
            if context is not None:
                sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            sock.close()
            server._count_out(address)
            server.refusals.refuse(
                "error", f"refused connection from {address}: {exc.strerror or exc}"
            )
            return
        waiting = _Waiting(
            sock=sock,
            client_address=client_address,
            address=address,
            deadline=time.monotonic() + limits.request_timeout_s,
            handshaking=context is not None,
        )
        self._waiting[sock] = waiting
        self._selector.register(sock, selectors.EVENT_READ, waiting)

    def _expire(self) -> None:
        now = time.monotonic()
        timeout = self._server.limits.request_timeout_s
        for waiting in [w for w in self._waiting.values() if w.deadline <= now]:
            if waiting.handshaking:
                reason, what = "slow-tls", "TLS handshake"
            else:
                reason = "slow-request" if waiting.buf else "idle"
                what = f"A-ASSOCIATE-RQ ({len(waiting.buf)} bytes of one received)"
            self._drop(
                waiting,
                reason,
                f"refused connection from {waiting.address}: no complete {what} within "
                f"{timeout:g} s (node.request_timeout_s)",
            )

    # -- one connection -------------------------------------------------------------------------

    def _step(self, waiting: _Waiting) -> None:
        sock = waiting.sock
        try:
            if waiting.handshaking:
                assert isinstance(sock, ssl.SSLSocket)
                sock.do_handshake()
                waiting.handshaking = False
                self._selector.modify(sock, selectors.EVENT_READ, waiting)
            while True:
                chunk = sock.recv(waiting.needed())
                if not chunk:
                    self._closed_by_peer(waiting)
                    return
                waiting.buf += chunk
                if waiting.length < 0 and len(waiting.buf) == 6 and not self._header(waiting):
                    return
                if waiting.length >= 0 and waiting.needed() == 0:
                    self._decide(waiting)
                    return
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ, waiting)
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE, waiting)
        except BlockingIOError:
            pass
        except ssl.SSLError as exc:
            hint = " (a plain-TCP client?)" if "WRONG_VERSION" in str(exc) else ""
            self._drop(
                waiting,
                "tls",
                f"refused connection from {waiting.address}: TLS handshake failed "
                f"({exc.reason or type(exc).__name__}){hint}",
            )
        except OSError as exc:
            self._drop(
                waiting,
                "error",
                f"refused connection from {waiting.address}: {exc.strerror or exc}",
            )

    def _closed_by_peer(self, waiting: _Waiting) -> None:
        if waiting.handshaking:
            line = f"connection from {waiting.address} closed during the TLS handshake"
            self._drop(waiting, "tls", line)
            return
        if not waiting.buf:
            line = f"connection from {waiting.address} closed without sending a request"
            self._drop(waiting, "closed", line, level=logging.INFO)
            return
        self._drop(
            waiting,
            "closed",
            f"connection from {waiting.address} closed after {len(waiting.buf)} bytes of an "
            "incomplete A-ASSOCIATE-RQ",
        )

    def _header(self, waiting: _Waiting) -> bool:
        """Judge the first PDU's header; False when the connection was refused."""
        pdu_type, _, length = struct.unpack(">BBL", waiting.buf)
        if pdu_type != _A_ASSOCIATE_RQ:
            tls = pdu_type == 0x16  # a TLS record: ClientHello
            hint = " (a TLS client on a plain port?)" if tls else ""
            self._drop(
                waiting,
                "tls-on-plain-port" if tls else "not-a-request",
                f"refused connection from {waiting.address}: sent PDU type 0x{pdu_type:02X} "
                f"where an A-ASSOCIATE-RQ must come first{hint}",
                reply=_abort_pdu(0x02 if pdu_type in _PDU_TYPES else 0x01),
            )
            return False
        if not _RQ_FIXED_LENGTH <= length <= MAX_REQUEST_PDU:
            self._drop(
                waiting,
                "pdu-length",
                f"refused connection from {waiting.address}: announced an A-ASSOCIATE-RQ of "
                f"{length} bytes (accepted: {_RQ_FIXED_LENGTH} to {MAX_REQUEST_PDU})",
                reply=_abort_pdu(0x06),
            )
            return False
        waiting.length = length
        return True

    def _decide(self, waiting: _Waiting) -> None:
        server = self._server
        pdu = waiting.buf
        request = AssociationRequest(
            calling_ae=_ae_title(pdu[26:42]),
            called_ae=_ae_title(pdu[10:26]),
            address=waiting.address,
            abstract_syntaxes=_abstract_syntaxes(pdu),
            local_address=_local_address(waiting.sock),
        )
        rejection: Rejection | None = None
        by_admit = False  # admit counts its own refusals
        ours = server.ae_title.strip()
        if request.called_ae != ours and request.called_ae not in server.called_ae_titles:
            rejection = Rejection(
                0x01,
                0x01,
                0x07,
                "called-ae",
                f"called AE title is not {ours}"
                + (" nor a project's" if server.called_ae_titles else ""),
            )
        if rejection is None:
            try:
                rejection = server.admit(request)
                by_admit = rejection is not None
            except Exception:
                log.exception("the allow-list check failed; refusing the association")
                rejection = Rejection(0x02, 0x01, 0x01, "error", "allow-list check failed")
        if rejection is None and not server._take_slot():
            rejection = Rejection(
                0x02,
                0x03,
                0x02,
                "slots-full",
                f"all {server.limits.max_associations} association slots are in use "
                "(node.max_associations)",
            )
        if rejection is not None:
            if not by_admit:
                try:
                    server.rejected(request, rejection)
                except Exception:  # a counter must not stop the gate
                    log.exception("counting a refused association failed")
            self._drop(
                waiting,
                rejection.reason,
                f"refused association from {waiting.address} (calling AE {request.calling_ae!r},"
                f" called {request.called_ae!r}): {rejection.why}",
                reply=_reject_pdu(rejection),
            )
            return
        self._unregister(waiting)
        server._hand_over(waiting.sock, waiting.client_address, bytes(pdu))

    def _unregister(self, waiting: _Waiting) -> None:
        del self._waiting[waiting.sock]
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(waiting.sock)

    def _forget(self, waiting: _Waiting) -> None:
        self._unregister(waiting)
        with contextlib.suppress(OSError):
            waiting.sock.close()
        self._server._count_out(waiting.address)

    def _drop(
        self,
        waiting: _Waiting,
        reason: str,
        line: str,
        level: int = logging.WARNING,
        reply: bytes = b"",
    ) -> None:
        if reply and not waiting.handshaking:
            with contextlib.suppress(OSError):
                waiting.sock.send(reply)
        self._forget(waiting)
        self._server.refusals.refuse(reason, line, level)


# -- after the gate: the association's socket and its DIMSE messages --------------------------


class _GatedHandler(RequestHandler):
    """pynetdicom's handler, with the framed socket and the message guard, that waits for its
    association to end to give the slot back."""

    server: GatedServer
    _association: Association | None = None
    _wakeup: Wakeup | None = None

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        plain = assoc.dul.socket
        assert plain is not None
        replay = self.server._take_replay(self.request)
        self._wakeup = Wakeup.install(assoc)
        assoc.dul.socket = _FramedSocket.adopt(
            plain, replay, self.server, self.remote.address, self._wakeup
        )
        _MessageGuard.install(assoc, self.server)
        _StoreDispatch.install(assoc)
        _quiet_after_abort(assoc)
        Responses.install(assoc)
        self._association = assoc
        return assoc

    def handle(self) -> None:
        try:
            super().handle()
            if self._association is not None:
                self._wait_for(self._association)
        finally:
            if self._association is not None:
                _discard_partial(self._association)
            if self._wakeup is not None:
                self._wakeup.close()
            self.server._count_out(str(self.client_address[0]), association=True)

    @staticmethod
    def _wait_for(assoc: Association) -> None:
        """Wait for the association to end, and end it when its connection ended before a
        request came through.

        pynetdicom's acceptor waits node.network_timeout_s for the A-ASSOCIATE request
        primitive, even after its DUL thread has aborted a malformed request and closed the
        connection: a mutated request held a slot for a minute, and 16 of them refused every
        sender. A ``None`` in the queue is what its wait gets on a timeout.
        """
        while assoc.is_alive():
            assoc.join(1.0)
            dul = assoc.dul
            if (
                assoc.is_alive()
                and dul.ident is not None
                and not dul.is_alive()
                and assoc.requestor.primitive is None
            ):
                waiting: Any = dul.to_user_queue  # typed for primitives; None is its timeout
                waiting.put(None)
        assoc.dul.join(5)


# Primitives from the node's own side (A-ASSOCIATE-AC/RJ, P-DATA, A-RELEASE, A-ABORT): PS3.8
# 9.2 has none of them in Sta13, where the association no longer exists.
_LOCAL_EVENTS = frozenset({"Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})


def _quiet_after_abort(assoc: Association) -> None:
    """Once the association has ended on the node's side (Sta13: its A-ABORT or A-RELEASE-RP
    sent), read nothing more and close at once, as ARTIM's expiry (Evt18) would.

    pynetdicom goes on reading in Sta13 until the peer closes or ARTIM expires
    (node.network_timeout_s): a PDU the peer declared and never finished held the association
    and its slot for a minute after the abort (found by tools/mutate_network.py). And a peer
    that sends P-DATA before the A-ASSOCIATE-AC (pipelining) is aborted by the DUL while the
    ACSE is still deciding; the accept then reached the state machine in Sta13, which raised
    in the DUL's thread (a traceback in the log per connection): it is taken off the queue,
    as its action would take it.
    """
    dul = assoc.dul
    machine = dul.state_machine
    act = machine.do_action

    def do_action(event: str) -> None:
        state = machine.current_state
        if state == "Sta13" and event in _LOCAL_EVENTS:
            with contextlib.suppress(queue.Empty):
                dul.to_provider_queue.get(False)
            return
        if event == "Evt18" and (event, state) not in TRANSITION_TABLE:
            return  # the close queued below, after the connection had closed anyway
        act(event)
        if machine.current_state == "Sta13" and state != "Sta13":
            _stop_reading(dul.socket)
            dul.event_queue.put("Evt18")

    machine.do_action = do_action  # type: ignore[method-assign]


def _stop_reading(framed: Any) -> None:
    """Read no more of the peer (the DUL then goes to its event queue, not the socket)."""
    if isinstance(framed, _FramedSocket):
        framed._closing = True


def _discard_partial(assoc: Association) -> None:
    """Delete the temporary file of a C-STORE the association ended in the middle of."""
    message = assoc.dimse.message
    target = getattr(message, "_data_set_file", None)
    path = getattr(message, "_data_set_path", None)
    if target is None or path is None:
        return
    with contextlib.suppress(OSError, ValueError):
        target.close()
    with _refused_lock:
        _refused.discard(str(path))
    try:
        os.unlink(path)
    except OSError:
        return  # already gone (refused, or discarded once)
    log.info("association from %s ended in the middle of a C-STORE", assoc.requestor.address)


class _FramedSocket(PduWriter):
    """The association's socket: replays the request the gate read, checks each PDU header
    before pynetdicom reads the body, and reads the body in one piece; the association's
    thread writes each C-STORE response itself (:class:`PduWriter`), not through the DUL
    thread (one hand-over less before each acknowledgement)."""

    _replay: bytearray
    _body_left: int
    _server: GatedServer
    _peer: str
    _aborted: bool
    _closing: bool  # the node is ending the association: nothing more is read
    _wakeup: Wakeup | None

    @classmethod
    def adopt(
        cls,
        plain: AssociationSocket,
        replay: bytes,
        server: GatedServer,
        peer: str,
        wakeup: Wakeup | None = None,
    ) -> _FramedSocket:
        """The same socket state under this class (a new instance would queue a second Evt5)."""
        framed = cls.__new__(cls)
        framed.__dict__.update(vars(plain))
        framed._replay = bytearray(replay)
        framed._body_left = 0
        framed._server = server
        framed._peer = peer
        framed._aborted = False
        framed._closing = False
        framed._wakeup = wakeup
        framed._send_lock = threading.Lock()
        return framed

    @property
    def ready(self) -> bool:
        """Data to read (pynetdicom's answer); when there is none and the DUL has nothing
        else to do, wait for data or a wake-up (at most ``REACTOR_TICK_S``) before answering,
        instead of pynetdicom's 1 ms sleep between looks."""
        if self._aborted or self._closing:
            return False
        if self._replay or super().ready:
            return True
        return wait_for_data(self, self._wakeup) and not self._aborted and super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes <= 0:
            return bytearray()
        if self._body_left > 0:
            data = self._read(nr_bytes, mid_pdu=True)
            self._body_left -= len(data)
            return data
        # A PDU boundary: DULServiceProvider._read_pdu_data asks for the 6-byte header first.
        header = self._read(nr_bytes, mid_pdu=False)
        if len(header) == 6:
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in _PDU_TYPES:
                self._abort("unknown-pdu", f"sent unknown PDU type 0x{pdu_type:02X}", 0x01)
                return bytearray()
            limit = self._server.limits.pdu_limit(pdu_type)
            if length > limit:
                setting = " (node.max_pdu + slack)" if pdu_type == _P_DATA_TF else ""
                self._abort(
                    "pdu-length",
                    f"announced a PDU (type 0x{pdu_type:02X}) of {length} bytes, over the "
                    f"{limit} we read{setting}",
                    0x06,
                )
                return bytearray()
            self._body_left = length
        return header

    def _read(self, nr_bytes: int, mid_pdu: bool) -> bytearray:
        out = bytearray(nr_bytes)
        got = min(nr_bytes, len(self._replay))
        if got:
            out[:got] = self._replay[:got]
            del self._replay[:got]
        sock = self.socket
        view = memoryview(out)
        try:
            while got < nr_bytes and sock is not None:
                read = sock.recv_into(view[got:], nr_bytes - got)
                if read == 0:
                    if mid_pdu or got:
                        self._note("closed", "closed the connection in the middle of a PDU")
                    break
                got += read
        except TimeoutError:
            self._note(
                "stalled",
                f"sent nothing for {self._server.limits.network_timeout_s:g} s in the middle "
                "of a PDU (node.network_timeout_s)",
            )
        except OSError as exc:
            self._note("error", f"connection error ({exc.strerror or exc})")
        finally:
            view.release()
        del out[got:]
        return out

    def _note(self, reason: str, why: str) -> None:
        self._server.refusals.refuse(reason, f"association with {self._peer} ended: {why}")

    def _abort(self, reason: str, why: str, abort_reason: int) -> None:
        """Tell the peer (A-ABORT) and shut the connection; pynetdicom sees it closed."""
        self._aborted = True
        self._server.refusals.refuse(reason, f"aborted association with {self._peer}: {why}")
        sock = self.socket
        if sock is not None:
            # Not in the middle of a response being written (a writer stuck on a peer that
            # reads nothing: the connection is shut without the A-ABORT).
            if self._send_lock.acquire(timeout=1):
                try:
                    with contextlib.suppress(OSError):
                        sock.sendall(_abort_pdu(abort_reason))
                finally:
                    self._send_lock.release()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _MessageGuard:
    """Counts each DIMSE message's bytes as its fragments arrive, before pynetdicom keeps them.

    Installed as the association's ``dimse.receive_primitive`` (pynetdicom's state machine calls
    it with each P-DATA); fragments are handed on one by one, so that the C-STORE's file exists
    when its first data set fragment is counted.
    """

    def __init__(self, assoc: Association, server: GatedServer) -> None:
        self._assoc = assoc
        self._server = server
        self._deliver: Callable[[P_DATA], None] = assoc.dimse.receive_primitive
        self._command = 0
        self._data = 0
        self._discarding = False
        self._dead = False
        self._head = bytearray()  # the start of the C-STORE data set being received
        self._unsynced = 0  # bytes of it written since its write-out was last started
        # data set file -> (its first HEAD_BYTES, whether that is all of it), until the
        # handler takes it (data_set_head)
        self._heads: collections.OrderedDict[str, tuple[bytes, bool]] = collections.OrderedDict()

    @classmethod
    def install(cls, assoc: Association, server: GatedServer) -> None:
        setattr(assoc.dimse, "receive_primitive", cls(assoc, server))  # noqa: B010 - a method

    def __call__(self, primitive: P_DATA) -> None:
        for context_id, data in primitive.presentation_data_value_list:
            if self._dead:
                return
            fragment = self._check(data)
            if fragment is None:
                return
            single = P_DATA()
            single.presentation_data_value_list.append((context_id, fragment))
            # (pynetdicom forgets the message's file once the last fragment completes it)
            message = self._assoc.dimse.message
            target = getattr(message, "_data_set_file", None)
            path = getattr(message, "_data_set_path", None)
            stored = target is not None and path is not None and fragment and not fragment[0] & 1
            if stored and not self._discarding:
                # before the handler can run: the last fragment wakes its thread
                self._keep_head(str(path), fragment)
            try:
                self._deliver(single)
            except Exception as exc:
                # pynetdicom decodes the command set in its reactor thread when a message is
                # complete, and an exception there ended the thread: a traceback in the log
                # and the connection dropped with no A-ABORT and no reason logged.
                self._kill(
                    f"sent a DIMSE message that cannot be decoded ({type(exc).__name__})",
                    "malformed-message",
                )
                return
            done = self._assoc.dimse.message is None  # that fragment completed the message
            if stored and not self._discarding:
                self._write_out(target, len(fragment) - 1, done)
            if done:
                self._command = self._data = 0
                self._discarding = False
                self._head = bytearray()
                self._unsynced = 0

    def _keep_head(self, path: str, fragment: bytes) -> None:
        """Keep the first ``HEAD_BYTES`` of a C-STORE's data set as its fragments go by, for
        its handler (:func:`data_set_head`): published with the last fragment."""
        if len(self._head) < HEAD_BYTES:
            self._head += fragment[1 : 1 + HEAD_BYTES - len(self._head)]
        if fragment[0] & 2:  # the last fragment
            heads = self._heads
            heads[path] = (bytes(self._head), self._data <= HEAD_BYTES)
            while len(heads) > _HEADS_KEPT:
                heads.popitem(last=False)

    def _write_out(self, target: Any, size: int, done: bool) -> None:
        """After ``size`` bytes went into a C-STORE's file: start writing the file out
        (``start_writeback``) every ``WRITEBACK_BYTES`` and at its end, so that the fdatasync
        which acknowledges it waits for little more than the journal commit."""
        self._unsynced += size
        if done or self._unsynced >= WRITEBACK_BYTES:
            self._unsynced = 0
            # At the last fragment the handler may already have closed the file (ValueError);
            # should its descriptor's number be reused in between, starting another file's
            # write-out is all that happens: harmless.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                start_writeback(target.fileno())

    def head(self, path: str) -> tuple[bytes, bool] | None:
        """The first ``HEAD_BYTES`` of the data set received into ``path`` and whether that
        is all of it; once (None after, or for a file this association did not receive)."""
        return self._heads.pop(path, None)

    def _check(self, data: bytes) -> bytes | None:
        if not data:
            return data
        message = self._assoc.dimse.message
        if data[0] & 1:  # a command set fragment
            self._command += len(data) - 1
            if self._command > MAX_COMMAND_SET:
                self._kill(f"a command set over {MAX_COMMAND_SET} bytes")
                return None
            return data
        self._data += len(data) - 1
        limit = self._server.limits.max_instance_bytes
        target = getattr(message, "_data_set_file", None)
        if target is None:  # pynetdicom keeps this data set in memory
            if not isinstance(message, C_STORE_RQ):  # (a C-STORE's only if chunking is off)
                limit = MAX_IN_MEMORY_DATA_SET
            if self._data > limit:
                self._kill(f"a data set kept in memory grew over {limit} bytes")
                return None
            return data
        if self._data <= limit:
            return data
        if not self._discarding:
            self._discard(message, target, limit)
        if self._data > limit + MAX_DISCARDED:
            self._kill(
                f"kept sending an instance {MAX_DISCARDED // MIB} MB past node.max_instance_mb"
            )
            return None
        return data[:1]  # the control header only: pynetdicom still sees the last fragment

    def _discard(self, message: Any, target: Any, limit: int) -> None:
        self._discarding = True
        path = str(message._data_set_path)
        with _refused_lock:
            _refused.add(path)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            target.file.flush()
            target.file.seek(0)
            target.file.truncate()
        with contextlib.suppress(OSError):
            os.unlink(path)
        self._server.refusals.refuse(
            "instance-too-large",
            f"C-STORE from {self._assoc.requestor.address} (calling AE "
            f"{str(self._assoc.requestor.ae_title).strip()!r}) passed node.max_instance_mb "
            f"({limit // MIB} MB): the rest is read and dropped, the store will be refused",
        )

    def _kill(self, why: str, reason: str = "message-too-large") -> None:
        """Abort through pynetdicom's own path for an invalid message (Evt19: A-ABORT);
        returns None, for ``_check`` to drop the fragment."""
        self._dead = True
        _discard_partial(self._assoc)
        _stop_reading(self._assoc.dul.socket)  # the abort first, not the peer's next PDU
        self._server.refusals.refuse(
            reason, f"aborted association with {self._assoc.requestor.address}: {why}"
        )
        self._assoc.dul.event_queue.put("Evt19")


class _StoreDispatch:
    """Every C-STORE goes to the storage service, whatever its Affected SOP Class UID says.

    pynetdicom picks the service class by the command's SOP Class UID, and aborts the whole
    association when it knows none (a malformed, private or retired class, or one that is not
    the context's): one bad instance would cost every instance behind it. Here the C-STORE
    handler sees it and answers it with a failure status (``dicomnode.ingest``); any other
    message is served as pynetdicom does. Installed as the association's ``_serve_request``.
    """

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        self._serve: Callable[[Any, int], None] = assoc._serve_request

    @classmethod
    def install(cls, assoc: Association) -> None:
        setattr(assoc, "_serve_request", cls(assoc))  # noqa: B010 - a method

    def __call__(self, msg: Any, context_id: int) -> None:
        assoc = self._assoc
        context = assoc._accepted_cx.get(context_id)
        if (
            not isinstance(msg, C_STORE)
            or context is None
            or assoc._sent_release
            or not msg.is_valid_request
            or uid_to_service_class(str(msg.AffectedSOPClassUID)) is StorageServiceClass
        ):
            self._serve(msg, context_id)  # pynetdicom's own way (and its abort, if it aborts)
            return
        assoc._is_paused = True  # as _serve_request does, in case the handler sends
        try:
            StorageServiceClass(assoc).SCP(msg, context)
        except Exception as exc:
            log.error(
                "C-STORE from %s could not be answered (%s); aborting the association",
                assoc.requestor.address,
                type(exc).__name__,
            )
            assoc.abort()
        finally:
            assoc._is_paused = False


class _QuietPduReads(logging.Filter):
    """Drops pynetdicom's per-PDU read errors: the framed socket logs the connection once."""

    _NOISE = (
        "Unknown PDU type received",
        "The received PDU is shorter than expected",
        "Connection closed before the entire PDU was received",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._NOISE)


def _quiet_pynetdicom_reads() -> None:
    dul_log = logging.getLogger("pynetdicom.dul")
    if not any(isinstance(f, _QuietPduReads) for f in dul_log.filters):
        dul_log.addFilter(_QuietPduReads())
