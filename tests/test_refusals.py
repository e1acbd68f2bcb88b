"""Refusals a sender or an administrator can act on: one bad instance costs only itself, a
wrong AE title is logged and counted, ``dicomnode echo`` says why it failed, the container
healthcheck works whatever ``node.allowed_callers`` lists, and library noise stays out of the
node's log.

Real dcmtk storescu/echoscu and the node as a subprocess of the real CLI, on 127.0.0.1; the
C-STOREs storescu never sends (a command whose SOP class is not its context's, or not its data
set's) come from pynetdicom, one association for all of them.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, association
from pynetdicom.dimse_primitives import C_STORE

from dicomnode import gate as gate_module
from dicomnode import ingest as ingest_module
from dicomnode.config import DicomDestination, NodeConfig
from dicomnode.forward import echo
from dicomnode.gate import HEAD_BYTES, WRITEBACK_BYTES, _abstract_syntaxes
from dicomnode.ingest import ACCEPTED_TRANSFER_SYNTAXES, Ingest
from dicomnode.spool import Spool
from tests.conftest import require_tool
from tests.peers import (
    PEER_ENV,
    ROOT,
    NodeProcess,
    acknowledged,
    free_port,
    make_study,
    rejection_of,
    running,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.peers

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
US_RETIRED = "1.2.840.10008.5.1.4.1.1.6"  # Ultrasound Image Storage (Retired)
DICOS_CT = "1.2.840.10008.5.1.4.1.1.501.1"  # a storage class pynetdicom does not list
QR_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
VERIFICATION = "1.2.840.10008.1.1"
NOT_A_CLASS = "31"
UNKNOWN = "1.2.826.0.1.3680043.9.9999.31"  # well formed, registered nowhere
CALLER = "STORESCU"


# -- helpers -----------------------------------------------------------------------------------


def _rewrite(path: Path, sop_class: str, meta_class: str | None = None) -> None:
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = meta_class or sop_class
    ds.save_as(path, enforce_file_format=True)


def _storescu(port: int, folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """storescu as senders configure it (-nh: no halt on a failed store), with -d for the
    responses, and ``options`` (-R: propose only the classes of the files, one context each)."""
    exe = require_tool("storescu")
    args = [exe, "-aet", CALLER, "-aec", "DICOMNODE", "-nh", "-d", *options]
    args += ["127.0.0.1", str(port), "+sd", str(folder)]
    return subprocess.run(args, capture_output=True, text=True, env=PEER_ENV, timeout=120)


def _refusal_lines(node: NodeProcess) -> list[str]:
    return [line for line in node.log.read_text().splitlines() if "refused C-STORE" in line]


def _metric(node: NodeProcess, name: str, **labels: str) -> float:
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    return node.metrics().get(key, 0.0)


def _encoded(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


_MESSAGE_IDS = itertools.count(1)


def _raw_store(assoc: Any, context_id: int, sop_class: str, data_set: bytes) -> int | None:
    """Send one C-STORE whose command says ``sop_class`` on context ``context_id``, whatever
    the context and the data set say (pynetdicom's send_c_store would pick the context itself);
    the status, or None when no response came."""
    req = C_STORE()
    req.MessageID = next(_MESSAGE_IDS)
    req.Priority = 2
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = generate_uid()
    req.DataSet = BytesIO(data_set)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return None if rsp is None else int(rsp.Status)


def _context_id(assoc: Any, abstract_syntax: str) -> int:
    (context,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == abstract_syntax]
    return int(context.context_id)


def _ct(sop_class: str = CT) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    return ds


# -- 1. one bad instance costs only itself -----------------------------------------------------


def test_a_folder_with_bad_files_costs_only_those_files(tmp_path: Path) -> None:
    """storescu -nh sends a study with bad files in the middle: every other file is delivered
    on one association, never aborted; what reaches the node and is refused has one log line
    and a count; what storescu cannot send (no such class, a file cut short) it skips itself."""
    folders = {}
    for mode in ("default", "required"):
        folder = tmp_path / mode
        made = make_study(folder, series=1, per_series=10)
        files = sorted(folder.glob("*.dcm"))
        _rewrite(files[2], NOT_A_CLASS)  # storescu: "unknown SOP class", never proposed
        _rewrite(files[4], US_RETIRED)  # -R proposes it: the node answers 0x0122
        _rewrite(files[5], DICOS_CT)  # likewise
        _rewrite(files[6], MR, meta_class=CT)  # storescu sends the data set's class: fine
        cut = files[7].read_bytes()
        files[7].write_bytes(cut[:-100])  # in the pixel data: storescu cannot read it
        bad = {made[i].SOPInstanceUID for i in (2, 4, 5, 7)}
        folders[mode] = (folder, {d.SOPInstanceUID for d in made} - bad)
    node = NodeProcess(tmp_path / "node")
    with running(node):
        started = time.monotonic()
        default = storescu(node.port, folders["default"][0], debug=True)
        required = _storescu(node.port, folders["required"][0], "-R")
        took = time.monotonic() - started
        for sent, (_folder, good) in (
            (default, folders["default"]),
            (required, folders["required"]),
        ):
            output = sent.stdout + sent.stderr
            assert sent.returncode == 0, output
            assert set(acknowledged(output)) == good, output
            assert output.count("Association Accepted") == 1, output
            assert "Abort" not in output, output
        # what storescu itself skips: with -R when it scans the folder, else as it sends
        skipped = required.stdout + required.stderr
        assert "unknown storage SOP class in file" in skipped and "s0_i0002.dcm: 31" in skipped
        assert re.search(r"missing SOP class .*s0_i0007\.dcm, ignoring file", skipped)
        skipped = default.stdout + default.stderr
        assert "No presentation context for: (unknown SOP class) 31" in skipped
        assert re.search(r"Bad DICOM file: .*s0_i0007\.dcm", skipped)
        node.wait_idle()
        assert len(list(node.out.rglob("*.dcm"))) == 12
        assert (
            _metric(node, "dicomnode_stores_refused_total", reason="sop-class-not-supported") == 2
        )
    lines = _refusal_lines(node)
    assert len(lines) == 2, lines
    for line in lines:
        assert "0x0122 (sop-class-not-supported)" in line and "the association goes on" in line
        assert "WARNING dicomnode.ingest" in line
    assert any(US_RETIRED in line for line in lines) and any(DICOS_CT in line for line in lines)
    log = node.log.read_text()
    assert "Traceback" not in log and "pynetdicom" not in log
    print(f"two storescu runs of 10 files each: {took:.1f} s")


# -- 2. what pynetdicom would have aborted on ---------------------------------------------------


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Ingest, list[str], list[tuple[str, str]]]]:
    spool = Spool(tmp_path / "spool").create(["a"])
    received: list[str] = []
    refused: list[tuple[str, str]] = []
    ingest = Ingest(
        NodeConfig(port=0, disk_floor_mb=1),
        spool,
        on_received=lambda item, ae, size, seconds: received.append(item),
        on_refused=lambda reason, ae: refused.append((reason, ae)),
    )
    ingest.start()
    try:
        yield ingest, received, refused
    finally:
        ingest.stop()


def test_a_c_store_of_the_wrong_class_is_refused_and_the_association_goes_on(
    listener: tuple[Ingest, list[str], list[tuple[str, str]]],
) -> None:
    """Unknown and malformed classes are negotiated (with our transfer syntaxes), other
    services are not; each C-STORE whose class is wrong gets its own failure status (pynetdicom
    aborted the association on a class it had no service for), and the next one is stored."""
    ingest, received, refused = listener
    ae = AE(ae_title="TESTSCU")
    for uid in (CT, NOT_A_CLASS, UNKNOWN, US_RETIRED, QR_FIND, STORAGE_COMMITMENT):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", ingest.port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        accepted = {str(c.abstract_syntax): c for c in assoc.accepted_contexts}
        assert set(accepted) == {CT, NOT_A_CLASS, UNKNOWN, US_RETIRED}
        assert all(c.transfer_syntax[0] in ACCEPTED_TRANSFER_SYNTAXES for c in accepted.values())
        rejected = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
        assert rejected == {QR_FIND, STORAGE_COMMITMENT}
        ct = _context_id(assoc, CT)
        cases = [
            (_context_id(assoc, NOT_A_CLASS), NOT_A_CLASS, _ct(NOT_A_CLASS), 0x0122),
            (_context_id(assoc, UNKNOWN), UNKNOWN, _ct(UNKNOWN), 0x0122),
            (ct, NOT_A_CLASS, _ct(), 0x0122),  # the command's class: not one at all
            (ct, MR, _ct(MR), 0x0122),  # MR on the CT context: not negotiated
            (ct, CT, _ct(MR), 0xA900),  # the data set is an MR
            (_context_id(assoc, US_RETIRED), CT, _ct(), 0x0122),  # CT on another context
            (ct, CT, _ct(), 0x0000),
        ]
        statuses = [_raw_store(assoc, cx, cls, _encoded(ds)) for cx, cls, ds, _ in cases]
        assert statuses == [expected for *_, expected in cases]
        assert assoc.is_established
    finally:
        assoc.release()
    assert len(received) == 1
    assert [reason for reason, _ in refused] == [
        "sop-class-not-supported",
        "sop-class-not-supported",
        "sop-class-not-supported",
        "sop-class-not-negotiated",
        "sop-class-mismatch",
        "sop-class-not-negotiated",
    ]
    assert list(ingest.spool.tmp.iterdir()) == []


def _deflated(ds: Dataset) -> bytes:
    squeeze = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return squeeze.compress(_encoded(ds)) + squeeze.flush()


def test_the_data_set_s_class_is_read_from_the_bytes_as_they_went_by(
    listener: tuple[Ingest, list[str], list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler checks the data set's SOP Class UID in the first 64 KiB the gate kept while
    they arrived (no file read), deflated or not; past those 64 KiB it cannot tell and leaves it
    to the workers. Each received file has its write-out started as it grows (so the fdatasync
    that acknowledges it has little left to wait for)."""
    ingest, received, refused = listener
    heads: list[tuple[int, bool] | None] = []
    real_head = ingest_module.data_set_head

    def head(assoc: Any, path: Path | str) -> tuple[bytes, bool] | None:
        got = real_head(assoc, path)
        heads.append(None if got is None else (len(got[0]), got[1]))
        return got

    writebacks: list[int] = []
    real_writeback = gate_module.start_writeback

    def writeback(fd: int) -> None:
        writebacks.append(os.fstat(fd).st_size)
        real_writeback(fd)

    monkeypatch.setattr(ingest_module, "data_set_head", head)
    monkeypatch.setattr(gate_module, "start_writeback", writeback)
    monkeypatch.setattr(ingest_module, "read_header", None)  # never the file's

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    ae.add_requested_context(MR, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", ingest.port, ae_title="DICOMNODE")
    assert assoc.is_established
    big = _ct()
    big.BitsAllocated = 8
    big.PixelData = os.urandom(600_000)  # after the class: 64 KiB of it are kept
    hidden = _ct(MR)
    hidden.add_new(0x00070010, "LO", "SENDER")  # a private block before group 0008
    hidden.add_new(0x00071000, "OB", bytes(70_000))  # pushes the class past 64 KiB
    try:
        ct, mr = _context_id(assoc, CT), _context_id(assoc, MR)
        cases = [
            (ct, CT, _encoded(_ct(MR)), 0xA900),  # small: the whole data set is the head
            (ct, CT, _encoded(big), 0x0000),
            (mr, MR, _deflated(_ct(CT)), 0xA900),  # deflated: inflated from the head
            (mr, MR, _deflated(_ct(MR)), 0x0000),
            (ct, CT, _encoded(hidden), 0x0000),  # cannot tell at receive: the workers will
        ]
        statuses = [_raw_store(assoc, cx, cls, data) for cx, cls, data, _ in cases]
        assert statuses == [expected for *_, expected in cases]
    finally:
        assoc.release()
    assert [reason for reason, _ in refused] == ["sop-class-mismatch", "sop-class-mismatch"]
    assert len(received) == 3
    sizes = [len(data) for _, _, data, _ in cases]
    assert heads == [(min(size, HEAD_BYTES), size <= HEAD_BYTES) for size in sizes]
    # The 600 KB one's is started on the way (once per fragment of 128 KiB or more:
    # pynetdicom sends it in PDUs of the 256 KiB the node offers), while its file is still
    # open. The one at a data set's end is best effort: the last fragment wakes the handler,
    # which may have closed the file first (then its fdatasync writes what is left; a busy
    # machine showed it: 6 calls where 7 were counted on).
    big_size = len(cases[1][2])
    on_the_way = [size for size in writebacks if WRITEBACK_BYTES <= size < big_size]
    assert len(on_the_way) >= 600_000 // (2 * WRITEBACK_BYTES)


# -- 3-5. misconfiguration: a node whose allow-list leaves out ECHOSCU --------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node that takes only STORESCU, forwarding to a destination that is down."""
    workdir = tmp_path_factory.mktemp("guarded")
    destination = {
        "name": "pacs",
        "type": "dicom",
        "ae_title": "PACS",
        "host": "127.0.0.1",
        "port": free_port(),  # nothing listens there
        "retry": {"initial_delay_s": 0.2, "max_delay_s": 0.5},
    }
    node = NodeProcess(
        workdir, destinations=[destination], node={"allowed_callers": [{"ae_title": CALLER}]}
    )
    with running(node):
        yield node


def _echoscu(port: int, aet: str, aec: str) -> subprocess.CompletedProcess[str]:
    exe = require_tool("echoscu")
    args = [exe, "-aet", aet, "-aec", aec, "127.0.0.1", str(port)]
    return subprocess.run(args, capture_output=True, text=True, env=PEER_ENV, timeout=60)


def _dicomnode(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DICOMNODE_CONFIG"}
    if config is not None:
        env["DICOMNODE_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def _audit(node: NodeProcess) -> list[dict[str, Any]]:
    if not node.audit.exists():
        return []
    return [json.loads(line) for line in node.audit.read_text().splitlines() if line]


def test_a_wrong_called_ae_title_is_logged_and_counted_like_a_refused_caller(
    guarded: NodeProcess, tmp_path: Path
) -> None:
    node = guarded
    before = {
        r: _metric(node, "dicomnode_stores_refused_total", reason=r)
        for r in ("called-ae", "calling-ae")
    }
    wrong_called = _echoscu(node.port, CALLER, "NOTTHENODE")
    assert wrong_called.returncode != 0
    make_study(tmp_path / "study", series=1, per_series=1)
    wrong_calling = storescu(node.port, tmp_path / "study", aet="INTRUDER")
    assert wrong_calling.returncode != 0
    # the listener processes report refusals to the node's registry over a queue: the sender
    # can see its refusal before the count arrives
    for reason in ("called-ae", "calling-ae"):
        wait_for(
            lambda reason=reason: (
                _metric(node, "dicomnode_stores_refused_total", reason=reason) > before[reason]
            ),
            10,
            f"the {reason} refusal to be counted",
        )
        assert _metric(node, "dicomnode_stores_refused_total", reason=reason) == before[reason] + 1
    wait_for(lambda: "called AE title is not DICOMNODE" in node.log.read_text(), 10, "the line")
    assert re.search(
        r"WARNING dicomnode\.gate: refused association from 127\.0\.0\.1 \(calling AE "
        r"'STORESCU', called 'NOTTHENODE'\): called AE title is not DICOMNODE",
        node.log.read_text(),
    )
    refused = [(e["reason"], e["calling_ae"]) for e in _audit(node) if e["event"] == "refused"]
    assert ("called-ae", CALLER) in refused and ("calling-ae", "INTRUDER") in refused


def _healthcheck_command() -> list[str]:
    """The exact command of the image's HEALTHCHECK."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    match = re.search(r"^HEALTHCHECK .* CMD (\[.*\])\s*$", text, re.MULTILINE)
    assert match, "no HEALTHCHECK ... CMD [...] in docker/Dockerfile"
    command: list[str] = json.loads(match.group(1))
    return command


def test_the_healthcheck_passes_when_the_allow_list_leaves_it_out(guarded: NodeProcess) -> None:
    node = guarded
    command = _healthcheck_command()
    assert command[0] == "dicomnode" and "--aet" not in command  # it calls as ECHOSCU
    assert "ECHOSCU" not in json.dumps(node.config["node"]["allowed_callers"])
    refused_before = _metric(node, "dicomnode_stores_refused_total", reason="calling-ae")
    lines_before = node.log.read_text().count("refused association")
    started = time.monotonic()
    done = _dicomnode(*command[1:], config=node.config_path)  # DICOMNODE_CONFIG, as in the image
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DICOMNODE at 127.0.0.1" in done.stdout and "answers C-ECHO" in done.stdout
    assert done.stderr == ""
    # dcmtk's echoscu, as any unlisted AE title from this host: a C-ECHO, not counted
    assert _echoscu(node.port, "ANYONE", "DICOMNODE").returncode == 0
    assert _metric(node, "dicomnode_stores_refused_total", reason="calling-ae") == refused_before
    assert node.log.read_text().count("refused association") == lines_before
    print(f"healthcheck: {took:.2f} s")


def test_the_loopback_c_echo_cannot_store(guarded: NodeProcess, tmp_path: Path) -> None:
    """An unlisted caller from this host gets Verification only: proposing storage too is
    refused as before, and a C-STORE sent on its Verification context is refused (0x0124).
    From another address (127.0.0.2 stands for another host) its C-ECHO is refused too."""
    node = guarded
    elsewhere = AE(ae_title="INTRUDER")
    elsewhere.add_requested_context(VERIFICATION)
    assoc = elsewhere.associate(
        "127.0.0.1", node.port, ae_title="DICOMNODE", bind_address=("127.0.0.2", 0)
    )
    assert rejection_of(assoc).diagnostic == 0x03  # calling AE title not recognised
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert rejection_of(assoc) is not None
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(VERIFICATION, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        context = _context_id(assoc, VERIFICATION)
        assert _raw_store(assoc, context, CT, _encoded(_ct())) == 0x0124
        assert int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()
    assert node.count("incoming") == node.count("work") == 0
    assert "refused C-STORE from INTRUDER at 127.0.0.1 with 0x0124" in node.log.read_text()


def test_the_gate_reads_the_proposed_abstract_syntaxes() -> None:
    """What echoscu proposes, read from its real A-ASSOCIATE-RQ; anything that does not add up
    reads as nothing (and then no C-ECHO passes the allow-list by it)."""
    server = socket.create_server(("127.0.0.1", 0))
    exe = require_tool("echoscu")
    port = str(server.getsockname()[1])
    caller = subprocess.Popen([exe, "-to", "2", "127.0.0.1", port], env=PEER_ENV)
    try:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            header = conn.recv(6, socket.MSG_WAITALL)
            length = struct.unpack(">L", header[2:])[0]
            pdu = header + conn.recv(length, socket.MSG_WAITALL)
    finally:
        server.close()
        caller.wait(10)
    assert _abstract_syntaxes(pdu) == (VERIFICATION,)
    assert _abstract_syntaxes(pdu[:-10]) == ()  # the last item runs past the end
    broken = bytearray(pdu)
    at = pdu.index(b"\x20\x00", 6 + 68)  # the presentation context item
    broken[at + 8] = 0x40  # its first sub-item is not an abstract syntax
    assert _abstract_syntaxes(broken) == ()


class _Silent:
    """A TCP port that accepts connections and then says ``reply`` (or nothing) and waits,
    or hangs up."""

    def __init__(self, reply: bytes = b"", hang_up: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.reply, self.hang_up = reply, hang_up
        self.open: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.open.append(conn)
            conn.recv(65536)
            if self.reply:
                conn.sendall(self.reply)
            if self.hang_up:
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.open:
            conn.close()


def test_echo_says_why_it_failed(guarded: NodeProcess) -> None:
    node = guarded
    port = free_port()
    refused = _dicomnode("echo", "--host", "127.0.0.1", "--port", str(port), "--timeout", "2")
    assert refused.returncode == 1
    assert refused.stdout.strip() == f"connection refused: nothing listens on 127.0.0.1:{port}"
    assert refused.stderr == ""  # no pynetdicom lines, no ResourceWarning

    called = _dicomnode("echo", "--port", str(node.port), "--aec", "WRONG", config=node.config_path)
    assert called.returncode == 1
    assert called.stdout.strip() == (
        f"WRONG at 127.0.0.1:{node.port} rejected the association (permanent): called AE "
        "title not recognised: it does not answer to WRONG"
    )

    def target(port: int, ae_title: str = "DICOMNODE") -> DicomDestination:
        return DicomDestination(name="t", ae_title=ae_title, host="127.0.0.1", port=port)

    abort = struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0, 0)
    for server, expected in (
        (
            _Silent(),
            "no answer from DICOMNODE at 127.0.0.1:{port} to the association request within 1 s",
        ),
        (_Silent(abort), "DICOMNODE at 127.0.0.1:{port} aborted the association request (A-ABORT)"),
        (
            _Silent(hang_up=True),
            "DICOMNODE at 127.0.0.1:{port} closed the connection without answering the association request",
        ),
    ):
        try:
            assert echo(target(server.port), "ECHOSCU", timeout=1) == expected.format(
                port=server.port
            )
        finally:
            server.close()

    # a peer that takes only some calling AE titles (pynetdicom's own check)
    scp = AE(ae_title="PICKY")
    scp.add_supported_context(VERIFICATION)
    scp.require_calling_aet = ["ONLY_ME"]
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        picky = int(server.server_address[1])
        assert echo(target(picky, "PICKY"), "ECHOSCU", timeout=5) == (
            f"PICKY at 127.0.0.1:{picky} rejected the association (permanent): calling AE "
            "title not recognised: ECHOSCU is not among the callers it accepts"
        )
    finally:
        server.shutdown()


def test_echo_names_the_local_limit(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").create(["a"])
    ingest = Ingest(NodeConfig(port=0, disk_floor_mb=1, max_associations=1), spool)
    ingest.start()
    try:
        holder = AE(ae_title="HOLDER")
        holder.add_requested_context(VERIFICATION)
        held = holder.associate("127.0.0.1", ingest.port, ae_title="DICOMNODE")
        assert held.is_established
        try:
            wait_for(lambda: ingest.open_associations == 1, 5, "the slot to be taken")
            destination = DicomDestination(
                name="t", ae_title="DICOMNODE", host="127.0.0.1", port=ingest.port
            )
            assert echo(destination, "ECHOSCU", timeout=5) == (
                f"DICOMNODE at 127.0.0.1:{ingest.port} rejected the association (transient): "
                "local limit exceeded: all its association slots are busy, try again later"
            )
        finally:
            held.release()
    finally:
        ingest.stop()


# -- 6. library noise ---------------------------------------------------------------------------


def test_a_destination_down_gives_our_line_not_pynetdicom_s(
    guarded: NodeProcess, tmp_path: Path
) -> None:
    """Each retry of a destination that is down used to add pynetdicom's two ERROR lines and a
    ResourceWarning to the node's log; now only the forwarder's own line says it."""
    node = guarded
    make_study(tmp_path / "one", series=1, per_series=1)
    sent = storescu(node.port, tmp_path / "one")
    assert sent.returncode == 0, sent.stderr
    wait_for(
        lambda: _metric(node, "dicomnode_forward_retries_total", destination="pacs") >= 3,
        30,
        "three retries",
    )
    log = node.log.read_text()
    assert "pacs: PACS at 127.0.0.1" in log
    for noise in ("pynetdicom", "Traceback", "ResourceWarning", "TCP Initialisation"):
        assert noise not in log, noise


# -- what this relies on in pynetdicom ----------------------------------------------------------

# dicomnode.gate's _StoreDispatch replaces Association._serve_request for C-STOREs, and
# dicomnode.ingest sets each association's presentation contexts in EVT_REQUESTED, which
# Association.run_reactor fires before negotiating. When one of these changes, read the new
# source, check that still holds, update the hash.
PINNED = {
    "Association._serve_request": "2f24c1759cdf6c8c",
    "Association.run_reactor": "ed8bbbe3b3d6ddae",
    "ServiceUser.supported_contexts": "ae568e1770b7e5ec",
}


def _source_hash(dotted: str) -> str:
    obj: object = association
    for name in dotted.split("."):
        obj = getattr(obj, name)
    if isinstance(obj, property):
        obj = obj.fset
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]  # type: ignore[arg-type]


def test_the_pynetdicom_code_the_refusals_rely_on_is_unchanged() -> None:
    assert pynetdicom.__version__.startswith("3.0."), pynetdicom.__version__
    now = {name: _source_hash(name) for name in PINNED}
    changed = sorted(name for name, digest in now.items() if digest != PINNED[name])
    assert not changed, f"pynetdicom changed under dicomnode.gate/ingest: {changed} (now {now})"
