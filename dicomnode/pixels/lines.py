"""The learned presence check: a line of text-like marks, scored by small boosted trees.

Why: anatomy has thin bright and dark structures too (vessels, bone cortex, organ edges, lung
texture, noise), so "is there a stroke" (``presence.candidates``, the thorough check) sends
nearly every CT, MR, PT, NM and CR frame to the detector, at 30-1000 ms a frame. What tells
text apart is how strokes are laid out: a row of separate marks of about one height, tops and
baselines on two common lines, gaps no wider than a character, strokes of one width and one
contrast. The stage uses this check where burned-in text is the exception (``presence.choose``);
on one 8-bit picture:

1. strokes: a white top-hat (bright) and a black-hat (dark) with a 7 x 7 kernel; a stroke is
   at least ``contrast`` grey levels, three times the neighbourhood's texture measured on the
   response eroded once (a text stroke vanishes under the erosion: a dense block of text does
   not raise its own threshold, as it does the thorough check's plain mean) and three times
   its mean after a 3 x 3 median (noise grains survive a median, thin strokes do not: noisy
   NM and MR raise the floor), both taken at their highest within ~20 px (the noisy edge of
   a body next to air); specks (< 5 stroke pixels in 5 x 5) start no mark;
2. marks: the outer contours of each polarity's strokes, with box, ink, stroke width and
   contrast from the outline; marks that cannot be characters (over 64 px, streaks, thin
   curves) are dropped;
3. lines: marks of one polarity joined along the line (a closing on a halved mask holding
   only character-sized marks, so that anatomy does not join text written over it), and the
   same turned for vertical text; per line of three marks or more the numbers of
   ``FEATURES``;
4. boosted trees (``lines_model.json`` beside this module, fitted in numpy by
   ``tools/train_presence.py`` on ``dicomnode.synth_anatomy`` frames with every kind of
   burned-in text and lines in every system font) score each line; lines at or above the
   model's threshold (chosen on held-out frames for recall) go on, those seen on the
   reduced copy only at a higher threshold of their own (:func:`sends`);
5. a second look (``lines_net``): a small convolutional net on each such line's pixels
   (``lines_model.onnx``, named by the model file and trained with it) keeps the lines whose
   marks have the shapes of characters; those are the candidates.

Large fonts are looked for on a copy reduced four times (frames of 384 px and more), frames
over ``max_side`` on a reduced copy; colour in the brightest and the darkest channel.
``bench/pixels.py --presence-only`` measures it against the thorough check, per modality and
kind of text: as many lines found by the detector on every kind, a fraction of the text-free
frames sent. A missing or mismatched model file is a start-up error (:func:`load_model`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, cast

import cv2
import numpy as np

from dicomnode.errors import ConfigError
from dicomnode.pixels.boxes import Box, touching
from dicomnode.pixels.lines_net import LineNet, crops, load_net

__all__ = [
    "FEATURES",
    "MODEL",
    "MODEL_VERSION",
    "NET_BATCH",
    "Ensemble",
    "Lines",
    "candidates",
    "describe",
    "load_model",
    "sends",
]

_KERNEL = cv2.getStructuringElement(cv2.MORPH_RECT, (7, 7))
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_ALONG = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 1))  # joins marks of a line
_ACROSS = cv2.getStructuringElement(cv2.MORPH_RECT, (1, 9))  # ... of a vertical line
# (Numbers typed Any: OpenCV takes a number where its stubs say an array.)
_TEXTURE: Any = 3  # a stroke stands this many times above the neighbourhood's (eroded) texture
_NOISE: Any = 3  # ... and this many times above its noise (see _floor)
_NEAR = np.ones((5, 5), np.uint8)  # on the reduced copy: ~20 px
_SQUARE = np.ones((5, 5), np.uint8)
_FIVE_OF_25: Any = 51  # the mean of a 5 x 5 mask (0/255) with five pixels set, rounded
_COARSE_MIN = 96  # the reduced copy's shorter side, at least
#: Frames whose shorter side is this long or longer are also looked at on a copy reduced
#: four times, where marks of characters over 64 px high are (a word in pieces, at times).
COARSE_SIDE = 4 * _COARSE_MIN
#: The model file (package data) and the version of its format this code reads.
MODEL = Path(__file__).with_name("lines_model.json")
MODEL_VERSION = 2

#: The numbers the model sees per line, in this order (the model file names them too).
FEATURES = (
    "marks",  # log of the count of marks
    "height",  # log of the marks' mean height, in this picture's pixels
    "coarse",  # 1 on the copy reduced four times
    "vertical",  # 1 for a line written top to bottom
    "dark",  # 1 for dark strokes
    "length",  # log of the line's length over the marks' height
    "thickness",  # the line's height over the marks' height
    "height_spread",  # standard deviation of the marks' log height
    "top_spread",  # standard deviation of the marks' tops, over their height
    "base_spread",  # ... of their bottoms (the baseline)
    "on_middle",  # share of the marks crossing the line's middle
    "gap_mean",  # mean gap between neighbouring marks, over the height
    "gap_max",  # widest gap, over the height
    "overlap",  # share of neighbours that overlap along the line
    "cover",  # summed length of the marks over the line's length
    "stroke",  # mean stroke width over the height
    "stroke_spread",  # coefficient of variation of the marks' stroke widths
    "fill",  # ink over the marks' boxes
    "contrast",  # log of the mean stroke response
    "contrast_spread",  # coefficient of variation of the marks' responses
    "aspect",  # mean log of the marks' length over height
    "aspect_spread",  # standard deviation of that
    "density",  # marks per height of length
    "gap_spread",  # standard deviation of the gaps, over the height
    "ink_inside",  # share of stroke pixels in the line's box (8 px cells)
    "ink_before",  # ... in a band as high as the line above it (left of a vertical one)
    "ink_after",  # ... below it (right of a vertical one)
)


_COARSE_FEATURE = FEATURES.index("coarse")
#: Lines the net looks at in one batch (~0.8 MB of crops, ~13 MB of its first layer).
NET_BATCH = 64
_DARK_FEATURE = FEATURES.index("dark")
_VERTICAL_FEATURE = FEATURES.index("vertical")


def candidates(picture: np.ndarray, contrast: int = 12, max_side: int = 1024) -> list[Box]:
    """Boxes around every line of text-like marks in an 8-bit RGB (or grey) picture, in its
    own pixels (``source="presence"``, the model's score as ``score``): every line the trees
    and the net send."""
    return [box for box, _ in _sent(picture, contrast, max_side)]


def first_and_rest(
    picture: np.ndarray, contrast: int = 12, max_side: int = 1024, beside: int = 48
) -> tuple[list[Box], list[Box]]:
    """The lines of :func:`candidates` in two: those to look at first, and the rest, to look
    at once text was found on the frame.

    A caller that searches a frame further once it found text on it (the stage removing all
    text: the thorough check's candidates and these lines, and a small frame whole) needs one
    line of a frame with text to lead it there: the first are the lines the net scores at the
    model's ``first_net_threshold``, the highest at which as many held-out frames with text
    still send one as send any line (``tools/train_presence.py``); most anatomy scores below
    it. A line within ``beside`` pixels of a first one is first too: the detector's crops
    (padded 24 px) then hold both, and it finds faint text better with more of it in view (a
    faint line over MR was found only with its neighbour)."""
    sent = _sent(picture, contrast, max_side)
    first = [box for box, is_first in sent if is_first]
    others = [box for box, is_first in sent if not is_first]
    near = touching(others, first, beside)
    first += [b for b, n in zip(others, near, strict=True) if n]
    return first, [b for b, n in zip(others, near, strict=True) if not n]


def _sent(picture: np.ndarray, contrast: int, max_side: int) -> list[tuple[Box, bool]]:
    """Every line the trees and the net send, and whether it is one to look at first."""
    lines = describe(picture, contrast, max_side)
    if not len(lines.features):
        return []
    model = _model()
    scores = model.score(lines.features)
    keep = np.nonzero(model.sends(lines.features, scores))[0]
    first = np.ones(len(keep), bool)
    if len(keep) and model.net is not None:
        looks = model.net_scores(picture, lines, keep)
        sent = looks >= model.net_threshold
        keep, first = keep[sent], looks[sent] >= model.first_net_threshold
    out = []
    for k, is_first in zip(keep, first, strict=True):
        x0, y0, x1, y1 = (int(v) for v in lines.boxes[k])
        box = Box(x0, y0, x1, y1, float(scores[k]), "presence", glyph=float(lines.glyphs[k]))
        out.append((box, bool(is_first)))
    return out


class Lines(NamedTuple):
    """Candidate lines of one picture: their numbers (``FEATURES``, one row a line), their
    boxes ``x0, y0, x1, y1`` and their marks' mean height (across the line), both in the
    picture's pixels."""

    features: np.ndarray
    boxes: np.ndarray
    glyphs: np.ndarray


def describe(picture: np.ndarray, contrast: int = 12, max_side: int = 1024) -> Lines:
    """Every joined line of character-sized marks of a picture, before the model decides
    (``tools/train_presence.py`` learns from these)."""
    scale = 1.0
    if max(picture.shape[:2]) > max_side:  # large frames: look at a reduced copy
        scale = max_side / max(picture.shape[:2])
        picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    parts: list[_Part] = []
    for grey in _planes(picture):
        views = [(grey, scale, False)]
        if min(grey.shape[:2]) >= COARSE_SIDE:
            coarse = _quarter(grey)
            views.append((coarse, scale * 0.25, True))
        for view, factor, is_coarse in views:
            for dark, response in enumerate(_hats(view)):
                parts += _parts(response, contrast, (is_coarse, bool(dark)), 1 / factor)
    return _describe_lines(parts)


def _planes(picture: np.ndarray) -> list[np.ndarray]:
    """The grey pictures to look at: the frame itself, or (colour) its brightest and darkest
    channel; a colour picture whose channels are equal is grey."""
    if picture.ndim == 2:
        return [picture]
    if picture.shape[2] == 1:
        return [np.ascontiguousarray(picture[:, :, 0])]
    first, second, third = cv2.split(picture)[:3]
    high = cv2.max(cv2.max(first, second), third)
    low = cv2.min(cv2.min(first, second), third)
    if cv2.norm(high, low, cv2.NORM_INF) == 0:
        return [high]
    return [high, low]


def _hats(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bright (top-hat) and the dark (black-hat) thin structures of a grey picture."""
    return (
        cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, _KERNEL),
        cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, _KERNEL),
    )


def _floor(response: np.ndarray, contrast: int) -> np.ndarray:
    """The least response of a stroke, per pixel: ``contrast``, three times the
    neighbourhood's texture measured on the response eroded once (thin strokes do not survive
    the erosion: a dense block of text does not raise its own threshold), and ``_NOISE``
    times its mean after a 3 x 3 median (noise grains are not thin: noisy NM and MR raise
    it). Both over ~32 px, taken at their highest within ~20 px, so that the noisy edge of
    a body next to dark air does not pass."""
    height, width = response.shape[:2]
    least: Any = contrast
    eroded = cv2.erode(response, _CROSS)
    median = cv2.medianBlur(response, 3)
    if min(height, width) < 64:
        texture = cv2.max(
            cv2.multiply(cv2.blur(eroded, (31, 31)), _TEXTURE),
            cv2.multiply(cv2.blur(median, (31, 31)), _NOISE),
        )
        return cv2.max(texture, least)
    # On copies reduced 4 times (cheaper), scaled back.
    eroded = cv2.blur(_quarter(eroded), (8, 8))
    median = cv2.blur(_quarter(median), (8, 8))
    small = cv2.max(cv2.multiply(eroded, _TEXTURE), cv2.multiply(median, _NOISE))
    small = cv2.dilate(cv2.max(small, least), _NEAR)
    return _four_times(small, width, height)


def _four_times(small: np.ndarray, width: int, height: int) -> np.ndarray:
    """``small`` (8-bit) enlarged to ``width`` x ``height`` by repeating each pixel, as
    OpenCV's nearest-neighbour resize does; where both sides are four times the small
    copy's, each pixel's four copies along a row are made by one multiplication of a 32-bit
    number (its bytes, little-endian) and the rows by one broadcast copy: ~6x faster than
    the resize, which has no fast path for it (the same pixels; tests/test_presence.py)."""
    rows, cols = small.shape[:2]
    if small.ndim != 2 or (rows * 4, cols * 4) != (height, width):
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
    along = (small.astype("<u4") * 0x01010101).view(np.uint8).reshape(rows, width)
    out = np.empty((rows, 4, width), np.uint8)
    out[:] = along[:, None, :]
    return out.reshape(height, width)


def _quarter(picture: np.ndarray) -> np.ndarray:
    """A copy reduced four times each way (``w // 4`` x ``h // 4``), averaged over the
    pixels it covers: in two halvings, three times faster than one reduction by four here
    (OpenCV's area average by two is vectorised, by four it is not)."""
    height, width = picture.shape[:2]
    half = cv2.resize(picture, (width // 4 * 2, height // 4 * 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(half, (width // 4, height // 4), interpolation=cv2.INTER_AREA)


def _stroke_mask(response: np.ndarray, contrast: int) -> np.ndarray:
    """0/255 where a stroke is, without specks: a pixel with fewer than 5 stroke pixels in
    its 5 x 5 neighbourhood starts no mark (a stroke 5 px long does), but is kept next to one
    that does (the ends of a stroke)."""
    mask = cv2.compare(response, _floor(response, contrast), cv2.CMP_GE)
    # Five or more of 25 pixels at 255: their mean, rounded, is 51 or more (four: 41).
    core = cv2.bitwise_and(cv2.compare(cv2.blur(mask, (5, 5)), _FIVE_OF_25, cv2.CMP_GE), mask)
    return cv2.bitwise_and(cv2.dilate(core, _SQUARE), mask)


class _Part(NamedTuple):
    """The usable marks of one view and polarity, with the line each belongs to, seen along
    one direction: ``lo``/``hi`` across the line, ``a0``/``a1`` along it."""

    lo: np.ndarray
    hi: np.ndarray
    a0: np.ndarray
    a1: np.ndarray
    mark_ink: np.ndarray
    stroke: np.ndarray
    level: np.ndarray
    line: np.ndarray
    flags: tuple[bool, bool, bool]  # coarse, dark, vertical
    factor: float  # view pixels to frame pixels
    ink: np.ndarray  # summed-area table of the stroke pixels' share per 8 x 8 cell


def _parts(
    response: np.ndarray, contrast: int, flags: tuple[bool, bool], factor: float
) -> list[_Part]:
    """The marks of one polarity's strokes in one view, joined into horizontal lines and into
    vertical ones."""
    mask = _stroke_mask(response, contrast)
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return []
    outer = [contours[int(i)] for i in np.nonzero(hierarchy[0, :, 3] < 0)[0]]  # not the holes
    marks = _marks(outer, response)
    usable = np.nonzero(marks.usable)[0]
    if len(usable) < 2:
        return []
    # Marks are joined into lines on a halved mask that holds only the marks that can be
    # characters (anatomy larger than a character does not join text written over it to
    # itself); a closing of 5 there bridges gaps of up to ~9 px along the line.
    joined = np.zeros_like(mask)
    cv2.drawContours(joined, [outer[i] for i in usable], -1, 255, cv2.FILLED)
    height, width = mask.shape
    half = cv2.resize(joined, ((width + 1) // 2, (height + 1) // 2), interpolation=cv2.INTER_AREA)
    half = cv2.compare(half, cast(Any, 0), cv2.CMP_GT)
    py, px = marks.py[usable] // 2, marks.px[usable] // 2
    x0, y0, x1, y1 = marks.x0[usable], marks.y0[usable], marks.x1[usable], marks.y1[usable]
    ink, stroke, level = marks.ink[usable], marks.stroke[usable], marks.level[usable]
    table = cv2.integral(_cells(mask), sdepth=cv2.CV_32S).astype(np.float64) / 255
    out = []
    for vertical, kernel in ((False, _ALONG), (True, _ACROSS)):
        closed = cv2.morphologyEx(half, cv2.MORPH_CLOSE, kernel)
        _, labels = cv2.connectedComponentsWithAlgorithm(closed, 8, cv2.CV_32S, cv2.CCL_WU)
        line = labels[py, px]
        ends = (x0, x1, y0, y1) if vertical else (y0, y1, x0, x1)
        out.append(_Part(*ends, ink, stroke, level, line, (*flags, vertical), factor, table))
    return out


def _cells(mask: np.ndarray) -> np.ndarray:
    """A stroke mask (0/255) averaged over 8 x 8 cells, as OpenCV's area resize makes it
    (the mean rounded half up); where both sides are multiples of 8, from the mask's
    summed-area table, ~1.5x faster (the same cells; tests/test_presence.py)."""
    height, width = mask.shape
    if height % 8 or width % 8:
        size = ((width + 7) // 8, (height + 7) // 8)
        return cv2.resize(mask, size, interpolation=cv2.INTER_AREA)
    table = cv2.integral(mask, sdepth=cv2.CV_32S)[::8, ::8]
    sums = table[1:, 1:] - table[:-1, 1:] - table[1:, :-1] + table[:-1, :-1]
    return ((sums + 32) // 64).astype(np.uint8)


class _Marks(NamedTuple):
    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    ink: np.ndarray  # pixels, from the outline (polygon area and half the perimeter)
    stroke: np.ndarray  # ink over half the perimeter: the stroke's width
    level: np.ndarray  # mean response along the outline
    px: np.ndarray  # one pixel of the mark
    py: np.ndarray
    usable: np.ndarray  # may it be (part of) a character?


def _marks(contours: list[np.ndarray], response: np.ndarray) -> _Marks:
    """Boxes, ink, stroke width and contrast of each outline, in a few numpy calls."""
    lengths = np.fromiter(map(len, contours), np.intp, len(contours))
    points = np.concatenate(contours).reshape(-1, 2).astype(np.intp)
    starts = np.zeros(len(contours), np.intp)
    np.cumsum(lengths[:-1], out=starts[1:])
    xs, ys = points[:, 0], points[:, 1]
    x0 = np.minimum.reduceat(xs, starts)
    x1 = np.maximum.reduceat(xs, starts) + 1
    y0 = np.minimum.reduceat(ys, starts)
    y1 = np.maximum.reduceat(ys, starts) + 1
    after = np.arange(1, len(points) + 1)
    after[starts + lengths - 1] = starts  # each outline is closed
    twice = np.add.reduceat(xs * ys[after] - xs[after] * ys, starts)
    ink = np.abs(twice) / 2 + lengths / 2 + 1
    stroke = ink / (lengths / 2 + 1)
    level = np.add.reduceat(response[ys, xs].astype(np.float64), starts) / lengths
    w = x1 - x0
    h = y1 - y0
    long = np.maximum(w, h)
    short = np.minimum(w, h)
    usable = (long >= 3) & (long <= 64) & (long <= 16 * np.maximum(short, 2))
    usable &= (ink >= 3) & (ink * 8 >= w * h)
    return _Marks(x0, y0, x1, y1, ink, stroke, level, xs[starts], ys[starts], usable)


def _describe_lines(parts: list[_Part]) -> Lines:
    """One row of ``FEATURES`` and one box (frame pixels) per line of two or more marks, for
    all parts at once (a few dozen numpy calls per frame, not per line)."""
    if not parts:
        return _NO_LINES
    lines, offset = [], 0
    for part in parts:
        lines.append(part.line + offset)
        offset += int(part.line.max()) + 1
    line_of = np.concatenate(lines)
    lo, hi, a0, a1, ink, stroke, level = (
        np.concatenate([getattr(p, name) for p in parts])
        for name in ("lo", "hi", "a0", "a1", "mark_ink", "stroke", "level")
    )
    part_of = np.repeat(np.arange(len(parts)), [len(p.line) for p in parts])
    count = np.bincount(line_of)
    chosen = np.nonzero(count[line_of] >= 3)[0]  # (every mark lies in its own halved mask)
    if not len(chosen):
        return _NO_LINES
    order = chosen[np.lexsort((a0[chosen], line_of[chosen]))]
    line_of, part_of = line_of[order], part_of[order]
    lo, hi, a0, a1 = lo[order], hi[order], a0[order], a1[order]
    ink, stroke, level = ink[order], stroke[order], level[order]
    first = np.nonzero(np.r_[True, line_of[1:] != line_of[:-1]])[0]
    n = np.diff(np.r_[first, len(line_of)]).astype(np.float64)
    group = np.repeat(np.arange(len(first)), n.astype(np.intp))

    def mean(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, first) / n  # type: ignore[no-any-return]

    def spread(values: np.ndarray, centre: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(mean(values * values) - centre * centre, 0))  # type: ignore[no-any-return]

    high = (hi - lo).astype(np.float64)
    along = (a1 - a0).astype(np.float64)
    log_high = np.log(high)
    mean_log = mean(log_high)
    size = np.exp(mean_log)
    top = np.minimum.reduceat(lo, first)
    bottom = np.maximum.reduceat(hi, first)
    start = a0[first]
    end = np.maximum.reduceat(a1, first)
    length = (end - start).astype(np.float64)
    middle = ((top + bottom) / 2)[group]
    crossing = (lo <= middle) & (hi >= middle)
    gap = np.r_[a0[1:] - a1[:-1], 0].astype(np.float64)
    gap[np.r_[first[1:] - 1, len(gap) - 1]] = 0  # no gap after a line's last mark
    inside = n - 1
    stroke_mean = mean(stroke)
    level_mean = mean(level)
    aspect = np.log(along / high)
    aspect_mean = mean(aspect)
    lo_f, hi_f = lo.astype(np.float64), hi.astype(np.float64)
    flags = np.array([p.flags for p in parts], np.float32)[part_of[first]]
    row = np.empty((len(first), len(FEATURES)), np.float32)
    row[:, 0] = np.log(n)
    row[:, 1] = mean_log
    row[:, 2] = flags[:, 0]
    row[:, 3] = flags[:, 2]
    row[:, 4] = flags[:, 1]
    row[:, 5] = np.log(length / size)
    row[:, 6] = (bottom - top) / size
    row[:, 7] = spread(log_high, mean_log)
    row[:, 8] = spread(lo_f, mean(lo_f)) / size
    row[:, 9] = spread(hi_f, mean(hi_f)) / size
    row[:, 10] = mean(crossing.astype(np.float64))
    row[:, 11] = np.add.reduceat(np.maximum(gap, 0), first) / inside / size
    row[:, 12] = np.maximum.reduceat(gap, first) / size
    row[:, 13] = np.add.reduceat((gap < 0).astype(np.float64), first) / inside
    row[:, 14] = np.add.reduceat(along, first) / length
    row[:, 15] = stroke_mean / size
    row[:, 16] = spread(stroke, stroke_mean) / stroke_mean
    row[:, 17] = np.add.reduceat(ink, first) / np.add.reduceat(along * high, first)
    row[:, 18] = np.log(level_mean)
    row[:, 19] = spread(level, level_mean) / level_mean
    row[:, 20] = aspect_mean
    row[:, 21] = spread(aspect, aspect_mean)
    row[:, 22] = n * size / length
    row[:, 23] = (
        np.sqrt(
            np.maximum(np.add.reduceat(gap * gap, first) / inside - (row[:, 11] * size) ** 2, 0)
        )
        / size
    )
    row[:, 24:27] = _ink_shares(parts, part_of[first], top, bottom, start, end, size).T
    vertical = flags[:, 2] > 0
    boxes = np.stack(
        [
            np.where(vertical, top, start),
            np.where(vertical, start, top),
            np.where(vertical, bottom, end),
            np.where(vertical, end, bottom),
        ],
        axis=1,
    ).astype(np.float64)
    factor = np.array([p.factor for p in parts])[part_of[first]][:, None]
    boxes[:, :2] = np.floor(boxes[:, :2] * factor)
    boxes[:, 2:] = np.ceil(boxes[:, 2:] * factor)
    return Lines(row, boxes.astype(np.intp), size * factor[:, 0])


def _ink_shares(
    parts: list[_Part],
    owner: np.ndarray,
    top: np.ndarray,
    bottom: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    band: np.ndarray,
) -> np.ndarray:
    """Per line (of part ``owner``; ``top``-``bottom`` across it, ``start``-``end`` along,
    in its part's pixels) the share of stroke pixels in its box, in a band ``band`` high
    before it and in one after it, at the resolution of the part's 8 x 8 cells: three rows,
    for all lines of all parts in one go (the summed-area tables laid end to end)."""
    tables = [part.ink for part in parts]
    flat = np.concatenate([table.ravel() for table in tables])
    base = np.cumsum([0] + [table.size for table in tables[:-1]])[owner]
    rows = np.array([table.shape[0] - 1 for table in tables])[owner]
    cols = np.array([table.shape[1] - 1 for table in tables])[owner]
    vertical = np.array([part.flags[2] for part in parts])[owner]
    lo = np.stack([top, top - band, bottom])  # across: the box, the band before, after
    hi = np.stack([bottom, top, bottom + band])
    x0, x1 = np.where(vertical, lo, start), np.where(vertical, hi, end)  # vertical: across is x
    y0, y1 = np.where(vertical, start, lo), np.where(vertical, end, hi)
    c0 = np.clip(np.floor(x0 / 8), 0, cols).astype(np.intp)
    c1 = np.clip(np.ceil(x1 / 8), 0, cols).astype(np.intp)
    r0 = np.clip(np.floor(y0 / 8), 0, rows).astype(np.intp)
    r1 = np.clip(np.ceil(y1 / 8), 0, rows).astype(np.intp)
    stride = cols + 1
    at0, at1 = base + r0 * stride, base + r1 * stride
    total = flat[at1 + c1] - flat[at0 + c1] - flat[at1 + c0] + flat[at0 + c0]
    return total / np.maximum((r1 - r0) * (c1 - c0), 1)  # type: ignore[no-any-return]


_NO_LINES = Lines(np.zeros((0, len(FEATURES)), np.float32), np.zeros((0, 4), np.intp), np.zeros(0))


class Ensemble:
    """Boosted trees of one depth, stored as full binary trees (heap order): per tree the
    feature and threshold of each inner node and the value of each leaf.

    Raises ``ValueError`` naming what is wrong when ``data`` is not a model this code reads
    (another format version, other features, trees of the wrong shape)."""

    def __init__(self, data: dict[str, Any], net: LineNet | None = None) -> None:
        version = data.get("version")
        if version != MODEL_VERSION:
            raise ValueError(f"format version {version!r}, this code reads {MODEL_VERSION}")
        if tuple(data.get("features", ())) != FEATURES:
            raise ValueError("trained on other features than this code computes")
        self.version = int(version)
        self.threshold = float(data["threshold"])
        # Lines found on the copy reduced four times: a threshold of their own (a model file
        # without one uses the first for every line).
        self.coarse_threshold = float(data.get("coarse_threshold", self.threshold))
        # The second look (``lines_net``): the net's file, beside the model file, and the
        # threshold it runs at; ``net`` is None where only the trees are wanted (training).
        self.net_file = str(data["net"])
        self.net_threshold = float(data["net_threshold"])
        # The lines to look at first (``first_and_rest``): a threshold of their own (a model
        # file without one looks at every line first).
        self.first_net_threshold = float(data.get("first_net_threshold", self.net_threshold))
        self.net = net
        self.base = float(data["base"])
        self.depth = int(data["depth"])
        self.feature = np.asarray(data["feature"], np.intp)
        self.split = np.asarray(data["split"], np.float32)
        self.leaf = np.asarray(data["leaf"], np.float64)
        trees = len(self.feature)
        if not (
            trees
            and self.feature.shape == self.split.shape == (trees, 2**self.depth - 1)
            and self.leaf.shape == (trees, 2**self.depth)
            and self.feature.min() >= 0
            and self.feature.max() < len(FEATURES)
            and 0 <= self.threshold <= self.coarse_threshold < 1
            and 0 <= self.net_threshold <= self.first_net_threshold < 1
            and Path(self.net_file).name == self.net_file
        ):
            raise ValueError("its trees, features or threshold are not of the expected shape")
        self._feature_flat = self.feature.ravel()
        self._split_flat = self.split.ravel()
        self._leaf_flat = self.leaf.ravel()

    def score(self, features: np.ndarray) -> np.ndarray:
        """The probability, per row, that it is a line of text."""
        # Per row and tree, the node it is at, walked down one level a step; the trees'
        # arrays are read flat (one gather a step, not a two-index one: ~2x faster).
        inner = 2**self.depth - 1
        trees = np.arange(len(self.feature))
        node = np.zeros((len(features), len(trees)), np.intp)
        for _ in range(self.depth):
            at = node + trees * inner
            value = np.take_along_axis(features, self._feature_flat[at], axis=1)
            node = 2 * node + 1 + (value > self._split_flat[at])
        margin = self.base + self._leaf_flat[node - inner + trees * (inner + 1)].sum(axis=1)
        return 1 / (1 + np.exp(-margin))  # type: ignore[no-any-return]

    def sends(self, features: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Which lines go to the detector by the trees (:func:`sends`, with this model's
        thresholds)."""
        return sends(features, scores, self.threshold, self.coarse_threshold)

    def net_sends(self, picture: np.ndarray, lines: Lines, rows: np.ndarray) -> np.ndarray:
        """Of the lines ``rows`` (those the trees send), which the net sends too."""
        return self.net_scores(picture, lines, rows) >= self.net_threshold

    def net_scores(self, picture: np.ndarray, lines: Lines, rows: np.ndarray) -> np.ndarray:
        """The net's score of each of the lines ``rows``: looked at ``NET_BATCH`` lines at a
        time, so that a frame of many lines (a page of text, or one made to have them) costs
        memory for a batch, not for all its crops at once."""
        net = cast(LineNet, self.net)
        planes = _planes(picture)
        looks = np.zeros(len(rows), np.float64)
        for start in range(0, len(rows), NET_BATCH):
            part = rows[start : start + NET_BATCH]
            looks[start : start + len(part)] = net.score(_line_crops(planes, lines, part))
        return looks


def sends(
    features: np.ndarray, scores: np.ndarray, threshold: float, coarse_threshold: float
) -> np.ndarray:
    """Which lines go to the detector: a score at ``threshold`` or above, and for a line
    found on the copy reduced four times at ``coarse_threshold`` or above.

    Why two: the reduced copy is there for large fonts, and text large enough to be seen
    there scores near 1 (fonts of 8 to 64 px over CT: 0.92-1.0, and nearly always also seen
    at full size), while anatomy seen there (organ outlines, ribs, vessels as marks of 20-40
    px) sent most of the text-free CT and CR frames that went to the detector.
    ``tools/train_presence.py`` chooses both on held-out frames."""
    coarse = features[:, _COARSE_FEATURE] > 0.5
    return (scores >= threshold) & (~coarse | (scores >= coarse_threshold))


def line_crops(picture: np.ndarray, lines: Lines, rows: np.ndarray) -> np.ndarray:
    """The net's input (``lines_net.crops``) for the lines ``rows`` of a picture."""
    return _line_crops(_planes(picture), lines, rows)


def _line_crops(planes: list[np.ndarray], lines: Lines, rows: np.ndarray) -> np.ndarray:
    features = lines.features[rows]
    return crops(
        planes,
        lines.boxes[rows],
        features[:, _DARK_FEATURE] > 0.5,
        features[:, _VERTICAL_FEATURE] > 0.5,
    )


def load_model(path: Path = MODEL) -> Ensemble:
    """The model the check runs with, read and checked once (the stage calls this when it is
    built, so that a missing or foreign file stops the node at start-up).

    Raises :class:`~dicomnode.errors.ConfigError` naming the file and the fix.
    """
    if path == MODEL:
        return _model()
    return _read(path)


@lru_cache(maxsize=1)
def _model() -> Ensemble:
    return _read(MODEL)


def _read(path: Path) -> Ensemble:
    fix = "reinstall dicomnode, or run tools/train_presence.py, or set pixels.presence: thorough"
    try:
        data = json.loads(path.read_text())
        model = Ensemble(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the learned presence check's model {path} cannot be used "
            f"({type(exc).__name__}: {exc}); {fix}"
        ) from None
    model.net = load_net(path.parent / model.net_file)
    return model
