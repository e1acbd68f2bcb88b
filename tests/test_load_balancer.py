"""Several nodes behind a load balancer: HAProxy (Debian's, ``mode tcp``) in front of three
nodes with their own ports and spools and the same secret, delivering to one Orthanc.

Phase 1: eight storescu processes send one study, split so that every series is spread over
all senders; the nodes clean their share independently, and Orthanc ends up with one study:
every instance once, one pseudonymous PatientID, one StudyInstanceUID, the same date shift,
and references between instances that resolve whichever node cleaned each of them.

Phase 2: eight senders again, and one node is killed with SIGKILL (all its processes) in the
middle of the send.
HAProxy's health check (a real C-ECHO, see ``health_check``) takes it out; the senders that
saw a failure resend what was not acknowledged, through HAProxy, as a PACS would; the node
restarts on its own spool; every acknowledged instance reaches Orthanc, exactly once.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.scrub.pseudonym import Pseudonymizer
from tests.conftest import SECRET, require_tool
from tests.haproxy import NODE_AE, PER_ADDRESS, HAProxy, health_check
from tests.peers import PEER_ENV, ROOT, NodeProcess, Orthanc, acknowledged, wait_for
from tests.phi import PHI, leaks, planted_dataset, to_bytes

SENDERS = 8
NODES = 3
# -- the study ----------------------------------------------------------------------------------


class Study:
    """A study whose instances reference each other: each one the previous instance of its
    series (Referenced Image and Source Image), and the first instance of the first series
    (Referenced Series), so that references cross senders and nodes."""

    def __init__(self, folder: Path, series: int, per_series: int, patient: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.patient = patient
        self.uid = generate_uid()
        self.series = series
        series_uids = [generate_uid() for _ in range(series)]
        sop_uids = [[generate_uid() for _ in range(per_series)] for _ in range(series)]
        self.sop_uid: dict[Path, str] = {}
        ds = planted_dataset()  # one data set, its UIDs and references rewritten each time
        ds.PatientID = patient
        ds.StudyInstanceUID = self.uid
        referenced = ds.ReferencedSeriesSequence[0]
        referenced.SeriesInstanceUID = series_uids[0]
        instance = referenced.ReferencedInstanceSequence[0]
        instance.ReferencedSOPInstanceUID = sop_uids[0][0]
        for s in range(series):
            for i in range(per_series):
                ds.SeriesInstanceUID = series_uids[s]
                ds.SeriesNumber = s + 1
                ds.InstanceNumber = i + 1
                ds.SOPInstanceUID = sop_uids[s][i]
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                previous = sop_uids[s][i - 1] if i else sop_uids[0][0]
                ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = previous
                instance.SourceImageSequence[0].ReferencedSOPInstanceUID = previous
                path = folder / f"s{s:02d}_i{i:04d}.dcm"
                path.write_bytes(to_bytes(ds))
                self.sop_uid[path] = sop_uids[s][i]

    def __len__(self) -> int:
        return len(self.sop_uid)

    def clean_uids(self) -> set[str]:
        pseudo = Pseudonymizer(SECRET)
        return {pseudo.uid(uid) for uid in self.sop_uid.values()}


# -- the senders -------------------------------------------------------------------------------


class Sender:
    """One storescu process (a PACS sending its share) with its -d output in a file."""

    def __init__(self, workdir: Path, number: int, files: dict[Path, str], port: int) -> None:
        self.number = number
        self.uid_of = files
        self.port = port
        self.acked: set[str] = set()
        self.failures = 0
        self.attempts = 0
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def output(self) -> Path:
        return self.workdir / f"sender{self.number}-{self.attempts}.log"

    def pending(self) -> list[Path]:
        return [f for f, uid in self.uid_of.items() if uid not in self.acked]

    def start(self) -> None:
        exe = require_tool("storescu")
        self.attempts += 1
        args = [exe, "-d", "-aet", f"PACS{self.number}", "-aec", NODE_AE, "-nh"]
        args += ["127.0.0.1", str(self.port), *map(str, self.pending())]
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=PEER_ENV)

    def responses(self) -> int:
        """Store responses so far (success or not) in the current attempt's output."""
        with contextlib.suppress(FileNotFoundError):
            return self.output.read_text(errors="replace").count("I: Received Store Response")
        return 0

    def wait(self, timeout: float = 120) -> bool:
        """True when every file of this attempt was acknowledged."""
        assert self.proc is not None
        self.proc.wait(timeout)
        sent = len(self.pending())
        got = set(acknowledged(self.output.read_text(errors="replace")))
        assert got <= set(self.uid_of.values())
        self.acked |= got
        if self.proc.returncode != 0 or len(got) < sent:
            self.failures += 1
            return False
        return True


