"""Quarantine housekeeping: what is held, why, what to do about it, and how long it stays.

``spool/quarantine/<reason>/`` holds originals (full of PHI) with a JSON sidecar saying the
stage and the reason; ``spool/dead-letter/<destination>/`` holds clean objects a destination
never took, with an ``outcome``. :data:`REASONS` is the one table of every such reason, with
a sentence an administrator understands and what to do; the README's table is generated from
it (:func:`reasons_markdown`), and a test checks that every reason the code can give is in it.

Everything here reads, except :func:`expire`, which deletes quarantined originals older than
``quarantine.keep_days`` and writes one ``quarantine-expired`` audit line for each. What is
shown of an original is never identifying: its SOP class and transfer syntax by their
registered names, its Modality, the calling AE title and the times of the spool item; never a
name, ID, date or UID of the instance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from dicomnode.spool import CLEAN_SUFFIX, SUFFIX, Spool, calling_ae_of, clean_copy_of

__all__ = [
    "REASONS",
    "Kind",
    "Quarantined",
    "Reason",
    "expire",
    "find",
    "header_summary",
    "items",
    "reasons_markdown",
]

log = logging.getLogger(__name__)

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # the spool's sidecar times


class Kind(StrEnum):
    """Where an item with this reason is."""

    QUARANTINE = "quarantine"  # spool/quarantine/<reason>/: the original, PHI
    DEAD_LETTER = "dead-letter"  # spool/dead-letter/<destination>/ (sidecar ``outcome``)
    OFFLINE = "offline"  # `dicomnode scrub` only: listed in its summary


@dataclass(frozen=True)
class Reason:
    name: str
    kind: Kind
    meaning: str
    action: str


_RETRY = "then `dicomnode retry --quarantine {name}`"

REASONS: dict[str, Reason] = {
    r.name: r
    for r in (
        Reason(
            "unreadable",
            Kind.QUARANTINE,
            "The received file is not DICOM that can be parsed (malformed, or not DICOM at all).",
            "Ask the sender to send it again; if it comes back the same, the sender's export is "
            "broken: report it to its vendor.",
        ),
        Reason(
            "truncated",
            Kind.QUARANTINE,
            "The instance ends before its data does: the transfer was cut or the file damaged.",
            "Resend it from the source.",
        ),
        Reason(
            "not-an-instance",
            Kind.QUARANTINE,
            "The object has no SOP Class or SOP Instance UID: it is not an image or document.",
            "Check what the sender sends; such objects are not for the research PACS.",
        ),
        Reason(
            "unsupported",
            Kind.QUARANTINE,
            "A valid DICOM object that dicomnode does not de-identify (a DICOMDIR, or a "
            "transfer syntax it cannot write).",
            "Stop sending it, or de-identify it by hand.",
        ),
        Reason(
            "byte-order",
            Kind.QUARANTINE,
            "The data set mixes little- and big-endian elements and cannot be written back "
            "without conversion.",
            "Ask the sender for Explicit or Implicit VR Little Endian.",
        ),
        Reason(
            "unknown-sop-class",
            Kind.QUARANTINE,
            "The SOP Class UID is not a registered DICOM class (private or malformed), so its "
            "content cannot be cleaned with certainty.",
            "Ask the sender for a standard object, or de-identify it by hand.",
        ),
        Reason(
            "vr-mismatch",
            Kind.QUARANTINE,
            "An attribute arrived with a VR that cannot hold what the DICOM dictionary says it "
            "holds (a sequence in a text attribute, text in a binary one).",
            "Ask the sender's vendor to fix the VR; the detail names the attribute's tag.",
        ),
        Reason(
            "too-deep",
            Kind.QUARANTINE,
            "Sequences are nested deeper than scrub.max_depth (64); no real object needs that.",
            "Ask the vendor; raise scrub.max_depth only for a genuine object, "
            + _RETRY.format(name="too-deep")
            + ".",
        ),
        Reason(
            "too-large",
            Kind.QUARANTINE,
            "The instance, its inflated data set or its decoded pixel data is larger than the "
            "limits (node.max_instance_mb, pixels.max_decoded_mb, pixels.max_frame_mb), or a "
            "worker ran out of memory on it.",
            "If it is genuine, raise the setting the detail names (and "
            "pipeline.worker_memory_mb with it), " + _RETRY.format(name="too-large") + ".",
        ),
        Reason(
            "pixel-decode-failed",
            Kind.QUARANTINE,
            "The pixel data cannot be decoded, or a frame's own header contradicts the DICOM "
            "header (rows, columns, bits).",
            "Resend it from the source; if it repeats, report it to the sender's vendor.",
        ),
        Reason(
            "text-remains",
            Kind.QUARANTINE,
            "Burned-in text was still found in the pixels after removal and a second fill.",
            "Look at the image; add a known region for the device to the pixel policy or change "
            "pixels.remover, " + _RETRY.format(name="text-remains") + ".",
        ),
        Reason(
            "pixel-stage-failed",
            Kind.QUARANTINE,
            "The text detector, the remover or the pixel encoder failed on this instance.",
            "See the log for the stage and the error type; fix the model or library, "
            + _RETRY.format(name="pixel-stage-failed")
            + ".",
        ),
        Reason(
            "unmapped-patient",
            Kind.QUARANTINE,
            "The patient is not in the study's lookup table (scrub.lookup, unmapped: quarantine).",
            "Add the patient to the table, reload the node (SIGHUP), "
            + _RETRY.format(name="unmapped-patient")
            + ".",
        ),
        Reason(
            "crosswalk-failed",
            Kind.QUARANTINE,
            "The re-identification record could not be appended to the crosswalk file, so the "
            "instance is held back.",
            "Check free disk and that the node's user may write scrub.crosswalk.path, "
            + _RETRY.format(name="crosswalk-failed")
            + ".",
        ),
        Reason(
            "scrub-failed",
            Kind.QUARANTINE,
            "A de-identification rule could not be applied to a value.",
            "Read the detail; fix the site rule it names, "
            + _RETRY.format(name="scrub-failed")
            + ".",
        ),
        Reason(
            "instance-error",
            Kind.QUARANTINE,
            "The instance could not be cleaned with certainty, for a reason without a name of "
            "its own.",
            "Read the detail and the log; report it as a bug if it is not clear.",
        ),
        Reason(
            "internal-error",
            Kind.QUARANTINE,
            "A stage failed unexpectedly (a bug); the log has the error type and where.",
            "Report it with the log lines; once a fixed version is installed, `dicomnode retry "
            "--quarantine internal-error`.",
        ),
        Reason(
            "worker-crashed",
            Kind.QUARANTINE,
            "The instance killed its worker process three times.",
            "Report it with the log lines; a larger pipeline.worker_memory_mb may help; "
            + _RETRY.format(name="worker-crashed")
            + ".",
        ),
        Reason(
            "too-slow",
            Kind.QUARANTINE,
            "The instance was still in a worker's stages after pipeline.max_item_s; the worker "
            "was stopped and restarted (a decoder that never returned, or very many distinct "
            "frames to clean).",
            "If it is real data (a long loop), raise pipeline.max_item_s, reload the node, "
            + _RETRY.format(name="too-slow")
            + "; otherwise report it with the log lines.",
        ),
        Reason(
            "no-project",
            Kind.QUARANTINE,
            "No project of the configuration takes the instance (its project could not be "
            "decided at receive time, or is no longer configured).",
            "Add or fix the project that should take it (called AE, calling AE or condition), "
            "reload the node, " + _RETRY.format(name="no-project") + ".",
        ),
        Reason(
            "rejected",
            Kind.DEAD_LETTER,
            "The destination refused the object for good (0xA9xx/0xCxxx, no presentation context "
            "for its SOP class or transfer syntax, or a path a folder cannot hold).",
            "Fix the destination (its accepted SOP classes and transfer syntaxes), then "
            "`dicomnode retry --dead-letter DEST`.",
        ),
        Reason(
            "failed",
            Kind.DEAD_LETTER,
            "The destination failed on this object retry.item_attempts times (no answer, an "
            "abort during its transfer) while it took others.",
            "Look at the destination's log for this object, then `dicomnode retry --dead-letter "
            "DEST`.",
        ),
        Reason(
            "expired",
            Kind.DEAD_LETTER,
            "The destination did not take the object within retry.dead_letter_after_s.",
            "Bring the destination back, then `dicomnode retry --dead-letter DEST`.",
        ),
        Reason(
            "io-error",
            Kind.OFFLINE,
            "`dicomnode scrub` could not read an input or write its output.",
            "Check the path, permissions and free disk, then run the command again.",
        ),
    )
}

_UNKNOWN = Reason(
    "?",
    Kind.QUARANTINE,
    "Not a reason dicomnode gives by itself: a filter rule of the configuration set it (or "
    "another version of dicomnode wrote it).",
    "Read the filter rule with that reason and the detail; retry once the rule or the sender "
    "is fixed.",
)


def describe(reason: str) -> Reason:
    """The table's entry for ``reason`` (a generic one for a reason it does not know)."""
    return REASONS.get(reason, _UNKNOWN)


