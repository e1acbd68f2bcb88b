"""Every action code of Table E.1-1 and every option, on datasets built here."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode.dicomio import encode_instance, read_instance
from dicomnode.errors import ScrubError
from dicomnode.scrub import Action, Scrubber
from tests.phi import planted_dataset, to_bytes

Make = Callable[..., Scrubber]


def run(scrubber: Scrubber, ds: Dataset) -> Dataset:
    """Scrub through bytes, as the node does, and read the result back."""
    parsed = read_instance(to_bytes(ds))
    scrubber.scrub(parsed)
    return pydicom.dcmread(io.BytesIO(encode_instance(parsed)))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("K", Action.KEEP),
        ("X", Action.REMOVE),
        ("Z", Action.EMPTY),
        ("D", Action.DUMMY),
        ("C", Action.CLEAN),
        ("U", Action.UID),
        ("X/Z", Action.EMPTY),
        ("X/D", Action.DUMMY),
        ("Z/D", Action.DUMMY),
        ("X/Z/D", Action.DUMMY),
        ("X/Z/U*", Action.UID),
    ],
)
def test_combined_codes_resolve_to_the_conformant_action(code: str, expected: Action) -> None:
    assert Action.from_code(code) is expected


def test_basic_profile_actions(basic: Scrubber) -> None:
    out = run(basic, planted_dataset())
    # X: removed
    assert "PatientAddress" not in out and "OtherPatientIDs" not in out
    assert "ImageComments" not in out and "SeriesDescription" not in out
    # Z: zero length
    assert out.AccessionNumber == "" and out.StudyDate == "" and out.StudyID == ""
    # Combined codes follow the CT IOD: X/Z on a Type 3 attribute removes it,
    assert "AcquisitionDate" not in out
    # X/Z/D on Type 3: removed; Z/D on Type 2C: emptied (Type 1 would get a dummy).
    assert "InstitutionName" not in out and "OperatorsName" not in out
    assert out.ContentDate == ""
    # U: remapped, and the file meta follows
    assert out.SOPInstanceUID.startswith("2.25.") and len(out.SOPInstanceUID) <= 64
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    # X/Z/U*: the sequence stays, its UIDs change
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID.startswith("2.25.")
    # Patient ID (Z/D) becomes the pseudonym, Patient's Name the configured form of it
    assert out.PatientID.startswith("DN") and len(out.PatientID) == 18
    assert str(out.PatientName) == out.PatientID
    # Basic Profile without characteristics: sex emptied, age removed
    assert out.PatientSex == "" and "PatientAge" not in out
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    # Kept: what research needs
    assert out.Modality == "CT" and out.KVP == 120 and out.PixelSpacing == [0.5, 0.5]
    assert out.PixelData == bytes(range(32))


def test_dummy_action_on_a_plain_attribute(basic: Scrubber) -> None:
    ds = planted_dataset()
    ds.ProtocolName = "Protocol of Dr Underhill"  # X/D, Type 3 in CT: removed
    ds.AcquisitionFieldOfViewLabel = "Room 4 Underhill"  # D
    out = run(basic, ds)
    assert "ProtocolName" not in out and out.AcquisitionFieldOfViewLabel == "ANONYMIZED"


def test_combined_codes_follow_the_iod(basic: Scrubber) -> None:
    ds = planted_dataset()
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.99.555"
    ds.ReferencedStudySequence = Sequence([ref])  # X/Z, Type 3 in General Study
    ds.SeriesDate = "20210314"  # X/D, Type 3
    ds.ContentTime = "101500"  # Z/D, Type 2C: emptied
    out = run(basic, ds)
    assert "ReferencedStudySequence" not in out  # not an empty (non-conformant) sequence
    assert "SeriesDate" not in out and out.ContentTime == ""
    # The same attributes in an SC instance, whose IOD has no ContentTime condition.
    sc = planted_dataset()
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    sc.ConversionType = "WSD"
    sc.ReferencedStudySequence = Sequence([ref])
    assert "ReferencedStudySequence" not in run(basic, sc)


def test_a_class_the_tables_do_not_know_gets_the_always_conformant_action(
    basic: Scrubber,
) -> None:
    ds = planted_dataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6"
    ds.AcquisitionDate = "20210314"  # X/Z: emptied when the Type is unknown
    out = run(basic, ds)  # US Image Storage (retired): registered, not in the tables
    assert out.AcquisitionDate == "" and out.InstitutionName == "ANONYMIZED"


def test_private_attributes_removed_unless_safe(make_scrubber: Make) -> None:
    ds = planted_dataset()
    ge = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    ge.add_new(0x23, "DS", "5.0")  # Table speed: safe
    ge.add_new(0x99, "LO", "not in the safe list")
    basic = run(make_scrubber(options=()), ds)
    assert not any(tag >> 16 & 1 for tag in basic.keys())
    safe = run(make_scrubber(options=("retain-safe-private",)), ds)
    private = {tag: safe[tag].value for tag in safe.keys() if tag >> 16 & 1}
    assert private == {0x00190010: "GEMS_ACQU_01", 0x00191023: "5.0"}


def test_retain_uids(make_scrubber: Make) -> None:
    ds = planted_dataset()
    out = run(make_scrubber(options=("retain-uids",)), ds)
    assert out.SOPInstanceUID == ds.SOPInstanceUID
    assert out.StudyInstanceUID == ds.StudyInstanceUID


def test_retain_device_and_institution_identity(make_scrubber: Make) -> None:
    ds = planted_dataset()
    out = run(make_scrubber(options=("retain-device-identity", "retain-institution-identity")), ds)
    assert out.DeviceSerialNumber == ds.DeviceSerialNumber
    assert out.StationName == ds.StationName
    assert out.InstitutionName == ds.InstitutionName


def test_retain_patient_characteristics(make_scrubber: Make) -> None:
    out = run(make_scrubber(options=("retain-patient-characteristics",)), planted_dataset())
    assert out.PatientSex == "M" and out.PatientAge == "059Y"


def test_retain_full_dates(make_scrubber: Make) -> None:
    out = run(make_scrubber(options=("retain-long-full-dates",)), planted_dataset())
    assert out.StudyDate == "20210314" and out.StudyTime == "101500"
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert "PatientBirthDate" in out and out.PatientBirthDate == ""  # not a longitudinal date


def _days(a: str, b: str) -> int:
    return (
        dt.date(int(a[:4]), int(a[4:6]), int(a[6:])) - dt.date(int(b[:4]), int(b[4:6]), int(b[6:]))
    ).days


def test_modified_dates_shift_per_patient_and_keep_intervals(make_scrubber: Make) -> None:
    scrubber = make_scrubber(options=("retain-long-modified-dates",), date_shift_days=(-400, -10))
    ds = planted_dataset()
    ds.AcquisitionDateTime = "20210320083000.5+0100"
    out = run(scrubber, ds)
    shift = _days(out.StudyDate, "20210314")
    assert -400 <= shift <= -10
    assert out.AcquisitionDateTime.endswith(".5+0100")  # fraction and offset kept
    assert out.StudyTime != "101500"  # times move with their dates (tests/test_times.py)
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    # Same patient, another study: the same shift. Another patient: its own shift.
    again = planted_dataset()
    again.StudyDate = "20230101"
    assert _days(run(scrubber, again).StudyDate, "20230101") == shift
    shifts = set()
    for n in range(6):
        other = planted_dataset()
        other.PatientID = f"OTHER{n}"
        shifts.add(_days(run(scrubber, other).StudyDate, "20210314"))
    assert len(shifts) > 1


def test_clean_descriptors_keeps_only_safe_words(make_scrubber: Make) -> None:
    ds = planted_dataset()
    ds.SeriesDescription = "AX T1 POST GAD Quartermaine 12/03/2021 MRN8837461"
    ds.StudyDescription = "CT CHEST W CONTRAST"
    out = run(make_scrubber(options=("clean-descriptors",)), ds)
    assert out.SeriesDescription == "AX T1 POST GAD [NAME] [DATE] [ID]"
    assert out.StudyDescription == "CT CHEST W CONTRAST"


def _sr_content(text: str) -> Dataset:
    concept = Dataset()
    concept.CodeValue = "121071"
    concept.CodingSchemeDesignator = "DCM"
    concept.CodeMeaning = "Finding"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([concept])
    item.TextValue = text
    return item


def test_structured_content_dummied_or_cleaned(make_scrubber: Make) -> None:
    ds = planted_dataset()
    ds.ContentSequence = Sequence([_sr_content("Nodule in left lung, seen by Dr Underhill")])
    plain = run(make_scrubber(options=()), ds).ContentSequence[0]
    assert plain.TextValue == "ANONYMIZED"
    assert plain.ConceptNameCodeSequence[0].CodeMeaning == "Finding"  # a standard code
    cleaned = run(make_scrubber(options=("clean-structured-content",)), ds).ContentSequence[0]
    assert cleaned.TextValue == "Nodule in left lung, seen by [NAME]"


def test_clean_graphics(make_scrubber: Make) -> None:
    ds = planted_dataset()
    text = Dataset()
    text.UnformattedTextValue = "Left kidney Quartermaine"
    text.AnchorPointAnnotationUnits = "PIXEL"
    layer = Dataset()
    layer.GraphicLayer = "LAYER1"
    layer.TextObjectSequence = Sequence([text])
    ds.GraphicAnnotationSequence = Sequence([layer])
    basic = run(make_scrubber(options=()), ds).GraphicAnnotationSequence[0]
    assert basic.TextObjectSequence[0].UnformattedTextValue == "ANONYMIZED"
    clean = run(make_scrubber(options=("clean-graphics",)), ds).GraphicAnnotationSequence[0]
    assert clean.TextObjectSequence[0].UnformattedTextValue == "Left kidney [NAME]"


def test_unlisted_attributes_handled_by_vr(basic: Scrubber) -> None:
    ds = planted_dataset()
    ds.EvaluatorName = "Underhill^Philippa"  # PN not in Table E.1-1
    ds.TargetFrameOfReferenceUID = "1.2.826.0.1.3680043.99.777"  # an instance UID
    ds.DetectorDescription = "Detector of Underhill"  # LT
    ds.add_new(0x00089999, "LO", "not in the dictionary")
    out = run(basic, ds)
    assert out.EvaluatorName == "ANONYMIZED"
    assert out.TargetFrameOfReferenceUID.startswith("2.25.")
    assert out.DetectorDescription == "Detector of [NAME]"
    assert 0x00089999 not in out
    assert out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"


def test_site_rules(make_scrubber: Make, tmp_path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        """
name: test site
clean_words: [quartermaine-free]
rules:
  - keyword: SeriesDescription
    action: keep
  - keyword: StationName
    action: remove
  - keyword: InstitutionName
    action: set
    value: RESEARCH SITE 1
  - keyword: AccessionNumber
    action: hash
    prefix: ACC
  - tag: "(0029,xx01)"
    creator: ACME PRIVATE 1
    action: keep
"""
    )
    ds = planted_dataset()
    out = run(make_scrubber(options=(), site_rules=site), ds)
    assert out.SeriesDescription == ds.SeriesDescription
    assert "StationName" not in out
    assert out.InstitutionName == "RESEARCH SITE 1"
    assert out.AccessionNumber.startswith("ACC") and out.AccessionNumber != ds.AccessionNumber
    again = run(make_scrubber(options=(), site_rules=site), planted_dataset())
    assert again.AccessionNumber == out.AccessionNumber
    private = {tag for tag in out.keys() if tag >> 16 & 1}
    assert private == {0x00290010, 0x00291001}
    assert any("test site" in m for m in out.DeidentificationMethod)


def test_a_rule_that_cannot_be_applied_raises_a_typed_error(make_scrubber: Make, tmp_path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("rules:\n  - keyword: ReferencedImageSequence\n    action: set\n    value: x\n")
    scrubber = make_scrubber(site_rules=site)
    with pytest.raises(ScrubError) as caught:
        scrubber.scrub(read_instance(to_bytes(planted_dataset())))
    assert caught.value.reason == "scrub-failed"
