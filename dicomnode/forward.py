"""Delivery of clean objects from ``outgoing/<destination>/`` to each destination.

One thread per destination (lane) takes the oldest waiting objects in batches and hands them
to a sender: a ``folder`` sender writes a PatientID/Study/Series tree, a ``dicom`` sender sends
a batch over one association (C-STORE SCU, optionally over TLS), a ``dicomweb`` sender POSTs it
with STOW-RS (``dicomnode.stow``). Per object the sender answers with a :class:`Delivery`, and
the next step follows from it alone::

    DELIVERED    the destination has it                     -> removed (or kept in sent/)
    REJECTED     it can never be delivered there            -> dead-letter at once, with the
                 (refused 0xA9xx/0xCxxx..., no presentation    reason; the next objects flow
                 context, invalid for it, no valid path,
                 path too long, unreadable clean object)
    RETRY        the destination is unavailable             -> stays in its place, and the
                 (unreachable, association rejected or       whole destination backs off; but
                 lost, 0xA7xx, a TLS handshake refused,       if a later object of the batch
                 HTTP 401/403/5xx, disk full, root not        got in, it is set aside instead
                 writable)
    FAILED       the destination failed while taking this   -> set aside; dead-letter after
                 object (no answer, an abort mid-C-STORE,     ``retry.item_attempts`` of these
                 an unexplained error on its own path)

An object set aside has its own back-off and is sent last in a batch (if it breaks the
association again, the others are in already); its failures never back off the destination.
So one object the destination cannot take never holds back the others: it is refused for
good (dead-letter now), or set aside. An object still undelivered after
``retry.dead_letter_after_s`` goes to dead-letter as well.
``dicomnode retry --dead-letter`` gives dead letters back to the queue.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import random
import socket
import ssl
import stat
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
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
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT

from dicomnode import _tls
from dicomnode._net import set_nodelay
from dicomnode._scu import (
    direct_requests,
    responses_to_sender,
    unread_answer,
    unread_rejection,
    woken,
)
from dicomnode.batch import output_path
from dicomnode.config import (
    ClientTLSConfig,
    DicomDestination,
    DicomwebDestination,
    FolderDestination,
    RetryConfig,
)
from dicomnode.durable import Access, fsync_dir, make_dirs, write_temp
from dicomnode.spool import Spool

log = logging.getLogger(__name__)

__all__ = [
    "Delivery",
    "DicomSender",
    "FolderSender",
    "Forwarder",
    "Result",
    "classify_status",
    "echo",
    "sender_for",
]

# Send files as they are on disk, without decoding them, when the destination accepts their
# transfer syntax.
_config.STORE_SEND_CHUNKED_DATASET = True
# Never log identifiers, nor describe every PDU and message for pynetdicom's debug log (as
# dicomnode.ingest says).
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
_config.LOG_HANDLER_LEVEL = "none"

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128  # presentation contexts in one association (PS3.8: odd ids 1..255)


class Delivery(StrEnum):
    """What a destination did with one object (see the module docstring for what follows)."""

    DELIVERED = "delivered"
    REJECTED = "rejected"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class Result:
    """A :class:`Delivery` (its value is accepted too), with a reason an operator can act on;
    reasons name attributes, status codes and AE titles, never a value from the object."""

    status: Delivery
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Delivery(self.status))


DELIVERED = Result(Delivery.DELIVERED)


class Sender(Protocol):
    name: str

    def send(self, paths: list[Path]) -> list[Result]:
        """One Result per path, in order."""
        ...


# -- folder destination --------------------------------------------------------------------

# Failures that belong to one object's path: the value makes a name the file system refuses,
# or its place in the tree is taken by something else.
_ITEM_ERRNOS = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.EINVAL,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EILSEQ,
        errno.EFBIG,
        errno.ELOOP,
        errno.ENOTEMPTY,
    }
)
# Failures of the destination as a whole, whichever object is written.
_DESTINATION_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
        errno.ENOMEM,
        errno.ENFILE,
        errno.EMFILE,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.ENOTCONN,
        errno.EHOSTDOWN,
        errno.ENODEV,
        errno.ENXIO,
        errno.ENOENT,
    }
)
# A hard link is not possible here: copy instead.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})
_LEVELS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class _NoValidPath(Exception):
    """The object's identifiers make no valid path under the destination folder."""


