"""The node end to end, with real peers: storescu -> dicomnode -> Orthanc / storescp."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

from dicomnode.scrub.pseudonym import Pseudonymizer
from tests.conftest import SECRET
from tests.peers import (
    NodeProcess,
    Orthanc,
    Storescp,
    acknowledged,
    make_study,
    running,
    storescu,
    wait_for,
)
from tests.phi import PHI, leaks

pytestmark = pytest.mark.peers


def _check_clean(files: list[bytes], originals: list[pydicom.Dataset]) -> None:
    """De-identified, and UIDs remapped consistently (one study, the same series split)."""
    pseudo = Pseudonymizer(SECRET)
    expected_sop = {pseudo.uid(str(ds.SOPInstanceUID)) for ds in originals}
    expected_series = {pseudo.uid(str(ds.SeriesInstanceUID)) for ds in originals}
    got = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    for data in files:
        assert leaks(data) == []
    assert {str(ds.SOPInstanceUID) for ds in got} == expected_sop
    assert {str(ds.SeriesInstanceUID) for ds in got} == expected_series
    assert {str(ds.StudyInstanceUID) for ds in got} == {
        pseudo.uid(str(originals[0].StudyInstanceUID))
    }
    assert len({str(ds.PatientID) for ds in got}) == 1
    assert all(ds.PatientIdentityRemoved == "YES" for ds in got)


def test_storescu_to_node_to_orthanc(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study")
    orthanc = Orthanc(tmp_path).start()
    try:
        node = NodeProcess(tmp_path, destinations=[orthanc.destination()])
        with running(node):
            sent = storescu(node.port, tmp_path / "study")
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: len(orthanc.instances()) == len(study), 60, "Orthanc to list all")
            node.wait_idle()
        instances = orthanc.instances()
        for instance in instances:
            tags = orthanc.tags(instance)
            assert tags["PatientName"] == tags["PatientID"] != PHI["pid"]
            assert not leaks(json.dumps(tags).encode())
        _check_clean([orthanc.file(i) for i in instances], study)
    finally:
        orthanc.stop()


def test_storescu_to_node_to_storescp(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", series=2, per_series=4)
    scp = Storescp(tmp_path).start()
    try:
        node = NodeProcess(tmp_path, destinations=[scp.destination()])
        with running(node):
            assert storescu(node.port, tmp_path / "study").returncode == 0
            wait_for(lambda: len(scp.files()) == len(study), 60, "storescp to receive all")
            node.wait_idle()
        _check_clean([p.read_bytes() for p in scp.files()], study)
    finally:
        scp.stop()


def test_destination_down_then_up_delivers_everything(tmp_path: Path) -> None:
    make_study(tmp_path / "study", series=5, per_series=100)
    scp = Storescp(tmp_path)  # not started: the destination is down
    destination = scp.destination(retry={"initial_delay_s": 0.2, "max_delay_s": 2})
    node = NodeProcess(tmp_path, destinations=[destination])
    with running(node):
        sent = storescu(node.port, tmp_path / "study")
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: node.count("outgoing") == 500, 120, "500 clean objects waiting")
        assert scp.files() == []
        scp.start()
        try:
            wait_for(lambda: len(scp.files()) == 500, 120, "all 500 delivered")
            node.wait_idle()
        finally:
            scp.stop()
    assert node.count("dead-letter") == 0


def test_calling_ae_allow_list(tmp_path: Path) -> None:
    make_study(tmp_path / "study", series=1, per_series=2)
    node = NodeProcess(
        tmp_path,
        node={
            "allowed_callers": [
                {"ae_title": "MODALITY1"},
                {"ae_title": "ELSEWHERE", "addresses": ["10.0.0.0/8"]},
            ]
        },
    )
    with running(node):
        refused = storescu(node.port, tmp_path / "study", aet="INTRUDER")
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stderr + refused.stdout
        wrong_address = storescu(node.port, tmp_path / "study", aet="ELSEWHERE")
        assert wrong_address.returncode != 0
        wrong_called = storescu(node.port, tmp_path / "study", aet="MODALITY1", aec="NOTTHENODE")
        assert wrong_called.returncode != 0
        assert node.count("incoming") == node.count("work") == 0
        allowed = storescu(node.port, tmp_path / "study", aet="MODALITY1")
        assert allowed.returncode == 0, allowed.stderr
        wait_for(lambda: len(list(node.out.rglob("*.dcm"))) == 2, 60, "the allowed caller's data")
    assert "not an allowed caller" in node.log.read_text()


def _send_raw(port: int, path: Path) -> int:
    """C-STORE a file as it is on disk (pynetdicom sends it undecoded)."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="RAWSENDER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)


