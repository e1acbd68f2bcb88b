"""Real peers for the end-to-end tests: the node itself (as a subprocess of the real CLI),
dcmtk's storescu and storescp, and Orthanc, all on 127.0.0.1 with free ports."""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from dicomnode._scu import unread_rejection
from tests.conftest import SECRET, require_tool, unavailable
from tests.phi import PHI, planted_dataset, to_bytes

ROOT = Path(__file__).resolve().parent.parent
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}
# Debian's orthanc-dicomweb: STOW-RS, QIDO-RS and WADO-RS for Orthanc (no binary of its own).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def require_file(path: Path, package: str) -> Path:
    """A peer's file (a plugin); like ``require_tool``: fail under CI, skip elsewhere."""
    if not path.is_file():
        unavailable(f"{path} is missing (apt-get install {package}; 'make test' does it as root)")
    return path


def _ephemeral_low() -> int:
    """The lowest port the kernel picks for an outgoing connection's own end."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = random.Random()
_HANDED: collections.deque[int] = collections.deque(maxlen=512)


def free_port() -> int:
    """A port for a peer to listen on, chosen below the kernel's ephemeral range.

    A port from ``bind(0)`` is an ephemeral one: any outgoing connection on the machine (a
    node forwarding, storescu, Orthanc) may take it as its own end before the peer binds it,
    and the peer then cannot listen (a CI run lost 20 s and a test to that). Below the range
    only an explicit bind can take it; the last ports handed out are not handed out again.
    """
    high = _ephemeral_low()
    low = max(1024, high - 12000)
    for _ in range(1000):
        port = _PORTS.randrange(low, high)
        if port in _HANDED:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED.append(port)
        return port
    raise AssertionError(f"no free port between {low} and {high} on 127.0.0.1")


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_listening(proc: subprocess.Popen[Any], port: int, what: str, timeout: float = 20) -> None:
    """Wait for a peer we started to listen on ``port``; fail at once, with its exit code,
    if it exits first (it could not bind, or refused its arguments)."""
    wait_for(lambda: port_open(port) or proc.poll() is not None, timeout, what)
    if proc.poll() is not None:
        raise AssertionError(f"{what} exited with {proc.returncode} before listening on {port}")


def rejection_of(assoc: Any) -> Any:
    """The A-ASSOCIATE-RJ primitive an association got, whether pynetdicom read it or, losing
    the request race described in dicomnode/_scu.py, left it queued; None if none came."""
    if assoc.is_rejected:
        return assoc.acceptor.primitive
    return unread_rejection(assoc)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def echo(
    port: int, calling: str, called: str = "DICOMNODE", tls: ssl.SSLContext | None = None
) -> bool:
    """A C-ECHO from a well-behaved SCU (pynetdicom) succeeds (over TLS with ``tls``)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    tls_args = (tls, "localhost") if tls is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status is not None and status.Status == 0)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, and a node and a client certificate signed by it."""
    openssl = require_tool("openssl")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "ca-key", "node", "node-key")}
    paths.update({"client": folder / "client.pem", "client-key": folder / "client-key.pem"})

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA"),
        *("-keyout", str(paths["ca-key"]), "-out", str(paths["ca"])),
    )
    for name in ("node", "client"):
        csr = folder / f"{name}.csr"
        run(
            *("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}"),
            *("-keyout", str(paths[f"{name}-key"]), "-out", str(csr)),
        )
        run(
            *("x509", "-req", "-in", str(csr), "-CA", str(paths["ca"])),
            *("-CAkey", str(paths["ca-key"]), "-CAcreateserial", "-days", "1"),
            *("-out", str(paths[name])),
        )
    return paths


def make_study(
    folder: Path, series: int = 3, per_series: int = 5, patient: str = ""
) -> list[Dataset]:
    """A study of small CT instances carrying planted PHI; returns the datasets written."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    made = []
    for s in range(series):
        series_uid = generate_uid()
        for i in range(per_series):
            ds = planted_dataset()
            if patient:
                ds.PatientID = patient
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = s + 1
            ds.InstanceNumber = i + 1
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            (folder / f"s{s}_i{i:04d}.dcm").write_bytes(to_bytes(ds))
            made.append(ds)
    return made


