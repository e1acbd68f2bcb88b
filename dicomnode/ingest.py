"""The DICOM listener: C-ECHO, and C-STORE straight into the spool.

pynetdicom writes each received dataset to a file as it arrives (``STORE_RECV_CHUNKED_DATASET``)
in the spool's ``tmp/``; the C-STORE handler only fsyncs it, renames it into ``incoming/`` and
answers. Nothing is decoded on the association thread. Statuses:

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

Why 0xA700 for an instance over ``node.max_instance_mb``: the standard's "Refused: Out of
Resources" says what happened (the data may be perfectly good; this node will not hold that
much), whereas 0xC2xx "cannot understand" would send the modality's staff looking for a
broken object. A sender that retries gets the same answer, and the log says why.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import ssl
import tempfile
import time
from collections.abc import Callable
from typing import Any

from pydicom.uid import (
    JPEG2000,
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
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode._net import set_nodelay
from dicomnode.config import NodeConfig
from dicomnode.dicomio import read_header
from dicomnode.gate import (
    AssociationRequest,
    GatedServer,
    Limits,
    RefusalLog,
    Rejection,
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

# Received datasets go to a file as they arrive; identifiers are never logged.
_config.STORE_RECV_CHUNKED_DATASET = True
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False


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
    ) -> None:
        """``on_refused(reason, calling_ae)``: a caller or a C-STORE refused (metrics, audit);
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
            (evt.EVT_REQUESTED, self._answer_as_called),
        ]
        server = ae.make_server(
            (self.config.bind, self.config.port),
            evt_handlers=handlers,
            ssl_context=self._ssl_context(),
            server_class=GatedServer,
            limits=_limits(self.config),
            admit=self._admit,
            refusals=self.refusals,
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
        """Stop accepting associations; those in progress are closed."""
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
        is in (the gate logs the refusal, rate-limited)."""
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

    def _allow_list(self, request: AssociationRequest) -> Rejection | None:
        if not self._allowed:
            return None
        networks = self._allowed.get(request.calling_ae)
        why = "not an allowed caller"
        refused = networks is None
        if networks:
            address = ipaddress.ip_address(request.address)
            refused = not any(address in network for network in networks)
            why = "not allowed from this address"
        if not refused:
            return None
        self.on_refused("calling-ae", request.calling_ae)
        # result 1 rejected-permanent, source 1 service-user, 3 calling AE not recognised
        return Rejection(0x01, 0x01, 0x03, "calling-ae", why)

    def _answer_as_called(self, event: evt.Event) -> None:
        """Accept under the AE title that was called (a project's, the gate let it in), so
        the A-ASSOCIATE-AC repeats it, as PS3.8 7.1.1.4 expects."""
        router = self.router
        primitive = getattr(event.assoc.requestor, "primitive", None)
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        if router is not None and called in router.called_ae_titles:
            event.assoc.acceptor.ae_title = called

    def _on_store(self, event: evt.Event) -> int:
        started = time.perf_counter()
        calling = str(event.assoc.requestor.ae_title).strip()
        received = event.dataset_path
        if refused_instance(received):
            # The gate logged it when the bytes passed the limit, and deleted the partial file.
            self.on_refused("too-large", calling)
            return STATUS_OUT_OF_RESOURCES
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


def _limits(config: NodeConfig) -> Limits:
    return Limits(
        request_timeout_s=config.request_timeout_s,
        max_connections_per_address=config.max_connections_per_address,
        max_associations=config.max_associations,
        max_pdu=config.max_pdu,
        network_timeout_s=config.network_timeout_s,
        max_instance_bytes=config.max_instance_mb * 1024 * 1024,
    )
