"""Delivery of clean objects from ``outgoing/<destination>/`` to each destination.

One thread per destination takes the oldest waiting objects in batches and hands them to a
sender: a ``folder`` sender writes a PatientID/Study/Series tree, a ``dicom`` sender sends a
batch over one association (C-STORE SCU). Per object the sender answers delivered, retry
(the destination is down or busy) or rejected (it refused this object for good). Retries
back off exponentially with jitter, per destination; an object still undelivered after the
configured age, or refused for good, moves to ``dead-letter/<destination>/`` with a sidecar.
``dicomnode retry`` gives dead letters back to the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt

from dicomnode.batch import output_path
from dicomnode.config import DicomDestination, FolderDestination, RetryConfig
from dicomnode.durable import fsync_dir, write_atomic
from dicomnode.spool import Spool

log = logging.getLogger(__name__)

__all__ = ["DicomSender", "FolderSender", "Forwarder", "Result", "echo", "sender_for"]

# Send files as they are on disk, without decoding them, when the destination accepts their
# transfer syntax; and never log identifiers.
_config.STORE_SEND_CHUNKED_DATASET = True
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_SUCCESS = {0x0000, 0xB000, 0xB006, 0xB007, 0x0111}  # 0x0111: already has this instance


@dataclass(frozen=True)
class Result:
    """``delivered``, ``retry`` or ``rejected``, with a reason an operator can act on."""

    status: str
    reason: str = ""


DELIVERED = Result("delivered")


class Sender(Protocol):
    name: str

    def send(self, paths: list[Path]) -> list[Result]:
        """One Result per path, in order."""
        ...


def set_nodelay(event: evt.Event) -> None:
    """Nagle off on association sockets: otherwise each small PDU waits ~40 ms for an ACK."""
    transport = event.assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FolderSender:
    """Writes each object to ``<path>/<PatientID>/<Study>/<Series>/<SOP>.dcm`` durably.

    Temporary files live in ``<path>/.dicomnode-tmp/`` (emptied at start-up), so a reader of
    the tree never sees a partial file, even after a crash.
    """

    STAGING = ".dicomnode-tmp"

    def __init__(self, config: FolderDestination) -> None:
        self.name = config.name
        self.root = config.path
        self.staging = self.root / self.STAGING
        with contextlib.suppress(OSError):
            self.staging.mkdir(parents=True, exist_ok=True)
            for stale in self.staging.iterdir():
                stale.unlink()

    def send(self, paths: list[Path]) -> list[Result]:
        results = []
        for path in paths:
            try:
                ds = pydicom.dcmread(
                    path,
                    stop_before_pixels=True,
                    specific_tags=[
                        "PatientID",
                        "StudyInstanceUID",
                        "SeriesInstanceUID",
                        "SOPInstanceUID",
                    ],
                )
                self._place(path, output_path(self.root, ds))
            except OSError as exc:
                results.append(Result("retry", f"cannot write to {self.root}: {exc.strerror}"))
                continue
            except Exception as exc:
                results.append(Result("rejected", f"unreadable clean object: {type(exc).__name__}"))
                continue
            results.append(DELIVERED)
        return results

    def _place(self, source: Path, target: Path) -> None:
        """Hard-link when the destination is on the spool's file system (no copy, and the
        data is already durable), else copy through the staging folder."""
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)  # a redelivery: same object
            os.link(source, target)
        except OSError:
            self.staging.mkdir(parents=True, exist_ok=True)
            write_atomic(target, source.read_bytes(), tmp_dir=self.staging)
            return
        fsync_dir(target.parent)


class DicomSender:
    """C-STORE SCU: one association per batch, the object's own transfer syntax first."""

    def __init__(self, config: DicomDestination, calling_ae: str) -> None:
        self.name = config.name
        self.config = config
        self.calling_ae = config.calling_ae_title or calling_ae

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        timeout = self.config.timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.connection_timeout = min(timeout, 10)
        ae.maximum_pdu_size = 0
        return ae

    def send(self, paths: list[Path]) -> list[Result]:
        metas: list[tuple[str, str] | None] = []
        for path in paths:
            try:
                info = read_file_meta_info(path)
                metas.append((str(info.MediaStorageSOPClassUID), str(info.TransferSyntaxUID)))
            except Exception:
                metas.append(None)
        ae = self._ae()
        wanted: set[tuple[str, str]] = {m for m in metas if m is not None}
        for sop_class, syntax in sorted(wanted):
            # Deflate is sent inflated: receivers' support for it is patchy (dcmtk's storescp
            # aborts on some deflated streams) and it is only a wire compression.
            if syntax != DeflatedExplicitVRLittleEndian:
                ae.add_requested_context(sop_class, [syntax])
        for sop_class in sorted({s for s, _ in wanted}):
            if len(ae.requested_contexts) < 128:
                ae.add_requested_context(sop_class, list(UNCOMPRESSED))
        config = self.config
        assoc = ae.associate(
            config.host,
            config.port,
            ae_title=config.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)],
        )
        if not assoc.is_established:
            why = (
                "rejected the association"
                if assoc.is_rejected
                else "could not be reached, or aborted the association"
            )
            reason = f"{config.ae_title} at {config.host}:{config.port} {why}"
            return [Result("retry", reason) for _ in paths]
        results: list[Result] = []
        try:
            for path, meta in zip(paths, metas, strict=True):
                if not assoc.is_established:
                    results.append(Result("retry", "association lost"))
                    continue
                if meta is None:
                    results.append(Result("rejected", "the clean object's file meta is unreadable"))
                    continue
                results.append(self._store(assoc, path, *meta))
        finally:
            if assoc.is_established:
                assoc.release()
        return results

    def _store(self, assoc: Any, path: Path, sop_class: str, syntax: str) -> Result:
        accepted = {
            cx.transfer_syntax[0]
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class
        }
        fallback = next((ts for ts in UNCOMPRESSED if ts in accepted), None)
        if syntax in accepted:
            payload: Any = path  # sent as it is on disk
        elif syntax in (*UNCOMPRESSED, DeflatedExplicitVRLittleEndian) and fallback:
            # Uncompressed data can be re-encoded in the accepted syntax: decode every element
            # (raw sequences are in the old encoding), then let pynetdicom write it.
            payload = pydicom.dcmread(path)
            for _ in payload.iterall():
                pass
            payload.file_meta.TransferSyntaxUID = fallback
            payload.set_original_encoding(fallback == ImplicitVRLittleEndian, True)
        else:
            return Result(
                "rejected",
                f"{self.config.ae_title} accepts no transfer syntax for SOP class {sop_class} "
                f"that {syntax} can be sent in",
            )
        status = assoc.send_c_store(payload)
        if not status or "Status" not in status:
            return Result("retry", "no response to C-STORE (timeout or connection lost)")
        code = int(status.Status)
        if code in _SUCCESS:
            return DELIVERED
        if 0xA700 <= code <= 0xA7FF or code in (0x0110, 0x0213):
            return Result("retry", f"{self.config.ae_title} is out of resources (0x{code:04X})")
        return Result("rejected", f"{self.config.ae_title} refused the object (0x{code:04X})")


