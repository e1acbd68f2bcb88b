"""The pipeline's contract: all stages or quarantine; spool trouble is retried, not blamed."""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import pytest

from dicomnode.config import Config
from dicomnode.pipeline import (
    WRITER_FAILED,
    Cleaned,
    Item,
    Outcome,
    Pipeline,
    WorkerPool,
    _Committer,
)
from dicomnode.spool import Spool
from tests.conftest import SECRET
from tests.peers import wait_for
from tests.phi import leaks, planted_dataset, to_bytes


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").create(["a", "b"])


def pipeline(spool: Spool) -> Pipeline:
    built = Pipeline.from_config(Config(), spool, SECRET)
    built.destinations = ["a", "b"]
    return built


def test_clean_instance_goes_to_every_destination(spool: Spool) -> None:
    item = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
    outcome = pipeline(spool).process(item, "0")
    assert outcome.status == "clean" and outcome.calling_ae == "CT1"
    assert {"read", "scrub", "pixels", "encode"} <= set(outcome.seconds)
    for name in ("a", "b"):
        (path,) = spool.outgoing_items(name)
        assert leaks(path.read_bytes()) == []
    assert spool.counts()["work"].count == 0


def test_unreadable_instance_is_quarantined(spool: Spool) -> None:
    item = spool.write_incoming(b"not dicom at all", "CT1")
    outcome = pipeline(spool).process(item, "0")
    assert (outcome.status, outcome.reason, outcome.stage) == ("quarantined", "unreadable", "read")
    assert spool.outgoing_items("a") == []
    info = json.loads((spool.quarantine / "unreadable" / f"{item}.json").read_text())
    assert info["stage"] == "read"


def test_a_failing_stage_quarantines_and_forwards_nothing(spool: Spool) -> None:
    class Broken:
        name = "pixels"

        def __call__(self, item: Item) -> None:
            raise RuntimeError("model crashed")

    built = pipeline(spool)
    built.stages.append(Broken())
    received = to_bytes(planted_dataset())
    item = spool.write_incoming(received, "CT1")
    outcome = built.process(item, "0")
    assert (outcome.status, outcome.reason, outcome.stage) == (
        "quarantined",
        "internal-error",
        "pixels",
    )
    assert spool.outgoing_items("a") == [] and spool.outgoing_items("b") == []
    assert spool.journal_ids() == []  # no audit record of a clean copy that does not exist
    # What is quarantined is the original as received, byte for byte (the scrub stage that
    # ran before the failing one changed only the copy in memory), under its own id.
    (original,) = (spool.quarantine / "internal-error").glob("*.dcm")
    assert original.name == f"{item}.dcm"
    assert original.read_bytes() == received
    assert spool.counts()["work"].count == 0 and spool.pending() == []
    sidecar = json.loads(original.with_suffix(".json").read_text())
    assert (sidecar["reason"], sidecar["stage"]) == ("internal-error", "pixels")
    assert "model crashed" not in json.dumps(sidecar)  # the type, never a library's message


def test_a_panic_in_a_stage_quarantines_it_and_an_interrupt_does_not(spool: Spool) -> None:
    """A library written in Rust that panics raises pyo3's PanicException, a BaseException:
    the item is quarantined as any error is, not the worker killed. A KeyboardInterrupt (a
    stop) is not an item's error: it goes up, the item stays in the worker's hands."""

    class PanicException(BaseException):
        pass

    PanicException.__module__ = "pyo3_runtime"  # as pyo3 names it

    class Panics:
        name = "pixels"
        raises: type[BaseException] = PanicException

        def __call__(self, item: Item) -> None:
            raise self.raises("index out of bounds")

    built = pipeline(spool)
    stage = Panics()
    built.stages.append(stage)
    item = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
    outcome = built.process(item, "0")
    assert (outcome.status, outcome.reason, outcome.stage) == (
        "quarantined",
        "internal-error",
        "pixels",
    )
    stage.raises = KeyboardInterrupt
    item = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
    with pytest.raises(KeyboardInterrupt):
        built.process(item, "0")
    assert [p.stem for p in spool.held_by("0")] == [item]


