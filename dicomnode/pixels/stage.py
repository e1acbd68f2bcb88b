"""The pixel stage: find burned-in text, remove it, prove it is gone.

Per instance: the policy decides (on the header as received) whether to check it, and
``presence.choose`` which presence check runs: the learned one (``lines``) where burned-in
text is the exception, the thorough one (strokes) elsewhere. Per frame (identical frames,
found by hash, are cleaned once): the presence check; detection on its candidates (the learned
check's: the lines it scores highest first, ``lines.first_and_rest``); where the learned check
led to text, its other lines and the thorough check's candidates too (a frame with text is
searched as thoroughly as before); in sensitive-text mode, where PHI found is what leads
further, every learned line at once, and recognition keeps only the boxes whose words
are PHI; known device regions are added; the remover removes; verification runs the thorough
check and detection again on the whole cleaned frame. Text found by verification is removed once
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

import cv2
import numpy as np
from pydicom.dataset import Dataset

from dicomnode.config import PixelConfig
from dicomnode.errors import InstanceError, panicked
from dicomnode.limits import out_of_memory
from dicomnode.pixels import codec
from dicomnode.pixels.boxes import Box, held, merge, touching
from dicomnode.pixels.detect import (
    Remembering,
    TextDetector,
    doubtful,
    find_text,
    line_height,
    make_detector,
)
from dicomnode.pixels.evidence import Evidence, Kind
from dicomnode.pixels.lines import COARSE_SIDE, first_and_rest, load_model
from dicomnode.pixels.policy import Decision, PixelPolicy, load_policy
from dicomnode.pixels.presence import Presence, candidates, choose, strokes
from dicomnode.pixels.remove import FillRemover, Remover, make_remover
from dicomnode.pixels.sensitive import SensitiveText

log = logging.getLogger(__name__)

__all__ = ["FrameResult", "PixelStage", "TextRemainsError"]

CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")
#: Frames this large or smaller on which text was found are looked at closer too.
CLOSER_LOOK_SIDE = 128
#: Text boxes, or learned candidates on frames it also looks at reduced (``COARSE_SIDE``),
#: this high (pixels) may be pieces of a word of large characters (``PixelStage._wide``):
#: the learned check sees letters over 64 px high on its reduced copy only, a few at a time.
LARGE_TEXT = 48


class TextRemainsError(InstanceError):
    """Text was still read after removal. Raised once every frame is cleaned and written, so
    the data set holds the cleaned copy (``keeps_clean_copy``: the pipeline keeps it beside
    the quarantined original for a person to look at and release); ``evidence`` is what the
    sidecar records (boxes per frame, never text), ``counts`` the boxes per kind."""

    reason = "text-remains"
    keeps_clean_copy = True

    def __init__(self, message: str, evidence: Evidence | None = None) -> None:
        super().__init__(message)
        self.evidence: dict[str, Any] = evidence.as_dict() if evidence is not None else {}
        self.counts: dict[str, int] = evidence.counts() if evidence is not None else {}


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
    """What happened to one frame: the cleaned frame (None: unchanged) and the boxes of each
    kind (:class:`~dicomnode.pixels.evidence.Kind`); the boxes carry no text."""

    __slots__ = ("boxes", "cleaned", "found", "regions", "remains", "seconds")

    def __init__(
        self,
        cleaned: np.ndarray | None,
        boxes: list[Box],
        seconds: dict[str, float],
        *,
        found: list[Box] | None = None,
        regions: list[Box] | None = None,
        remains: list[Box] | None = None,
    ):
        self.cleaned = cleaned
        self.boxes = boxes  # removed (filled or inpainted)
        self.seconds = seconds
        self.found = found or []
        self.regions = regions or []
        self.remains = remains or []

    def record(self, evidence: Evidence, index: int) -> None:
        evidence.add(index, Kind.FOUND, self.found)
        evidence.add(index, Kind.REGION, self.regions)
        evidence.add(index, Kind.REMOVED, self.boxes)
        evidence.add(index, Kind.REMAINS, self.remains)


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
        # OpenCV's own thread pool too gets pixels.detector.threads (the process's setting):
        # the node runs a worker process per core, and splitting each operation over a pool
        # of threads only adds CPU time (the learned presence check of a 512 x 512 CT slice
        # took about 1.6 times the CPU with OpenCV's default 2 threads here; same boxes).
        threads = settings.detector.threads
        cv2.setNumThreads(0 if threads == 1 else threads)
        self.policy = policy or load_policy(settings.policy, settings.site_regions)
        self.detector = detector or make_detector(
            settings.detector.backend,
            threads=settings.detector.threads,
            device=settings.detector.device,
            max_side=settings.detector.max_side,
            det_model_dir=settings.detector.det_model_dir,
            rec_model_dir=settings.detector.rec_model_dir,
        )
        # Every look of the stage goes through this: a frame's overlay, the same on every
        # frame of a loop, is looked at and read once an instance (``Remembering``).
        self._looks = Remembering(self.detector)
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
        self.presence = Presence(settings.presence)
        if self.presence is not Presence.THOROUGH:
            load_model()  # a missing or foreign model file stops the node now, not mid-series

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
        floats = [k for k in codec.FLOAT_PIXELS if k in ds]
        if "PixelData" not in ds and not floats:
            return {"checked": False, "why": "no pixel data"}
        if len(floats) + ("PixelData" in ds) > 1:  # PS3.3 C.7.6.3: one of the three
            raise codec.PixelDecodeError(
                f"the instance holds {' and '.join(['PixelData', *floats][-2:])}; an image has "
                "one kind of pixel data. Ask the sender for a corrected instance"
            )
        try:
            if floats:
                return self._clean_floats(ds, header, decision, identity, floats[0])
            return self._clean(ds, header, decision, identity)
        except MemoryError:
            raise out_of_memory("decoding or cleaning the pixel data") from None
        except InstanceError:
            raise
        except BaseException as exc:  # the writer or an encoder: nothing uncleaned goes on
            if not (isinstance(exc, Exception) or panicked(exc)):
                raise
            raise PixelStageError(
                f"the pixel stage failed writing the pixel data ({type(exc).__name__})"
            ) from exc
        finally:
            self._looks.forget()  # nothing read in one instance is kept for the next

    def _clean(
        self,
        ds: Dataset,
        header: dict[str, Any],
        decision: Decision,
        identity: tuple[str, ...],
    ) -> dict[str, Any]:
        """One frame at a time: decode, hash, clean (once per distinct frame), write.

        Nothing is written while every frame so far is unchanged. At the first changed frame
        a writer starts, the unchanged frames before it are decoded again and written, and
        from then on every frame is written as it goes; an identical frame reuses the bytes
        already encoded for it. So the working set is one decoded frame and the output.
        """
        source = codec.open_frames(ds, self.limits)
        phi = SensitiveText(identity) if self.sensitive else None
        check, check_why = choose(
            self.presence, header, source.photometric, bool(decision.regions or decision.keep_only)
        )
        done: dict[bytes, _Seen] = {}
        results: dict[bytes, FrameResult] = {}
        writer: codec.FrameWriter | None = None
        changed = 0
        boxes = 0
        seconds: dict[str, float] = {}
        evidence = Evidence(len(source), int(ds.get("Columns") or 0), int(ds.get("Rows") or 0))
        # A single frame has no twin to find: its key is its index, not a hash (and should
        # the decoder yield more frames than declared, none is taken for another's twin).
        several = len(source) > 1
        for index, frame in enumerate(source.frames()):
            if several:
                key = hashlib.blake2b(frame.tobytes(), digest_size=16).digest()
            else:
                key = index.to_bytes(8, "little")
            seen = done.get(key)
            if seen is None:
                result = self._clean_one(frame, index, source.photometric, ds, decision, phi, check)
                boxes += len(result.boxes)
                for name, value in result.seconds.items():
                    seconds[name] = seconds.get(name, 0.0) + value
                seen = done[key] = _Seen(result.cleaned is not None)
                if result.found or result.regions or result.boxes or result.remains:
                    results[key] = result  # boxes only: the cleaned pixels are not kept
                if result.cleaned is not None:
                    if writer is None:
                        writer = self._writer(ds, source, index)
                    frame = result.cleaned
                result.cleaned = None
            if key in results:
                results[key].record(evidence, index)
            if seen.changed:
                changed += 1
            if writer is None:
                continue
            if seen.slot is None:
                seen.slot = writer.add(frame)
            else:
                writer.repeat(seen.slot)
        what = "unchanged"
        removed: list[str] | None = []
        unused_bits = source.unused_bits  # frames whose bits outside BitsStored held more
        if writer is None and unused_bits:
            # What was checked is each pixel's BitsStored bits: the frames are written anew
            # from those, without what the rest of each word held (a legacy overlay: text).
            writer = self._writer(ds, source, len(source))
            what = f"{writer.finish()}, for what bits outside BitsStored held"
            removed = None
        elif writer is None:
            # Frames kept as received keep their codestreams only: what a decoder skips
            # (comments, EXIF, bytes after the end) no check here looked at.
            removed = codec.image_only(ds, len(source))
            if removed is None:  # not to be cut out by itself: the frames written anew
                writer = self._writer(ds, source, len(source))
                what = f"{writer.finish()}, for what its codestreams held besides the image"
            elif removed:
                what = f"unchanged; {', '.join(removed)} removed"
            elif source.trimmed:
                what = f"unchanged; {source.trimmed} bytes after the image removed"
        else:
            what = writer.finish()
            _mark_derived(ds)
        _close(ds, evidence, what)
        counts = (len(source), len(done), changed, boxes)
        return _report(decision, (check, check_why), evidence, what, seconds, counts) | {
            "bytes_after_image_removed": source.trimmed,
            "frames_with_unused_bits_cleared": unused_bits,
            "removed_from_codestreams": removed if removed is not None else ["re-encoded"],
        }

    def _clean_floats(
        self,
        ds: Dataset,
        header: dict[str, Any],
        decision: Decision,
        identity: tuple[str, ...],
        keyword: str,
    ) -> dict[str, Any]:
        """Float or Double Float Pixel Data (a parametric map): each frame checked and
        cleaned as a grey frame is, the values written back as floats. It passed unchecked
        before (text burned into a map went out)."""
        size = len(ds[keyword].value or b"")
        frames = codec.float_frames(ds, keyword, self.limits)
        trimmed = size - len(ds[keyword].value)
        phi = SensitiveText(identity) if self.sensitive else None
        regions = bool(decision.regions or decision.keep_only)
        check, check_why = choose(self.presence, header, "MONOCHROME2", regions)
        evidence = Evidence(len(frames), frames.shape[2], frames.shape[1])
        cleaned: np.ndarray | None = None
        changed = boxes = 0
        seconds: dict[str, float] = {}
        for index, frame in enumerate(frames):
            result = self._clean_one(frame, index, "MONOCHROME2", ds, decision, phi, check)
            result.record(evidence, index)
            boxes += len(result.boxes)
            for name, value in result.seconds.items():
                seconds[name] = seconds.get(name, 0.0) + value
            if result.cleaned is not None:
                if cleaned is None:
                    cleaned = frames.copy()
                cleaned[index] = result.cleaned
                changed += 1
        what = "unchanged"
        if cleaned is not None:
            ds[keyword].value = cleaned.tobytes()  # the same byte order and type
            what = f"{keyword} written anew"
            _mark_derived(ds)
        elif trimmed:
            what = f"unchanged; {trimmed} bytes after the image removed"
        _close(ds, evidence, what)
        counts = (len(frames), len(frames), changed, boxes)
        return _report(decision, (check, check_why), evidence, what, seconds, counts) | {
            "bytes_after_image_removed": trimmed,
            "frames_with_unused_bits_cleared": 0,
            "removed_from_codestreams": [],
        }

    def _clean_one(
        self,
        frame: np.ndarray,
        index: int,
        photometric: str,
        ds: Dataset,
        decision: Decision,
        phi: SensitiveText | None,
        check: Presence,
    ) -> FrameResult:
        try:
            return self.clean_frame(frame, photometric, ds, decision, phi, check=check)
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
        *,
        check: Presence = Presence.THOROUGH,
    ) -> FrameResult:
        """Find, remove, verify; what verification still reads after a second, solid fill is
        returned as ``remains`` (the caller quarantines the instance once all frames are
        done). ``check``: the presence check of the first look (``presence.choose``).

        The frame is looked at stretched over its values' range; where a few extreme values
        squeeze all the others into a few grey levels (a spike, a hot bladder, or one pixel
        a sender set to hide a line from that look: text 1,000 above air beside one pixel at
        32767 was not found), it is looked at again over the bulk of its values
        (``codec.value_spans``), and what that finds is removed too."""
        spans = codec.value_spans(frame)
        result = self._clean_at(frame, photometric, ds, decision, phi, check, spans[0])
        if len(spans) == 1:
            return result
        first = result.cleaned if result.cleaned is not None else frame
        again = self._clean_at(first, photometric, ds, decision, phi, check, spans[1])
        seconds = dict(result.seconds)
        for name, value in again.seconds.items():
            seconds[name] = seconds.get(name, 0.0) + value
        return FrameResult(
            again.cleaned if again.cleaned is not None else result.cleaned,
            result.boxes + again.boxes,
            seconds,
            found=result.found + again.found,
            regions=result.regions + [r for r in again.regions if r not in result.regions],
            remains=result.remains + again.remains,
        )

    def _clean_at(
        self,
        frame: np.ndarray,
        photometric: str,
        ds: Dataset,
        decision: Decision,
        phi: SensitiveText | None,
        check: Presence,
        span: tuple[float, float],
    ) -> FrameResult:
        """:meth:`clean_frame` with the frame shown stretched over ``span``."""
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        learned = check is Presence.LEARNED
        # A grey frame is looked at by the learned check in its one plane; its three are
        # made only when something is to be looked at closer (not on a text-free frame).
        grey = codec.display_grey(frame, photometric, span) if learned else None
        picture = codec.display(frame, photometric, ds, span) if grey is None else grey
        height, width = picture.shape[:2]
        regions = [b.clipped(width, height) for b in decision.regions]
        regions = [b for b in regions if b.area > 0]
        later: list[Box] = []  # the learned check's lines to look at once text was found
        if learned:
            found, later = _learned(picture, photometric)
            if phi is not None:  # PHI found is what leads further: every line looked at
                found, later = found + later, []
        else:
            found = candidates(picture)
        seconds["presence"] = time.perf_counter() - started
        if not (found or regions or decision.keep_only):
            return FrameResult(None, [], seconds)  # nothing to remove, nothing to look at
        if grey is not None:
            picture = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
        boxes: list[Box] = []
        if found:
            started = time.perf_counter()
            boxes = self._text(picture, found, phi)
            seconds["detect"] = time.perf_counter() - started
        if found:
            # Characters larger than a line's crop: a word over a sixth of the frame high is
            # seen by the learned check in pieces (a letter or two), and its crop holds too
            # little of it for the detector, or not its first letter. Such pieces, and tall
            # text found, are looked at again with the rest of their line, reduced.
            started = time.perf_counter()
            large = [b for b in boxes if b.height > LARGE_TEXT]
            if learned and min(height, width) >= COARSE_SIDE:
                tall = [f for f in found if f.height > LARGE_TEXT]
                large += [
                    f for f, near in zip(tall, touching(tall, boxes), strict=True) if not near
                ]
            if large:
                boxes += _not_in(self._wide(picture, large, phi), boxes)
            seconds["detect"] = seconds.get("detect", 0.0) + time.perf_counter() - started
        if boxes and learned:
            # Text is there after all: the rest of the frame is searched as the thorough
            # check would have it, and the learned lines not looked at first, so that a
            # line the model scored low is not left behind.
            started = time.perf_counter()
            looked = [f.padded(24, width, height) for f in found]  # as find_text crops them
            further = later + candidates(picture)
            more = [c for c, seen in zip(further, held(further, looked), strict=True) if not seen]
            seconds["presence"] += time.perf_counter() - started
            if more:
                started = time.perf_counter()
                boxes += _not_in(self._text(picture, more, phi), boxes)
                seconds["detect"] += time.perf_counter() - started
                found += more
        if boxes and max(height, width) <= CLOSER_LOOK_SIDE:
            # Text on a small matrix: its characters are a few pixels high, and enlarged
            # twice the detector boxes some lines in part or not at all. Where it found
            # text, the whole frame is looked at three times enlarged as well (6-10 px fonts
            # on 64 px frames, lines removed whole: CT 22 -> 25 of 30, MR 16 -> 19 of 32);
            # a text-free frame costs nothing more.
            started = time.perf_counter()
            whole = [Box(0, 0, width, height, source="presence")]
            boxes += _not_in(self._text(picture, whole, phi, scale=3.0), boxes)
            seconds["detect"] += time.perf_counter() - started
        targets = [b for b in regions + boxes if b.area > 0]
        if decision.keep_only:
            outside = _outside(decision.keep_only, width, height)
            targets += outside
            regions += outside
        if not targets:
            return FrameResult(None, [], seconds)
        fill = codec.fill_value(frame, photometric, ds)
        started = time.perf_counter()
        cleaned = self.remover.remove(frame, picture, targets, fill)
        seconds["remove"] = time.perf_counter() - started
        started = time.perf_counter()
        removed = list(targets)
        remains: list[Box] = []
        for attempt in range(2):
            leftover = self._remaining(cleaned, photometric, ds, span, phi, removed, found)
            if not leftover:
                break
            if attempt == 1:
                remains = leftover
                break
            # Second pass: a solid fill over what verification still sees.
            cleaned = self._fill.remove(cleaned, picture, leftover, fill)
            removed += leftover
        seconds["verify"] = time.perf_counter() - started
        found_text = [Box(b.x0, b.y0, b.x1, b.y1, b.score, b.source) for b in boxes]
        return FrameResult(
            cleaned, removed, seconds, found=found_text, regions=regions, remains=remains
        )

    def _remaining(
        self,
        frame: np.ndarray,
        photometric: str,
        ds: Dataset,
        span: tuple[float, float],
        phi: SensitiveText | None,
        removed: list[Box],
        examined: list[Box],
    ) -> list[Box]:
        """Verification: text the detector still finds anywhere in the cleaned frame.

        The presence check runs on the whole frame again; detection runs where something
        changed (around what was removed) and on any candidate the first pass did not
        examine. Elsewhere the pixels, and so the detector's answer, are the first pass's.
        """
        picture = codec.display(frame, photometric, ds, span)
        found = candidates(picture)
        changed = touching(found, removed, 24) | ~touching(found, examined)
        regions = [c for c, look in zip(found, changed, strict=True) if look]
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
        read = self._looks.recognize(picture, inked)
        return [b for b in read if _readable(b) and b.score >= 0.5]

    def _wide(self, picture: np.ndarray, pieces: list[Box], phi: SensitiveText | None) -> list[Box]:
        """Text boxes on bands around ``pieces`` (tall candidates or boxes): two heights to
        each side, where the rest of a word of large characters is, looked at reduced so that
        its characters are about 40 px high (the detector sees them best at that size, and
        the band costs a fraction of its area)."""
        height, width = picture.shape[:2]
        bands = [
            (
                Box(
                    p.x0 - 2 * p.height,
                    p.y0 - p.height // 2,
                    p.x1 + 2 * p.height,
                    p.y1 + p.height // 2,
                ).clipped(width, height),
                p.height,
            )
            for p in pieces
        ]
        found: list[Box] = []
        for band in merge([b for b, _ in bands]):
            tallest = max((high for b, high in bands if b.intersection(band)), default=LARGE_TEXT)
            scale = min(0.5, max(0.25, 40 / tallest))
            found += _not_in(self._text(picture, [band], phi, scale=scale, pad=0), found)
        return found

    def _text(
        self,
        picture: np.ndarray,
        regions: list[Box],
        phi: SensitiveText | None,
        scale: float | None = None,
        pad: int = 24,
    ) -> list[Box]:
        """Text boxes near the candidate regions: all of them (all-text mode), or those whose
        words are PHI (sensitive-text mode). Doubtful boxes are read to confirm them: boxes
        taller than a text line (a large title, or anatomy the detector took for text) must
        read clearly."""
        boxes = find_text(self._looks, picture, regions, pad=pad, tall=True, scale=scale)
        if phi is not None:
            read = self._looks.recognize(picture, boxes) if boxes else []
            return [b for b in read if phi.is_sensitive(b.text or "", b.score)]
        height = picture.shape[0]
        sure = [b for b in boxes if not doubtful(b, height)]
        unsure = [b for b in boxes if doubtful(b, height)]
        if unsure:
            for box in self._looks.recognize(picture, unsure):
                least = 0.8 if box.height > line_height(height) else 0.5
                if _readable(box) and box.score >= least:
                    sure.append(box)
        return sure


def _learned(picture: np.ndarray, photometric: str) -> tuple[list[Box], list[Box]]:
    """The learned check's lines, to look at first and once text was found
    (``lines.first_and_rest``); a grey image is looked at in one plane, not three."""
    if photometric in ("MONOCHROME1", "MONOCHROME2") and picture.ndim == 3:
        picture = np.ascontiguousarray(picture[:, :, 0])
    return first_and_rest(picture)


def _close(ds: Dataset, evidence: Evidence, what: str) -> None:
    """Stamp what was done, or, where text remains after every frame was cleaned and
    written, raise it: the data set is then the cleaned copy, which goes to quarantine beside
    the original, never onward, and says what it is."""
    if evidence.remains:
        _stamp_held(ds)
        raise TextRemainsError(_remains_message(evidence), evidence)
    _stamp(ds, what)


def _report(
    decision: Decision,
    check: tuple[Presence, str],
    evidence: Evidence,
    what: str,
    seconds: dict[str, float],
    counts: tuple[int, int, int, int],
) -> dict[str, Any]:
    """The stage's report (no PHI), as every kind of pixel data has it; ``counts``: frames,
    distinct frames, frames changed, boxes removed."""
    frames, distinct, changed, boxes = counts
    return {
        "checked": True,
        "why": decision.why,
        "presence": check[0].value,
        "presence_why": check[1],
        "frames": frames,
        "distinct_frames": distinct,
        "frames_changed": changed,
        "boxes": boxes,
        "boxes_by_kind": evidence.counts(),
        "pixel_data": what,
        "seconds": seconds,
    }


def _not_in(more: list[Box], boxes: list[Box]) -> list[Box]:
    """The boxes of a further look that the boxes found so far do not already hold (90%)."""
    return [b for b, seen in zip(more, held(more, boxes, 0.9), strict=True) if not seen]


def _readable(box: Box) -> bool:
    """At least two letters or digits were read in it."""
    return sum(c.isalnum() for c in (box.text or "")) >= 2


def _remains_message(evidence: Evidence) -> str:
    """The quarantine message of a ``text-remains`` item: where, and what to do (no text)."""
    return (
        f"Burned-in {evidence.summary()}. The cleaned copy is kept beside the original. Look at "
        "the image (the review page draws where): if what remains is not PHI, release the "
        "cleaned copy; if a device always writes there, add a region rule for it from the "
        "review page (or by hand to pixels.policy or pixels.site_regions) and re-run the item."
    )


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


def _stamp_held(ds: Dataset) -> None:
    """The cleaned copy of a ``text-remains`` item: text was removed and some is still read,
    so BurnedInAnnotation YES and no Clean Pixel Data code (a person may release it)."""
    ds.BurnedInAnnotation = "YES"
    _add_method(ds, "Burned-in text removed; some remained: held for review")


def _add_method(ds: Dataset, note: str) -> None:
    methods = [str(m) for m in (ds.get("DeidentificationMethod") or [])]
    if isinstance(ds.get("DeidentificationMethod"), str):
        methods = [str(ds.DeidentificationMethod)]
    if note[:64] not in methods:
        ds.DeidentificationMethod = [*methods, note[:64]]


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
    _add_method(ds, f"Clean Pixel Data: {what}")
