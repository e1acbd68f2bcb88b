"""The pixel stage: find burned-in text, remove it, prove it is gone.

Per instance: the policy decides (on the header as received) whether to check it. Per frame
(identical frames, found by hash, are cleaned once): a cheap presence check; detection on its
candidates; in sensitive-text mode, recognition keeps only the boxes whose words are PHI;
known device regions are added; the remover removes; verification runs the presence check
and detection again on the whole cleaned frame. Text found by verification is removed once
more with a solid fill; if text is still found, the instance is quarantined (``text-remains``).
A failing detector or remover raises, which quarantines too: nothing uncleaned is forwarded.

Nothing is decoded before the header, and each compressed frame's own header, have been
checked against ``pixels.max_decoded_mb`` and ``pixels.max_frame_mb`` (``too-large``, with the
numbers); frames are then decoded, cleaned and written one at a time (``codec``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.config import PixelConfig
from dicomnode.errors import InstanceError
from dicomnode.limits import out_of_memory
from dicomnode.pixels import codec
from dicomnode.pixels.boxes import Box
from dicomnode.pixels.detect import TextDetector, doubtful, find_text, make_detector
from dicomnode.pixels.policy import Decision, PixelPolicy, load_policy
from dicomnode.pixels.presence import candidates, strokes
from dicomnode.pixels.remove import FillRemover, Remover, make_remover
from dicomnode.pixels.sensitive import SensitiveText

log = logging.getLogger(__name__)

__all__ = ["FrameResult", "PixelStage", "TextRemainsError"]

CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")


class TextRemainsError(InstanceError):
    reason = "text-remains"


class PixelStageError(InstanceError):
    reason = "pixel-stage-failed"


class _Seen:
    """A distinct frame (by hash): whether cleaning changed it, and its writer slot once
    written, so that an identical frame is neither cleaned nor encoded twice."""

    __slots__ = ("changed", "slot")

    def __init__(self, changed: bool) -> None:
        self.changed = changed
        self.slot: int | None = None


class FrameResult:
    """What happened to one frame (counts and boxes; the boxes carry no text)."""

    __slots__ = ("boxes", "cleaned", "seconds")

    def __init__(self, cleaned: np.ndarray | None, boxes: list[Box], seconds: dict[str, float]):
        self.cleaned = cleaned
        self.boxes = boxes
        self.seconds = seconds


class PixelStage:
    """The pipeline stage; also used by ``dicomnode scrub`` and the evaluation."""

    name = "pixels"

    def __init__(
        self,
        settings: PixelConfig,
        *,
        policy: PixelPolicy | None = None,
        detector: TextDetector | None = None,
        remover: Remover | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy or load_policy(settings.policy)
        self.detector = detector or make_detector(
            settings.detector.backend,
            threads=settings.detector.threads,
            device=settings.detector.device,
            max_side=settings.detector.max_side,
            det_model_dir=settings.detector.det_model_dir,
            rec_model_dir=settings.detector.rec_model_dir,
        )
        self.remover = remover or make_remover(
            settings.remover.method,
            model_path=settings.remover.model_path,
            device=settings.remover.device,
            steps=settings.remover.steps,
            crop=settings.remover.crop,
        )
        self._fill = FillRemover()
        self.sensitive = settings.mode == "sensitive-text"
        self.limits = codec.PixelLimits(settings.max_decoded_mb, settings.max_frame_mb)

    # -- the stage -------------------------------------------------------------------------

    def __call__(self, item: Any) -> None:
        report = self.clean(item.dataset, item.header, item.identity)
        item.notes["pixels"] = report

    def clean(
        self, ds: Dataset, header: dict[str, Any], identity: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """Clean ``ds`` in place; returns counts and timings (no PHI).

        Raises ``too-large`` (the header or a frame's stream declares more than
        ``pixels.max_decoded_mb``/``max_frame_mb``, or the worker ran out of memory),
        ``pixel-decode-failed``, ``text-remains`` or ``pixel-stage-failed``.
        """
        decision = self.policy.decide(header)
        if not decision.check:
            return {"checked": False, "why": decision.why}
        if "PixelData" not in ds:
            return {"checked": False, "why": "no pixel data"}
        try:
            return self._clean(ds, decision, identity)
        except MemoryError:
            raise out_of_memory("decoding or cleaning the pixel data") from None
        except InstanceError:
            raise
        except Exception as exc:  # the writer or an encoder: nothing uncleaned goes on
            raise PixelStageError(
                f"the pixel stage failed writing the pixel data ({type(exc).__name__})"
            ) from exc

    def _clean(self, ds: Dataset, decision: Decision, identity: tuple[str, ...]) -> dict[str, Any]:
        """One frame at a time: decode, hash, clean (once per distinct frame), write.

        Nothing is written while every frame so far is unchanged. At the first changed frame
        a writer starts, the unchanged frames before it are decoded again and written, and
        from then on every frame is written as it goes; an identical frame reuses the bytes
        already encoded for it. So the working set is one decoded frame and the output.
        """
        source = codec.open_frames(ds, self.limits)
        phi = SensitiveText(identity) if self.sensitive else None
        done: dict[bytes, _Seen] = {}
        writer: codec.FrameWriter | None = None
        changed = 0
        boxes = 0
        seconds: dict[str, float] = {}
        for index, frame in enumerate(source.frames()):
            key = hashlib.blake2b(frame.tobytes(), digest_size=16).digest()
            seen = done.get(key)
            if seen is None:
                result = self._clean_one(frame, index, source.photometric, ds, decision, phi)
                boxes += len(result.boxes)
                for name, value in result.seconds.items():
                    seconds[name] = seconds.get(name, 0.0) + value
                seen = done[key] = _Seen(result.cleaned is not None)
                if result.cleaned is not None:
                    if writer is None:
                        writer = self._writer(ds, source, index)
                    frame = result.cleaned
            if seen.changed:
                changed += 1
            if writer is None:
                continue
            if seen.slot is None:
                seen.slot = writer.add(frame)
            else:
                writer.repeat(seen.slot)
        what = "unchanged"
        if writer is not None:
            what = writer.finish()
            _mark_derived(ds)
        _stamp(ds, what)
        return {
            "checked": True,
            "why": decision.why,
            "frames": len(source),
            "distinct_frames": len(done),
            "frames_changed": changed,
            "boxes": boxes,
            "pixel_data": what,
            "seconds": seconds,
        }

    def _clean_one(
        self,
        frame: np.ndarray,
        index: int,
        photometric: str,
        ds: Dataset,
        decision: Decision,
        phi: SensitiveText | None,
    ) -> FrameResult:
        try:
            return self.clean_frame(frame, photometric, ds, decision, phi)
        except (InstanceError, MemoryError):
            raise
        except Exception as exc:
            raise PixelStageError(
                f"the pixel stage failed on frame {index + 1} ({type(exc).__name__})"
            ) from exc

    @staticmethod
    def _writer(ds: Dataset, source: codec.FrameSource, first_changed: int) -> codec.FrameWriter:
        """A writer that has already written the unchanged frames before ``first_changed``."""
        writer = codec.FrameWriter(ds, source.photometric, source.syntax, source.lossy, len(source))
        for frame in source.frames(stop=first_changed):
            writer.add(frame)
        return writer

    def clean_frame(
        self,
        frame: np.ndarray,
        photometric: str,
        ds: Dataset,
        decision: Decision,
        phi: SensitiveText | None,
    ) -> FrameResult:
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        picture = codec.display(frame, photometric, ds)
        height, width = picture.shape[:2]
        regions = [b.clipped(width, height) for b in decision.regions]
        found = candidates(picture)
        seconds["presence"] = time.perf_counter() - started
        boxes: list[Box] = []
        if found:
            started = time.perf_counter()
            boxes = self._text(picture, found, phi)
            seconds["detect"] = time.perf_counter() - started
        targets = [b for b in regions + boxes if b.area > 0]
        if decision.keep_only:
            targets += _outside(decision.keep_only, width, height)
        if not targets:
            return FrameResult(None, [], seconds)
        fill = codec.fill_value(frame, photometric, ds)
        started = time.perf_counter()
        cleaned = self.remover.remove(frame, picture, targets, fill)
        seconds["remove"] = time.perf_counter() - started
        started = time.perf_counter()
        removed = list(targets)
        for attempt in range(2):
            leftover = self._remaining(cleaned, photometric, ds, phi, removed, found)
            if not leftover:
                break
            if attempt == 1:
                raise TextRemainsError(
                    f"text was still found in {len(leftover)} place(s) after removal; the "
                    "instance is quarantined rather than forwarded"
                )
            # Second pass: a solid fill over what verification still sees.
            cleaned = self._fill.remove(cleaned, picture, leftover, fill)
            removed += leftover
        seconds["verify"] = time.perf_counter() - started
        return FrameResult(cleaned, removed, seconds)

    def _remaining(
        self,
        frame: np.ndarray,
        photometric: str,
        ds: Dataset,
        phi: SensitiveText | None,
        removed: list[Box],
        examined: list[Box],
    ) -> list[Box]:
        """Verification: text the detector still finds anywhere in the cleaned frame.

        The presence check runs on the whole frame again; detection runs where something
        changed (around what was removed) and on any candidate the first pass did not
        examine. Elsewhere the pixels, and so the detector's answer, are the first pass's.
        """
        picture = codec.display(frame, photometric, ds)
        found = candidates(picture)
        regions = [
            c
            for c in found
            if any(c.touches(r, 24) for r in removed) or not any(c.touches(e) for e in examined)
        ]
        if not regions:
            return []
        found_text = self._text(picture, regions, phi)
        if not found_text:
            return []
        # A filled box on a textured background has edges a detector may take for text;
        # text left behind has strokes outside what was removed. Only that counts.
        # And the edge of a box beside an unrelated line (a vessel) still is not text: what
        # verification keeps must be readable, at least two characters.
        ink = strokes(picture)
        for box in removed:  # the box's outline, not its inside: text left inside counts
            for y0, y1, x0, x1 in (
                (box.y0 - 3, box.y0 + 3, box.x0 - 3, box.x1 + 3),
                (box.y1 - 3, box.y1 + 3, box.x0 - 3, box.x1 + 3),
                (box.y0 - 3, box.y1 + 3, box.x0 - 3, box.x0 + 3),
                (box.y0 - 3, box.y1 + 3, box.x1 - 3, box.x1 + 3),
            ):
                ink[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 0
        inked = [b for b in found_text if int(ink[b.y0 : b.y1, b.x0 : b.x1].sum()) >= 8]
        if not inked or phi is not None:
            return inked  # sensitive mode has read them already
        read = self.detector.recognize(picture, inked)
        return [b for b in read if sum(c.isalnum() for c in (b.text or "")) >= 2 and b.score >= 0.5]

    def _text(
        self, picture: np.ndarray, regions: list[Box], phi: SensitiveText | None
    ) -> list[Box]:
        """Text boxes near the candidate regions: all of them (all-text mode), or those whose
        words are PHI (sensitive-text mode). Doubtful boxes are read to confirm them."""
        boxes = find_text(self.detector, picture, regions)
        if phi is not None:
            read = self.detector.recognize(picture, boxes) if boxes else []
            return [b for b in read if phi.is_sensitive(b.text or "", b.score)]
        sure = [b for b in boxes if not doubtful(b)]
        unsure = [b for b in boxes if doubtful(b)]
        if unsure:
            for box in self.detector.recognize(picture, unsure):
                text = (box.text or "").strip()
                if sum(c.isalnum() for c in text) >= 2 and box.score >= 0.5:
                    sure.append(box)
        return sure


def _outside(keep: tuple[Box, ...], width: int, height: int) -> list[Box]:
    """Bands covering everything outside the bounding box of the kept regions."""
    x0, y0 = min(b.x0 for b in keep), min(b.y0 for b in keep)
    x1, y1 = max(b.x1 for b in keep), max(b.y1 for b in keep)
    bands = [
        Box(0, 0, width, y0),
        Box(0, y1, width, height),
        Box(0, y0, x0, y1),
        Box(x1, y0, width, y1),
    ]
    return [Box(b.x0, b.y0, b.x1, b.y1, source="region") for b in bands if b.area > 0]


def _mark_derived(ds: Dataset) -> None:
    values = list(ds.get("ImageType") or ["DERIVED", "SECONDARY"])
    values[0] = "DERIVED"
    if len(values) == 1:
        values.append("SECONDARY")
    ds.ImageType = values


def _stamp(ds: Dataset, what: str) -> None:
    """BurnedInAnnotation NO and the Clean Pixel Data code: the pixels were checked."""
    ds.BurnedInAnnotation = "NO"
    sequence = ds.get("DeidentificationMethodCodeSequence")
    items = list(sequence) if sequence is not None else []
    if not any(str(i.get("CodeValue", "")) == CLEAN_PIXEL_DATA[0] for i in items):
        item = Dataset()
        item.CodeValue = CLEAN_PIXEL_DATA[0]
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = CLEAN_PIXEL_DATA[1]
        items.append(item)
        ds.DeidentificationMethodCodeSequence = items
    methods = [str(m) for m in (ds.get("DeidentificationMethod") or [])]
    if isinstance(ds.get("DeidentificationMethod"), str):
        methods = [str(ds.DeidentificationMethod)]
    note = f"Clean Pixel Data: {what}"[:64]
    if note not in methods:
        ds.DeidentificationMethod = [*methods, note]
