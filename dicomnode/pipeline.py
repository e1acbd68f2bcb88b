"""The one place where the order of stages is spelled out, and the workers that run them.

An instance goes: claim (``incoming/`` -> ``work/<n>/``) -> read -> each stage in order ->
encode -> ``outgoing/<destination>/`` for every destination -> the original is deleted.
A stage is a callable taking an :class:`Item`; it raises :class:`InstanceError` when it
cannot do its job with certainty, and any error at all sends the original to
``quarantine/<reason>/`` with a sidecar. Nothing reaches ``outgoing/`` unless every stage
succeeded (fail closed).

Workers are processes (the GIL would cap one process at one core), started with ``spawn`` so
that no thread of the listener is forked. Each writes its clean copies on a thread of its own
(:class:`_Committer`): the fsyncs of one instance overlap the stages of the next. A
supervisor in the node's process feeds them ids, restarts a worker that dies (its items go
back to ``incoming/``; after three deaths on the same item it is quarantined as
``worker-crashed``), kills and replaces one still in an item's stages after
``pipeline.max_item_s`` (the item: ``too-slow``), and rescans ``incoming/`` for anything not
queued.

Stopping: :meth:`WorkerPool.close` ends the restarts, :meth:`WorkerPool.stop` lets each worker
finish the item in hand, and kills one that is still busy at the deadline (its item goes back
to ``incoming/`` at the next start). A worker that gets SIGINT or SIGTERM itself (Ctrl-C in a
terminal, ``kill -TERM -PGID``, systemd's ``KillMode=control-group``: the whole process group)
finishes the item in hand, takes no other and exits quietly; a second signal ends it at once.
Workers are spawned with these signals blocked until their handler is in place, so one that
arrives while a worker starts waits for it (no ``KeyboardInterrupt`` traceback).

With projects (``dicomnode.projects``), each worker builds every project's filters and stages
once, and takes an item through those of the project its spool name records: filters first,
on the header as received (drop: the original is deleted; quarantine: with the rule's
reason), then the project's stages, then its destinations only. An item whose recorded
project is ``none``, or no longer configured, is quarantined as ``no-project``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from dicomnode.children import STOP_SIGNALS, die_with_parent, stop_signals_held
from dicomnode.config import Config, PixelConfig, ScrubConfig
from dicomnode.dicomio import decoded_copy, encode_chunks, read_instance
from dicomnode.errors import InstanceError, panicked
from dicomnode.filters import FilterAction, Filters
from dicomnode.limits import apply_worker_limits, lift_from_idle, out_of_memory
from dicomnode.logs import setup_logging
from dicomnode.scrub import Scrubber, scrubber_for
from dicomnode.spool import DEFAULT_PROJECT, NO_PROJECT, Spool, calling_ae_of, project_of

log = logging.getLogger(__name__)

__all__ = [
    "Cleaned",
    "Item",
    "Outcome",
    "Pipeline",
    "ProjectStages",
    "ScrubStage",
    "Stage",
    "WorkerPool",
    "build_projects",
    "build_stages",
]


@dataclass
class Item:
    """One instance on its way through the stages."""

    id: str
    dataset: Dataset
    calling_ae: str
    transfer_syntax: str | None = None  # output syntax; None: as received
    project: str = DEFAULT_PROJECT
    notes: dict[str, Any] = field(default_factory=dict)  # what stages did (counts, no PHI)
    # Taken before scrubbing, for later stages; in memory only, never logged or written.
    header: dict[str, Any] = field(default_factory=dict)
    identity: tuple[str, ...] = ()


class Stage(Protocol):
    """``stage(item)`` changes ``item.dataset`` in place or raises InstanceError."""

    name: str

    def __call__(self, item: Item) -> None: ...


def header_snapshot(ds: Dataset, keywords: frozenset[str]) -> dict[str, Any]:
    """Plain values of some attributes as received (the pixel policy decides on these).

    Raw elements are decoded on a copy, as ``conditions`` does: the data set is left exactly
    as read. Decoding in place (``ds.get``, as this did) stored pydicom's reading, at the VR
    the sender declared, and the scrubber checks raw elements only (declared VRs, values
    that cannot be of their VR): Manufacturer holding the rest of the file went out whole,
    Rows declared AS was kept as text (found by tools/mutate_instances.py)."""
    snapshot: dict[str, Any] = {}
    for keyword in keywords:
        try:
            if keyword == "ImplementationVersionName":
                meta = getattr(ds, "file_meta", None)
                value = meta.get(keyword) if meta is not None else None
            else:
                tag = tag_for_keyword(keyword)
                elem = decoded_copy(ds, tag) if tag is not None else None
                value = elem.value if elem is not None else None
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
    # "clean", "quarantined", "dropped" (by a filter), "deferred" (spool I/O failed), "missing"
    status: str
    calling_ae: str = ""
    reason: str | None = None
    stage: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    size: int = 0
    # Of the clean object only (pseudonymised), for the audit trail; and what was done.
    uids: dict[str, str] = field(default_factory=dict)
    done: dict[str, Any] = field(default_factory=dict)
    gpu: dict[str, float] = field(default_factory=dict)
    project: str = DEFAULT_PROJECT
    rule: str | None = None  # the filter rule that dropped or quarantined it


@dataclass
class Cleaned:
    """An item every stage passed, not yet durable: the clean object, where it goes, its
    audit record, and the outcome to report once :meth:`Pipeline.commit` has written it."""

    path: Path  # the original, in work/<worker>/ until the clean copy is durable
    chunks: list[bytes | bytearray]
    destinations: list[str]
    record: dict[str, Any]
    outcome: Outcome

    @property
    def size(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)


def build_stages(config: Config, secret: bytes) -> list[Stage]:
    """The stages a configuration asks for, in order: scrub, then pixels (the top-level
    settings and the site secret: a node without projects, and ``dicomnode scrub``)."""
    return _stages(config.scrub, config.pixels, secret, {})


def _stages(
    scrub: ScrubConfig, pixels: PixelConfig, key: bytes, shared: dict[str, Any]
) -> list[Stage]:
    """Scrub, then pixels. Detectors and removers of equal settings are built once per
    process (``shared``): two projects do not load the OCR models twice."""
    scrubber = scrubber_for(scrub, key)
    if not pixels.enabled:
        return [ScrubStage(scrubber)]
    from dicomnode.pixels import PixelStage
    from dicomnode.pixels.detect import make_detector
    from dicomnode.pixels.remove import make_remover

    detector_key = "detector:" + pixels.detector.model_dump_json()
    if detector_key not in shared:
        d = pixels.detector
        shared[detector_key] = make_detector(
            d.backend,
            threads=d.threads,
            device=d.device,
            max_side=d.max_side,
            det_model_dir=d.det_model_dir,
            rec_model_dir=d.rec_model_dir,
        )
    remover_key = "remover:" + pixels.remover.model_dump_json()
    if remover_key not in shared:
        r = pixels.remover
        shared[remover_key] = make_remover(
            r.method, model_path=r.model_path, device=r.device, steps=r.steps, crop=r.crop
        )
    stage = PixelStage(pixels, detector=shared[detector_key], remover=shared[remover_key])
    scrub_stage = ScrubStage(
        scrubber,
        header_fields=stage.policy.fields,
        capture_identity=pixels.mode == "sensitive-text",
    )
    return [scrub_stage, stage]


@dataclass
class ProjectStages:
    """What a worker does with the items of one project."""

    name: str
    stages: list[Stage]
    destinations: list[str]
    filters: Filters | None = None


def _pixel_coverage(stages: list[Stage]) -> Any:
    """``pixel_stage`` for filters: what this project's pixel stage will do with an instance."""
    pixels = next((s for s in stages if s.name == "pixels"), None)
    policy = getattr(pixels, "policy", None)
    if policy is None:
        return lambda ds: "off"

    def coverage(ds: Dataset) -> str:
        return "check" if policy.decide(header_snapshot(ds, policy.fields)).check else "skip"

    return coverage


