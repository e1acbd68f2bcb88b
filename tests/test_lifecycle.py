"""The node's life as an operator sees it, with real processes: one node per spool, ports that
cannot be bound, SIGTERM while a sender is in the middle of a study, Ctrl-C to the whole
process group, and ``make run`` on other ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from dicomnode.dicomio import read_instance
from dicomnode.scrub.pseudonym import Pseudonymizer
from tests.conftest import SECRET, require_tool, unavailable
from tests.peers import (
    PEER_ENV,
    ROOT,
    NodeProcess,
    acknowledged,
    free_port,
    make_study,
    port_open,
    running,
    wait_for,
)
from tests.test_cli import dicomnode

pytestmark = pytest.mark.peers


class GroupNode(NodeProcess):
    """A node in a process group (session) of its own, as a terminal or systemd starts it:
    a signal to the group reaches its workers too, and never the test runner."""

    def start(self, wait: bool = True) -> GroupNode:
        env = {**os.environ, "DICOMNODE_SECRET": SECRET.decode()}
        env.pop("DICOMNODE_SECRET_FILE", None)
        self._log = open(self.log, "a")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode", "serve", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            text=True,
            start_new_session=True,
        )
        self.proc = proc
        if wait:
            wait_for(lambda: port_open(self.port) or proc.poll() is not None, 60, "the node")
            assert proc.poll() is None, self.log.read_text()
        return self

    def signal_group(self, signum: int, timeout: float = 60) -> int:
        assert self.proc is not None
        os.killpg(self.proc.pid, signum)
        self.proc.wait(timeout)
        self._log.close()
        return int(self.proc.returncode)


def serve(config: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``dicomnode serve`` expected to refuse to start (it returns)."""
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", "serve", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DICOMNODE_SECRET": SECRET.decode()},
    )


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start says on standard error, after checking it is one line,
    exit code 2 and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("dicomnode: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def log_time(line: str) -> float:
    """The time of a text-format log line (``2026-01-02 03:04:05,678 INFO ...``)."""
    return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000


def node_lines(node: NodeProcess) -> list[str]:
    return [line for line in node.log.read_text().splitlines() if " dicomnode.node: " in line]


def accounted(node: NodeProcess, uids: set[str]) -> set[str]:
    """Those of ``uids`` (as sent) delivered to the node's folder destination or waiting in
    its spool (originals in incoming/ or work/, clean copies in outgoing/)."""
    pseudo = Pseudonymizer(SECRET)
    seen = set()
    for folder in (node.out, node.spool / "outgoing", node.spool / "incoming", node.spool / "work"):
        for path in folder.rglob("*.dcm"):
            seen.add(str(read_instance(path).SOPInstanceUID))
    return {uid for uid in uids if uid in seen or pseudo.uid(uid) in seen}


class SlowSender(threading.Thread):
    """A modality that sends a study over one association, pausing between C-STOREs; keeps
    the time of each success response."""

    def __init__(self, port: int, files: list[Path], pause: float) -> None:
        super().__init__(daemon=True)
        self.port, self.files, self.pause = port, files, pause
        self.acks: list[tuple[float, str]] = []
        self.aborted = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            ae = AE(ae_title="SLOWSCU")
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
            first = pydicom.dcmread(self.files[0])
            ae.add_requested_context(
                first.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
            assoc = ae.associate("127.0.0.1", self.port, ae_title="DICOMNODE")
            assert assoc.is_established
            for path in self.files:
                ds = pydicom.dcmread(path)
                if assoc.is_established:
                    status = assoc.send_c_store(ds)
                    if getattr(status, "Status", None) == 0x0000:
                        self.acks.append((time.time(), str(ds.SOPInstanceUID)))
                if not assoc.is_established:
                    self.aborted = assoc.is_aborted
                    return
                time.sleep(self.pause)
            assoc.release()
        except BaseException as exc:  # reported by the test
            self.error = exc

    @property
    def acked(self) -> set[str]:
        return {uid for _when, uid in self.acks}


# -- one node per spool ------------------------------------------------------------------------


def test_second_node_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    first = NodeProcess(tmp_path / "first")
    with running(first):
        assert first.proc is not None
        second = NodeProcess(tmp_path / "second", spool={"path": str(first.spool)})
        line = refusal(serve(second.config_path))
        assert f"pid {first.proc.pid}" in line, line
        assert "dicomnode serve" in line and "spool.path" in line, line
        assert not port_open(second.port)
        # The operator's commands on the running node's spool still work.
        config = str(first.config_path)
        assert dicomnode("status", "--config", config).returncode == 0
        assert dicomnode("quarantine", "list", "--config", config).returncode == 0
        result = dicomnode("retry", "--config", config)
        assert result.returncode == 0 and "re-queued 0" in result.stdout, result.stderr
    # Once the first has stopped, the spool is free.
    assert "stopped" in first.log.read_text()
    with running(NodeProcess(tmp_path / "third", spool={"path": str(first.spool)})):
        pass


# -- ports ---------------------------------------------------------------------------------


def _taken(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.mark.parametrize("setting", ["node.port", "metrics.port"])
def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path, setting: str) -> None:
    node = NodeProcess(tmp_path)
    port = node.port if setting == "node.port" else node.metrics_port
    with _taken(port):
        line = refusal(serve(node.config_path))
    assert f"127.0.0.1:{port}" in line and setting in line and "in use" in line, line
    assert ("--port" if setting == "node.port" else "--metrics-port") in line, line


def test_a_bind_address_not_of_this_host_is_one_line(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, node={"bind": "192.0.2.1"})  # TEST-NET-1: nobody's
    line = refusal(serve(node.config_path))
    assert f"192.0.2.1:{node.port}" in line and "node.bind" in line, line


def test_a_privileged_port_without_the_capability_is_one_line(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, node={"port": 104})
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            unavailable("running as root, and setpriv (util-linux) is not there to drop the cap")
        prefix = [setpriv, "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service"]
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "dicomnode", "serve", "--config", str(node.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DICOMNODE_SECRET": SECRET.decode()},
    )
    line = refusal(result)
    assert "127.0.0.1:104" in line and "CAP_NET_BIND_SERVICE" in line and "node.port" in line


# -- SIGTERM with an association open ---------------------------------------------------------


@pytest.mark.parametrize("ends", ["finishes", "aborted"])
def test_sigterm_while_a_sender_is_mid_study(tmp_path: Path, ends: str) -> None:
    make_study(tmp_path / "study", series=1, per_series=60 if ends == "aborted" else 12)
    files = sorted((tmp_path / "study").glob("*.dcm"))
    uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in files}
    stop_timeout = 2 if ends == "aborted" else 30
    node = NodeProcess(tmp_path / "node", node={"stop_timeout_s": stop_timeout})
    node.start()
    assert node.proc is not None
    sender = SlowSender(node.port, files, pause=0.15)
    sender.start()
    wait_for(lambda: len(sender.acks) >= 3 or not sender.is_alive(), 30, "the first stores")
    signalled = time.time()
    node.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "no new associations" in node.log.read_text(), 10, "the stop")
    wait_for(lambda: not port_open(node.port), 3, "the listener to close")
    node.proc.wait(60)
    code = node.stop()
    sender.join(30)
    assert sender.error is None, repr(sender.error)
    lines = node_lines(node)
    stopped = [line for line in lines if "INFO dicomnode.node: stopped" in line]
    assert len(stopped) == 1 and lines[-1] == stopped[0], lines[-5:]
    if ends == "aborted" and "some work was interrupted" in stopped[0]:
        # A worker that could not finish its instance within the 2 s (a loaded machine) is
        # stopped too, and says so with exit code 1; its item waits in the spool.
        assert code == 1, node.log.read_text()[-3000:]
    else:
        assert code == 0, node.log.read_text()[-3000:]
        assert stopped[0].endswith("INFO dicomnode.node: stopped"), stopped[0]
    # No C-STORE was acknowledged once "stopped" was logged.
    assert sender.acks and max(when for when, _uid in sender.acks) < log_time(stopped[0])
    if ends == "finishes":
        assert sender.acked == uids and not sender.aborted
        assert not [line for line in lines if "aborting" in line]
    else:
        assert sender.aborted and 3 <= len(sender.acked) < len(uids)
        aborting = next(line for line in lines if "aborting 1 association" in line)
        assert log_time(aborting) - signalled >= stop_timeout - 0.5, aborting
    # Every acknowledged instance is delivered or waits in the spool; the next start
    # delivers what waits.
    assert accounted(node, sender.acked) == sender.acked
    with running(node):
        node.wait_idle(60)
    pseudo = Pseudonymizer(SECRET)
    delivered = {str(read_instance(p).SOPInstanceUID) for p in node.out.rglob("*.dcm")}
    assert {pseudo.uid(uid) for uid in sender.acked} <= delivered


