"""Byte-level mutation campaign against a running node: what a damaged or hostile
association does to it.

A real pynetdicom association (A-ASSOCIATE-RQ, a C-STORE of tests/phi.py's planted instance
in P-DATA-TF PDUs, A-RELEASE-RQ) is recorded once through a forwarder, then replayed to the
node with one to four changes of its bytes: a bit flipped, a byte set, a span deleted or
copied, the stream cut, a PDU's or a PDV item's length nudged, a fragment's control header
(command / data set, last or not) changed. Each mutant gets its own SOP Instance UID (same
length), so each clean copy is its own file. The node is the CLI in a subprocess
(``tests.peers.NodeProcess``), folder destination, default configuration.

Findings:

- the node down, or a C-ECHO from a well-behaved SCU failing after a mutant;
- a traceback or an ``internal-error`` in the node's log;
- an acknowledged instance (a C-STORE-RSP with status 0x0000 came back) that is neither
  delivered nor in quarantine once the node is idle: received and lost;
- a delivered copy holding a planted string (``tests.phi.leaks``).

``--tls``: the node requires mutual TLS, and the mutated bytes travel inside it (what a sender
holding a valid certificate can send); ``--parallel``: mutants replayed at once.

    python tools/mutate_network.py --seed 1 --count 300 --out /tmp/network [--tls] [--parallel 12]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import re
import socket
import ssl
import struct
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom
from pynetdicom import AE, transport

from dicomnode.scrub.pseudonym import Pseudonymizer
from tests.conftest import SECRET
from tests.peers import NodeProcess, echo, make_certificates
from tests.phi import PHI, leaks, planted_dataset

CALLER = "MUTANT"
_UID = (PHI["uid_root"] + ".1.1.1").encode()  # the planted SOP Instance UID
_C_STORE_RSP = b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x80"  # (0000,0100) US 0x8001
_SUCCESS = b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00"  # (0000,0900) US 0x0000


def instance_uid(index: int) -> bytes:
    """Mutant ``index``'s SOP Instance UID, as long as the planted one (PDV lengths hold)."""
    tail = f".{10000 + index}".encode()
    return _UID[: -len(tail)] + tail


def record(port: int, tls: ssl.SSLContext | None = None) -> bytes:
    """What a pynetdicom SCU sends (over TLS with ``tls``) to store the planted instance on
    the node at ``port``: every PDU its socket is given to send, the association's own bytes
    whether or not TLS carries them. (A forwarder in between, as this was, read and wrote
    one TLS socket from two threads, which OpenSSL does not allow: now and then the request
    never reached the node. pynetdicom's EVT_DATA_SENT does not do: dicomnode's SCU sends
    through its own ``send``, which does not emit it.)"""
    sent: list[bytes] = []
    original = transport.AssociationSocket.send

    def send(self: transport.AssociationSocket, bytestream: bytes) -> None:
        sent.append(bytes(bytestream))
        original(self, bytestream)

    ds = planted_dataset()
    ae = AE(ae_title=CALLER)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    transport.AssociationSocket.send = send  # type: ignore[method-assign]
    try:
        assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title="DICOMNODE",
            tls_args=(tls, "localhost") if tls is not None else None,
        )
        if not assoc.is_established:
            raise SystemExit("the node did not accept the recording association")
        status = assoc.send_c_store(ds)
        assoc.release()
    finally:
        transport.AssociationSocket.send = original  # type: ignore[method-assign]
    if status is None or status.Status != 0:
        raise SystemExit(f"the recording C-STORE failed: {status}")
    return b"".join(sent)


def _pdus(stream: bytes) -> list[int]:
    """Where each PDU of ``stream`` starts."""
    starts, at = [], 0
    while at + 6 <= len(stream):
        starts.append(at)
        at += 6 + struct.unpack_from(">I", stream, at + 2)[0]
    return starts


