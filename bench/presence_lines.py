"""PROTOTYPE, not used by the pixel stage: a presence check by line structure, measured
against the shipped one (``dicomnode.pixels.presence``) by ``bench/pixels.py``. Its recall on
burned-in text is below the shipped check's (small fonts near anatomy, faint and inverted text
on noisy NM/PET, text over MR anatomy), so it does not decide anything; it is kept to measure
what line structure buys (text-free CT mostly not sent to the detector) and what it misses.

The idea: a cheap test for "might there be text here?", so that OCR runs only where text
plausibly is.

Anatomy has thin bright and dark structures too (vessels, bone cortex, organ edges, lung
texture, noise): "is there a stroke" does not separate text from anatomy, every CT frame has
strokes. What does is how strokes are *laid out*. A line of characters is a row of several
separate marks (letters, or letter fragments) of about the same height, side by side, the
gaps between them no wider than about a character, their tops and bottoms on two common
lines (the line's top and its baseline), all of one contrast. Anatomy does not line up so:
an organ edge or a rib is one long mark that is much taller (or longer) than wide steps of
a text line; vessels and trabecular bone are marks of scattered heights and positions.

So the check, on one 8-bit picture (a grey frame as the stage windows it; for colour both the
brightest and the darkest channel, so that text of any colour stands out in one of them):

1. strokes: a white top-hat (bright strokes) and a black-hat (dark strokes) with a small kernel
   keep thin structures; a pixel is a stroke where that response is at least ``contrast``
   grey levels and well above the neighbourhood's texture. The texture is measured on the
   response *eroded* once: a text stroke (1-3 px) vanishes under the erosion, speckle and
   noise grains do not, so a dense block of text does not raise its own threshold (it did
   when the texture was the plain mean: only the edges of such a block passed);
   Bright and dark strokes each have their own texture, and are labelled apart;
2. marks: connected strokes (8-connected) of one polarity, each with its box; marks that
   cannot be characters (longer than 64 px both ways, streaks, thin curves) are dropped;
3. lines: marks of one polarity joined along the line's direction (a closing on a halved
   mask), then, per joined component, its character-sized marks must form a row: at least
   three crossing the component's middle (a common baseline and top), of similar height,
   most of the component's marks, spread over three heights at least, covering a good part
   of it, filled like letters.

Horizontal lines are looked for, and vertical ones (text written along a side) with the
closing turned. Large fonts (strokes thicker than the kernel) are looked for the same way on
a copy reduced four times. A text-free CT frame of 512 x 512 costs about 1.1-1.5 ms on one
idle core (more under load): the morphology, two labellings of sparse masks, and numpy.
A false line costs one OCR call on a small crop, a missed one would cost a patient's name.
"""

from __future__ import annotations

import cv2
import numpy as np

from dicomnode.pixels.boxes import Box

__all__ = ["candidates", "strokes"]

_KERNEL = cv2.getStructuringElement(cv2.MORPH_RECT, (7, 7))
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_JOIN = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 1))  # on the halved mask: see _lines
_JOIN_T = cv2.getStructuringElement(cv2.MORPH_RECT, (1, 5))
_PAIR = np.ones((2, 2), np.uint8)
_TEXTURE = 3  # a stroke stands this many times above the neighbourhood's (eroded) texture
_COARSE_MIN = 48  # the reduced copy's shorter side, at least


def _channels(picture: np.ndarray) -> list[np.ndarray]:
    """The grey pictures to look at: the frame itself, or (colour) its brightest and darkest
    channel; a colour picture whose channels are equal is grey."""
    if picture.ndim == 2:
        return [picture]
    if picture.shape[2] == 1:
        return [np.ascontiguousarray(picture[:, :, 0])]
    first = np.ascontiguousarray(picture[:, :, 0])
    planes = [first, np.ascontiguousarray(picture[:, :, 1]), np.ascontiguousarray(picture[:, :, 2])]
    if np.array_equal(planes[0], planes[1]) and np.array_equal(planes[0], planes[2]):
        return [first]
    high = cv2.max(cv2.max(planes[0], planes[1]), planes[2])
    low = cv2.min(cv2.min(planes[0], planes[1]), planes[2])
    return [high, low]


def _hats(grey: np.ndarray) -> np.ndarray:
    bright = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, _KERNEL)
    dark = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, _KERNEL)
    return cv2.max(bright, dark)


