#!/usr/bin/env python3
"""Network throughput: storescu -> dicomnode, against storescp, a bare pynetdicom SCP and Orthanc.

For a series of 512x512 CT instances and a series of small (64x64) instances, in one run:

- storescu -> dcmtk storescp                       (receiving baseline)
- storescu -> bare pynetdicom SCP                  (pynetdicom's own ceiling: each dataset
                                                    written raw, no fsync, same max PDU and
                                                    TCP_NODELAY as the node)
- storescu -> dicomnode, folder destination        (receive rate; drain = delivered to disk)
- storescu -> Orthanc                              (end-to-end baseline)
- storescu -> dicomnode -> Orthanc                 (end to end: until Orthanc has them all)

The receive rows run in alternating rounds (``--rounds``, best round kept), so that load from
other work on the machine falls on all of them alike. Then, with ``--senders`` (8) storescu
at once, each sending its own part of the 512x512 series: the bare pynetdicom SCP and
dicomnode with ``node.listeners`` 1, 2 and 4 (``--listeners``).

Prints instances/s, MB/s and the node's peak RSS (listener + workers), with ratios.

    .venv/bin/python bench/throughput.py [--count 200] [--rounds 2] [--only receive]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode.synth_anatomy import ct_slice  # noqa: E402
from tests.peers import (  # noqa: E402
    PEER_ENV,
    NodeProcess,
    Orthanc,
    Storescp,
    free_port,
    port_open,
    storescu,
    wait_for,
)

NODE_MAX_PDU = 262144  # the node's default node.max_pdu: the bare SCP offers the same


def make_series(folder: Path, count: int, size: int) -> int:
    """Write ``count`` CT instances of ``size`` x ``size`` (a slice that looks like CT:
    ``dicomnode.synth_anatomy``, so that a pixel stage sees what it would see); returns the
    bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm", download=False)))
    rng = np.random.default_rng(size)
    ds.Rows = ds.Columns = size
    hu = ct_slice(rng, size).astype(np.int32)  # stored = HU - RescaleIntercept (-1024)
    ds.PixelData = (hu + 1024).astype("<i2").tobytes()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    total = 0
    for n in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        path = folder / f"i{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process and its children (VmHWM), in MB."""
    pids = [pid]
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    pids += [int(p) for p in children.stdout.split()]
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


@dataclass
class Row:
    scenario: str
    seconds: float
    count: int
    size: int
    rss_mb: float | None = None
    drain_s: float | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def mbps(self) -> float:
        return self.size / self.seconds / 1e6


def send(port: int, folder: Path, aec: str) -> float:
    started = time.perf_counter()
    result = storescu(port, folder, aec=aec, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"storescu failed: {result.stderr[-500:]}")
    return time.perf_counter() - started


def bare_scp(port: int, out: Path) -> None:
    """A bare pynetdicom Storage SCP (``--bare-scp``): each data set written raw, no fsync.

    pynetdicom's defaults but for the maximum PDU (the node's) and TCP_NODELAY (the node sets
    it too): the ceiling of a receiver built on pynetdicom.
    """
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts

    from dicomnode._net import set_nodelay

    out.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1 << 62))

    def on_store(event: evt.Event) -> int:
        with open(out / f"{next(counter):08d}.raw", "wb") as fh:
            fh.write(event.request.DataSet.getvalue())  # type: ignore[union-attr]
        return 0

    ae = AE(ae_title="BARESCP")
    ae.maximum_pdu_size = NODE_MAX_PDU
    ae.maximum_associations = 64
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_SYNTAXES)
    ae.start_server(
        ("127.0.0.1", port),
        block=True,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, set_nodelay)],
    )


ALL_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


class BareScp:
    """The bare pynetdicom SCP as a process of its own, as the node is."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.out = workdir / "bare"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BareScp:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--bare-scp", str(self.port), str(self.out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open(self.port), 30, "the bare pynetdicom SCP")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


def send_parallel(port: int, folders: list[Path], aec: str) -> float:
    """Run one storescu per folder at once; seconds until the last one is done."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                *("storescu", "-aet", f"SENDER{n}", "-aec", aec, "-nh"),
                *("127.0.0.1", str(port), "+sd", "+r", str(folder)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=PEER_ENV,
        )
        for n, folder in enumerate(folders)
    ]
    failed = []
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failed.append(err.decode(errors="replace")[-300:])
    if failed:
        raise SystemExit(f"storescu failed: {failed[0]}")
    return time.perf_counter() - started