def build_projects(config: Config, secret: bytes) -> dict[str, ProjectStages]:
    """Every project's filters and stages, built once (per worker, and by the node to
    validate); without projects, the one ``default`` project: exactly :func:`build_stages`."""
    if not config.projects:
        return {
            DEFAULT_PROJECT: ProjectStages(
                DEFAULT_PROJECT, build_stages(config, secret), [d.name for d in config.destinations]
            )
        }
    from dicomnode.projects import pseudonym_key

    shared: dict[str, Any] = {}
    built = {}
    for project in config.projects:
        key = pseudonym_key(config, project.name, secret)
        stages = _stages(project.scrub, project.pixels, key, shared)
        filters = Filters(project.filters, _pixel_coverage(stages)) if project.filters else None
        built[project.name] = ProjectStages(
            project.name, stages, list(project.destinations), filters
        )
    return built


class Pipeline:
    """Runs the stages on spool items; used by the node's workers and by tests."""

    def __init__(
        self,
        spool: Spool,
        stages: list[Stage],
        destinations: list[str],
        *,
        projects: dict[str, ProjectStages] | None = None,
    ) -> None:
        """``projects`` None: no projects (every item is the default project's, with
        ``stages`` and ``destinations``); else the items' recorded project chooses."""
        self.spool = spool
        self.stages = stages
        self.destinations = destinations
        self.per_project = projects is not None
        self.projects = projects or {}

    @classmethod
    def from_config(cls, config: Config, spool: Spool, secret: bytes) -> Pipeline:
        built = build_projects(config, secret)
        if not config.projects:
            default = built[DEFAULT_PROJECT]
            return cls(spool, default.stages, default.destinations)
        return cls(spool, [], [], projects=built)

    def process(self, item_id: str, worker: str) -> Outcome:
        """Take one item from ``incoming/`` through the stages to its outcome."""
        result = self.prepare(item_id, worker)
        return self.commit(result) if isinstance(result, Cleaned) else result

    def prepare(self, item_id: str, worker: str) -> Outcome | Cleaned:
        """Claim and clean one item: its outcome, or, when every stage passed, the clean
        object that :meth:`commit` makes durable (the original stays in ``work/`` until
        then)."""
        path = self.spool.claim(item_id, worker)
        if path is None:
            return Outcome(item_id, "missing")
        calling_ae = calling_ae_of(item_id)
        if self.per_project:
            name = project_of(item_id)
            project = self.projects.get(name)
        else:
            name = DEFAULT_PROJECT
            project = ProjectStages(name, self.stages, self.destinations)
        if project is None:
            why = (
                "no project matched at receive time"
                if name == NO_PROJECT
                else "the project recorded at receive time is not configured any more"
            )
            self.spool.to_quarantine(
                path, "no-project", {"stage": "project", "message": why, "project": name}
            )
            return Outcome(
                item_id, "quarantined", calling_ae, "no-project", "project", project=name
            )
        seconds: dict[str, float] = {}
        stage_name = "read"
        started = time.perf_counter()
        rule: str | None = None
        held: tuple[str, InstanceError] | None = None  # a stage's verdict, its work done
        try:
            size = path.stat().st_size
            item = Item(item_id, read_instance(path), calling_ae, project=name)
            seconds["read"] = time.perf_counter() - started
            if project.filters is not None:
                stage_name = "filter"
                verdict = project.filters(item.dataset, calling_ae)
                if verdict is not None:
                    rule = verdict.rule
                    if verdict.action is FilterAction.DROP:
                        # Acknowledged already; never forwarded: the original just goes (a
                        # crash that undoes the unlink filters it again, to the same verdict).
                        self.spool.finish(path)
                        return Outcome(
                            item_id,
                            "dropped",
                            calling_ae,
                            verdict.reason,
                            "filter",
                            seconds=seconds,
                            project=name,
                            rule=rule,
                        )
                    raise InstanceError(f"filter rule {rule}", reason=verdict.reason)
            for stage in project.stages:
                stage_name = stage.name
                started = time.perf_counter()
                try:
                    stage(item)
                except InstanceError as exc:
                    if not getattr(exc, "keeps_clean_copy", False) or held is not None:
                        raise
                    # text-remains: the stage finished its work, and the object the stages
                    # make is kept beside the original for a person to judge (never sent).
                    held = (stage.name, exc)
                seconds[stage.name] = time.perf_counter() - started
            stage_name = "encode"
            started = time.perf_counter()
            chunks = encode_chunks(item.dataset, item.transfer_syntax)
            seconds["encode"] = time.perf_counter() - started
        except BaseException as exc:  # fail closed: every error quarantines
            if not (isinstance(exc, Exception) or panicked(exc)):
                raise  # a stop, an interrupt: the item stays where it is
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
            info = {"stage": stage_name, "message": message}
            if self.per_project:
                info["project"] = name
            self.spool.to_quarantine(path, reason, info)
            return Outcome(
                item_id,
                "quarantined",
                calling_ae,
                reason,
                stage_name,
                seconds,
                project=name,
                rule=rule,
            )
        if held is not None:
            return self._hold(path, item, chunks, held, seconds)
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
        record: dict[str, Any] = {
            "calling_ae": calling_ae,
            "uids": uids,
            "done": done,
            "destinations": project.destinations,
        }
        if self.per_project:
            record["project"] = name
        outcome = Outcome(
            item_id,
            "clean",
            calling_ae,
            project=name,
            seconds=seconds,
            size=size,
            uids=uids,
            done=done,
        )
        return Cleaned(path, chunks, list(project.destinations), record, outcome)

    def commit(self, cleaned: Cleaned) -> Outcome:
        """Write the clean copy for every destination and delete the original: the
        ``clean`` outcome, or ``deferred`` when the disk failed (the original goes back to
        ``incoming/``, to be cleaned again later)."""
        done = cleaned.outcome
        try:
            self.spool.deliver(done.id, cleaned.chunks, cleaned.destinations, record=cleaned.record)
            self.spool.finish(cleaned.path)
        except OSError as exc:
            # The disk, not the instance: give it back to incoming/ to try again later.
            log.error("cannot write the clean copy of %s (%s); will retry", done.id, exc)
            with contextlib.suppress(OSError):
                os.replace(cleaned.path, self.spool.incoming / cleaned.path.name)
            return Outcome(
                done.id,
                "deferred",
                done.calling_ae,
                "spool-io",
                "deliver",
                done.seconds,
                project=done.project,
            )
        return replace(done, gpu=_gpu_usage())

    def _hold(
        self,
        path: Path,
        item: Item,
        chunks: list[bytes | bytearray],
        held: tuple[str, InstanceError],
        seconds: dict[str, float],
    ) -> Outcome:
        """Quarantine an original whose stages all ran but one's verdict holds it back
        (``text-remains``), with the cleaned object beside it (``<id>.clean.dcm``) and what the
        stage recorded (``evidence``: boxes per frame, no text) in the sidecar."""
        stage_name, exc = held
        info: dict[str, Any] = {"stage": stage_name, "message": str(exc)}
        evidence = getattr(exc, "evidence", None)
        if evidence:
            info["evidence"] = evidence
        if self.per_project:
            info["project"] = item.project
        try:
            self.spool.to_quarantine(path, exc.reason, info, clean=chunks)
        except OSError as error:
            # The disk, not the instance: back to incoming/, to be cleaned again later.
            log.error("cannot quarantine %s with its cleaned copy (%s); will retry", item.id, error)
            with contextlib.suppress(OSError):
                os.replace(path, self.spool.incoming / path.name)
            return Outcome(
                item.id,
                "deferred",
                item.calling_ae,
                "spool-io",
                "quarantine",
                seconds,
                project=item.project,
            )
        counts = getattr(exc, "counts", None)
        return Outcome(
            item.id,
            "quarantined",
            item.calling_ae,
            exc.reason,
            stage_name,
            seconds,
            project=item.project,
            done={"pixels": {"boxes_by_kind": counts}} if counts else {},
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


class _StopRequest:
    """A worker's SIGINT/SIGTERM handler: the first asks it to stop after the item in hand,
    a second ends it at once (the item goes back to ``incoming/`` at the next start)."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held since the spawn

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.requested = True


class _Committer:
    """A worker's writer thread: the clean copy of one item is made durable (three fsyncs,
    ``Spool.deliver``) while the worker already runs the stages of the next. The fsyncs
    release the GIL, and a worker that waited for them left its core idle for ~19% of its
    time in the end-to-end benchmark.

    One at a time: :meth:`submit` waits until the item before is durable, so at most one
    clean object waits in memory beside the item in hand, and one over ``OVERLAP_BYTES`` is
    written by the worker itself (two large objects at once could pass the worker's memory
    limit). The original stays in ``work/<worker>/`` until its copy is durable: a crash in
    between cleans it again after the restart, as before. An unexpected error while writing
    ends the worker with ``WRITER_FAILED``: the pool then counts the death against the item
    written too (:meth:`WorkerPool._recover_worker`).
    """

    OVERLAP_BYTES = 16 * 1024 * 1024

    def __init__(self, pipeline: Pipeline, report: Callable[[Outcome], None]) -> None:
        self._pipeline = pipeline
        self._report = report
        self._pending: queue.Queue[Cleaned | None] = queue.Queue(maxsize=1)
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self._thread.start()

    def submit(self, cleaned: Cleaned) -> None:
        self._idle.wait()
        if cleaned.size > self.OVERLAP_BYTES:
            self._commit(cleaned)
            return
        self._idle.clear()
        self._pending.put(cleaned)

    def close(self) -> None:
        """Wait for the last item to be durable, then end the thread."""
        self._idle.wait()
        self._pending.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (cleaned := self._pending.get()) is not None:
            self._commit(cleaned)
            self._idle.set()

    def _commit(self, cleaned: Cleaned) -> None:
        try:
            self._report(self._pipeline.commit(cleaned))
        except BaseException:
            log.exception("writing the clean copy of %s failed", cleaned.outcome.id)
            os._exit(WRITER_FAILED)  # the pool restarts the worker, work/ to incoming/


def _worker_main(
    index: int, config: Config, secret: bytes, tasks: Any, results: Any, parent: int
) -> None:
    """Entry point of a worker process; ``parent`` is the node's pid."""
    stop = _StopRequest()
    stop.install()
    # An orphaned worker finishing an item while a restarted node recovers the spool would
    # race with it: the kernel ends the worker first.
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        return  # the node died before we could ask to die with it
    setup_logging(config.logging.level, config.logging.format)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    apply_worker_limits(config)
    spool = Spool(config.spool.path)
    pipeline = Pipeline.from_config(config, spool, secret)
    committer = _Committer(pipeline, lambda outcome: results.put((index, outcome)))
    results.put((index, READY))  # its models are loaded: items now cost what they cost
    name = str(index)
    while not stop.requested:
        try:
            item_id = tasks.get(timeout=1)
        except queue.Empty:
            if os.getppid() != parent:
                break  # belt and braces where PR_SET_PDEATHSIG is not available
            continue
        if item_id is None:
            break
        if stop.requested:
            # Not taken: it stays in incoming/, and the pool may give it to another worker.
            results.put((index, Outcome(item_id, "missing")))
            break
        result = pipeline.prepare(item_id, name)
        if isinstance(result, Cleaned):
            # Its stages passed: should the worker die while the writer thread writes it,
            # the death is not this item's (unless the writer failed: WRITER_FAILED).
            results.put((index, (PREPARED, item_id)))
            committer.submit(result)
        else:
            results.put((index, result))
    committer.close()
    # Never hang at exit flushing results nobody reads any more.
    results.close()
    if os.getppid() != parent:
        results.cancel_join_thread()


