"""Two research studies on one node: each on its own called AE title, with its own
destination (DICOM over TLS to a storescp, STOW-RS to Orthanc's DICOMweb), both dropping
presentation states. Every instance arrives where its project says, the same patient has
unrelated pseudonyms in the two studies, and metrics and audit say which project."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from tests.peers import NodeProcess, Orthanc, Storescp, make_study, running, storescu, wait_for
from tests.phi import PHI, leaks, to_bytes
from tests.test_destinations import Pki, pki  # noqa: F401 (the fixture)
from tests.test_projects import _gsps

pytestmark = pytest.mark.peers


def _study(folder: Path) -> list[pydicom.Dataset]:
    made = make_study(folder, series=1, per_series=3)  # the planted patient, PHI["pid"]
    (folder / "gsps.dcm").write_bytes(to_bytes(_gsps()))
    return made


def test_two_projects_two_destinations_one_patient(tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    lung_study = _study(tmp_path / "lung")
    heart_study = _study(tmp_path / "heart")
    scp = Storescp(tmp_path / "scp", tls=(pki.server_key, pki.server_cert), peer_ca=pki.ca)
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True)
    scp.start()
    orthanc.start()
    try:
        tls_pacs = {
            **scp.destination(timeout_s=10),
            "name": "lung-pacs",
            "tls": {
                "ca_certificates": str(pki.ca),
                "certificate": str(pki.client_cert),
                "private_key": str(pki.client_key),
                "server_name": "pacs.test",
            },
        }
        web = {"name": "heart-web", "type": "dicomweb", "url": orthanc.dicomweb_url}
        node = NodeProcess(
            tmp_path / "node",
            destinations=[tls_pacs, web],
            projects=[
                {
                    "name": "lung",
                    "match": {"called_ae_title": "LUNG"},
                    "destinations": ["lung-pacs"],
                    "filters": ["drop-presentation-states"],
                },
                {
                    "name": "heart",
                    "match": {"called_ae_title": "HEART"},
                    "destinations": ["heart-web"],
                    "filters": ["drop-presentation-states"],
                },
            ],
            pixels={"enabled": False},
        )
        with running(node):
            assert storescu(node.port, tmp_path / "lung", aec="LUNG").returncode == 0
            assert storescu(node.port, tmp_path / "heart", aec="HEART").returncode == 0
            wait_for(lambda: len(scp.files()) == len(lung_study), 60, "the TLS PACS")
            wait_for(lambda: len(orthanc.instances()) == len(heart_study), 60, "Orthanc")
            node.wait_idle(60)
            metrics = node.metrics()
        # Every instance where its project says, and only there; the GSPS nowhere.
        lung = [pydicom.dcmread(p) for p in scp.files()]
        heart = [pydicom.dcmread(path) for path in _orthanc_files(orthanc, tmp_path)]
        assert {ds.Modality for ds in lung} == {ds.Modality for ds in heart} == {"CT"}
        assert len(lung) == len(lung_study) and len(heart) == len(heart_study)
        # One patient, two studies: unrelated pseudonyms (IDs, UIDs and the date shift).
        assert {ds.PatientID for ds in lung}.isdisjoint({ds.PatientID for ds in heart})
        assert {ds.StudyInstanceUID for ds in lung}.isdisjoint(
            {ds.StudyInstanceUID for ds in heart}
        )
        assert {ds.StudyDate for ds in lung} != {ds.StudyDate for ds in heart}
        for ds in (*lung, *heart):
            assert PHI["pid"] not in str(ds) and leaks(ds.PatientID.encode()) == []
        # Metrics and audit carry the project.
        dropped = {
            k: v for k, v in metrics.items() if k.startswith("dicomnode_instances_dropped_total")
        }
        assert sum(v for k, v in dropped.items() if 'project="lung"' in k) == 1, dropped
        assert sum(v for k, v in dropped.items() if 'project="heart"' in k) == 1, dropped
        received = {k: v for k, v in metrics.items() if "instances_received_total" in k}
        assert any('project="lung"' in k for k in received) and any(
            'project="heart"' in k for k in received
        ), received
        events = [json.loads(line) for line in node.audit.read_text().splitlines()]
        projects = {(e["event"], e.get("project")) for e in events}
        for project in ("lung", "heart"):
            assert ("cleaned", project) in projects and ("dropped", project) in projects
            assert ("delivered", project) in projects
    finally:
        orthanc.stop()
        scp.stop()


def _orthanc_files(orthanc: Orthanc, tmp_path: Path) -> list[Path]:
    """What Orthanc stored, written to files to read them back with pydicom."""
    out = []
    for n, instance in enumerate(orthanc.instances()):
        path = tmp_path / f"orthanc-{n}.dcm"
        path.write_bytes(orthanc.file(instance))
        out.append(path)
    return out
