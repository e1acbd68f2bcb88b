"""Offline de-identification of files and folders, in parallel over processes.

Each worker process compiles the profile once; each input is read, cleaned and written to a
temporary file that is renamed into place only when everything succeeded, so a failed input
writes nothing. Outputs are named by pseudonymised identifiers, never by the input's name
(file names often carry a patient's name).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from dicomnode.config import Config
from dicomnode.dicomio import encode_chunks, read_instance
from dicomnode.durable import write_atomic
from dicomnode.errors import InstanceError
from dicomnode.pipeline import Item, Stage, build_stages

__all__ = [
    "Outcome",
    "clean_file",
    "clearly_not_dicom",
    "iter_inputs",
    "output_path",
    "run_batch",
]


@dataclass(frozen=True)
class Outcome:
    """The result for one input: where it went, or why it did not."""

    source: Path
    output: Path | None = None
    reason: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.output is not None


def iter_inputs(inputs: Iterable[Path]) -> Iterator[Path]:
    """Files given, and every file under folders given (recursively, sorted)."""
    for path in inputs:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


# Names that are never DICOM in the folders people point ``scrub`` at: the evaluation set's
# truth.json, sidecars, notes and viewers on export media, desktop clutter.
_NOT_DICOM_SUFFIXES = frozenset(
    {".json", ".txt", ".csv", ".tsv", ".md", ".xml", ".html", ".htm", ".pdf", ".log", ".ini",
     ".yaml", ".yml", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".zip", ".gz", ".exe", ".inf",
     ".db", ".js", ".css"}
)  # fmt: skip
_NOT_DICOM_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})


def clearly_not_dicom(path: Path) -> bool:
    """True for a file that is plainly something else: a name that is never DICOM's
    (``truth.json``, ``README.txt``, ``.DS_Store``...) and no ``DICM`` at byte 128.

    Anything else is read, and reported if it fails: a damaged instance must not pass
    unnoticed as "not DICOM".
    """
    name = path.name.lower()
    if path.suffix.lower() not in _NOT_DICOM_SUFFIXES and name not in _NOT_DICOM_NAMES:
        return False
    try:
        with open(path, "rb") as fp:
            head = fp.read(132)
    except OSError:
        return False  # let the batch report why it cannot be read
    return head[128:132] != b"DICM"


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in part) or "unknown"


def output_path(outdir: Path, ds: Dataset) -> Path:
    """``OUTDIR/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``."""
    get = ds.get
    return (
        outdir
        / _safe(str(get("PatientID", "") or "unknown"))
        / _safe(str(get("StudyInstanceUID", "") or "unknown"))
        / _safe(str(get("SeriesInstanceUID", "") or "unknown"))
        / (_safe(str(get("SOPInstanceUID"))) + ".dcm")
    )


def clean_file(stages: list[Stage], source: Path, outdir: Path, *, fsync: bool = False) -> Outcome:
    """Read, scrub and write one file; any failure is an Outcome with a reason, not a raise.

    Offline copies are not fsynced by default: the input stays where it was, so a crash loses
    nothing that cannot be made again.
    """
    try:
        item = Item(source.name, read_instance(source), "offline")
        for stage in stages:
            stage(item)
        ds = item.dataset
        data = encode_chunks(ds, item.transfer_syntax)
        target = output_path(outdir, ds)
        write_atomic(target, data, fsync=fsync)
    except InstanceError as exc:
        return Outcome(source, reason=exc.reason, message=str(exc))
    except OSError as exc:
        return Outcome(source, reason="io-error", message=f"{exc.strerror}: {exc.filename}")
    return Outcome(source, output=target)


# -- worker processes ----------------------------------------------------------------------

_worker: list[Stage] | None = None
_worker_outdir: Path | None = None


def _init_worker(config: Config, secret: bytes, outdir: Path) -> None:
    global _worker, _worker_outdir
    _worker = build_stages(config, secret)
    _worker_outdir = outdir


def _work(source: Path) -> Outcome:
    assert _worker is not None and _worker_outdir is not None
    try:
        return clean_file(_worker, source, _worker_outdir)
    except Exception as exc:  # fail closed: report, never crash the batch
        return Outcome(source, reason="internal-error", message=f"{type(exc).__name__}: {exc}")


def run_batch(
    sources: list[Path],
    outdir: Path,
    config: Config,
    secret: bytes,
    *,
    jobs: int | None = None,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Clean ``sources`` into ``outdir`` with ``jobs`` processes (default: one per core)."""
    jobs = jobs or os.cpu_count() or 1
    outcomes: list[Outcome] = []
    if jobs == 1 or len(sources) < 8:
        _init_worker(config, secret, outdir)
        results: Iterable[Outcome] = map(_work, sources)
        for outcome in results:
            outcomes.append(outcome)
            if progress:
                progress(outcome)
        return outcomes
    # Build once here so that a bad configuration fails before any worker starts.
    build_stages(config, secret)
    chunk = max(1, min(64, len(sources) // (jobs * 8)))
    with ProcessPoolExecutor(
        jobs, initializer=_init_worker, initargs=(config, secret, outdir)
    ) as pool:
        for outcome in pool.map(_work, sources, chunksize=chunk):
            outcomes.append(outcome)
            if progress:
                progress(outcome)
    return outcomes
