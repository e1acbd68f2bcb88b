"""A cheap test for "might there be text here?", so that OCR runs only where it is needed.

Burned-in text is thin, high-contrast strokes of one colour, laid out in lines. A white
top-hat (bright strokes) and a black-hat (dark strokes) with a small kernel keep exactly such
structures; a horizontal closing joins the characters of a line; connected components of
text-like shape (a few to ~80 pixels high, longer than high, partly filled) are the
candidates, returned as padded boxes for the detector. It favours recall: a false candidate
costs one OCR call on a small crop, a missed one would cost a patient's name.
Cost: a few milliseconds for a 512x512 frame on one core.

That is the **thorough** check: on anatomy it fires nearly everywhere (vessels, bone edges and
noise are thin strokes too), which is right where text is common but sends every frame of a
CT or MR series to the detector. The **learned** check (``lines``) keeps only lines of marks
laid out as text and sends a fraction of text-free frames. :func:`choose` says which runs for
an instance (``pixels.presence``).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import cv2
import numpy as np

from dicomnode.pixels.boxes import Box

__all__ = ["LEARNED_MODALITIES", "Presence", "candidates", "choose", "strokes"]


class Presence(StrEnum):
    """Which presence check runs (``pixels.presence``)."""

    AUTO = "auto"  # per instance, by :func:`choose`
    THOROUGH = "thorough"  # strokes: every thin structure (this module)
    LEARNED = "learned"  # lines of marks scored by the model (``lines``)


#: Modalities whose images rarely carry burned-in text (the scanner writes its annotations in
#: the header or an overlay): cross-sectional and projection radiography, nuclear medicine.
#: Everything else, and a missing Modality, gets the thorough check.
LEARNED_MODALITIES = frozenset({"CT", "MR", "PT", "NM", "CR", "DX", "MG", "IO", "PX"})

# Secondary Capture and its multi-frame kinds (.7.1 to .7.4); the prefix also takes in the
# visible-light and ophthalmic classes (1.1.77 to 1.1.79: photographs, scans), thorough too.
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_GREY = ("MONOCHROME1", "MONOCHROME2")


def choose(
    setting: Presence, header: Mapping[str, Any], photometric: str, regions: bool
) -> tuple[Presence, str]:
    """The check for one instance and why (the stage's report says it; no PHI).

    ``auto``: the learned check for a grey image of a modality in ``LEARNED_MODALITIES``;
    the thorough one for a Secondary Capture SOP class whatever its Modality (a CT dose
    screen is SC with Modality CT), an image that says it has burned-in text
    (BurnedInAnnotation YES) or is a secondary picture (ImageType SECONDARY or SCREEN SAVE: a
    workstation's capture, often annotated), a colour image, any other or a missing Modality,
    and wherever a device region rule applies (``regions``: that device writes text, and the
    frame is searched as it always was). ``thorough`` and ``learned`` choose it for every
    instance.
    """
    if setting is not Presence.AUTO:
        return setting, f"pixels.presence {setting.value}"
    if regions:
        return Presence.THOROUGH, "a device region rule applies"
    if str(header.get("SOPClassUID") or "").strip().startswith(_SECONDARY_CAPTURE):
        return Presence.THOROUGH, "secondary capture"
    if str(header.get("BurnedInAnnotation") or "").strip().upper() == "YES":
        return Presence.THOROUGH, "BurnedInAnnotation YES"
    image_type = _values(header.get("ImageType"))
    if image_type[1:2] == ["SECONDARY"] or "SCREEN SAVE" in image_type:
        return Presence.THOROUGH, "secondary image type"
    if photometric not in _GREY:
        return Presence.THOROUGH, "colour"
    modality = str(header.get("Modality") or "").strip().upper()
    if modality in LEARNED_MODALITIES:
        return Presence.LEARNED, f"modality {modality}"
    return Presence.THOROUGH, "another modality" if modality else "no modality"


_KERNEL = cv2.getStructuringElement(cv2.MORPH_RECT, (7, 7))
_JOIN = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 3))


def strokes(picture: np.ndarray, contrast: int = 12) -> np.ndarray:
    """1 where a thin bright or dark stroke is (letters are made of them; the straight edge
    of a large filled box is not), else 0.

    The threshold adapts to the neighbourhood: at least ``contrast`` grey levels (faint
    text on a flat background counts), and well above the local texture (speckle does not).
    """
    if picture.ndim == 3:  # the brightest channel: coloured text stands out in one of them
        grey = cv2.max(cv2.max(picture[:, :, 0], picture[:, :, 1]), picture[:, :, 2])
    else:
        grey = picture
    bright = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, _KERNEL)
    dark = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, _KERNEL)
    hats = cv2.max(bright, dark)
    texture = cv2.blur(hats, (31, 31))
    floor = cv2.max(
        cv2.multiply(texture, np.full_like(texture, 3)), np.full_like(texture, contrast)
    )
    return (hats >= floor).astype(np.uint8)


def _values(value: Any) -> list[str]:
    """A header value as its upper-case values (a snapshot holds a list or a string)."""
    if value is None:
        return []
    items = value.split("\\") if isinstance(value, str) else [str(v) for v in value]
    return [v.strip().upper() for v in items]


def candidates(picture: np.ndarray, contrast: int = 12, max_side: int = 1024) -> list[Box]:
    """Boxes around every text-like structure in an 8-bit RGB (or grey) picture.

    Strokes are looked for at the picture's size (up to ``max_side``) and on a copy reduced
    four times: a title in a large bold font has strokes too thick for the small kernel, which
    are thin strokes again at a quarter of the size.
    """
    scale = 1.0
    if max(picture.shape[:2]) > max_side:  # large frames: look at a reduced copy
        scale = max_side / max(picture.shape[:2])
        picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    found = _components(picture, contrast, scale)
    if min(picture.shape[:2]) >= 4 * _COARSE_MIN:
        coarse = cv2.resize(picture, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
        found += _components(coarse, contrast, scale * 0.25)
    return found


_COARSE_MIN = 48  # the reduced copy's shorter side, at least


def _components(picture: np.ndarray, contrast: int, scale: float) -> list[Box]:
    """Candidate boxes at one scale (``scale``: this picture's size over the frame's)."""
    strokes_ = strokes(picture, contrast)
    if not strokes_.any():
        return []
    lines = cv2.morphologyEx(strokes_, cv2.MORPH_CLOSE, _JOIN)
    count, _labels, stats, _ = cv2.connectedComponentsWithStats(lines, connectivity=8)
    found = []
    for index in range(1, count):
        x, y, w, h, _area = (int(v) for v in stats[index])
        if h < 4 or w < 3:
            continue  # too small to be a character of any font
        ink = int(strokes_[y : y + h, x : x + w].sum())
        if ink < 8 or (h <= 12 and w <= 4):
            continue  # specks and single dots
        # Large components (text over texture, or texture alone) are kept whole: the detector
        # decides. Recall first.
        found.append(Box(x, y, x + w, y + h, score=0.0, source="presence").scaled(1 / scale))
    return found
