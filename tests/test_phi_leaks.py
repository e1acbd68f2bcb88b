"""Planted PHI must be absent from the output bytes, wherever it was hidden."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from dicomnode.dicomio import encode_instance, read_instance
from dicomnode.scrub import Scrubber
from tests.phi import PHI, leaks, planted_dataset, to_bytes


def scrub_bytes(scrubber: Scrubber, data: bytes) -> bytes:
    ds = read_instance(data)
    scrubber.scrub(ds)
    return encode_instance(ds)


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("profile", ["basic", "scrubber"])
def test_no_planted_phi_in_output(
    profile: str, implicit: bool, request: pytest.FixtureRequest
) -> None:
    scrubber: Scrubber = request.getfixturevalue(profile)
    source = to_bytes(planted_dataset(implicit=implicit))
    assert leaks(source) == sorted(PHI)  # every planted string is really in the input
    out = scrub_bytes(scrubber, source)
    assert leaks(out) == []


def test_links_to_the_originals_are_removed(scrubber: Scrubber) -> None:
    """Retrieve URL and its kin (Pixel Data Provider URL, the storage URIs, Storage URL) are
    in no Table E.1-1 row and went out as they came: a URL to the clinical PACS holds the
    site's host, the original UIDs and at times the patient ID; a procedure step's Contact
    URI and Contact Display Name, a person; Storage Media File-set ID, a disc's label. Removed
    at every depth; a coding scheme's URL (public) is kept."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = planted_dataset()
    host = "https://pacs.stswithin.example"
    link = f"{host}/wado?studyUID={ds.StudyInstanceUID}&patientID={PHI['pid']}"
    ds.RetrieveURL = link
    ds.add_new(0x00287FE0, "UR", f"{host}/jpip/{ds.SOPInstanceUID}")
    ds.add_new(0x00080407, "UR", f"{host}/store/{PHI['name_family']}/")
    ds.add_new(0x00080409, "UR", f"file:///archive/{PHI['pid']}/ct1.dcm")
    ds.add_new(0x0008040B, "UR", f"{PHI['name_family']}_ct1.dcm")
    ds.add_new(0x00404073, "UR", f"{host}/objects/{PHI['pid']}")
    ds.add_new(0x0074100A, "UR", "mailto:p.underhill@stswithin.example")
    ds.add_new(0x0074100C, "LO", "Philippa Underhill")
    ds.add_new(0x00880130, "SH", PHI["name_family"][:16])  # a disc's label
    item = Dataset()
    item.SeriesInstanceUID = ds.SeriesInstanceUID
    item.RetrieveURL = link
    ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].RetrieveURL = link
    ds.ReferencedStudySequence = Sequence([item])
    code = Dataset()
    code.CodingSchemeDesignator, code.CodingSchemeURL = "SCT", "http://snomed.info/sct"
    ds.CodingSchemeIdentificationSequence = Sequence([code])
    out = scrub_bytes(scrubber, to_bytes(ds))
    assert b"stswithin" not in out and b"Underhill" not in out and leaks(out) == []
    assert ds.StudyInstanceUID.encode() not in out and ds.SOPInstanceUID.encode() not in out
    again = pydicom.dcmread(io.BytesIO(out))
    assert not [e for e in again.iterall() if e.VR == "UR" and "snomed" not in str(e.value)]
    assert again.CodingSchemeIdentificationSequence[0].CodingSchemeURL == "http://snomed.info/sct"


def test_output_round_trips_and_every_element_decodes(scrubber: Scrubber) -> None:
    out = scrub_bytes(scrubber, to_bytes(planted_dataset()))
    ds = pydicom.dcmread(io.BytesIO(out))
    for elem in ds.iterall():
        _ = elem.value  # decoding must not fail anywhere
    again = io.BytesIO()
    ds.save_as(again, enforce_file_format=True)
    assert pydicom.dcmread(io.BytesIO(again.getvalue())).SOPInstanceUID == ds.SOPInstanceUID


def test_nested_uids_remapped_consistently(scrubber: Scrubber) -> None:
    ds = read_instance(to_bytes(planted_dataset()))
    scrubber.scrub(ds)
    series = ds.ReferencedSeriesSequence[0]
    deep = series.ReferencedInstanceSequence[0].SourceImageSequence[0]
    top = ds.ReferencedImageSequence[0]
    assert series.SeriesInstanceUID.startswith("2.25.")
    assert deep.ReferencedSOPInstanceUID == top.ReferencedSOPInstanceUID
    assert deep.ReferencedSOPInstanceUID.startswith("2.25.")
    assert deep.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # a class, kept


def test_overlay_and_curve_groups_removed_whole(scrubber: Scrubber) -> None:
    ds = read_instance(to_bytes(planted_dataset()))
    scrubber.scrub(ds)
    groups = {tag >> 16 for tag in ds.keys()}
    assert 0x6000 not in groups and 0x5000 not in groups


def test_file_meta_rebuilt(scrubber: Scrubber) -> None:
    out = scrub_bytes(scrubber, to_bytes(planted_dataset()))
    assert out[:128] == b"\x00" * 128
    ds = pydicom.dcmread(io.BytesIO(out))
    meta = ds.file_meta
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert "SourceApplicationEntityTitle" not in meta
    assert meta.ImplementationVersionName.startswith("DICOMNODE")


def test_provenance_stamped(scrubber: Scrubber) -> None:
    ds = read_instance(to_bytes(planted_dataset()))
    scrubber.scrub(ds)
    assert ds.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    # Basic Profile + the default options (modified dates, patient characteristics,
    # clean descriptors, safe private), CID 7050.
    assert codes == {"113100", "113107", "113108", "113105", "113111"}
    assert all(
        item.CodingSchemeDesignator == "DCM" for item in ds.DeidentificationMethodCodeSequence
    )
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert any("Basic Profile" in m for m in ds.DeidentificationMethod)


def test_prior_deidentification_is_kept_and_extended(scrubber: Scrubber) -> None:
    source = planted_dataset()
    source.DeidentificationMethod = "Site PACS export anonymizer"
    first = read_instance(to_bytes(source))
    scrubber.scrub(first)
    twice = read_instance(encode_instance(first))
    scrubber.scrub(twice)
    assert "Site PACS export anonymizer" in twice.DeidentificationMethod
    codes = [item.CodeValue for item in twice.DeidentificationMethodCodeSequence]
    assert len(codes) == len(set(codes))


def test_non_ascii_phi_is_removed(scrubber: Scrubber) -> None:
    ds = planted_dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.SeriesDescription = "Thorax 山田太郎 Иванов Müller"
    ds.ImageComments = "Пациент Иванов"
    source = to_bytes(ds)
    strings = {"kanji": "山田", "kana": "やまだ", "cyrillic": "Иванов", "umlaut": "Müller"}
    assert all(v.encode("utf-8") in source for v in strings.values())
    out = scrub_bytes(scrubber, source)
    for value in strings.values():
        assert value.encode("utf-8") not in out
    # The kanji name is the patient's own (a placeholder); the other names are unknown words.
    assert pydicom.dcmread(io.BytesIO(out)).SeriesDescription == "Thorax [NAME]"


def test_kept_text_that_mentions_the_patient_loses_the_mention(scrubber: Scrubber) -> None:
    """Frame Label (LO) is in no row of Table E.1-1 and is kept by the dictionary, like
    Manufacturer: a modality that labels frames with the family name, or a software version
    holding the MRN, must not take them out (found by the mutation campaign's multi-frame
    base). What does not mention the instance's identity is kept as it was."""
    ds = planted_dataset()
    content = pydicom.Dataset()
    content.FrameLabel = PHI["name_family"]
    content.FrameComments = "fine"
    frame = pydicom.Dataset()
    frame.FrameContentSequence = [content]
    ds.PerFrameFunctionalGroupsSequence = [frame]
    ds.SoftwareVersions = ["VA48A", "build " + PHI["pid"]]
    ds.ManufacturerModelName = "SOMATOM Definition AS+"
    out = pydicom.dcmread(io.BytesIO(scrub_bytes(scrubber, to_bytes(ds))))
    assert leaks(encode_instance(out)) == []
    assert out.PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0].FrameLabel == "[NAME]"
    assert out.SoftwareVersions == ["VA48A", "build [ID]"]
    assert out.ManufacturerModelName == "SOMATOM Definition AS+"
    assert out.Manufacturer == "ACME"


def test_what_a_site_rule_keeps_is_kept_as_it_is(
    make_scrubber: Callable[..., Scrubber], tmp_path: Path
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("name: test site\nrules:\n  - keyword: FrameLabel\n    action: keep\n")
    ds = planted_dataset()
    ds.FrameLabel = PHI["name_family"]
    out = pydicom.dcmread(io.BytesIO(scrub_bytes(make_scrubber(site_rules=site), to_bytes(ds))))
    assert out.FrameLabel == PHI["name_family"]