def storescu(
    port: int,
    *paths: Path,
    aec: str = "DICOMNODE",
    aet: str = "STORESCU",
    debug: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Send files and folders with dcmtk's storescu (the modality)."""
    exe = require_tool("storescu")
    args = [exe, "-aet", aet, "-aec", aec, "-nh"]
    if debug:
        args.append("-d")
    args += ["127.0.0.1", str(port), "+sd", "+r", *map(str, paths)]
    return subprocess.run(args, capture_output=True, text=True, env=PEER_ENV, timeout=timeout)


def acknowledged(output: str) -> list[str]:
    """SOP Instance UIDs whose C-STORE got a success response, from `storescu -d` output."""
    uids = []
    lines = output.splitlines()
    for n, line in enumerate(lines):
        if line.startswith("I: Received Store Response"):
            window = lines[n + 1 : n + 12]
            uid = next(
                (
                    re.sub(r".*: ", "", w).strip()
                    for w in window
                    if "Affected SOP Instance UID" in w
                ),
                None,
            )
            status = next((w for w in window if "DIMSE Status" in w), "")
            if uid and "0x0000" in status:
                uids.append(uid)
    return uids


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


class NodeProcess:
    """``python -m dicomnode serve`` with a configuration written for the test."""

    def __init__(
        self, workdir: Path, destinations: list[dict[str, Any]] | None = None, **sections: Any
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.spool = workdir / "spool"
        self.out = workdir / "out"
        node = {"port": self.port, "disk_floor_mb": 1, **sections.pop("node", {})}
        self.metrics_port = free_port()
        self.audit = workdir / "audit" / "audit.jsonl"
        self.config = {
            "node": node,
            "spool": {"path": str(self.spool)},
            "pipeline": {"workers": 2},
            "metrics": {"port": self.metrics_port},
            # Any free port: nodes of tests running side by side never fight over 8108.
            "review": {"port": 0, "users_file": str(workdir / "users.json")},
            "logging": {"audit_file": str(self.audit)},
            "destinations": destinations
            or [{"name": "folder", "type": "folder", "path": str(self.out)}],
            **sections,
        }
        self.config_path = workdir / "dicomnode.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.proc: subprocess.Popen[str] | None = None
        self.log = workdir / "node.log"

    def start(self, wait: bool = True) -> NodeProcess:
        env = {**os.environ, "DICOMNODE_SECRET": SECRET.decode()}
        env.pop("DICOMNODE_SECRET_FILE", None)
        self._log = open(self.log, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode", "serve", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            text=True,
        )
        if wait:
            wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 60, "the node")
            assert self.proc.poll() is None, self.log.read_text()
        return self

    def metrics(self) -> dict[str, float]:
        """The node's metrics, read over HTTP as Prometheus would: {'name{labels}': value}."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def kill(self) -> None:
        assert self.proc is not None
        # The whole process group would also take the workers; -9 on the node alone is the
        # harsher case (workers are daemons and die with it, or are orphaned mid-item).
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def kill_all(self) -> None:
        """``kill -9`` of the whole node, as when its machine or container dies: the node's
        process and all it started (listener processes, pipeline workers). The node alone is
        not enough since ``node.listeners``: its listeners then let open associations finish
        (and a test that meant to cut a transfer off would see every instance stored)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)  # no listener or worker restarted meanwhile
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.kill()

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)

    def count(self, state: str) -> int:
        folder = self.spool / state
        if not folder.is_dir():
            return 0
        return sum(1 for p in folder.rglob("*.dcm"))

    def idle(self) -> bool:
        return all(self.count(s) == 0 for s in ("incoming", "work", "outgoing"))

    def wait_idle(self, timeout: float = 120) -> None:
        wait_for(self.idle, timeout, f"the node to drain its spool ({self.log})", 0.25)


@contextlib.contextmanager
def running(node: NodeProcess) -> Iterator[NodeProcess]:
    node.start()
    try:
        yield node
    finally:
        node.stop()


