"""A cheap test for "might there be text here?", so that OCR runs only where it is needed.

Burned-in text is thin, high-contrast strokes of one colour, laid out in lines. A white
top-hat (bright strokes) and a black-hat (dark strokes) with a small kernel keep exactly such
structures; a horizontal closing joins the characters of a line; connected components of
text-like shape (a few to ~80 pixels high, longer than high, partly filled) are the
candidates, returned as padded boxes for the detector. It favours recall: a false candidate
costs one OCR call on a small crop, a missed one would cost a patient's name.
Cost: a few milliseconds for a 512x512 frame on one core.
"""

from __future__ import annotations

import cv2
import numpy as np

from dicomnode.pixels.boxes import Box

__all__ = ["candidates", "strokes"]

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
