"""Nothing a sender declares is trusted: VRs, UIDs, private creators, nesting, ages."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode.dicomio import encode_instance, encode_items, read_instance
from dicomnode.errors import InstanceError
from dicomnode.scrub import Scrubber
from tests.phi import leaks, planted_dataset, to_bytes

Make = Callable[..., Scrubber]
SECRET_NAME = "Quillfeather Marchbanks"
MARK = "MARKERVALUE1"
SAFE_SEQ = (0x2001, "Philips Imaging DD 001", 0x5F)  # Stack Sequence, safe in Table E.3.10-1


def scrub_bytes(scrubber: Scrubber, data: bytes) -> bytes:
    parsed = read_instance(data)
    scrubber.scrub(parsed)
    return encode_instance(parsed)


def with_declared_vr(ds: Dataset, keyword: str, declared: str, value: str) -> bytes:
    """The dataset as explicit VR little endian bytes, with ``keyword`` declared as
    ``declared`` (whatever the dictionary says) and holding ``value``."""
    setattr(ds, keyword, MARK)
    data = to_bytes(ds)
    tag = keyword_dict[keyword]
    vr = dictionary_VR(tag)
    marked = MARK.encode()
    old = _element(tag, vr, marked)
    assert data.count(old) == 1
    payload = value.encode("latin-1")
    if len(payload) % 2:
        payload += b" "
    return data.replace(old, _element(tag, declared, payload))


def _element(tag: int, vr: str, value: bytes) -> bytes:
    """One element in explicit VR little endian (PS3.5 7.1.2)."""
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in ("OB", "OW", "UN", "UT", "UC", "UR", "SQ", "OF", "OD", "OL", "OV", "SV", "UV"):
        return header + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return header + struct.pack("<H", len(value)) + value


FREE_TEXT_AND_NAMES = [
    "StudyDescription",
    "SeriesDescription",
    "ImageComments",
    "ProtocolName",
    "AdditionalPatientHistory",
    "PatientComments",
    "ReferringPhysicianName",
    "OperatorsName",
    "PerformingPhysicianName",
    "InstitutionName",
    "StationName",
    "DerivationDescription",
    "AcquisitionComments",
    "RequestedProcedureDescription",
    "PerformedProcedureStepDescription",
]


@pytest.mark.parametrize("declared", ["DS", "CS", "IS", "AE", "UN", "OB", "UT"])
@pytest.mark.parametrize("keyword", FREE_TEXT_AND_NAMES)
def test_a_wrong_declared_vr_does_not_bypass_cleaning(
    scrubber: Scrubber, keyword: str, declared: str
) -> None:
    data = with_declared_vr(planted_dataset(), keyword, declared, f"CT {SECRET_NAME}")
    try:
        out = scrub_bytes(scrubber, data)
    except InstanceError as exc:
        assert exc.reason == "vr-mismatch"  # refused is fine; passed through is not
        return
    assert b"Quillfeather" not in out and b"Marchbanks" not in out
    again = pydicom.dcmread(io.BytesIO(out))
    if keyword in again:
        assert dictionary_VR(keyword_dict[keyword]) == again[keyword].VR


def test_a_sequence_declared_as_text_is_refused(scrubber: Scrubber) -> None:
    data = with_declared_vr(planted_dataset(), "StudyDescription", "SQ", "x" * 8)
    with pytest.raises(InstanceError) as caught:
        scrub_bytes(scrubber, data)
    assert caught.value.reason == "vr-mismatch"


def _private_item(depth: int) -> Dataset:
    """An item holding an unknown creator's private PN (and its own nested item below)."""
    item = Dataset()
    evil = item.private_block(0x0009, "EVILCORP", create=True)
    evil.add_new(0x01, "PN", SECRET_NAME.replace(" ", "^"))
    evil.add_new(0x02, "LO", f"scanned by {SECRET_NAME}")
    item.PatientName = SECRET_NAME.replace(" ", "^")
    item.ImageComments = f"comment {SECRET_NAME}"
    if depth > 1:
        item.ReferencedImageSequence = Sequence([_private_item(depth - 1)])
    return item


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_private_elements_nested_in_a_safe_private_sequence_are_not_trusted(
    scrubber: Scrubber, depth: int
) -> None:
    ds = planted_dataset()
    group, creator, low = SAFE_SEQ
    philips = ds.private_block(group, creator, create=True)
    philips.add_new(low, "SQ", Sequence([_private_item(depth)]))
    philips.add_new(0x01, "FL", 1.5)  # safe: MR Image Chemical Shift
    out = scrub_bytes(scrubber, to_bytes(ds))
    assert b"Quillfeather" not in out and b"Marchbanks" not in out
    assert b"EVILCORP" not in out
    again = pydicom.dcmread(io.BytesIO(out))
    stack = again.private_block(group, creator)[low]
    assert stack.VR == "SQ" and len(stack.value) == 1  # the safe sequence itself is kept
    assert again.private_block(group, creator)[0x01].value == pytest.approx(1.5)