def mutate(stream: bytes, rng: random.Random) -> bytes:
    """One to four random changes of an association's bytes."""
    out = bytearray(stream)
    for _ in range(rng.choice([1, 1, 2, 4])):
        if len(out) < 8:
            break
        kind = rng.randrange(8)
        at = rng.randrange(len(out))
        starts = _pdus(bytes(out))
        data_pdus = [s for s in starts if out[s] == 0x04]
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at] = rng.choice([0, 0xFF, rng.randrange(256)])
        elif kind == 2:
            del out[at : at + rng.randrange(1, 16)]
        elif kind == 3:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randrange(2, 64)]
        elif kind == 4:
            del out[at:]
        elif kind == 5 and starts:  # a PDU's length
            spot = rng.choice(starts) + 2
            old = struct.unpack_from(">I", out, spot)[0]
            new = rng.choice(
                [0, 1, old - 1, old + 1, old + 100, 0xFFFFFFFF, rng.randrange(1 << 16)]
            )
            struct.pack_into(">I", out, spot, new & 0xFFFFFFFF)
        elif kind == 6 and data_pdus:  # the first PDV item's length
            spot = rng.choice(data_pdus) + 6
            if spot + 4 <= len(out):
                old = struct.unpack_from(">I", out, spot)[0]
                new = rng.choice([0, 1, 2, old - 1, old + 1, old * 2, 0xFFFFFFFF])
                struct.pack_into(">I", out, spot, new & 0xFFFFFFFF)
        elif kind == 7 and data_pdus:  # a PDV's context ID or control header
            spot = rng.choice(data_pdus) + 10 + rng.randrange(2)
            if spot < len(out):
                out[spot] = rng.choice([0, 1, 2, 3, 0xFF, rng.randrange(256)])
    return bytes(out)


def replay(
    port: int, data: bytes, first: int, seconds: float, tls: ssl.SSLContext | None = None
) -> tuple[bytes, bool]:
    """Send ``data`` as an SCU would (inside TLS with ``tls``): its first ``first`` bytes
    (the A-ASSOCIATE-RQ), then, once the node has answered (or half of ``seconds`` has
    passed), the rest; returns the node's answers until it closes or ``seconds`` pass, and
    whether it closed."""
    received = bytearray()
    started = time.monotonic()

    def read(until: float, stop_on_answer: bool) -> bool:
        """Read until ``until``; False once the node has closed the connection."""
        before = len(received)
        while time.monotonic() < until:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except OSError:
                return False
            if not chunk:
                return False
            received.extend(chunk)
            if stop_on_answer and len(received) > before:
                return True
        return True

    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), seconds))
        if tls is not None:
            try:
                sock = stack.enter_context(tls.wrap_socket(sock))
            except OSError:
                return b"", True  # the node refused the handshake: nothing reached DICOM
        sock.settimeout(0.1)
        with contextlib.suppress(OSError):
            sock.sendall(data[:first])
        open_ = read(started + seconds / 2, stop_on_answer=True)
        if open_:
            with contextlib.suppress(OSError):
                sock.sendall(data[first:])
            open_ = read(started + seconds, stop_on_answer=False)
        if open_ and ended(bytes(received)):  # a grace for a busy machine before "kept open"
            open_ = read(time.monotonic() + 2, stop_on_answer=False)
    return bytes(received), not open_


def ended(answer: bytes) -> bool:
    """Whether the node's answer ends the association (A-ASSOCIATE-RJ, A-RELEASE-RP or
    A-ABORT): then it must close the connection, not leave it to the peer."""
    return any(answer[at] in (0x03, 0x06, 0x07) for at in _pdus(answer))


def acknowledged(answer: bytes) -> bool:
    """Whether the node's answer holds a C-STORE-RSP with status Success."""
    at = answer.find(_C_STORE_RSP)
    return at >= 0 and answer.find(_SUCCESS, at - 64 if at >= 64 else 0) >= 0


def without_pixel_data(data: bytes) -> bytes:
    """A clean copy's bytes without its Pixel Data value: a mutation that copies header bytes
    into the planted 32 pixel bytes makes them pixel values (an image whose grey levels
    spell an ID, as a sender could make one), not a header the node failed to clean."""
    ds = pydicom.dcmread(io.BytesIO(data))
    elem: Any = ds.get_item(0x7FE00010)
    if elem is None or getattr(elem, "value_tell", None) is None:
        return data
    start: int = elem.value_tell
    return data[:start] + data[start + (elem.length if elem.length != 0xFFFFFFFF else 0) :]


_BAD_LOG = re.compile(r"Traceback|internal-error|Exception in thread")


def client_tls(certificates: dict[str, Path]) -> ssl.SSLContext:
    """A client's TLS context for the node of :func:`campaign` (its CA, a client certificate)."""
    context = ssl.create_default_context(cafile=str(certificates["ca"]))
    context.check_hostname = False
    context.load_cert_chain(str(certificates["client"]), str(certificates["client-key"]))
    return context


