"""The quarantine and dead-letter lists, from the spool's folders and sidecars.

A list view reads each folder's names (one ``scandir`` per folder) and parses only the
sidecars it has not seen (a sidecar is written once per quarantine; its time and size say
when it was written again): 10,000 items cost one directory pass and a stat each, not 10,000
JSON or DICOM reads. What only the header knows (modality, device, image size) is in
:class:`Summaries`, filled out of process (``inspect.summaries``) and kept per sidecar.

Items are addressed by spool id, checked against :data:`ID`; folder names (reason,
destination) against :data:`FOLDER`. Nothing else reaches a path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dicomnode.quarantine import Kind
from dicomnode.spool import SUFFIX, Spool, calling_ae_of, project_of

__all__ = [
    "AGES",
    "CLEAN_SUFFIX",
    "FOLDER",
    "ID",
    "Entry",
    "Filter",
    "Index",
    "Page",
    "Summaries",
]

ID = re.compile(r"[0-9]{19,20}_[A-Za-z0-9_-]{1,16}_[0-9a-f]{8}(?:~[a-z0-9][a-z0-9-]{0,31})?")
FOLDER = re.compile(r"[A-Za-z0-9_-]{1,64}")
CLEAN_SUFFIX = ".clean" + SUFFIX  # the pixel stage's cleaned copy of a text-remains item
PAGE_SIZE = 50
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

# Age filters: name -> (label, lower bound s, upper bound s)
AGES: dict[str, tuple[str, float | None, float | None]] = {
    "lt1h": ("less than an hour", None, 3600),
    "lt1d": ("less than a day", None, 86400),
    "gt1d": ("more than a day", 86400, None),
    "gt7d": ("more than a week", 7 * 86400, None),
    "gt30d": ("more than 30 days", 30 * 86400, None),
}


@dataclass(frozen=True)
class Entry:
    """One quarantined original or dead letter, as its sidecar describes it."""

    kind: Kind
    folder: str  # the reason (quarantine) or the destination (dead-letter)
    id: str
    reason: str  # quarantine: the reason; dead-letter: the outcome
    stage: str | None
    message: str | None
    at: float | None  # when it was quarantined or dead-lettered
    calling_ae: str
    project: str
    clean_copy: bool
    frames_total: int | None
    stamp: tuple[int, int]  # of the sidecar (or the file): a new one is a new quarantine

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind.value, self.folder, self.id)

    def age_s(self, now: float) -> float | None:
        return None if self.at is None else max(0.0, now - self.at)


@dataclass(frozen=True)
class Filter:
    reason: str = ""
    calling_ae: str = ""
    modality: str = ""
    age: str = ""
    order: str = "newest"
    page: int = 1

    @classmethod
    def of(cls, query: dict[str, str]) -> Filter:
        def text(name: str, pattern: str) -> str:
            value = query.get(name, "").strip()
            return value if re.fullmatch(pattern, value) else ""

        try:
            page = max(1, min(100000, int(query.get("page", "1"))))
        except ValueError:
            page = 1
        return cls(
            reason=text("reason", FOLDER.pattern),
            calling_ae=text("calling_ae", r"[A-Za-z0-9_ -]{1,16}"),
            modality=text("modality", r"[A-Z0-9]{1,16}"),
            age=query.get("age", "") if query.get("age", "") in AGES else "",
            order="oldest" if query.get("order") == "oldest" else "newest",
            page=page,
        )

    def query(self, **changes: Any) -> dict[str, str]:
        """The non-default fields as a query string's items (for links)."""
        values = {
            "reason": self.reason,
            "calling_ae": self.calling_ae,
            "modality": self.modality,
            "age": self.age,
            "order": "" if self.order == "newest" else self.order,
            "page": "" if self.page == 1 else str(self.page),
        }
        values.update({k: str(v) for k, v in changes.items()})
        return {k: v for k, v in values.items() if v and not (k == "page" and v == "1")}


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    total: int  # matching the filter
    pages: int
    page: int
    pending: int  # items whose modality is not known yet (modality filter only)
    reasons: dict[str, int]  # every folder of this kind and its count (unfiltered)
    modalities: list[str]  # the modalities known so far


def _sidecar_time(info: dict[str, Any]) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        return datetime.strptime(str(info.get("time")), _TIME_FORMAT).timestamp()
    return None


