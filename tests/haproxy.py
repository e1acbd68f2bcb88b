"""HAProxy (Debian's, ``mode tcp``) in front of dicomnode nodes, with a health check that is a
real C-ECHO: for ``tests/test_load_balancer.py`` and ``bench/throughput.py``'s load-balancer
rows."""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

from dicomnode.dicomio import IMPLEMENTATION_CLASS_UID
from tests.conftest import require_tool
from tests.peers import free_port, wait_for

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
