"""Listener processes (``node.listeners``): several processes accept on one port, the limits
and the metrics hold for the node as a whole, a killed listener is replaced, and a node with
listeners stops, and dies, as one with a single listener does."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode.config import NodeConfig, usable_cores
from dicomnode.gate import SharedCounts
from tests.peers import PEER_ENV, NodeProcess, make_study, rejection_of, wait_for

pytestmark = pytest.mark.peers


def listening_pids(port: int) -> set[int]:
    """The processes with a socket listening on ``port`` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        pids.add(int(pid))
                        break
    return pids


def delivered(node: NodeProcess) -> int:
    return sum(1 for _ in node.out.rglob("*.dcm"))


def listener_pids(node: NodeProcess) -> set[int]:
    """The listener processes: those with the port's socket, apart from the node that made it."""
    assert node.proc is not None
    return listening_pids(node.port) - {node.proc.pid}


def listeners_up(node: NodeProcess, count: int) -> bool:
    try:
        metrics = node.metrics()
    except OSError:
        return False
    return metrics.get("dicomnode_listeners") == count and len(listener_pids(node)) == count


@contextlib.contextmanager
def started(node: NodeProcess, listeners: int) -> Iterator[NodeProcess]:
    node.start()
    try:
        wait_for(lambda: listeners_up(node, listeners), 60, "the listener processes")
        yield node
    finally:
        node.stop()


def associate(port: int, calling: str = "TESTSCU") -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title="DICOMNODE")


def test_default_is_one_listener_per_core() -> None:
    cores = usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert NodeConfig().listener_processes == cores
    assert NodeConfig(listeners=0).listener_processes == cores
    assert NodeConfig(listeners=1).listener_processes == 1
    assert NodeConfig(listeners=3).listener_processes == 3


def test_shared_counts_hold_across_rows_and_a_dead_row_is_given_back() -> None:
    import multiprocessing as mp

    shared = SharedCounts(mp.get_context("spawn"), 4)
    assert shared.take_slot(0, 2) and shared.take_slot(1, 2)
    assert not shared.take_slot(2, 2)
    assert shared.address_in(0, "10.0.0.1", 2) and shared.address_in(3, "10.0.0.1", 2)
    assert not shared.address_in(1, "10.0.0.1", 2)
    shared.forget(0)  # listener 0 died: its slot and its connection are free again
    assert shared.associations == 1
    assert shared.take_slot(2, 2)
    assert shared.address_in(1, "10.0.0.1", 2)


