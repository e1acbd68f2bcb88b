"""The one place where the order of stages is spelled out, and the workers that run them.

An instance goes: claim (``incoming/`` -> ``work/<n>/``) -> read -> each stage in order ->
encode -> ``outgoing/<destination>/`` for every destination -> the original is deleted.
A stage is a callable taking an :class:`Item`; it raises :class:`InstanceError` when it
cannot do its job with certainty, and any error at all sends the original to
``quarantine/<reason>/`` with a sidecar. Nothing reaches ``outgoing/`` unless every stage
succeeded (fail closed).

Workers are processes (the GIL would cap one process at one core), started with ``spawn`` so
that no thread of the listener is forked. A supervisor in the node's process feeds them ids,
restarts a worker that dies (its item goes back to ``incoming/``; after three deaths on the
same item it is quarantined as ``worker-crashed``), and rescans ``incoming/`` for anything
not queued.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset

from dicomnode.config import Config
from dicomnode.dicomio import encode_chunks, read_instance
from dicomnode.errors import InstanceError
from dicomnode.limits import apply_worker_limits, out_of_memory
from dicomnode.logs import setup_logging
from dicomnode.scrub import Scrubber, build_scrubber
from dicomnode.spool import SUFFIX, Spool, calling_ae_of

log = logging.getLogger(__name__)

__all__ = ["Item", "Outcome", "Pipeline", "ScrubStage", "Stage", "WorkerPool"]


@dataclass
class Item:
    """One instance on its way through the stages."""

    id: str
    dataset: Dataset
    calling_ae: str
    transfer_syntax: str | None = None  # output syntax; None: as received
    notes: dict[str, Any] = field(default_factory=dict)  # what stages did (counts, no PHI)
    # Taken before scrubbing, for later stages; in memory only, never logged or written.
    header: dict[str, Any] = field(default_factory=dict)
    identity: tuple[str, ...] = ()


class Stage(Protocol):
    """``stage(item)`` changes ``item.dataset`` in place or raises InstanceError."""

    name: str

    def __call__(self, item: Item) -> None: ...


def header_snapshot(ds: Dataset, keywords: frozenset[str]) -> dict[str, Any]:
    """Plain values of some attributes as received (the pixel policy decides on these)."""
    snapshot: dict[str, Any] = {}
    for keyword in keywords:
        try:
            value = (
                ds.get(keyword)
                if keyword != "ImplementationVersionName"
                else (ds.file_meta.get(keyword) if hasattr(ds, "file_meta") else None)
            )
        except Exception:
            continue  # an undecodable value cannot match a condition
        if value is None:
            continue
        if isinstance(value, str | int | float) or keyword.endswith("Sequence"):
            snapshot[keyword] = value
        else:
            try:
                snapshot[keyword] = [str(v) for v in value]  # multi-valued
            except TypeError:
                snapshot[keyword] = str(value)
    return snapshot


class ScrubStage:
    """Header de-identification (``dicomnode.scrub``); first keeps what later stages need of
    the header as received."""

    name = "scrub"

    def __init__(
        self,
        scrubber: Scrubber,
        *,
        header_fields: frozenset[str] = frozenset(),
        capture_identity: bool = False,
    ) -> None:
        self.scrubber = scrubber
        self.header_fields = header_fields
        self.capture_identity = capture_identity

    def __call__(self, item: Item) -> None:
        if self.header_fields:
            item.header = header_snapshot(item.dataset, self.header_fields)
        if self.capture_identity:
            item.identity = self.scrubber.identity_values(item.dataset)
        report = self.scrubber.scrub(item.dataset)
        item.notes["scrub"] = {
            "replaced": report.replaced,
            "removed": report.removed,
            "private_removed": report.private_removed,
        }


@dataclass(frozen=True)
class Outcome:
    """What happened to one spool item; the supervisor turns it into queue moves and metrics."""

    id: str
    status: str  # "clean", "quarantined", "deferred" (spool I/O failed), "missing"
    calling_ae: str = ""
    reason: str | None = None
    stage: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    size: int = 0
    # Of the clean object only (pseudonymised), for the audit trail; and what was done.
    uids: dict[str, str] = field(default_factory=dict)
    done: dict[str, Any] = field(default_factory=dict)
    gpu: dict[str, float] = field(default_factory=dict)


def build_stages(config: Config, secret: bytes) -> list[Stage]:
    """The stages a configuration asks for, in order: scrub, then pixels."""
    scrubber = build_scrubber(config, secret=secret)
    if not config.pixels.enabled:
        return [ScrubStage(scrubber)]
    from dicomnode.pixels import PixelStage

    pixels = PixelStage(config.pixels)
    scrub = ScrubStage(
        scrubber,
        header_fields=pixels.policy.fields,
        capture_identity=config.pixels.mode == "sensitive-text",
    )
    return [scrub, pixels]


class Pipeline:
    """Runs the stages on spool items; used by the node's workers and by tests."""

    def __init__(self, spool: Spool, stages: list[Stage], destinations: list[str]) -> None:
        self.spool = spool
        self.stages = stages
        self.destinations = destinations

    @classmethod
    def from_config(cls, config: Config, spool: Spool, secret: bytes) -> Pipeline:
        return cls(spool, build_stages(config, secret), [d.name for d in config.destinations])

    def process(self, item_id: str, worker: str) -> Outcome:
        path = self.spool.claim(item_id, worker)
        if path is None:
            return Outcome(item_id, "missing")
        calling_ae = calling_ae_of(item_id)
        seconds: dict[str, float] = {}
        stage_name = "read"
        started = time.perf_counter()
        try:
            size = path.stat().st_size
            item = Item(item_id, read_instance(path), calling_ae)
            seconds["read"] = time.perf_counter() - started
            for stage in self.stages:
                stage_name = stage.name
                started = time.perf_counter()
                stage(item)
                seconds[stage.name] = time.perf_counter() - started
            stage_name = "encode"
            started = time.perf_counter()
            chunks = encode_chunks(item.dataset, item.transfer_syntax)
            seconds["encode"] = time.perf_counter() - started
        except Exception as exc:  # fail closed: every error quarantines
            if isinstance(exc, MemoryError):
                exc = out_of_memory(f"running the {stage_name} stage")
            reason = exc.reason if isinstance(exc, InstanceError) else "internal-error"
            message = str(exc) if isinstance(exc, InstanceError) else type(exc).__name__
            if not isinstance(exc, InstanceError):
                # The type and where, never the message: a library's message may quote a
                # value from the instance.
                frames = traceback.extract_tb(exc.__traceback__)[-3:]
                where = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames)
                log.error(
                    "stage %s failed on %s: %s at %s",
                    stage_name,
                    item_id,
                    type(exc).__name__,
                    where,
                )
            self.spool.to_quarantine(path, reason, {"stage": stage_name, "message": message})
            return Outcome(item_id, "quarantined", calling_ae, reason, stage_name, seconds)
        pixels = item.notes.get("pixels", {})
        for name, value in pixels.get("seconds", {}).items():
            seconds[name] = value  # detect, remove, verify within the pixel stage
        ds = item.dataset
        uids = {
            k: str(ds.get(k, ""))
            for k in (
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "PatientID",
                "SOPClassUID",
            )
        }
        done = {
            "scrub": item.notes.get("scrub", {}),
            "pixels": {k: v for k, v in pixels.items() if k != "seconds"},
        }
        # The audit record goes into the spool with the clean copy, before it can be
        # delivered: its ``cleaned`` line survives a kill of the node (see node.py).
        record = {
            "calling_ae": calling_ae,
            "uids": uids,
            "done": done,
            "destinations": self.destinations,
        }
        try:
            self.spool.deliver(item_id, chunks, self.destinations, record=record)
            self.spool.finish(path)
        except OSError as exc:
            # The disk, not the instance: give it back to incoming/ to try again later.
            log.error("cannot write the clean copy of %s (%s); will retry", item_id, exc)
            with contextlib.suppress(OSError):
                os.replace(path, self.spool.incoming / path.name)
            return Outcome(item_id, "deferred", calling_ae, "spool-io", "deliver", seconds)
        return Outcome(
            item_id,
            "clean",
            calling_ae,
            seconds=seconds,
            size=size,
            uids=uids,
            done=done,
            gpu=_gpu_usage(),
        )