def _frames_total(info: dict[str, Any]) -> int | None:
    evidence = info.get("evidence")
    if isinstance(evidence, dict) and isinstance(evidence.get("frames_total"), int):
        return int(evidence["frames_total"])
    return None


class Summaries:
    """Header summaries (modality, device, image size, SOP class) per item, in memory.

    Filled by :meth:`Index.fill` out of process; a new sidecar (the item quarantined again)
    makes its summary unknown again.
    """

    LIMIT = 200_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str, str], tuple[tuple[int, int], dict[str, str]]] = {}

    def get(self, entry: Entry) -> dict[str, str] | None:
        with self._lock:
            found = self._known.get(entry.key)
        return found[1] if found is not None and found[0] == entry.stamp else None

    def put(self, entry: Entry, summary: dict[str, str]) -> None:
        with self._lock:
            if len(self._known) >= self.LIMIT:
                self._known.clear()  # rare; they are read again
            self._known[entry.key] = (entry.stamp, summary)

    def forget(self, keys: Iterable[tuple[str, str, str]]) -> None:
        with self._lock:
            for key in keys:
                self._known.pop(key, None)


class Index:
    """Everything in ``quarantine/`` and ``dead-letter/``, from names and sidecars."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.summaries = Summaries()
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], Entry] = {}

    def root(self, kind: Kind) -> Path:
        return self.spool.quarantine if kind is Kind.QUARANTINE else self.spool.dead_letter

    def path(self, entry: Entry) -> Path:
        return self.root(entry.kind) / entry.folder / (entry.id + SUFFIX)

    def clean_path(self, entry: Entry) -> Path | None:
        """The cleaned copy beside a quarantined original, if there is one."""
        if entry.kind is not Kind.QUARANTINE:
            return None
        path = self.root(entry.kind) / entry.folder / (entry.id + CLEAN_SUFFIX)
        return path if path.is_file() else None

    def folders(self, kind: Kind) -> list[str]:
        try:
            names = sorted(e.name for e in os.scandir(self.root(kind)) if e.is_dir())
        except FileNotFoundError:
            return []
        return [n for n in names if FOLDER.fullmatch(n)]

    def entries(self, kind: Kind, folder: str | None = None) -> list[Entry]:
        """Every item of ``kind`` (of one folder), oldest arrival first."""
        found: list[Entry] = []
        seen: set[tuple[str, str, str]] = set()
        folders = self.folders(kind) if folder is None else [folder]
        for name in folders:
            found.extend(self._scan(kind, name, seen))
        with self._lock:
            gone = [
                k
                for k in self._cache
                if k not in seen and k[0] == kind.value and (folder is None or k[1] == folder)
            ]
            for key in gone:
                del self._cache[key]
        self.summaries.forget(gone)
        found.sort(key=lambda e: e.id)
        return found

    def _scan(self, kind: Kind, folder: str, seen: set[tuple[str, str, str]]) -> list[Entry]:
        base = self.root(kind) / folder
        try:
            listing = {e.name: e for e in os.scandir(base)}
        except (FileNotFoundError, NotADirectoryError):
            return []
        result = []
        for name, dirent in listing.items():
            if not name.endswith(SUFFIX) or name.endswith(CLEAN_SUFFIX):
                continue
            item_id = name[: -len(SUFFIX)]
            if not ID.fullmatch(item_id):
                continue
            sidecar = listing.get(item_id + ".json")
            try:
                st = (sidecar or dirent).stat()
            except FileNotFoundError:
                continue  # moved meanwhile
            stamp = (st.st_mtime_ns, st.st_size)
            key = (kind.value, folder, item_id)
            seen.add(key)
            with self._lock:
                cached = self._cache.get(key)
            has_clean = (item_id + CLEAN_SUFFIX) in listing
            if cached is None or cached.stamp != stamp or cached.clean_copy != has_clean:
                info = self._read_sidecar(base / (item_id + ".json")) if sidecar else {}
                cached = self._entry(kind, folder, item_id, info, stamp, has_clean, st.st_mtime)
                with self._lock:
                    self._cache[key] = cached
            result.append(cached)
        return result

    @staticmethod
    def _read_sidecar(path: Path) -> dict[str, Any]:
        try:
            with path.open("rb") as fh:
                data = fh.read(4 * 1024 * 1024)
            loaded = json.loads(data)
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    @staticmethod
    def _entry(
        kind: Kind,
        folder: str,
        item_id: str,
        info: dict[str, Any],
        stamp: tuple[int, int],
        clean: bool,
        mtime: float,
    ) -> Entry:
        def text(key: str, limit: int = 2000) -> str | None:
            value = info.get(key)
            return str(value)[:limit] if value not in (None, "") else None

        at = _sidecar_time(info)
        if kind is Kind.QUARANTINE:
            reason = str(info.get("reason") or folder)[:64]
            message = text("message")
        else:
            reason = str(info.get("outcome") or "dead-letter")[:64]
            message = text("reason")
        return Entry(
            kind=kind,
            folder=folder,
            id=item_id,
            reason=reason,
            stage=text("stage", 64),
            message=message,
            at=at if at is not None else mtime,
            calling_ae=calling_ae_of(item_id),
            project=project_of(item_id),
            clean_copy=clean,
            frames_total=_frames_total(info),
            stamp=stamp,
        )

    def find(self, kind: Kind, item_id: str, folder: str | None = None) -> Entry | None:
        """The item with this id (in this folder, or any folder of ``kind``)."""
        if not ID.fullmatch(item_id) or (folder is not None and not FOLDER.fullmatch(folder)):
            return None
        folders = [folder] if folder is not None else self.folders(kind)
        for name in folders:
            base = self.root(kind) / name
            path = base / (item_id + SUFFIX)
            try:
                st_file = path.stat()
            except (FileNotFoundError, NotADirectoryError):
                continue
            sidecar = base / (item_id + ".json")
            try:
                st = sidecar.stat()
                info = self._read_sidecar(sidecar)
            except FileNotFoundError:
                st, info = st_file, {}
            clean = (base / (item_id + CLEAN_SUFFIX)).is_file()
            return self._entry(
                kind,
                name,
                item_id,
                info,
                (st.st_mtime_ns, st.st_size),
                clean,
                st_file.st_mtime,
            )
        return None

    def sidecar(self, entry: Entry) -> dict[str, Any]:
        return self._read_sidecar(self.root(entry.kind) / entry.folder / (entry.id + ".json"))

    def page(self, kind: Kind, filt: Filter, now: float | None = None) -> Page:
        """One page of the items matching ``filt``."""
        now = time.time() if now is None else now
        everything = self.entries(kind)
        reasons: dict[str, int] = {}
        for entry in everything:
            reasons[entry.folder] = reasons.get(entry.folder, 0) + 1
        chosen = everything
        if filt.reason:
            key = "folder" if kind is Kind.DEAD_LETTER else "reason"
            chosen = [
                e
                for e in chosen
                if getattr(e, key) == filt.reason
                or (kind is Kind.DEAD_LETTER and e.reason == filt.reason)
            ]
        if filt.calling_ae:
            wanted = filt.calling_ae.strip().upper()
            chosen = [e for e in chosen if e.calling_ae.upper() == wanted]
        if filt.age:
            _, low, high = AGES[filt.age]
            chosen = [
                e
                for e in chosen
                if (age := e.age_s(now)) is not None
                and (low is None or age >= low)
                and (high is None or age < high)
            ]
        pending = 0
        modalities: set[str] = set()
        if filt.modality:
            kept = []
            for entry in chosen:
                summary = self.summaries.get(entry)
                if summary is None:
                    pending += 1
                elif summary.get("modality") == filt.modality:
                    kept.append(entry)
            chosen = kept
        if filt.order == "newest":
            chosen = chosen[::-1]
        total = len(chosen)
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(filt.page, pages)
        shown = chosen[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        for entry in everything:
            summary = self.summaries.get(entry)
            if summary and summary.get("modality"):
                modalities.add(summary["modality"])
        return Page(shown, total, pages, page, pending, reasons, sorted(modalities))

    def unknown(self, kind: Kind | None = None, limit: int = 200) -> list[Entry]:
        """Items whose header summary is not known yet (newest first), up to ``limit``."""
        kinds = [kind] if kind is not None else [Kind.QUARANTINE, Kind.DEAD_LETTER]
        found: list[Entry] = []
        for each in kinds:
            for entry in reversed(self.entries(each)):
                if self.summaries.get(entry) is None:
                    found.append(entry)
                    if len(found) >= limit:
                        return found
        return found
