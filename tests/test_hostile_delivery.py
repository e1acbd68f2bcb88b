"""Hostile input at delivery: no object a destination cannot take holds back the others; what
the node writes is private whatever the umask; every delivered item has one `cleaned` line,
even across `kill -9`."""

from __future__ import annotations

import contextlib
import json
import os
import random
import ssl
import stat
import subprocess
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification

from dicomnode.audit import AuditTrail
from dicomnode.config import (
    Config,
    DicomDestination,
    FolderDestination,
    PixelConfig,
    RetryConfig,
)
from dicomnode.durable import Access
from dicomnode.forward import (
    MAX_CONTEXTS,
    Delivery,
    DicomSender,
    FolderSender,
    Forwarder,
    Result,
    _groups,
    _Meta,
    classify_status,
)
from dicomnode.pipeline import Pipeline
from dicomnode.scrub.pseudonym import Pseudonymizer
from dicomnode.spool import Spool
from tests.conftest import SECRET, require_tool
from tests.peers import (
    PEER_ENV,
    NodeProcess,
    acknowledged,
    free_port,
    make_study,
    running,
    storescu,
    wait_for,
    wait_listening,
)
from tests.phi import planted_dataset, to_bytes

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
# Retry settings of a production node: a destination back-off would show as seconds of delay.
PRODUCTION_RETRY = RetryConfig(initial_delay_s=2, max_delay_s=300)


# -- helpers -------------------------------------------------------------------------------