def send_all(senders: list[Sender]) -> None:
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.wait()


def split(study: Study, workdir: Path, port: int) -> list[Sender]:
    """The study's files dealt out to the senders like cards: every series on every sender."""
    files = sorted(study.sop_uid)
    return [
        Sender(workdir, n, {f: study.sop_uid[f] for f in files[n::SENDERS]}, port)
        for n in range(SENDERS)
    ]


# -- the nodes -----------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster(
    tmp_path: Path, meanwhile: Callable[[], None]
) -> Iterator[tuple[Orthanc, list[NodeProcess], HAProxy]]:
    """Orthanc, three nodes and HAProxy in front; ``meanwhile`` runs while the nodes start."""
    orthanc = Orthanc(tmp_path)
    destination = {
        **orthanc.destination(),
        "timeout_s": 10,  # a stalled C-STORE (see PEERS.md) is retried sooner than after 30 s
        "retry": {"initial_delay_s": 0.2, "max_delay_s": 2},
    }
    nodes = [
        NodeProcess(
            tmp_path / f"node{n}",
            destinations=[destination],
            # Two cores for three nodes, Orthanc and eight senders: one listener, one worker.
            node={"listeners": 1},
            pipeline={"workers": 1},
        )
        for n in range(NODES)
    ]
    haproxy = HAProxy(tmp_path, {f"node{n}": node.port for n, node in enumerate(nodes)})
    try:
        for node in nodes:
            node.start(wait=False)
        orthanc.start()
        meanwhile()
        for node in nodes:
            wait_for(functools.partial(_started, node), 90, f"the node ({node.log})")
            assert node.proc is not None and node.proc.poll() is None, node.log.read_text()
        haproxy.start()
        yield orthanc, nodes, haproxy
    finally:
        stoppers = [threading.Thread(target=_stop, args=(node,)) for node in nodes]
        for thread in stoppers:  # in parallel: each waits for its workers
            thread.start()
        for thread in stoppers:
            thread.join()
        with contextlib.suppress(Exception):  # after the nodes: no check cut short
            haproxy.stop()
        orthanc.stop()


def _started(node: NodeProcess) -> bool:
    """Listening, or exited. From the node's own log line, not a probe connection (a probe is
    a connection closed before its request: a line in the node's log)."""
    if node.proc is None or node.proc.poll() is not None:
        return True
    with contextlib.suppress(FileNotFoundError):
        return f"listening as {NODE_AE} on 127.0.0.1:{node.port}" in node.log.read_text()
    return False


def _stop(node: NodeProcess) -> None:
    if node.proc is not None and node.proc.poll() is None:
        node.stop()


def received(node: NodeProcess) -> int:
    return int(
        sum(
            value
            for key, value in node.metrics().items()
            if key.startswith("dicomnode_instances_received_total{")
        )
    )


def audit_lines(node: NodeProcess, event: str) -> list[dict[str, Any]]:
    if not node.audit.is_file():
        return []
    lines = [json.loads(line) for line in node.audit.read_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == event]