# -- the whole process group -------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_process_group_stops_cleanly(tmp_path: Path, signum: int) -> None:
    make_study(tmp_path / "study", series=2, per_series=40)
    node = GroupNode(tmp_path / "node")
    node.start()
    storescu = [require_tool("storescu"), "-d", "-aet", "MODALITY", "-aec", "DICOMNODE", "-nh"]
    sender = subprocess.Popen(
        [*storescu, "127.0.0.1", str(node.port), "+sd", "+r", str(tmp_path / "study")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=PEER_ENV,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(sender.stdout or []), daemon=True)
    reader.start()
    # Signal while the workers have items in hand.
    wait_for(lambda: node.count("outgoing") + len(list(node.out.rglob("*.dcm"))) >= 5, 60, "work")
    code = node.signal_group(signum)
    sender.wait(60)
    reader.join(10)
    log = node.log.read_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
    assert "restarting" not in log, log[-3000:]
    assert node_lines(node)[-1].endswith("INFO dicomnode.node: stopped"), log[-2000:]
    acked = set(acknowledged("".join(lines)))
    assert acked, "nothing was acknowledged before the signal: the test proves nothing"
    assert accounted(node, acked) == acked
    assert not any(p.is_file() for p in node.spool.glob("quarantine/*/*.dcm"))


# -- make run ----------------------------------------------------------------------------------


def test_make_run_takes_other_ports() -> None:
    make = shutil.which("make")
    if make is None:
        unavailable("make is not installed")
    env: dict[str, Any] = {
        k: v for k, v in os.environ.items() if k not in ("PORT", "METRICS_PORT", "MAKEFLAGS")
    }

    def dry_run(*assignments: str) -> str:
        result = subprocess.run(
            [make, "-n", "run", *assignments], capture_output=True, text=True, cwd=ROOT, env=env
        )
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines() if " serve " in line][-1]

    port, metrics_port = free_port(), free_port()
    assert dry_run(f"PORT={port}", f"METRICS_PORT={metrics_port}").endswith(
        f"dicomnode serve --demo --port {port} --metrics-port {metrics_port}"
    )
    assert dry_run().endswith("dicomnode serve --demo")