def clean_object(
    path: Path,
    *,
    sop_uid: str | None = None,
    patient: str = "DN0001",
    sop_class: str = CT,
) -> str:
    """A small clean object (as the pipeline writes them) at ``path``; its SOP Instance UID."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long UIDs on purpose
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid or generate_uid(prefix="2.25.")
        ds.PatientID = patient
        ds.PatientName = patient
        ds.StudyInstanceUID = "2.25.1"
        ds.SeriesInstanceUID = "2.25.1.1"
        ds.Modality = "CT" if sop_class == CT else "MR"
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.SamplesPerPixel = 1
        ds.PixelRepresentation = 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes(16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed in, as the pipeline does: a forwarder already running
        # must never read half a file (it would be refused for good as unreadable).
        part = path.with_name(f".{path.name}.part")
        ds.save_as(part, enforce_file_format=True)
        os.replace(part, path)
        return str(ds.SOPInstanceUID)


def large_object(path: Path, rows: int, columns: int, pattern: bool = False) -> Dataset:
    """A clean 16-bit object of ``rows`` x ``columns`` at ``path`` (zeros, or ``pattern``:
    every byte value in turn, so that a reordered or lost piece shows); returns it."""
    clean_object(path)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    size = rows * columns * 2
    ds.PixelData = bytes(range(256)) * (size // 256) if pattern else bytes(size)
    ds.save_as(path, enforce_file_format=True)
    return ds


def queue_objects(spool: Spool, destination: str, count: int, start: int = 1) -> list[str]:
    """``count`` ordinary clean objects in ``outgoing/<destination>/``, arrival-ordered."""
    uids = []
    for n in range(start, start + count):
        name = f"{time.time_ns():020d}_T_{n:08x}.dcm"
        uids.append(clean_object(spool.outgoing / destination / name))
    return uids


def queue_first(spool: Spool, destination: str, **fields: Any) -> Path:
    """One object queued before everything else (the oldest: it is sent first)."""
    path = spool.outgoing / destination / f"{0:020d}_T_bad.dcm"
    clean_object(path, **fields)
    return path


@contextlib.contextmanager
def forwarding(forwarder: Forwarder) -> Iterator[Forwarder]:
    forwarder.start()
    try:
        yield forwarder
    finally:
        forwarder.stop()
        forwarder.join(10)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes_under(root: Path) -> tuple[set[int], set[int]]:
    """(file modes, folder modes) of everything under ``root``, itself included."""
    files, folders = set(), {mode(root)}
    for path in root.rglob("*"):
        (folders if path.is_dir() else files).add(mode(path))
    return files, folders


class StoreSCP:
    """A pynetdicom Storage SCP in this process: refuses some SOP Instances with a status,
    or answers them never (``hang``); counts associations and keeps what it stored."""

    def __init__(
        self,
        refuse: dict[str, int] | None = None,
        hang: set[str] | None = None,
        abort_once: set[str] | None = None,
        stall: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.ssl_context = ssl_context  # a TLS server with it
        self.stall = stall  # stop reading at the first data set PDU (a peer that hangs)
        self.refuse = refuse or {}
        self.hang = hang or set()
        self.abort_once = abort_once or set()  # abort the association the first time
        self.stored: dict[str, Dataset] = {}
        self.associations = 0
        self.port = free_port()
        self.ae = AE(ae_title="HOSTILE")
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.ae.add_supported_context(Verification)
        self.ae.maximum_associations = 20
        self._release = threading.Event()
        self._server: Any = None

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in self.abort_once:
            self.abort_once.discard(uid)
            event.assoc.abort()
            return 0xA700
        if uid in self.hang:
            self._release.wait(30)  # longer than the sender's timeout: no answer
            return 0xA700
        if uid in self.refuse:
            return self.refuse[uid]
        self.stored[uid] = event.dataset
        return 0x0000

    def _accepted(self, event: evt.Event) -> None:
        self.associations += 1

    def _pdu(self, event: evt.Event) -> None:
        if self.stall and isinstance(event.pdu, P_DATA_TF):
            self._release.wait(30)  # the DUL thread reads nothing more meanwhile

    def __enter__(self) -> StoreSCP:
        self._server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            ssl_context=self.ssl_context,
            evt_handlers=[
                (evt.EVT_C_STORE, self._store),
                (evt.EVT_ACCEPTED, self._accepted),
                (evt.EVT_PDU_RECV, self._pdu),
            ],
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()

    def destination(self, **extra: Any) -> DicomDestination:
        return DicomDestination.model_validate(
            {"name": "pacs", "ae_title": "HOSTILE", "host": "127.0.0.1", "port": self.port} | extra
        )

    def node_destination(self, **extra: Any) -> dict[str, Any]:
        return self.destination(**extra).model_dump(mode="json")


def audit_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- the outcome vocabulary ----------------------------------------------------------------


def test_status_codes_map_to_one_outcome_each() -> None:
    delivered = (0x0000, 0x0111, 0xB000, 0xB006, 0xB007)
    retry = (0xA700, 0xA7FF, 0x0213, 0x0124)
    rejected = (0xA900, 0xA9FF, 0xC000, 0xC211, 0xCFFF, 0x0122, 0x0117)
    assert {classify_status(c) for c in delivered} == {Delivery.DELIVERED}
    assert {classify_status(c) for c in retry} == {Delivery.RETRY}
    assert {classify_status(c) for c in rejected} == {Delivery.REJECTED}
    assert classify_status(0x0110) is Delivery.FAILED
    assert Result("retry").status is Delivery.RETRY  # strings are accepted at the edge


def test_a_batch_needing_more_than_128_contexts_is_cut_into_associations() -> None:
    metas = {i: _Meta(f"1.2.3.{i}", ExplicitVRLittleEndian) for i in range(300)}
    groups = _groups(metas)
    assert [i for g in groups for i in g] == list(range(300))  # all, in order
    for group in groups:
        pairs = {c for i in group for c in metas[i].contexts()}
        assert len(pairs) + len({metas[i].sop_class for i in group}) <= MAX_CONTEXTS


# -- folder destination --------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_folder_bad_paths_are_rejected_one_by_one(tmp_path: Path) -> None:
    root = tmp_path / "out"
    sender = FolderSender(FolderDestination(name="f", path=root))
    made = tmp_path / "in"
    long_uid = clean_object(made / "long.dcm", sop_uid="2.25." + "1" * 300)
    clean_object(made / "dotdot.dcm", patient="..")
    clean_object(made / "staging.dcm", patient=FolderSender.STAGING)
    clean_object(made / "file.dcm", patient="TAKEN")
    (root / "TAKEN").write_bytes(b"a file where a folder should be")  # ENOTDIR
    folder_uid = clean_object(made / "isdir.dcm")
    (root / "DN0001" / "2.25.1" / "2.25.1.1" / f"{folder_uid}.dcm").mkdir(parents=True)  # EISDIR
    good = clean_object(made / "good.dcm")
    (made / "garbage.dcm").write_bytes(b"not DICOM")
    names = ["long", "dotdot", "staging", "file", "isdir", "good", "garbage"]
    results = sender.send([made / f"{n}.dcm" for n in names])
    by_name = dict(zip(names, results, strict=True))
    assert by_name["good"].status is Delivery.DELIVERED
    for name in ("long", "dotdot", "staging", "file", "isdir", "garbage"):
        assert by_name[name].status is Delivery.REJECTED, (name, by_name[name])
    assert "SOPInstanceUID" in by_name["long"].reason
    assert "ENAMETOOLONG" in by_name["long"].reason
    assert "PatientID" in by_name["dotdot"].reason
    assert "ENOTDIR" in by_name["file"].reason and "EISDIR" in by_name["isdir"].reason
    assert long_uid not in by_name["long"].reason  # reasons carry no value of the object
    assert not any(root.parent.glob("*.dcm")), "something escaped the destination folder"
    assert (root / "DN0001" / "2.25.1" / "2.25.1.1" / f"{good}.dcm").is_file()


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_folder_name_too_long_for_the_file_system_itself(tmp_path: Path) -> None:
    """The file system's own ENAMETOOLONG, past our checks, is also this object's fault."""
    sender = FolderSender(FolderDestination(name="f", path=tmp_path / "out"))
    sender.name_max = sender.path_max = 10**6  # as if the limits were not known
    clean_object(tmp_path / "long.dcm", sop_uid="2.25." + "7" * 400)
    (result,) = sender.send([tmp_path / "long.dcm"])
    assert result.status is Delivery.REJECTED and "ENAMETOOLONG" in result.reason


def test_folder_root_unusable_is_the_destination(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.write_bytes(b"a file, not a folder")
    clean_object(tmp_path / "a.dcm")
    (result,) = FolderSender(FolderDestination(name="f", path=root)).send([tmp_path / "a.dcm"])
    assert result.status is Delivery.RETRY and "not usable" in result.reason


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_an_over_long_name_does_not_hold_back_the_folder_destination(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").create(["f"])
    bad = queue_first(spool, "f", sop_uid="2.25." + "9" * 300)
    uids = queue_objects(spool, "f", 30)
    events: list[tuple[str, str, str]] = []
    forwarder = Forwarder(
        spool,
        FolderSender(FolderDestination(name="f", path=tmp_path / "out")),
        retry=PRODUCTION_RETRY,
        batch_size=10,
        on_result=lambda d, p, r, s, n: events.append((p.stem, r.status.value, r.reason)),
    )
    started = time.monotonic()
    with forwarding(forwarder):
        wait_for(lambda: not spool.outgoing_items("f"), 10, "the queue to drain")
        # 30 more arrive behind it later: no back-off is in the way.
        late = queue_objects(spool, "f", 30, start=100)
        forwarder.wake()
        wait_for(lambda: not spool.outgoing_items("f"), 5, "the late ones")
    assert time.monotonic() - started < 8
    written = {p.stem for p in (tmp_path / "out").rglob("*.dcm")}
    assert written == set(uids) | set(late)
    sidecar = json.loads((spool.dead_letter / "f" / f"{bad.stem}.json").read_text())
    assert sidecar["outcome"] == "rejected"
    assert "SOPInstanceUID" in sidecar["reason"] and "ENAMETOOLONG" in sidecar["reason"]
    assert (bad.stem, "rejected", sidecar["reason"]) in events
    assert forwarder.last_error is None and forwarder._failures == 0


# -- DICOM destination ---------------------------------------------------------------------


def test_a_forwarders_sender_keeps_its_association_between_batches(tmp_path: Path) -> None:
    """With ``hold`` (a forwarder's sender), batches that follow each other share one
    association; it is released once idle ``keep_open_s``; one the destination closed while
    idle, or one that did not propose a batch's SOP class, is replaced by a new association,
    and every object is delivered. Without ``hold``, each batch's association is released."""
    files = [tmp_path / f"{n}.dcm" for n in range(8)]
    uids = [clean_object(f) for f in files[:7]]
    uids.append(clean_object(files[7], sop_class=MR))
    delivered = [Delivery.DELIVERED] * 2
    with StoreSCP() as scp:
        sender = DicomSender(scp.destination(keep_open_s=0.5, timeout_s=3), "DICOMNODE", hold=True)
        assert [r.status for r in sender.send(files[0:2])] == delivered
        assert [r.status for r in sender.send(files[2:4])] == delivered
        assert scp.associations == 1 and len(scp._server.active_associations) == 1
        sender.release_idle()  # not idle long enough: kept
        assert len(scp._server.active_associations) == 1

        def released() -> bool:
            sender.release_idle()
            return not scp._server.active_associations

        wait_for(released, 5, "the idle association to be released")
        assert [r.status for r in sender.send(files[4:5])] == delivered[:1]
        assert scp.associations == 2
        for assoc in scp._server.active_associations:  # the destination's own idle timeout
            assoc.abort()
        wait_for(lambda: not scp._server.active_associations, 5, "the abort")
        assert [r.status for r in sender.send(files[5:7])] == delivered
        assert scp.associations == 3
        assert [r.status for r in sender.send(files[7:8])] == delivered[:1]  # MR: not proposed
        assert scp.associations == 4
        # Gone just as the next batch starts on it (the destination's idle timeout racing the
        # batch): the batch goes again over a new association.
        assert [r.status for r in sender.send(files[2:3])] == delivered[:1]  # CT again
        assert scp.associations == 5
        scp.abort_once.add(uids[0])
        assert [r.status for r in sender.send(files[0:2])] == delivered
        assert scp.associations == 6
        sender.close()
        wait_for(lambda: not scp._server.active_associations, 5, "the release at close")
        assert set(scp.stored) == set(uids)
        unheld = DicomSender(scp.destination(keep_open_s=0.5), "DICOMNODE")
        unheld.send(files[0:1])
        unheld.send(files[1:2])
        assert scp.associations == 8
        wait_for(lambda: not scp._server.active_associations, 5, "released after each batch")


def test_an_unexpected_error_mid_batch_leaves_no_association_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that one object triggers while its batch is sent reaches the forwarder (which
    then sends the objects one by one); the association is aborted, not held or leaked."""
    files = [tmp_path / f"{n}.dcm" for n in range(2)]
    for f in files:
        clean_object(f)
    with StoreSCP() as scp:
        sender = DicomSender(scp.destination(keep_open_s=30), "DICOMNODE", hold=True)
        assert [r.status for r in sender.send(files[:1])] == [Delivery.DELIVERED]

        def broken(*args: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(sender, "_store", broken)
        with pytest.raises(RuntimeError):
            sender.send(files[1:])
        assert sender._held is None
        wait_for(lambda: not scp._server.active_associations, 5, "the abort")


def test_a_peer_that_drops_the_association_mid_batch_is_not_waited_for(tmp_path: Path) -> None:
    """The destination aborts while an object is being stored: that object failed, and the
    rest of the batch is "association lost" at once (to be retried), not each sent over the
    dead association to wait out the DIMSE timeout ("no response")."""
    files = [tmp_path / f"{n}.dcm" for n in range(3)]
    uids = [clean_object(f) for f in files]
    with StoreSCP(abort_once={uids[0]}) as scp:
        results = DicomSender(scp.destination(timeout_s=20), "DICOMNODE").send(files)
    assert [r.status for r in results] == [Delivery.FAILED, Delivery.RETRY, Delivery.RETRY]
    assert "no response" in results[0].reason
    assert [r.reason for r in results[1:]] == ["association lost"] * 2


def test_a_peer_that_stops_reading_mid_object_is_given_up_on(tmp_path: Path) -> None:
    """The destination stops reading in the middle of a 48 MB object (its buffers fill and
    the forwarder's writes block): after the destination's timeout without progress the
    object has failed, the connection is closed, and the sender is free for the next batch."""
    path = tmp_path / "large.dcm"
    large_object(path, 4096, 4096)
    with StoreSCP(stall=True) as scp:
        sender = DicomSender(scp.destination(timeout_s=1), "DICOMNODE")
        started = time.monotonic()
        results = sender.send([path])
        took = time.monotonic() - started
        sender.close()
    assert [r.status for r in results] == [Delivery.FAILED]
    assert "sending failed (TimeoutError)" in results[0].reason
    assert took < 15


def test_a_peer_without_a_pdu_limit_gets_each_object_in_one_pdu(tmp_path: Path) -> None:
    """A destination that offers no maximum PDU (0): a 3 MB object goes out as one PDU,
    written as it is, and arrives whole."""
    path = tmp_path / "large.dcm"
    ds = large_object(path, 1024, 1536, pattern=True)
    uid = str(ds.SOPInstanceUID)
    scp = StoreSCP()
    scp.ae.maximum_pdu_size = 0
    with scp:
        results = DicomSender(scp.destination(timeout_s=10), "DICOMNODE").send([path])
    assert [r.status for r in results] == [Delivery.DELIVERED]
    assert scp.stored[uid].PixelData == ds.PixelData


def test_a_refused_object_does_not_stop_its_batch(tmp_path: Path) -> None:
    files = [tmp_path / f"{n}.dcm" for n in range(10)]
    uids = [clean_object(f) for f in files]
    refuse = {uids[0]: 0xC000, uids[4]: 0xA900, uids[7]: 0x0122}
    with StoreSCP(refuse=refuse) as scp:
        results = DicomSender(scp.destination(), "DICOMNODE").send(files)
        assert scp.associations == 1  # one association for the whole batch
    statuses = [r.status for r in results]
    assert statuses == [Delivery.REJECTED if u in refuse else Delivery.DELIVERED for u in uids], (
        results
    )
    assert "refused the object (0xC000)" in results[0].reason
    assert set(scp.stored) == set(uids) - set(refuse)


def test_a_refused_object_does_not_hold_back_the_destination(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").create(["pacs"])
    bad_uid = generate_uid(prefix="2.25.")
    bad = queue_first(spool, "pacs", sop_uid=bad_uid)
    uids = queue_objects(spool, "pacs", 40)
    with StoreSCP(refuse={bad_uid: 0xC000}) as scp:
        forwarder = Forwarder(
            spool, DicomSender(scp.destination(), "DICOMNODE"), retry=PRODUCTION_RETRY
        )
        with forwarding(forwarder):
            wait_for(lambda: set(scp.stored) == set(uids), 10, "the others to arrive")
            late = queue_objects(spool, "pacs", 10, start=100)
            forwarder.wake()
            wait_for(lambda: set(late) <= set(scp.stored), 5, "the late ones")
    sidecar = json.loads((spool.dead_letter / "pacs" / f"{bad.stem}.json").read_text())
    assert sidecar["outcome"] == "rejected" and "0xC000" in sidecar["reason"]
    assert forwarder._failures == 0


def test_an_object_the_peer_never_answers_is_set_aside_then_dead_lettered(
    tmp_path: Path,
) -> None:
    """The peer hangs on one object (no response: the association is aborted each time):
    it is sent last from then on, the others arrive, and after three failures it is a dead
    letter saying so."""
    spool = Spool(tmp_path / "spool").create(["pacs"])
    bad_uid = generate_uid(prefix="2.25.")
    bad = queue_first(spool, "pacs", sop_uid=bad_uid)
    uids = queue_objects(spool, "pacs", 20)
    with StoreSCP(hang={bad_uid}) as scp:
        forwarder = Forwarder(
            spool,
            DicomSender(scp.destination(timeout_s=1), "DICOMNODE"),
            retry=RetryConfig(initial_delay_s=0.2, max_delay_s=1, item_attempts=3),
        )
        with forwarding(forwarder):
            wait_for(lambda: set(scp.stored) == set(uids), 15, "the others to arrive")
            wait_for(lambda: not spool.outgoing_items("pacs"), 20, "the dead letter")
    sidecar = json.loads((spool.dead_letter / "pacs" / f"{bad.stem}.json").read_text())
    assert sidecar["outcome"] == "failed"
    assert "failed 3 times" in sidecar["reason"] and "no response" in sidecar["reason"]


@pytest.mark.peers
def test_storescp_without_the_sop_class_rejects_only_those_objects(tmp_path: Path) -> None:
    """dcmtk's storescp configured for CT only: the MR object has no presentation context."""
    exe = require_tool("storescp")
    config = tmp_path / "ct-only.cfg"
    config.write_text(
        "[[TransferSyntaxes]]\n[Uncompressed]\nTransferSyntax1 = LocalEndianExplicit\n"
        "TransferSyntax2 = LittleEndianImplicit\n"
        "[[PresentationContexts]]\n[CTOnly]\n"
        "PresentationContext1 = CTImageStorage\\Uncompressed\n"
        "PresentationContext2 = VerificationSOPClass\\Uncompressed\n"
        "[[Profiles]]\n[CTOnly]\nPresentationContexts = CTOnly\n"
    )
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-aet", "CTONLY", "-xf", str(config), "CTOnly", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=PEER_ENV,
    )
    try:
        wait_listening(proc, port, "storescp")
        files = [tmp_path / f"{n}.dcm" for n in range(5)]
        for n, path in enumerate(files):
            clean_object(path, sop_class=MR if n in (1, 3) else CT)
        destination = DicomDestination(name="pacs", ae_title="CTONLY", host="127.0.0.1", port=port)
        results = DicomSender(destination, "DICOMNODE").send(files)
    finally:
        proc.terminate()
        proc.wait(10)
    assert [r.status.value for r in results] == [
        "delivered",
        "rejected",
        "delivered",
        "rejected",
        "delivered",
    ]
    assert "accepts no transfer syntax for SOP class " + MR in results[1].reason
    assert len(list(out.iterdir())) == 3


# -- file modes ----------------------------------------------------------------------------


def test_spool_is_private_whatever_the_umask(tmp_path: Path) -> None:
    with umask(0o022):
        spool = Spool(tmp_path / "spool").create(["a"])
        received = spool.tmp / "r.dcm"
        received.write_bytes(to_bytes(planted_dataset()))  # as a listener might write it
        os.chmod(received, 0o644)
        first = spool.accept(received, "CT")
        second = spool.write_incoming(to_bytes(planted_dataset()), "CT")
        pipeline = Pipeline.from_config(Config(pixels=PixelConfig(enabled=False)), spool, SECRET)
        pipeline.destinations = ["a"]
        assert pipeline.process(first, "0").status == "clean"
        work = spool.claim(second, "1")
        assert work is not None
        spool.to_quarantine(work, "unreadable", {"stage": "read"})
        (out,) = spool.outgoing_items("a")
        spool.to_dead_letter(out, "a", {"reason": "test"})
        spool.write_incoming(b"x", "CT")
        assert list(spool.journal.iterdir())  # the audit record
        files, folders = modes_under(spool.root)
        assert files == {0o600} and folders == {0o700}
        # A spool made by an older version (0755 folders) is tightened at start-up.
        os.chmod(spool.incoming, 0o755)
        Spool(spool.root).create(["a"], access=Access.PRIVATE)
        assert mode(spool.incoming) == 0o700
        # Group access when the administrator asks for it; workers follow the root folder.
        Spool(spool.root).create(["a"], access=Access.GROUP)
        worker_side = Spool(spool.root)
        worker_side.write_incoming(b"y", "CT")
        assert mode(spool.root) == 0o750 and mode(spool.quarantine / "unreadable") == 0o750
        assert {mode(p) for p in spool.incoming.iterdir()} >= {0o640}


def test_folder_destination_modes_are_private_or_as_configured(tmp_path: Path) -> None:
    source = tmp_path / "x.dcm"
    clean_object(source)
    os.chmod(source, 0o600)  # as in the spool: a hard link keeps it
    with umask(0o022):
        FolderSender(FolderDestination(name="f", path=tmp_path / "private")).send([source])
        files, folders = modes_under(tmp_path / "private")
        assert files == {0o600} and folders == {0o700}
        group = FolderDestination(
            name="g",
            path=tmp_path / "group",
            mode=Access.GROUP,
            group=__import__("grp").getgrgid(os.getgid()).gr_name,
        )
        FolderSender(group).send([source])
        files, folders = modes_under(tmp_path / "group")
        staging = tmp_path / "group" / FolderSender.STAGING
        assert files == {0o640} and folders - {mode(staging)} == {0o750}
        assert mode(staging) == 0o700
    assert mode(source) == 0o600  # copied, not linked: the spool's file kept its mode


def test_audit_file_and_rotations_are_private(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    with umask(0o022):
        trail = AuditTrail(path, max_mb=1, backups=2)
        for n in range(2500):  # about 2.5 MB: two rotations
            trail.write("cleaned", id=f"id{n}", pad="x" * 1000)
        trail.close()
    assert Path(f"{path}.2").exists()
    assert {mode(p) for p in path.parent.iterdir()} == {0o600}
    assert mode(path.parent) == 0o700
    # After a crash, the lines in doubt are in the current file or the last rotation.
    found = AuditTrail(path).written("cleaned", ["id2499", "id1499", "id1", "nope"])
    assert found == {"id2499", "id1499"}


def test_the_systemd_unit_and_the_image_agree() -> None:
    root = Path(__file__).resolve().parent.parent
    unit = (root / "systemd" / "dicomnode.service").read_text()
    assert "UMask=0077" in unit and "StateDirectoryMode=0700" in unit
    dockerfile = (root / "docker" / "Dockerfile").read_text()
    assert "umask 0077" in dockerfile and "-m 0700" in dockerfile


# -- the node, end to end ------------------------------------------------------------------


@pytest.mark.peers
def test_node_dead_letters_a_refused_instance_and_delivers_the_rest(tmp_path: Path) -> None:
    """storescu -> node -> a PACS that refuses one instance with 0xC000: the other instances
    arrive within seconds; the refused one is a dead letter with its reason, in the sidecar
    and the audit trail. The node runs with umask 022: what it writes is private anyway."""
    study = make_study(tmp_path / "study", series=2, per_series=10)
    bad_uid = Pseudonymizer(SECRET).uid(str(study[0].SOPInstanceUID))
    with StoreSCP(refuse={bad_uid: 0xC000}) as scp, umask(0o022):
        node = NodeProcess(
            tmp_path / "node",
            destinations=[scp.node_destination()],
            pixels={"enabled": False},
        )
        with running(node):
            started = time.monotonic()
            sent = storescu(node.port, tmp_path / "study")
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: len(scp.stored) == len(study) - 1, 20, "the 19 others")
            assert time.monotonic() - started < 20
            wait_for(lambda: node.count("dead-letter") == 1, 10, "the dead letter")
            node.wait_idle(10)
    (sidecar,) = (node.spool / "dead-letter" / "pacs").glob("*.json")
    info = json.loads(sidecar.read_text())
    assert info["outcome"] == "rejected" and "refused the object (0xC000)" in info["reason"]
    events = audit_events(node.audit)
    (dead,) = [e for e in events if e["event"] == "dead-lettered"]
    assert dead["id"] == sidecar.stem and "0xC000" in dead["reason"]
    cleaned = Counter(e["id"] for e in events if e["event"] == "cleaned")
    delivered = {e["id"] for e in events if e["event"] == "delivered"}
    assert len(delivered) == len(study) - 1
    assert all(cleaned[i] == 1 for i in delivered | {dead["id"]})
    files, folders = modes_under(node.spool)
    assert files <= {0o600} and folders == {0o700}
    assert {mode(p) for p in node.audit.parent.iterdir()} == {0o600}
    assert mode(node.audit.parent) == 0o700


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
@pytest.mark.peers
def test_node_folder_destination_dead_letters_an_over_long_name(tmp_path: Path) -> None:
    """The tester's case: a site rule keeps PatientID, one sender's PatientID is 300 bytes.
    That instance is a dead letter at once, with its reason; the instances after it arrive
    within seconds (no back-off of the destination)."""
    make_study(tmp_path / "bad", series=1, per_series=1, patient="P" * 300)
    study = make_study(tmp_path / "study", series=2, per_series=10)
    site = tmp_path / "site.yaml"
    site.write_text("rules:\n  - keyword: PatientID\n    action: keep\n")
    node = NodeProcess(
        tmp_path / "node", pixels={"enabled": False}, scrub={"site_rules": str(site)}
    )
    with umask(0o022), running(node):
        assert storescu(node.port, tmp_path / "bad").returncode == 0
        wait_for(lambda: node.count("dead-letter") == 1, 15, "the dead letter")
        started = time.monotonic()
        assert storescu(node.port, tmp_path / "study").returncode == 0
        wait_for(lambda: len(list(node.out.rglob("*.dcm"))) == len(study), 10, "the others")
        assert time.monotonic() - started < 10
    (sidecar,) = (node.spool / "dead-letter" / "folder").glob("*.json")
    info = json.loads(sidecar.read_text())
    assert info["outcome"] == "rejected"
    assert "PatientID makes a 300-byte file name" in info["reason"]
    events = audit_events(node.audit)
    (dead,) = [e for e in events if e["event"] == "dead-lettered"]
    assert dead["id"] == sidecar.stem and "ENAMETOOLONG" in dead["reason"]
    assert "retry 1 in" not in node.log.read_text()  # the destination never backed off
    files, folders = modes_under(node.out)
    assert files == {0o600} and folders == {0o700}  # the node ran with umask 022


@pytest.mark.peers
def test_start_up_writes_each_missing_cleaned_line_once(tmp_path: Path) -> None:
    """The spool as a kill -9 leaves it, made on purpose; start-up completes the trail."""
    node = NodeProcess(tmp_path / "node", pixels={"enabled": False})
    config = Config(pixels=PixelConfig(enabled=False))
    spool = Spool(node.spool).create(["folder"])
    pipeline = Pipeline.from_config(config, spool, SECRET)
    pipeline.destinations = ["folder"]
    ids = {}
    originals = {}
    for name in ("lost", "written", "redo-written", "redo"):
        data = to_bytes(planted_dataset())
        ids[name] = spool.write_incoming(data, "CT")
        originals[name] = data
        assert pipeline.process(ids[name], "0").status == "clean"
    trail = AuditTrail(node.audit)
    # "written": the line was written, the kill came before the record was removed.
    record = spool.journal_record(ids["written"])
    assert record is not None
    trail.write("cleaned", id=ids["written"], uids=record["uids"])
    # "redo-written": killed before the worker deleted its original, after the forwarder
    # wrote its line; "redo": the same, before any line.
    for name in ("redo-written", "redo"):
        (spool.work / "0").mkdir(exist_ok=True)
        (spool.work / "0" / f"{ids[name]}.dcm").write_bytes(originals[name])
    trail.write("cleaned", id=ids["redo-written"])
    spool.forget_record(ids["redo-written"])
    trail.close()
    with running(node):
        wait_for(lambda: len(list(node.out.rglob("*.dcm"))) == 1, 30, "delivery")
        node.wait_idle(30)
        wait_for(lambda: not list(spool.journal.iterdir()), 10, "an empty journal")
    events = audit_events(node.audit)
    cleaned = Counter(e["id"] for e in events if e["event"] == "cleaned")
    assert {i: cleaned[i] for i in ids.values()} == {i: 1 for i in ids.values()}
    delivered = {e["id"] for e in events if e["event"] == "delivered"}
    assert delivered == set(ids.values())


@pytest.mark.peers
@pytest.mark.slow
def test_kill_9_loop_leaves_one_cleaned_line_per_delivered_item(tmp_path: Path) -> None:
    make_study(tmp_path / "study", series=3, per_series=100)
    node = NodeProcess(tmp_path / "node", pixels={"enabled": False})
    exe = require_tool("storescu")
    rng = random.Random(20261201)
    acked: set[str] = set()
    command = [exe, "-d", "-aet", "MODALITY", "-aec", "DICOMNODE", "-nh", "127.0.0.1"]
    for _round in range(3):
        node.start()
        sender = subprocess.Popen(
            [*command, str(node.port), "+sd", "+r", str(tmp_path / "study")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=PEER_ENV,
        )
        lines: list[str] = []

        def read(source: subprocess.Popen[str] = sender, sink: list[str] = lines) -> None:
            for line in source.stdout or []:
                sink.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        target = rng.randint(60, 240)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sender.poll() is None:
            if sum(line.startswith("I: Received Store Response") for line in lines[:]) >= target:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))  # workers and forwarder busy
        node.kill()
        sender.wait(60)
        reader.join(10)
        acked |= set(acknowledged("".join(lines)))
    node.start()
    try:
        node.wait_idle(120)
    finally:
        node.stop()
    events = audit_events(node.audit)
    cleaned = Counter(e["id"] for e in events if e["event"] == "cleaned")
    assert max(cleaned.values()) == 1, [i for i, n in cleaned.items() if n > 1]
    delivered = {e["id"] for e in events if e["event"] == "delivered"}
    assert delivered and all(cleaned[i] == 1 for i in delivered)
    # Every object at the destination has its cleaned line (whatever its delivery line).
    audited_uids = {
        e["uids"]["SOPInstanceUID"] for e in events if e["event"] == "cleaned" and "uids" in e
    }
    on_disk = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in node.out.rglob("*.dcm")
    }
    assert on_disk and on_disk <= audited_uids
    pseudo = Pseudonymizer(SECRET)
    assert {pseudo.uid(u) for u in acked} <= on_disk
    assert not list((node.spool / "journal").iterdir())