def _floor(hats: np.ndarray, contrast: int) -> np.ndarray:
    """The least response of a stroke, per pixel: ``contrast``, and ``_TEXTURE`` times the
    neighbourhood's texture (the mean response after one erosion, which thin strokes do not
    survive: a dense block of text does not raise its own threshold)."""
    eroded = cv2.erode(hats, _CROSS)
    height, width = hats.shape[:2]
    if min(height, width) < 64:
        texture = cv2.blur(eroded, (31, 31))
        return cv2.max(cv2.multiply(texture, _TEXTURE), contrast)  # type: ignore[no-any-return]
    # The mean over ~32 px, on a copy reduced 4 times (cheaper), scaled back.
    small = cv2.resize(eroded, (width // 4, height // 4), interpolation=cv2.INTER_AREA)
    small = cv2.max(cv2.multiply(cv2.blur(small, (8, 8)), _TEXTURE), contrast)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)  # type: ignore[no-any-return]


def _stroke_mask(grey: np.ndarray, contrast: int) -> np.ndarray:
    """Mask 0/1 of the bright and the dark strokes of one grey picture."""
    bright = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, _KERNEL)
    dark = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, _KERNEL)
    mask = cv2.max(
        cv2.compare(bright, _floor(bright, contrast), cv2.CMP_GE),
        cv2.compare(dark, _floor(dark, contrast), cv2.CMP_GE),
    )
    return (mask > 0).astype(np.uint8)


def strokes(picture: np.ndarray, contrast: int = 12) -> np.ndarray:
    """1 where a thin bright or dark stroke is (letters are made of them; the straight edge
    of a large filled box is not), else 0.

    The threshold adapts to the neighbourhood: at least ``contrast`` grey levels (faint
    text on a flat background counts), and well above the local texture (speckle does not).
    """
    masks = [_stroke_mask(grey, contrast) for grey in _channels(picture)]
    mask = masks[0]
    for other in masks[1:]:
        mask = cv2.max(mask, other)
    return mask


