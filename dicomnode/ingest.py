"""The DICOM listener: C-ECHO, and C-STORE straight into the spool.

pynetdicom writes each received dataset to a file as it arrives (``STORE_RECV_CHUNKED_DATASET``)
in the spool's ``tmp/``; the C-STORE handler only renames it into ``incoming/``, makes it
durable (one journal commit: see ``Spool.accept``) and answers. Nothing is decoded on the
association thread, and the association's threads wait for work rather than poll
(``dicomnode.gate``). With ``node.listeners`` above 1, several processes run this listener
on one port (``dicomnode.listeners``). Statuses:

- 0x0000 success, only once the instance is durable in ``incoming/``;
- 0xA700 (out of resources) when free disk is below the configured floor, or the disk
  fills while writing: the sender keeps the instance and retries later;
- 0xC211 when the spool cannot be written for another reason (the log says which).

A C-STORE whose data set passes ``node.max_instance_mb`` is answered 0xA700 too, without the
instance ever being whole on disk (see below).

With projects (``dicomnode.projects``), the handler also decides the project of the instance
(from the called and calling AE titles, and the header when a project's condition needs it)
and the spool records it in the item's name; an association no project can take is refused
by the gate, and with ``unmatched: refuse`` a C-STORE no project takes is answered 0x0124
(refused: not authorised).

In front of pynetdicom sits the gate (``dicomnode.gate``): a connection becomes an association
only once it has sent a complete A-ASSOCIATE-RQ within ``node.request_timeout_s`` (TLS handshake
included), from an address with fewer than ``node.max_connections_per_address`` connections
open, with our called AE title and an allowed calling AE title (``node.allowed_callers``,
optionally restricted to source addresses), while one of ``node.max_associations`` slots is
free; otherwise an A-ASSOCIATE-RJ ("calling/called AE title not recognised", or transient
"local limit exceeded"). PDUs longer than we offered (``node.max_pdu``) abort the association
before their body is read.

One bad instance costs only itself. An association may propose any abstract syntax that is
not a known non-storage service (a malformed, private, retired or unknown SOP class): the
context is accepted with our transfer syntaxes, so that a sender such as dcmtk's storescu
(which proposes a context per file, and gives up on the association when one is refused)
goes on with the rest, and each such C-STORE is answered:

- 0x0122 (refused: SOP class not supported) when the command's SOP class is not a storage
  class this node takes, or is not the abstract syntax of the context it came on;
- 0xA900 (error: data set does not match SOP class) when the data set's SOP Class UID is not
  the command's;

never 0x0000, each with one log line and ``dicomnode_stores_refused_total{reason}``
(``sop-class-not-supported``, ``sop-class-not-negotiated``, ``sop-class-mismatch``), while the
association goes on. Query/retrieve, worklist and other services are still refused at
negotiation (``dicomnode.gate`` sends every C-STORE to the storage service, which pynetdicom
did only for the classes it knows).

C-ECHO from the node's own host: an association that proposes Verification and nothing else,
from the address it connected to (127.0.0.1 to 127.0.0.1, or the node's own address to
itself), is let past ``node.allowed_callers`` (and the projects), and only Verification is
negotiated on it; a C-STORE sent on it anyway is refused (0x0124). The container's
healthcheck and an administrator's ``dicomnode echo`` on the host work whatever the
allow-list; nothing can be stored that way, and such a caller proposing anything else meets
the allow-list as before.

Why 0xA700 for an instance over ``node.max_instance_mb``: the standard's "Refused: Out of
Resources" says what happened (the data may be perfectly good; this node will not hold that
much), whereas 0xC2xx "cannot understand" would send the modality's staff looking for a
broken object. A sender that retries gets the same answer, and the log says why.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
import ssl
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    build_context,
)
from pynetdicom.service_class import ServiceClass
from pynetdicom.sop_class import Verification, uid_to_service_class  # type: ignore[attr-defined]

from dicomnode._net import set_nodelay
from dicomnode._received import install as install_received_files
from dicomnode._uid_checks import cache_validator
from dicomnode.config import NodeConfig
from dicomnode.dicomio import header_of_data_set, read_header
from dicomnode.gate import (
    HEAD_BYTES,
    AssociationRequest,
    GatedServer,
    Limits,
    RefusalLog,
    Rejection,
    SharedCounts,
    data_set_head,
    refused_instance,
)
from dicomnode.projects import HEADER_BYTES, Router
from dicomnode.spool import NO_PROJECT, Spool, safe_ae

log = logging.getLogger(__name__)

__all__ = ["ACCEPTED_TRANSFER_SYNTAXES", "Ingest"]

ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
]

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_PROCESS = 0xC211
STATUS_NOT_AUTHORISED = 0x0124  # PS3.7 C.5.x "Refused: Not authorized": no project takes it
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5.x "Refused: SOP Class not supported"
STATUS_DATA_SET_MISMATCH = 0xA900  # PS3.4 B.2.3 "Error: Data Set does not match SOP Class"

STORAGE_CLASSES = frozenset(str(c.abstract_syntax) for c in AllStoragePresentationContexts)
_SOP_CLASS_BYTES = HEAD_BYTES  # the data set's SOP Class UID comes within its first elements
_UID_TEXT = re.compile(r"[0-9.]{1,64}")

# Received datasets go to a file as they arrive (opened cheaply: dicomnode._received).
_config.STORE_RECV_CHUNKED_DATASET = True
install_received_files()
# Identifiers are never logged, and pynetdicom's standard handlers do not describe every PDU
# and DIMSE message for its debug log (they build the text whatever the log level: ~0.1 ms
# per message); our lines say what an operator needs.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
_config.LOG_HANDLER_LEVEL = "none"
# Each distinct UID of a negotiation checked once (dicomnode._uid_checks).
cache_validator()


class Ingest:
    """A pynetdicom Storage SCP bound to one spool."""

    def __init__(
        self,
        config: NodeConfig,
        spool: Spool,
        on_received: Callable[[str, str, int, float], None] = (
            lambda item_id, ae, size, seconds: None
        ),
        on_refused: Callable[[str, str], None] = lambda reason, ae: None,
        on_connection_refused: Callable[[str], None] = lambda reason: None,
        router: Router | None = None,
        shared: SharedCounts | None = None,
        listener: int = 0,
        sock: socket.socket | None = None,
    ) -> None:
        """``shared``, ``listener``, ``sock``: this is listener process ``listener`` of several
        that accept on the node's listening socket ``sock`` and share these counts
        (``dicomnode.listeners``); None: the only one, binding its own.

        ``on_refused(reason, calling_ae)``: a caller or a C-STORE refused (metrics, audit);
        ``on_connection_refused(reason)``: every connection the gate turned away or cut, by
        reason (``idle``, ``slow-request``, ``not-a-request``, ``per-address``, ``pdu-length``...;
        for a counter, never an audit line: a flood calls it thousands of times);
        ``router``: the configuration's projects (None: none, as before projects existed)."""
        self.config = config
        self.router = router
        self.spool = spool
        self.on_received = on_received
        self.on_refused = on_refused
        self.refusals = RefusalLog(count=on_connection_refused)
        self.shared = shared
        self._row = listener
        self._socket = sock
        self._server: GatedServer | None = None
        self.update(config)

    def update(self, config: NodeConfig) -> None:
        """Take new allowed callers, disk floor and per-peer limits without restarting the
        listener (``max_associations`` and ``max_pdu`` need a restart)."""
        self.config = config
        self._floor = config.disk_floor_mb * 1024 * 1024
        self._allowed = {
            caller.ae_title: [ipaddress.ip_network(a, strict=False) for a in caller.addresses]
            for caller in config.allowed_callers
        }
        if self._server is not None:
            self._server.limits = _limits(config)
            self._server.called_ae_titles = self._called_ae_titles()

    def set_router(self, router: Router | None) -> None:
        """Take new projects (a reload) without restarting the listener."""
        self.router = router
        if self._server is not None:
            self._server.called_ae_titles = self._called_ae_titles()

    def _called_ae_titles(self) -> frozenset[str]:
        return self.router.called_ae_titles if self.router is not None else frozenset()

    @property
    def listener(self) -> GatedServer | None:
        """The running listener; :meth:`stop` lets its open associations carry on, and the
        node keeps this to wait for them (and abort them after node.stop_timeout_s)."""
        return self._server

    @property
    def open_associations(self) -> int:
        """Associations holding a slot (accepted by the gate, not yet ended)."""
        server = self._server
        return server.associations if server is not None else 0

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and listen (raises OSError, ssl.SSLError as the node reports them)."""
        # pynetdicom's receive files are temporary files: make them on the spool's file
        # system, so that accepting one is a rename, not a copy.
        tempfile.tempdir = str(self.spool.tmp)
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.max_pdu
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.config.network_timeout_s
        # The gate checks it first; this stays as a backstop where there is one title only.
        ae.require_called_aet = self.router is None
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REQUESTED, self._on_requested),
        ]
        server = ae.make_server(
            (self.config.bind, self.config.port),
            evt_handlers=handlers,
            ssl_context=self._ssl_context(),
            server_class=GatedServer,
            limits=_limits(self.config),
            admit=self._admit,
            refusals=self.refusals,
            rejected=lambda request, rejection: self.on_refused(
                rejection.reason, request.calling_ae
            ),
            shared=self.shared,
            listener=self._row,
            sock=self._socket,
        )
        assert isinstance(server, GatedServer)
        server.called_ae_titles = self._called_ae_titles()
        server.start()
        self._server = server
        log.info(
            "listening as %s on %s:%d%s",
            self.config.ae_title,
            self.config.bind,
            self.port,
            " (TLS)" if self.config.tls else "",
        )

    def stop(self) -> None:
        """Stop accepting associations; those in progress carry on (see :attr:`listener`)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
        if tls.ca_certificates:
            context.load_verify_locations(str(tls.ca_certificates))
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
        return context

    def _admit(self, request: AssociationRequest) -> Rejection | None:
        """The allow-list, then the projects, asked by the gate as soon as the A-ASSOCIATE-RQ
        is in (the gate logs the refusal, rate-limited). A C-ECHO from this host passes
        (see the module docstring)."""
        if _echo_from_this_host(request):
            return None
        rejection = self._allow_list(request)
        if rejection is None and self.router is not None:
            diagnostic = self.router.admit(request.called_ae, request.calling_ae)
            if diagnostic is not None:
                self.on_refused("no-project", request.calling_ae)
                # rejected-permanent, service-user, calling (3) or called (7) AE not recognised
                return Rejection(
                    0x01, 0x01, diagnostic, "no-project", "no project takes these AE titles"
                )
        return rejection

    def _not_allowed(self, calling_ae: str, address: str) -> str | None:
        """Why ``node.allowed_callers`` refuses this caller; None when it may call."""
        if not self._allowed:
            return None
        networks = self._allowed.get(calling_ae)
        if networks is None:
            return "not an allowed caller"
        if not networks:
            return None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return "not allowed from this address"
        if any(ip in network for network in networks):
            return None
        return "not allowed from this address"

    def _allow_list(self, request: AssociationRequest) -> Rejection | None:
        why = self._not_allowed(request.calling_ae, request.address)
        if why is None:
            return None
        self.on_refused("calling-ae", request.calling_ae)
        # result 1 rejected-permanent, source 1 service-user, 3 calling AE not recognised
        return Rejection(0x01, 0x01, 0x03, "calling-ae", why)

    def _on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED, before pynetdicom negotiates: answer under the called AE title, and
        set this association's presentation contexts (what it may do)."""
        assoc = event.assoc
        primitive = getattr(assoc.requestor, "primitive", None)
        if primitive is None:
            return
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip(" \x00")
        router = self.router
        if router is not None and called in router.called_ae_titles:
            # the A-ASSOCIATE-AC repeats the title that was called, as PS3.8 7.1.1.4 expects
            assoc.acceptor.ae_title = called
        proposed = [
            str(cx.abstract_syntax or "") for cx in primitive.presentation_context_definition_list
        ]
        address = str(assoc.requestor.address)
        may_store = self._not_allowed(calling, address) is None and (
            router is None or router.admit(called or self.config.ae_title, calling) is None
        )
        supported: list[PresentationContext] = assoc.acceptor.supported_contexts
        if not may_store:
            # Past the allow-list only as a C-ECHO from this host: Verification, nothing else,
            # whatever the gate read from the request.
            assoc.acceptor.supported_contexts = [
                cx for cx in supported if cx.abstract_syntax == Verification
            ]
            return
        extra = _contexts_for_unknown_classes(proposed)
        if extra:
            assoc.acceptor.supported_contexts = [*supported, *extra]

    def _sop_class_refusal(self, event: evt.Event, received: Path) -> tuple[int, str, str] | None:
        """(status, reason, why) when this C-STORE's SOP class rules it out; None otherwise.

        The command's class must be a storage class we take and the context's abstract syntax;
        the data set's SOP Class UID, read from its first 64 KiB, must be the command's (a data
        set without one, or one that cannot be read there, is left to the workers, which
        quarantine it with the reason)."""
        command = str(event.request.AffectedSOPClassUID or "")
        context = str(event.context.abstract_syntax or "")
        if command not in STORAGE_CLASSES:
            return (
                STATUS_SOP_CLASS_NOT_SUPPORTED,
                "sop-class-not-supported",
                f"SOP class {_describe_class(command)} is not a storage class this node takes",
            )
        if command != context:
            return (
                STATUS_SOP_CLASS_NOT_SUPPORTED,
                "sop-class-not-negotiated",
                f"the command's SOP class ({_describe_class(command)}) is not its presentation "
                f"context's ({_describe_class(context)})",
            )
        head = data_set_head(event.assoc, received)
        if head is None:
            header = read_header(received, ["SOPClassUID"], max_bytes=_SOP_CLASS_BYTES)
        else:
            syntax = str(event.context.transfer_syntax or "")
            data, whole = head
            header = header_of_data_set(
                data, whole, syntax, ["SOPClassUID"], max_bytes=_SOP_CLASS_BYTES
            )
        header = header or {}
        in_data_set = header.get("SOPClassUID") or ()
        if in_data_set and in_data_set[0] != command:
            return (
                STATUS_DATA_SET_MISMATCH,
                "sop-class-mismatch",
                f"the data set says SOP class {_describe_class(in_data_set[0])}, the command "
                f"{_describe_class(command)}",
            )
        return None

    def _on_store(self, event: evt.Event) -> int:
        """EVT_C_STORE: the status of one C-STORE (see the module docstring); an unexpected
        error is one line of ours and 0xC211, never pynetdicom's traceback."""
        try:
            return self._store(event)
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "C-STORE from %s failed in the handler (%s at %s:%d); refusing with 0xC211",
                safe_ae(str(event.assoc.requestor.ae_title)),
                type(exc).__name__,
                Path(where.filename).name,
                where.lineno,
            )
            self.on_refused("internal-error", str(event.assoc.requestor.ae_title).strip())
            return STATUS_CANNOT_PROCESS

    def _store(self, event: evt.Event) -> int:
        started = time.perf_counter()
        calling = str(event.assoc.requestor.ae_title).strip()
        received = event.dataset_path
        if refused_instance(received):
            # The gate logged it when the bytes passed the limit, and deleted the partial file.
            self.on_refused("too-large", calling)
            return STATUS_OUT_OF_RESOURCES
        address = str(event.assoc.requestor.address)
        if self._not_allowed(calling, address) is not None:
            # Only a C-ECHO from this host gets past the allow-list, and it negotiates nothing
            # but Verification; should a C-STORE come anyway, it is not authorised.
            log.warning(
                "refused C-STORE from %s at %s with 0x0124: not an allowed caller",
                safe_ae(calling),
                address,
            )
            self.on_refused("calling-ae", calling)
            return STATUS_NOT_AUTHORISED
        refusal = self._sop_class_refusal(event, received)
        if refusal is not None:
            status, reason, why = refusal
            log.warning(
                "refused C-STORE from %s at %s with 0x%04X (%s): %s; the association goes on",
                safe_ae(calling),
                address,
                status,
                reason,
                why,
            )
            self.on_refused(reason, calling)
            return status
        try:
            if self.spool.free_bytes() < self._floor:
                log.error(
                    "free disk below %d MB: refusing C-STORE with 0xA700", self.config.disk_floor_mb
                )
                self.on_refused("disk-floor", calling)
                return STATUS_OUT_OF_RESOURCES
            size = received.stat().st_size
            project = self._project(event, calling, received)
            router = self.router
            if project == NO_PROJECT and router is not None and router.unmatched == "refuse":
                self.on_refused("no-project", calling)
                return STATUS_NOT_AUTHORISED
            item_id = self.spool.accept(received, calling, project)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("spool disk full: refusing C-STORE with 0xA700")
                self.on_refused("disk-full", calling)
                return STATUS_OUT_OF_RESOURCES
            log.error("cannot write to the spool (%s): refusing C-STORE with 0xC211", exc)
            self.on_refused("spool-error", calling)
            return STATUS_CANNOT_PROCESS
        self.on_received(item_id, calling, size, time.perf_counter() - started)
        return STATUS_SUCCESS

    def _project(self, event: evt.Event, calling: str, received: Any) -> str | None:
        """The project of this instance, decided once, here (``dicomnode.projects``); None
        without projects. Reads the header only when a project's condition needs it."""
        router = self.router
        if router is None:
            return None
        primitive = getattr(event.assoc.requestor, "primitive", None)
        called = str(getattr(primitive, "called_ae_title", "") or self.config.ae_title).strip()
        route = router.decide(
            called,
            calling,
            lambda fields: read_header(received, fields, max_bytes=HEADER_BYTES),
        )
        if route.why == "header-unreadable":
            log.warning(
                "C-STORE from %s: the header could not be read within %d KiB to decide a "
                "project; no project takes it",
                safe_ae(calling),
                HEADER_BYTES // 1024,
            )
        return route.project