class FolderSender:
    """Writes each object to ``<path>/<PatientID>/<Study>/<Series>/<SOP>.dcm`` durably.

    Temporary files live in ``<path>/.dicomnode-tmp/`` (emptied at start-up), so a reader of
    the tree never sees a partial file, even after a crash. Files and folders get the
    destination's ``mode`` (private by default) and ``group``, whatever the umask.
    """

    STAGING = ".dicomnode-tmp"

    def __init__(self, config: FolderDestination) -> None:
        self.name = config.name
        self.root = config.path
        self.staging = self.root / self.STAGING
        self.file_mode = config.mode.file_mode
        self.dir_mode = config.mode.dir_mode
        self.gid = grp.getgrnam(config.group).gr_gid if config.group else None
        # Hard links share the spool file's inode (and mode): only when that is what we want.
        self._may_link = config.mode is Access.PRIVATE and self.gid is None
        try:
            self.name_max = os.pathconf(self.root, "PC_NAME_MAX")
            self.path_max = os.pathconf(self.root, "PC_PATH_MAX")
        except (OSError, ValueError):
            self.name_max, self.path_max = 255, 4096
        with contextlib.suppress(OSError):
            make_dirs(self.root, self.dir_mode, gid=self.gid)
            make_dirs(self.staging, 0o700)  # partial files: nobody else's business
            for stale in self.staging.iterdir():
                stale.unlink()

    def send(self, paths: list[Path]) -> list[Result]:
        results = []
        for path in paths:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_LEVELS))
                target = self._target(ds)
            except _NoValidPath as exc:
                results.append(Result(Delivery.REJECTED, f"no valid path: {exc}"))
                continue
            except Exception as exc:
                results.append(
                    Result(Delivery.REJECTED, f"unreadable clean object: {type(exc).__name__}")
                )
                continue
            try:
                self._place(path, target)
            except OSError as exc:
                results.append(self._classify(exc))
                continue
            results.append(DELIVERED)
        return results

    def _target(self, ds: Any) -> Path:
        """The object's path, checked before anything is written: four levels, no ``..``, not
        the staging folder, names and path within the file system's limits."""
        target = output_path(self.root, ds)
        parts = target.relative_to(self.root).parts
        if len(parts) != len(_LEVELS):
            raise _NoValidPath(f"one of {', '.join(_LEVELS)} is '.' or contains '/'")
        for level, part in zip(_LEVELS, parts, strict=True):
            if part in ("..", self.STAGING):
                raise _NoValidPath(f"{level} makes the reserved name {part!r}")
            size = len(os.fsencode(part))
            if size > self.name_max:
                raise _NoValidPath(
                    f"{level} makes a {size}-byte file name; the destination's file system "
                    f"allows {self.name_max} (ENAMETOOLONG)"
                )
        size = len(os.fsencode(str(target)))
        if size >= self.path_max:
            raise _NoValidPath(
                f"the path would be {size} bytes; the file system allows {self.path_max - 1} "
                "(ENAMETOOLONG)"
            )
        return target

    def _classify(self, exc: OSError) -> Result:
        """One object's write failed: was it the object's path, or the destination?"""
        what = errno.errorcode.get(exc.errno or 0, "error")
        if not self._root_usable():
            return Result(
                Delivery.RETRY, f"the folder {self.root} is not usable: {exc.strerror} ({what})"
            )
        if exc.errno in _DESTINATION_ERRNOS:
            return Result(Delivery.RETRY, f"cannot write to {self.root}: {exc.strerror} ({what})")
        if exc.errno in _ITEM_ERRNOS:
            return Result(Delivery.REJECTED, f"no valid path: {exc.strerror} ({what})")
        return Result(Delivery.FAILED, f"cannot write this object: {exc.strerror} ({what})")

    def _root_usable(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)

    def _place(self, source: Path, target: Path) -> None:
        """Hard-link when the destination is on the spool's file system (no copy, and the
        data is already durable), else copy through the staging folder."""
        make_dirs(target.parent, self.dir_mode, gid=self.gid)
        if self._may_link and stat.S_IMODE(os.stat(source).st_mode) == self.file_mode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)  # a redelivery: same object
            try:
                os.link(source, target)
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
            else:
                fsync_dir(target.parent)
                return
        make_dirs(self.staging, 0o700)
        tmp = write_temp(self.staging, source.read_bytes(), mode=self.file_mode)
        try:
            if self.gid is not None:
                os.chown(tmp, -1, self.gid)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(target.parent)


