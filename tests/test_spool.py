"""The spool: states as folders, atomic moves, recovery from the folders alone."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from dicomnode.spool import Spool, calling_ae_of, new_id


def make(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").create(["a", "b"])


def test_ids_sort_by_arrival_and_carry_no_phi() -> None:
    first = new_id("CT SCANNER 1")
    second = new_id("CT SCANNER 1")
    assert first < second
    assert calling_ae_of(first) == "CT-SCANNER-1"
    assert "/" not in new_id("../../etc")


def test_accept_moves_and_claim_is_exclusive(tmp_path: Path) -> None:
    spool = make(tmp_path)
    received = spool.tmp / "x.dcm"
    received.write_bytes(b"data")
    item = spool.accept(received, "MODALITY")
    assert not received.exists()
    assert spool.pending() == [item]
    assert spool.claim(item, "0") is not None
    assert spool.claim(item, "1") is None
    assert spool.pending() == []


def test_deliver_links_into_every_destination(tmp_path: Path) -> None:
    spool = make(tmp_path)
    item = spool.write_incoming(b"original", "M")
    work = spool.claim(item, "0")
    assert work is not None
    spool.deliver(item, [b"clean ", bytearray(b"object")], ["a", "b"])
    spool.finish(work)
    for name in ("a", "b"):
        (path,) = spool.outgoing_items(name)
        assert path.read_bytes() == b"clean object"
    assert list(spool.tmp.iterdir()) == [] and not work.exists()
    # A redo after a crash gives the same result.
    spool.deliver(item, [b"clean object"], ["a", "b"])
    assert len(spool.outgoing_items("a")) == 1


def test_recover_requeues_work_and_empties_tmp(tmp_path: Path) -> None:
    spool = make(tmp_path)
    item = spool.write_incoming(b"x", "M")
    assert spool.claim(item, "3") is not None
    (spool.tmp / "partial.dcm").write_bytes(b"half")
    orphan = spool.quarantine / "unreadable"
    orphan.mkdir()
    (orphan / "gone.json").write_text("{}")
    done = spool.recover()
    assert done == {"requeued": 1, "tmp_removed": 1}
    assert spool.pending() == [item]
    assert list(spool.tmp.iterdir()) == [] and list(orphan.iterdir()) == []


def test_quarantine_dead_letter_and_retry(tmp_path: Path) -> None:
    spool = make(tmp_path)
    item = spool.write_incoming(b"x", "M")
    work = spool.claim(item, "0")
    assert work is not None
    spool.to_quarantine(work, "unreadable", {"stage": "read", "message": "not DICOM"})
    sidecar = json.loads((spool.quarantine / "unreadable" / f"{item}.json").read_text())
    assert sidecar["stage"] == "read" and sidecar["reason"] == "unreadable" and "time" in sidecar
    assert spool.counts()["quarantine/unreadable"].count == 1
    assert spool.requeue_quarantined() == 1 and spool.pending() == [item]

    out = spool.outgoing / "a" / "y.dcm"
    out.write_bytes(b"clean")
    os.utime(out, (time.time() - 1000, time.time() - 1000))
    spool.to_dead_letter(out, "a", {"reason": "refused"})
    assert spool.counts()["dead-letter/a"].count == 1
    assert spool.requeue_dead_letters("a") == 1
    (back,) = spool.outgoing_items("a")
    assert time.time() - back.stat().st_mtime < 60  # its age starts again
    assert not list((spool.dead_letter / "a").iterdir())


def test_retention_of_sent_objects(tmp_path: Path) -> None:
    spool = make(tmp_path)
    out = spool.outgoing / "a" / "y.dcm"
    out.write_bytes(b"clean")
    spool.delivered(out, "a", keep_days=1)
    kept = spool.sent / "a" / "y.dcm"
    assert kept.exists()
    assert spool.expire_sent(1) == 0
    os.utime(kept, (time.time() - 2 * 86400,) * 2)
    assert spool.expire_sent(1) == 1 and not kept.exists()


def test_start_writeback_closes_what_it_opens_and_changes_no_data(tmp_path: Path) -> None:
    """The write-out is started on a thread of its own, on a duplicate of the descriptor: the
    caller may close its own at once, the duplicates are closed once used, the data is as
    written; and a forked child (the pipeline's workers are started by fork on some setups)
    starts its own thread rather than queueing to its parent's."""
    from dicomnode import durable

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    data = os.urandom(1 << 20)
    path = tmp_path / "received.dcm"
    durable.start_writeback(os.open(os.devnull, os.O_RDONLY))  # the thread is up
    time.sleep(0.1)
    before = open_fds()
    for _ in range(20):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, data)
        durable.start_writeback(fd)
        os.close(fd)
    deadline = time.monotonic() + 10
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_fds() == before
    assert path.read_bytes() == data
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's exit status is the assertion
        fd = os.open(path, os.O_RDONLY)
        durable.start_writeback(fd)
        os.close(fd)
        alive = any(t.name == "dicomnode-writeback" for t in threading.enumerate())
        os._exit(0 if alive else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_start_writeback_piles_up_no_descriptors_behind_a_slow_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that falls behind (the call blocks) costs at most a bounded queue of
    duplicated descriptors: the rest are skipped (the fdatasync does their work)."""
    from dicomnode import durable

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    released = threading.Event()
    real = durable._SYNC_RANGE
    assert real is not None

    def slow(fd: int, offset: int, nbytes: int, flags: int) -> int:
        released.wait(10)
        return real(fd, offset, nbytes, flags)

    durable.start_writeback(os.open(os.devnull, os.O_RDONLY))  # the thread is up
    time.sleep(0.1)
    before = open_fds()
    monkeypatch.setattr(durable, "_SYNC_RANGE", slow)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(1000):
            durable.start_writeback(fd)
        assert open_fds() <= before + 1 + durable._WRITEBACK_WAITING + 1
    finally:
        released.set()
        os.close(fd)
    deadline = time.monotonic() + 10
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_fds() == before