def reasons_markdown() -> str:
    """The README's table of reasons (generated from :data:`REASONS`)."""
    lines = ["| reason | where | what it means | what to do |", "|---|---|---|---|"]
    for reason in REASONS.values():
        lines.append(
            f"| `{reason.name}` | {reason.kind.value} | {reason.meaning} | {reason.action} |"
        )
    return "\n".join(lines) + "\n"


# -- what is in quarantine ---------------------------------------------------------------------


@dataclass(frozen=True)
class Quarantined:
    """One quarantined original and what its sidecar says (no value of the instance)."""

    id: str
    reason: str
    path: Path
    stage: str | None
    detail: str | None
    quarantined_at: float | None
    received_at: float | None
    calling_ae: str
    size: int

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    def age_s(self, now: float | None = None) -> float | None:
        """Seconds since it was quarantined (its file's time when the sidecar has none)."""
        since = self.quarantined_at
        if since is None:
            return None
        return (time.time() if now is None else now) - since

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "stage": self.stage,
            "detail": self.detail,
            "calling_ae": self.calling_ae,
            "received": _iso(self.received_at),
            "quarantined": _iso(self.quarantined_at),
            "age_s": self.age_s(now),
            "size": self.size,
        }


def _iso(when: float | None) -> str | None:
    return None if when is None else time.strftime(_TIME_FORMAT, time.localtime(when))


