"""Rectangles on a frame, and the arithmetic the pixel stage needs on them."""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Box", "merge", "union_area"]


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
