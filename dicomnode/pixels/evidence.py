"""What the pixel stage saw and did, kept so that a person can check it without OCR again.

Per frame, boxes in the frame's own pixels, ``[x0, y0, x1, y1]`` (``x1``/``y1`` exclusive),
each of one :class:`Kind`; never the text that was read. The quarantine sidecar of a
``text-remains`` item carries :meth:`Evidence.as_dict`::

    "evidence": {"frames": [{"index": 0, "boxes": [{"box": [x0, y0, x1, y1], "kind": "found"}]}],
                 "frames_total": 12, "boxes_total": 40, "truncated": false,
                 "summary": "text was still found in 2 place(s) on frame 1 after removal, ..."}

``index`` counts from 0; the sentences count frames from 1, as a viewer does. Frames without
boxes are left out; after :data:`MAX_BOXES` boxes the coordinates stop (``truncated``, and the
summary says so) while the counts go on. The ``cleaned`` audit line has the counts only
(:meth:`Evidence.counts`).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from dicomnode.pixels.boxes import Box

__all__ = ["MAX_BOXES", "Evidence", "Kind"]

MAX_BOXES = 2000  # coordinates kept per instance; a sidecar stays a few hundred kB at most


class Kind(StrEnum):
    """Why a box is on a frame."""

    FOUND = "found"  # detected as text before removal
    REMOVED = "removed"  # filled or inpainted
    REGION = "region"  # a known device region of the pixel policy
    REMAINS = "remains"  # still read as text by the verification after removal


class Evidence:
    """Boxes per frame and kind for one instance (see the module)."""

    def __init__(self, frames_total: int, width: int, height: int, limit: int = MAX_BOXES):
        self.frames_total = frames_total
        self.width = width
        self.height = height
        self.limit = limit
        self._frames: dict[int, list[dict[str, Any]]] = {}
        self._kept = 0
        self._remains_kept = 0
        self._counts = {kind.value: 0 for kind in Kind}
        self._remains: dict[int, list[Box]] = {}  # for the summary (bounded like the rest)

    def add(self, index: int, kind: Kind, boxes: Iterable[Box]) -> None:
        """Record ``boxes`` of ``kind`` on frame ``index`` (0-based)."""
        for box in boxes:
            self._counts[kind.value] += 1
            if kind is Kind.REMAINS:
                self._remains.setdefault(index, [])
                if len(self._remains[index]) < self.limit:
                    self._remains[index].append(box)
                # What verification still read is what a reviewer must see: listed even when
                # found, removed and region boxes have filled the cap (up to its own ``limit``).
                if self._remains_kept >= self.limit:
                    continue
                self._remains_kept += 1
            elif self._kept - self._remains_kept >= self.limit:
                continue
            self._kept += 1
            entry = {
                "box": [int(box.x0), int(box.y0), int(box.x1), int(box.y1)],
                "kind": kind.value,
            }
            self._frames.setdefault(index, []).append(entry)

    def counts(self) -> dict[str, int]:
        """Boxes per kind over all frames (for the audit trail: counts, no coordinates)."""
        return dict(self._counts)

    @property
    def remains(self) -> int:
        return self._counts[Kind.REMAINS.value]

    @property
    def truncated(self) -> bool:
        return sum(self._counts.values()) > self._kept

    def as_dict(self) -> dict[str, Any]:
        """The sidecar's ``evidence`` (see the module)."""
        return {
            "frames": [
                {"index": index, "boxes": self._frames[index]} for index in sorted(self._frames)
            ],
            "frames_total": self.frames_total,
            "boxes_total": sum(self._counts.values()),
            "truncated": self.truncated,
            "summary": self.summary(),
        }

    def summary(self) -> str:
        """One sentence of what was found, removed and left, and where (no text)."""
        parts = []
        if self._remains:
            parts.append(self._remains_sentence())
        found, removed = self._counts[Kind.FOUND.value], self._counts[Kind.REMOVED.value]
        regions = self._counts[Kind.REGION.value]
        done = f"{found} text box(es) found and {removed} removed"
        if regions:
            done += f", {regions} of them known device region(s)"
        parts.append(f"{done} over {self.frames_total} frame(s)")
        if self.truncated:
            parts.append(
                f"only {self._kept} of {sum(self._counts.values())} boxes are listed (what "
                "remains first)"
            )
        return "; ".join(parts)

    def _remains_sentence(self) -> str:
        frames = sorted(self._remains)
        boxes = [b for index in frames for b in self._remains[index]]
        return (
            f"text was still found in {self.remains} place(s) on "
            f"{_frames(frames, self.frames_total)} after removal, {self._where(boxes)}"
        )

    def _where(self, boxes: list[Box]) -> str:
        """Where on the frame, in words an administrator can find on the image: the top or
        bottom rows, the left or right columns, or the part of the middle."""
        width, height = self.width or 1, self.height or 1
        groups: dict[str, list[Box]] = {}
        for box in boxes:
            if box.y1 <= height * 0.25:
                side = "top"
            elif box.y0 >= height * 0.75:
                side = "bottom"
            elif box.x1 <= width * 0.25:
                side = "left"
            elif box.x0 >= width * 0.75:
                side = "right"
            else:
                side = "middle"
            groups.setdefault(side, []).append(box)
        said = []
        for side in ("top", "bottom", "left", "right", "middle"):
            group = groups.get(side)
            if not group:
                continue
            x0, y0 = min(b.x0 for b in group), min(b.y0 for b in group)
            x1, y1 = max(b.x1 for b in group), max(b.y1 for b in group)
            where = {
                "top": f"in the top {y1} rows",
                "bottom": f"in the bottom {height - y0} rows",
                "left": f"in the left {x1} columns",
                "right": f"in the right {width - x0} columns",
                "middle": f"in the middle (columns {x0}-{x1}, rows {y0}-{y1})",
            }[side]
            said.append(f"{len(group)} {where}" if len(groups) > 1 else where)
        return ", ".join(said) + f" (of {width} x {height})"


def _frames(indices: list[int], total: int) -> str:
    """``frame 3``, ``frames 1, 2 and 5``, ``frames 1-40`` (counted from 1)."""
    numbers = [i + 1 for i in indices]
    if len(numbers) == 1:
        return f"frame {numbers[0]}" + (f" of {total}" if total > 1 else "")
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 3:
        return f"frames {numbers[0]}-{numbers[-1]} of {total}"
    shown = ", ".join(str(n) for n in numbers[:10])
    more = f" and {len(numbers) - 10} more" if len(numbers) > 10 else ""
    return f"frames {shown}{more} of {total}"