def test_a_full_spool_defers_instead_of_quarantining(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool, "deliver", full)
    item = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
    outcome = pipeline(spool).process(item, "0")
    assert outcome.status == "deferred"
    assert spool.pending() == [item]  # back in incoming, nothing lost
    assert not [state for state in spool.counts() if state.startswith("quarantine/")]


def test_an_item_that_keeps_killing_workers_is_quarantined(spool: Spool) -> None:
    pool = WorkerPool(Config(), SECRET, spool)
    item = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
    for attempt in range(WorkerPool.MAX_CRASHES):
        assert spool.claim(item, "0") is not None
        pool._recover_worker(0)
        if attempt < WorkerPool.MAX_CRASHES - 1:
            assert spool.pending() == [item]
            pool._queued.clear()
    assert spool.pending() == []
    assert (spool.quarantine / "worker-crashed" / f"{item}.dcm").exists()


def test_a_death_counts_against_the_item_in_the_stages_not_the_one_being_written(
    spool: Spool,
) -> None:
    """Worker 0 dies while its writer thread writes H (the worker said H was prepared) and the
    stages run on P: only P's count grows, and after three deaths P is quarantined while H
    goes back to incoming/ each time, uncounted."""
    pool = WorkerPool(Config(), SECRET, spool)
    h = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
    p = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
    for _ in range(WorkerPool.MAX_CRASHES):
        assert spool.claim(h, "0") is not None and spool.claim(p, "0") is not None
        pool._prepared[0] = {h}
        pool._recover_worker(0, -9)
        pool._queued.clear()
    assert pool._crashes.get(h) is None and spool.pending() == [h]
    assert (spool.quarantine / "worker-crashed" / f"{p}.dcm").exists()


@pytest.mark.parametrize("case", ["writer failed", "nothing else held", "not said"])
def test_a_death_counts_against_every_item_when_none_other_is_to_blame(
    spool: Spool, case: str
) -> None:
    """The writing itself failed (exit code WRITER_FAILED), or the prepared item was all the
    worker held, or the worker's message had not arrived: every item held counts, so an item
    that kills workers is quarantined in the end whatever the timing."""
    pool = WorkerPool(Config(), SECRET, spool)
    h = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
    p = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
    assert spool.claim(h, "0") is not None
    if case != "nothing else held":
        assert spool.claim(p, "0") is not None
    if case != "not said":
        pool._prepared[0] = {h}
    pool._recover_worker(0, WRITER_FAILED if case == "writer failed" else -9)
    assert pool._crashes[h] == 1
    if case != "nothing else held":
        assert pool._crashes[p] == 1


def test_workers_say_when_their_models_are_loaded_and_a_dead_one_is_not_ready(
    spool: Spool,
) -> None:
    """``ready`` (the dicomnode_workers_ready gauge) counts live workers whose pipeline is
    built: none before, one after it loaded, none once it is killed, one again after the
    pool restarted it."""
    import os
    import signal

    pool = WorkerPool(Config(pipeline={"workers": 1, "cpu_priority": "idle"}), SECRET, spool)
    assert pool.ready == 0
    pool.start()
    try:
        wait_for(lambda: pool.ready == 1, 90, "the worker to load its pipeline", 0.05)
        first = pool._workers[0].pid
        assert first is not None
        # pipeline.cpu_priority idle: every thread of it in the idle class
        threads = [int(t) for t in os.listdir(f"/proc/{first}/task")]
        assert {os.sched_getscheduler(t) for t in threads} == {os.SCHED_IDLE}
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: pool.ready == 0, 90, "the killed worker to count as not ready", 0.05)
        wait_for(
            lambda: pool.ready == 1 and pool._workers[0].pid != first,
            90,
            "a restarted worker",
            0.05,
        )
    finally:
        pool.stop(10)


