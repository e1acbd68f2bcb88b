"""The spool: a directory queue whose state is the folder a file is in.

::

    spool/
      tmp/                    partial receives and temporary copies (emptied at start-up)
      incoming/               received and fsynced: acknowledged, waiting for the pipeline
      work/<worker>/          claimed by one pipeline worker
      outgoing/<destination>/ clean, waiting to be delivered to that destination
      sent/<destination>/     delivered, kept only when retention is configured
      quarantine/<reason>/    could not be cleaned with certainty; original + .json sidecar
                              (text-remains: + <id>.clean.dcm, the cleaned copy)
      dead-letter/<dest>/     clean, but the destination never took it; + .json sidecar
      journal/                the ``cleaned`` audit record of each clean object, until the
                              node has written it to the audit trail

Every write is a temp file in ``tmp/``, fsync, rename, fsync of the folder (a received
instance: rename, then fdatasync and the folder's fsync, see :meth:`Spool.accept`); every move
between states is a rename, so a crash leaves each file in exactly one state. At start-up
:meth:`Spool.recover` puts work that was half done back in ``incoming/`` (scrubbing is
deterministic, so doing it again gives the same clean object) and empties ``tmp/``.

A worker writes the audit record of a clean object to ``journal/`` before the object appears
in ``outgoing/`` and before its original is deleted; the node writes the audit line, then
deletes the record. So after a ``kill -9`` at any moment, every object that can have been
delivered has either its audit line or its record (which start-up turns into the line, once),
or its original still in ``work/`` (cleaned again, with a new record).

One node at a time: :meth:`Spool.lock` takes ``spool/.lock`` (``flock``) for the node's life and
writes its pid, host and command line there; a second node on the same spool refuses to start
and names the first. The CLI's other commands take no lock: ``status`` and ``quarantine list``
only read, and ``retry`` only renames files from ``quarantine/`` or ``dead-letter/`` into
``incoming/`` or ``outgoing/``, which a running node picks up at its next scan.

Everything is written with the spool's access (``spool.mode``): files 0600 and folders 0700
by default, whatever the umask; the root folder's mode says which, so the worker processes
and the CLI follow what the node set.

File names are ``<receive time ns>_<calling AE>_<random>.dcm``: sortable by arrival, and they
carry no PHI. When the configuration has projects, the project decided at receive time follows
a ``~``: ``<receive time ns>_<calling AE>_<random>~<project>.dcm`` (``~none``: no project
matched). The name is the item's one record of its project, so every later step (workers,
forwarders, audit, ``status``) reads the same decision, and a retry or a crash cannot change
it. The calling AE is cut to 16 letters, digits, ``_`` or ``-``; a project is a configured
slug: names stay bounded whatever a sender declares.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomnode.durable import Access, fsync_dir, make_dirs, set_dir_mode, write_atomic, write_temp
from dicomnode.errors import StartupError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROJECT",
    "NO_PROJECT",
    "Spool",
    "SpoolCounts",
    "SpoolLock",
    "calling_ae_of",
    "clean_copy_of",
    "new_id",
    "project_of",
    "safe_ae",
]

SUFFIX = ".dcm"
CLEAN_SUFFIX = ".clean.dcm"  # the cleaned copy kept beside a text-remains original
LOCK_NAME = ".lock"
_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_PROJECT = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_ITEM = re.compile(r"[A-Za-z0-9_-]{1,100}(~[a-z0-9][a-z0-9-]{0,31})?")  # a spool id
PROJECT_MARK = "~"
DEFAULT_PROJECT = "default"  # the one project of a configuration without projects
NO_PROJECT = "none"  # no project matched (quarantined as no-project)


def safe_ae(calling_ae: str) -> str:
    """A calling AE title as spool names record it: 1 to 16 letters, digits, ``_``, ``-``."""
    return _SAFE.sub("-", calling_ae.strip())[:16] or "local"


def new_id(calling_ae: str = "", project: str | None = None) -> str:
    """A new spool id: arrival-ordered, unique, safe as a file name, free of PHI.

    ``project`` None: no project recorded (a configuration without projects).
    """
    item_id = f"{time.time_ns():020d}_{safe_ae(calling_ae)}_{secrets.token_hex(4)}"
    if project is None:
        return item_id
    if not _PROJECT.fullmatch(project):
        raise ValueError("a project name is a slug of 1 to 32 a-z, 0-9 and '-'")
    return item_id + PROJECT_MARK + project


def calling_ae_of(item_id: str) -> str:
    """The calling AE title recorded in a spool id (sanitised)."""
    parts = item_id.partition(PROJECT_MARK)[0].split("_")
    return "_".join(parts[1:-1]) if len(parts) >= 3 else ""


def project_of(item_id: str) -> str:
    """The project recorded in a spool id; ``default`` when none is (no projects)."""
    _, mark, project = item_id.partition(PROJECT_MARK)
    return project if mark and _PROJECT.fullmatch(project) else DEFAULT_PROJECT


@dataclass(frozen=True)
class SpoolCounts:
    """How many items are in a state, and the age in seconds of the oldest."""

    count: int
    oldest_age_s: float | None


class Spool:
    """One node's spool folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.incoming = root / "incoming"
        self.work = root / "work"
        self.outgoing = root / "outgoing"
        self.sent = root / "sent"
        self.quarantine = root / "quarantine"
        self.dead_letter = root / "dead-letter"
        self.journal = root / "journal"
        self._access: Access | None = None

    @property
    def access(self) -> Access:
        """Who may read the spool: as its root folder says (set by :meth:`create`)."""
        if self._access is None:
            self._access = Access.of_folder(self.root)
        return self._access

    @property
    def file_mode(self) -> int:
        return self.access.file_mode

    @property
    def dir_mode(self) -> int:
        return self.access.dir_mode

    def _folder(self, path: Path) -> Path:
        make_dirs(path, self.dir_mode)
        return path

    def create(
        self, destinations: list[str] | tuple[str, ...] = (), *, access: Access | None = None
    ) -> Spool:
        """Make the spool's folders, and give every folder of it the spool's access.

        ``access`` None keeps the access of an existing spool (private for a new one). The
        folders of an existing spool are tightened too (spools made by older versions under
        umask 022 were 0755); files inside are reachable only through them.
        """
        if access is None:
            access = Access.of_folder(self.root) if self.root.is_dir() else Access.PRIVATE
        self._access = access
        make_dirs(self.root, self.dir_mode)
        set_dir_mode(self.root, self.dir_mode)
        for folder in (
            self.tmp,
            self.incoming,
            self.work,
            self.outgoing,
            self.sent,
            self.quarantine,
            self.dead_letter,
            self.journal,
        ):
            make_dirs(folder, self.dir_mode)
            set_dir_mode(folder, self.dir_mode)
        for name in destinations:
            make_dirs(self.outgoing / name, self.dir_mode)
        for parent in (self.work, self.outgoing, self.sent, self.quarantine, self.dead_letter):
            for folder in _dirs(parent):
                set_dir_mode(folder, self.dir_mode)
        return self

    def lock(self, access: Access | None = None) -> SpoolLock:
        """Take the spool for this process, or raise :class:`StartupError` naming the node
        that has it (two nodes on one spool would recover each other's work in hand).

        The lock is ``flock`` on ``.lock`` in the spool's root (made if need be, with
        ``access``), held until :meth:`SpoolLock.release` or the process ends, whatever way
        it ends: a ``kill -9`` leaves no stale lock. Worker processes do not inherit it.
        """
        access = access or self.access
        make_dirs(self.root, access.dir_mode)
        path = self.root / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, access.file_mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StartupError(
                f"spool {self.root} is in use by another dicomnode ({holder}); stop that node "
                "first, or give this one a spool of its own (spool.path, --spool)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        command = " ".join(sys.orig_argv)[:500]
        data = f"pid {os.getpid()}\nhost {socket.gethostname()}\ncommand {command}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, data.encode(errors="replace"), 0)
        return SpoolLock(fd, path)

    # -- ingest ----------------------------------------------------------------------------

    def free_bytes(self) -> int:
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def accept(self, received: Path, calling_ae: str, project: str | None = None) -> str:
        """Make a fully received file durable in ``incoming/``; returns its id.

        ``received`` must be on the spool's file system (in ``tmp/``): it is fsynced and
        renamed, never copied. Only after this returns may the sender be told "success".
        ``project``, decided at receive time, is recorded in the id (see the module).
        """
        item_id = new_id(calling_ae, project)
        target = self.incoming / (item_id + SUFFIX)
        fd = os.open(received, os.O_RDONLY)
        try:
            os.fchmod(fd, self.file_mode)  # an original: PHI
            # Rename first, then the data's fdatasync, then the folder's fsync. The folder's
            # fsync is not redundant: fdatasync waits only for the journal commit of the
            # file's last *data* change (ext4's i_datasync_tid), and with the write-out
            # started as the file grew (gate.py) that can be a commit from before the
            # rename; only the folder's fsync waits for the one that holds the new name
            # (measured here: +0.8 ms, a cache flush at least). Nothing is acknowledged
            # before both are durable.
            # A worker may claim the item in between (a rescan): the data's fdatasync holds
            # whatever its name, and the claim's rename is as durable as any other claim
            # (claims are never fsynced: the file systems we run on log renames in order).
            os.replace(received, target)
            try:
                os.fdatasync(fd)
                fsync_dir(self.incoming)
            except BaseException:
                # not durable, so not acknowledged: the sender keeps it and sends it again
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
                raise
        finally:
            os.close(fd)
        return item_id

    def write_incoming(self, data: bytes, calling_ae: str = "", project: str | None = None) -> str:
        """Put bytes in ``incoming/`` durably (tests, and instances received in memory)."""
        item_id = new_id(calling_ae, project)
        write_atomic(
            self.incoming / (item_id + SUFFIX), data, tmp_dir=self.tmp, mode=self.file_mode
        )
        return item_id

    # -- pipeline --------------------------------------------------------------------------

    def pending(self) -> list[str]:
        """Ids waiting in ``incoming/``, oldest first."""
        return sorted(_ids(self.incoming))

    def claim(self, item_id: str, worker: str) -> Path | None:
        """Move an incoming item to ``work/<worker>/``; None if another worker took it."""
        folder = self._folder(self.work / worker)
        target = folder / (item_id + SUFFIX)
        try:
            os.rename(self.incoming / (item_id + SUFFIX), target)
        except FileNotFoundError:
            return None
        return target

    def deliver(
        self,
        item_id: str,
        chunks: list[bytes | bytearray] | bytes,
        destinations: list[str],
        record: dict[str, Any] | None = None,
    ) -> None:
        """Write the clean object once (one fsync) and link it into each destination's
        ``outgoing/`` (one folder fsync each).

        ``record``, the object's ``cleaned`` audit record, goes to ``journal/`` first (one
        more fsync): once the object can be delivered, its audit line can no longer be lost.
        The journal's folder is not fsynced on its own: its rename is committed with the
        ``outgoing/`` folder's fsync below (the file systems we run on log metadata in
        order), and until then the original is still in ``work/`` and is cleaned again.
        """
        if record is not None:
            data = json.dumps({"time": _now(), **record, "id": item_id}, default=str).encode()
            journal = self._folder(self.journal)
            staged_record = write_temp(self.tmp, data, mode=self.file_mode)
            try:
                os.replace(staged_record, journal / (item_id + ".json"))
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staged_record)
                raise
        staged = write_temp(self.tmp, chunks, mode=self.file_mode)
        try:
            for name in destinations:
                folder = self.outgoing / name
                target = folder / (item_id + SUFFIX)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)  # a redo after a crash: same id, same content
                os.link(staged, target)
                fsync_dir(folder)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)

    def finish(self, work_file: Path) -> None:
        """The original is no longer needed once its clean copies are durable.

        No fsync: if a crash undoes the unlink, the original is cleaned again, giving the
        same clean object (delivered twice at worst; receivers keep one per SOP Instance).
        """
        os.unlink(work_file)

    def to_quarantine(
        self,
        work_file: Path,
        reason: str,
        info: dict[str, Any],
        clean: bytes | Sequence[bytes | bytearray] | None = None,
    ) -> Path:
        """Move an original to ``quarantine/<reason>/`` with a sidecar saying why (no PHI).

        ``clean``: the cleaned object the stages made (``text-remains``: every stage ran, and
        a person may judge what is left and release it), kept beside the original as
        ``<id>.clean.dcm`` and named in the sidecar (``clean_copy``). Written first, then the
        sidecar, then the original moves: a crash in between leaves the original in
        ``work/`` (cleaned again after the restart) and orphans that :meth:`recover` removes.
        """
        folder = self._folder(self.quarantine / _SAFE.sub("-", reason))
        item_id = work_file.stem
        sidecar = {"id": item_id, "reason": reason, "time": _now(), **info}
        copy = folder / (item_id + CLEAN_SUFFIX)
        if clean is not None:
            write_atomic(copy, clean, tmp_dir=self.tmp, mode=self.file_mode)
            sidecar["clean_copy"] = copy.name
        else:
            copy.unlink(missing_ok=True)  # a stale one, of an earlier quarantine of this id
        write_atomic(
            folder / (item_id + ".json"),
            json.dumps(sidecar, indent=1).encode(),
            tmp_dir=self.tmp,
            mode=self.file_mode,
        )
        target = folder / (item_id + SUFFIX)
        with contextlib.suppress(OSError):
            os.chmod(work_file, self.file_mode)  # received by an older version: tighten
        os.replace(work_file, target)
        fsync_dir(folder)
        return target

    # -- forward ---------------------------------------------------------------------------

    def outgoing_items(self, destination: str) -> list[Path]:
        folder = self.outgoing / destination
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(SUFFIX))
        except FileNotFoundError:
            return []
        return [folder / n for n in names]

    def delivered(self, path: Path, destination: str, keep_days: float) -> None:
        """A destination confirmed ``path``: delete it, or keep it in ``sent/`` a while."""
        if keep_days > 0:
            folder = self._folder(self.sent / destination)
            os.replace(path, folder / path.name)
        else:
            os.unlink(path)

    def to_dead_letter(self, path: Path, destination: str, info: dict[str, Any]) -> Path:
        """Move a clean object the destination will never take to ``dead-letter/<dest>/``,
        with a sidecar saying why (``reason``; the forwarder adds ``outcome``)."""
        folder = self._folder(self.dead_letter / destination)
        sidecar = {"id": path.stem, "destination": destination, "time": _now(), **info}
        write_atomic(
            folder / (path.stem + ".json"),
            json.dumps(sidecar, indent=1).encode(),
            tmp_dir=self.tmp,
            mode=self.file_mode,
        )
        target = folder / path.name
        os.replace(path, target)
        fsync_dir(folder)
        return target

    def expire_sent(self, keep_days: float) -> int:
        """Delete forwarded copies older than ``keep_days``; returns how many."""
        limit = time.time() - keep_days * 86400
        removed = 0
        for path in (p for folder in _dirs(self.sent) for p in _files(folder)):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
        return removed

    # -- start-up and operations -----------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Bring the spool back to a consistent state after a crash; returns what was done.

        Half-done work goes back to ``incoming/``; ``tmp/`` (never acknowledged partial
        receives, staged copies) is emptied; sidecars without their file are removed; an
        audit record in ``journal/`` whose original is back in ``incoming/`` is dropped (the
        item is cleaned again and writes a new one). The other records stay for the node
        (:meth:`journal_records`).
        """
        done = {"requeued": 0, "tmp_removed": 0}
        for worker in _dirs(self.work):
            for path in worker.iterdir():
                if path.name.endswith(SUFFIX):
                    os.replace(path, self.incoming / path.name)
                    done["requeued"] += 1
                else:
                    path.unlink()
        if done["requeued"]:
            fsync_dir(self.incoming)
        for path in self.tmp.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            done["tmp_removed"] += 1
        for folder in (*_dirs(self.quarantine), *_dirs(self.dead_letter)):
            for sidecar in folder.glob("*.json"):
                if not sidecar.with_suffix(SUFFIX).exists():
                    sidecar.unlink()
            for copy in folder.glob("*" + CLEAN_SUFFIX):
                if not (folder / (copy.name[: -len(CLEAN_SUFFIX)] + SUFFIX)).exists():
                    copy.unlink()
        for record in _json_files(self.journal):
            if (self.incoming / (record.stem + SUFFIX)).exists():
                record.unlink()
        if any(done.values()):
            log.info("spool recovered: %s", done)
        return done

    def requeue_quarantined(self, reason: str | None = None) -> int:
        """Send quarantined originals through the pipeline again (after a rule change)."""
        return self._move_back(self.quarantine, reason, lambda _: self.incoming, fresh_age=False)

    def requeue_dead_letters(self, destination: str | None = None) -> int:
        """Give dead-lettered objects back to their destination's queue, with a fresh age."""
        return self._move_back(
            self.dead_letter, destination, lambda name: self.outgoing / name, fresh_age=True
        )

    # -- one item at a time (the review page) ----------------------------------------------

    def _held(self, root: Path, folder: str, item_id: str) -> Path:
        """The file of one held item; ``folder`` and ``item_id`` must be plain names."""
        if not folder or _SAFE.search(folder) or not _ITEM.fullmatch(item_id):
            raise ValueError("not a spool folder or id")
        return root / folder / (item_id + SUFFIX)

    def requeue_item(self, reason: str, item_id: str) -> bool:
        """Send one quarantined original through the pipeline again; its sidecar and any
        cleaned copy go. False when it is not there (retried or deleted meanwhile)."""
        path = self._held(self.quarantine, reason, item_id)
        target = self._folder(self.incoming) / path.name
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return False
        fsync_dir(self.incoming)
        path.with_name(item_id + CLEAN_SUFFIX).unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        return True

    def requeue_dead_letter(self, destination: str, item_id: str) -> bool:
        """Give one dead letter back to its destination's queue, with a fresh age."""
        path = self._held(self.dead_letter, destination, item_id)
        target = self._folder(self.outgoing / destination) / path.name
        try:
            os.utime(path)
            os.replace(path, target)
        except FileNotFoundError:
            return False
        fsync_dir(target.parent)
        path.with_suffix(".json").unlink(missing_ok=True)
        return True

    def release(self, reason: str, item_id: str, destinations: list[str]) -> bool:
        """Deliver the cleaned copy of a quarantined item (a person judged what the pixel
        stage left is not PHI) to ``destinations``; then the original, the copy and the
        sidecar go. False when there is no cleaned copy (or no item any more).

        The copy is linked into each ``outgoing/<destination>/`` (fsynced) before anything
        is removed: a crash in between leaves it delivered and still held, never lost.
        """
        path = self._held(self.quarantine, reason, item_id)
        clean = path.with_name(item_id + CLEAN_SUFFIX)
        if not clean.is_file() or not path.is_file():
            return False
        for name in destinations:
            folder = self._folder(self.outgoing / name)
            target = folder / path.name
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            os.link(clean, target)
            fsync_dir(folder)
        self.delete_quarantined(reason, item_id)
        return True

    def delete_quarantined(self, reason: str, item_id: str) -> bool:
        """Delete a quarantined original, its cleaned copy and its sidecar (the sidecar
        last: a crash leaves an orphan sidecar, which ``recover`` removes)."""
        path = self._held(self.quarantine, reason, item_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        path.with_name(item_id + CLEAN_SUFFIX).unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        fsync_dir(path.parent)
        return True

    def _move_back(
        self,
        root: Path,
        only: str | None,
        target_for: Callable[[str], Path],
        *,
        fresh_age: bool,
    ) -> int:
        """Move the objects of ``root/<name>/`` (one name, or all) to ``target_for(name)``.

        The sidecar goes after its object: a crash in between leaves an orphan sidecar,
        which ``recover`` removes, never an object without its state.
        """
        moved = 0
        for folder in _dirs(root):
            if only and folder.name != only:
                continue
            target = self._folder(target_for(folder.name))
            count = 0
            for path in sorted(_files(folder)):
                if fresh_age:
                    os.utime(path)  # the age for dead-lettering starts again
                os.replace(path, target / path.name)
                clean_copy_of(path).unlink(missing_ok=True)  # the original is cleaned anew
                path.with_suffix(".json").unlink(missing_ok=True)
                count += 1
            if count:
                fsync_dir(target)
            moved += count
        return moved

    # -- the audit journal ---------------------------------------------------------------

    def journal_record(self, item_id: str) -> dict[str, Any] | None:
        """The ``cleaned`` audit record a worker left for ``item_id``; None if there is none
        (already written to the audit trail), or if it cannot be read (then it is removed,
        and the log says so: it cannot be written anyway)."""
        path = self.journal / (item_id + ".json")
        try:
            record = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.error("audit record of %s is unreadable; removed", item_id)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return record if isinstance(record, dict) else None

    def held_by(self, worker: str) -> list[Path]:
        """The items in one worker's hands (``work/<worker>/``)."""
        return list(_files(self.work / worker))

    def work_ids(self) -> list[str]:
        """Ids in a worker's hands (before :meth:`recover` after a crash: the items whose
        clean copy and audit line may exist already)."""
        return sorted(i for folder in _dirs(self.work) for i in _ids(folder))

    def journal_ids(self) -> list[str]:
        """Ids with an audit record waiting, oldest first."""
        return sorted(p.stem for p in _json_files(self.journal))

    def forget_record(self, item_id: str) -> None:
        """The record's line is in the audit trail: remove it (no fsync: if a crash undoes
        this, start-up finds the line already written and removes it again)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal / (item_id + ".json"))

    def counts(self) -> dict[str, SpoolCounts]:
        """Items and oldest age per state (``outgoing/<dest>``, ``quarantine/<reason>``...)."""
        now = time.time()
        result: dict[str, SpoolCounts] = {}

        def count(name: str, paths: Iterator[Path]) -> None:
            ages = []
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    ages.append(now - path.stat().st_mtime)
            result[name] = SpoolCounts(len(ages), max(ages) if ages else None)

        count("incoming", _files(self.incoming))
        count("work", (p for d in _dirs(self.work) for p in _files(d)))
        for state, root in (
            ("outgoing", self.outgoing),
            ("quarantine", self.quarantine),
            ("dead-letter", self.dead_letter),
            ("sent", self.sent),
        ):
            for folder in _dirs(root):
                count(f"{state}/{folder.name}", _files(folder))
        return result

    def project_counts(self) -> dict[str, dict[str, int]]:
        """Items per project and state, read from the names (``dicomnode status``).

        States as :meth:`counts` names them; a clean object waiting for two destinations
        counts once in each ``outgoing/<dest>``.
        """
        result: dict[str, dict[str, int]] = {}

        def count(state: str, folder: Path) -> None:
            for item_id in _ids(folder):
                states = result.setdefault(project_of(item_id), {})
                states[state] = states.get(state, 0) + 1

        count("incoming", self.incoming)
        for folder in _dirs(self.work):
            count("work", folder)
        for state, root in (
            ("outgoing", self.outgoing),
            ("quarantine", self.quarantine),
            ("dead-letter", self.dead_letter),
            ("sent", self.sent),
        ):
            for folder in _dirs(root):
                count(f"{state}/{folder.name}", folder)
        return result


class SpoolLock:
    """The spool held by this process (see :meth:`Spool.lock`)."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    def release(self) -> None:
        """Let another node take the spool (the file stays: removing it would race)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


def _holder(fd: int) -> str:
    """Who holds a spool's lock, from what it wrote there: pid, host, command line (this
    host's ``/proc`` when readable, else the one written)."""
    try:
        fields = dict(
            line.partition(" ")[::2] for line in os.pread(fd, 4096, 0).decode().splitlines()
        )
    except (OSError, UnicodeDecodeError):
        fields = {}
    pid = fields.get("pid", "")
    if not pid.isdigit():
        return "its pid is not written yet"
    where = f"pid {pid}"
    host = fields.get("host", "")
    if host and host != socket.gethostname():
        where += f" on host {host}"
    command = fields.get("command", "")
    if not host or host == socket.gethostname():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            command = raw.replace(b"\0", b" ").decode().strip() or command
    return f"{where}: {command}" if command else where


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def clean_copy_of(original: Path) -> Path:
    """Where the cleaned copy of a quarantined original is kept (``<id>.clean.dcm``)."""
    return original.with_name(original.name[: -len(SUFFIX)] + CLEAN_SUFFIX)


def _ids(folder: Path) -> Iterator[str]:
    """Ids of the items in ``folder`` (a cleaned copy beside an original is not an item)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(SUFFIX) and not name.endswith(CLEAN_SUFFIX):
            yield name[: -len(SUFFIX)]


def _files(folder: Path) -> Iterator[Path]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(SUFFIX) and not name.endswith(CLEAN_SUFFIX):
            yield folder / name


def _json_files(folder: Path) -> list[Path]:
    try:
        return [folder / n for n in os.listdir(folder) if n.endswith(".json")]
    except FileNotFoundError:
        return []


def _dirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
