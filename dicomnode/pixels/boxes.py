"""Rectangles on a frame, and the arithmetic the pixel stage needs on them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["Box", "Boxes", "corners", "held", "merge", "touching", "union_area"]

#: Pairs of a pair comparison at a time (~8 MB for each int64 temporary): a frame made to
#: have tens of thousands of boxes costs array work in bounded memory, not a Python loop
#: over every pair.
_PAIRS = 1 << 20


@dataclass(frozen=True)
class Box:
    """``[x0, x1) x [y0, y1)`` in pixels; what found it, how sure, and the text if read."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float = 1.0
    source: str = "ocr"  # "ocr", "region" (known device region), "presence"
    text: str | None = None
    #: The height of the characters in it, where a presence check measured them (frame
    #: pixels; 0: not known). The detector then looks at it at a size chosen for them.
    glyph: float = 0.0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    def scaled(self, factor: float) -> Box:
        if factor == 1:
            return self
        return replace(
            self,
            x0=int(self.x0 * factor),
            y0=int(self.y0 * factor),
            x1=round(self.x1 * factor + 0.5),
            y1=round(self.y1 * factor + 0.5),
            glyph=self.glyph * factor,
        )

    def padded(self, pad: int, width: int, height: int) -> Box:
        return replace(
            self,
            x0=max(0, self.x0 - pad),
            y0=max(0, self.y0 - pad),
            x1=min(width, self.x1 + pad),
            y1=min(height, self.y1 + pad),
        )

    def clipped(self, width: int, height: int) -> Box:
        return replace(
            self,
            x0=max(0, min(self.x0, width)),
            y0=max(0, min(self.y0, height)),
            x1=max(0, min(self.x1, width)),
            y1=max(0, min(self.y1, height)),
        )

    def shifted(self, dx: int, dy: int) -> Box:
        return replace(self, x0=self.x0 + dx, y0=self.y0 + dy, x1=self.x1 + dx, y1=self.y1 + dy)

    def intersection(self, other: Box) -> int:
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return w * h if w > 0 and h > 0 else 0

    def covered_by(self, others: list[Box], fraction: float = 0.9) -> bool:
        """Whether ``fraction`` of this box lies inside the union of ``others`` (approximately:
        the sum of intersections, which is exact for disjoint boxes)."""
        if self.area == 0:
            return True
        return sum(self.intersection(o) for o in others) >= fraction * self.area

    def touches(self, other: Box, gap: int = 0) -> bool:
        return (
            self.x0 - gap < other.x1
            and other.x0 - gap < self.x1
            and self.y0 - gap < other.y1
            and other.y0 - gap < self.y1
        )


def merge(boxes: list[Box], gap: int = 0) -> list[Box]:
    """Union boxes that overlap (or are within ``gap``) until none do."""
    pending = sorted(boxes, key=lambda b: (b.y0, b.x0))
    merged: list[Box] = []
    changed = True
    while changed:
        changed = False
        merged = []
        for box in pending:
            for i, other in enumerate(merged):
                if box.touches(other, gap):
                    merged[i] = Box(
                        min(box.x0, other.x0),
                        min(box.y0, other.y0),
                        max(box.x1, other.x1),
                        max(box.y1, other.y1),
                        max(box.score, other.score),
                        other.source,
                    )
                    changed = True
                    break
            else:
                merged.append(box)
        pending = merged
    return merged


def union_area(boxes: list[Box]) -> int:
    return sum(b.area for b in merge(boxes))


#: Boxes for :func:`touching` and :func:`held`: a list, or its :func:`corners` (made once
#: where the same boxes are compared again and again).
Boxes = list[Box] | np.ndarray


def corners(boxes: Boxes) -> np.ndarray:
    """``x0, y0, x1, y1`` of each box, one row a box."""
    if isinstance(boxes, np.ndarray):
        return boxes
    return np.array([(b.x0, b.y0, b.x1, b.y1) for b in boxes], np.int64).reshape(-1, 4)


def touching(boxes: Boxes, others: Boxes, gap: int = 0) -> np.ndarray:
    """For each of ``boxes``, whether it lies within ``gap`` of one of ``others``
    (:meth:`Box.touches`), as a boolean array."""
    b, o = corners(boxes), corners(others)
    near = np.zeros(len(b), bool)
    if not len(b) or not len(o):
        return near
    rows = max(1, _PAIRS // len(o))
    for start in range(0, len(b), rows):
        part = b[start : start + rows, None, :]
        near[start : start + rows] = (
            (part[..., 0] - gap < o[None, :, 2])
            & (o[None, :, 0] - gap < part[..., 2])
            & (part[..., 1] - gap < o[None, :, 3])
            & (o[None, :, 1] - gap < part[..., 3])
        ).any(axis=1)
    return near


def held(boxes: Boxes, others: Boxes, fraction: float = 1.0) -> np.ndarray:
    """For each of ``boxes``, whether one of ``others`` holds ``fraction`` of its area
    (:meth:`Box.intersection`; 1.0: wholly inside), as a boolean array. A box without area
    is held by any box."""
    b, o = corners(boxes), corners(others)
    inside = np.zeros(len(b), bool)
    if not len(b) or not len(o):
        return inside
    area = np.maximum(0, b[:, 2] - b[:, 0]) * np.maximum(0, b[:, 3] - b[:, 1])
    need = fraction * area
    rows = max(1, _PAIRS // len(o))
    for start in range(0, len(b), rows):
        part = b[start : start + rows, None, :]
        w = np.minimum(part[..., 2], o[None, :, 2]) - np.maximum(part[..., 0], o[None, :, 0])
        h = np.minimum(part[..., 3], o[None, :, 3]) - np.maximum(part[..., 1], o[None, :, 1])
        overlap = np.where((w > 0) & (h > 0), w * h, 0)
        inside[start : start + rows] = (overlap >= need[start : start + rows, None]).any(axis=1)
    return inside
