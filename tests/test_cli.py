"""`dicomnode scrub` end to end, through the real command line."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode import batch, durable
from dicomnode.batch import clean_file
from dicomnode.pipeline import ScrubStage
from dicomnode.scrub import Scrubber
from tests.conftest import PYDICOM_FILES, SECRET
from tests.phi import PHI, leaks, planted_dataset, to_bytes

ROOT = Path(__file__).resolve().parent.parent


def dicomnode(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=300,
    )


def _study(folder: Path) -> list[Dataset]:
    """Three CT instances of one patient: two series, one referencing another instance."""
    made = []
    for n, (series, instance) in enumerate([(1, 1), (1, 2), (2, 1)]):
        ds = planted_dataset()
        ds.SeriesInstanceUID = f"{PHI['uid_root']}.1.{series}"
        ds.SOPInstanceUID = f"{PHI['uid_root']}.1.{series}.{instance}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = instance
        if n == 1:
            ref = Dataset()
            ref.ReferencedSOPClassUID = ds.SOPClassUID
            ref.ReferencedSOPInstanceUID = made[0].SOPInstanceUID
            ds.ReferencedImageSequence = Sequence([ref])
        (folder / f"{PHI['name_family']}_{n}.dcm").write_bytes(to_bytes(ds))
        made.append(ds)
    return made


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, list[Dataset]]:
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    study = _study(src)
    for name in ("MR_small_implicit.dcm", "SC_rgb_jpeg_gdcm.dcm", "image_dfl.dcm"):
        (src / "sub" / name).write_bytes((PYDICOM_FILES / name).read_bytes())
    (src / "sub" / "deeper" / "DICOMDIR").write_bytes(
        (PYDICOM_FILES / "dicomdirtests" / "DICOMDIR").read_bytes()
    )
    (src / "sub" / "deeper" / "notes.txt").write_text(f"patient {PHI['name']}\n")  # skipped
    (src / "sub" / "deeper" / "IM000001").write_bytes(b"not dicom, no telling name\n" * 8)
    (src / "sub" / "deeper" / "truncated.dcm").write_bytes(to_bytes(planted_dataset())[:900])
    return src, study


def test_scrub_folder_of_mixed_files(mixed: tuple[Path, list[Dataset]], tmp_path: Path) -> None:
    src, _ = mixed
    out = tmp_path / "out"
    result = dicomnode("scrub", str(src), "-o", str(out))
    assert result.returncode == 1, result.stderr  # some inputs failed
    assert "9 input(s): 6 de-identified" in result.stdout and "3 failed" in result.stdout
    for reason in ("unsupported", "unreadable", "truncated"):
        assert reason in result.stdout
    # A file that is plainly not DICOM (its name, no DICM) is skipped with a notice, not
    # counted as a failure; one without a telling name is read, and fails as unreadable.
    assert "skipped 1 file(s) that are not DICOM" in result.stderr and "notes.txt" in result.stderr
    assert "notes.txt" not in result.stdout and "IM000001: unreadable" in result.stdout
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(written) == 6  # failed inputs wrote nothing, no temp file was left
    for path in written:
        assert leaks(path.read_bytes()) == [], path
        assert leaks(str(path.relative_to(out)).encode()) == []
    cts = [pydicom.dcmread(p) for p in written if pydicom.dcmread(p).Modality == "CT"]
    assert len(cts) == 3
    assert len({ds.StudyInstanceUID for ds in cts}) == 1
    assert len({ds.SeriesInstanceUID for ds in cts}) == 2
    assert len({ds.PatientID for ds in cts}) == 1
    by_number = {(str(ds.SeriesInstanceUID), int(ds.InstanceNumber)): ds for ds in cts}
    referring = next(
        ds for ds in cts if "ReferencedImageSequence" in ds and int(ds.InstanceNumber) == 2
    )
    first = by_number[(str(referring.SeriesInstanceUID), 1)]
    assert referring.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID


def test_a_synthetic_set_scrubs_without_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dicomnode synth` writes truth.json inside its set; `scrub` of the set skips it (with a
    notice) instead of failing on it."""
    from dicomnode.cli import main

    config = tmp_path / "dicomnode.yaml"
    config.write_text("pixels: {enabled: false}\n")  # the header alone: fast
    assert main(["synth", str(tmp_path / "set"), "--count", "3"]) == 0
    assert (tmp_path / "set" / "truth.json").is_file()
    capsys.readouterr()
    out = tmp_path / "clean"
    args = ["scrub", str(tmp_path / "set"), "-o", str(out), "-j", "1", "--config", str(config)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "3 input(s): 3 de-identified" in captured.out and "0 failed" in captured.out
    assert "skipped 1 file(s) that are not DICOM" in captured.err and "truth.json" in captured.err
    assert len(list(out.rglob("*.dcm"))) == 3


def test_outputs_are_identical_across_runs_and_processes(
    mixed: tuple[Path, list[Dataset]], tmp_path: Path
) -> None:
    src, _ = mixed
    runs = []
    for n, jobs in enumerate(("1", "2")):
        out = tmp_path / f"out{n}"
        dicomnode("scrub", str(src), "-o", str(out), "-j", jobs)
        runs.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*.dcm")})
    assert runs[0] == runs[1] and len(runs[0]) == 6


def test_no_secret_is_a_clear_error(tmp_path: Path) -> None:
    env = {"DICOMNODE_SECRET": ""}
    result = dicomnode("scrub", str(PYDICOM_FILES / "CT_small.dcm"), "-o", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "DICOMNODE_SECRET_FILE" in result.stderr and "--demo" in result.stderr
    assert not any(tmp_path.iterdir())
    demo = dicomnode(
        "scrub", str(PYDICOM_FILES / "CT_small.dcm"), "-o", str(tmp_path), "--demo", env=env
    )
    assert demo.returncode == 0 and "DEMO MODE" in demo.stderr


def test_missing_input_and_bad_config(tmp_path: Path) -> None:
    result = dicomnode("scrub", str(tmp_path / "nope"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "no such file or folder" in result.stderr
    site = tmp_path / "site.yaml"
    site.write_text("rules:\n  - keyword: PatientNam\n    action: keep\n")
    config = tmp_path / "dicomnode.yaml"
    config.write_text(f"scrub:\n  site_rules: {site}\n")
    check = dicomnode("check-config", "--config", str(config))
    assert check.returncode == 2
    assert str(site) in check.stderr and "rule 1" in check.stderr and "PatientName" in check.stderr
    good = dicomnode("check-config")
    assert good.returncode == 0 and "configuration OK" in good.stdout


def test_python_m_and_version() -> None:
    result = dicomnode("--version")
    assert result.returncode == 0 and result.stdout.startswith("dicomnode ")


def test_full_disk_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scrubber: Scrubber
) -> None:
    source = tmp_path / "in.dcm"
    original = to_bytes(planted_dataset())
    source.write_bytes(original)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable.os, "fsync", no_space)
    out = tmp_path / "out"
    outcome = clean_file([ScrubStage(scrubber)], source, out, fsync=True)
    assert not outcome.ok and outcome.reason == "io-error" and "No space" in (outcome.message or "")
    assert [p for p in out.rglob("*") if p.is_file()] == []
    assert source.read_bytes() == original  # the input is untouched


def test_batch_in_process_reports_every_failure(tmp_path: Path) -> None:
    from dicomnode.config import Config

    good = tmp_path / "good.dcm"
    good.write_bytes(to_bytes(planted_dataset()))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"DICM but not really")
    outcomes = batch.run_batch([good, bad], tmp_path / "out", Config(), SECRET, jobs=1)
    assert [o.ok for o in outcomes] == [True, False]
    assert outcomes[1].reason == "unreadable"