def _echo_from_this_host(request: AssociationRequest) -> bool:
    """A request proposing Verification and nothing else, from this host: from the very
    address it connected to (127.0.0.1 to 127.0.0.1 in a container's healthcheck; the node's
    own address when it listens on one). A connection from elsewhere cannot have that source
    address (the kernel drops packets from outside that claim a local source)."""
    syntaxes = request.abstract_syntaxes
    if not syntaxes or any(a != Verification for a in syntaxes) or not request.local_address:
        return False
    try:
        peer = ipaddress.ip_address(request.address)
        local = ipaddress.ip_address(request.local_address)
    except ValueError:
        return False
    return _unmapped(peer) == _unmapped(local)


def _unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _storage_like(uid: str) -> bool:
    """A class a sender may mean to C-STORE that we do not take: unregistered (private,
    malformed, unknown) or a registered storage class we lack (retired, DICOS...); not a
    service pynetdicom or the standard's UID table knows as something else (Q/R, worklist,
    storage commitment, a transfer syntax)."""
    if uid in STORAGE_CLASSES or uid_to_service_class(uid) is not ServiceClass:
        return False
    known = UID(uid)
    if not known.type:  # pydicom's table has no entry: unregistered
        return True
    name = known.name
    return known.type == "SOP Class" and "Storage" in name and "Commitment" not in name