def _gpu_usage() -> dict[str, float]:
    """GPU memory and utilisation, when this process has used the GPU (diffusion)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    usage = {"memory_bytes": float(torch.cuda.memory_allocated())}
    with contextlib.suppress(Exception):  # needs NVML
        usage["utilisation_ratio"] = float(torch.cuda.utilization()) / 100
    return usage


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the node dies, even by ``kill -9``.

    An orphaned worker finishing an item while a restarted node recovers the spool would
    race with it; with PR_SET_PDEATHSIG the kernel ends the worker first.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_main(
    index: int, config: Config, secret: bytes, tasks: Any, results: Any, parent: int
) -> None:
    """Entry point of a worker process; ``parent`` is the node's pid."""
    _die_with_parent()
    if os.getppid() != parent:
        return  # the node died before we could ask to die with it
    setup_logging(config.logging.level, config.logging.format)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    apply_worker_limits(config)
    spool = Spool(config.spool.path)
    pipeline = Pipeline.from_config(config, spool, secret)
    name = str(index)
    while True:
        try:
            item_id = tasks.get(timeout=2)
        except queue.Empty:
            if os.getppid() != parent:
                break  # belt and braces where PR_SET_PDEATHSIG is not available
            continue
        if item_id is None:
            break
        results.put((index, pipeline.process(item_id, name)))
    # Never hang at exit flushing results nobody reads any more.
    results.close()
    if os.getppid() != parent:
        results.cancel_join_thread()