def test_workers_share_the_cpu_by_default(spool: Spool) -> None:
    """``pipeline.cpu_priority: nice`` (the default): the normal scheduling class, lowered by
    ``pipeline.nice``."""
    import os

    assert Config().pipeline.cpu_priority == "nice"

    config = Config(pipeline={"workers": 1, "cpu_priority": "nice", "nice": 7})
    pool = WorkerPool(config, SECRET, spool)
    pool.start()
    try:
        wait_for(lambda: pool.ready == 1, 90, "the worker to load its pipeline", 0.05)
        pid = pool._workers[0].pid
        assert pid is not None
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7
    finally:
        pool.stop(10)


def test_a_stop_ends_a_worker_still_loading_its_models_at_once(spool: Spool) -> None:
    """A worker that has not said READY holds no item: the stop kills it instead of waiting
    for its models to load (minutes on a busy host for a worker on idle CPU time)."""
    import signal

    pool = WorkerPool(Config(pipeline={"workers": 1, "cpu_priority": "idle"}), SECRET, spool)
    pool.start()
    process = pool._workers[0]
    assert pool.ready == 0
    assert pool.stop(30)
    assert process.exitcode == -signal.SIGKILL


def test_a_worker_on_idle_time_is_lifted_to_the_normal_class() -> None:
    """What the stop does to a worker that may hold an item: back to the normal class (nice
    value kept) where Linux allows it, so the item is finished at normal speed."""
    import os
    import subprocess
    import sys

    from dicomnode.limits import lift_from_idle

    code = (
        "import os, sys, time; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)); "
        "print(flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"\n"
        assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
        lifted = lift_from_idle(child.pid)
        after = os.sched_getscheduler(child.pid)
        assert lifted == (after == os.SCHED_OTHER)
        if os.geteuid() == 0:  # CAP_SYS_NICE: always allowed
            assert lifted
        assert not lift_from_idle(child.pid)  # nothing left in the idle class
    finally:
        child.kill()
        child.wait()


# -- the worker's writer thread ------------------------------------------------------------


class _SlowDisk:
    """A pipeline whose commit waits for the test: what a slow fsync looks like."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: list[str] = []

    def commit(self, cleaned: Cleaned) -> Outcome:
        self.threads.append(threading.current_thread().name)
        if cleaned.size <= _Committer.OVERLAP_BYTES:
            assert self.release.wait(10)
        return cleaned.outcome


def _cleaned(name: str, size: int = 10) -> Cleaned:
    return Cleaned(Path(name), [bytes(size)], ["a"], {}, Outcome(name, "clean"))


def test_the_next_item_is_cleaned_while_the_last_one_is_written() -> None:
    """The worker hands a clean object to its writer thread and goes on at once; the next
    one waits until the first is durable (one in memory at a time); outcomes come in order."""
    disk = _SlowDisk()
    reported: list[str] = []
    committer = _Committer(disk, lambda outcome: reported.append(outcome.id))
    committer.submit(_cleaned("first"))  # returns while the write is under way
    second = threading.Thread(target=committer.submit, args=(_cleaned("second"),))
    second.start()
    second.join(0.3)
    assert second.is_alive() and reported == []  # waits for the first to be durable
    disk.release.set()
    second.join(10)
    committer.close()
    assert reported == ["first", "second"]
    assert disk.threads == ["committer", "committer"]


def test_a_large_clean_object_is_written_by_the_worker_itself() -> None:
    """Two large objects at once could pass the worker's memory limit: one over
    OVERLAP_BYTES is written before the worker takes the next item."""
    disk = _SlowDisk()
    reported: list[str] = []
    committer = _Committer(disk, lambda outcome: reported.append(outcome.id))
    committer.submit(_cleaned("large", _Committer.OVERLAP_BYTES + 1))
    assert reported == ["large"] and disk.threads == [threading.current_thread().name]
    committer.close()


def test_an_error_on_the_writer_thread_ends_the_worker(tmp_path: Path) -> None:
    """Not a writer thread dead and a worker waiting for it forever: the worker exits, the
    pool restarts it and its work/ items go back to incoming/."""
    import subprocess
    import sys

    script = (
        "from pathlib import Path\n"
        "from dicomnode.pipeline import Cleaned, Outcome, _Committer\n"
        "class Broken:\n"
        "    def commit(self, cleaned):\n"
        "        raise RuntimeError('a bug')\n"
        "c = _Committer(Broken(), print)\n"
        "c.submit(Cleaned(Path('x'), [b'1'], ['a'], {}, Outcome('x', 'clean')))\n"
        "c.close()\n"
        "print('not reached')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 70, done.stderr
    assert "writing the clean copy of x failed" in done.stderr
    assert "not reached" not in done.stdout


def test_a_full_spool_found_by_the_writer_thread_defers(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fails while the writer thread writes: deferred, the original back in
    incoming/, as when the worker wrote it itself."""

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool, "deliver", full)
    item = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
    built = pipeline(spool)
    reported: list[Outcome] = []
    committer = _Committer(built, reported.append)
    cleaned = built.prepare(item, "0")
    assert isinstance(cleaned, Cleaned) and spool.held_by("0") == [cleaned.path]
    committer.submit(cleaned)
    committer.close()
    assert [o.status for o in reported] == ["deferred"]
    assert spool.pending() == [item] and spool.held_by("0") == []