def best(rows: list[Row]) -> Row:
    return max(rows, key=lambda row: row.rate)


def receive_rows(
    name: str, folder: Path, count: int, size: int, work: Path, rounds: int, with_drain: bool
) -> list[Row]:
    """storescp, the bare pynetdicom SCP and dicomnode, alternating; the best round of each."""
    runs: dict[str, list[Row]] = {}
    for round_ in range(rounds):
        scp = Storescp(work / f"{name}-scp{round_}").start()
        try:
            seconds = send(scp.port, folder, scp.aet)
            runs.setdefault(STORESCP, []).append(Row(STORESCP, seconds, count, size))
        finally:
            scp.stop()
        bare = BareScp(work / f"{name}-bare{round_}").start()
        try:
            seconds = send(bare.port, folder, "BARESCP")
            runs.setdefault(BARE, []).append(Row(BARE, seconds, count, size))
        finally:
            bare.stop()
        node = NodeProcess(work / f"{name}-node-folder{round_}")
        node.start()
        try:
            seconds = send(node.port, folder, "DICOMNODE")
            ended = time.perf_counter()
            drain = None
            if with_drain:
                node.wait_idle(600)
                drain = time.perf_counter() - ended
            rss = peak_rss_mb(node.proc.pid if node.proc else 0)
            runs.setdefault(NODE, []).append(Row(NODE, seconds, count, size, rss, drain))
        finally:
            node.stop()
        for rows in runs.values():
            print(
                f"  {name} round {round_ + 1}: {rows[-1].scenario} {rows[-1].rate:.0f}/s",
                file=sys.stderr,
            )
    return [best(rows) for rows in runs.values()]


def end_to_end_rows(name: str, folder: Path, count: int, size: int, work: Path) -> list[Row]:
    rows = []
    orthanc = Orthanc(work / f"{name}-orthanc").start()
    try:
        rows.append(Row(ORTHANC, send(orthanc.dicom_port, folder, "ORTHANC"), count, size))
    finally:
        orthanc.stop()

    orthanc = Orthanc(work / f"{name}-orthanc2").start()
    node = NodeProcess(work / f"{name}-node-orthanc", destinations=[orthanc.destination()])
    node.start()
    try:
        started = time.perf_counter()
        send(node.port, folder, "DICOMNODE")
        wait_for(lambda: len(orthanc.instances()) >= count, 600, "Orthanc", 0.2)
        seconds = time.perf_counter() - started
        rows.append(
            Row(NODE_ORTHANC, seconds, count, size, peak_rss_mb(node.proc.pid if node.proc else 0))
        )
    finally:
        node.stop()
        orthanc.stop()
    return rows


def listener_rows(
    folders: list[Path], count: int, size: int, work: Path, listeners: list[int], rounds: int
) -> list[Row]:
    """``len(folders)`` storescu at once: the bare pynetdicom SCP, then the node with each
    number of listener processes (alternating rounds, best kept)."""
    senders = len(folders)
    runs: dict[str, list[Row]] = {}
    for round_ in range(rounds):
        bare = BareScp(work / f"par-bare{round_}").start()
        try:
            scenario = f"{senders} senders -> bare pynetdicom"
            seconds = send_parallel(bare.port, folders, "BARESCP")
            runs.setdefault(scenario, []).append(Row(scenario, seconds, count, size))
        finally:
            bare.stop()
        for n in listeners:
            scenario = f"{senders} senders -> dicomnode x{n}"
            node = NodeProcess(
                work / f"par-node{n}-{round_}",
                node={"listeners": n, "max_connections_per_address": max(8, senders)},
            )
            node.start()
            try:
                wait_listeners(node, n)
                seconds = send_parallel(node.port, folders, "DICOMNODE")
                rss = peak_rss_mb(node.proc.pid if node.proc else 0)
                runs.setdefault(scenario, []).append(Row(scenario, seconds, count, size, rss))
            finally:
                node.stop()
        for rows in runs.values():
            print(
                f"  parallel round {round_ + 1}: {rows[-1].scenario} {rows[-1].rate:.0f}/s",
                file=sys.stderr,
            )
    return [best(rows) for rows in runs.values()]


def wait_listeners(node: NodeProcess, count: int) -> None:
    """Until ``count`` listener processes are up (the node's ``dicomnode_listeners`` gauge)."""

    def up() -> bool:
        try:
            return node.metrics().get("dicomnode_listeners", 1) >= count
        except OSError:
            return False

    wait_for(up, 60, "the listener processes")


