#!/usr/bin/env python3
"""The review page's quarantine list over a large quarantine, through Starlette's TestClient.

Plants ``--items`` quarantined items (default 10,000) with their sidecars in a temporary spool,
as ``tests/test_review.py`` does for its paging test: four reasons, two calling AE titles, one
item in ten three days old. Then, logged in as a viewer, times ``GET /quarantine``:

- the first request (every sidecar read and parsed once; the index is cold);
- the median of ``--repeats`` requests after it while the page reads every original's header
  summary in the background (the first list request starts that, as after a node starts);
- the median and the slowest once that is done (each request still stats every sidecar);
- the same for each filter: reason, calling AE, age, two at once, the last page, oldest first;
- the first request after one more item arrives (one new sidecar to read).

Prints one table; times are wall-clock milliseconds in this process (no network).

    .venv/bin/python bench/review.py [--items 10000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode.quarantine import Kind  # noqa: E402
from tests.conftest import SECRET  # noqa: E402
from tests.test_review import _login, _make_site  # noqa: E402

REASONS = ["text-remains", "unreadable", "too-large", "pixel-stage-failed"]
QUERIES = [
    ("all (newest first)", ""),
    ("reason=unreadable", "reason=unreadable"),
    ("calling_ae=US_2", "calling_ae=US_2"),
    ("age=gt1d", "age=gt1d"),
    ("age=lt1h", "age=lt1h"),
    ("reason + calling_ae", "reason=text-remains&calling_ae=US_2"),
    ("last page", "page={last}"),
    ("oldest first", "order=oldest"),
]
TOTAL = re.compile(r'data-total="(\d+)"')


def plant(folder_root: Path, count: int, now: float) -> None:
    """``count`` items as tests/test_review.py plants them (a few bytes for each original)."""
    for n in range(count):
        reason = REASONS[n % 4]
        ae = "CT_1" if n % 5 else "US_2"
        item_id = f"{time.time_ns() - n * 10**9:020d}_{ae}_{n:08x}"
        folder = folder_root / reason
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{item_id}.dcm").write_bytes(b"not read for a list")
        age = 3 * 86400 if n % 10 == 0 else 60
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now - age))
        (folder / f"{item_id}.json").write_text(
            json.dumps({"id": item_id, "reason": reason, "time": stamp, "stage": "read"})
        )


def timed(get: object, path: str) -> tuple[float, str]:
    started = time.perf_counter()
    response = get(path)  # type: ignore[operator]
    elapsed = 1000 * (time.perf_counter() - started)
    if response.status_code != 200:
        raise SystemExit(f"GET {path}: {response.status_code}")
    return elapsed, response.text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000, help="quarantined items planted")
    parser.add_argument("--repeats", type=int, default=20, help="requests per row after the first")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    os.environ.setdefault("DICOMNODE_SECRET", SECRET.decode())
    work = Path(tempfile.mkdtemp(prefix="dicomnode-review-"))
    site = None
    try:
        site = _make_site(work)
        started = time.perf_counter()
        plant(site.spool.quarantine, args.items, time.time())
        planted = time.perf_counter() - started
        client = _login(site, "victor")
        last = max(1, -(-args.items // 50))  # 50 rows a page
        paths = [
            (label, "/quarantine" + ("?" + query.format(last=last) if query else ""))
            for label, query in QUERIES
        ]
        # While the page reads every original's header summary in the background (it starts
        # at the first list request), as right after the node starts.
        warming_started = time.perf_counter()
        firsts: dict[str, tuple[float, str]] = {}
        during: dict[str, list[float]] = {}
        for label, path in paths:
            firsts[label] = timed(client.get, path)
            during[label] = [timed(client.get, path)[0] for _ in range(args.repeats)]
        index = site.app.index
        while index.unknown(Kind.QUARANTINE, limit=1):
            time.sleep(0.1)
        warm_s = time.perf_counter() - warming_started
        after = {
            label: [timed(client.get, path)[0] for _ in range(args.repeats)]
            for label, path in paths
        }
        # One more item: the next request reads its sidecar, and stats the others.
        plant(site.spool.quarantine, 1, time.time())
        new_item = timed(client.get, "/quarantine")

        def matching(text: str) -> str:
            found = TOTAL.search(text)
            return found.group(1) if found else "?"

        print()
        print(
            f"GET /quarantine over {args.items} quarantined items (planted in {planted:.1f} s); "
            f"wall-clock ms through TestClient; {args.repeats} requests per median"
        )
        print()
        print(
            f"| {'query':<22} | {'first ms':>8} | {'median, warming':>15} | "
            f"{'median, warm':>12} | {'max, warm':>9} | {'matching':>8} |"
        )
        print(f"|{'-' * 24}|{'-' * 9}:|{'-' * 16}:|{'-' * 13}:|{'-' * 10}:|{'-' * 9}:|")
        for label, _path in paths:
            first, text = firsts[label]
            print(
                f"| {label:<22} | {first:>8.1f} | {statistics.median(during[label]):>15.1f} | "
                f"{statistics.median(after[label]):>12.1f} | {max(after[label]):>9.1f} | "
                f"{matching(text):>8} |"
            )
        print(
            f"| {'after one new item':<22} | {new_item[0]:>8.1f} | {'-':>15} | {'-':>12} | "
            f"{'-':>9} | {matching(new_item[1]):>8} |"
        )
        print()
        print(
            "first: the first request with that query (for the first row, every sidecar is read "
            "and parsed). warming: while the page reads the originals' header summaries in the "
            f"background (started by the first request; it took {warm_s:.1f} s here). warm: "
            "after it; each request still lists and stats every sidecar."
        )
    finally:
        if site is not None:
            site.app.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