def test_listeners_share_the_port_and_the_metrics_add_up(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", node={"listeners": 2})
    with started(node, 2):
        # One socket: the node made it (and never accepts on it), the two listeners accept.
        assert node.proc is not None and node.proc.pid in listening_pids(node.port)
        assert len(listener_pids(node)) == 2
        senders = []
        for n in range(4):
            make_study(tmp_path / f"study{n}", series=1, per_series=5)
            senders.append(
                subprocess.Popen(
                    [
                        *("storescu", "-aet", f"SENDER{n}", "-aec", "DICOMNODE", "-nh"),
                        *("127.0.0.1", str(node.port), "+sd", "+r", str(tmp_path / f"study{n}")),
                    ],
                    env=PEER_ENV,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        for sender in senders:
            _, err = sender.communicate(timeout=120)
            assert sender.returncode == 0, err.decode(errors="replace")[-500:]
        node.wait_idle(120)
        assert delivered(node) == 20
        metrics = node.metrics()
        received = {
            k: v for k, v in metrics.items() if k.startswith("dicomnode_instances_received_total")
        }
        assert sum(received.values()) == 20
        assert all(v == 5 for v in received.values()) and len(received) == 4
        assert metrics["dicomnode_open_associations"] == 0


def test_max_associations_holds_across_listeners(tmp_path: Path) -> None:
    node = NodeProcess(
        tmp_path / "node", node={"listeners": 2, "max_associations": 2, "max_pdu": 16384}
    )
    with started(node, 2):
        opened: list[Association] = []
        try:
            for _ in range(6):  # spread over both listeners by the kernel
                assoc = associate(node.port)
                if assoc.is_established:
                    opened.append(assoc)
                else:
                    assert rejection_of(assoc) is not None
            assert len(opened) == 2
            assert node.metrics()["dicomnode_open_associations"] == 2
            wait_for(
                lambda: (
                    node.metrics().get('dicomnode_stores_refused_total{reason="slots-full"}') == 4
                ),
                10,
                "the refusals counted by the node",
            )
        finally:
            for assoc in opened:
                assoc.release()
        wait_for(lambda: node.metrics()["dicomnode_open_associations"] == 0, 10, "slots back")
        again = associate(node.port)
        assert again.is_established
        again.release()


def test_connections_per_address_hold_across_listeners(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", node={"listeners": 2, "max_connections_per_address": 3})
    with started(node, 2):
        socks = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(8)]
        try:
            time.sleep(1.0)
            still_open = 0
            for sock in socks:
                sock.setblocking(False)
                try:
                    closed = sock.recv(1) == b""
                except BlockingIOError:
                    closed = False
                except ConnectionResetError:
                    closed = True
                still_open += not closed
            assert still_open == 3
            # the gate's refusals, counted in the listeners, exported by the node
            wait_for(
                lambda: (
                    node.metrics().get('dicomnode_connections_refused_total{reason="per-address"}')
                    == 5
                ),
                10,
                "the connection refusals in the node's metrics",
            )
        finally:
            for sock in socks:
                sock.close()


def test_a_killed_listener_is_replaced(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", node={"listeners": 2})
    with started(node, 2):
        victim = min(listener_pids(node))
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: (
                node.metrics().get("dicomnode_listener_restarts_total") == 1
                and listeners_up(node, 2)
                and victim not in listener_pids(node)
            ),
            60,
            "a new listener process",
        )
        make_study(tmp_path / "study", series=1, per_series=6)
        for _ in range(4):  # whichever listener the kernel picks, it takes the instances
            done = subprocess.run(
                [
                    *("storescu", "-aec", "DICOMNODE", "-nh", "127.0.0.1", str(node.port)),
                    *("+sd", "+r", str(tmp_path / "study")),
                ],
                env=PEER_ENV,
                capture_output=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr[-500:]
        node.wait_idle(120)
        assert delivered(node) == 6  # the same 6 instances, sent 4 times


def test_sigterm_drains_every_listener(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", node={"listeners": 2, "stop_timeout_s": 30})
    node.start()
    try:
        wait_for(lambda: listeners_up(node, 2), 60, "the listener processes")
        opened = [associate(node.port, f"SCU{n}") for n in range(4)]
        assert all(a.is_established for a in opened)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        study = make_study(tmp_path / "study", series=1, per_series=4)
        for assoc, ds in zip(opened, study, strict=True):  # open ones may still store
            status = assoc.send_c_store(ds)
            assert status and status.Status == 0x0000
            assoc.release()
        assert node.proc.wait(60) == 0
        assert listening_pids(node.port) == set()
    finally:
        node.stop()
    assert node.count("incoming") + delivered(node) == 4


def test_kill_9_of_the_node_ends_its_listeners(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", node={"listeners": 2})
    node.start()
    wait_for(lambda: listeners_up(node, 2), 60, "the listener processes")
    pids = listener_pids(node)
    node.kill()
    wait_for(lambda: not listening_pids(node.port), 10, "the listeners to stop listening")
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), 30, "them to exit")


def test_one_core_means_one_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert NodeConfig(listeners=0).listener_processes == 1


def _nice(pid: int) -> int:
    """A process's nice value, from /proc/PID/stat (field 19)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def _children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_workers_run_below_the_listeners_priority(tmp_path: Path) -> None:
    """pipeline.nice: the workers give way to the listeners (a sender waits on receive;
    cleaning works through a backlog); the listeners and the node keep their priority."""
    node = NodeProcess(tmp_path / "node", node={"listeners": 2}, pipeline={"workers": 2})
    with started(node, 2):
        assert node.proc is not None
        base = _nice(node.proc.pid)
        listeners = listener_pids(node)
        assert {_nice(pid) for pid in listeners} == {base}

        def worker_nices() -> list[int]:
            return sorted(_nice(pid) for pid in _children(node.proc.pid) if pid not in listeners)

        # Workers renice themselves as they start; the resource tracker stays as it is.
        wait_for(lambda: worker_nices().count(min(base + 10, 19)) == 2, 60, "the workers")