# -- DICOM destination ---------------------------------------------------------------------


def classify_status(code: int) -> Delivery:
    """A C-STORE response status (PS3.4 B.2.3, PS3.7 C.4.2) as a :class:`Delivery`.

    Success, the warnings (0xB000 coercion, 0xB006 elements discarded, 0xB007 does not
    match the SOP class) and 0x0111 (has this instance already) are delivered. 0xA7xx (out of
    resources), 0x0213 (resource limitation) and 0x0124 (not authorised: the destination
    refuses this node, not this object) say the destination cannot take anything now.
    0x0110 (processing failure) may be the object or the peer: failed. Every other failure
    (0xA9xx does not match its SOP class, 0xCxxx cannot understand, 0x0122 SOP class not
    supported, 0x0117 invalid instance...) refuses this object for good.
    """
    if code == 0x0000 or code == 0x0111 or 0xB000 <= code <= 0xBFFF:
        return Delivery.DELIVERED
    if 0xA700 <= code <= 0xA7FF or code in (0x0213, 0x0124):
        return Delivery.RETRY
    if code in (0x0110, 0xFF00, 0xFF01, 0xFE00):  # processing failure; pending/cancel: odd
        return Delivery.FAILED
    return Delivery.REJECTED


@dataclass(frozen=True)
class _Meta:
    sop_class: str
    syntax: str

    def contexts(self) -> set[tuple[str, str]]:
        """(SOP class, syntax) pairs this object adds; the uncompressed fallbacks are one
        context per SOP class, counted apart."""
        # Deflate is sent inflated: receivers' support for it is patchy (dcmtk's storescp
        # aborts on some deflated streams) and it is only a wire compression.
        if self.syntax == DeflatedExplicitVRLittleEndian:
            return set()
        return {(self.sop_class, self.syntax)}


class _DicomTLS:
    """A destination's TLS settings made into ``AE.associate``'s ``tls_args``, once; a handshake
    that fails is tried again by :func:`_tls.probe` to say which setting is wrong."""

    def __init__(self, tls: ClientTLSConfig | None, host: str, port: int) -> None:
        self.tls = tls
        self.host = host
        self.port = port
        self.server_name = (tls.server_name if tls else None) or host
        self._context: ssl.SSLContext | None = None
        if tls is not None and not tls.verify:
            log.warning(
                "TLS to %s:%d does not check the server's certificate (tls.verify: false)",
                host,
                port,
            )

    def args(self) -> tuple[ssl.SSLContext, str] | None:
        """``tls_args``, or None for plain TCP; raises ``ssl.SSLError``/``OSError`` when the
        files cannot be loaded any more."""
        if self.tls is None:
            return None
        if self._context is None:
            self._context = _tls.client_context(self.tls)
        return self._context, self.server_name

    def why_not(self, timeout: float) -> str | None:
        """Why the association could not be made, when TLS is the reason."""
        if self._context is None:
            return None
        return _tls.probe(self._context, self.host, self.port, self.server_name, timeout)


@dataclass
class _Held:
    """An association kept open after a batch: what it proposed, and when it was last used."""

    assoc: Any
    pairs: frozenset[tuple[str, str]]  # (SOP class, transfer syntax) proposed
    classes: frozenset[str]  # SOP classes proposed with the uncompressed syntaxes too
    used: float  # time.monotonic()