def _received(item_id: str) -> float | None:
    """The receive time a spool id starts with (nanoseconds), if it does."""
    head = item_id.split("_", 1)[0]
    return int(head) / 1e9 if head.isdecimal() and len(head) >= 19 else None


def _load(path: Path, folder_reason: str) -> Quarantined | None:
    try:
        size = path.stat().st_size
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None  # retried or expired meanwhile
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(path.with_suffix(".json").read_bytes())
        info = loaded if isinstance(loaded, dict) else {}
    when: float | None = None
    with contextlib.suppress(TypeError, ValueError):
        when = datetime.strptime(str(info.get("time")), _TIME_FORMAT).timestamp()
    if when is None:
        with contextlib.suppress(OSError):
            when = path.with_suffix(".json").stat().st_mtime
    item_id = path.name[: -len(SUFFIX)]
    return Quarantined(
        id=item_id,
        reason=str(info.get("reason") or folder_reason),
        path=path,
        stage=str(info["stage"]) if info.get("stage") else None,
        detail=str(info["message"]) if info.get("message") else None,
        quarantined_at=when if when is not None else mtime,
        received_at=_received(item_id),
        calling_ae=calling_ae_of(item_id),
        size=size,
    )


def _folders(spool_root: Path) -> list[Path]:
    try:
        return sorted(p for p in Spool(spool_root).quarantine.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def _iter(spool_root: Path, reason: str | None = None) -> Iterator[Quarantined]:
    for folder in _folders(spool_root):
        if reason is not None and folder.name != reason:
            continue
        for path in sorted(folder.glob("*" + SUFFIX)):
            if path.name.endswith(CLEAN_SUFFIX):
                continue  # the cleaned copy beside a text-remains original, not an item
            item = _load(path, folder.name)
            if item is not None:
                yield item


def items(spool_root: Path, reason: str | None = None) -> list[Quarantined]:
    """Quarantined originals (of one reason), oldest arrival first."""
    return sorted(_iter(spool_root, reason), key=lambda q: q.id)


def find(spool_root: Path, item_id: str) -> Quarantined | None:
    """The quarantined original with this spool id (or a unique prefix of it), or None."""
    item_id = item_id.strip().removesuffix(SUFFIX)
    exact = [q for q in _iter(spool_root) if q.id == item_id]
    if exact:
        return exact[0]
    partial = [q for q in _iter(spool_root) if q.id.startswith(item_id)] if item_id else []
    return partial[0] if len(partial) == 1 else None


# -- the header, without anything identifying ------------------------------------------------

_MODALITY = re.compile(r"[A-Z0-9_ ]{1,16}")
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _registered(uid: Any, kind: str) -> str:
    from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

    text = str(uid or "").strip()
    if not text:
        return "(none)"
    entry = UID_dictionary.get(text)
    if entry is None or entry[1] != kind:
        return f"(not a registered {kind}; not shown)"
    return str(entry[0])


def header_summary(path: Path) -> dict[str, str]:
    """SOP class, transfer syntax and Modality of a quarantined original.

    Only the file meta and the data set up to the pixel data are read (``stop_before_pixels``);
    a deflated data set is not inflated here (it may be a bomb). UIDs are shown only as the
    names of registered classes and syntaxes; a Modality that is not a valid code is withheld.
    """
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    summary = {"sop_class": "(not read)", "transfer_syntax": "(not read)", "modality": "(not read)"}
    try:
        with open(path, "rb") as fp:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
            syntax = meta.get("TransferSyntaxUID")
            summary["transfer_syntax"] = _registered(syntax, "Transfer Syntax")
            if syntax == _DEFLATED:
                summary["sop_class"] = _registered(meta.get("MediaStorageSOPClassUID"), "SOP Class")
                summary["modality"] = "(deflated data set: not inflated here)"
                return summary
            fp.seek(0)
            with warnings.catch_warnings():  # pydicom's warnings quote the values
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(
                    fp,
                    stop_before_pixels=True,
                    specific_tags=["SOPClassUID", "Modality"],
                    defer_size=4096,
                )
                sop_class, modality = ds.get("SOPClassUID"), ds.get("Modality")
    except Exception as exc:  # what made it unreadable for the node makes it unreadable here
        summary["sop_class"] = summary["modality"] = f"(cannot be read: {type(exc).__name__})"
        return summary
    summary["sop_class"] = _registered(sop_class, "SOP Class")
    modality = str(modality or "").strip()
    if not modality:
        summary["modality"] = "(none)"
    else:
        summary["modality"] = (
            modality if _MODALITY.fullmatch(modality) else "(not a valid Modality; not shown)"
        )
    return summary


# -- retention ----------------------------------------------------------------------------------


class _Audit(Protocol):
    def write(self, event: str, **fields: Any) -> None: ...


def expire(
    spool_root: Path, keep_days: float, audit: _Audit | None, *, now: float | None = None
) -> int:
    """Delete quarantined originals (and their sidecars) quarantined more than ``keep_days``
    ago; ``keep_days`` 0 keeps everything. Returns how many were deleted.

    Each deletion is audited first (``quarantine-expired``: spool id, reason, age in days),
    then the original goes, then its cleaned copy (text-remains) and its sidecar: a crash in
    between leaves orphans, which the spool's recovery removes, or the original, deleted (and
    audited again) next time.
    """
    if keep_days <= 0:
        return 0
    now = time.time() if now is None else now
    limit = keep_days * 86400
    deleted = 0
    for item in list(_iter(spool_root)):
        age = item.age_s(now)
        if age is None or age <= limit:
            continue
        if audit is not None:
            audit.write(
                "quarantine-expired",
                id=item.id,
                reason=item.reason,
                age_days=round(age / 86400, 1),
            )
        try:
            item.path.unlink()
        except FileNotFoundError:
            continue  # retried meanwhile
        clean_copy_of(item.path).unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            item.sidecar.unlink()
        deleted += 1
    if deleted:
        log.info(
            "quarantine: deleted %d original(s) older than %g days (quarantine.keep_days)",
            deleted,
            keep_days,
        )
    return deleted
