"""Text detection and recognition: PaddleOCR's PP-OCR models behind one small interface.

- ``rapidocr`` (default): the PP-OCRv6 models that ship inside the rapidocr wheel, run by ONNX
  Runtime: offline, on the CPU, or on the GPU through ONNX Runtime's CUDA provider.
- ``paddleocr``: the PaddleOCR package with models from local folders (PaddleX format), for
  sites that run Paddle.

Detection (boxes) is the cheap half and is all that all-text mode and verification need;
recognition (words) runs only where words matter (sensitive-text mode). :func:`find_text`
runs detection on crops around the candidates of the presence check, or on tiles of a large
frame, and maps the boxes back. Vertical text (written along a side): a crop much taller
than wide is also looked at turned a quarter, and a box much taller than wide is read as it
is and turned both ways (the best reading counts).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from dicomnode.errors import ConfigError
from dicomnode.pixels.boxes import Box, corners, merge, touching
from dicomnode.pixels.subnormal import sessions_without_subnormals

log = logging.getLogger(__name__)

__all__ = [
    "PaddleOCRDetector",
    "RapidOCRDetector",
    "Remembering",
    "TextDetector",
    "doubtful",
    "find_text",
    "line_height",
    "make_detector",
]


class TextDetector(Protocol):
    name: str

    def detect(self, picture: np.ndarray) -> list[Box]:
        """Boxes of text lines in an 8-bit RGB picture."""
        ...

    def recognize(self, picture: np.ndarray, boxes: list[Box]) -> list[Box]:
        """The same boxes, with ``text`` and ``score`` read from the picture."""
        ...


def _quad_to_box(points: Any, score: float) -> Box:
    quad = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    x0, y0 = np.floor(quad.min(axis=0)).astype(int)
    x1, y1 = np.ceil(quad.max(axis=0)).astype(int)
    return Box(int(x0), int(y0), int(x1) + 1, int(y1) + 1, score=float(score))


class RapidOCRDetector:
    """PP-OCRv6 through rapidocr and ONNX Runtime (models inside the wheel)."""

    name = "rapidocr"

    def __init__(
        self,
        *,
        threads: int = 1,
        device: str = "auto",
        max_side: int = 1024,
        box_threshold: float = 0.5,
    ) -> None:
        try:
            import onnx  # noqa: F401  (subnormal.py, at load)
            import onnxruntime
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise ConfigError(
                f"the pixel stage needs rapidocr, onnxruntime and onnx ({exc.name} is "
                "missing): reinstall dicomnode (pip install dicomnode)"
            ) from None
        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        if device == "cuda" and not cuda:
            raise ConfigError(
                "pixels.detector.device is cuda, but ONNX Runtime has no CUDA "
                "provider here (install onnxruntime-gpu)"
            )
        use_cuda = cuda and device in ("auto", "cuda")
        params = {
            "Global.log_level": "error",
            "Global.use_cls": False,
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            "EngineConfig.onnxruntime.use_cuda": use_cuda,
            "Det.limit_type": "max",
            "Det.limit_side_len": max_side,
            "Det.box_thresh": box_threshold,
        }
        from rapidocr.inference_engine.onnxruntime import main as engine_sessions

        self.engine = RapidOCR(params=params)
        self.device = "cuda" if use_cuda else "cpu"
        # Both models are loaded now, their subnormal weights set to zero as they are
        # (``subnormal.py``: the same output, 2.9x faster detection on x86). The recogniser
        # too, not by rapidocr on first use: that cost each worker ~0.5 s of CPU in the
        # middle of a series (7% of a 200-instance CT run), and a broken model should stop
        # the node at start-up.
        with sessions_without_subnormals(engine_sessions) as models:
            self._detection = _Detection(self.engine)
            self.engine._load_rec_model()
        self.models = tuple(models)  # the model files, detection first

    def detect(self, picture: np.ndarray) -> list[Box]:
        quads, scores = self._detection(picture)
        return [_quad_to_box(quad, score) for quad, score in zip(quads, scores, strict=True)]

    def recognize(self, picture: np.ndarray, boxes: list[Box]) -> list[Box]:
        out = []
        height, width = picture.shape[:2]
        for box in boxes:
            crop = picture[
                max(0, box.y0) : min(height, box.y1), max(0, box.x0) : min(width, box.x1)
            ]
            text, score = "", 0.0
            for view in _readable_crop(crop, box) if crop.size else []:
                result = self.engine(
                    np.ascontiguousarray(view), use_det=False, use_cls=False, use_rec=True
                )
                if result.txts:
                    read = float(min(result.scores)) if result.scores else 0.0
                    if read > score or not text:
                        text, score = " ".join(str(t) for t in result.txts), read
            out.append(Box(box.x0, box.y0, box.x1, box.y1, score, box.source, text))
        return out


class _Detection:
    """rapidocr's detection model run as its engine runs it (the same preparation of the
    picture, the same model and box finding), without the engine's other per-call costs:
    its settings looked up again, the input normalised in float64, and every box cut out
    and turned for a recognizer that does not run here; ~1-10 ms a crop on one core, and
    the stage runs it on every crop the presence check sends.

    It also keeps each box with its own score: the engine sorts the boxes top to bottom
    but not their scores (rapidocr 3.10, ``TextDetector.__call__``), so with two boxes or
    more a box could carry another's score, and ``doubtful`` decides from it which boxes
    are read before they are filled. The normalisation is rapidocr's own, taken once for
    each of the 256 values of a byte (``tests/test_presence.py`` compares the boxes with
    the engine's).
    """

    def __init__(self, engine: Any) -> None:
        from rapidocr.ch_ppocr_det.utils import DetPreProcess
        from rapidocr.utils.process_img import apply_vertical_padding, map_boxes_to_original

        self.engine = engine
        self.model = engine._load_det_model()
        glob = engine.cfg.Global
        self.padding = bool(glob.use_vertical_padding)
        self.min_height = float(glob.min_height)
        self.ratio = float(glob.width_height_ratio)
        self.pad = apply_vertical_padding
        self.map_back = map_boxes_to_original
        self.prepare = DetPreProcess(
            self.model.limit_side_len, self.model.limit_type, self.model.mean, self.model.std
        )
        values = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)
        self.table = np.ascontiguousarray(
            self.prepare.normalize(values).astype(np.float32)[:, 0, :].T
        )  # channel, byte value

    def __call__(self, picture: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Quads (n x 4 x 2) and their scores, in the picture's pixels."""
        height, width = picture.shape[:2]
        image = self.engine.load_img(picture)
        image, record = self.engine.preprocess_img(image)
        if self.padding:
            image, record = self.pad(image, record, self.ratio, self.min_height)
        resized = self.prepare.resize(image)
        if resized is None:
            return np.zeros((0, 4, 2), np.float32), []
        planes = np.empty((1, 3, *resized.shape[:2]), np.float32)
        for channel in range(3):
            np.take(self.table[channel], resized[:, :, channel], out=planes[0, channel])
        quads, scores = self.model.postprocess_op(self.model.session(planes), image.shape[:2])
        if len(quads) < 1:
            return np.zeros((0, 4, 2), np.float32), []
        return self.map_back(np.asarray(quads, np.float32), record, height, width), list(scores)


class PaddleOCRDetector:
    """The PaddleOCR package with PP-OCR models from local folders (PaddleX format)."""

    name = "paddleocr"

    def __init__(
        self, *, det_model_dir: Path | None, rec_model_dir: Path | None, device: str = "auto"
    ) -> None:
        if det_model_dir is None or rec_model_dir is None:
            raise ConfigError(
                "the paddleocr backend needs pixels.detector.det_model_dir and "
                "rec_model_dir (local PaddleX model folders; nothing is downloaded)"
            )
        for path in (det_model_dir, rec_model_dir):
            if not Path(path).is_dir():
                raise ConfigError(f"pixels.detector: no model folder at {path}")
        import os

        os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")
        try:
            from paddleocr import PaddleOCR, TextDetection
        except ImportError:
            raise ConfigError(
                "the paddleocr backend needs the PaddleOCR package: pip install 'dicomnode[paddle]'"
            ) from None
        dev = "gpu" if device in ("cuda", "gpu") else "cpu"
        self._det = TextDetection(model_dir=str(det_model_dir), device=dev)
        self._ocr = PaddleOCR(
            text_detection_model_dir=str(det_model_dir),
            text_recognition_model_dir=str(rec_model_dir),
            use_doc_orientation_classify=False,
            use_doc_unwarping=False,
            use_textline_orientation=False,
            device=dev,
        )

    def detect(self, picture: np.ndarray) -> list[Box]:
        boxes = []
        for result in self._det.predict(picture[:, :, ::-1]):
            for quad, score in zip(result["dt_polys"], result["dt_scores"], strict=False):
                boxes.append(_quad_to_box(quad, score))
        return boxes

    def recognize(self, picture: np.ndarray, boxes: list[Box]) -> list[Box]:
        out = []
        for box in boxes:
            crop = np.ascontiguousarray(picture[box.y0 : box.y1, box.x0 : box.x1][:, :, ::-1])
            best: tuple[float, str] = (0.0, "")
            for view in _readable_crop(crop, box) if crop.size else []:
                texts, scores = [], []
                for result in self._ocr.predict(view):
                    texts += list(result.get("rec_texts", []))
                    scores += list(result.get("rec_scores", []))
                read = (float(min(scores)) if scores else 0.0, " ".join(texts))
                if read[0] > best[0] or not best[1]:
                    best = read
            out.append(Box(box.x0, box.y0, box.x1, box.y1, best[0], box.source, best[1]))
        return out


class Remembering:
    """A detector that answers a picture, or a box of one, it was given before from memory.

    The frames of a cine loop, a multi-frame X-ray run or a multi-page capture carry the same
    overlay (the device's text, its scales and logos) on every frame, and the crops and
    boxes the stage looks at there are the same pixels each time: an ultrasound loop of pydicom's
    test files read the same 302 of its 363 boxes again (80% of its reading time). The
    answer to the same pixels is the detector's own answer (keyed by the exact bytes, the
    shape and, for a reading, the box: nothing near is taken for the same), so the result
    is what looking again would give. :meth:`forget` at each instance: nothing read from one
    instance is kept for the next, and the memory is one instance's answers (at most
    ``limit`` of each kind; past that, looks are made as before).
    """

    def __init__(self, detector: TextDetector, limit: int = 1 << 14) -> None:
        self.inner = detector
        self.name = detector.name
        self.limit = limit
        self._boxes: dict[tuple[Any, ...], list[Box]] = {}
        self._readings: dict[tuple[Any, ...], Box] = {}

    def forget(self) -> None:
        self._boxes.clear()
        self._readings.clear()

    def detect(self, picture: np.ndarray) -> list[Box]:
        key = (picture.shape, picture.dtype.str, _digest(picture))
        boxes = self._boxes.get(key)
        if boxes is None:
            boxes = self.inner.detect(picture)
            if len(self._boxes) < self.limit:
                self._boxes[key] = boxes
        return list(boxes)

    def recognize(self, picture: np.ndarray, boxes: list[Box]) -> list[Box]:
        height, width = picture.shape[:2]
        keys = []
        for box in boxes:
            crop = picture[
                max(0, box.y0) : min(height, box.y1), max(0, box.x0) : min(width, box.x1)
            ]
            # Everything a reading depends on: where the box is (its size and source choose
            # the views read; it is returned with them) and the pixels it is read from; not
            # the score it was found with, which the reading replaces.
            where = (box.x0, box.y0, box.x1, box.y1, box.source)
            keys.append((where, height, width, crop.shape, picture.dtype.str, _digest(crop)))
        unread = [i for i, key in enumerate(keys) if key not in self._readings]
        read = self.inner.recognize(picture, [boxes[i] for i in unread])
        fresh = dict(zip(unread, read, strict=True))
        out = []
        for i, key in enumerate(keys):
            reading = fresh[i] if i in fresh else self._readings[key]
            if len(self._readings) < self.limit:
                self._readings[key] = reading
            out.append(reading)
        return out


def _digest(pixels: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16).digest()


def make_detector(backend: str, **options: Any) -> TextDetector:
    if backend == "rapidocr":
        return RapidOCRDetector(
            threads=options.get("threads", 1),
            device=options.get("device", "auto"),
            max_side=options.get("max_side", 1024),
        )
    if backend == "paddleocr":
        return PaddleOCRDetector(
            det_model_dir=options.get("det_model_dir"),
            rec_model_dir=options.get("rec_model_dir"),
            device=options.get("device", "auto"),
        )
    raise ConfigError(f"unknown text detector {backend!r}; use rapidocr or paddleocr")


def find_text(
    detector: TextDetector,
    picture: np.ndarray,
    regions: list[Box],
    *,
    pad: int = 24,
    max_side: int = 1024,
    tall: bool = False,
    scale: float | None = None,
) -> list[Box]:
    """Detect text near ``regions`` (candidates of the presence check): on merged, padded
    crops, or on the whole picture once the crops cover most of it.

    The detector sees text of 10 px and more; ultrasound and screen captures write 7-10 px
    fonts. So every crop is also looked at enlarged twice (on tiles of ``max_side / 2``, so
    that the detector does not shrink it back), and large crops at their own size as well
    (large titles). Where the presence check measured the characters of the regions
    (``Box.glyph``: the learned check does), a crop is looked at at the scales they need
    (:func:`_looks`): the anatomy the learned check sends mostly costs one look, not two of
    which one is four times the area. Boxes are returned in the picture's own pixels: text
    lines only, or, with ``tall``, also boxes taller than a text line (up to half the frame)
    for the caller to confirm by reading them (:func:`doubtful`). ``scale``: every crop at
    this scale only, whatever its characters (the stage's closer look at a small frame).
    """
    height, width = picture.shape[:2]
    found: list[Box] = []
    for crop, scales in _looks(regions, pad, width, height):
        found += _detect_crop(
            detector, picture, crop, scales if scale is None else (scale,), max_side
        )
    limit = height // 2 if tall else line_height(height)
    return _distinct([b.padded(2, width, height) for b in found if b.area and _across(b) <= limit])


def _looks(
    regions: list[Box], pad: int, width: int, height: int
) -> list[tuple[Box, tuple[float, ...]]]:
    """The crops to look at and the scales of each (empty: the crop's size decides).

    All regions are padded and merged into crops, so that every piece of a line is seen in
    one crop; each crop is looked at at the scales of its regions' characters
    (:func:`glyph_scale`) up to its own size, or as before where one region's characters are
    not known (the thorough check's). The enlarged look is on crops of the regions with small
    characters only: enlarging a whole crop for them is what cost four times the area."""
    padded = [r.padded(pad, width, height) for r in regions]
    needs = [glyph_scale(r.glyph) for r in regions]
    where = corners(padded)
    looks: list[tuple[Box, tuple[float, ...]]] = []
    for crop in _crops(padded, pad, width, height):
        scales = {need for need, near in zip(needs, touching(where, [crop]), strict=True) if near}
        if 0.0 in scales:
            looks.append((crop, ()))
        elif scales - {2.0}:
            looks.append((crop, tuple(sorted(scales - {2.0}))))
    small = [p for need, p in zip(needs, padded, strict=True) if need == 2.0]
    looks += [(crop, (2.0,)) for crop in _crops(small, pad, width, height)]
    return looks


def _crops(padded: list[Box], gap: int, width: int, height: int) -> list[Box]:
    """Padded regions merged; the whole picture once they cover most of it."""
    crops = merge(padded, gap=gap)
    if sum(c.area for c in crops) > 0.5 * width * height:
        return [Box(0, 0, width, height)]
    return crops


def glyph_scale(glyph: float) -> float:
    """The scale at which the detector sees characters ``glyph`` pixels high (the presence
    check's measure: mean height of a line's marks, about 0.6 of the font size) as it sees
    best, 0 when not known: small fonts enlarged twice, large ones halved (four times less
    work, and well inside what it reads), the rest as they are."""
    if glyph <= 0:
        return 0.0
    if glyph < 10:
        return 2.0
    if glyph < 48:
        return 1.0
    return 0.5


def _detect_crop(
    detector: TextDetector,
    picture: np.ndarray,
    crop: Box,
    sized: tuple[float, ...],
    max_side: int,
) -> list[Box]:
    """Boxes in one crop, in the picture's pixels: at the scales ``sized`` (the characters'
    size is known), else twice enlarged (a small crop: small fonts), or at its own size and
    enlarged (large titles too), or at its own size only (a crop too large to enlarge)."""
    height, width = picture.shape[:2]
    if sized:
        scales = list(sized)
    elif crop.area > _ENLARGE_MAX_AREA:
        scales = [1.0]  # a large frame: its fonts are large too, and four times the work
    else:
        scales = [2.0] if crop.height <= 96 else [1.0, 2.0]
    found: list[Box] = []
    for scale in scales:
        for tile in _tiles(crop, int(max_side / scale)):
            view = np.ascontiguousarray(picture[tile.y0 : tile.y1, tile.x0 : tile.x1])
            if scale > 1:
                view = cv2.resize(view, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            elif scale < 1:
                view = cv2.resize(view, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            boxes = detector.detect(view)
            if tile.height > 1.5 * tile.width and tile.height >= 48:
                boxes += _turned(detector, view)  # a line written top to bottom?
            for box in boxes:
                found.append(box.scaled(1 / scale).shifted(tile.x0, tile.y0).clipped(width, height))
    return found


VERTICAL = "ocr-vertical"  # the source of a box found on a crop turned by 90 degrees


def _turned(detector: TextDetector, view: np.ndarray) -> list[Box]:
    """Boxes of lines written along the height of ``view`` (vertical text: the detector
    finds horizontal lines), found on ``view`` turned a quarter, in ``view``'s pixels."""
    rows = view.shape[0]
    out = []
    for box in detector.detect(np.ascontiguousarray(cv2.rotate(view, cv2.ROTATE_90_CLOCKWISE))):
        # turned (x, y) is view (y, rows - 1 - x)
        out.append(Box(box.y0, rows - box.x1, box.y1, rows - box.x0, box.score, VERTICAL))
    return out


def _across(box: Box) -> int:
    """The height of the line a box holds: its width when the line is vertical."""
    return box.width if box.source == VERTICAL else box.height


def _readable_crop(crop: np.ndarray, box: Box) -> list[np.ndarray]:
    """The crop as it is read (the best reading counts): a vertical line turned both ways
    (either may be upright); a box twice as high as wide also as it is (a narrow column
    of a few characters, or a vertical line the detector found unturned)."""
    turned = [
        np.ascontiguousarray(cv2.rotate(crop, cv2.ROTATE_90_CLOCKWISE)),
        np.ascontiguousarray(cv2.rotate(crop, cv2.ROTATE_90_COUNTERCLOCKWISE)),
    ]
    if box.source == VERTICAL:
        return turned
    if box.height >= 2 * box.width and box.height >= 16:
        return [crop, *turned]
    return [crop]


def _distinct(boxes: list[Box]) -> list[Box]:
    """Without the boxes that lie (90%) inside another of about their height: the same line
    seen at two sizes, or in two overlapping tiles, is one box. (A line inside a taller box
    stays: the taller one may be read as no text and dropped.)"""
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: -b.area):
        if not any(
            box.intersection(k) >= 0.9 * box.area and k.height <= 1.5 * box.height for k in kept
        ):
            kept.append(box)
    return sorted(kept, key=lambda b: (b.y0, b.x0))


_ENLARGE_MAX_AREA = 1280 * 1024  # pixels of a crop still worth enlarging


def line_height(frame_height: int) -> int:
    """Detectors also fire on large textured areas (anatomy); a text line is not taller than
    a big title (15% of the frame, at least 48 px)."""
    return max(48, int(0.15 * frame_height))


def doubtful(box: Box, frame_height: int | None = None) -> bool:
    """Boxes worth confirming by reading them: short for their height (under two heights
    long: a word of one or two characters, or a bone the detector took for one; a vertebra
    of a CT slice scored 0.67 at 85 x 54 px and was filled), tall, weakly scored, taller
    than a text line of a frame ``frame_height`` high, or a vertical line (always read)."""
    if box.source == VERTICAL:
        return True
    if frame_height is not None and box.height > line_height(frame_height):
        return True
    return box.score < 0.6 or (box.height > 24 and box.width < 2 * box.height)


def _tiles(crop: Box, side: int, overlap: int = 64) -> list[Box]:
    """``crop`` cut into tiles of at most ``side`` pixels, overlapping by ``overlap`` (a text
    line cut by one tile's edge is whole in its neighbour, when shorter than the overlap)."""
    if max(crop.width, crop.height) <= side:
        return [crop]
    step = max(1, side - overlap)

    def starts(low: int, high: int) -> list[int]:
        if high - low <= side:
            return [low]
        values = list(range(low, high - side, step))
        return [*values, high - side]

    return [
        Box(x, y, min(crop.x1, x + side), min(crop.y1, y + side))
        for y in starts(crop.y0, crop.y1)
        for x in starts(crop.x0, crop.x1)
    ]