class DicomSender:
    """C-STORE SCU: a batch over one association (more when it needs more than 128
    presentation contexts), the object's own transfer syntax first; DICOM over TLS when the
    destination has ``tls``.

    With ``hold`` (a forwarder's sender, which calls :meth:`release_idle`), the association
    is kept open for ``keep_open_s`` after a batch: while a study streams in, batches are one
    or two objects, and an association per batch cost the node and the destination more than
    the objects did. The next batch uses it when it proposed every context the batch needs;
    if the destination closed it meanwhile, the batch goes over a new one. Without ``hold``
    each batch's association is released at its end.
    """

    def __init__(self, config: DicomDestination, calling_ae: str, *, hold: bool = False) -> None:
        self.name = config.name
        self.config = config
        self.calling_ae = config.calling_ae_title or calling_ae
        self.tls = _DicomTLS(config.tls, config.host, config.port)
        self.hold = hold and config.keep_open_s > 0
        self._held: _Held | None = None

    def release_idle(self) -> None:
        """Release the held association once it has been idle ``keep_open_s``."""
        held = self._held
        if held is not None and time.monotonic() - held.used >= self.config.keep_open_s:
            self.close()

    def close(self) -> None:
        """Release the held association (the forwarder stops)."""
        held, self._held = self._held, None
        if held is None:
            return
        with contextlib.suppress(Exception):  # the peer may be gone: nothing to tell it
            if held.assoc.is_established:
                held.assoc.release()

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        timeout = self.config.timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.connection_timeout = min(timeout, 10)
        ae.maximum_pdu_size = 0
        return ae

    def send(self, paths: list[Path]) -> list[Result]:
        results: list[Result | None] = [None] * len(paths)
        metas: dict[int, _Meta] = {}
        for index, path in enumerate(paths):
            try:
                info = read_file_meta_info(path)
                meta = _Meta(str(info.MediaStorageSOPClassUID), str(info.TransferSyntaxUID))
            except Exception:
                results[index] = Result(
                    Delivery.REJECTED, "the clean object's file meta is unreadable"
                )
                continue
            if not meta.sop_class or not meta.syntax:
                results[index] = Result(
                    Delivery.REJECTED, "the clean object's file meta has no SOP class or syntax"
                )
                continue
            metas[index] = meta
        down: Result | None = None
        for group in _groups(metas):
            if down is None:
                down = self._send_group(paths, group, metas, results)
            if down is not None:  # the destination is unavailable: do not knock again
                for index in group:
                    results[index] = results[index] or down
        return [r or Result(Delivery.RETRY, "not sent") for r in results]

    def _send_group(
        self,
        paths: list[Path],
        group: list[int],
        metas: dict[int, _Meta],
        results: list[Result | None],
    ) -> Result | None:
        """Send some objects over one association (the held one when it fits); a Result for
        all of them when it could not be made, else None."""
        pairs = frozenset(c for i in group for c in metas[i].contexts())
        classes = frozenset(metas[i].sop_class for i in group)
        held = self._held
        if held is not None and not (
            pairs <= held.pairs and classes <= held.classes and held.assoc.is_established
        ):
            self.close()  # another mix of contexts, or the destination closed it
            held = None
        if held is not None:
            self._store_group(held.assoc, paths, group, metas, results)
            first = results[group[0]]
            done = first is not None and first.status in (Delivery.DELIVERED, Delivery.REJECTED)
            if done or held.assoc.is_established:
                self._keep(held)
                return None
            # Closed by the destination while it was idle (its own timeout), just as we
            # sent: the group goes again over a new association.
            self._held = None
            for index in group:
                results[index] = None
        assoc, problem = self._associate(pairs, classes)
        if assoc is None:
            return problem
        self._store_group(assoc, paths, group, metas, results)
        self._keep(_Held(assoc, pairs, classes, 0.0))
        return None

    def _keep(self, held: _Held) -> None:
        """Hold the association for the next batch, or release it (``keep_open_s`` 0)."""
        if not held.assoc.is_established:
            self._held = None
            return
        held.used = time.monotonic()
        self._held = held
        if not self.hold:
            self.close()

    def _associate(
        self, pairs: frozenset[tuple[str, str]], classes: frozenset[str]
    ) -> tuple[Any, Result | None]:
        """A new association proposing ``pairs`` and each class in the uncompressed
        syntaxes; (None, why) when it cannot be made."""
        ae = self._ae()
        for sop_class, syntax in sorted(pairs):
            ae.add_requested_context(sop_class, [syntax])
        for sop_class in sorted(classes):
            ae.add_requested_context(sop_class, list(UNCOMPRESSED))
        config = self.config
        where = f"{config.ae_title} at {config.host}:{config.port}"
        try:
            tls_args = self.tls.args()
        except (ssl.SSLError, OSError) as exc:
            return None, Result(Delivery.RETRY, f"{where}: {_tls.load_error(exc)}")
        assoc = ae.associate(
            config.host,
            config.port,
            ae_title=config.ae_title,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, set_nodelay),
                (evt.EVT_CONN_OPEN, responses_to_sender),  # see dicomnode._scu
                (evt.EVT_CONN_OPEN, woken),  # see dicomnode._wakeup
                (evt.EVT_CONN_OPEN, direct_requests),  # see dicomnode._commands
            ],
            tls_args=tls_args,
        )
        if assoc.is_established:
            return assoc, None
        if assoc.is_rejected or unread_rejection(assoc) is not None:
            return None, Result(Delivery.RETRY, f"{where} rejected the association")
        tls_problem = self.tls.why_not(min(config.timeout_s, 10))
        if tls_problem:
            return None, Result(Delivery.RETRY, f"{where}: {tls_problem}")
        why = "could not be reached, or aborted the association"
        return None, Result(Delivery.RETRY, f"{where} {why}")

    def _store_group(
        self,
        assoc: Any,
        paths: list[Path],
        group: list[int],
        metas: dict[int, _Meta],
        results: list[Result | None],
    ) -> None:
        """Each object of ``group`` over ``assoc``; on an unexpected error the association
        is aborted (never held, never left open) and the error goes to the forwarder."""
        try:
            for index in group:
                if not assoc.is_established:
                    results[index] = Result(Delivery.RETRY, "association lost")
                    continue
                meta = metas[index]
                results[index] = self._store(assoc, paths[index], meta.sop_class, meta.syntax)
        except BaseException:
            if self._held is not None and self._held.assoc is assoc:
                self._held = None
            with contextlib.suppress(Exception):
                assoc.abort()
            raise

    def _store(self, assoc: Any, path: Path, sop_class: str, syntax: str) -> Result:
        ae_title = self.config.ae_title
        accepted = {
            cx.transfer_syntax[0]
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class
        }
        fallback = next((ts for ts in UNCOMPRESSED if ts in accepted), None)
        try:
            if syntax in accepted:
                payload: Any = path  # sent as it is on disk
            elif syntax in (*UNCOMPRESSED, DeflatedExplicitVRLittleEndian) and fallback:
                # Uncompressed data can be re-encoded in the accepted syntax: decode every
                # element (raw sequences are in the old encoding), then let pynetdicom write it.
                payload = pydicom.dcmread(path)
                for _ in payload.iterall():
                    pass
                payload.file_meta.TransferSyntaxUID = fallback
                payload.set_original_encoding(fallback == ImplicitVRLittleEndian, True)
            else:
                return Result(
                    Delivery.REJECTED,
                    f"{ae_title} accepts no transfer syntax for SOP class {sop_class} "
                    f"that {syntax} can be sent in",
                )
        except Exception as exc:
            return Result(
                Delivery.REJECTED, f"cannot be re-encoded for {ae_title}: {type(exc).__name__}"
            )
        try:
            status = assoc.send_c_store(payload)
        except (AttributeError, ValueError) as exc:
            # pynetdicom checks the object before anything is sent: the association is intact.
            return Result(Delivery.REJECTED, f"invalid for {ae_title}: {type(exc).__name__}")
        except Exception as exc:
            # Maybe half sent: the association cannot be trusted with the next object.
            assoc.abort()
            return Result(
                Delivery.FAILED, f"sending failed ({type(exc).__name__}); association aborted"
            )
        if not status or "Status" not in status:
            # Aborted by the peer, or timed out: this association takes nothing more (a
            # second C-STORE on one that just died would wait out the DIMSE timeout too).
            with contextlib.suppress(Exception):
                assoc.abort()
            return Result(
                Delivery.FAILED,
                f"no response from {ae_title} to this C-STORE (timeout after "
                f"{self.config.timeout_s:g} s, or the association was aborted)",
            )
        code = int(status.Status)
        outcome = classify_status(code)
        if outcome is Delivery.DELIVERED:
            return DELIVERED
        if outcome is Delivery.RETRY:
            return Result(outcome, f"{ae_title} cannot take objects now (0x{code:04X})")
        if outcome is Delivery.FAILED:
            return Result(outcome, f"{ae_title} failed on this object (0x{code:04X})")
        return Result(outcome, f"{ae_title} refused the object (0x{code:04X})")


