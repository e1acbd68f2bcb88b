#!/usr/bin/env python3
"""Network throughput: storescu -> dicomnode, against storescp, a bare pynetdicom SCP, Orthanc and
Orthanc's anonymizing router, all in one run.

For a series of 512x512 CT instances and a series of small (64x64) instances:

- receive, in alternating rounds (``--rounds``, best round kept, so that load from other work
  on the machine falls on all of them alike):
  storescu -> dcmtk storescp (the ceiling), -> a bare pynetdicom SCP (pynetdicom's own ceiling:
  each dataset written raw, no fsync, same max PDU and TCP_NODELAY as the node), -> dicomnode
  with a folder destination (drain: until every instance was delivered to disk);
- end to end, alternating rounds: storescu -> Orthanc directly; storescu -> Orthanc 1.10 as an
  anonymizing router (``../shared/peers/orthanc-router/router-rest.lua``, or
  ``DICOMNODE_ROUTER_LUA``) -> storescp; storescu -> dicomnode (default configuration: pixel
  stage on) -> storescp. Done when the last clean copy is complete at the storescp ``+B``
  "research PACS". For dicomnode's best round: where one instance's time went (CPU ms per
  instance by process role, from /proc; mean ms per instance of each stage the node times).

Then with ``--senders`` (8) storescu at once, each its own part of the 512x512 series: the bare
pynetdicom SCP and dicomnode with ``node.listeners`` 1, 2 and 4 (``--listeners``); and end to
end through HAProxy (``mode tcp``, C-ECHO health check, ``tests/haproxy.py``) to 1, 2 and 3
nodes (``--nodes``) forwarding to one storescp.

Prints instances/s, MB/s, ratios and peak RSS (a node: main process + listeners + workers).

    .venv/bin/python bench/throughput.py [--count 200] [--rounds 3] [--only receive ...]
"""

from __future__ import annotations

import argparse
import functools
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
# The node's default pipeline: a worker per core (two here), below the listeners' CPU priority
# (``nice``). The idle CPU class (``cpu_priority: idle``, this benchmark's until 2026-12-04)
# was measured no faster to receive and ~5% slower end to end, in alternating rounds here.
PIPELINE = {"workers": 2}