def test_pixel_data_in_an_item_is_removed(scrubber: Scrubber) -> None:
    """Pixel data belongs at the top of an instance: the pixel stage looks there only, so an
    image (or any bytes) in an item of a kept sequence went out unlooked at. Removed at any
    depth, in every kind (Pixel Data, Float and Double Float Pixel Data, the offset tables);
    the instance's own Pixel Data stays."""
    ds = planted_dataset()
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 8, 8, 7, 1
    ds.PhotometricInterpretation, ds.PixelRepresentation = "MONOCHROME2", 0
    ds.PixelData = bytes(range(256))
    hidden = b"NAME=QUILLFEATHER^IMOGEN MRN=88"
    inner = Dataset()
    inner.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    inner.ReferencedSOPInstanceUID = "1.2.3.4"
    inner.add_new(0x7FE00010, "OB", hidden)
    inner.add_new(0x7FE00001, "OV", b"\x00" * 8)
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.5"
    item.Rows = item.Columns = 4
    item.add_new(0x7FE00008, "OF", hidden[:16])
    item.add_new(0x7FE00009, "OD", hidden[:16])
    item.SourceImageSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item])
    out = scrub_bytes(scrubber, to_bytes(ds))
    assert b"QUILLFEATHER" not in out.upper() and b"NAME=" not in out
    again = pydicom.dcmread(io.BytesIO(out))
    kept = again.ReferencedImageSequence[0]
    assert kept.Rows == 4 and not [e for e in kept.iterall() if e.tag.group == 0x7FE0]
    assert again.PixelData == bytes(range(256))


def test_a_safe_private_sequence_sent_as_un_is_read_not_copied(scrubber: Scrubber) -> None:
    ds = planted_dataset()
    group, creator, low = SAFE_SEQ
    items = encode_items([_private_item(2)], implicit=True)  # PS3.5 6.2.2: UN is implicit LE
    ds.private_block(group, creator, create=True).add_new(low, "UN", items)
    out = scrub_bytes(scrubber, to_bytes(ds))
    assert b"Quillfeather" not in out and b"Marchbanks" not in out


def test_a_safe_private_text_is_searched_for_identifiers(scrubber: Scrubber) -> None:
    ds = planted_dataset()
    ge = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    ge.add_new(0x9E, "LO", "fgre3d Quartermaine 07700 900461")  # Internal Pulse Sequence Name
    ge.add_new(0x23, "UN", b"Quartermaine")  # Table speed (DS), holding no number
    ge.add_new(0x24, "LO", "Quartermaine")  # Mid Scan Time (DS), declared as text
    out = scrub_bytes(scrubber, to_bytes(ds))
    assert b"Quartermaine" not in out and b"900461" not in out
    again = pydicom.dcmread(io.BytesIO(out))
    block = again.private_block(0x0019, "GEMS_ACQU_01")
    assert "fgre3d" in block[0x9E].value  # the rest of the safe value is kept
    assert (0x0019 << 16 | 0x1023) not in again and (0x0019 << 16 | 0x1024) not in again


@pytest.mark.parametrize(
    "forged",
    [
        "1.2.840.10008.../../../../tmp/x",
        "1.2.840.10008.5.1.4.1.1.2." + "9" * 300,
        "1.2.840.10008.999.12345.67",  # DICOM root, not registered
        "1.2.840.10008.5.1.4.1.1.2 Quartermaine",
    ],
)
def test_a_uid_that_merely_starts_with_the_dicom_root_is_remapped(
    scrubber: Scrubber, forged: str
) -> None:
    ds = planted_dataset()
    ds.SOPInstanceUID = forged
    ds.StudyInstanceUID = forged + ".1"
    ref = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    ref.ReferencedSOPInstanceUID = forged
    ref.ReferencedSOPClassUID = forged  # a class UID: kept, when it is a registered one
    out = scrub_bytes(scrubber, to_bytes(ds))
    assert forged.encode() not in out and b"tmp" not in out and b"Quartermaine" not in out
    again = pydicom.dcmread(io.BytesIO(out))
    assert again.SOPInstanceUID.startswith("2.25.") and len(again.SOPInstanceUID) <= 64
    assert again.file_meta.MediaStorageSOPInstanceUID == again.SOPInstanceUID
    ref = again.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPClassUID.startswith("2.25.")
    assert ref.ReferencedSOPInstanceUID == again.SOPInstanceUID  # the same forged value


def test_registered_uids_are_kept(scrubber: Scrubber) -> None:
    ds = planted_dataset()
    out = pydicom.dcmread(io.BytesIO(scrub_bytes(scrubber, to_bytes(ds))))
    assert out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    ref = out.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"


def test_an_unregistered_sop_class_is_quarantined(scrubber: Scrubber) -> None:
    ds = planted_dataset()
    ds.SOPClassUID = "1.2.840.10008.../../x"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    with pytest.raises(InstanceError) as caught:
        scrub_bytes(scrubber, to_bytes(ds))
    assert caught.value.reason == "unknown-sop-class"


def test_retain_uids_keeps_only_well_formed_uids(make_scrubber: Make) -> None:
    ds = planted_dataset()
    ds.SeriesInstanceUID = "1.2.3.../../etc/passwd"
    out = pydicom.dcmread(
        io.BytesIO(scrub_bytes(make_scrubber(options=("retain-uids",)), to_bytes(ds)))
    )
    assert out.SOPInstanceUID == ds.SOPInstanceUID  # well formed: kept, as the option says
    assert out.SeriesInstanceUID.startswith("2.25.")


@pytest.mark.parametrize(
    ("age", "expected"),
    [("059Y", "059Y"), ("089Y", "089Y"), ("090Y", "090Y"), ("097Y", "090Y"), ("999M", "999M")],
)
def test_ages_over_89_are_given_as_90(scrubber: Scrubber, age: str, expected: str) -> None:
    ds = planted_dataset()
    ds.PatientAge = age
    out = pydicom.dcmread(io.BytesIO(scrub_bytes(scrubber, to_bytes(ds))))
    assert out.PatientAge == expected


def test_deep_nesting_is_removed_or_refused_cleanly(scrubber: Scrubber) -> None:
    ds = planted_dataset()
    item = Dataset()
    item.PatientName = SECRET_NAME
    for _ in range(100):
        outer = Dataset()
        outer.ReferencedImageSequence = Sequence([item])
        item = outer
    ds.ReferencedSeriesSequence = Sequence([item])
    try:
        out = scrub_bytes(scrubber, to_bytes(ds))
    except InstanceError as exc:
        assert exc.reason == "too-deep"
    else:
        assert b"Quillfeather" not in out