def _groups(metas: dict[int, _Meta]) -> list[list[int]]:
    """Objects in order, cut where one association's presentation contexts would run out."""
    groups: list[list[int]] = []
    current: list[int] = []
    pairs: set[tuple[str, str]] = set()
    classes: set[str] = set()
    for index, meta in sorted(metas.items()):
        more_pairs = pairs | meta.contexts()
        more_classes = classes | {meta.sop_class}
        if current and len(more_pairs) + len(more_classes) > MAX_CONTEXTS:
            groups.append(current)
            current, more_pairs, more_classes = [], meta.contexts(), {meta.sop_class}
        current.append(index)
        pairs, classes = more_pairs, more_classes
    if current:
        groups.append(current)
    return groups


def sender_for(
    destination: FolderDestination | DicomDestination | DicomwebDestination,
    calling_ae: str,
    *,
    hold: bool = False,
) -> Sender:
    """The sender for a destination; ``hold``: a ``dicom`` sender keeps its association
    open between batches (for a :class:`Forwarder`, which releases it when idle)."""
    if isinstance(destination, FolderDestination):
        return FolderSender(destination)
    if isinstance(destination, DicomwebDestination):
        from dicomnode.stow import DicomwebSender  # an HTTP client, only where it is used

        return DicomwebSender(destination)
    return DicomSender(destination, calling_ae, hold=hold)


