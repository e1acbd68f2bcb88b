"""The spool: states as folders, atomic moves, recovery from the folders alone."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

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