class Storescp:
    """dcmtk's storescp as a research PACS stand-in."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        aet: str = "STORESCP",
        accept_all: bool = True,
        tls: tuple[Path, Path] | None = None,
        peer_ca: Path | None = None,
        bit_preserving: bool = False,
    ) -> None:
        """``accept_all=False``: accept Implicit VR Little Endian only (a fussy PACS);
        ``bit_preserving``: ``+B``, each instance written to disk as it arrives (fastest).
        ``tls=(key, certificate)``: DICOM over TLS; with ``peer_ca`` the caller must present
        a certificate from that CA, without it any client is accepted."""
        self.port = port or free_port()
        self.aet = aet
        self.accept_all = accept_all
        self.tls = tls
        self.peer_ca = peer_ca
        self.bit_preserving = bit_preserving
        self.out = workdir / "storescp"
        self.out.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Storescp:
        exe = require_tool("storescp")
        tls: list[str] = []
        if self.tls is not None:
            key, certificate = self.tls
            tls = ["+tls", str(key), str(certificate)]
            tls += ["+cf", str(self.peer_ca), "-rc"] if self.peer_ca else ["-ic"]
        self.proc = subprocess.Popen(
            [
                exe,
                "-aet",
                self.aet,
                "-dhl",
                "+xa" if self.accept_all else "+xi",
                *(["+B"] if self.bit_preserving else []),
                *tls,
                "-od",
                str(self.out),
                "-fe",
                ".dcm",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=PEER_ENV,
        )
        wait_listening(self.proc, self.port, "storescp")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def files(self) -> list[Path]:
        return sorted(self.out.glob("*.dcm"))

    def destination(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": "pacs",
            "type": "dicom",
            "ae_title": self.aet,
            "host": "127.0.0.1",
            "port": self.port,
            **extra,
        }


class Orthanc:
    """Orthanc as the research PACS, headless, with its REST API on loopback."""

    def __init__(
        self,
        workdir: Path,
        dicomweb: bool = False,
        users: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """``dicomweb``: load Debian's DICOMweb plugin (``/dicom-web/``); ``users``: HTTP
        basic authentication with these users and passwords (the helpers use the first);
        ``extra``: more configuration (e.g. Lua scripts and modalities for a router)."""
        self.extra = dict(extra or {})
        self.dir = workdir / "orthanc"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.dicomweb = dicomweb
        self.users = dict(users or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def _open(self, path: str) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        return urllib.request.urlopen(request, timeout=10)

    def start(self) -> Orthanc:
        exe = require_tool("Orthanc")
        plugins = [str(require_file(DICOMWEB_PLUGIN, "orthanc-dicomweb"))] if self.dicomweb else []
        config = {
            "Name": "dicomnode-test",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "HttpPort": self.http_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "Plugins": plugins,
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
            **self.extra,
        }
        path = self.dir / "orthanc.json"
        path.write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [exe, f"--logfile={self.dir / 'orthanc.log'}", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=PEER_ENV,
        )
        wait_for(self._up, 30, "Orthanc")
        return self

    def _up(self) -> bool:
        try:
            self.get("/system")
        except OSError:
            return False
        return True

    def get(self, path: str) -> Any:
        with self._open(path) as r:
            return json.loads(r.read())

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def tags(self, instance: str) -> dict[str, Any]:
        return dict(self.get(f"/instances/{instance}/tags?simplify"))

    def file(self, instance: str) -> bytes:
        with self._open(f"/instances/{instance}/file") as r:
            return bytes(r.read())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)

    def destination(self) -> dict[str, Any]:
        return {
            "name": "orthanc",
            "type": "dicom",
            "ae_title": "ORTHANC",
            "host": "127.0.0.1",
            "port": self.dicom_port,
        }


__all__ = [
    "DICOMWEB_PLUGIN",
    "PHI",
    "NodeProcess",
    "Orthanc",
    "Storescp",
    "acknowledged",
    "free_port",
    "make_study",
    "require_file",
    "running",
    "storescu",
    "wait_for",
]