# PS3.8 9.3.4, A-ASSOCIATE-RJ: (source, reason) -> what it means
_REJECTION_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


def echo(destination: DicomDestination, calling_ae: str, timeout: float = 5) -> str | None:
    """C-ECHO a destination (over TLS when it has ``tls``): None if it answered, else one
    sentence saying why not: rejected (permanent or transient, and the reason: calling or
    called AE title not recognised, local limit exceeded...), connection refused, no answer
    within ``timeout``, aborted, a TLS failure, or C-ECHO answered with a failure status."""
    calling = destination.calling_ae_title or calling_ae
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    tls = _DicomTLS(destination.tls, destination.host, destination.port)
    try:
        tls_args = tls.args()
    except (ssl.SSLError, OSError) as exc:
        return _tls.load_error(exc)
    seen: dict[str, Any] = {}
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, lambda event: seen.setdefault("open", True)),
        (evt.EVT_ACSE_RECV, lambda event: seen.setdefault("answer", event.primitive)),
        (evt.EVT_CONN_OPEN, responses_to_sender),
    ]
    started = time.monotonic()
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=tls_args,
        evt_handlers=handlers,
    )
    where = f"{destination.ae_title} at {destination.host}:{destination.port}"
    if not assoc.is_established:
        answer = seen.get("answer") or unread_answer(assoc)
        if isinstance(answer, A_ASSOCIATE) and answer.result in (0x01, 0x02):
            return _rejected(where, answer, calling, destination.ae_title)
        if not seen.get("open"):
            # a connection that took the whole timeout timed out: no second wait to say so
            waited = time.monotonic() - started >= 0.9 * timeout
            return _unreachable(destination.host, destination.port, timeout, tls, waited)
        tls_problem = tls.why_not(timeout)
        if tls_problem:
            return tls_problem
        if isinstance(answer, A_ASSOCIATE):  # accepted, but not for C-ECHO
            return f"{where} accepted the association but not the Verification SOP class"
        if isinstance(answer, A_ABORT):
            return f"{where} aborted the association request (A-ABORT)"
        if isinstance(answer, A_P_ABORT):
            return f"{where} closed the connection without answering the association request"
        return f"no answer from {where} to the association request within {timeout:g} s"
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in status:
        if assoc.is_aborted:
            return f"{where} aborted the association during C-ECHO"
        return f"no answer from {where} to C-ECHO within {timeout:g} s"
    if int(status.Status) != 0:
        return f"{where} answered C-ECHO with status 0x{int(status.Status):04X}"
    return None