STORESCP = "storescu -> storescp"
BARE = "storescu -> bare pynetdicom"
NODE = "storescu -> dicomnode (folder)"
ORTHANC = "storescu -> Orthanc"
NODE_ORTHANC = "storescu -> dicomnode -> Orthanc"


def print_table(results: dict[str, list[Row]]) -> None:
    print(
        f"| {'series':<11} | {'scenario':<34} | {'inst/s':>7} | {'MB/s':>6} | "
        f"{'vs storescp':>11} | {'vs bare pynetdicom':>18} | {'peak RSS MB':>11} | "
        f"{'drain s':>7} |"
    )
    print(
        f"|{'-' * 13}|{'-' * 36}|{'-' * 8}:|{'-' * 7}:|{'-' * 12}:|{'-' * 19}:|{'-' * 12}:|"
        f"{'-' * 8}:|"
    )
    for name, rows in results.items():
        by = {row.scenario: row for row in rows}
        bare_parallel = next((r for r in rows if r.scenario.endswith("bare pynetdicom")), None)
        for row in rows:
            versus_scp = versus_bare = "-"
            if row.scenario in (BARE, NODE) and STORESCP in by:
                versus_scp = f"{row.rate / by[STORESCP].rate:.2f}"
            if row.scenario == NODE and BARE in by:
                versus_bare = f"{row.rate / by[BARE].rate:.2f}"
            if row.scenario == NODE_ORTHANC and ORTHANC in by:
                versus_scp = f"{row.rate / by[ORTHANC].rate:.2f} (Orthanc)"
            if "senders -> dicomnode" in row.scenario and bare_parallel is not None:
                versus_bare = f"{row.rate / bare_parallel.rate:.2f}"
            rss = f"{row.rss_mb:.0f}" if row.rss_mb is not None else "-"
            drain = f"{row.drain_s:.1f}" if row.drain_s is not None else "-"
            print(
                f"| {name:<11} | {row.scenario:<34} | {row.rate:>7.0f} | {row.mbps:>6.1f} | "
                f"{versus_scp:>11} | {versus_bare:>18} | {rss:>11} | {drain:>7} |"
            )


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--bare-scp":
        bare_scp(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="instances per series")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument(
        "--no-drain", action="store_true", help="stop the node once received (no drain time)"
    )
    parser.add_argument("--senders", type=int, default=8, help="storescu at once")
    parser.add_argument(
        "--listeners", default="1,2,4", help="node.listeners values for the parallel rows"
    )
    parser.add_argument(
        "--only",
        choices=("receive", "end-to-end", "listeners"),
        action="append",
        help="run only these parts (repeatable); default all",
    )
    args = parser.parse_args()
    parts = set(args.only or ("receive", "end-to-end", "listeners"))
    os.environ.setdefault("DICOMNODE_SECRET", "bench-secret-0123456789abcdef")
    work = Path(tempfile.mkdtemp(prefix="dicomnode-throughput-"))
    try:
        results: dict[str, list[Row]] = {}
        for name, size in (("CT 512x512", 512), ("small 64x64", 64)):
            if not parts & {"receive", "end-to-end"}:
                break
            folder = work / name.replace(" ", "-")
            total = make_series(folder, args.count, size)
            rows = []
            if "receive" in parts:
                rows += receive_rows(
                    name.split()[0], folder, args.count, total, work, args.rounds, not args.no_drain
                )
            if "end-to-end" in parts:
                rows += end_to_end_rows(name.split()[0], folder, args.count, total, work)
            results[name] = rows
            print(f"  measured {name}", file=sys.stderr)
        if "listeners" in parts:
            per = max(1, args.count // args.senders)
            folders = [work / "parallel" / f"s{n}" for n in range(args.senders)]
            total = sum(make_series(f, per, 512) for f in folders)
            listeners = [int(n) for n in args.listeners.split(",")]
            results[f"CT x{args.senders}"] = listener_rows(
                folders, per * args.senders, total, work, listeners, args.rounds
            )
        print()
        print(
            f"{args.count} instances per series, {os.cpu_count()} cores, loopback, TCP_NODELAY, "
            f"best of {args.rounds} alternating rounds"
        )
        print()
        print_table(results)
        print()
        print(
            "vs storescp / vs bare pynetdicom: instances/s of the row over that receiver's, in "
            "the same run (end to end: over storescu -> Orthanc). drain: seconds from the last "
            "acknowledgement until every instance was delivered (the pipeline keeping up). "
            f"CT x{args.senders}: {args.senders} storescu at once, each its own part of the "
            "series; dicomnode xN: node.listeners N."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