class WorkerPool:
    """Supervises the worker processes: feeds them, restarts them, never loses an item."""

    MAX_CRASHES = 3

    def __init__(
        self,
        config: Config,
        secret: bytes,
        spool: Spool,
        on_outcome: Callable[[Outcome], None] = lambda outcome: None,
    ) -> None:
        self.config = config
        self.secret = secret
        self.spool = spool
        self.on_outcome = on_outcome
        self.size = config.pipeline.workers or os.cpu_count() or 1
        self._ctx = mp.get_context("spawn")
        self._tasks: Any = self._ctx.Queue()
        self._results: Any = self._ctx.Queue()
        self._workers: dict[int, BaseProcess] = {}
        self._queued: set[str] = set()
        self._crashes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.size):
            self._spawn(index)
        for target in (self._collect, self._watch):
            thread = threading.Thread(target=target, name=f"pool-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.rescan()

    def _spawn(self, index: int) -> None:
        process = self._ctx.Process(
            target=_worker_main,
            args=(index, self.config, self.secret, self._tasks, self._results, os.getpid()),
            name=f"dicomnode-worker-{index}",
            daemon=True,
        )
        process.start()
        self._workers[index] = process

    def submit(self, item_id: str) -> None:
        with self._lock:
            if item_id in self._queued:
                return
            self._queued.add(item_id)
        self._tasks.put(item_id)

    def rescan(self) -> None:
        """Queue everything in ``incoming/`` that is not queued yet."""
        for item_id in self.spool.pending():
            self.submit(item_id)

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queued)

    def _collect(self) -> None:
        while not self._stopping.is_set() or self.queued:
            try:
                _index, outcome = self._results.get(timeout=0.5)
            except queue.Empty:
                if self._stopping.is_set() and not any(
                    p.is_alive() for p in self._workers.values()
                ):
                    return
                continue
            with self._lock:
                self._queued.discard(outcome.id)
                self._crashes.pop(outcome.id, None)
            if outcome.status == "deferred":
                threading.Timer(5.0, self.submit, (outcome.id,)).start()
            try:
                self.on_outcome(outcome)
            except Exception:
                log.exception("outcome handler failed")

    def _watch(self) -> None:
        last_scan = time.monotonic()
        while not self._stopping.wait(1.0):
            for index, process in list(self._workers.items()):
                if not process.is_alive() and not self._stopping.is_set():
                    log.error(
                        "worker %d died (exit code %s); restarting it", index, process.exitcode
                    )
                    self._recover_worker(index)
                    self._spawn(index)
            if time.monotonic() - last_scan > 5:
                last_scan = time.monotonic()
                self.rescan()

    def _recover_worker(self, index: int) -> None:
        folder = self.spool.work / str(index)
        if not folder.is_dir():
            return
        for path in folder.glob("*" + SUFFIX):
            item_id = path.stem
            with self._lock:
                self._crashes[item_id] = self._crashes.get(item_id, 0) + 1
                crashes = self._crashes[item_id]
                self._queued.discard(item_id)
            if crashes >= self.MAX_CRASHES:
                self.spool.to_quarantine(
                    path,
                    "worker-crashed",
                    {"stage": "worker", "message": f"{crashes} worker deaths"},
                )
                self.on_outcome(
                    Outcome(
                        item_id, "quarantined", calling_ae_of(item_id), "worker-crashed", "worker"
                    )
                )
            else:
                os.replace(path, self.spool.incoming / path.name)
                self.submit(item_id)

    def stop(self, timeout: float = 30.0) -> bool:
        """Let workers finish the item in hand, then stop them. True if all stopped in time.

        Items still queued stay in ``incoming/`` for the next start.
        """
        self._stopping.set()
        # Drop what is queued but not started: it stays safe in incoming/.
        with contextlib.suppress(queue.Empty):
            while True:
                item_id = self._tasks.get_nowait()
                if item_id is not None:
                    with self._lock:
                        self._queued.discard(item_id)
        for _ in self._workers:
            self._tasks.put(None)
        deadline = time.monotonic() + timeout
        clean = True
        for process in self._workers.values():
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                clean = False
                process.terminate()
                process.join(5)
        for thread in self._threads:
            thread.join(2)
        return clean