def candidates(picture: np.ndarray, contrast: int = 12, max_side: int = 1024) -> list[Box]:
    """Boxes around every line of text-like marks in an 8-bit grey or RGB picture.

    Strokes are looked for at the picture's size (up to ``max_side``) and on a copy reduced
    four times: a title in a large bold font has strokes too thick for the small kernel, which
    are thin strokes again at a quarter of the size.
    """
    scale = 1.0
    if max(picture.shape[:2]) > max_side:  # large frames: look at a reduced copy
        scale = max_side / max(picture.shape[:2])
        picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    found: list[Box] = []
    for grey in _channels(picture):
        found += _lines(grey, contrast, scale)
        if min(grey.shape[:2]) >= 4 * _COARSE_MIN:
            coarse = cv2.resize(grey, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
            found += _lines(coarse, contrast, scale * 0.25)
    return found


def _lines(grey: np.ndarray, contrast: int, scale: float) -> list[Box]:
    """Line boxes at one scale (``scale``: this picture's size over the frame's).

    Bright and dark strokes are labelled apart: between the bright letters of a line lie
    dark gaps, and the two together would be one bar, not a row of marks."""
    bright = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, _KERNEL)
    dark = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, _KERNEL)
    owners, yss, xss, peaks = [], [], [], []
    union = None
    total = 0
    dark_from = 0
    for response in (bright, dark):
        dark_from = total
        # Each polarity against its own texture: the light gaps between dark letters (or
        # the light box around them) must not raise the threshold of the letters.
        mask = cv2.compare(response, _floor(response, contrast), cv2.CMP_GE)
        if cv2.countNonZero(mask) < 8:
            continue
        count, labels = cv2.connectedComponentsWithAlgorithm(mask, 8, cv2.CV_32S, cv2.CCL_BBDT)
        points = cv2.findNonZero(mask).reshape(-1, 2).astype(np.intp)  # raster order
        xs, ys = points[:, 0], points[:, 1]
        owners.append(labels[ys, xs].astype(np.intp) + total)
        yss.append(ys)
        xss.append(xs)
        peaks.append(response[ys, xs].astype(np.intp))
        total += count
        union = mask if union is None else cv2.max(union, mask)
    if union is None:
        return []
    marks = _Marks(
        total,
        np.concatenate(owners),
        np.concatenate(yss),
        np.concatenate(xss),
        np.concatenate(peaks),
    )
    marks.polarity = np.zeros(total, np.intp)
    marks.polarity[dark_from:] = 1
    usable = marks.usable()
    if not usable.any():
        return []
    # Marks are joined into lines on a mask halved (a pixel per 2 x 2) that holds only the
    # marks that can be characters: anatomy larger than a character (an organ's outline, a
    # vessel's length) does not join text written over it to itself. A closing of 5 x 1
    # there bridges gaps of up to ~8 px along the line.
    height, width = union.shape
    found = []
    for polarity in (0, 1):  # bright marks join bright ones, dark ones dark ones
        chosen = usable[marks.owner] & (marks.polarity[marks.owner] == polarity)
        if not chosen.any():
            continue
        half = np.zeros(((height + 1) // 2, (width + 1) // 2), np.uint8)
        half[marks.ys[chosen] // 2, marks.xs[chosen] // 2] = 1
        for join, vertical in ((_JOIN, False), (_JOIN_T, True)):
            joined = cv2.morphologyEx(half, cv2.MORPH_CLOSE, join)
            _, lines = cv2.connectedComponentsWithAlgorithm(joined, 8, cv2.CV_32S, cv2.CCL_BBDT)
            line_of = lines[marks.y // 2, marks.x // 2].astype(np.intp)
            line_of[marks.polarity != polarity] = 0
            for x0, y0, x1, y1 in marks.lines(line_of, vertical):
                found.append(Box(x0, y0, x1, y1, score=0.0, source="presence").scaled(1 / scale))
    return found


class _Marks:
    """The connected strokes of one picture: per mark its box, pixel count, contrast, and one
    of its pixels (``y``, ``x``)."""

    def __init__(
        self, count: int, owner: np.ndarray, ys: np.ndarray, xs: np.ndarray, hats: np.ndarray
    ) -> None:
        big = np.iinfo(np.intp).max
        self.x0 = np.full(count, big, np.intp)
        self.y0 = np.full(count, big, np.intp)
        self.x1 = np.zeros(count, np.intp)
        self.y1 = np.zeros(count, np.intp)
        np.minimum.at(self.x0, owner, xs)
        np.maximum.at(self.x1, owner, xs + 1)
        self.y0[owner[::-1]] = ys[::-1]  # raster order: the first pixel is the top one
        self.y1[owner] = ys + 1
        self.y = np.zeros(count, np.intp)
        self.x = np.zeros(count, np.intp)
        self.y[owner] = ys
        self.x[owner] = xs
        self.area = np.bincount(owner, minlength=count)
        self.peak = np.zeros(count, np.intp)
        np.maximum.at(self.peak, owner, hats)
        self.count = count
        self.owner, self.ys, self.xs = owner, ys, xs

    def usable(self) -> np.ndarray:
        """Per mark: may it be (part of) a character? At least 3 px long, at most 64 px
        across, not a streak (much longer than wide, or a thin curve over a large box)."""
        w = self.x1 - self.x0
        h = self.y1 - self.y0
        long = np.maximum(w, h)
        short = np.minimum(w, h)
        ok = (long >= 3) & (short <= 64) & (long <= 16 * np.maximum(short, 2))
        ok &= (self.area >= 3) & (self.area * 8 >= w * h)
        ok[0] = False
        return ok

    def lines(self, line_of: np.ndarray, vertical: bool) -> list[tuple[int, int, int, int]]:
        """Boxes of the lines (``line_of``: each mark's line) whose marks look like the
        characters of one line of text (``vertical``: written top to bottom)."""
        if vertical:
            lo, hi, a0, a1 = self.x0, self.x1, self.y0, self.y1  # across, along
        else:
            lo, hi, a0, a1 = self.y0, self.y1, self.x0, self.x1
        keep = np.nonzero(self.usable() & (line_of > 0))[0]
        high = (hi - lo)[keep]
        # A character (or a few that touch) is not much longer than high.
        keep = keep[(high >= 3) & (high <= 64) & ((a1 - a0)[keep] <= 4 * high + 4)]
        if not len(keep):
            return []
        high = (hi - lo)[keep]
        line = line_of[keep]
        n = int(line.max()) + 1
        tallest = np.zeros(n, np.intp)
        np.maximum.at(tallest, line, high)
        similar = high * 2 >= tallest[line]
        keep, line, high = keep[similar], line[similar], high[similar]
        # The line's extent, from its character-sized marks.
        big = np.iinfo(np.intp).max
        top = np.full(n, big, np.intp)
        bottom = np.zeros(n, np.intp)
        start = np.full(n, big, np.intp)
        end = np.zeros(n, np.intp)
        np.minimum.at(top, line, lo[keep])
        np.maximum.at(bottom, line, hi[keep])
        np.minimum.at(start, line, a0[keep])
        np.maximum.at(end, line, a1[keep])
        # Marks on the line: crossing its middle (a baseline and a top line in common).
        middle = (top + bottom) // 2
        fifth = np.maximum(1, (bottom - top) // 5)
        centre = middle[line]
        on = (lo[keep] <= centre + fifth[line]) & (hi[keep] >= centre - fifth[line])
        marks = np.bincount(line[on], minlength=n)
        sized = np.bincount(line, minlength=n)
        length = np.bincount(line[on], weights=(a1 - a0)[keep][on], minlength=n)
        ink = np.bincount(line[on], weights=self.area[keep][on], minlength=n)
        boxes = np.bincount(line[on], weights=((a1 - a0) * (hi - lo))[keep][on], minlength=n)
        span = end - start
        height = bottom - top
        ok = (
            (tallest >= 5)
            & (span >= 3 * height)  # three characters at least
            & (height <= 2 * tallest + 2)  # not much taller than its marks
            & (marks >= 3)
            & (marks * 5 >= sized * 3)  # most of them on the line
            & (length >= 0.35 * span)  # much of its length is marks on the line
            & (ink >= 0.2 * boxes)  # filled like letters, not thin curves
        )
        ok[0] = False
        out = []
        for k in np.nonzero(ok)[0]:
            if vertical:
                out.append((int(top[k]), int(start[k]), int(bottom[k]), int(end[k])))
            else:
                out.append((int(start[k]), int(top[k]), int(end[k]), int(bottom[k])))
        return out
