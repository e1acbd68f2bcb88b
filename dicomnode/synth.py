"""A synthetic evaluation set: realistic instances with fake PHI in headers and in pixels.

``dicomnode synth OUTDIR`` writes ultrasound (grey and colour, single and multi-frame, raw and
JPEG/RLE-compressed), secondary captures (report screens), angiography (8 and 16 bit) and
CT slices (16 bit, with anatomy that looks like CT: ``synth_anatomy``; text-free and
screen-saved pages), with Faker identities in the
header and burned into the pixels in several fonts, sizes, colours and contrasts (white on
black, grey over tissue, faint lines, inverted boxes).

Patients have several instances (in turn 4, 1, 3, 2 and 5), those with 3 or more in two
studies, and a study one series per modality, so that UIDs, references and date/time intervals
can be checked across instances, series and studies. Every instance carries dates and times
(some with fractions, AcquisitionDateTime with a UTC offset on some, some studies crossing
midnight), telephone numbers in several formats, e-mail addresses, addresses, IDs, and free
text quoting them (ImageComments, descriptions, the request, patient history, a nested TEXT
content item).

``truth.json`` lists, per instance, every planted header value with its kind, the original
UIDs and instants, and every string burned into the pixels with its box per frame, for
``dicomnode evaluate``. The same seed writes the same set.
"""

from __future__ import annotations

import io
import json
import random
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

__all__ = ["PLANTED_KINDS", "make_set"]

