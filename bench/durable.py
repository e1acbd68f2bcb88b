#!/usr/bin/env python3
"""How many durable writes a second the spool's disk takes, from 1 to N writers at once.

Every received instance is acknowledged only after its durable write (data synced, renamed
into place, the folder synced: ``dicomnode.durable.write_atomic``, the node's own helper),
and each listener process writes its own. Past a few listeners the disk, not the CPUs, can
decide how much one node receives (``bench/scale.py``; README, "Every core"). This measures
the disk alone: ``--procs`` processes at once writing ``--size`` byte files (a 512 x 512 CT
instance) for ``--seconds``, all into one folder, then each into its own.

    .venv/bin/python bench/durable.py [--dir /var/lib/dicomnode] [--procs 1,4,8,16]

``--dir``: a folder on the file system to measure (the spool's); a temporary folder is made
in it and removed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode.durable import write_atomic  # noqa: E402


def _writer(folder: Path, staging: Path, size: int, seconds: float, start: Any, done: Any) -> None:
    """Durable writes into ``folder`` until ``seconds`` have passed; puts how many."""
    data = os.urandom(size)
    start.wait()
    end = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < end:
        write_atomic(folder / f"{os.getpid()}-{count}", data, tmp_dir=staging, mode=0o600)
        count += 1
        if count % 50 == 0:  # keep the folder small, as the workers keep incoming/
            for old in range(count - 50, count):
                (folder / f"{os.getpid()}-{old}").unlink()
    done.put(count)


def measure(base: Path, procs: int, shared: bool, size: int, seconds: float) -> float:
    """Durable writes a second of ``procs`` writers at once."""
    work = Path(tempfile.mkdtemp(prefix="durable-", dir=base))
    try:
        start = mp.Barrier(procs)
        done: Any = mp.Queue()
        writers = []
        for k in range(procs):
            folder = work / ("incoming" if shared else f"incoming-{k}")
            staging = work / f"tmp-{k}"
            folder.mkdir(exist_ok=True)
            staging.mkdir()
            writers.append(
                mp.Process(target=_writer, args=(folder, staging, size, seconds, start, done))
            )
        for writer in writers:
            writer.start()
        total = sum(int(done.get(timeout=seconds + 60)) for _ in writers)
        for writer in writers:
            writer.join()
        return total / seconds
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--procs", default="1,4,8,16", help="writers at once, per row")
    parser.add_argument("--size", type=int, default=520_000, help="bytes a file")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    counts = [int(v) for v in args.procs.split(",")]
    print(
        f"\n{os.cpu_count()} cores, {args.size:,} byte files, {args.seconds:g} s each, "
        f"in {args.dir}\n"
    )
    print("| writers at once | durable writes/s, one folder | each its own folder | MB/s |")
    print("|---:|---:|---:|---:|")
    for procs in counts:
        one = measure(args.dir, procs, True, args.size, args.seconds)
        own = measure(args.dir, procs, False, args.size, args.seconds)
        print(f"| {procs} | {one:,.0f} | {own:,.0f} | {one * args.size / 1e6:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