def _slow_loop() -> bytes:
    """An ultrasound loop of 60 distinct 480 x 640 colour frames with text on every frame:
    seconds of the pixel stage's thorough check per frame on one core."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage

    rng = np.random.default_rng(3)
    base = Image.new("RGB", (640, 480))
    draw = ImageDraw.Draw(base)
    for row in range(0, 480, 24):
        draw.text((8, row), f"SMITH JOHN 1234567 {row}", fill=(255, 255, 255))
    frames = np.repeat(np.asarray(base)[None], 60, axis=0).copy()
    frames[:, 100:400, 200:600] = rng.integers(0, 160, (60, 300, 400, 1), dtype=np.uint8)
    ds = planted_dataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = "US"
    ds.NumberOfFrames, ds.Rows, ds.Columns = 60, 480, 640
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = frames.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_an_instance_that_holds_a_worker_too_long_is_quarantined_and_the_worker_replaced(
    tmp_path: Path,
) -> None:
    """``pipeline.max_item_s``: a worker still in an instance's stages after the limit (here a
    real loop the pixel stage takes a minute for; in the field also a decoder that never
    returns) is killed, the instance quarantined as too-slow (run again it would hold the
    next worker as long), and a new worker cleans what comes next."""
    config = Config(
        spool={"path": str(tmp_path / "spool")}, pipeline={"workers": 1, "max_item_s": 2}
    )
    spool = Spool(config.spool.path).create([d.name for d in config.destinations])
    outcomes: list[Outcome] = []
    pool = WorkerPool(config, SECRET, spool, outcomes.append)
    pool.start()
    try:
        wait_for(lambda: pool.ready == 1, 90, "the worker to load its pipeline", 0.05)
        first = pool._workers[0].pid
        slow = spool.write_incoming(_slow_loop(), "US1")
        pool.submit(slow)
        wait_for(lambda: outcomes, 60, "the slow instance's outcome", 0.1)
        assert [(o.id, o.status, o.reason, o.stage) for o in outcomes] == [
            (slow, "quarantined", "too-slow", "worker")
        ]
        assert (spool.quarantine / "too-slow" / f"{slow}.dcm").exists()
        assert not spool.held_by("0") and spool.pending() == []
        wait_for(
            lambda: pool.ready == 1 and pool._workers[0].pid != first, 90, "a new worker", 0.05
        )
        quick = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
        pool.submit(quick)
        wait_for(lambda: len(outcomes) == 2, 60, "the next instance's outcome", 0.1)
        assert (outcomes[1].id, outcomes[1].status) == (quick, "clean")
    finally:
        pool.stop(10)
