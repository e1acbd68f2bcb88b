"""The DICOM listener: C-ECHO, and C-STORE straight into the spool.

pynetdicom writes each received dataset to a file as it arrives (``STORE_RECV_CHUNKED_DATASET``)
in the spool's ``tmp/``; the C-STORE handler only fsyncs it, renames it into ``incoming/`` and
answers. Nothing is decoded on the association thread. Statuses:

- 0x0000 success, only once the instance is durable in ``incoming/``;
- 0xA700 (out of resources) when free disk is below the configured floor, or the disk
  fills while writing: the sender keeps the instance and retries later;
- 0xC211 when the spool cannot be written for another reason (the log says which).

Associations are refused (A-ASSOCIATE-RJ, "calling AE title not recognised") for a calling AE
title that is not allowed, or allowed only from other addresses, and when the called AE title
is not ours.
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
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import NodeConfig
from dicomnode.forward import set_nodelay
from dicomnode.spool import Spool

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
    ) -> None:
        self.config = config
        self.spool = spool
        self.on_received = on_received
        self.on_refused = on_refused
        self._server: ThreadedAssociationServer | None = None
        self._floor = config.disk_floor_mb * 1024 * 1024
        self._allowed = {
            caller.ae_title: [ipaddress.ip_network(a, strict=False) for a in caller.addresses]
            for caller in config.allowed_callers
        }

    def update(self, config: NodeConfig) -> None:
        """Take new allowed callers and disk floor without restarting the listener."""
        self.config = config
        self._floor = config.disk_floor_mb * 1024 * 1024
        self._allowed = {
            caller.ae_title: [ipaddress.ip_network(a, strict=False) for a in caller.addresses]
            for caller in config.allowed_callers
        }

    @property
    def open_associations(self) -> int:
        server = self._server
        return len(server.active_associations) if server is not None else 0

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
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._server = ae.start_server(
            (self.config.bind, self.config.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self._ssl_context(),
        )
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

    def _on_requested(self, event: evt.Event) -> None:
        if not self._allowed:
            return
        requestor = event.assoc.requestor
        primitive = requestor.primitive
        calling = str(primitive.calling_ae_title if primitive else "").strip()
        networks = self._allowed.get(calling)
        refused = networks is None
        if networks:
            address = ipaddress.ip_address(requestor.address)
            refused = not any(address in network for network in networks)
        if refused:
            log.warning(
                "refused association from %s at %s: not an allowed caller",
                calling,
                requestor.address,
            )
            self.on_refused("calling-ae", calling)
            # result 1 rejected-permanent, source 1 service-user, 3 calling AE not recognised;
            # then wait, as pynetdicom does for its own rejections, until the reject is sent.
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
            event.assoc.kill()

    def _on_store(self, event: evt.Event) -> int:
        started = time.perf_counter()
        calling = str(event.assoc.requestor.ae_title).strip()
        received = event.dataset_path
        try:
            if self.spool.free_bytes() < self._floor:
                log.error(
                    "free disk below %d MB: refusing C-STORE with 0xA700", self.config.disk_floor_mb
                )
                self.on_refused("disk-floor", calling)
                return STATUS_OUT_OF_RESOURCES
            size = received.stat().st_size
            item_id = self.spool.accept(received, calling)
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
