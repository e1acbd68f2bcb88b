#!/usr/bin/env python3
"""Network throughput: storescu -> dicomnode, against storescu -> storescp and -> Orthanc.

For a series of 512x512 CT instances and a series of small (64x64) instances, in one run:

- storescu -> dcmtk storescp                       (receiving baseline)
- storescu -> dicomnode, folder destination        (receive rate; drain = delivered to disk)
- storescu -> Orthanc                              (end-to-end baseline)
- storescu -> dicomnode -> Orthanc                 (end to end: until Orthanc has them all)

Prints instances/s, MB/s and the node's peak RSS (listener + workers), with ratios.

    .venv/bin/python bench/throughput.py [--count 200]
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

from tests.peers import NodeProcess, Orthanc, Storescp, storescu, wait_for  # noqa: E402


def make_series(folder: Path, count: int, size: int) -> int:
    """Write ``count`` CT instances of ``size`` x ``size``; returns the bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    rng = np.random.default_rng(size)
    ds.Rows = ds.Columns = size
    ds.PixelData = rng.integers(0, 2500, size=(size, size), dtype=np.int16).tobytes()
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


def run_series(name: str, folder: Path, count: int, size: int, work: Path) -> list[Row]:
    rows = []
    scp = Storescp(work / f"{name}-scp").start()
    try:
        rows.append(Row("storescu -> storescp", send(scp.port, folder, scp.aet), count, size))
    finally:
        scp.stop()

    node = NodeProcess(work / f"{name}-node-folder")
    node.start()
    try:
        seconds = send(node.port, folder, "DICOMNODE")
        ended = time.perf_counter()
        node.wait_idle(600)
        drain = time.perf_counter() - ended
        rows.append(
            Row(
                "storescu -> dicomnode (folder)",
                seconds,
                count,
                size,
                peak_rss_mb(node.proc.pid if node.proc else 0),
                drain,
            )
        )
    finally:
        node.stop()

    orthanc = Orthanc(work / f"{name}-orthanc").start()
    try:
        rows.append(
            Row("storescu -> Orthanc", send(orthanc.dicom_port, folder, "ORTHANC"), count, size)
        )
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
            Row(
                "storescu -> dicomnode -> Orthanc",
                seconds,
                count,
                size,
                peak_rss_mb(node.proc.pid if node.proc else 0),
            )
        )
    finally:
        node.stop()
        orthanc.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="instances per series")
    args = parser.parse_args()
    os.environ.setdefault("DICOMNODE_SECRET", "bench-secret-0123456789abcdef")
    work = Path(tempfile.mkdtemp(prefix="dicomnode-throughput-"))
    try:
        results = {}
        for name, size in (("CT 512x512", 512), ("small 64x64", 64)):
            folder = work / name.replace(" ", "-")
            total = make_series(folder, args.count, size)
            results[name] = run_series(name.split()[0], folder, args.count, total, work)
            print(f"  measured {name}", file=sys.stderr)
        print()
        print(f"{args.count} instances per series, {os.cpu_count()} cores, loopback, TCP_NODELAY")
        print()
        print(
            f"| {'series':<11} | {'scenario':<32} | {'inst/s':>7} | {'MB/s':>6} | "
            f"{'ratio':>5} | {'peak RSS MB':>11} | {'drain s':>7} |"
        )
        print(f"|{'-' * 13}|{'-' * 34}|{'-' * 8}:|{'-' * 7}:|{'-' * 6}:|{'-' * 12}:|{'-' * 8}:|")
        for name, rows in results.items():
            by = {row.scenario: row for row in rows}
            base = {
                "storescu -> dicomnode (folder)": by["storescu -> storescp"],
                "storescu -> dicomnode -> Orthanc": by["storescu -> Orthanc"],
            }
            for row in rows:
                ratio = f"{row.rate / base[row.scenario].rate:.2f}" if row.scenario in base else "1"
                rss = f"{row.rss_mb:.0f}" if row.rss_mb is not None else "-"
                drain = f"{row.drain_s:.1f}" if row.drain_s is not None else "-"
                print(
                    f"| {name:<11} | {row.scenario:<32} | {row.rate:>7.0f} | {row.mbps:>6.1f} | "
                    f"{ratio:>5} | {rss:>11} | {drain:>7} |"
                )
        print()
        print(
            "ratio: instances/s of the row over its baseline (storescp for receiving, storescu "
            "-> Orthanc for end to end). drain: seconds from the last acknowledgement until "
            "every instance was delivered (the pipeline keeping up)."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