#: What a worker sends once its pipeline is built (models loaded), before its first item.
READY = "ready"
#: What a worker sends once an item's stages passed: ``(PREPARED, item_id)``.
PREPARED = "prepared"
#: A worker's exit code when its writer thread failed.
WRITER_FAILED = 70


class WorkerPool:
    """Supervises the worker processes: feeds them, restarts them, never loses an item.

    ``ready`` counts the workers whose pipeline is built (the ``dicomnode_workers_ready``
    gauge): a worker loads its models for seconds after it starts, and a benchmark or an
    operator wanting to know when the node works at full speed reads it."""

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
        self._ready: set[int] = set()
        self._queued: set[str] = set()
        self._crashes: dict[str, int] = {}
        # Per worker: items whose stages passed and whose outcome has not come yet.
        self._prepared: dict[int, set[str]] = {}
        # Per worker: when the watch first saw each item it holds (``_slow``).
        self._held_since: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._spawn_lock = threading.Lock()
        self._closing = threading.Event()  # no restarts, no new work
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
        with self._spawn_lock:
            if self._closing.is_set():
                return
            process = self._ctx.Process(
                target=_worker_main,
                args=(index, self.config, self.secret, self._tasks, self._results, os.getpid()),
                name=f"dicomnode-worker-{index}",
                daemon=True,
            )
            with stop_signals_held():
                process.start()
            self._workers[index] = process
            self._ready.discard(index)

    def submit(self, item_id: str) -> None:
        if self._closing.is_set():
            return  # stopping: it waits in incoming/ for the next start
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

    @property
    def ready(self) -> int:
        """Workers alive whose pipeline is built."""
        workers = dict(self._workers)
        return sum(1 for i in set(self._ready) if i in workers and workers[i].is_alive())

    def _collect(self) -> None:
        while not self._stopping.is_set() or self.queued:
            try:
                index, outcome = self._results.get(timeout=0.5)
            except queue.Empty:
                if self._stopping.is_set() and not any(
                    p.is_alive() for p in self._workers.values()
                ):
                    return
                continue
            if isinstance(outcome, tuple) and outcome[0] == PREPARED:
                with self._lock:
                    self._prepared.setdefault(index, set()).add(outcome[1])
                continue
            if outcome == READY:
                self._ready.add(index)
                log.info("worker %d ready", index)
                continue
            with self._lock:
                self._queued.discard(outcome.id)
                self._crashes.pop(outcome.id, None)
                self._prepared.get(index, set()).discard(outcome.id)
            if outcome.status == "deferred":
                retry = threading.Timer(5.0, self.submit, (outcome.id,))
                retry.daemon = True  # never holds up the node's exit
                retry.start()
            try:
                self.on_outcome(outcome)
            except Exception:
                log.exception("outcome handler failed")

    def _watch(self) -> None:
        last_scan = time.monotonic()
        while not self._stopping.wait(1.0):
            for index, process in list(self._workers.items()):
                if self._closing.is_set():
                    continue
                if process.is_alive():
                    slow = self._slow(index)
                    if slow is not None:
                        self._stop_slow(index, process, slow)
                    continue
                if process.exitcode == 0 and self._closing.wait(2.0):
                    continue  # it had the node's stop signal too (the process group's)
                if process.exitcode == 0:
                    log.warning("worker %d stopped on a signal; restarting it", index)
                else:
                    log.error(
                        "worker %d died (exit code %s); restarting it", index, process.exitcode
                    )
                self._recover_worker(index, process.exitcode)
                self._spawn(index)
            if time.monotonic() - last_scan > 5 and not self._closing.is_set():
                last_scan = time.monotonic()
                self.rescan()

    def _slow(self, index: int) -> str | None:
        """The item worker ``index`` has held in its stages for longer than
        ``pipeline.max_item_s`` (seen in its ``work/`` folder, once a second), if any. An item
        whose stages passed, and that its writer thread is writing, is not: the writing is
        bounded by the disk, not by what the instance holds."""
        limit = self.config.pipeline.max_item_s
        if not limit:
            return None
        now = time.monotonic()
        with self._lock:
            prepared = set(self._prepared.get(index, ()))
        held = {path.stem for path in self.spool.held_by(str(index))}
        since = self._held_since.setdefault(index, {})
        for gone in set(since) - held:
            del since[gone]
        for item_id in held - set(since):
            since[item_id] = now
        late = [i for i in held - prepared if now - since[i] > limit]
        return min(late, key=since.__getitem__) if late else None

    def _stop_slow(self, index: int, process: BaseProcess, item_id: str) -> None:
        """Kill worker ``index``, still on ``item_id`` past the limit: the item is quarantined
        as ``too-slow`` (run again, it would hold the next worker as long), what else it held
        goes back to ``incoming/``, and a new worker takes its place."""
        limit = self.config.pipeline.max_item_s
        log.error(
            "worker %d still on item %s after %.0f s (pipeline.max_item_s); stopping it, the "
            "item goes to quarantine/too-slow",
            index,
            item_id,
            limit,
        )
        process.kill()
        process.join(5)
        self._held_since.pop(index, None)
        self._recover_worker(index, process.exitcode, slow=item_id)
        self._spawn(index)

    def _recover_worker(
        self, index: int, exitcode: int | None = None, *, slow: str | None = None
    ) -> None:
        """Give a dead worker's items back to ``incoming/``, counting the death against each;
        not against an item the pool knows had passed its stages and was being written (the
        worker said so) while the stages of another ran, unless the writing itself failed
        (``WRITER_FAILED``). A message that had not arrived yet counts as before: some item
        held is always counted, so an item that kills workers is quarantined in the end."""
        with self._lock:
            prepared = self._prepared.pop(index, set())
        held = self.spool.held_by(str(index))
        if slow is not None:
            prepared = {path.stem for path in held}  # the slow one is to blame, no other
        elif exitcode == WRITER_FAILED or all(path.stem in prepared for path in held):
            prepared = set()  # the writing failed, or no other item to blame: every item counts
        for path in held:
            item_id = path.stem
            if item_id == slow:
                self._too_slow(path)
                continue
            with self._lock:
                self._queued.discard(item_id)
                if item_id in prepared:
                    crashes = 0
                else:
                    self._crashes[item_id] = self._crashes.get(item_id, 0) + 1
                    crashes = self._crashes[item_id]
            if crashes >= self.MAX_CRASHES:
                self.spool.to_quarantine(
                    path,
                    "worker-crashed",
                    {"stage": "worker", "message": f"{crashes} worker deaths"},
                )
                self.on_outcome(
                    Outcome(
                        item_id,
                        "quarantined",
                        calling_ae_of(item_id),
                        "worker-crashed",
                        "worker",
                        project=project_of(item_id),
                    )
                )
            else:
                os.replace(path, self.spool.incoming / path.name)
                self.submit(item_id)

    def _too_slow(self, path: Path) -> None:
        item_id = path.stem
        limit = self.config.pipeline.max_item_s
        with self._lock:
            self._queued.discard(item_id)
            self._crashes.pop(item_id, None)
        self.spool.to_quarantine(
            path,
            "too-slow",
            {"stage": "worker", "message": f"still in the stages after {limit:g} s"},
        )
        self.on_outcome(
            Outcome(
                item_id,
                "quarantined",
                calling_ae_of(item_id),
                "too-slow",
                "worker",
                project=project_of(item_id),
            )
        )

    def close(self) -> None:
        """Stop restarting workers and taking new work (first thing when the node stops: its
        workers may have had the same signal); the workers keep the item in hand."""
        with self._spawn_lock:
            self._closing.set()

    def stop(self, timeout: float = 30.0) -> bool:
        """Let workers finish the item in hand, then stop them; one still busy after
        ``timeout`` is killed (its item goes back to ``incoming/`` at the next start). True if
        all stopped in time.

        Items still queued stay in ``incoming/`` for the next start.
        """
        self.close()
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
        for index, process in list(self._workers.items()):
            if index not in self._ready and not self.spool.held_by(str(index)):
                # Still loading its models: it has taken no item, so it is ended now rather
                # than after seconds of loading (longer on a loaded host, on idle CPU time).
                # Should it have just taken one, that item goes back to incoming/ at the
                # next start, as after any crash.
                process.kill()
            elif process.pid is not None:
                lift_from_idle(process.pid)  # the item in hand is finished at normal speed
        deadline = time.monotonic() + timeout
        clean = True
        for index, process in list(self._workers.items()):
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                clean = False
                log.warning(
                    "worker %d did not finish its item within %.0f s; stopped it (the item "
                    "goes back to incoming/ at the next start)",
                    index,
                    timeout,
                )
                process.kill()
                process.join(5)
        for thread in self._threads:
            thread.join(2)
        return clean
