"""The synthetic set plants every kind of header PHI, and the instrument that measures a
de-identifier on it (``check_headers``, the header half of ``dicomnode evaluate``) finds what is
left, and only that: checked on hand-made outputs (copies of the originals edited with pydicom)
and on the real scrubber's."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomnode.evaluate import check_headers
from dicomnode.synth import PLANTED_KINDS, make_set
from tests.conftest import SECRET, require_tool

SHIFT = timedelta(days=-400, hours=3, minutes=17, seconds=11)
TEXT_VRS = ("PN", "LO", "SH", "LT", "ST", "UT", "AE")
Edit = Callable[[str, Dataset], None]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("synth") / "orig"
    yield root, make_set(root, count=9, seed=5)


def _uid(original: str) -> str:
    """A hand-made consistent pseudonym."""
    return "2.25." + str(int(hashlib.sha256(original.encode()).hexdigest()[:30], 16))


def _moved(instants: list[dict[str, str]], shift: timedelta, carry: bool) -> dict[str, str]:
    """The planted instants moved by ``shift``; with ``carry`` false, times move on their own
    clock and dates by whole days (a broken shift: wrong across midnight)."""
    values = {i["path"]: i["value"] for i in instants}
    moved = {}
    for path, value in values.items():
        if path.endswith("DateTime"):
            stamp = datetime.strptime(value[:21], "%Y%m%d%H%M%S.%f") + shift
            moved[path] = stamp.strftime("%Y%m%d%H%M%S.%f") + value[21:]
        elif path.endswith("Date"):
            time_path = path[:-4] + "Time"
            form = "%H%M%S.%f" if "." in values[time_path] else "%H%M%S"
            when = datetime.strptime(value + values[time_path], "%Y%m%d" + form)
            if carry:
                when += shift
                moved[path] = when.strftime("%Y%m%d")
            else:
                moved[path] = (when + timedelta(days=shift.days)).strftime("%Y%m%d")
                when += timedelta(seconds=shift.seconds)
            moved[time_path] = when.strftime(form)
    return moved


def _blank(ds: Dataset, uid: Callable[[str], str]) -> None:
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _blank(item, uid)
        elif element.VR in TEXT_VRS:
            element.value = "REMOVED"
        elif element.VR in ("DA", "TM", "DT"):
            element.value = ""
        elif element.VR == "UI" and not str(element.value).startswith("1.2.840.10008."):
            element.value = uid(str(element.value))


def _clean_copy(
    orig: Path,
    out: Path,
    truth: dict[str, Any],
    *,
    shift: timedelta = SHIFT,
    carry: bool = True,
    uid: Callable[[str], str] = _uid,
    edit: Edit | None = None,
) -> Path:
    """A hand-made de-identifier: every text value replaced, every UID remapped with ``uid``,
    every planted instant moved by ``shift``; ``edit(file, output)`` then changes an output
    further."""
    out.mkdir()
    for entry in truth["instances"]:
        ds = pydicom.dcmread(orig / entry["file"])
        _blank(ds, uid)
        for keyword, value in _moved(entry["instants"], shift, carry).items():
            setattr(ds, keyword, value)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if edit is not None:
            edit(entry["file"], ds)
        ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return out


def _check(orig: Path, out: Path, truth: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("dciodvfy", False)
    return check_headers(orig, out, truth, kwargs.pop("pseudonymize", _uid), **kwargs)


def _planted(truth: dict[str, Any], file: str, kind: str) -> list[str]:
    entry = next(e for e in truth["instances"] if e["file"] == file)
    return [p["value"] for p in entry["header_planted"] if p["kind"] == kind]


def _original(orig: Path, file: str) -> Dataset:
    return pydicom.dcmread(orig / file, stop_before_pixels=True)


# --- the synthetic set ----------------------------------------------------------------------


def test_truth_lists_every_kind_uids_and_instants(
    synthetic: tuple[Path, dict[str, Any]],
) -> None:
    orig, truth = synthetic
    instances = truth["instances"]
    assert len(instances) == 9
    for entry in instances:
        assert {p["kind"] for p in entry["header_planted"]} == set(PLANTED_KINDS)
        assert set(entry["uids"]) >= {"study", "series", "sop_instance"}
        assert entry["uids"]["sop_instance"] == entry["sop_instance_uid"]
        assert {i["path"] for i in entry["instants"]} == {
            f"{what}{part}"
            for what in ("Study", "Series", "Acquisition", "Content", "InstanceCreation")
            for part in ("Date", "Time")
        } | {"AcquisitionDateTime"}
        assert all(isinstance(v, str) for v in entry["header_phi"])  # the old flat list
        assert entry["frames"] and all("boxes" in f for f in entry["frames"])
        ds = _original(orig, entry["file"])
        for instant in entry["instants"]:
            assert str(ds[instant["path"]].value) == instant["value"]
    # Patients with several instances, two studies and two series.
    studies: dict[Any, set[str]] = {}
    series: dict[Any, set[str]] = {}
    for entry in instances:
        studies.setdefault(entry["patient"], set()).add(entry["uids"]["study"])
        series.setdefault(entry["patient"], set()).add(entry["uids"]["series"])
    assert max(len(s) for s in studies.values()) == 2
    assert any(len(series[p]) >= 2 and len(studies[p]) == 2 for p in studies)
    # Acquisitions after midnight in a study started at 23:50; fractions; UTC offsets.
    values = [{i["path"]: i["value"] for i in e["instants"]} for e in instances]
    assert any(v["StudyTime"] >= "2350" and v["ContentDate"] > v["StudyDate"] for v in values)
    assert any("." in v["ContentTime"] for v in values)
    assert any(v["AcquisitionDateTime"].endswith("+0100") for v in values)
    # Phones in several formats, and the same phone in free text and in the referring
    # physician's identification.
    phones = {p["value"] for e in instances for p in e["header_planted"] if p["kind"] == "phone"}
    assert len({re.sub(r"\d", "#", p) for p in phones}) >= 3
    ds = _original(orig, instances[0]["file"])
    person = ds.ReferringPhysicianIdentificationSequence[0]
    assert person.PersonTelephoneNumbers in ds.ImageComments
    assert person.PersonTelecomInformation in ds.AdditionalPatientHistory
    assert ds.PatientTelecomInformation in _planted(truth, instances[0]["file"], "email")
    assert "TextValue" in ds.ContentSequence[0].ContentSequence[0]
    # References to the first instance of a series.
    second = _original(orig, instances[1]["file"])
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID


def test_same_seed_same_set(synthetic: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    _, truth = synthetic
    assert make_set(tmp_path / "again", count=9, seed=5) == truth
    assert make_set(tmp_path / "other", count=9, seed=6) != truth


# --- the instrument on hand-made outputs ----------------------------------------------------


def test_copy_of_the_originals_leaks_every_kind_in_every_file(
    synthetic: tuple[Path, dict[str, Any]],
) -> None:
    orig, truth = synthetic
    result = _check(orig, orig, truth, pseudonymize=lambda uid: uid)
    found = {tuple(line.split(" ", 2)[:2]) for line in result["header_leaks"]}
    expected = {(f"{e['file']}:", kind) for e in truth["instances"] for kind in PLANTED_KINDS}
    assert found == expected
    assert set(result["header_leaks_by_kind"]) == set(PLANTED_KINDS)
    assert result["uids_consistent"] and result["intervals_kept"]
    assert len(result["times_unshifted"]) == len({e["patient"] for e in truth["instances"]})


def test_consistent_shift_and_remap_pass(
    synthetic: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    orig, truth = synthetic
    result = _check(orig, _clean_copy(orig, tmp_path / "out", truth), truth)
    assert result["missing_outputs"] == []
    assert result["header_leaks"] == [] and result["header_leaks_by_kind"] == {}
    assert result["uids_consistent"], result["uid_errors"]
    assert result["intervals_kept"], result["interval_errors"]
    assert result["times_unshifted"] == []


def test_a_phone_a_time_an_email_a_date_and_an_id_left_in_are_each_reported(
    synthetic: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    orig, truth = synthetic
    phone = _planted(truth, "003-sc.dcm", "phone")[1]
    digits = re.sub(r"\D", "", phone)[-10:]
    email = _planted(truth, "005-xa.dcm", "email")[1]
    patient_id = _planted(truth, "001-us-cine.dcm", "id")[0]
    study_date = _original(orig, "006-xa-cine.dcm").StudyDate

    def edit(file: str, ds: Dataset) -> None:
        if file == "003-sc.dcm":
            ds.ImageComments = f"Call back on {phone}"
            ds.AdditionalPatientHistory = f"tel {digits[:3]}-{digits[3:6]}-{digits[6:]}"
        elif file == "005-xa.dcm":
            ds.ReferringPhysicianIdentificationSequence[0].PersonTelecomInformation = email
        elif file == "007-ct.dcm":
            ds.AcquisitionTime = _original(orig, file).AcquisitionTime  # not shifted
        elif file == "001-us-cine.dcm":
            ds.private_block(0x0011, "SYNTH PRIVATE", create=True).add_new(0x10, "LO", patient_id)
        elif file == "006-xa-cine.dcm":
            text = ds.ContentSequence[0].ContentSequence[0]
            text.TextValue = f"seen {study_date[:4]}-{study_date[4:6]}-{study_date[6:]}"

    result = _check(orig, _clean_copy(orig, tmp_path / "out", truth, edit=edit), truth)
    assert sorted(result["header_leaks"]) == [
        "001-us-cine.dcm: id ((0011,1010))",
        "003-sc.dcm: phone (AdditionalPatientHistory)",
        "003-sc.dcm: phone (ImageComments)",
        "005-xa.dcm: email (ReferringPhysicianIdentificationSequence[0].PersonTelecomInformation)",
        # the address is the physician's given and family names
        "005-xa.dcm: name (ReferringPhysicianIdentificationSequence[0].PersonTelecomInformation)",
        "006-xa-cine.dcm: date (ContentSequence[0].ContentSequence[0].TextValue)",
        "007-ct.dcm: time (AcquisitionTime)",
    ]
    assert result["header_leaks_by_kind"] == {
        "id": 1,
        "phone": 2,
        "email": 1,
        "name": 1,
        "date": 1,
        "time": 1,
    }
    report = json.dumps(result)
    assert phone not in report and email not in report and patient_id not in report


def test_a_value_in_the_file_meta_is_reported(
    synthetic: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    orig, truth = synthetic
    patient_id = _planted(truth, "000-us.dcm", "id")[0]

    def edit(file: str, ds: Dataset) -> None:
        if file == "000-us.dcm":
            ds.file_meta.SourceApplicationEntityTitle = patient_id

    result = _check(orig, _clean_copy(orig, tmp_path / "out", truth, edit=edit), truth)
    assert result["header_leaks"] == ["000-us.dcm: id (meta.SourceApplicationEntityTitle)"]


def test_one_instance_shifted_by_another_amount_breaks_intervals(
    synthetic: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    orig, truth = synthetic

    def edit(file: str, ds: Dataset) -> None:
        if file == "001-us-cine.dcm":
            clock = datetime.strptime(ds.ContentTime[:6], "%H%M%S") + timedelta(seconds=60)
            ds.ContentTime = clock.strftime("%H%M%S") + ds.ContentTime[6:]

    result = _check(orig, _clean_copy(orig, tmp_path / "out", truth, edit=edit), truth)
    assert not result["intervals_kept"]
    assert result["interval_errors"] == [
        "patient of 000-us.dcm: 001-us-cine.dcm ContentDate+ContentTime moved +60 s relative to the others"
    ]
    assert result["header_leaks"] == [] and result["uids_consistent"]


def test_a_dropped_utc_offset_breaks_intervals(
    synthetic: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    orig, truth = synthetic
    with_offset = [
        e["file"]
        for e in truth["instances"]
        if any(i["value"].endswith("+0100") for i in e["instants"])
    ]

    def edit(file: str, ds: Dataset) -> None:
        if file == with_offset[0]:
            ds.AcquisitionDateTime = ds.AcquisitionDateTime[:-5]

    result = _check(orig, _clean_copy(orig, tmp_path / "out", truth, edit=edit), truth)
    assert not result["intervals_kept"]
    errors = result["interval_errors"]
    assert len(errors) == 1 and f"{with_offset[0]} AcquisitionDateTime moved +3600 s" in errors[0]


def test_a_shift_that_does_not_carry_past_midnight_breaks_intervals(
    synthetic: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    orig, truth = synthetic
    result = _check(orig, _clean_copy(orig, tmp_path / "out", truth, carry=False), truth)
    assert not result["intervals_kept"]
    assert result["interval_errors"]
    assert all(" s relative to the others" in e for e in result["interval_errors"])


def test_dates_shifted_by_whole_days_keep_intervals_but_leave_times(
    synthetic: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    orig, truth = synthetic
    out = _clean_copy(orig, tmp_path / "out", truth, shift=timedelta(days=-400))
    result = _check(orig, out, truth)
    assert result["intervals_kept"], result["interval_errors"]
    assert len(result["times_unshifted"]) == len({e["patient"] for e in truth["instances"]})
    assert set(result["header_leaks_by_kind"]) == {"time"}


def test_two_originals_mapped_to_one_uid_are_inconsistent(
    synthetic: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    orig, truth = synthetic
    first, other = truth["instances"][0]["uids"]["study"], truth["instances"][4]["uids"]["study"]

    def merge(uid: str) -> str:
        return _uid(first if uid == other else uid)

    out = _clean_copy(orig, tmp_path / "out", truth, uid=merge)
    result = _check(orig, out, truth, pseudonymize=merge)
    assert not result["uids_consistent"]
    assert any("2 original UIDs became one" in e for e in result["uid_errors"])


def test_one_original_mapped_to_two_uids_and_a_broken_reference_are_inconsistent(
    synthetic: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    orig, truth = synthetic

    def edit(file: str, ds: Dataset) -> None:
        if file == "001-us-cine.dcm":  # same study as 000, another UID
            ds.StudyInstanceUID = _uid("another study")
            ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = _uid("nowhere")

    result = _check(orig, _clean_copy(orig, tmp_path / "out", truth, edit=edit), truth)
    assert not result["uids_consistent"]
    errors = result["uid_errors"]
    assert any(e.startswith("one original UID became 2 UIDs") for e in errors), errors
    assert (
        "001-us-cine.dcm: reference ReferencedImageSequence[0].ReferencedSOPInstanceUID "
        "points to no output"
    ) in errors


def test_dciodvfy_reports_only_new_errors(
    synthetic: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    require_tool("dciodvfy")
    orig, truth = synthetic
    out = tmp_path / "out"
    out.mkdir()
    for entry in truth["instances"]:
        ds = pydicom.dcmread(orig / entry["file"])
        if entry["file"] == "005-xa.dcm":
            del ds.ImageType  # Type 1 in the X-Ray Image module
        ds.save_as(out / entry["file"], enforce_file_format=True)
    result = _check(orig, out, truth, pseudonymize=lambda uid: uid, dciodvfy=True)
    errors = result["dciodvfy_new_errors"]
    assert errors and all(e.startswith("005-xa.dcm: Error") for e in errors), errors
    assert any("<ImageType>" in e for e in errors)


# --- the real scrubber ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def scrubbed(synthetic: tuple[Path, dict[str, Any]]) -> Iterator[tuple[Path, Path, dict[str, Any]]]:
    from dicomnode.batch import run_batch
    from dicomnode.config import Config, PixelConfig

    orig, truth = synthetic
    anon = orig.parent / "anon"
    config = Config(pixels=PixelConfig(enabled=False))  # the header alone
    outcomes = run_batch(sorted(orig.glob("*.dcm")), anon, config, SECRET, jobs=1)
    assert len(outcomes) == len(truth["instances"]) > 0  # all() of nothing would pass
    assert all(o.ok for o in outcomes), [(o.source.name, o.reason) for o in outcomes if not o.ok]
    yield orig, anon, truth


def test_scrub_leaves_no_planted_header_value_and_keeps_uids_and_intervals(
    scrubbed: tuple[Path, Path, dict[str, Any]],
) -> None:
    from dicomnode.scrub import Pseudonymizer

    orig, anon, truth = scrubbed
    result = check_headers(orig, anon, truth, Pseudonymizer(SECRET).uid, dciodvfy=False)
    assert result["missing_outputs"] == []
    assert result["header_leaks"] == [], result["header_leaks_by_kind"]
    assert result["uids_consistent"], result["uid_errors"]
    assert result["intervals_kept"], result["interval_errors"]
    assert result["times_unshifted"] == []


def test_scrub_adds_no_dciodvfy_error(scrubbed: tuple[Path, Path, dict[str, Any]]) -> None:
    from dicomnode.scrub import Pseudonymizer

    require_tool("dciodvfy")
    orig, anon, truth = scrubbed
    result = check_headers(orig, anon, truth, Pseudonymizer(SECRET).uid)
    assert result["dciodvfy_new_errors"] == []
