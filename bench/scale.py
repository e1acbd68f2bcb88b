#!/usr/bin/env python3
"""Aggregate receive by ``node.listeners`` on a machine of many cores, where dcmtk may be absent.

``bench/throughput.py`` sends with dcmtk's storescu and measures 1, 2 and 4 listeners on the
machine it runs on. This one answers "what does a larger server get": ``--senders`` processes
(16) at once, each one association of dicomnode's own C-STORE SCU (``forward.DicomSender``, the
forwarder's: ~2.6 ms of CPU per 0.5 MB instance, less than the listener's) sending the same
series of 512 x 512 CT slices (``--count``, 200), to a bare pynetdicom SCP (one process, the
ceiling of one interpreter) and to the node with each ``--listeners`` value, in alternating
rounds (best kept). The node runs as the receive rows of ``throughput.py`` have it (folder
destination, two workers in the idle CPU class scrubbing as it arrives), with the pixel stage
and the review page off: it needs only the node's own dependencies and a Python, no peers.

Per row: instances/s, the ratio to one listener, how busy the whole machine was (from
/proc/stat: well below 100% on a machine the senders and the node share means that something
else than the CPUs holds it back, such as the disk's durable writes or the senders) and CPU ms per instance by process role
(with one listener the node's main process receives itself: no listener process).

    .venv/bin/python bench/scale.py [--listeners 1,2,4,8,12,16] [--senders 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import BareScp, make_series, process_cpu, wait_ready  # noqa: E402

from dicomnode.config import DicomDestination  # noqa: E402
from dicomnode.forward import Delivery, DicomSender  # noqa: E402
from tests.peers import NodeProcess  # noqa: E402


def _sender(port: int, aet: str, paths: list[Path], start: Any, done: Any) -> None:
    """One sender process: once every sender is ready (``start``, a barrier), sends ``paths``
    over one association and puts the number delivered (0 if the send failed: the row's
    "delivered" column then says so)."""
    destination = DicomDestination(
        name="node", ae_title=aet, host="127.0.0.1", port=port, timeout_s=60
    )
    scu = DicomSender(destination, "SENDER")
    start.wait()
    try:
        results = scu.send(paths)
    except Exception as exc:
        print(f"  a sender failed: {exc!r}", file=sys.stderr)
        done.put(0)
        return
    done.put(sum(1 for r in results if r.status == Delivery.DELIVERED))


def busy_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


@dataclass(frozen=True)
class Sent:
    """One row's round: instances delivered, seconds, machine busy share, node CPU by role."""

    count: int
    expected: int
    seconds: float
    busy: float
    cpu: dict[str, float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def send_all(port: int, aet: str, paths: list[Path], senders: int, node_pid: int = 0) -> Sent:
    """Every sender at once, started together once all are up; until the last is done."""
    context = mp.get_context("spawn")
    start, done = context.Barrier(senders + 1), context.Queue()
    procs = [
        context.Process(target=_sender, args=(port, aet, paths, start, done))
        for _ in range(senders)
    ]
    for proc in procs:
        proc.start()
    start.wait(timeout=300)  # every sender spawned and imported: the clock starts now
    before = process_cpu(node_pid) if node_pid else {}
    busy0, all0 = busy_ticks()
    began = time.perf_counter()
    count = sum(done.get(timeout=900) for _ in procs)
    seconds = time.perf_counter() - began
    busy1, all1 = busy_ticks()
    after = process_cpu(node_pid) if node_pid else {}
    for proc in procs:
        proc.join()
    cpu: dict[str, float] = {}
    for pid, (role, total) in after.items():
        spent = total - before.get(pid, (role, 0.0))[1]
        cpu[role] = cpu.get(role, 0.0) + spent * 1000 / max(count, 1)
    busy = (busy1 - busy0) / max(1, all1 - all0)
    return Sent(count, senders * len(paths), seconds, busy, cpu)


def node_round(work: Path, listeners: int, paths: list[Path], senders: int) -> Sent:
    node = NodeProcess(
        work,
        node={
            "listeners": listeners,
            "max_associations": max(64, 2 * senders),
            "max_connections_per_address": max(64, 2 * senders),
        },
        pipeline={"workers": 2, "cpu_priority": "idle"},
        pixels={"enabled": False},
        review={"enabled": False},
    )
    node.start()
    try:
        wait_ready(node, listeners)
        assert node.proc is not None
        return send_all(node.port, "DICOMNODE", paths, senders, node.proc.pid)
    finally:
        node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", default="1,2,4,8,12,16", help="node.listeners per row")
    parser.add_argument("--senders", type=int, default=16, help="sender processes at once")
    parser.add_argument("--count", type=int, default=200, help="instances each sender sends")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--no-bare", action="store_true", help="leave out the bare SCP row")
    args = parser.parse_args()
    os.environ.setdefault("DICOMNODE_SECRET", "bench-secret-0123456789abcdef")
    listeners = [int(n) for n in args.listeners.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dicomnode-scale-"))
    try:
        make_series(work / "series", args.count, 512)
        paths = sorted((work / "series").glob("*.dcm"))
        runs: dict[str, list[Sent]] = {}
        for round_ in range(args.rounds):
            if not args.no_bare:
                bare = BareScp(work / f"bare{round_}").start()
                try:
                    runs.setdefault("bare pynetdicom", []).append(
                        send_all(bare.port, "BARESCP", paths, args.senders)
                    )
                finally:
                    bare.stop()
            for n in listeners:
                sent = node_round(work / f"node{n}-{round_}", n, paths, args.senders)
                runs.setdefault(f"dicomnode x{n}", []).append(sent)
            shown = {k: f"{v[-1].rate:.0f}/s" for k, v in runs.items()}
            print(f"  round {round_ + 1}: {shown}", file=sys.stderr)
        best = {name: max(rows, key=lambda s: s.rate) for name, rows in runs.items()}
        one = best.get("dicomnode x1")
        print()
        print(
            f"{os.cpu_count()} cores, {args.senders} senders x {args.count} CT 512x512 "
            f"instances, loopback, best of {args.rounds} alternating rounds"
        )
        print()
        print(
            "| receiver | delivered | inst/s | MB/s | vs x1 | machine busy "
            "| node CPU ms/inst by role |"
        )
        print("|---|---:|---:|---:|---:|---:|---|")
        size = sum(p.stat().st_size for p in paths) / len(paths)
        for name, sent in best.items():
            usable = one is not None and one.rate > 0 and name != "bare pynetdicom"
            ratio = f"{sent.rate / one.rate:.2f}" if usable and one else "-"
            roles = ", ".join(f"{k} {v:.1f}" for k, v in sorted(sent.cpu.items()) if v >= 0.05)
            print(
                f"| {name} | {sent.count}/{sent.expected} | {sent.rate:.0f} | {sent.rate * size / 1e6:.0f} | {ratio} | "
                f"{100 * sent.busy:.0f}% | {roles or '-'} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
