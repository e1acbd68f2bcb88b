"""A synthetic evaluation set: realistic instances with fake PHI in headers and in pixels.

``dicomnode synth OUTDIR`` writes ultrasound (grey and colour, single and multi-frame, raw and
JPEG/RLE-compressed), secondary captures (report screens), angiography (8 and 16 bit) and
CT-like slices (16 bit, text-free and screen-saved dose pages), with Faker identities in the
header and burned into the pixels in several fonts, sizes, colours and contrasts (white on
black, grey over tissue, faint lines, inverted boxes). ``truth.json`` lists every planted string and its
box per frame, and the header strings, for ``dicomnode evaluate``.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
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

__all__ = ["make_set"]

FONT_DIRS = [Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype")]
US = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTI = "1.2.840.10008.5.1.4.1.1.3.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
XA = "1.2.840.10008.5.1.4.1.1.12.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


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


def _identity(fake: Any, rng: random.Random) -> dict[str, str]:
    family, given = fake.last_name(), fake.first_name()
    birth = fake.date_of_birth(minimum_age=18, maximum_age=95)
    study = fake.date_between(start_date="-3y", end_date="today")
    return {
        "family": family,
        "given": given,
        "name": f"{family}^{given}",
        "pid": f"{rng.choice('ABCDEFGHJK')}{rng.randrange(10**6, 10**8)}",
        "accession": str(rng.randrange(10**7, 10**9)),
        "birth": birth.strftime("%Y%m%d"),
        "birth_text": birth.strftime("%d/%m/%Y"),
        "study": study.strftime("%Y%m%d"),
        "study_text": study.strftime("%Y-%m-%d"),
        "time_text": f"{rng.randrange(7, 19):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}",
        "institution": f"{fake.city()} {rng.choice(['General Hospital', 'Medical Center', 'Clinic'])}",
        "physician": f"{fake.last_name()}^{fake.first_name()}",
        "phone": fake.numerify("0### ### ####"),
    }


def _header(ds: Dataset, who: dict[str, str], sop_class: str, modality: str) -> None:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = who["name"]
    ds.PatientID = who["pid"]
    ds.PatientBirthDate = who["birth"]
    ds.PatientSex = "O"
    ds.AccessionNumber = who["accession"]
    ds.StudyDate = ds.ContentDate = who["study"]
    ds.StudyTime = who["time_text"].replace(":", "")
    ds.InstitutionName = who["institution"]
    ds.ReferringPhysicianName = who["physician"]
    ds.StudyID = "1"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.Manufacturer = "SYNTH"
    ds.ConversionType = "WSD"


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
    import cv2

    h = w = 512
    yy, xx = np.mgrid[:h, :w]
    body = ((xx - 256) / 200) ** 2 + ((yy - 270) / 150) ** 2 < 1
    values = np.full((h, w), -1000, np.float32)
    values[body] = (
        40 + cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3)[body] * 30
    )
    spine = ((xx - 256) / 25) ** 2 + ((yy - 360) / 25) ** 2 < 1
    values[spine] = 700
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
    """Write ``count`` instances (about 5 frames each on average) and truth.json."""
    from faker import Faker

    fake = Faker()
    Faker.seed(seed)
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    painter = _Painter(rng, _fonts())
    outdir.mkdir(parents=True, exist_ok=True)
    truth: dict[str, Any] = {"instances": []}
    kinds = ["us", "us-cine", "us-colour", "sc", "sc-colour", "xa", "xa-cine", "ct", "ct-text"]
    for n in range(count):
        kind = kinds[n % len(kinds)]
        who = _identity(fake, rng)
        ds = Dataset()
        frame_boxes: list[list[dict[str, Any]]]
        compress = rng.choice(["none", "none", "jpeg", "rle"])
        if kind.startswith("us"):
            frames = _ultrasound(
                painter, who, nrng, 8 if kind == "us-cine" else 1, kind == "us-colour"
            )
            _header(ds, who, US_MULTI if len(frames) > 1 else US, "US")
            syntax = _set_pixels(ds, frames, compress)
            frame_boxes = [f.boxes for f in frames]
        elif kind.startswith("sc"):
            frames = _screen(painter, who, kind == "sc-colour")
            _header(ds, who, SC, "OT")
            ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
            syntax = _set_pixels(ds, frames, compress)
            frame_boxes = [f.boxes for f in frames]
        elif kind.startswith("xa"):
            frames = _angio(painter, who, nrng, 6 if kind == "xa-cine" else 1)
            _header(ds, who, XA, "XA")
            syntax = _set_pixels(ds, frames, "none" if compress == "jpeg" else compress)
            frame_boxes = [f.boxes for f in frames]
        else:
            values, boxes = _ct_slice(nrng, kind == "ct-text", painter, who)
            _header(ds, who, CT, "CT")
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
        header = [
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
        ]
        truth["instances"].append(
            {
                "file": name,
                "kind": kind,
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "transfer_syntax": str(syntax),
                "header_phi": header,
                "frames": [{"index": i, "boxes": boxes} for i, boxes in enumerate(frame_boxes)],
            }
        )
    (outdir / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth
