"""Byte-level mutation campaign against the offline cleaner: what a damaged or hostile file
does to it.

Each mutant is one of tests/phi.py's planted instances (PHI everywhere it can hide; explicit
and implicit VR, deflated, big endian, and a JPEG one) with one to five changes of its bytes:
a VR swapped for another, a bit flipped, a byte set, a length nudged, a span deleted or
copied elsewhere, the file cut short, a sequence delimiter inserted, the transfer syntax
swapped. Each is cleaned by ``batch.clean_file`` (the node's stages, default configuration)
in this process, under a time limit, and the outcome is counted:

- refused with a reason (``truncated``, ``unreadable``, ``vr-mismatch``...): fail closed, fine;
- an internal error (an exception the code did not expect): a bug, even though the node
  would quarantine it: the operator gets no reason;
- a hang (over ``--seconds``);
- a leak: a cleaned copy holding one of the planted strings (``tests.phi.leaks``). Triage each:
  a mutation that turns a tag into a kept attribute's (InstitutionName into Manufacturer)
  moves PHI into a value the profile keeps, as a sender could; a length or a structure that
  carries PHI past the cleaning is a bug.

``--vendor`` mutates real scanners' and toolkits' files instead (``VENDOR_FILES``, pydicom's
test data, with the planted identity in their patient and study attributes): private groups,
RT, SR, waveforms and the compressed syntaxes as vendors write them. Its first run (seed 101)
found an RLE frame that made pylibjpeg-rle panic (a ``BaseException``), killing the worker.
``--pixels`` changes only the Pixel Data value's bytes, so that damaged frames reach the
decoders behind a header that reads (seeds 201-203, 6,000 mutants of RLE, JPEG, JPEG-LS and
JPEG 2000: refused or cleaned, no crash, no hang).

Every finding's mutant is written to ``--out`` for a test. Exit status 1 on an internal error
or a hang. The run of 2026-12-05 (seeds 1-7, 3,600 mutants) found a length past the end of
the file on an element that was not the highest tag, a duplicate tag, two pydicom exceptions
read as internal errors, and (0010,0033/0034); see tests/test_declared_lengths.py.

    python tools/mutate_instances.py --seed 1 --count 400 --out /tmp/mutants
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import random
import signal
import struct
import sys
import time
import traceback
import warnings
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from dicomnode.batch import build_stages, clean_file
from dicomnode.config import Config
from tests.conftest import SECRET
from tests.phi import PHI, leaks, planted_dataset, to_bytes

VRS = [
    vr.encode()
    for vr in "AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
    "UC UI UL UN UR US UT UV".split()
]
ODD_VRS = [b"XX", b"\x00\x00", b"U "]
SYNTAXES = [
    b"1.2.840.10008.1.2\x00",
    b"1.2.840.10008.1.2.1",
    b"1.2.840.10008.1.2.2",
    b"1.2.840.10008.1.2.1.99",
    b"1.2.840.10008.1.2.4.50",
    b"1.2.840.10008.1.2.5\x00",
]
DELIMITERS = [
    b"\xfe\xff\x00\xe0\xff\xff\xff\xff",  # an item of undefined length
    b"\xfe\xff\x0d\xe0\x00\x00\x00\x00",  # an item delimiter
    b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",  # a sequence delimiter
]
_DATA_SET = 132  # mutations start after the preamble


def _planted(implicit: bool = False) -> pydicom.Dataset:
    """tests/phi.py's instance with a fixed implementation UID (it draws one): the same
    bytes every run, so that a seed gives the same mutants."""
    ds = planted_dataset(implicit=implicit)
    ds.file_meta.ImplementationClassUID = "2.25.1"
    return ds


def _code(value: str, meaning: str) -> pydicom.Dataset:
    code = pydicom.Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
    return code


def _content(value_type: str, concept: pydicom.Dataset, **values: Any) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [concept]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _without_pixels(ds: pydicom.Dataset) -> pydicom.Dataset:
    for keyword in (
        "Rows Columns SamplesPerPixel PhotometricInterpretation BitsAllocated BitsStored "
        "HighBit PixelRepresentation RescaleIntercept RescaleSlope PixelData ImageType "
        "ImagePositionPatient ImageOrientationPatient PixelSpacing SliceThickness KVP"
    ).split():
        delattr(ds, keyword)
    for tag in [elem.tag for elem in ds if elem.tag.group in (0x5000, 0x6000)]:
        del ds[tag]
    return ds


def _structured_report() -> pydicom.Dataset:
    """A Comprehensive SR whose content tree holds the PHI three levels down: text, a
    person's name, a date, a UID reference, and observers' names and organisation (kept
    or cleaned as the site's options say, never sent as they are)."""
    ds = _without_pixels(_planted())
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("18748-4", "Diagnostic Imaging Report")]
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    observer = pydicom.Dataset()
    observer.VerifyingObserverName = PHI["referring"]
    observer.VerifyingOrganization = PHI["institution"]
    observer.VerificationDateTime = "20210314101500"
    observer.VerifyingObserverIdentificationCodeSequence = []
    ds.VerifyingObserverSequence = [observer]
    inner = _content("CONTAINER", _code("121070", "Findings"), ContinuityOfContent="SEPARATE")
    inner.ContentSequence = [
        _content("TEXT", _code("121071", "Finding"), TextValue=PHI["free_text"]),
        _content("PNAME", _code("121008", "Person Observer Name"), PersonName=PHI["nested_name"]),
        _content("DATE", _code("111536", "Date of exam"), Date="20210314"),
        _content("UIDREF", _code("121232", "Source series"), UID=PHI["uid_root"] + ".7"),
        _content("TEXT", _code("121106", "Comment"), TextValue="seen by " + PHI["operator"]),
    ]
    ds.ContentSequence = [
        _content("TEXT", _code("121060", "History"), TextValue=PHI["free_text"]),
        inner,
    ]
    return ds


def _multiframe() -> pydicom.Dataset:
    """An Enhanced CT of two frames whose functional groups hold frame comments, a frame
    label and a private element with PHI in them, beside the geometry they must keep."""
    ds = _planted()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.NumberOfFrames = 2
    ds.PixelData = bytes(range(64))
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, keyword)
    measures = pydicom.Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], 5
    orientation = pydicom.Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared = pydicom.Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for number in (1, 2):
        content = pydicom.Dataset()
        content.FrameAcquisitionNumber = number
        content.FrameAcquisitionDateTime = "20210314101500"
        content.FrameComments = PHI["free_text"]
        content.FrameLabel = PHI["name_family"]
        position = pydicom.Dataset()
        position.ImagePositionPatient = [0, 0, 5 * number]
        frame = pydicom.Dataset()
        frame.FrameContentSequence = [content]
        frame.PlanePositionSequence = [position]
        block = frame.private_block(0x0029, "ACME PRIVATE 1", create=True)
        block.add_new(0x01, "LO", PHI["private_text"])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    return ds


def _undefined_lengths(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Every sequence and item of undefined length, ended by delimiters (pydicom writes new
    ones with their lengths), as many modalities write them."""
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
    return ds


def bases() -> dict[str, bytes]:
    """The planted instance in every encoding the campaign mutates, and as a structured
    report and a multi-frame image."""

    def encoded(syntax: str) -> bytes:
        ds = _planted()
        ds.file_meta.TransferSyntaxUID = syntax
        buffer = io.BytesIO()
        little = syntax != ExplicitVRBigEndian
        ds.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=little)
        return buffer.getvalue()

    jpeg = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False))
    planted = _planted()
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "InstitutionName",
        "ReferringPhysicianName",
        "OtherPatientIDsSequence",
        "RequestAttributesSequence",
        "ImageComments",
    ):
        setattr(jpeg, keyword, planted.get(keyword))
    buffer = io.BytesIO()
    jpeg.save_as(buffer, enforce_file_format=True)
    return {
        "explicit": to_bytes(_planted()),
        "implicit": to_bytes(_planted(implicit=True)),
        "deflated": encoded(DeflatedExplicitVRLittleEndian),
        "big-endian": encoded(ExplicitVRBigEndian),
        "jpeg": buffer.getvalue(),
        "undefined-lengths": to_bytes(_undefined_lengths(_planted())),
        "sr": to_bytes(_structured_report()),
        "multiframe": to_bytes(_multiframe()),
    }


#: Files of pydicom's test data written by real scanners and toolkits: GE CT and MR with their
#: private groups, in five encodings and three compressions, RT plan, dose and structure set,
#: two structured reports, an ECG waveform, RLE colour of 8 and 16 bits, YBR 4:2:2, a
#: multi-frame liver slice, JPEG-LS and JPEG 2000 (:func:`vendor_bases`, ``--vendor``).
VENDOR_FILES = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "ExplVR_BigEnd.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm", "emri_small_jpeg_2k_lossless.dcm", "rtplan.dcm",
    "rtdose_1frame.dcm", "rtstruct.dcm", "reportsi.dcm", "test-SR.dcm", "waveform_ecg.dcm",
    "SC_rgb_rle.dcm", "SC_rgb_rle_16bit_2frame.dcm", "SC_ybr_full_422_uncompressed.dcm",
    "liver_1frame.dcm",
)  # fmt: skip
#: What each vendor file gets of the planted instance (their own values are test data).
_IDENTITY = (
    "PatientName", "PatientID", "PatientBirthDate", "InstitutionName",
    "ReferringPhysicianName", "OtherPatientIDsSequence", "RequestAttributesSequence",
    "ImageComments", "AccessionNumber", "StationName", "OperatorsName",
)  # fmt: skip


def vendor_bases() -> dict[str, bytes]:
    """The files of ``VENDOR_FILES`` with the planted identity (patient, institution,
    physicians, operators, accession, comments) in place of their own, written in their own
    transfer syntax; a file without a file meta (an RT structure set) gets one."""
    planted = _planted()
    out = {}
    for name in VENDOR_FILES:
        path = get_testdata_file(name, download=False)
        if path is None:
            raise SystemExit(f"pydicom's test file {name} is missing: pip install pydicom")
        ds = pydicom.dcmread(path, force=True)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.ImplementationClassUID = "2.25.1"
        for keyword in _IDENTITY:
            setattr(ds, keyword, planted.get(keyword))
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out[f"vendor-{name.removesuffix('.dcm')}"] = buffer.getvalue()
    return out


def mutate_pixels(data: bytes, rng: random.Random) -> bytes:
    """One to five changes inside the Pixel Data value only (``--pixels``): a bit flipped, a
    byte set, a span deleted, copied or repeated; compressed frames reach the decoders
    (openjpeg, libjpeg, CharLS, the RLE decoder) damaged, with a header that reads."""
    out = bytearray(data)
    tag = out.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010), little endian
    start = tag + 12 if tag >= _DATA_SET else _DATA_SET
    for _ in range(rng.choice([1, 1, 2, 3, 5])):
        if len(out) <= start + 1:
            break
        at = rng.randrange(start, len(out))
        kind = rng.randrange(5)
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at] = rng.choice([0, 0xFF, 0xFE, rng.randrange(256)])
        elif kind == 2:
            del out[at : at + rng.randrange(1, 32)]
        elif kind == 3:
            source = rng.randrange(start, len(out))
            out[at:at] = out[source : source + rng.randrange(1, 64)]
        else:
            out[at : at + 8] = bytes(out[at : at + 8]) * 2
    return bytes(out)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to five random changes of ``data``'s bytes after the preamble."""
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
        if len(out) <= _DATA_SET + 1:
            break  # cut short already: nothing left to change
        kind = rng.randrange(12)
        at = rng.randrange(_DATA_SET, len(out))
        vr_spots = [i for i in range(_DATA_SET, len(out) - 8) if bytes(out[i : i + 2]) in VRS]
        if kind == 0 and vr_spots:  # a declared VR swapped
            spot = rng.choice(vr_spots)
            out[spot : spot + 2] = rng.choice(VRS + ODD_VRS)
        elif kind == 1:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 2:
            out[at] = rng.choice([0, 0xFF, 0xFE, 0x20, rng.randrange(256)])
        elif kind == 3 and vr_spots:  # a 2-byte length nudged
            spot = rng.choice(vr_spots) + 2
            value = rng.choice([0, 1, 2, 3, 0xFFFF, 0xFFFE, rng.randrange(65536)])
            out[spot : spot + 2] = value.to_bytes(2, "little")
        elif kind == 4:
            del out[at : at + rng.randrange(1, 16)]
        elif kind == 5:  # a span copied elsewhere
            start = rng.randrange(_DATA_SET, len(out))
            out[at:at] = out[start : start + rng.randrange(4, 64)]
        elif kind == 6:
            del out[at:]
        elif kind == 7:
            out[at:at] = rng.choice(DELIMITERS)
        elif kind == 8:  # the transfer syntax swapped for one of the same length
            for syntax in SYNTAXES:
                found = out.find(syntax, 0, 400)
                if found >= 0:
                    other = rng.choice(SYNTAXES)
                    if len(other) == len(syntax):
                        out[found : found + len(syntax)] = other
                    break
        elif kind >= 9:  # aimed at the sequences: an item's or a sequence's length, or inside
            little = out.find(b"1.2.840.10008.1.2.2", 0, 400) < 0
            marks = [b"\xfe\xff\x00\xe0" if little else b"\xff\xfe\xe0\x00", b"SQ\x00\x00"]
            mark = marks[kind == 10]
            spots = [i for i in range(_DATA_SET, len(out) - 8) if out.startswith(mark, i)]
            if not spots:
                continue
            spot = rng.choice(spots) + 4
            if kind == 11:  # a byte inside the item, near its start
                inside = min(len(out) - 1, spot + 4 + rng.randrange(48))
                out[inside] = rng.choice([0, 0xFF, rng.randrange(256)]) ^ out[inside]
                continue
            old = int.from_bytes(out[spot : spot + 4], "little" if little else "big")
            value = rng.choice(
                [0, 0xFFFFFFFF, old + 2, old - 2, old + 8, old - 8, old * 2, rng.randrange(4096)]
            )
            out[spot : spot + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little" if little else "big")
    return bytes(out)


class _Hang(BaseException):
    """The time limit (SIGALRM): not an Exception, so that the code's catch-alls (the pixel
    stage turns any Exception into a refusal) cannot report a hang as a refused mutant."""


def _alarm(*_args: Any) -> None:
    raise _Hang


# What a profile option keeps on purpose, so not a leak under it.
KEPT_ON_PURPOSE = {
    "retain-uids": {"uid_root"},
    "retain-device-identity": {"serial", "station"},
    "retain-institution-identity": {"institution"},
}


def readable(data: bytes) -> bytes:
    """A Part 10 file's bytes with a deflated data set inflated after them: the planted
    strings are looked for in what a reader gets, not in the compressed stream (a deflated
    copy hid every leak from the campaign before)."""
    if b"1.2.840.10008.1.2.1.99" not in data[:512]:
        return data
    meta_end = _DATA_SET + 12 + struct.unpack_from("<I", data, _DATA_SET + 8)[0]
    try:
        return data + zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[meta_end:])
    except zlib.error:
        return data  # not deflate: the bytes as they are


def config(options: list[str] | None = None) -> Config:
    """The default configuration, or it with the profile options ``options`` instead."""
    if options is None:
        return Config()
    return Config.model_validate({"scrub": {"options": options}})


def campaign(
    seed: int,
    count: int,
    out: Path,
    seconds: int = 20,
    which: list[str] | None = None,
    options: list[str] | None = None,
    vendor: bool = False,
    pixels: bool = False,
) -> dict[str, Any]:
    """Clean ``count`` mutants (of :func:`bases`, or of :func:`vendor_bases`); returns the
    counts and the findings (also written to ``out``)."""
    warnings.simplefilter("ignore")  # pydicom warns of every oddity a mutant has
    rng = random.Random(seed)
    stages = build_stages(config(options), SECRET)
    exempt = set().union(*(KEPT_ON_PURPOSE.get(o, set()) for o in options or ()))
    every = vendor_bases() if vendor else bases()
    originals = {k: v for k, v in every.items() if which is None or k in which}
    names = sorted(originals)
    out.mkdir(parents=True, exist_ok=True)
    source, cleaned = out / "mutant.dcm", out / "cleaned"
    counts: collections.Counter[str] = collections.Counter()
    findings: list[dict[str, Any]] = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for index in range(count):
            base = rng.choice(names)
            data = (mutate_pixels if pixels else mutate)(originals[base], rng)
            source.write_bytes(data)
            finding: dict[str, Any] | None = None
            started = time.perf_counter()
            signal.alarm(seconds)
            try:
                outcome = clean_file(stages, source, cleaned)
            except _Hang:
                finding = {"kind": "hang"}
            except Exception as exc:
                detail = traceback.format_exc(limit=-3)
                finding = {"kind": "internal", "error": f"{type(exc).__name__}: {exc}"[:300]}
                finding["where"] = detail[-800:]
            finally:
                signal.alarm(0)
            if finding is None and outcome.output is not None:
                counts["cleaned"] += 1
                leaked = sorted(set(leaks(readable(outcome.output.read_bytes()))) - exempt)
                outcome.output.unlink()
                if leaked:
                    finding = {"kind": "leak", "strings": leaked}
            elif finding is None and "could not be applied (" in (outcome.message or ""):
                # the scrubber's wrapper around an exception it did not expect
                finding = {"kind": "internal", "error": outcome.message}
            elif finding is None:
                counts[f"refused: {outcome.reason}"] += 1
            if finding is not None:
                counts[finding["kind"]] += 1
                name = f"{finding['kind']}-{seed}-{index}-{base}.dcm"
                (out / name).write_bytes(data)
                findings.append({**finding, "mutant": name})
            if time.perf_counter() - started > seconds / 2:
                counts["slow"] += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
        source.unlink(missing_ok=True)
    return {"seed": seed, "counts": dict(counts), "findings": findings}


#: Projects for the node campaign: matched on the header as received, so the listener reads
#: each mutant's header (at most 1 MiB of it) in the C-STORE handler before acknowledging.
NODE_PROJECTS: list[dict[str, Any]] = [
    {"name": "ct", "match": {"when": [{"field": "Modality", "op": "equals", "value": "CT"}]}},
    {
        "name": "described",
        "match": {"when": [{"field": "SeriesDescription", "op": "matches", "value": "(?i)a|e"}]},
    },
    {"name": "rest"},
]
_SYNTAX_UIDS = [s.rstrip(b"\x00").decode() for s in SYNTAXES] + [
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
]


def _outside_the_image(data: bytes) -> bytes:
    """A clean copy with its image's pixel values zeroed: a mutation that copies header bytes
    into the pixels (seed 101, mutant 135: a segmentation's bits spelling a name) moves PHI
    into pixel values, which only the pixel stage's look at the image judges. Native Pixel
    Data bytes after the image are kept: they are no pixel (``codec._trim``)."""
    from dicomnode.pixels import codec

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    for tag in (0x7FE00008, 0x7FE00009):
        if tag in ds:
            del ds[tag]
    if "PixelData" in ds:
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax.is_encapsulated:
            del ds.PixelData
        else:
            needed = codec._native_bytes(ds, codec.geometry(ds))
            ds.PixelData = bytes(needed) + bytes(ds.PixelData)[needed:]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _settled(audit: Path, acknowledged: int) -> bool:
    """Every acknowledged instance has an outcome in the audit trail, every clean one its
    delivery."""
    import json

    if not audit.exists():
        return acknowledged == 0
    events: collections.Counter[str] = collections.Counter()
    for line in audit.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            events[json.loads(line)["event"]] += 1
    finished = events["cleaned"] + events["quarantined"] + events["dropped"]
    return (
        finished == acknowledged
        and events["delivered"] + events["dead-lettered"] >= events["cleaned"]
    )


def node_campaign(seed: int, count: int, out: Path, vendor: bool = False) -> dict[str, Any]:
    """Send ``count`` mutants to a node over C-STORE (the listener's path: the received
    file, its file meta, the SOP class check, the header read to match projects) and clean
    them there; one association each. Findings: the node down or deaf to C-ECHO, a traceback
    in its log, an acknowledged instance with no outcome in the audit trail, an outcome of
    ``internal-error`` or a scrubber error without a reason of its own, a planted string in a
    clean copy. Mutants that pynetdicom's SCU cannot send (it reads the file to address it)
    are counted, not sent."""
    import json
    import logging

    from pynetdicom import AE

    from tests.peers import NodeProcess, echo, wait_for

    warnings.simplefilter("ignore")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    rng = random.Random(seed)
    originals = vendor_bases() if vendor else bases()
    names = sorted(originals)
    out.mkdir(parents=True, exist_ok=True)
    destinations = [{"name": "folder", "type": "folder", "path": str(out / "clean")}]
    projects = [{**p, "destinations": ["folder"]} for p in NODE_PROJECTS]
    node = NodeProcess(
        out / "node", destinations, projects=projects, pipeline={"workers": 1}
    ).start()
    counts: collections.Counter[str] = collections.Counter()
    findings: list[dict[str, Any]] = []
    seen: set[Path] = set()  # quarantine sidecars read
    ae = AE(ae_title="MUTANT")
    source = out / "mutant.dcm"
    try:
        for index in range(count):
            base = rng.choice(names)
            data = mutate(originals[base], rng)
            source.write_bytes(data)
            name = f"node-{seed}-{index}-{base}.dcm"
            try:
                meta = pydicom.dcmread(source, stop_before_pixels=True).file_meta
                sop_class = str(meta.MediaStorageSOPClassUID)
            except Exception:
                counts["not sent (the SCU cannot read it)"] += 1
                continue
            ae.requested_contexts = []
            try:
                ae.add_requested_context(sop_class, _SYNTAX_UIDS)
                assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
            except (ValueError, TypeError):
                assoc = None
            if assoc is None or not assoc.is_established:
                if echo(node.port, "MUTANT", "DICOMNODE"):  # its SOP class cannot be proposed
                    counts["not sent (the SCU cannot propose its SOP class)"] += 1
                    continue
                findings.append({"kind": "node", "error": "association refused", "mutant": name})
                (out / name).write_bytes(data)
                break
            try:
                status = assoc.send_c_store(source)
            except Exception:
                counts["not sent (the SCU cannot read it)"] += 1
                assoc.abort()
                continue
            assoc.release()
            code = getattr(status, "Status", None)
            if code == 0:
                counts["acknowledged"] += 1
            else:
                counts[f"refused by the listener: {code}"] += 1
            # Done when the audit trail has every acknowledged instance's outcome and every
            # clean one's delivery (the spool alone is empty a moment before the folder
            # destination has the file; on a busy machine the next mutant overwrote it).
            wait_for(
                lambda: _settled(node.audit, counts["acknowledged"]),
                60,
                "the node to clean and deliver the mutant",
                0.02,
            )
            for clean in (out / "clean").rglob("*.dcm") if (out / "clean").exists() else ():
                leaked = sorted(set(leaks(readable(_outside_the_image(clean.read_bytes())))))
                clean.unlink()
                counts["clean copies read"] += 1
                if leaked:
                    findings.append({"kind": "leak", "strings": leaked, "mutant": name})
                    (out / name).write_bytes(data)
            for sidecar in (node.spool / "quarantine").rglob("*.json"):
                if sidecar in seen:
                    continue
                seen.add(sidecar)
                held = json.loads(sidecar.read_text())
                message = str(held.get("message"))
                if held.get("reason") == "internal-error" or "could not be applied (" in message:
                    findings.append({"kind": "internal", "error": message, "mutant": name})
                    (out / name).write_bytes(data)
            if (
                node.proc is None
                or node.proc.poll() is not None
                or not echo(node.port, "MUTANT", "DICOMNODE")
            ):
                findings.append({"kind": "node", "error": "down or deaf", "mutant": name})
                (out / name).write_bytes(data)
                break
        log = node.log.read_text(errors="replace")
        if "Traceback" in log:
            findings.append({"kind": "internal", "error": "a traceback in the node's log"})
        events = [json.loads(line) for line in node.audit.read_text().splitlines()]
        outcomes = collections.Counter(e["event"] for e in events)
        counts.update({f"audit: {k}": v for k, v in outcomes.items()})
        finished = outcomes["cleaned"] + outcomes["quarantined"] + outcomes["dropped"]
        if finished != counts["acknowledged"]:
            lost = f"{counts['acknowledged']} acknowledged, {finished} with an outcome"
            findings.append({"kind": "lost", "error": lost})
    finally:
        node.stop()
        source.unlink(missing_ok=True)
    return {"seed": seed, "counts": dict(counts), "findings": findings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("mutants"))
    parser.add_argument("--seconds", type=int, default=20, help="a mutant's time limit")
    parser.add_argument("--base", action="append", help="only these bases (repeatable)")
    parser.add_argument(
        "--options",
        help="the profile options, comma-separated, instead of the default configuration's "
        "(e.g. retain-uids,retain-long-full-dates,clean-structured-content)",
    )
    parser.add_argument(
        "--vendor", action="store_true", help="mutate real scanners' files (VENDOR_FILES)"
    )
    parser.add_argument(
        "--pixels", action="store_true", help="change only the Pixel Data value's bytes"
    )
    parser.add_argument(
        "--node", action="store_true", help="send the mutants to a node over C-STORE instead"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    options = args.options.split(",") if args.options is not None else None
    if args.node:
        result = node_campaign(args.seed, args.count, args.out, args.vendor)
    else:
        result = campaign(
            args.seed,
            args.count,
            args.out,
            args.seconds,
            args.base,
            options,
            args.vendor,
            args.pixels,
        )
    if args.json:
        import json

        print(json.dumps(result))
    else:
        print(f"seed {result['seed']}: {result['counts']}")
        for finding in result["findings"]:
            print(finding)
    bad = [f for f in result["findings"] if f["kind"] != "leak"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