def test_nesting_beyond_the_limit_is_refused_not_a_recursion_error(scrubber: Scrubber) -> None:
    group, creator, low = SAFE_SEQ
    item = Dataset()
    item.PatientName = SECRET_NAME
    for _ in range(100):  # safe private sequences are walked: every level is visited
        outer = Dataset()
        outer.private_block(group, creator, create=True).add_new(low, "SQ", Sequence([item]))
        item = outer
    ds = planted_dataset()
    ds.private_block(group, creator, create=True).add_new(low, "SQ", Sequence([item]))
    with pytest.raises(InstanceError) as caught:
        scrub_bytes(scrubber, to_bytes(ds))
    assert caught.value.reason == "too-deep"


def test_the_output_never_holds_a_planted_value(scrubber: Scrubber) -> None:
    out = scrub_bytes(scrubber, to_bytes(planted_dataset()))
    assert leaks(out) == []


def _protected_text_keywords() -> list[str]:
    """Every name and free-text attribute of the dictionary the default profile does not keep."""
    from dicomnode.config import Config
    from dicomnode.scrub import Action, build_scrubber
    from tests.conftest import SECRET

    profile = build_scrubber(Config(), secret=SECRET).profile
    out = []
    for tag, rule in profile.public.items():
        if tag >> 16 in (0x0000, 0x0002, 0x0004) or rule.action is Action.KEEP:
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        keyword = pydicom.datadict.keyword_for_tag(tag)
        if vr in ("PN", "LO", "SH", "LT", "ST", "UT", "UC") and keyword:
            out.append(keyword)
    return sorted(out)


PROTECTED = _protected_text_keywords()
LIES = ["DS", "CS", "IS", "AE", "UN", "OB", "UT", "SH", "DA", "UI"]


def test_the_list_of_protected_text_attributes_is_the_whole_dictionary() -> None:
    assert len(PROTECTED) > 200 and "StudyDescription" in PROTECTED


@pytest.mark.parametrize("keyword", PROTECTED)
def test_no_declared_vr_lets_any_name_or_text_attribute_through(
    scrubber: Scrubber, keyword: str
) -> None:
    declared = LIES[PROTECTED.index(keyword) % len(LIES)]
    data = with_declared_vr(planted_dataset(), keyword, declared, f"CT {SECRET_NAME}")
    try:
        out = scrub_bytes(scrubber, data)
    except InstanceError as exc:
        assert exc.reason == "vr-mismatch"
        return
    assert b"Quillfeather" not in out and b"Marchbanks" not in out


@pytest.mark.parametrize(
    ("keyword", "declared"),
    [
        ("Rows", "LO"),  # a binary attribute sent as text
        ("SmallestImagePixelValue", "LO"),  # "US or SS" sent as text
        ("Rows", "ZZ"),  # no VR at all
    ],
)
def test_text_where_the_dictionary_says_binary_is_refused(
    scrubber: Scrubber, keyword: str, declared: str
) -> None:
    ds = planted_dataset()
    ds.SmallestImagePixelValue = 0
    data = _with_element(ds, keyword, declared, SECRET_NAME.encode())
    with pytest.raises(InstanceError) as caught:
        scrub_bytes(scrubber, data)
    assert caught.value.reason == "vr-mismatch"
    assert "Quillfeather" not in str(caught.value)


def test_text_sent_with_a_vr_that_does_not_exist_is_cleaned_as_text(scrubber: Scrubber) -> None:
    data = with_declared_vr(planted_dataset(), "StudyDescription", "ZZ", f"CT {SECRET_NAME}")
    out = scrub_bytes(scrubber, data)
    assert b"Quillfeather" not in out
    assert pydicom.dcmread(io.BytesIO(out))["StudyDescription"].VR == "LO"


def _with_element(ds: Dataset, keyword: str, declared: str, value: bytes) -> bytes:
    """``ds`` as bytes with ``keyword`` replaced by an element declared as ``declared``."""
    tag = keyword_dict[keyword]
    data = to_bytes(ds)
    old = _element(tag, dictionary_VR(tag).split(" ")[0], ds[keyword].value.to_bytes(2, "little"))
    assert data.count(old) == 1
    if len(value) % 2:
        value += b" "
    return data.replace(old, _element(tag, declared, value))


