"""Datasets with PHI planted everywhere it can hide, for the leak tests."""

from __future__ import annotations

import io

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# Every string here is identifying and must be absent from the output bytes.
PHI = {
    "name": "Zebulon^Quartermaine",
    "name_family": "Quartermaine",
    "name_given": "Zebulon",
    "pid": "MRN8837461",
    "other_pid": "XK99120044",
    "accession": "ACC77219935",
    "birth": "19610723",
    "address": "17 Larkspur Crescent Wolverhampton",
    "phone": "+44 7700 900461",
    "referring": "Dr^Philippa^Underhill",
    "referring_family": "Underhill",
    "institution": "St Swithin Memorial Infirmary",
    "station": "CTSWITHIN04",
    "operator": "Bartholomew^Fennimore",
    "private_text": "Quartermaine Zebulon scanned by Fennimore",
    "nested_name": "Henrietta^Vandersloot",
    "nested_family": "Vandersloot",
    "free_text": "Patient Zebulon Quartermaine seen 2021-03-14 MRN8837461",
    "overlay_comment": "Overlay drawn by Fennimore for Quartermaine",
    "serial": "SN-4471-AXW",
    "study_id": "STU448812",
    "source_ae": "SWITHIN_CT4",
    "uid_root": "1.2.826.0.1.3680043.99.12345",
}


def planted_dataset(*, implicit: bool = False) -> Dataset:
    """A CT instance with PHI in the header, sequences at depth 3, private tags, free text,
    an overlay and the file meta."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = PHI["uid_root"] + ".1.1.1"
    ds.StudyInstanceUID = PHI["uid_root"] + ".1"
    ds.SeriesInstanceUID = PHI["uid_root"] + ".1.1"
    ds.FrameOfReferenceUID = PHI["uid_root"] + ".9"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.StudyDate = "20210314"
    ds.SeriesDate = "20210314"
    ds.AcquisitionDate = "20210314"
    ds.ContentDate = "20210314"
    ds.StudyTime = "101500"
    ds.ContentTime = "101500"
    ds.AccessionNumber = PHI["accession"]
    ds.StudyID = PHI["study_id"]
    ds.PatientName = PHI["name"]
    ds.PatientID = PHI["pid"]
    ds.OtherPatientIDs = PHI["other_pid"]
    ds.PatientBirthDate = PHI["birth"]
    ds.PatientSex = "M"
    ds.PatientAge = "059Y"
    ds.PatientAddress = PHI["address"]
    ds.PatientTelephoneNumbers = PHI["phone"]
    ds.ReferringPhysicianName = PHI["referring"]
    ds.InstitutionName = PHI["institution"]
    ds.StationName = PHI["station"]
    ds.OperatorsName = PHI["operator"]
    ds.DeviceSerialNumber = PHI["serial"]
    ds.StudyDescription = "CT CHEST " + PHI["name_family"]
    ds.SeriesDescription = "AX 5mm " + PHI["name_given"]
    ds.ImageComments = PHI["free_text"]
    ds.AdditionalPatientHistory = PHI["free_text"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 5
    ds.KVP = 120
    ds.PositionReferenceIndicator = ""
    ds.Laterality = ""
    ds.PatientPosition = "HFS"
    # Depth 3: RequestAttributes > ReferencedStudy > ReferencedSOP with a person and UIDs.
    sop = Dataset()
    sop.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    sop.ReferencedSOPInstanceUID = PHI["uid_root"] + ".2.2.2"
    sop.PersonName = PHI["nested_name"]
    sop.TextValue = "seen by " + PHI["nested_family"]
    inner = Dataset()
    inner.ReferencedSOPSequence = Sequence([sop])
    inner.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    inner.ReferencedSOPInstanceUID = PHI["uid_root"] + ".3"
    req = Dataset()
    req.RequestedProcedureID = PHI["accession"]
    req.ScheduledProcedureStepID = PHI["study_id"]
    req.ReferencedStudySequence = Sequence([inner])
    ds.RequestAttributesSequence = Sequence([req])
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    ref.ReferencedSOPInstanceUID = PHI["uid_root"] + ".2.2.2"
    ds.ReferencedImageSequence = Sequence([ref])
    # Depth 3 through sequences the profile keeps: UIDs must be remapped at every depth.
    source = Dataset()
    source.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    source.ReferencedSOPInstanceUID = PHI["uid_root"] + ".2.2.2"
    instance = Dataset()
    instance.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    instance.ReferencedSOPInstanceUID = PHI["uid_root"] + ".2.2.3"
    instance.SourceImageSequence = Sequence([source])
    series = Dataset()
    series.SeriesInstanceUID = PHI["uid_root"] + ".2.2"
    series.ReferencedInstanceSequence = Sequence([instance])
    ds.ReferencedSeriesSequence = Sequence([series])
    other = Dataset()
    other.PatientID = PHI["other_pid"]
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    # Private tags, one of them a sequence.
    block = ds.private_block(0x0029, "ACME PRIVATE 1", create=True)
    block.add_new(0x01, "LO", PHI["private_text"])
    block.add_new(0x02, "UN", PHI["name"].encode())
    priv_item = Dataset()
    priv_item.PatientName = PHI["name"]
    block.add_new(0x03, "SQ", Sequence([priv_item]))
    # An overlay with a comment.
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", b"\x00\xff")
    ds.add_new(0x60004000, "LT", PHI["overlay_comment"])
    # A curve and an attribute in neither the table nor the dictionary.
    ds.add_new(0x50000005, "US", 2)
    ds.add_new(0x00431990, "LO", "private-ish")  # odd group: private, no creator
    ds.Rows = 4
    ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = bytes(range(32))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = "1.2.840.10008.1.2" if implicit else ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid()
    meta.SourceApplicationEntityTitle = PHI["source_ae"]
    ds.file_meta = meta
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """Write a built dataset as a Part 10 file (the way a modality would send it)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def leaks(data: bytes, strings: dict[str, str] | None = None) -> list[str]:
    """The planted strings (or their parts) found in ``data``, in any common encoding."""
    found = []
    for key, value in (strings or PHI).items():
        for variant in {value, value.replace("^", " "), value.upper()}:
            for encoded in (variant.encode("latin-1"), variant.encode("utf-16-le")):
                if encoded in data:
                    found.append(key)
    return sorted(set(found))
