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
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.dicomio import IMPLEMENTATION_CLASS_UID
from dicomnode.scrub.pseudonym import Pseudonymizer
from tests.conftest import SECRET, require_tool
from tests.peers import PEER_ENV, ROOT, NodeProcess, Orthanc, acknowledged, free_port, wait_for
from tests.phi import PHI, leaks, planted_dataset, to_bytes

SENDERS = 8
NODES = 3
NODE_AE = "DICOMNODE"
CHECK_AE = "HAPROXY"
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_LITTLE_ENDIAN = b"1.2.840.10008.1.2"
# The node's default node.max_connections_per_address: behind HAProxy every association comes
# from HAProxy's address, health checks included, so a server's maxconn stays one below it
# (and below node.max_associations, 16).
PER_ADDRESS = 8


# -- HAProxy's health check: A-ASSOCIATE-RQ, C-ECHO, A-RELEASE, as raw PDUs ------------------


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(called: str = NODE_AE, calling: str = CHECK_AE) -> bytes:
    """An A-ASSOCIATE-RQ proposing Verification only (Implicit VR Little Endian), PS3.8 9.3.2."""
    context = b"\x01\x00\x00\x00" + _item(0x30, VERIFICATION) + _item(0x40, IMPLICIT_LITTLE_ENDIAN)
    user = _item(0x51, struct.pack(">L", 16384)) + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
    body = (
        b"\x00\x01\x00\x00"
        + called.encode("ascii").ljust(16)
        + calling.encode("ascii").ljust(16)
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + _item(0x20, context)
        + _item(0x50, user)
    )
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def _command_element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def c_echo_rq() -> bytes:
    """A P-DATA-TF carrying a C-ECHO-RQ command (Implicit VR Little Endian, context 1)."""
    fields = (
        _command_element(0x0002, VERIFICATION + b"\x00")  # Affected SOP Class UID
        + _command_element(0x0100, struct.pack("<H", 0x0030))  # Command Field: C-ECHO-RQ
        + _command_element(0x0110, struct.pack("<H", 1))  # Message ID
        + _command_element(0x0800, struct.pack("<H", 0x0101))  # no data set
    )
    command = _command_element(0x0000, struct.pack("<L", len(fields))) + fields
    pdv = b"\x01\x03" + command  # context 1; command, last fragment
    return struct.pack(">BBLL", 0x04, 0, len(pdv) + 4, len(pdv)) + pdv


RELEASE_RQ = bytes.fromhex("05000000000400000000")
# (0000,0900) Status, length 2, value 0x0000: a successful C-ECHO-RSP.
ECHO_SUCCESS = "00000009020000000000"
# The A-RELEASE-RP.
RELEASE_RP = "06000000000400000000"
NEVER = "ff" * 8  # in no PDU the node sends here


def health_check(called: str = NODE_AE, calling: str = CHECK_AE) -> list[str]:
    """HAProxy backend lines: a C-ECHO over a real association, released properly.

    A check of the TCP connection alone (``tcp-check connect``) would pass a node whose port
    is open while its associations fail (slots full, a wedged gate, a wrong AE title).
    """
    return [
        "option tcp-check",
        "tcp-check connect",
        f"tcp-check send-binary {associate_rq(called, calling).hex()} comment A-ASSOCIATE-RQ",
        "tcp-check expect rbinary ^02 comment A-ASSOCIATE-AC",
        f"tcp-check send-binary {c_echo_rq().hex()} comment C-ECHO-RQ",
        f"tcp-check expect binary {ECHO_SUCCESS} comment C-ECHO-RSP-success",
        f"tcp-check send-binary {RELEASE_RQ.hex()} comment A-RELEASE-RQ",
        f"tcp-check expect binary {RELEASE_RP} comment A-RELEASE-RP",
        # HAProxy ends every check with a TCP reset; sent before the node has closed its side,
        # the node logs "connection error (Connection reset by peer)". A negated match on bytes
        # that never come waits for the node to close, which it does as soon as it released.
        f"tcp-check expect ! binary {NEVER} comment closed-by-the-node",
    ]


class HAProxy:
    """haproxy -db (foreground) in TCP mode on 127.0.0.1, with a stats socket for the test."""

    def __init__(self, workdir: Path, servers: dict[str, int]) -> None:
        self.dir = workdir / "haproxy"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.servers = servers
        self.stats_socket = self.dir / "stats.sock"
        self.log = self.dir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        lines = [
            "global",
            "    log stdout format raw local0 info",
            f"    stats socket {self.stats_socket} mode 600 level operator",
            "defaults",
            "    mode tcp",
            "    log global",
            "    option tcplog",
            "    option log-health-checks",
            "    timeout connect 2s",
            "    timeout client 120s",
            "    timeout server 120s",
            "    timeout queue 30s",
            "    timeout check 5s",  # a loaded node may take seconds; a dead one refuses at once
            # A connection refused by a dead node not yet marked down goes to another one.
            "    retries 2",
            "    option redispatch 1",
            "frontend dicom",
            f"    bind 127.0.0.1:{self.port}",
            "    default_backend nodes",
            "backend nodes",
            "    balance leastconn",
            *(f"    {line}" for line in health_check()),
            f"    default-server inter 500ms fall 2 rise 2 maxconn {PER_ADDRESS - 1}",
            *(f"    server {name} 127.0.0.1:{port} check" for name, port in self.servers.items()),
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> HAProxy:
        exe = require_tool("haproxy")
        path = self.dir / "haproxy.cfg"
        path.write_text(self.config())
        checked = subprocess.run([exe, "-c", "-f", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self._log = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [exe, "-db", "-f", str(path)], stdout=self._log, stderr=subprocess.STDOUT
        )
        wait_for(lambda: self.up() == set(self.servers), 30, f"HAProxy's servers up ({self.log})")
        return self

    def status(self) -> dict[str, str]:
        """Each server's status from ``show stat`` (UP, DOWN, 'UP 1/2' while changing)."""
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(self.stats_socket))
                sock.sendall(b"show stat\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except OSError:
            return {}
        rows = data.decode().splitlines()
        header = rows[0].lstrip("# ").split(",")
        status = {}
        for row in rows[1:]:
            fields = dict(zip(header, row.split(","), strict=False))
            if fields.get("pxname") == "nodes" and fields.get("svname") in self.servers:
                status[fields["svname"]] = fields["status"]
        return status

    def up(self) -> set[str]:
        return {name for name, status in self.status().items() if status == "UP"}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self._log.close()


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


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (from /proc), children before grandchildren."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'
            fields = stat.read_text().rpartition(")")[2].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def kill_node(node: NodeProcess) -> None:
    """``kill -9`` of the whole node, as when its machine or container dies: the node's
    process and all it started (listener processes, pipeline workers). The node alone is not
    enough since ``node.listeners``: its listeners then let open associations finish."""
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGSTOP)  # no listener or worker restarted meanwhile
    for pid in descendants(node.proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.kill()


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
        kill_node(victim)
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