def make_series(folder: Path, count: int, size: int) -> int:
    """Write ``count`` CT instances of ``size`` x ``size``, each its own slice that looks like
    CT (``dicomnode.synth_anatomy``: chest, abdomen or head), so that a pixel stage sees what
    it would see in a real series, not one frame it may find easy or hard 200 times; returns
    the bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm", download=False)))
    rng = np.random.default_rng(size)
    ds.Rows = ds.Columns = size
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    total = 0
    for n in range(count):
        hu = ct_slice(rng, size).astype(np.int32)  # stored = HU - RescaleIntercept (-1024)
        ds.PixelData = (hu + 1024).astype("<i2").tobytes()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        path = folder / f"i{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def split_series(folder: Path, count: int, senders: int) -> tuple[list[Path], int, int]:
    """A CT series of about ``count`` instances in one folder per sender (each its own
    slices): the folders, the instances and the bytes written."""
    per = max(1, count // senders)
    folders = [folder / f"s{n}" for n in range(senders)]
    return folders, per * senders, sum(make_series(f, per, 512) for f in folders)


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


def progress(label: str, runs: dict[str, list[Row]]) -> None:
    """The latest round of each scenario, on stderr while the run goes on."""
    for rows in runs.values():
        print(f"  {label}: {rows[-1].scenario} {rows[-1].rate:.0f}/s", file=sys.stderr)


def discard(path: Path) -> None:
    """A row's received copies, spool and logs, once the row is counted: every row then starts
    from the same disk (a node's fsync-bound receive slowed as the run's kept copies grew to
    ~10 GB on this machine's disk, so rows later in a run measured slower than alone)."""
    shutil.rmtree(path, ignore_errors=True)


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
            discard(scp.out.parent)
        bare = BareScp(work / f"{name}-bare{round_}").start()
        try:
            seconds = send(bare.port, folder, "BARESCP")
            runs.setdefault(BARE, []).append(Row(BARE, seconds, count, size))
        finally:
            bare.stop()
            discard(bare.out)
        node = NodeProcess(work / f"{name}-node-folder{round_}", pipeline=PIPELINE)
        node.start()
        try:
            wait_ready(node)
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
            discard(node.workdir)
        progress(f"{name} round {round_ + 1}", runs)
    return [best(rows) for rows in runs.values()]


def research_pacs(work: Path) -> Storescp:
    """The "research PACS" of the end-to-end rows: storescp, bit-preserving (``+B``: each
    instance written as it arrives, the fastest receiver here)."""
    return Storescp(work, bit_preserving=True).start()


def complete(scp: Storescp, count: int) -> bool:
    return sum(1 for _ in scp.out.rglob("*.dcm")) >= count


def router_lua() -> Path | None:
    """``router-rest.lua`` of ``../shared/peers/orthanc-router/`` (beside the checkout), the
    Orthanc anonymizing router a site would pick instead (see its README)."""
    path = Path(
        os.environ.get(
            "DICOMNODE_ROUTER_LUA",
            ROOT.parent / "shared" / "peers" / "orthanc-router" / "router-rest.lua",
        )
    )
    return path if path.is_file() else None


def end_to_end_rows(
    name: str, folder: Path, count: int, size: int, work: Path, rounds: int
) -> tuple[list[Row], dict[str, float]]:
    """storescu -> Orthanc directly; storescu -> Orthanc's anonymizing router -> storescp;
    storescu -> dicomnode (pixel stage on) -> storescp; in alternating rounds, the best of
    each. Done when the last copy is complete at the receiver. Also where the node's time
    went in its best round (:func:`node_costs`)."""
    runs: dict[str, list[Row]] = {}
    costs: dict[str, dict[str, float]] = {}
    lua = router_lua()
    for round_ in range(rounds):
        here = work / f"{name}-e2e{round_}"
        orthanc = Orthanc(here / "orthanc").start()
        try:
            row = Row(ORTHANC, send(orthanc.dicom_port, folder, "ORTHANC"), count, size)
            runs.setdefault(ORTHANC, []).append(row)
        finally:
            orthanc.stop()
        if lua is not None:
            scp = research_pacs(here / "router-pacs")
            router = Orthanc(
                here / "router",
                extra={
                    "StorageCompression": False,
                    "DicomModalities": {"RESEARCH": [scp.aet, "127.0.0.1", scp.port]},
                    "DicomAssociationCloseDelay": 5,
                    "LuaScripts": [str(lua)],
                    "OverwriteInstances": False,
                    "SaveJobs": False,
                    "DeidentifyLogs": True,
                },
            ).start()
            try:
                started = time.perf_counter()
                send(router.dicom_port, folder, "ROUTER")
                wait_for(functools.partial(complete, scp, count), 900, "the router's copies", 0.05)
                seconds = time.perf_counter() - started
                rss = peak_rss_mb(router.proc.pid if router.proc else 0)
                runs.setdefault(ROUTER, []).append(Row(ROUTER, seconds, count, size, rss))
            finally:
                router.stop()
                scp.stop()
        scp = research_pacs(here / "node-pacs")
        node = NodeProcess(here / "node", destinations=[scp.destination()], pipeline=PIPELINE)
        node.start()
        try:
            assert node.proc is not None
            wait_ready(node)
            before = process_cpu(node.proc.pid)
            started = time.perf_counter()
            send(node.port, folder, "DICOMNODE")
            wait_for(functools.partial(complete, scp, count), 900, "dicomnode's copies", 0.05)
            seconds = time.perf_counter() - started
            row = Row(NODE_E2E, seconds, count, size, peak_rss_mb(node.proc.pid))
            runs.setdefault(NODE_E2E, []).append(row)
            if row is best(runs[NODE_E2E]):
                costs = {"cpu": node_costs(node, before, count)}
        finally:
            node.stop()
            scp.stop()
            discard(here)
        progress(f"{name} end-to-end round {round_ + 1}", runs)
    if lua is None:
        print("  (no router-rest.lua: the router row is left out)", file=sys.stderr)
    return [best(rows) for rows in runs.values()], costs.get("cpu", {})


def process_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of a process and its children, by pid, with a
    role: node, listener, worker (the node's other children)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float]] = {}
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    for p in [pid, *(int(c) for c in children.stdout.split())]:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if p == pid:
            role = "node (forwarders, metrics)"
        elif b"listener" in cmdline or _is_listener(p):
            role = "listeners (receive)"
        elif b"resource_tracker" in cmdline:
            role = "other"
        else:
            role = "workers (scrub, pixels)"
        found[p] = (role, seconds)
    return found


def _is_listener(pid: int) -> bool:
    """A listener process holds a listening TCP socket (the node's, shared)."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        if any(r.split()[3] == "0A" and r.split()[9] in inodes for r in rows):
            return True
    return False


def node_costs(
    node: NodeProcess, before: dict[int, tuple[str, float]], count: int
) -> dict[str, float]:
    """Where one instance's time went: ms of CPU per instance by process role (from /proc,
    over the run), and the mean ms per instance of each stage the node times
    (``dicomnode_stage_seconds``: wall time inside the stage, on a machine this busy)."""
    assert node.proc is not None
    after = process_cpu(node.proc.pid)
    costs: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        spent = seconds - before.get(pid, (role, 0.0))[1]
        costs[f"CPU: {role}"] = costs.get(f"CPU: {role}", 0.0) + spent * 1000 / count
    metrics = node.metrics()
    for key, value in metrics.items():
        if key.startswith("dicomnode_stage_seconds_sum{"):
            stage = key.split('stage="', 1)[1].split('"', 1)[0]
            total = metrics.get(key.replace("_sum{", "_count{"), 0.0)
            if total:
                costs[f"stage: {stage}"] = value * 1000 / total
    return costs


def balancer_rows(
    folders: list[Path], count: int, size: int, work: Path, nodes: list[int], rounds: int
) -> list[Row]:
    """``len(folders)`` storescu at once through HAProxy (``mode tcp``, C-ECHO health check,
    ``tests/haproxy.py``) to 1, 2, 3 nodes (own ports and spools, one secret), all forwarding
    to one storescp; done when the last copy is complete there."""
    from tests.haproxy import HAProxy

    senders = len(folders)
    runs: dict[str, list[Row]] = {}
    for round_ in range(rounds):
        for n in nodes:
            scenario = f"{senders} senders -> HAProxy -> {n} node{'s' if n > 1 else ''}"
            here = work / f"lb{n}-{round_}"
            scp = research_pacs(here / "pacs")
            started_nodes = [
                NodeProcess(
                    here / f"node{k}",
                    destinations=[scp.destination()],
                    # HAProxy's own address for every sender, and its health checks beside
                    node={"max_connections_per_address": 16},
                    pipeline=PIPELINE,
                ).start()
                for k in range(n)
            ]
            haproxy = None
            try:
                haproxy = HAProxy(
                    here, {f"node{k}": node.port for k, node in enumerate(started_nodes)}
                )
                for node in started_nodes:
                    wait_ready(node)
                haproxy.start()
                started = time.perf_counter()
                send_parallel(haproxy.port, folders, "DICOMNODE")
                wait_for(functools.partial(complete, scp, count), 900, "the copies", 0.05)
                seconds = time.perf_counter() - started
                rss = max(peak_rss_mb(node.proc.pid) for node in started_nodes if node.proc)
                runs.setdefault(scenario, []).append(Row(scenario, seconds, count, size, rss))
            finally:
                if haproxy is not None:
                    haproxy.stop()
                for node in started_nodes:
                    node.stop()
                scp.stop()
                discard(here)
            print(
                f"  balancer round {round_ + 1}: {scenario} {runs[scenario][-1].rate:.0f}/s",
                file=sys.stderr,
            )
    return [best(rows) for rows in runs.values()]


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
            discard(bare.out)
        for n in listeners:
            scenario = f"{senders} senders -> dicomnode x{n}"
            node = NodeProcess(
                work / f"par-node{n}-{round_}",
                node={"listeners": n, "max_connections_per_address": max(8, senders)},
                pipeline=PIPELINE,
            )
            node.start()
            try:
                wait_ready(node, n)
                seconds = send_parallel(node.port, folders, "DICOMNODE")
                rss = peak_rss_mb(node.proc.pid if node.proc else 0)
                runs.setdefault(scenario, []).append(Row(scenario, seconds, count, size, rss))
            finally:
                node.stop()
                discard(node.workdir)
        progress(f"parallel round {round_ + 1}", runs)
    return [best(rows) for rows in runs.values()]


def wait_ready(node: NodeProcess, listeners: int | None = None) -> None:
    """Until the node works at full speed: ``listeners`` listener processes up (default: what
    its configuration says) and every worker's pipeline loaded (the ``dicomnode_listeners``
    and ``dicomnode_workers_ready`` gauges). A worker loads its models for seconds after the
    node starts; measured before that, a row would count a start-up, not a steady state
    (Orthanc's rows start after its REST API answers)."""
    from dicomnode.config import Config

    config = Config(**node.config)
    want_listeners = config.node.listener_processes if listeners is None else listeners
    want_workers = config.pipeline.workers or os.cpu_count() or 1

    def up() -> bool:
        try:
            metrics = node.metrics()
        except OSError:
            return False
        return (
            metrics.get("dicomnode_listeners", 1) >= want_listeners
            and metrics.get("dicomnode_workers_ready", 0) >= want_workers
        )

    wait_for(up, 120, "the listener processes and the workers' pipelines")


STORESCP = "storescu -> storescp"
BARE = "storescu -> bare pynetdicom"
NODE = "storescu -> dicomnode (folder)"
ORTHANC = "storescu -> Orthanc"
ROUTER = "storescu -> Orthanc router -> storescp"
NODE_E2E = "storescu -> dicomnode -> storescp"


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
            if row.scenario in (ROUTER, NODE_E2E) and ORTHANC in by:
                versus_scp = f"{row.rate / by[ORTHANC].rate:.2f} (Orthanc)"
            if row.scenario == NODE_E2E and ROUTER in by:
                versus_bare = f"{row.rate / by[ROUTER].rate:.2f} (router)"
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
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument(
        "--no-drain", action="store_true", help="stop the node once received (no drain time)"
    )
    parser.add_argument("--senders", type=int, default=8, help="storescu at once")
    parser.add_argument(
        "--listeners", default="1,2,4", help="node.listeners values for the parallel rows"
    )
    parser.add_argument("--nodes", default="1,2,3", help="nodes behind HAProxy, per row")
    parser.add_argument(
        "--only",
        choices=("receive", "end-to-end", "listeners", "balancer"),
        action="append",
        help="run only these parts (repeatable); default all",
    )
    args = parser.parse_args()
    parts = set(args.only or ("receive", "end-to-end", "listeners", "balancer"))
    os.environ.setdefault("DICOMNODE_SECRET", "bench-secret-0123456789abcdef")
    work = Path(tempfile.mkdtemp(prefix="dicomnode-throughput-"))
    try:
        results: dict[str, list[Row]] = {}
        costs: dict[str, dict[str, float]] = {}
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
                e2e, cost = end_to_end_rows(
                    name.split()[0], folder, args.count, total, work, args.rounds
                )
                rows += e2e
                if cost:
                    costs[name] = cost
            results[name] = rows
            print(f"  measured {name}", file=sys.stderr)
        if "listeners" in parts:
            folders, count, total = split_series(work / "parallel", args.count, args.senders)
            listeners = [int(n) for n in args.listeners.split(",")]
            results[f"CT x{args.senders}"] = listener_rows(
                folders, count, total, work, listeners, args.rounds
            )
        if "balancer" in parts:
            folders, count, total = split_series(work / "balanced", args.count, args.senders)
            nodes = [int(n) for n in args.nodes.split(",")]
            results[f"CT x{args.senders} LB"] = balancer_rows(
                folders, count, total, work, nodes, args.rounds
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
            "series; dicomnode xN: node.listeners N. End to end (-> storescp): done when the "
            "last clean copy is complete at a storescp +B 'research PACS'; dicomnode with its "
            "default configuration (pixel stage on). LB: through HAProxy (tcp, C-ECHO health "
            "check) to N nodes forwarding to one storescp."
        )
        for name, cost in costs.items():
            print()
            print(f"Where one instance's time goes, {name}, dicomnode end to end (best round):")
            print()
            print("| part | ms per instance |")
            print("|---|---:|")
            for part, value in sorted(cost.items()):
                print(f"| {part} | {value:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
