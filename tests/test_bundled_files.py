"""pydicom's bundled test files: every transfer syntax and many IODs, with PHI planted.

Each output must leak none of the planted strings, round-trip through pydicom, and make
Debian's dciodvfy report no error it did not report on the input.
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian

from dicomnode.dicomio import encode_instance, read_instance
from dicomnode.errors import InstanceError
from dicomnode.scrub import Scrubber
from tests.conftest import PYDICOM_FILES, bundled_files, require_tool
from tests.phi import leaks

FILES = bundled_files()
PLANT = {
    "PatientName": "Ximena^Oyelaran-Pickett",
    "PatientID": "HOSP55190023",
    "PatientBirthDate": "19550817",
    "InstitutionName": "Glenmorrow General Hospital",
    "ReferringPhysicianName": "Threlkeld^Osgood",
    "AccessionNumber": "A99301877",
}
MUST_PROCESS = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "JPGExtended.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "examples_ybr_color.dcm",
    "examples_palette.dcm",
    "test-SR.dcm",
    "rtplan.dcm",
    "waveform_ecg.dcm",
    "liver_1frame.dcm",
    "examples_overlay.dcm",
]


# Files the scrubber refuses on purpose, and why: a value that describes the pixel data
# (NumberOfFrames "1A") and is not what its VR says cannot be cleaned with certainty.
REFUSED_BY_THE_SCRUBBER = {"badVR.dcm": "pixel-decode-failed"}


def _planted(path: Path) -> bytes:
    """The file with PHI planted in its top-level identity attributes."""
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
        return path.read_bytes()  # pydicom 3 does not write big endian; scrub it as it is
    for keyword, value in PLANT.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dciodvfy_errors(dciodvfy: str, data: bytes, tmp_path: Path) -> set[str]:
    path = tmp_path / "check.dcm"
    path.write_bytes(data)
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    # Values (UIDs, numbers) differ by design; the kind of error is what must not be new.
    return {re.sub(r"\d+(\.\d+)*", "N", line) for line in lines if line.startswith("Error")}


def test_the_files_exist() -> None:
    names = {p.name for p in FILES}
    assert set(MUST_PROCESS) <= names, "pydicom's bundled test files are missing"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PYDICOM_FILES)))
def test_bundled_file(path: Path, scrubber: Scrubber, tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy")
    try:
        read_instance(path)
    except InstanceError as exc:
        # Refused as it is (not DICOM, a DICOMDIR, truncated...): a typed error, nothing else.
        assert path.name not in MUST_PROCESS, f"refused: {exc}"
        assert exc.reason in {"unreadable", "unsupported", "not-an-instance", "truncated"}
        return
    try:
        source = _planted(path)
    except Exception:
        source = path.read_bytes()  # pydicom cannot re-write it (e.g. wrong VR mode in meta)
    ds = read_instance(source)
    try:
        scrubber.scrub(ds)
    except InstanceError as exc:
        # A deliberately broken file (badVR.dcm: NumberOfFrames "1A") is refused, typed.
        assert path.name in REFUSED_BY_THE_SCRUBBER, f"refused: {exc}"
        assert exc.reason == REFUSED_BY_THE_SCRUBBER[path.name]
        return
    out = encode_instance(ds)
    planted = {k: v for k, v in PLANT.items() if v.encode() in source}
    assert leaks(out, planted) == []
    again = pydicom.dcmread(io.BytesIO(out))
    for elem in again.iterall():
        _ = elem.value
    assert again.SOPInstanceUID.startswith("2.25.")
    assert (
        again.file_meta.TransferSyntaxUID
        == pydicom.dcmread(io.BytesIO(source)).file_meta.TransferSyntaxUID
    )
    if "PixelData" in again:
        assert again.PixelData == pydicom.dcmread(io.BytesIO(source)).PixelData
    new = _dciodvfy_errors(dciodvfy, out, tmp_path) - _dciodvfy_errors(dciodvfy, source, tmp_path)
    assert not new, f"dciodvfy reports new errors: {sorted(new)}"