def sender_for(destination: FolderDestination | DicomDestination, calling_ae: str) -> Sender:
    if isinstance(destination, FolderDestination):
        return FolderSender(destination)
    return DicomSender(destination, calling_ae)


def echo(destination: DicomDestination, calling_ae: str, timeout: float = 5) -> str | None:
    """C-ECHO a destination: None if it answered, else why not."""
    ae = AE(ae_title=destination.calling_ae_title or calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        return "no association (refused, rejected or no answer)"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status and int(status.Status) == 0:
        return None
    return "C-ECHO failed"


class Forwarder(threading.Thread):
    """Delivers one destination's queue, forever, until stopped.

    A destination may have several lanes (``lane`` of ``lanes``), each its own thread and
    association: an object belongs to one lane by a hash of its name, so lanes never send the
    same object, and the destination's round-trip latency is overlapped.
    """

    def __init__(
        self,
        spool: Spool,
        sender: Sender,
        *,
        retry: RetryConfig | None = None,
        batch_size: int = 100,
        keep_days: float = 0,
        on_result: Callable[[str, Path, Result, float, int], None] = (
            lambda name, path, result, seconds, size: None
        ),
        lane: int = 0,
        lanes: int = 1,
    ) -> None:
        super().__init__(name=f"forward-{sender.name}-{lane}", daemon=True)
        self.lane = lane
        self.lanes = lanes
        self.spool = spool
        self.sender = sender
        self.retry = retry or RetryConfig()
        self.batch_size = batch_size
        self.keep_days = keep_days
        self.on_result = on_result
        self._wake = threading.Event()
        self._stop_event = threading.Event()
        self._failures = 0
        self._next_try = 0.0
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            wait = self._next_try - time.monotonic()
            if wait > 0:
                self._wake.wait(min(wait, 1.0))
                self._wake.clear()
                continue
            items = self.spool.outgoing_items(self.sender.name)
            if self.lanes > 1:
                items = [p for p in items if zlib.crc32(p.name.encode()) % self.lanes == self.lane]
            if not items:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._deliver(items[: self.batch_size])
            except Exception:
                log.exception("forwarding to %s failed", self.sender.name)
                self._back_off("internal error")

    def _deliver(self, batch: list[Path]) -> None:
        sizes = [self._size(path) for path in batch]
        started = time.perf_counter()
        results = self.sender.send(batch)
        each = (time.perf_counter() - started) / max(1, len(batch))
        retried = None
        for path, result, size in zip(batch, results, sizes, strict=True):
            if result.status == "delivered":
                self.spool.delivered(path, self.sender.name, self.keep_days)
            elif result.status == "rejected":
                log.warning(
                    "%s refused %s for good: %s", self.sender.name, path.name, result.reason
                )
                self.spool.to_dead_letter(path, self.sender.name, {"reason": result.reason})
            else:
                retried = result.reason
                if self._age(path) > self.retry.dead_letter_after_s:
                    reason = f"not delivered within {self.retry.dead_letter_after_s:.0f} s: {result.reason}"
                    self.spool.to_dead_letter(path, self.sender.name, {"reason": reason})
                    result = Result("rejected", reason)
            self.on_result(self.sender.name, path, result, each, size)
        if retried is not None:
            self._back_off(retried)
        else:
            self._failures = 0
            self._next_try = 0.0
            self.last_error = None

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    @staticmethod
    def _age(path: Path) -> float:
        try:
            return time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _back_off(self, reason: str) -> None:
        self._failures += 1
        delay = min(self.retry.max_delay_s, self.retry.initial_delay_s * 2 ** (self._failures - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: many nodes do not retry in lockstep
        self._next_try = time.monotonic() + delay
        if reason != self.last_error or self._failures in (1, 5, 20):
            log.warning(
                "%s: %s; retry %d in %.1f s", self.sender.name, reason, self._failures, delay
            )
        self.last_error = reason