def _rejected(where: str, answer: A_ASSOCIATE, calling: str, called: str) -> str:
    """The sentence for an A-ASSOCIATE-RJ."""
    kind = {1: "permanent", 2: "transient"}.get(int(answer.result or 0), "unknown kind")
    source, reason = int(answer.result_source or 0), int(answer.diagnostic or 0)
    meaning = _REJECTION_REASONS.get((source, reason), f"source {source}, reason {reason}")
    hint = {
        (1, 3): f": {calling} is not among the callers it accepts",
        (1, 7): f": it does not answer to {called}",
        (3, 2): ": all its association slots are busy, try again later",
    }.get((source, reason), "")
    return f"{where} rejected the association ({kind}): {meaning}{hint}"


def _unreachable(host: str, port: int, timeout: float, tls: _DicomTLS, waited: bool) -> str:
    """Why no connection could be made (``waited``: the attempt took the whole timeout);
    otherwise tried once more, plainly, to tell which."""
    no_answer = (
        f"no answer from {host}:{port} within {timeout:g} s (the host is down, or a "
        "firewall drops the connection)"
    )
    if waited:  # connecting (TLS handshake included) took it all
        return no_answer
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        return f"connection refused: nothing listens on {host}:{port}"
    except TimeoutError:
        return no_answer
    except socket.gaierror:
        return f"cannot resolve the host name {host!r}"
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or type(exc).__name__})"
    tls_problem = tls.why_not(timeout)
    if tls_problem:
        return tls_problem
    return f"could not connect to {host}:{port} (it accepts connections now: try again)"


# -- the forwarder -------------------------------------------------------------------------