def campaign(
    seed: int,
    count: int,
    out: Path,
    seconds: float = 3,
    parallel: int = 4,
    tls: bool = False,
) -> dict[str, Any]:
    """Replay ``count`` mutants to a fresh node (over mutual TLS with ``tls``: the bytes
    mutated are the association's, inside the encryption); returns the counts and the
    findings."""
    warnings.simplefilter("ignore")
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "request_timeout_s": 2,
        "max_connections_per_address": 64,
        "allowed_callers": [{"ae_title": CALLER}],
    }
    context = None
    if tls:
        certificates = make_certificates(out)
        settings["tls"] = {
            "certificate": str(certificates["node"]),
            "private_key": str(certificates["node-key"]),
            "ca_certificates": str(certificates["ca"]),
            "require_client_certificate": True,
        }
        context = client_tls(certificates)
    node = NodeProcess(out / "node", node=settings)
    node.start()
    assert node.proc is not None
    process = node.proc
    counts: Counter[str] = Counter()
    findings: list[dict[str, Any]] = []
    try:
        base = record(node.port, context)
        assert base.count(_UID) == 2, "the UID in the command and in the data set"
        first = _pdus(base)[1]  # the A-ASSOCIATE-RQ's length
        mutants = []
        for index in range(count):
            mutants.append((index, mutate(base.replace(_UID, instance_uid(index)), rng)))

        def one(job: tuple[int, bytes]) -> tuple[int, bool, bool]:
            index, data = job
            answer, closed = replay(node.port, data, first, seconds, context)
            return index, acknowledged(answer), ended(answer) and not closed

        acked: list[int] = []
        with ThreadPoolExecutor(parallel) as pool:
            for done, (index, ok, kept_open) in enumerate(pool.map(one, mutants), 1):
                counts["acknowledged" if ok else "not acknowledged"] += 1
                if ok:
                    acked.append(index)
                if kept_open:
                    findings.append({"kind": "kept open after the end", "mutant": index})
                if done % 50 == 0 and not (
                    process.poll() is None and echo(node.port, CALLER, tls=context)
                ):
                    findings.append({"kind": "down", "after": done})
                    break
        if process.poll() is None and not echo(node.port, CALLER, tls=context):
            findings.append({"kind": "echo failed at the end"})
        node.wait_idle(300)
        # Every association ends within the request timeout once its peer is gone.
        deadline = time.monotonic() + 30
        while node.metrics().get("dicomnode_open_associations", 0) and time.monotonic() < deadline:
            time.sleep(1)
        still = node.metrics().get("dicomnode_open_associations", 0)
        if still:
            findings.append({"kind": "associations left open", "count": still})
        pseudo = Pseudonymizer(SECRET)
        pseudonyms = {pseudo.uid(instance_uid(i).decode()): i for i in range(count)}
        pseudonyms[pseudo.uid(_UID.decode())] = -1  # the recording
        found: set[int] = set()
        orphans = 0  # copies of a mutant whose data set's UID was itself mutated
        for path in node.out.rglob("*.dcm"):
            data = path.read_bytes()
            counts["delivered"] += 1
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            if uid in pseudonyms:
                found.add(pseudonyms[uid])
            else:
                orphans += 1
            leaked = leaks(without_pixel_data(data))
            if leaked:
                findings.append({"kind": "leak", "strings": leaked, "copy": str(path)})
        for path in (node.spool / "quarantine").rglob("*.dcm"):
            counts["quarantined"] += 1
            data = path.read_bytes()
            held = [i for i in range(count) if instance_uid(i) in data]
            found.update(held)
            orphans += not held
        unmatched = [i for i in acked if i not in found]
        if len(unmatched) > orphans:
            # more acknowledged instances unaccounted for than copies no mutant claims
            findings.extend({"kind": "lost", "mutant": i} for i in unmatched)
        for line in node.log.read_text(errors="replace").splitlines():
            if _BAD_LOG.search(line):
                findings.append({"kind": "log", "line": line[:300]})
        for index, data in mutants:
            if any(f.get("mutant") == index for f in findings):
                (out / f"mutant-{seed}-{index}.bin").write_bytes(data)
    finally:
        node.stop()
    return {"seed": seed, "counts": dict(counts), "findings": findings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("network-mutants"))
    parser.add_argument("--parallel", type=int, default=4, help="associations at once")
    parser.add_argument("--tls", action="store_true", help="over mutual TLS")
    args = parser.parse_args()
    result = campaign(args.seed, args.count, args.out, parallel=args.parallel, tls=args.tls)
    print(f"seed {result['seed']}: {result['counts']}")
    for finding in result["findings"]:
        print(finding)
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