def test_malformed_dataset_is_quarantined_and_the_node_keeps_serving(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7.8"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(buffer, meta, enforce_standard=True)
    # A dataset that starts well and then claims a 2 GB element.
    bad.write_bytes(
        b"\x00" * 128
        + b"DICM"
        + buffer.getvalue()
        + b"\x08\x00\x16\x00UI\x1a\x001.2.840.10008.5.1.4.1.1.2\x00"
        + b"\x10\x00\x10\x00PN\xff\x7fgarbage"
    )
    make_study(tmp_path / "study", series=1, per_series=3)
    node = NodeProcess(tmp_path)
    with running(node):
        assert _send_raw(node.port, bad) == 0x0000  # acknowledged: durable in the spool
        wait_for(lambda: node.count("quarantine") == 1, 60, "the bad instance in quarantine")
        sidecars = list((node.spool / "quarantine").rglob("*.json"))
        assert len(sidecars) == 1
        info = json.loads(sidecars[0].read_text())
        assert info["stage"] == "read" and info["reason"] in ("unreadable", "truncated")
        assert storescu(node.port, tmp_path / "study").returncode == 0
        wait_for(lambda: len(list(node.out.rglob("*.dcm"))) == 3, 60, "good data after bad")


def test_eight_associations_at_once(tmp_path: Path) -> None:
    folders = []
    for n in range(8):
        folder = tmp_path / f"modality{n}"
        make_study(folder, series=2, per_series=10, patient=f"PAT{n}")
        folders.append(folder)
    node = NodeProcess(tmp_path)
    results: list[subprocess.CompletedProcess[str]] = []
    with running(node):
        threads = [
            threading.Thread(
                target=lambda f=f: results.append(
                    storescu(node.port, f, aet=f"MOD{folders.index(f)}")
                )
            )
            for f in folders
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.returncode for r in results] == [0] * 8, [r.stderr[-300:] for r in results]
        wait_for(lambda: len(list(node.out.rglob("*.dcm"))) == 160, 120, "160 instances")
        node.wait_idle()
    patients = {p.parent.parent.parent.name for p in node.out.rglob("*.dcm")}
    assert len(patients) == 8


def test_disk_floor_refuses_with_a700_and_writes_nothing(tmp_path: Path) -> None:
    make_study(tmp_path / "study", series=1, per_series=2)
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    node = NodeProcess(tmp_path, node={"disk_floor_mb": free_mb + 10_000})
    with running(node):
        sent = storescu(node.port, tmp_path / "study", debug=True)
        output = (sent.stdout + sent.stderr).lower()
        assert output.count("0xa700: refused: out of resources") == 2  # both instances
        assert acknowledged(sent.stdout + sent.stderr) == []
        assert node.count("incoming") == 0
        assert list((node.spool / "tmp").iterdir()) == []
    assert "free disk below" in node.log.read_text()


def test_ultrasound_with_burned_in_phi_reaches_orthanc_unreadable(tmp_path: Path) -> None:
    from dicomnode.pixels import codec
    from dicomnode.pixels.detect import RapidOCRDetector
    from dicomnode.synth import make_set

    truth = make_set(tmp_path / "us", 3, seed=11)  # grey, cine and colour ultrasound
    for path in (tmp_path / "us").glob("*.dcm"):  # storescu +sd sends uncompressed only
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
            ds.save_as(path, enforce_file_format=True)
    orthanc = Orthanc(tmp_path).start()
    try:
        node = NodeProcess(tmp_path, destinations=[orthanc.destination()])
        with running(node):
            sent = storescu(node.port, tmp_path / "us")
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: len(orthanc.instances()) == 3, 120, "Orthanc to have all 3")
        detector = RapidOCRDetector()
        for instance in orthanc.instances():
            ds = pydicom.dcmread(io.BytesIO(orthanc.file(instance)))
            assert ds.BurnedInAnnotation == "NO"
            frames = codec.decode(ds)
            text = ""
            for frame in frames.arrays:
                picture = codec.display(frame, frames.photometric, ds)
                text += " ".join(
                    b.text or "" for b in detector.recognize(picture, detector.detect(picture))
                ).upper()
            for entry in truth["instances"]:
                for value in entry["header_phi"]:
                    for word in value.replace("^", " ").split():
                        if len(word) >= 4:
                            assert word.upper() not in text, f"{word} is readable"
    finally:
        orthanc.stop()