@dataclass
class _Aside:
    """An object set aside: its FAILED count, how often it was held back (its back-off),
    and when it may go again."""

    failures: int = 0
    holds: int = 0
    next_try: float = 0.0


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
        self._aside: dict[str, _Aside] = {}
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()

    def run(self) -> None:
        try:
            self._run()
        finally:
            close = getattr(self.sender, "close", None)
            if close is not None:
                close()  # an HTTP sender's connections

    def _run(self) -> None:
        release_idle = getattr(self.sender, "release_idle", None)  # a held association
        while not self._stop_event.is_set():
            if release_idle is not None:
                release_idle()
            wait = self._next_try - time.monotonic()
            if wait > 0:
                self._wake.wait(min(wait, 1.0))
                self._wake.clear()
                continue
            items = self.spool.outgoing_items(self.sender.name)
            if self.lanes > 1:
                items = [p for p in items if zlib.crc32(p.name.encode()) % self.lanes == self.lane]
            batch = self._pick(items)
            if not batch:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._deliver(batch)
            except Exception:
                log.exception("forwarding to %s failed", self.sender.name)
                self._back_off("internal error")

    def _pick(self, items: list[Path]) -> list[Path]:
        """The oldest objects not set aside, then one set-aside object whose own back-off
        is over, last: if it breaks the association again, the others are in already."""
        names = {p.name for p in items}
        for name in [n for n in self._aside if n not in names]:
            del self._aside[name]  # requeued, or removed by hand
        now = time.monotonic()
        fresh = [p for p in items if p.name not in self._aside]
        ready = [p for p in items if p.name in self._aside and self._aside[p.name].next_try <= now]
        batch = fresh[: max(1, self.batch_size - 1) if ready else self.batch_size]
        return batch + ready[:1]

    def _send(self, batch: list[Path]) -> list[Result]:
        """The sender's results; if it raises (a bug that one object triggers), each object
        alone, so that the one it is about cannot stop the others."""
        try:
            results = self.sender.send(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} objects")
            return results
        except Exception as exc:
            if len(batch) == 1:
                log.exception("sending to %s failed", self.sender.name)
                return [Result(Delivery.FAILED, f"internal error: {type(exc).__name__}")]
        return [self._send([path])[0] for path in batch]

    def _deliver(self, batch: list[Path]) -> None:
        sizes = [self._size(path) for path in batch]
        started = time.perf_counter()
        results = self._send(batch)
        each = (time.perf_counter() - started) / max(1, len(batch))
        got_in = [i for i, r in enumerate(results) if r.status is Delivery.DELIVERED]
        last_in = got_in[-1] if got_in else -1
        unavailable: str | None = None
        for index, (path, result, size) in enumerate(zip(batch, results, sizes, strict=True)):
            status = result.status
            if status is Delivery.DELIVERED:
                self._aside.pop(path.name, None)
                self.on_result(self.sender.name, path, result, each, size)
                self.spool.delivered(path, self.sender.name, self.keep_days)
                continue
            if status is Delivery.REJECTED:
                log.warning(
                    "%s refused %s for good: %s", self.sender.name, path.name, result.reason
                )
                self._dead_letter(path, result.reason, "rejected", each, size)
                continue
            # RETRY or FAILED: the object stays, unless it is too old or failed too often.
            if self._age(path) > self.retry.dead_letter_after_s:
                reason = (
                    f"not delivered within {self.retry.dead_letter_after_s:.0f} s: {result.reason}"
                )
                self._dead_letter(path, reason, "expired", each, size)
                continue
            suspect = path.name in self._aside or status is Delivery.FAILED or index < last_in
            if not suspect:
                unavailable = result.reason  # nothing after it got in: the destination
            elif self._set_aside(path, status, result.reason):
                reason = (
                    f"{self.sender.name} failed {self.retry.item_attempts} times on this "
                    f"object: {result.reason}"
                )
                self._dead_letter(path, reason, "failed", each, size)
                continue
            self.on_result(self.sender.name, path, result, each, size)
        if unavailable is not None:
            self._back_off(unavailable)
        else:
            self._failures = 0
            self._next_try = 0.0
            self.last_error = None

    def _set_aside(self, path: Path, status: Delivery, reason: str) -> bool:
        """Hold this object back on its own schedule (a FAILED counts against it); True when
        it has FAILED ``retry.item_attempts`` times (then it goes to dead-letter)."""
        aside = self._aside.setdefault(path.name, _Aside())
        if status is Delivery.FAILED:
            aside.failures += 1
            if aside.failures >= self.retry.item_attempts:
                del self._aside[path.name]
                return True
        aside.holds += 1
        delay = min(self.retry.max_delay_s, self.retry.initial_delay_s * 2 ** (aside.holds - 1))
        aside.next_try = time.monotonic() + delay
        if aside.holds == 1 or status is Delivery.FAILED:
            log.warning(
                "%s: %s set aside (failed %d of %d): %s; it is sent last, on its own back-off",
                self.sender.name,
                path.name,
                aside.failures,
                self.retry.item_attempts,
                reason,
            )
        return False

    def _dead_letter(self, path: Path, reason: str, why: str, seconds: float, size: int) -> None:
        """Move to dead-letter; the sidecar's ``outcome`` says why in one word: ``rejected``
        (refused for good), ``failed`` (``retry.item_attempts`` failures) or ``expired``
        (not delivered within ``retry.dead_letter_after_s``). Audit first, then the move: a
        crash in between sends it again, never silently."""
        self._aside.pop(path.name, None)
        self.on_result(self.sender.name, path, Result(Delivery.REJECTED, reason), seconds, size)
        self.spool.to_dead_letter(path, self.sender.name, {"reason": reason, "outcome": why})

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
