"""Text detection and recognition: PaddleOCR's PP-OCR models behind one small interface.

- ``rapidocr`` (default): the PP-OCRv6 models that ship inside the rapidocr wheel, run by ONNX
  Runtime: offline, on the CPU, or on the GPU through ONNX Runtime's CUDA provider.
- ``paddleocr``: the PaddleOCR package with models from local folders (PaddleX format), for
  sites that run Paddle.

Detection (boxes) is the cheap half and is all that all-text mode and verification need;
recognition (words) runs only where words matter (sensitive-text mode). :func:`find_text`
runs detection on crops around the candidates of the presence check, or on tiles of a large
frame, and maps the boxes back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from dicomnode.errors import ConfigError
from dicomnode.pixels.boxes import Box, merge

log = logging.getLogger(__name__)

__all__ = [
    "PaddleOCRDetector",
    "RapidOCRDetector",
    "TextDetector",
    "doubtful",
    "find_text",
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
            import onnxruntime
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise ConfigError(
                f"the pixel stage needs rapidocr and onnxruntime ({exc.name} is missing): "
                "pip install 'dicomnode[pixels]'"
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
        self.engine = RapidOCR(params=params)
        self.device = "cuda" if use_cuda else "cpu"

    def detect(self, picture: np.ndarray) -> list[Box]:
        result = self.engine(picture, use_det=True, use_cls=False, use_rec=False)
        if result.boxes is None:
            return []
        scores = result.scores if result.scores is not None else [1.0] * len(result.boxes)
        return [
            _quad_to_box(quad, score) for quad, score in zip(result.boxes, scores, strict=False)
        ]

    def recognize(self, picture: np.ndarray, boxes: list[Box]) -> list[Box]:
        out = []
        height, width = picture.shape[:2]
        for box in boxes:
            crop = picture[
                max(0, box.y0) : min(height, box.y1), max(0, box.x0) : min(width, box.x1)
            ]
            text, score = "", 0.0
            if crop.size:
                result = self.engine(
                    np.ascontiguousarray(crop), use_det=False, use_cls=False, use_rec=True
                )
                if result.txts:
                    text = " ".join(str(t) for t in result.txts)
                    score = float(min(result.scores)) if result.scores else 0.0
            out.append(Box(box.x0, box.y0, box.x1, box.y1, score, box.source, text))
        return out


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
            texts, scores = [], []
            for result in self._ocr.predict(crop):
                texts += list(result.get("rec_texts", []))
                scores += list(result.get("rec_scores", []))
            out.append(
                Box(
                    box.x0,
                    box.y0,
                    box.x1,
                    box.y1,
                    float(min(scores)) if scores else 0.0,
                    box.source,
                    " ".join(texts),
                )
            )
        return out


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
) -> list[Box]:
    """Detect text near ``regions`` (candidates of the presence check): on merged, padded
    crops; on the whole picture, tiled when large, once the crops cover most of it. Small
    crops are enlarged twice, so that small fonts reach the detector's preferred size."""
    height, width = picture.shape[:2]
    crops = merge([r.padded(pad, width, height) for r in regions], gap=pad)
    if sum(c.area for c in crops) > 0.5 * width * height:
        crops = _tiles(width, height, max_side)
    found: list[Box] = []
    for crop in crops:
        view = np.ascontiguousarray(picture[crop.y0 : crop.y1, crop.x0 : crop.x1])
        scale = 2.0 if crop.height <= 96 and max(crop.width, crop.height) * 2 <= max_side else 1.0
        if scale != 1.0:
            view = cv2.resize(view, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        for box in detector.detect(view):
            found.append(box.scaled(1 / scale).shifted(crop.x0, crop.y0).clipped(width, height))
    return [b.padded(2, width, height) for b in found if b.area > 0 and _line_like(b, height)]


def _line_like(box: Box, frame_height: int) -> bool:
    """Detectors also fire on large textured areas (anatomy); a text line is not taller than
    a big title (15% of the frame, at least 48 px)."""
    return box.height <= max(48, 0.15 * frame_height)


def doubtful(box: Box) -> bool:
    """Boxes worth confirming by reading them: squarish, tall, or weakly scored."""
    return box.score < 0.6 or (box.height > 24 and box.width < 1.5 * box.height)


def _tiles(width: int, height: int, side: int, overlap: int = 64) -> list[Box]:
    if max(width, height) <= side:
        return [Box(0, 0, width, height)]
    step = side - overlap
    return [
        Box(x, y, min(width, x + side), min(height, y + side))
        for y in range(0, max(1, height - overlap), step)
        for x in range(0, max(1, width - overlap), step)
    ]