def orthanc_study(orthanc: Orthanc, study_uid: str) -> tuple[list[str], set[str]]:
    """Orthanc's instance IDs of one study, and their SOP Instance UIDs."""
    studies = [
        s
        for s in orthanc.get("/studies?expand")
        if s["MainDicomTags"]["StudyInstanceUID"] == study_uid
    ]
    if not studies:
        return [], set()
    assert len(studies) == 1
    instances = orthanc.get(f"/studies/{studies[0]['ID']}/instances")
    return [i["ID"] for i in instances], {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}


# -- the tests -----------------------------------------------------------------------------------


def test_readme_has_the_tested_health_check() -> None:
    """The README's HAProxy example carries the check this test runs, byte for byte."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Several nodes behind a load balancer", 1)[1]
    config = section.split("```", 2)[1]
    lines = [line.strip() for line in config.splitlines()]
    assert [line for line in lines if line.startswith(("option tcp-check", "tcp-check"))] == (
        health_check()
    )
    assert f"default-server inter 500ms fall 2 rise 2 maxconn {PER_ADDRESS - 1}" in lines


@pytest.mark.peers
@pytest.mark.slow
def test_three_nodes_behind_haproxy(tmp_path: Path) -> None:
    began = time.monotonic()
    pseudo = Pseudonymizer(SECRET)
    studies: list[Study] = []

    def make_studies() -> None:  # while the nodes start
        studies.append(Study(tmp_path / "study1", series=4, per_series=12, patient=PHI["pid"]))
        studies.append(Study(tmp_path / "study2", series=8, per_series=40, patient="LB0002"))

    timings: dict[str, float] = {}
    with cluster(tmp_path, make_studies) as (orthanc, nodes, haproxy):
        first, second = studies
        timings["start"] = time.monotonic() - began

        # Phase 1: one study through eight senders, three nodes, one Orthanc.
        t = time.monotonic()
        senders = split(first, tmp_path / "phase1", haproxy.port)
        send_all(senders)
        assert all(s.failures == 0 for s in senders), [s.output.read_text()[-500:] for s in senders]
        study_uid = pseudo.uid(first.uid)
        wait_for(
            lambda: len(orthanc_study(orthanc, study_uid)[0]) >= len(first),
            60,
            "Orthanc to hold the first study",
            0.25,
        )
        for node in nodes:
            node.wait_idle(60)
        timings["phase 1"] = time.monotonic() - t
        _check_one_study(orthanc, nodes, first)

        # Phase 2: kill -9 one node in the middle of a send.
        t = time.monotonic()
        victim = nodes[1]
        senders = split(second, tmp_path / "phase2", haproxy.port)
        for sender in senders:
            sender.start()
        wait_for(
            lambda: sum(s.responses() for s in senders) >= len(second) // 4,
            60,
            "a quarter of the second study acknowledged",
            0.02,
        )
        victim.kill_all()  # as when its machine or container dies
        killed = time.monotonic()
        wait_for(
            lambda: haproxy.status().get("node1", "").startswith("DOWN"), 10, "node1 down", 0.05
        )
        timings["down after"] = time.monotonic() - killed
        first_round = [sender.wait() for sender in senders]
        failed = [s.number for s, ok in zip(senders, first_round, strict=True) if not ok]
        assert failed, "no sender saw the kill: it did not happen in the middle of a send"
        acked_first_round = set().union(*(s.acked for s in senders))
        for _round in range(3):  # the PACS resends what it holds no success for
            retry = [s for s in senders if s.pending()]
            if not retry:
                break
            send_all(retry)
        assert not [s.number for s in senders if s.pending()], "instances never acknowledged"
        timings["resent after"] = time.monotonic() - killed
        victim.start()
        wait_for(lambda: "node1" in haproxy.up(), 30, "node1 back up in HAProxy")
        study_uid = pseudo.uid(second.uid)
        wait_for(
            lambda: len(orthanc_study(orthanc, study_uid)[0]) >= len(second),
            90,
            "Orthanc to hold the second study",
            0.25,
        )
        for node in nodes:
            node.wait_idle(60)
        timings["phase 2"] = time.monotonic() - t
        ids, delivered = orthanc_study(orthanc, study_uid)
        assert len(ids) == len(delivered) == len(second)
        assert delivered == second.clean_uids()  # each instance, once
        missing = [uid for uid in acked_first_round if pseudo.uid(uid) not in delivered]
        assert not missing, f"{len(missing)} acknowledged instance(s) lost"
        for node in nodes:
            assert node.count("quarantine") == node.count("dead-letter") == 0
        assert len(orthanc.get("/patients")) == 2
        print(
            f"phase 2: senders {failed} failed when node1 was killed; HAProxy marked it down "
            f"{timings['down after']:.2f} s after kill -9; "
            f"{max(s.attempts for s in senders) - 1} resend round(s); "
            f"node1 delivered {len(audit_lines(victim, 'delivered'))} in all"
        )
    timings["total"] = time.monotonic() - began
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def _check_one_study(orthanc: Orthanc, nodes: list[NodeProcess], study: Study) -> None:
    pseudo = Pseudonymizer(SECRET)
    study_uid = pseudo.uid(study.uid)
    ids, sop_uids = orthanc_study(orthanc, study_uid)
    expected = study.clean_uids()
    assert len(ids) == len(study) and sop_uids == expected  # every instance, once
    # Each node received and cleaned a share; together, each instance exactly once.
    counts = [received(node) for node in nodes]
    assert all(counts) and sum(counts) == len(study), counts
    cleaned_by: dict[str, int] = {}
    for n, node in enumerate(nodes):
        for line in audit_lines(node, "cleaned"):
            uid = line["uids"]["SOPInstanceUID"]
            assert uid not in cleaned_by, f"{uid} cleaned twice"
            cleaned_by[uid] = n
        assert len(audit_lines(node, "delivered")) == counts[n]
    assert set(cleaned_by) == expected
    # One study: one patient pseudonym, one study UID, the same shift of every date and time.
    shift = pseudo.shift(study.patient)
    when = datetime.datetime(2021, 3, 14, 10, 15) + datetime.timedelta(
        days=shift.days, seconds=shift.seconds
    )
    by_uid = {}
    for instance in ids:
        data = orthanc.file(instance)
        assert not leaks(data)
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.PatientID == pseudo.patient_id(study.patient, "DN")
        assert ds.StudyInstanceUID == study_uid
        assert ds.StudyDate == ds.SeriesDate == ds.ContentDate == when.strftime("%Y%m%d")
        assert str(ds.StudyTime).startswith(when.strftime("%H%M%S"))
        by_uid[str(ds.SOPInstanceUID)] = ds
    assert len({str(ds.FrameOfReferenceUID) for ds in by_uid.values()}) == 1
    assert len({str(ds.SeriesInstanceUID) for ds in by_uid.values()}) == study.series
    # References resolve, whichever node cleaned the referring and the referenced instance.
    across = 0
    for uid, ds in by_uid.items():
        image = str(ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
        referenced = ds.ReferencedSeriesSequence[0]
        instance = referenced.ReferencedInstanceSequence[0]
        assert image in by_uid
        assert str(instance.SourceImageSequence[0].ReferencedSOPInstanceUID) == image
        target = by_uid[str(instance.ReferencedSOPInstanceUID)]
        assert target.SeriesInstanceUID == referenced.SeriesInstanceUID
        assert target.SeriesNumber == target.InstanceNumber == 1
        if ds.InstanceNumber > 1:
            assert by_uid[image].InstanceNumber == ds.InstanceNumber - 1
            assert by_uid[image].SeriesInstanceUID == ds.SeriesInstanceUID
        across += cleaned_by[uid] != cleaned_by[image]
    assert across, "no reference crosses nodes: the study was not split"
    print(f"phase 1: received per node {counts}; {across} references cross nodes")