FONT_DIRS = [Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype")]
US = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTI = "1.2.840.10008.5.1.4.1.1.3.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
XA = "1.2.840.10008.5.1.4.1.1.12.1"
CT = "1.2.840.10008.5.1.4.1.1.2"

#: The kinds of planted header values in truth.json (``header_planted``).
PLANTED_KINDS = ("name", "id", "date", "time", "phone", "email", "place")
_KINDS = ["us", "us-cine", "us-colour", "sc", "sc-colour", "xa", "xa-cine", "ct", "ct-text"]
_MODALITY = {"us": "US", "sc": "OT", "xa": "XA", "ct": "CT"}  # by the kind's first letters
_BODY = {"US": "ABDOMEN", "OT": "REPORT", "XA": "CORONARY", "CT": "CHEST"}
_PATIENT_SIZES = (4, 1, 3, 2, 5)  # instances per patient, in turn
_PHONE_FORMATS = ("(%##) %##-####", "+1 %## %## ####", "%##.%##.####", "+44 7700 9#####")
_DATE_FORMS = ("%d-%b-%y", "%B %d, %Y", "%Y/%m/%d %H:%M", "%d.%m.%Y")  # C locale month names
_REASONS = (
    "chest pain",
    "abdominal pain",
    "shortness of breath",
    "follow-up of a nodule",
    "fall at home",
    "suspected stone",
)
_FIRST_DAY, _LAST_DAY = date(2012, 1, 1), date(2024, 6, 30)


def _fonts() -> list[Path]:
    found: list[Path] = []
    for folder in FONT_DIRS:
        if folder.is_dir():
            found += sorted(
                p for p in folder.rglob("*.ttf") if "Bold" not in p.name or len(found) < 3
            )
    return found[:12]


@dataclass
class _Frame:
    image: Any  # PIL image
    boxes: list[dict[str, Any]] = field(default_factory=list)


class _Painter:
    def __init__(self, rng: random.Random, fonts: list[Path]) -> None:
        from PIL import ImageFont

        self.rng = rng
        self.fonts = fonts
        self.ImageFont = ImageFont

    def font(self, size: int) -> Any:
        if self.fonts:
            return self.ImageFont.truetype(str(self.rng.choice(self.fonts)), size)
        return self.ImageFont.load_default(size=size)

    def text(
        self,
        frame: _Frame,
        xy: tuple[int, int],
        text: str,
        *,
        size: int,
        fill: Any,
        phi: bool,
        box_fill: Any = None,
    ) -> None:
        from PIL import ImageDraw

        draw = ImageDraw.Draw(frame.image)
        font = self.font(size)
        left, top, right, bottom = draw.textbbox(xy, text, font=font)
        if box_fill is not None:  # inverted text: dark letters on a light box
            draw.rectangle((left - 3, top - 3, right + 3, bottom + 3), fill=box_fill)
        draw.text(xy, text, font=font, fill=fill)
        frame.boxes.append({"box": [left, top, right, bottom], "text": text, "phi": phi})


def _email(given: str, family: str, domain: str) -> str:
    return re.sub(r"[^a-z.]", "", f"{given}.{family}".lower()) + "@" + domain


def _identity(fake: Any, rng: random.Random) -> dict[str, str]:
    family, given = fake.last_name(), fake.first_name()
    first_study = fake.date_between(_FIRST_DAY, _LAST_DAY)
    birth = first_study - timedelta(days=rng.randrange(18 * 365, 95 * 365))
    doctor_family, doctor_given = fake.last_name(), fake.first_name()
    city = fake.city()
    patient_phone, doctor_phone = rng.sample(_PHONE_FORMATS, 2)
    return {
        "family": family,
        "given": given,
        "name": f"{family}^{given}",
        "pid": f"{rng.choice('ABCDEFGHJK')}{rng.randrange(10**6, 10**8)}",
        "birth": birth.strftime("%Y%m%d"),
        "birth_text": birth.strftime("%d/%m/%Y"),
        "first_study": first_study.strftime("%Y%m%d"),
        "institution": f"{city} {rng.choice(['General Hospital', 'Medical Center', 'Clinic'])}",
        "city": city,
        "address": f"{fake.street_address()}, {city}",
        "patient_phone": fake.numerify(patient_phone),
        "email": _email(given, family, fake.free_email_domain()),
        "physician": f"{doctor_family}^{doctor_given}",
        "physician_family": doctor_family,
        "physician_given": doctor_given,
        "physician_id": f"P{rng.randrange(10**4, 10**6)}",
        "physician_address": f"{fake.street_address()}, {fake.city()}",
        "physician_phone": fake.numerify(doctor_phone),
        "physician_email": _email(doctor_given, doctor_family, fake.domain_name()),
        "phone": fake.numerify("0### ### ####"),  # burned into report screens
    }


def _uid(seed: int, *label: object) -> str:
    """A UID that depends only on the seed and on what it names: the same set every run."""
    return str(generate_uid(entropy_srcs=[f"dicomnode-synth/{seed}", *map(str, label)]))


def _plan(count: int) -> list[tuple[int, int, int]]:
    """(patient, study, series) of each instance, numbered within the set: patients of
    ``_PATIENT_SIZES`` instances in turn, two studies for those of 3 or more, a new series when
    the study or the modality changes."""
    plan: list[tuple[int, int, int]] = []
    patient = 0
    while len(plan) < count:
        size = min(_PATIENT_SIZES[patient % len(_PATIENT_SIZES)], count - len(plan))
        split = size // 2 if size >= 3 else size
        series, previous = -1, ""
        for i in range(size):
            modality = _MODALITY[_KINDS[len(plan) % len(_KINDS)][:2]]
            if i == split or modality != previous:
                series += 1
            previous = modality
            plan.append((patient, int(i >= split), series))
        patient += 1
    return plan


@dataclass
class _Study:
    uid: str
    start: datetime
    accession: str
    procedure_id: str
    step_id: str
    reason: str
    forms: list[str]  # the study's date and time written in _DATE_FORMS, in a random order
    series: int = 0  # series so far


@dataclass
class _Series:
    uid: str
    number: int
    start: datetime
    frame_of_reference: str
    instances: list[tuple[str, str]] = field(default_factory=list)  # (class, instance) UIDs


def _new_study(
    seed: int, who: dict[str, str], rng: random.Random, key: tuple[int, int], ordinal: int
) -> _Study:
    day = datetime.strptime(who["first_study"], "%Y%m%d")
    if key[1]:
        day += timedelta(days=rng.randrange(20, 400))
    if ordinal % 3 == 1:  # the acquisitions of one study in three cross midnight
        start = day + timedelta(hours=23, minutes=50, seconds=rng.randrange(240))
    else:
        start = day + timedelta(hours=7, seconds=rng.randrange(11 * 3600))
    if ordinal % 2:
        start += timedelta(microseconds=rng.randrange(1, 10**6))
    forms = [start.strftime(f) for f in _DATE_FORMS]
    forms[0] = forms[0].upper()  # 24-MAY-02
    rng.shuffle(forms)
    return _Study(
        uid=_uid(seed, "study", *key),
        start=start,
        accession=str(rng.randrange(10**7, 10**9)),
        procedure_id=f"RP{rng.randrange(10**5, 10**7)}",
        step_id=f"SPS{rng.randrange(10**5, 10**7)}",
        reason=rng.choice(_REASONS),
        forms=forms,
    )


def _tm(moment: datetime, fraction: bool) -> str:
    return moment.strftime("%H%M%S.%f" if fraction else "%H%M%S")


def _header(
    ds: Dataset,
    who: dict[str, str],
    sop_class: str,
    modality: str,
    *,
    study: _Study,
    series: _Series,
    sop_instance: str,
    rng: random.Random,
) -> list[dict[str, str]]:
    """Identity, UIDs, references, dates and times; returns the instants (keyword, value)."""
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.Modality = modality
    ds.PatientName = who["name"]
    ds.PatientID = who["pid"]
    ds.PatientBirthDate = who["birth"]
    ds.PatientSex = "O"
    ds.AccessionNumber = study.accession
    ds.InstitutionName = who["institution"]
    ds.ReferringPhysicianName = who["physician"]
    ds.StudyID = "1"
    ds.SeriesNumber = series.number
    ds.InstanceNumber = len(series.instances) + 1
    ds.Manufacturer = "SYNTH"
    ds.ConversionType = "WSD"
    ds.Laterality = ""
    if series.instances:  # later instances refer to the first of their series
        first = Dataset()
        first.ReferencedSOPClassUID, first.ReferencedSOPInstanceUID = series.instances[0]
        ds.ReferencedImageSequence = [first]
    # Times: the series a few minutes after the study, each acquisition a few minutes later
    # (past midnight in a study started at 23:50), content seconds after it, the instance
    # created minutes after that.
    acquisition = series.start + timedelta(
        minutes=10 + 2 * len(series.instances),
        seconds=rng.randrange(50),
        microseconds=rng.randrange(10**6),
    )
    content = acquisition + timedelta(
        seconds=rng.randrange(1, 20), microseconds=rng.randrange(10**6)
    )
    created = content + timedelta(seconds=rng.randrange(30, 300))
    offset = "+0100" if rng.random() < 0.4 else ""
    values = {
        "StudyDate": study.start.strftime("%Y%m%d"),
        "StudyTime": _tm(study.start, study.start.microsecond > 0),
        "SeriesDate": series.start.strftime("%Y%m%d"),
        "SeriesTime": _tm(series.start, False),
        "AcquisitionDate": acquisition.strftime("%Y%m%d"),
        "AcquisitionTime": _tm(acquisition, rng.random() < 0.5),
        "ContentDate": content.strftime("%Y%m%d"),
        "ContentTime": _tm(content, rng.random() < 0.5),
        "InstanceCreationDate": created.strftime("%Y%m%d"),
        "InstanceCreationTime": _tm(created, False),
        "AcquisitionDateTime": acquisition.strftime("%Y%m%d%H%M%S.%f") + offset,
    }
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return [{"path": k, "value": v} for k, v in values.items()]


def _free_text(
    ds: Dataset, who: dict[str, str], study: _Study, modality: str, nested: bool
) -> list[dict[str, str]]:
    """Contact details and free text that quote identifiers; returns what they plant, typed."""
    doctor = who["physician_family"]
    phone, email = who["physician_phone"], who["physician_email"]
    seen = study.start.strftime("%H:%M:%S")
    forms = study.forms
    ds.PatientAddress = who["address"]
    ds.PatientTelephoneNumbers = who["patient_phone"]
    ds.PatientTelecomInformation = who["email"]
    ds.ImageComments = (
        f"Reason: {study.reason}. Call Dr {doctor} on {phone}. MRN {who['pid']}, "
        f"accession {study.accession}; seen {forms[0]} at {seen}."
    )
    ds.AdditionalPatientHistory = (
        f"Referred by Dr {who['physician_given']} {doctor} ({email}) on {forms[1]}. "
        f"Patient contact {who['patient_phone']}, {who['email']}."
    )
    ds.StudyDescription = f"{study.reason} (acc {study.accession})"
    ds.SeriesDescription = f"{_BODY[modality]} {forms[2]}"
    request = Dataset()
    request.RequestedProcedureID = study.procedure_id
    request.ScheduledProcedureStepID = study.step_id
    request.AccessionNumber = study.accession
    request.StudyInstanceUID = study.uid
    request.ReasonForTheRequestedProcedure = f"{study.reason}; call {phone}"
    request.RequestedProcedureDescription = f"{_BODY[modality]} for {who['family']} {forms[3]}"
    ds.RequestAttributesSequence = [request]
    code = Dataset()
    code.CodeValue = who["physician_id"]
    code.CodingSchemeDesignator = "L"
    code.CodeMeaning = who["physician"].replace("^", " ")
    person = Dataset()
    person.PersonIdentificationCodeSequence = [code]
    person.PersonAddress = who["physician_address"]
    person.PersonTelephoneNumbers = phone
    person.PersonTelecomInformation = email
    person.InstitutionName = who["institution"]
    ds.ReferringPhysicianIdentificationSequence = [person]
    written_times = [seen]
    if nested:  # a TEXT item inside a CONTAINER, as structured reports nest them
        dictated = datetime.strptime(ds.ContentTime[:6], "%H%M%S").strftime("%H:%M:%S")
        text = Dataset()
        text.RelationshipType = "CONTAINS"
        text.ValueType = "TEXT"
        text.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
        text.TextValue = (
            f"Dictated {dictated} on {forms[0]} by Dr {doctor}; callback {phone} or {email}. "
            f"MRN {who['pid']}."
        )
        container = Dataset()
        container.RelationshipType = "CONTAINS"
        container.ValueType = "CONTAINER"
        container.ContinuityOfContent = "SEPARATE"
        container.ConceptNameCodeSequence = [_code("121070", "DCM", "Findings")]
        container.ContentSequence = [text]
        ds.ContentSequence = [container]
        written_times.append(dictated)
    planted = [
        *(("name", who[k]) for k in ("name", "family", "given", "physician")),
        ("name", who["physician_family"]),
        ("name", who["physician_given"]),
        *(("id", v) for v in (who["pid"], study.accession, study.procedure_id, study.step_id)),
        ("id", who["physician_id"]),
        ("date", who["birth"]),
        *(("date", form) for form in forms),
        *(("time", t) for t in written_times),
        ("phone", who["patient_phone"]),
        ("phone", phone),
        ("email", who["email"]),
        ("email", email),
        *(("place", who[k]) for k in ("institution", "city", "address", "physician_address")),
    ]
    return [{"kind": kind, "value": value} for kind, value in planted]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _conformance(ds: Dataset, kind: str, frames: int, series: _Series) -> None:
    """What each IOD requires beyond the identity, so that dciodvfy finds the originals valid
    and reports what a de-identifier breaks."""
    if frames > 1:
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
    if not kind.startswith("ct"):
        ds.PatientOrientation = ""
    if kind.startswith("us"):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    elif kind.startswith("xa"):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
        ds.PixelIntensityRelationship = "LIN"
        ds.KVP, ds.RadiationSetting = 80, "GR"
        ds.XRayTubeCurrent, ds.ExposureTime, ds.Exposure = 500, 100, 50
        ds.PositionerPrimaryAngle = ds.PositionerSecondaryAngle = 0
        if frames > 1:
            ds.PositionerMotion = "STATIC"
    elif kind.startswith("ct"):
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = series.frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.PixelSpacing = [0.7, 0.7]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-179.2, -179.2, -2.5 * len(series.instances)]
        ds.SliceThickness, ds.KVP, ds.AcquisitionNumber = 2.5, 120, 1


def _speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    noise = rng.rayleigh(0.5, shape).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 1.4)


def _ultrasound(
    p: _Painter, who: dict[str, str], rng: np.random.Generator, frames: int, colour: bool
) -> list[_Frame]:
    from PIL import Image

    h, w = 480, 640
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot(xx - w / 2, yy + 60)
    fan = (radius > 120) & (radius < 520) & (np.abs(xx - w / 2) < (yy + 60) * 0.75) & (yy > 60)
    out = []
    size = p.rng.choice([12, 13, 14, 16])
    for index in range(frames):
        tissue = _speckle(rng, (h, w))
        grey = np.where(fan, np.clip(tissue * 150 * (1.2 - yy / h), 0, 255), 0).astype(np.uint8)
        image = Image.fromarray(grey).convert("RGB" if colour else "L")
        frame = _Frame(image)
        white = (255, 255, 255) if colour else 255
        grey_text = (170, 170, 170) if colour else 170
        p.text(frame, (8, 6), who["institution"], size=size, fill=white, phi=True)
        p.text(
            frame, (8, 6 + size + 4), who["name"].replace("^", " "), size=size, fill=white, phi=True
        )
        p.text(frame, (8, 6 + 2 * (size + 4)), who["pid"], size=size, fill=white, phi=True)
        p.text(frame, (w - 150, 6), who["study_text"], size=size, fill=white, phi=True)
        p.text(frame, (w - 150, 6 + size + 4), who["time_text"], size=size, fill=white, phi=True)
        p.text(
            frame,
            (w // 2 - 40, h - 60),
            p.rng.choice(["LIVER", "KIDNEY LT", "THYROID"]),
            size=size + 2,
            fill=grey_text,
            phi=False,
        )  # an annotation over tissue
        p.text(
            frame,
            (10, h - 24),
            f"MI 1.{index % 10}  TIS 0.4",
            size=size - 1,
            fill=(255, 255, 0) if colour else 220,
            phi=False,
        )
        out.append(frame)
    return out


def _screen(p: _Painter, who: dict[str, str], colour: bool) -> list[_Frame]:
    from PIL import Image

    h, w = (768, 1024) if p.rng.random() < 0.5 else (512, 512)
    back = (40, 44, 52) if colour else 40
    frame = _Frame(Image.new("RGB" if colour else "L", (w, h), back))
    lines = [
        (f"Patient: {who['family'].upper()}, {who['given']}", True),
        (f"MRN: {who['pid']}    DOB: {who['birth_text']}", True),
        (f"Accession {who['accession']}", True),
        (f"Referring: Dr {who['physician'].split('^')[0]}", True),
        (f"Tel {who['phone']}", True),
        ("CT Dose Report   DLP 412 mGy.cm", False),
    ]
    size = p.rng.choice([14, 16, 18, 22])
    fill = (230, 230, 230) if colour else 230
    faint = (75, 79, 87) if colour else 75  # low contrast: 35 grey levels above the background
    for n, (text, phi) in enumerate(lines):
        inverted = n == 2
        dim = n == 4
        p.text(
            frame,
            (24, 24 + n * (size + 12)),
            text,
            size=size,
            fill=(20, 20, 20)
            if colour and inverted
            else (20 if inverted else faint if dim else fill),
            box_fill=((235, 235, 235) if colour else 235) if inverted else None,
            phi=phi,
        )
    return [frame]


def _angio(p: _Painter, who: dict[str, str], rng: np.random.Generator, frames: int) -> list[_Frame]:
    import cv2
    from PIL import Image

    h = w = 512
    out = []
    for index in range(frames):
        base = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 12)
        base = (base - base.min()) / (np.ptp(base) or 1)
        vessels = np.zeros((h, w), np.uint8)
        for _ in range(6):
            pts = rng.integers(0, w, size=(4, 2)).astype(np.int32)
            cv2.polylines(vessels, [pts], False, 255, int(rng.integers(2, 6)))
        grey = np.clip(90 + base * 120 - cv2.GaussianBlur(vessels, (0, 0), 2) * 0.5, 0, 255)
        frame = _Frame(Image.fromarray(grey.astype(np.uint8)))
        size = p.rng.choice([11, 12, 14])
        p.text(frame, (6, 4), who["name"].replace("^", ", "), size=size, fill=250, phi=True)
        p.text(
            frame,
            (6, 4 + size + 3),
            f"{who['birth_text']}  {who['pid']}",
            size=size,
            fill=250,
            phi=True,
        )
        p.text(frame, (w - 110, h - 20), f"FR {index + 1}  80kV", size=size, fill=250, phi=False)
        out.append(frame)
    return out


def _ct_slice(
    rng: np.random.Generator, text: bool, p: _Painter, who: dict[str, str]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A CT slice that looks like one (``synth_anatomy.ct_slice``: body outline, fat, muscle,
    organs, lung with vessels, bone, table, correlated noise), in HU; ``text``: a screen-saved
    page with the patient's name and ID burned in at the top."""
    from dicomnode.synth_anatomy import ct_slice

    h = w = 512
    # One draw from the set's generator (as before), which seeds the anatomy: the other
    # kinds' pixels stay those of earlier versions of the set.
    draw = rng.normal(0, 1, (h, w))
    values = ct_slice(np.random.default_rng(int(abs(draw[0, :4]).sum() * 1e9))).astype(np.float32)
    boxes: list[dict[str, Any]] = []
    if text:
        from PIL import Image

        frame = _Frame(Image.new("L", (w, h), 0))
        p.text(frame, (8, 8), who["name"].replace("^", " "), size=14, fill=255, phi=True)
        p.text(frame, (8, 28), f"{who['pid']}  {who['study_text']}", size=14, fill=255, phi=True)
        mask = np.array(frame.image) > 127
        values[mask] = 3000
        boxes = frame.boxes
    return values.astype(np.int16), boxes


def _write(path: Path, ds: Dataset, syntax: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def _set_pixels(ds: Dataset, frames: list[_Frame], compress: str) -> str:
    arrays = [np.array(f.image) for f in frames]
    colour = arrays[0].ndim == 3
    ds.Rows, ds.Columns = arrays[0].shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if len(arrays) > 1:
        ds.NumberOfFrames = len(arrays)
    if compress == "jpeg":
        parts = []
        for frame in frames:
            buffer = io.BytesIO()
            frame.image.save(buffer, format="JPEG", quality=92, subsampling=1 if colour else 0)
            parts.append(buffer.getvalue())
        ds.PixelData = encapsulate(parts)
        ds["PixelData"].VR = "OB"
        if colour:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        return str(JPEGBaseline8Bit)
    stack = np.stack(arrays) if len(arrays) > 1 else arrays[0]
    if compress == "rle":
        ds.compress(RLELossless, stack, generate_instance_uid=False)
        return str(RLELossless)
    ds.PixelData = stack.tobytes()
    ds["PixelData"].VR = "OB"
    return str(ExplicitVRLittleEndian)


def make_set(outdir: Path, count: int = 40, seed: int = 1) -> dict[str, Any]:
    """Write ``count`` instances (about 3 frames each on average) and truth.json."""
    from faker import Faker

    fake = Faker()
    Faker.seed(seed)
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    painter = _Painter(rng, _fonts())
    outdir.mkdir(parents=True, exist_ok=True)
    truth: dict[str, Any] = {"instances": []}
    people: dict[int, dict[str, str]] = {}
    studies: dict[tuple[int, int], _Study] = {}
    all_series: dict[tuple[int, int, int], _Series] = {}
    for n, key in enumerate(_plan(count)):
        kind = _KINDS[n % len(_KINDS)]
        modality = _MODALITY[kind[:2]]
        patient, study_key = key[0], key[:2]
        if patient not in people:
            people[patient] = _identity(fake, rng)
        if study_key not in studies:
            studies[study_key] = _new_study(seed, people[patient], rng, study_key, len(studies))
        study = studies[study_key]
        if key not in all_series:
            study.series += 1
            start = study.start + timedelta(minutes=5 * study.series - 3, seconds=rng.randrange(50))
            all_series[key] = _Series(
                _uid(seed, "series", *key), study.series, start, _uid(seed, "frame", *key)
            )
        series = all_series[key]
        who = dict(
            people[patient],
            accession=study.accession,
            study=study.start.strftime("%Y%m%d"),
            study_text=study.start.strftime("%Y-%m-%d"),
            time_text=study.start.strftime("%H:%M:%S"),
        )
        count_frames = {"us-cine": 8, "xa-cine": 6}.get(kind, 1)
        sop_class = {"US": US_MULTI if count_frames > 1 else US, "OT": SC, "XA": XA, "CT": CT}
        ds = Dataset()
        instants = _header(
            ds,
            who,
            sop_class[modality],
            modality,
            study=study,
            series=series,
            sop_instance=_uid(seed, "instance", n),
            rng=rng,
        )
        planted = _free_text(ds, who, study, modality, nested=n % 2 == 0)
        _conformance(ds, kind, count_frames, series)
        frame_boxes: list[list[dict[str, Any]]]
        compress = rng.choice(["none", "none", "jpeg", "rle"])
        if kind.startswith("us"):
            frames = _ultrasound(painter, who, nrng, count_frames, kind == "us-colour")
            syntax = _set_pixels(ds, frames, compress)
            frame_boxes = [f.boxes for f in frames]
        elif kind.startswith("sc"):
            frames = _screen(painter, who, kind == "sc-colour")
            ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
            syntax = _set_pixels(ds, frames, compress)
            frame_boxes = [f.boxes for f in frames]
        elif kind.startswith("xa"):
            frames = _angio(painter, who, nrng, count_frames)
            syntax = _set_pixels(ds, frames, "none" if compress == "jpeg" else compress)
            frame_boxes = [f.boxes for f in frames]
        else:
            values, boxes = _ct_slice(nrng, kind == "ct-text", painter, who)
            ds.ImageType = (
                ["DERIVED", "SECONDARY", "SCREEN SAVE"]
                if boxes
                else ["ORIGINAL", "PRIMARY", "AXIAL"]
            )
            ds.Rows, ds.Columns = values.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope = 0, 1
            ds.PixelData = values.tobytes()
            ds["PixelData"].VR = "OW"
            syntax = str(ExplicitVRLittleEndian)
            frame_boxes = [boxes]
        name = f"{n:03d}-{kind}.dcm"
        _write(outdir / name, ds, syntax)
        series.instances.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        for instant in instants:  # every date and time is planted PHI too (a DT is both)
            path = instant["path"]
            if path.endswith(("Date", "Time")) and not path.endswith("DateTime"):
                kind_of = "date" if path.endswith("Date") else "time"
                planted.append({"kind": kind_of, "value": instant["value"]})
        uids = {
            "study": study.uid,
            "series": series.uid,
            "sop_instance": str(ds.SOPInstanceUID),
        }
        if "FrameOfReferenceUID" in ds:
            uids["frame_of_reference"] = series.frame_of_reference
        truth["instances"].append(
            {
                "file": name,
                "kind": kind,
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "transfer_syntax": str(syntax),
                "header_phi": [  # the identity, flat, as earlier versions wrote it
                    who[k]
                    for k in (
                        "name",
                        "family",
                        "given",
                        "pid",
                        "accession",
                        "birth",
                        "institution",
                        "physician",
                    )
                ],
                "patient": patient,
                "study": key[1],
                "series": series.number,
                "uids": uids,
                "instants": instants,
                "header_planted": list({(p["kind"], p["value"]): p for p in planted}.values()),
                "frames": [{"index": i, "boxes": boxes} for i, boxes in enumerate(frame_boxes)],
            }
        )
    (outdir / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth
