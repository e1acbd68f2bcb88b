#!/usr/bin/env python3
"""Make the 8-bit screen of the text detector: dicomnode/pixels/models/det_int8.onnx, shipped
in the package, and det_int8.json beside it (where it came from, how it was made, what it was
measured to do). See ``dicomnode.pixels.detect._Screen`` for how the node uses it.

The model is rapidocr's PP-OCRv6 detection model (the wheel's float32 file, Apache-2.0, from
PaddleOCR) converted to ONNX opset 17 and quantized by ONNX Runtime (static, QDQ, weights int8
per channel, activations uint8, min-max calibration). Calibration inputs are what the detector
really gets: the crops (at their scales) that ``find_text`` makes from both presence checks'
candidates, on the frames ``tools/train_presence.py`` makes from ``--seed`` on (text-free
anatomy of every modality, the same with every kind of burned-in text, screens and speckle
with lines in every font), prepared exactly as the node prepares them.

It then measures, on the frames of the next ``--held-out`` seeds, the screen as the node uses
it: detector inputs in which the float32 model finds a box and the screen finds none (must be
0), box-free inputs the screen spares, planted lines found by ``find_text`` with and without
the screen, and the time of each model. Uses the ``onnx`` package (a dependency of dicomnode).

    .venv/bin/python tools/quantize_detector.py [--frames 100] [--held-out 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from train_presence import _fonts, frame  # noqa: E402

from dicomnode.pixels import detect, lines, presence  # noqa: E402
from dicomnode.pixels.detect import INT8_MODEL, RapidOCRDetector, find_text  # noqa: E402


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _candidates(picture: np.ndarray) -> list[list[Any]]:
    """The regions of both presence checks, each as the stage would send them."""
    return [lines.candidates(picture), presence.candidates(picture)]


def _inputs(seeds: range, fonts: list[Path]) -> list[np.ndarray]:
    """Every float32 detector input ``find_text`` makes on these frames (the planes rapidocr's
    preparation makes of each crop)."""
    detector = RapidOCRDetector(screen="off")
    seen: list[np.ndarray] = []
    session = detector._detection.model.session
    detector._detection.model.session = lambda planes: (seen.append(planes), session(planes))[1]
    for n, seed in enumerate(seeds):
        if n % 20 == 0:
            print(f"  frame {n} of {len(seeds)}: {len(seen)} inputs", flush=True)
        picture, _ = frame(seed, fonts)
        for regions in _candidates(picture):
            if regions:
                find_text(detector, picture, regions, tall=True)
    detector._detection.model.session = session
    return seen


def quantize(source: Path, out: Path, calibration: list[np.ndarray]) -> None:
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            planes = next(self.items, None)
            return None if planes is None else {"x": planes}

    with tempfile.TemporaryDirectory() as tmp:
        opset17, prepared = Path(tmp) / "opset17.onnx", Path(tmp) / "prepared.onnx"
        # per-channel quantization needs opset 13 or later; the wheel's model is opset 11
        onnx.save(version_converter.convert_version(onnx.load(str(source)), 17), str(opset17))
        quant_pre_process(str(opset17), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )


def measure(model: Path, held_out: range, fonts: list[Path]) -> dict[str, Any]:
    """The screen on the held-out frames, as the node runs it."""
    plain = RapidOCRDetector(screen="off")
    screened = RapidOCRDetector(screen="off")
    screened._screen = detect._Screen(screened._detection, 1, model)
    post = plain._detection.model.postprocess_op
    screen = screened._screen
    assert screen is not None
    inputs = _inputs(held_out, fonts)
    with_boxes = missed = box_free = spared = 0
    float_s = int8_s = 0.0
    for planes in inputs:
        shape = planes.shape[2:]
        t = time.process_time()
        found = len(post(plain._detection.model.session(planes), shape)[1])
        float_s += time.process_time() - t
        t = time.process_time()
        seen = len(screen.find(screen.session(planes), shape)[1])
        int8_s += time.process_time() - t
        if found:
            with_boxes += 1
            missed += not seen
        else:
            box_free += 1
            spared += not seen
    planted = found_plain = found_screened = 0
    for seed in held_out:
        picture, truths = frame(seed, fonts)
        if not truths:
            continue
        regions = [b for group in _candidates(picture) for b in group]
        planted += len(truths)
        for detector, counter in ((plain, "plain"), (screened, "screened")):
            boxes = find_text(detector, picture, regions, tall=True) if regions else []
            hit = sum(any(_covers(b, t) for b in boxes) for t in truths)
            if counter == "plain":
                found_plain += hit
            else:
                found_screened += hit
    return {
        "detector_inputs": len(inputs),
        "inputs_with_float32_boxes": with_boxes,
        "of_which_screen_found_nothing": missed,
        "inputs_without_float32_boxes": box_free,
        "of_which_spared": spared,
        "planted_lines": planted,
        "planted_lines_found_float32": found_plain,
        "planted_lines_found_screened": found_screened,
        "seconds_float32": round(float_s, 1),
        "seconds_int8": round(int8_s, 1),
    }


def _covers(box: Any, truth: tuple[int, int, int, int]) -> bool:
    """A found box covers most (90%) of a planted line."""
    x0, y0, x1, y1 = truth
    inside = max(0, min(box.x1, x1) - max(box.x0, x0)) * max(0, min(box.y1, y1) - max(box.y0, y0))
    return inside >= 0.9 * max(1, (x1 - x0) * (y1 - y0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100, help="calibration frames")
    parser.add_argument("--held-out", type=int, default=100, help="measurement frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-inputs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=INT8_MODEL)
    args = parser.parse_args()
    import rapidocr

    source = next((Path(rapidocr.__file__).parent / "models").glob("*det*.onnx"))
    fonts = _fonts()
    started = time.time()
    inputs = _inputs(range(args.seed, args.seed + args.frames), fonts)
    pick = np.random.default_rng(args.seed).permutation(len(inputs))[: args.calibration_inputs]
    print(f"{len(inputs)} detector inputs from {args.frames} frames; calibrating on {len(pick)}")
    quantize(source, args.out, [inputs[k] for k in sorted(pick)])
    held = range(args.seed + args.frames, args.seed + args.frames + args.held_out)
    figures = measure(args.out, held, fonts)
    info = {
        "source": f"rapidocr {metadata.version('rapidocr')} {source.name}",
        "source_sha256": _sha256(source),
        "sha256": _sha256(args.out),
        "made_by": "tools/quantize_detector.py "
        f"--frames {args.frames} --held-out {args.held_out} --seed {args.seed} "
        f"--calibration-inputs {args.calibration_inputs}",
        "quantization": "ONNX Runtime quantize_static: opset 17, QDQ, int8 weights per "
        "channel, uint8 activations, min-max calibration",
        "screen_thresholds": list(detect.SCREEN_THRESHOLDS),
        "measured": figures,
    }
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))
    print(f"{time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
