"""A second look at the lines the learned presence check's trees send: a small convolutional
net on the line's own pixels.

Why: the trees (``lines``) see numbers about a line's marks (sizes, gaps, baselines, stroke
widths), and anatomy can have every one of them: a vertebra and its processes, a row of
gyri on MR, organs on a 64 px frame are marks of one height in a row. At the threshold
that keeps recall, the trees sent 46% of held-out text-free frames to the detector (CT 33%,
MR 80%), and each costs 10-100 ms there (a detector look, and reading what it takes for
text). What separates characters from anatomy is their shapes: strokes of one width that
bend, cross and end. A net of three 3 x 3 convolutions (16, 32, 64 channels) with two
halvings and a maximum over the line sees them on a crop of the line scaled to 20 px high
and up to 160 px long (its middle, where longer), strokes bright. On 1,200 held-out frames
(anatomy of every modality at 64 to 1,024 px, with and without text) the check with it sends
87 of 447 text-free frames where the trees alone sent 154 (207 before the trees learned
frames below 512 px), for 2 of 2,086 lines (``tools/train_presence.py`` picks its threshold;
``bench/pixels.py --presence-only``). Cost: ~0.3 ms a line on one core (the crop 0.1, ONNX
Runtime 0.2), on the few lines the trees send.

The net is ``lines_model.onnx`` beside this module, trained with the trees by
``tools/train_presence.py`` (torch, on the training frames' lines) and written as plain ONNX
operators; the node needs only ONNX Runtime (already there for the text detector).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dicomnode.errors import ConfigError

__all__ = ["HEIGHT", "NET", "WIDTH", "LineNet", "crops", "load_net"]

#: The net file (package data).
NET = Path(__file__).with_name("lines_model.onnx")
#: The crop the net sees: a line scaled to HEIGHT rows, at most WIDTH columns of it.
HEIGHT, WIDTH = 20, 160
_MARGIN = 0.25  # around the line's box, a share of its height (at least 2 px)


def crops(
    planes: list[np.ndarray], boxes: np.ndarray, dark: np.ndarray, vertical: np.ndarray
) -> np.ndarray:
    """The net's input for lines of a picture (``n x 1 x HEIGHT x WIDTH``, float32).

    ``planes``: the picture's grey planes as ``lines`` looks at them (one, or a colour
    picture's brightest and darkest channel: bright lines are cut from the first, dark ones
    from the last); ``boxes`` ``x0, y0, x1, y1`` in its pixels; per line ``dark`` (dark
    strokes: inverted, so strokes are bright) and ``vertical`` (turned a quarter, so that the
    line runs along). Each crop is the box with a margin, scaled to HEIGHT rows (its middle
    WIDTH columns where longer), less its median, over its 98th percentile above the median
    (at least 16 grey levels), clipped to -1..3, zero after the line's end."""
    out = np.zeros((len(boxes), 1, HEIGHT, WIDTH), np.float32)
    for k, box in enumerate(boxes):
        plane = planes[-1] if dark[k] else planes[0]
        rows, cols = plane.shape[:2]
        x0, y0, x1, y1 = (int(v) for v in box)
        across = (x1 - x0) if vertical[k] else (y1 - y0)
        margin = max(2, round(_MARGIN * across))
        cut = plane[
            max(0, y0 - margin) : min(rows, y1 + margin),
            max(0, x0 - margin) : min(cols, x1 + margin),
        ]
        if not cut.size:
            continue
        if vertical[k]:
            cut = cv2.rotate(cut, cv2.ROTATE_90_CLOCKWISE)
        scale = HEIGHT / cut.shape[0]
        width = max(1, round(cut.shape[1] * scale))
        if width > WIDTH:
            keep = round(WIDTH / scale)
            start = (cut.shape[1] - keep) // 2
            cut, width = cut[:, start : start + keep], WIDTH
        how = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        line = cv2.resize(np.ascontiguousarray(cut), (width, HEIGHT), interpolation=how)
        values = line.astype(np.float32)
        if dark[k]:
            values = 255 - values
        ordered = np.sort(values, axis=None)
        middle, top = _quantile(ordered, 0.5), _quantile(ordered, 0.98)
        out[k, 0, :, :width] = np.clip((values - middle) / max(16.0, top - middle), -1, 3)
    return out


def _quantile(ordered: np.ndarray, share: float) -> float:
    """numpy's default (linear) quantile of sorted values, without its per-call cost (~0.1 ms,
    on a path that runs per line)."""
    at = share * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low]) + (float(ordered[high]) - float(ordered[low])) * (at - low)


class LineNet:
    """The net, in an ONNX Runtime session on one thread."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [1, HEIGHT, WIDTH]:
            raise ValueError(
                f"takes {inputs[0].shape if inputs else 'nothing'}, not n x 1 x {HEIGHT} x {WIDTH}"
            )
        self.input, self.output = inputs[0].name, outputs[0].name

    def score(self, batch: np.ndarray) -> np.ndarray:
        """The probability, per crop, that it shows a line of text."""
        if not len(batch):
            return np.zeros(0)
        logits: Any = self.session.run([self.output], {self.input: batch})[0]
        return 1 / (1 + np.exp(-np.asarray(logits, np.float64).reshape(-1)))


def load_net(path: Path = NET) -> LineNet:
    """The net in ``path``, ready to run (``lines.load_model`` loads it with the model file
    that names it). Raises :class:`~dicomnode.errors.ConfigError` naming the file and the
    fix."""
    fix = "reinstall dicomnode, or run tools/train_presence.py, or set pixels.presence: thorough"
    try:
        return LineNet(path)
    except Exception as exc:  # ONNX Runtime raises its own types for a missing or bad file
        raise ConfigError(
            f"the learned presence check's net {path} cannot be used "
            f"({type(exc).__name__}: {str(exc)[:200]}); {fix}"
        ) from None
