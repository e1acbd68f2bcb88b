"""Hostile input, all at once: one node (umask 022) while 100 hostile sockets stay open,
every decompression bomb, a 4 GB PDU, an oversized instance, sequences nested 100 deep,
malformed values full of PHI, and 8 legitimate senders at the same time.

The node must keep serving the legitimate senders (every instance delivered, nothing
acknowledged lost), put each bad item in quarantine with a reason an administrator
understands, stay under 1 GiB of resident memory (listener and workers), write nothing
world-readable and log no planted value. Each case has its own focused tests in
``test_hostile_network.py``, ``test_hostile_memory.py``, ``test_hostile_delivery.py``,
``test_hostile_logs.py`` and ``test_trust.py``; this one checks that they hold together.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomnode.scrub import Pseudonymizer
from tests.conftest import SECRET
from tests.peers import NodeProcess, make_study, running, storescu
from tests.test_hostile_logs import MARK, _malformed_instance
from tests.test_hostile_memory import SEND_AS_IS, bombs, family, memory_mb, run_python, send
from tests.test_hostile_network import Hostile, association_request, big_instance
from tests.test_trust import _nested_bytes

pytestmark = pytest.mark.peers
SENDERS = 8


def _announce_4gb_pdu(port: int) -> bytes:
    """An accepted association, then a P-DATA-TF header announcing 4 GB: the node answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(association_request(calling="STORESCU"))
        sock.recv(65536)  # A-ASSOCIATE-AC
        sock.sendall(b"\x04\x00" + struct.pack(">I", 0xFFFFFFF0) + b"\x00" * 1024)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer


def test_the_node_serves_legitimate_senders_through_every_attack_at_once(tmp_path: Path) -> None:
    # What the attackers and the broken senders send.
    expected = bombs(tmp_path / "bombs")
    # The scrubber reads the header first: "1e9" is no integer string (test_hostile_memory).
    expected["frames-1e9.dcm"] = ("pixel-decode-failed", "NumberOfFrames")
    folders = {"jpeg": ("-xy",), "j2k": ("-xw",), "raw": ()}
    for name in expected:
        if name != "deflated.dcm":
            kind = name.split("-")[0] if name.startswith(("jpeg", "j2k")) else "raw"
            (tmp_path / kind).mkdir(exist_ok=True)
            (tmp_path / "bombs" / name).rename(tmp_path / kind / name)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "deep.dcm").write_bytes(_nested_bytes(100))
    (odd / "malformed.dcm").write_bytes(_malformed_instance())
    oversized = tmp_path / "oversized"
    oversized.mkdir()
    big_uid = big_instance(oversized / "big.dcm", 80)
    studies = [
        make_study(tmp_path / f"study{n}", series=1, per_series=3, patient=f"PATIENT-{n}")
        for n in range(SENDERS)
    ]

    old_umask = os.umask(0o022)
    try:
        node = NodeProcess(
            tmp_path / "node",
            node={
                "request_timeout_s": 2,
                "max_instance_mb": 64,
                # every legitimate sender here comes from 127.0.0.1 (the hostile sockets
                # from addresses of their own)
                "max_connections_per_address": 24,
                "max_associations": 16,
                "allowed_callers": [{"ae_title": "STORESCU"}, {"ae_title": "BOMBER"}],
            },
            pipeline={"workers": 2},
            scrub={"max_depth": 64},
        )
        with running(node), Hostile(node.port):
            results: dict[str, Any] = {}

            def record(key: str, work: Any) -> threading.Thread:
                return threading.Thread(target=lambda: results.update({key: work()}))

            threads = [
                record(f"study{n}", lambda n=n: storescu(node.port, tmp_path / f"study{n}"))
                for n in range(SENDERS)
            ]
            threads += [
                record(kind, lambda k=kind, o=o: send(node.port, tmp_path / k, *o))
                for kind, o in folders.items()
            ]
            threads.append(
                record(
                    "deflated",
                    lambda: run_python(
                        SEND_AS_IS, str(node.port), str(tmp_path / "bombs" / "deflated.dcm")
                    ),
                )
            )
            threads.append(record("odd", lambda: storescu(node.port, odd)))
            threads.append(record("oversized", lambda: storescu(node.port, oversized)))
            threads.append(record("4gb", lambda: _announce_4gb_pdu(node.port)))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            node.wait_idle(120)
            assert node.proc is not None
            peaks = {pid: memory_mb(pid)[0] for pid in family(node.proc.pid)}
    finally:
        os.umask(old_umask)

    # Every legitimate instance went through, whatever else was going on.
    for n in range(SENDERS):
        assert results[f"study{n}"].returncode == 0, results[f"study{n}"].stderr
    delivered = [pydicom.dcmread(p) for p in node.out.rglob("*.dcm")]
    strays = [ds for ds in delivered if ds.get("Modality") not in ("CT", "")]
    assert not strays, "a bomb was delivered"
    subjects = {str(ds.PatientID) for ds in delivered}
    assert len(subjects) >= SENDERS
    assert len(delivered) >= sum(len(s) for s in studies)
    # Every bad item ended where an administrator can see why.
    reasons: dict[str, int] = {}
    for sidecar in (node.spool / "quarantine").rglob("*.json"):
        info = json.loads(sidecar.read_text())
        reasons[info["reason"]] = reasons.get(info["reason"], 0) + 1
    wanted: dict[str, int] = {}
    for reason, _words in expected.values():
        wanted[reason] = wanted.get(reason, 0) + 1
    wanted["too-deep"] = 1
    for reason, count in wanted.items():
        assert reasons.get(reason, 0) >= count, (reason, reasons)
    assert results["deflated"] == 0  # acknowledged, then quarantined: nothing lost
    assert Pseudonymizer(SECRET).uid(big_uid) not in {str(ds.SOPInstanceUID) for ds in delivered}
    assert not any((node.spool / "incoming").iterdir())
    assert results["4gb"][:1] == b"\x07"  # A-ABORT, before anything was buffered
    # Memory: the listener and every worker stay far from a gigabyte.
    assert max(peaks.values()) < 1024 and sum(peaks.values()) < 2048, peaks
    # No planted value in the log; no traceback either.
    log = node.log.read_text(errors="replace")
    assert MARK not in log and MARK.lower() not in log
    assert "Traceback" not in log
    for ds in delivered:
        assert MARK not in str(ds)
    # Nothing the node wrote is readable by others, under umask 022.
    for root in (node.spool, node.out, node.audit.parent):
        for path in root.rglob("*"):
            if path.is_symlink():
                continue
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o077 == 0, (path, oct(mode))
