"""The study's own IDs (lookup table) and the honest broker's crosswalk, through the scrubber
and through a running node: mapped, unmapped, reloaded, re-identified, nothing in the clear."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import Config, load_config
from dicomnode.crosswalk import generate_keypair, read_crosswalk
from dicomnode.dicomio import encode_instance, read_instance
from dicomnode.errors import ConfigError, InstanceError
from dicomnode.scrub import build_scrubber
from tests.conftest import SECRET
from tests.peers import NodeProcess, make_study, running, storescu, wait_for
from tests.phi import PHI, leaks, planted_dataset, to_bytes

TABLE = "patient_id,subject_id,accession_number,research_accession\n{pid},SUBJ-0042,{acc},RA-7\n"


def _config(tmp_path: Path, **lookup: str) -> Config:
    table = tmp_path / "subjects.csv"
    table.write_text(TABLE.format(pid=PHI["pid"], acc=PHI["accession"]))
    path = tmp_path / "dicomnode.yaml"
    options = "".join(f"\n    {k}: {v}" for k, v in lookup.items())
    path.write_text(
        f"scrub:\n  lookup:\n    path: subjects.csv{options}\npixels: {{enabled: false}}\n"
    )
    return load_config(path)


def _scrub(config: Config, ds: pydicom.Dataset) -> pydicom.Dataset:
    parsed = read_instance(to_bytes(ds))
    build_scrubber(config, secret=SECRET).scrub(parsed)
    return pydicom.dcmread(io.BytesIO(encode_instance(parsed)))


def test_a_mapped_patient_gets_the_study_ids_and_keeps_keyed_uids_and_dates(
    tmp_path: Path,
) -> None:
    out = _scrub(_config(tmp_path), planted_dataset())
    keyed = _scrub(Config(), planted_dataset())
    assert out.PatientID == "SUBJ-0042" and str(out.PatientName) == "SUBJ-0042"
    assert out.AccessionNumber == "RA-7"
    # UIDs and the date shift stay keyed: two nodes with the secret and the table agree.
    assert out.SOPInstanceUID == keyed.SOPInstanceUID
    assert out.StudyInstanceUID == keyed.StudyInstanceUID
    assert (out.StudyDate, out.StudyTime) == (keyed.StudyDate, keyed.StudyTime)


def test_an_unmapped_patient_is_quarantined_or_pseudonymised(tmp_path: Path) -> None:
    other = planted_dataset()
    other.PatientID = "NOT-IN-THE-TABLE"
    with pytest.raises(InstanceError) as caught:
        _scrub(_config(tmp_path), other)
    assert caught.value.reason == "unmapped-patient"
    assert "NOT-IN-THE-TABLE" not in str(caught.value)
    out = _scrub(_config(tmp_path, unmapped="pseudonym"), other)
    assert out.PatientID == _scrub(Config(), other).PatientID  # the keyed pseudonym
    assert out.AccessionNumber == "RA-7"  # its accession is in the table all the same


def test_a_bad_table_is_a_configuration_error_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "subjects.csv").write_text("patient_id,subject_id\nA1,S1\nA2,\n")
    path = tmp_path / "dicomnode.yaml"
    path.write_text("scrub:\n  lookup:\n    path: subjects.csv\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "line 3" in str(caught.value) and "subjects.csv" in str(caught.value)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={"DICOMNODE_SECRET": SECRET.decode(), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.peers
def test_node_maps_reloads_and_records_a_crosswalk_only_the_broker_can_read(
    tmp_path: Path,
) -> None:
    private, public = generate_keypair()
    key = tmp_path / "broker.key"
    key.write_text(private + "\n")
    key.chmod(0o600)
    table = tmp_path / "subjects.csv"
    table.write_text(TABLE.format(pid=PHI["pid"], acc=PHI["accession"]))
    crosswalk = tmp_path / "crosswalk" / "crosswalk.age"
    node = NodeProcess(
        tmp_path / "node",
        scrub={
            "lookup": {"path": str(table)},
            "crosswalk": {"path": str(crosswalk), "public_key": public},
        },
        pixels={"enabled": False},
    )
    make_study(tmp_path / "mapped", series=1, per_series=2)
    make_study(tmp_path / "unmapped", series=1, per_series=2, patient="WALKIN-77")
    with running(node):
        assert storescu(node.port, tmp_path / "mapped").returncode == 0
        assert storescu(node.port, tmp_path / "unmapped").returncode == 0
        quarantine = node.spool / "quarantine" / "unmapped-patient"
        wait_for(lambda: len(list(node.out.rglob("*.dcm"))) == 2, 60, "the mapped patient")
        wait_for(
            lambda: len([p for p in quarantine.glob("*") if p.suffix != ".json"]) == 2,
            60,
            "the unmapped patient in quarantine",
        )
        assert {pydicom.dcmread(p).PatientID for p in node.out.rglob("*.dcm")} == {"SUBJ-0042"}
        # The broker adds the walk-in patient; the node reloads and the quarantine is re-run.
        table.write_text(table.read_text() + "WALKIN-77,SUBJ-0043,,\n")
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in node.log.read_text(), 60, "the reload")
        retried = _cli(
            "retry", "--quarantine", "unmapped-patient", "--config", str(node.config_path),
            cwd=node.workdir,
        )  # fmt: skip
        assert retried.returncode == 0, retried.stderr
        wait_for(lambda: len(list(node.out.rglob("*.dcm"))) == 4, 60, "the re-run")
    subjects = {pydicom.dcmread(p).PatientID for p in node.out.rglob("*.dcm")}
    assert subjects == {"SUBJ-0042", "SUBJ-0043"}
    # Only the private key reads the crosswalk; no file the node wrote holds an original.
    records = set(read_crosswalk(crosswalk, private))
    assert ("PatientID", PHI["pid"], "SUBJ-0042") in records
    assert ("PatientID", "WALKIN-77", "SUBJ-0043") in records
    assert ("AccessionNumber", PHI["accession"], "RA-7") in records
    assert any(kind == "StudyInstanceUID" for kind, _, _ in records)
    written = [crosswalk, node.log, *node.audit.parent.glob("*"), *node.out.rglob("*.dcm")]
    for path in written:
        data = path.read_bytes()
        assert leaks(data) == [], path
        assert b"WALKIN-77" not in data, path
    assert crosswalk.stat().st_mode & 0o077 == 0
    found = _cli(
        "reidentify", "--key", str(key), "--crosswalk", str(crosswalk),
        "--config", str(node.config_path), "SUBJ-0043", cwd=node.workdir,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert "PatientID WALKIN-77" in found.stdout
    audit = node.audit.read_text()
    assert '"reidentified"' in audit and "WALKIN-77" not in audit