def _contexts_for_unknown_classes(proposed: list[str]) -> list[PresentationContext]:
    """A presentation context, with our transfer syntaxes, for each proposed class that is
    storage-like but not ours, so that its C-STORE is answered instead of never sent."""
    out: list[PresentationContext] = []
    seen: set[str] = set()
    for uid in proposed:
        if uid in seen or not _storage_like(uid):
            continue
        seen.add(uid)
        try:
            out.append(build_context(uid, list[str | UID](ACCEPTED_TRANSFER_SYNTAXES)))
        except ValueError:  # not even a UID pynetdicom can hold: it refuses the context
            continue
    return out


def _describe_class(uid: str) -> str:
    """A SOP class for the log: its name when registered, else the UID if it looks like one
    (a class UID identifies a kind of object, never a patient), else its length only."""
    if not uid:
        return "(none)"
    name = UID(uid).name if _UID_TEXT.fullmatch(uid) else ""
    if name and name != uid:
        return f"{uid} ({name})"
    if _UID_TEXT.fullmatch(uid):
        return uid
    return f"(not a UID, {len(uid)} characters)"


def _limits(config: NodeConfig) -> Limits:
    return Limits(
        request_timeout_s=config.request_timeout_s,
        max_connections_per_address=config.max_connections_per_address,
        max_associations=config.max_associations,
        max_pdu=config.max_pdu,
        network_timeout_s=config.network_timeout_s,
        max_instance_bytes=config.max_instance_mb * 1024 * 1024,
    )