def _nested_bytes(levels: int) -> bytes:
    """A planted instance whose ReferencedSeriesSequence (kept, so walked) nests ``levels``
    deep, written by hand: undefined-length sequences and items, a name at the bottom."""
    seq = struct.pack("<HH", 0x0008, 0x1115) + b"SQ\x00\x00" + b"\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    name = SECRET_NAME.replace(" ", "^").encode()
    body = _element(0x00100010, "PN", name + b" " * (len(name) % 2))
    for _ in range(levels):
        body = seq + item + body + item_end + seq_end
    ds = planted_dataset()
    del ds.ReferencedSeriesSequence
    data = to_bytes(ds)
    # (0008,1115) goes in tag order: before the first element of group 0010.
    position = data.index(struct.pack("<HH", 0x0010, 0x0010))
    return data[:position] + body + data[position:]


@pytest.mark.parametrize("levels", [200, 2000])
def test_deep_nesting_is_refused_by_the_limit_not_by_a_recursion_error(
    scrubber: Scrubber, levels: int, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(InstanceError) as caught:
        scrub_bytes(scrubber, _nested_bytes(levels))
    assert caught.value.reason == "too-deep"
    assert "nested" in str(caught.value) and "deep" in str(caught.value)
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


def test_the_depth_limit_is_configured(make_scrubber: Make) -> None:
    data = _nested_bytes(70)
    out = scrub_bytes(make_scrubber(max_depth=100), data)  # walked without recursion
    assert b"Quillfeather" not in out
    with pytest.raises(InstanceError):
        scrub_bytes(make_scrubber(max_depth=8), _nested_bytes(10))


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("InstanceNumber", b"Quillfeather"),  # IS, kept
        ("PatientSize", b"Marchbanks"),  # DS, kept under patient characteristics
        ("PatientAge", b"Quil"),  # AS
        ("Modality", b"ct quillfeather"),  # CS with lower case
        ("BodyPartExamined", b"QUILLFEATHER!"),  # CS with a character CS does not have
    ],
)
def test_a_kept_value_that_is_not_what_its_vr_says_is_emptied(
    scrubber: Scrubber, keyword: str, value: bytes
) -> None:
    ds = planted_dataset()
    if keyword not in ds:
        setattr(ds, keyword, "1" if keyword != "PatientAge" else "050Y")
    tag = keyword_dict[keyword]
    vr = dictionary_VR(tag)
    data = to_bytes(ds)
    old = _element(tag, vr, _padded(ds[keyword]))
    assert data.count(old) == 1
    out = scrub_bytes(
        scrubber, data.replace(old, _element(tag, vr, value + b" " * (len(value) % 2)))
    )
    assert value.lower() not in out.lower()
    again = pydicom.dcmread(io.BytesIO(out))
    assert keyword in again and str(again[keyword].value) in ("", "None")


def test_a_code_that_is_the_patients_name_is_replaced(scrubber: Scrubber) -> None:
    ds = planted_dataset()
    ds.BodyPartExamined = "QUARTERMAINE"  # valid CS, but the patient's family name
    out = pydicom.dcmread(io.BytesIO(scrub_bytes(scrubber, to_bytes(ds))))
    assert out.BodyPartExamined == "ANONYMIZED"
    assert out.Modality == "CT"  # codes made of words are left alone


def _padded(elem: pydicom.DataElement) -> bytes:
    """The bytes pydicom wrote for a short text element."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, _one(elem), enforce_file_format=False)
    raw = buffer.getvalue()
    return raw[raw.index(struct.pack("<HH", elem.tag.group, elem.tag.element)) + 8 :]


def _one(elem: pydicom.DataElement) -> Dataset:
    ds = Dataset()
    ds.add(elem)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds
