"""Delivery: batches, fallbacks between transfer syntaxes, back-off, dead letters."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import DicomDestination, FolderDestination, RetryConfig
from dicomnode.forward import DicomSender, FolderSender, Forwarder, Result, echo
from dicomnode.spool import Spool
from tests.conftest import PYDICOM_FILES
from tests.peers import Storescp, free_port, wait_for

pytestmark = pytest.mark.peers


class FlakySender:
    """Fails with a retryable error ``failures`` times, then delivers; refuses 'bad' files."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[int] = []

    def send(self, paths: list[Path]) -> list[Result]:
        self.calls.append(len(paths))
        if self.failures > 0:
            self.failures -= 1
            return [Result("retry", "destination down") for _ in paths]
        return [
            Result("rejected", "refused") if "bad" in p.name else Result("delivered") for p in paths
        ]


def queue(spool: Spool, names: list[str]) -> None:
    for name in names:
        (spool.outgoing / "flaky" / f"{name}.dcm").write_bytes(b"clean")


def test_backs_off_then_delivers_and_dead_letters_refusals(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").create(["flaky"])
    queue(spool, ["a1", "a2", "bad3"])
    sender = FlakySender(failures=3)
    events: list[tuple[str, str]] = []
    forwarder = Forwarder(
        spool,
        sender,
        retry=RetryConfig(initial_delay_s=0.05, max_delay_s=0.2),
        batch_size=2,
        on_result=lambda d, p, r, seconds, size: events.append((p.stem, r.status)),
    )
    forwarder.start()
    try:
        wait_for(lambda: not spool.outgoing_items("flaky"), 20, "the queue to empty")
    finally:
        forwarder.stop()
        forwarder.join(5)
    assert sender.calls[:3] == [2, 2, 2] and len(sender.calls) >= 5  # batches of 2, retried
    assert ("a1", "delivered") in events and ("bad3", "rejected") in events
    assert [p.name for p in (spool.dead_letter / "flaky").glob("*.dcm")] == ["bad3.dcm"]
    assert (spool.dead_letter / "flaky" / "bad3.json").exists()


def test_undelivered_past_the_age_limit_goes_to_dead_letter(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").create(["flaky"])
    queue(spool, ["old"])
    old = spool.outgoing / "flaky" / "old.dcm"
    os.utime(old, (time.time() - 100, time.time() - 100))
    forwarder = Forwarder(
        spool,
        FlakySender(failures=10**6),
        retry=RetryConfig(initial_delay_s=0.05, dead_letter_after_s=50),
    )
    forwarder.start()
    try:
        wait_for(lambda: (spool.dead_letter / "flaky" / "old.dcm").exists(), 10, "dead letter")
    finally:
        forwarder.stop()
    assert "not delivered within 50 s" in (spool.dead_letter / "flaky" / "old.json").read_text()


def test_folder_destination_writes_a_tree_without_temporary_files(tmp_path: Path) -> None:
    sender = FolderSender(FolderDestination(name="f", path=tmp_path / "out"))
    source = tmp_path / "x.dcm"
    source.write_bytes((PYDICOM_FILES / "CT_small.dcm").read_bytes())
    assert sender.send([source]) == [Result("delivered")]
    (written,) = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    ds = pydicom.dcmread(written)
    assert written.name == f"{ds.SOPInstanceUID}.dcm"
    assert written.parent.name == ds.SeriesInstanceUID
    blocked = FolderSender(FolderDestination(name="f", path=source))  # a file, not a folder
    assert blocked.send([source])[0].status == "retry"


def test_dicom_destination_falls_back_to_an_accepted_syntax(tmp_path: Path) -> None:
    scp = Storescp(tmp_path, accept_all=False).start()  # Implicit VR Little Endian only
    try:
        config = DicomDestination(name="pacs", ae_title=scp.aet, host="127.0.0.1", port=scp.port)
        sender = DicomSender(config, "DICOMNODE")
        files = [
            PYDICOM_FILES / n
            for n in ("CT_small.dcm", "MR_small_implicit.dcm", "image_dfl.dcm", "JPEG2000.dcm")
        ]
        results = sender.send(files)
        assert [r.status for r in results] == ["delivered", "delivered", "delivered", "rejected"]
        assert "accepts no transfer syntax" in results[3].reason
        assert len(scp.files()) == 3
        for path in scp.files():  # all re-encoded as the destination asked, and complete
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
            assert len(ds.PixelData) > 0
        assert echo(config, "DICOMNODE") is None
    finally:
        scp.stop()


def test_dicom_destination_down_is_a_retry(tmp_path: Path) -> None:
    config = DicomDestination(
        name="pacs", ae_title="NOBODY", host="127.0.0.1", port=free_port(), timeout_s=2
    )
    results = DicomSender(config, "DICOMNODE").send([PYDICOM_FILES / "CT_small.dcm"])
    assert results[0].status == "retry" and "could not be reached" in results[0].reason
    assert echo(config, "DICOMNODE", timeout=2) is not None
