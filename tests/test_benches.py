"""The benchmarks that have no test of their own still run (they are not run by CI in full)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_durable_prints_a_row_per_writer_count(tmp_path: Path) -> None:
    args = ["--dir", str(tmp_path), "--procs", "1,2", "--seconds", "0.2", "--size", "4096"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "durable.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2"], out
    assert all(float(row.split("|")[2].replace(",", "")) > 0 for row in rows), out
    assert list(tmp_path.iterdir()) == []  # its folders are removed
