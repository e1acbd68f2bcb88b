#!/usr/bin/env python3
"""Burned-in text: dicomnode's pixel stage against Presidio's DICOM image redactor.

On a synthetic set from ``dicomnode synth`` (ultrasound, secondary captures, angiography,
CT-like slices; fake PHI burned into the pixels), in one run, on one core:

- ms per frame, for text-free frames and for frames with text;
- PHI boxes removed (no planted word readable by OCR afterwards) and pixel leaks;

for each of dicomnode's backends available here (PP-OCRv6 through rapidocr with the fill and
the Telea removers; diffusion when ``--diffusion-model`` names local weights and a GPU is
there) and for presidio-image-redactor (Tesseract, with a blank spaCy model: its default
model cannot be downloaded offline). Prints a table with ratios.

Then, per modality and per kind of burned-in text, recall and cost side by side (``--frames``
frames a row; ``--presence-only`` prints only this table): text-free frames that look like
real CT, MR, PET, NM and CR (``dicomnode.synth_anatomy``: body outline, organs, bone, lung,
noise texture; windowed to 8 bits as the stage does), also at sizes below 512 px (``SMALL``:
CT, MR, PET and NM matrices of 64 to 256 px, where organs are the size of characters), and
the same frames with text burned in (plain, small, faint, inverted, coloured, over anatomy, a
dense block, vertical; over MR anatomy alone, where mid-grey text is hardest to find; on the
small matrices, lines in a 6-10 px font that fits them). For both
presence checks the stage has (``pixels.presence``): the thorough one
(``dicomnode.pixels.presence``, strokes) and the learned one (``dicomnode.pixels.lines``,
model ``lines_model.json`` and its net ``lines_model.onnx`` from
``tools/train_presence.py``): how often it sends a text-free
frame to the detector and its ms; the lines it sends (candidate recall) and those the
detector then finds (detection recall), and the ms of both stages, CPU time on one core.
(Each check alone: in the stage, a frame on which the learned check led to text is searched
with the thorough check's candidates too.)

A hand-tuned line prototype before the learned check (``presence_lines.py``, retired) measured, with
``--frames 6`` on a quiet machine: text-free frames sent CT 0/6, MR 3/6, PT 1/6, NM 6/6,
CR 4/6 (presence 1.7-10 ms); lines found (cand, det) plain 17/18, 18/18; small 16/18, 16/18;
faint 15/18, 18/18; inverted 15/18, 18/18; coloured 16/18, 18/18; over-anatomy 6/12, 10/12;
dense 36/36, 36/36; vertical 6/6, 5/6.

    .venv/bin/python bench/pixels.py [--count 90] [--diffusion-model DIR]
    .venv/bin/python bench/pixels.py --presence-only [--frames 10]
    .venv/bin/python bench/pixels.py --loops-only [--loop-frames 30]

Then a real ultrasound loop (``LOOPS``: the same overlay on every frame, a moving image)
through the stage, every frame looked at afresh and with what the stage looked at and read
remembered within the instance (``detect.Remembering``, the default): CPU seconds, looks and
readings, and whether the output is the same byte for byte.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # tesseract: one core, like everyone else
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import pydicom
from pydicom.dataset import Dataset, FileDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode.config import PixelConfig, RemoverConfig  # noqa: E402
from dicomnode.evaluate import evaluate  # noqa: E402
from dicomnode.pipeline import header_snapshot  # noqa: E402
from dicomnode.pixels import PixelStage  # noqa: E402
from dicomnode.pixels.detect import RapidOCRDetector  # noqa: E402
from dicomnode.synth import make_set  # noqa: E402

cv2.setNumThreads(0)  # no OpenCV thread pool, as PixelStage sets it (pixels.detector.threads: 1)


#: Text-free frames of other sizes in the presence table (``synth_anatomy.SIDES``).
SMALL = (("CT", 64), ("CT", 128), ("CT", 256), ("MR", 128), ("PT", 128), ("NM", 64))


def presence_table(frames: int, detector: Any) -> None:
    """Recall and cost per modality (text-free) and per kind of text, side by side, for the
    thorough and the learned presence check (see the module's docstring)."""
    import numpy as np

    from dicomnode.pixels import codec, lines, presence
    from dicomnode.pixels.boxes import Box
    from dicomnode.pixels.detect import find_text
    from dicomnode.pixels.stage import CLOSER_LOOK_SIDE
    from dicomnode.synth_anatomy import FRAMES, TEXT_KINDS, burn, burn_small, sized

    def thorough(picture: Any) -> tuple[list[Box], list[Box]]:
        return presence.candidates(picture), []

    variants = {"thorough": thorough, "learned": lines.first_and_rest}
    rng = np.random.default_rng(12)

    def shown(values: Any) -> Any:  # as the stage shows a stored frame: stretched to 8 bits
        return codec.display(values, "MONOCHROME2", Dataset(), codec.value_span(values))

    rows: list[tuple[str, list[Any], list[list[tuple[int, int, int, int]]]]] = []
    for modality, make in FRAMES.items():
        rows.append((f"{modality} text-free", [shown(make(rng)) for _ in range(frames)], []))
    for modality, side in SMALL:  # frames below 512 px: organs the size of characters
        pictures = [shown(sized(modality, rng, side)) for _ in range(frames)]
        rows.append((f"{modality} {side}x{side} text-free", pictures, []))
    modalities = list(FRAMES)
    for kind in TEXT_KINDS:
        pictures, truths = [], []
        for n in range(frames):
            picture = shown(FRAMES[modalities[n % len(modalities)]](rng))
            picture, boxes = burn(picture, kind, rng)
            pictures.append(picture)
            truths.append(boxes)
        rows.append((kind, pictures, truths))
    for side in (256, 512):  # mid-grey text over MR anatomy: the hardest case (README)
        pictures, truths = [], []
        for _ in range(frames):
            picture, boxes = burn(shown(sized("MR", rng, side)), "over-anatomy", rng)
            pictures.append(picture)
            truths.append(boxes)
        rows.append((f"over-anatomy, MR {side}x{side}", pictures, truths))
    for modality, side in SMALL:  # text in a font that fits a small frame
        pictures, truths = [], []
        for _ in range(frames):
            picture, boxes = burn_small(shown(sized(modality, rng, side)), rng)
            pictures.append(picture)
            truths.append(boxes)
        rows.append((f"{modality} {side}x{side}, 6-10 px text", pictures, truths))

    print()
    print(f"Presence and detection, {frames} frames a row, CPU ms per frame on one core")
    print()
    head = "| frames | " + " | ".join(
        f"{v}: sent / lines found (cand, det) | presence ms | detect ms" for v in variants
    )
    print(head + " |")
    print("|---" * (1 + 3 * len(variants)) + "|")
    for label, pictures, truths in rows:
        cells = []
        for find in variants.values():
            spent = {"presence": 0.0, "detect": 0.0}
            sent = planted = cand_hits = det_hits = 0
            for index, picture in enumerate(pictures):
                height, width = picture.shape[:2]
                started = time.process_time()
                found, later = find(picture)
                spent["presence"] += time.process_time() - started
                boxes = []
                if found:
                    sent += 1
                    started = time.process_time()
                    boxes = find_text(detector, picture, found)
                    if boxes and later:  # as the stage does: the other lines once text is found
                        boxes += find_text(detector, picture, later)
                        found = found + later
                    if boxes and max(height, width) <= CLOSER_LOOK_SIDE:  # and a small frame
                        whole = [Box(0, 0, width, height, source="presence")]
                        boxes += find_text(detector, picture, whole, scale=3.0)
                    spent["detect"] += time.process_time() - started
                for line in truths[index] if truths else []:
                    truth = Box(*line).clipped(width, height)
                    planted += 1
                    cand_hits += _covered(truth, [b.padded(24, width, height) for b in found], 0.9)
                    det_hits += _covered(truth, boxes, 0.5)
            what = (
                f"{sent}/{len(pictures)} sent"
                if not truths
                else f"{cand_hits}/{planted}, {det_hits}/{planted}"
            )
            cells += [
                what,
                f"{1000 * spent['presence'] / len(pictures):.1f}",
                f"{1000 * spent['detect'] / len(pictures):.0f}",
            ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    print(
        "sent: text-free frames for which the check found candidates (the detector ran); "
        "cand: burned-in lines covered (90%) by the padded candidates; det: lines covered "
        "(50%) by the detector's boxes. As in the stage: the learned check's lines scored "
        "highest first, the others once text was found (with them in cand); on a frame of "
        "128 px or less where text was found, the whole frame three times enlarged too."
    )


def _covered(truth: Any, boxes: list[Any], share: float) -> bool:
    import numpy as np

    if not truth.area:
        return True
    mask = np.zeros((truth.height, truth.width), bool)
    for box in boxes:
        x0, y0 = max(box.x0, truth.x0) - truth.x0, max(box.y0, truth.y0) - truth.y0
        x1, y1 = min(box.x1, truth.x1) - truth.x0, min(box.y1, truth.y1) - truth.y0
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = True
    return bool(mask.mean() >= share)


def run(
    redact: Callable[[FileDataset], Dataset], files: list[Path], out: Path, truth: dict[str, Any]
) -> dict[str, float]:
    """CPU time per frame (text-free vs with text) of ``redact``; its outputs go to ``out``.

    An instance it raises on is counted as failed and written out uncleaned, so that the
    evaluation counts its PHI as left in place.
    """
    text_free = {e["file"] for e in truth["instances"] if not any(f["boxes"] for f in e["frames"])}
    spent = {"free": 0.0, "free_frames": 0, "text": 0.0, "text_frames": 0, "failed": 0}
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        ds = pydicom.dcmread(path)
        started = time.process_time()
        try:
            cleaned = redact(ds)
        except Exception:  # it does not handle this instance: counted, output uncleaned
            spent["failed"] += 1
            shutil.copyfile(path, out / path.name)
            continue
        elapsed = time.process_time() - started
        kind = "free" if path.name in text_free else "text"
        spent[kind] += elapsed
        spent[f"{kind}_frames"] += int(cleaned.get("NumberOfFrames", 1) or 1)
        cleaned.save_as(out / path.name, enforce_file_format=True)
    return spent


#: Real loops (pydicom's test files): the same overlay on every frame, a moving image.
LOOPS = ("color3d_jpeg_baseline.dcm",)


def loop_table(frames: int, detector: Any) -> None:
    """A real ultrasound loop's first ``frames`` frames through the stage, each frame looked at
    afresh (``Remembering`` limit 0) and with the overlay's looks and readings remembered
    within the instance (the default): CPU seconds, the detector's looks and readings, and
    whether the cleaned pixel data is the same byte for byte."""
    import hashlib

    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_frames

    print()
    print(f"Loops: the first {frames} frames, CPU time on one core")
    print()
    print(
        f"| {'loop':<28} | {'frames':>6} | {'afresh s':>8} | {'remembered s':>12} | "
        f"{'looks':>11} | {'readings':>11} | {'same output':>11} |"
    )
    print(f"|{'-' * 30}|{'-' * 7}:|{'-' * 9}:|{'-' * 13}:|{'-' * 12}:|{'-' * 12}:|{'-' * 12}:|")
    for name in LOOPS:
        source = pydicom.dcmread(get_testdata_file(name, download=False))
        total = int(source.NumberOfFrames)
        kept = list(generate_frames(source.PixelData, number_of_frames=total))[:frames]
        source.PixelData, source.NumberOfFrames = encapsulate(kept), len(kept)
        row = []
        for limit in (0, 1 << 14):
            counting = _Counting(detector)
            stage = PixelStage(PixelConfig(), detector=counting)
            stage._looks.limit = limit
            ds = copy.deepcopy(source)  # a shallow copy shares the elements it changes
            started = time.process_time()
            stage.clean(ds, header_snapshot(ds, stage.policy.fields))
            spent = time.process_time() - started
            row.append((spent, counting, hashlib.sha256(ds.PixelData).hexdigest()))
        (fresh, every, one), (kept_s, once, other) = row
        print(
            f"| {name:<28} | {len(kept):>6} | {fresh:>8.1f} | {kept_s:>12.1f} | "
            f"{once.looked:>5}/{every.looked:<5} | {once.read:>5}/{every.read:<5} | "
            f"{'yes' if one == other else 'NO':>11} |"
        )


class _Counting:
    """The detector, counting the pictures it looks at and the boxes it reads."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, inner.name
        self.looked = self.read = 0

    def detect(self, picture: Any) -> Any:
        self.looked += 1
        return self.inner.detect(picture)

    def recognize(self, picture: Any, boxes: Any) -> Any:
        self.read += len(boxes)
        return self.inner.recognize(picture, boxes)


def with_stage(stage: PixelStage) -> Callable[[FileDataset], Dataset]:
    """dicomnode's pixel stage as the node calls it (in place, on a header snapshot)."""

    def redact(ds: FileDataset) -> Dataset:
        stage.clean(ds, header_snapshot(ds, stage.policy.fields))
        return ds

    return redact


def presidio() -> Callable[[FileDataset], Dataset]:
    """Presidio's DICOM redactor with a blank spaCy model (its default cannot be downloaded)."""
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_image_redactor import DicomImageRedactorEngine, ImageAnalyzerEngine

    blank = Path(tempfile.mkdtemp()) / "blank_en"
    spacy.blank("en").to_disk(blank)
    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": str(blank)}],
        }
    )
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    engine = DicomImageRedactorEngine(
        image_analyzer_engine=ImageAnalyzerEngine(analyzer_engine=analyzer)
    )
    return lambda ds: engine.redact(ds, fill="contrast", use_metadata=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=90, help="instances (~2.3 frames each)")
    parser.add_argument("--diffusion-model", type=Path, help="local SD2 inpainting weights")
    parser.add_argument("--frames", type=int, default=10, help="frames a row of the presence table")
    parser.add_argument(
        "--presence-only", action="store_true", help="only the presence/recall table"
    )
    parser.add_argument("--loop-frames", type=int, default=30, help="frames of a loop")
    parser.add_argument("--loops-only", action="store_true", help="only the loops table")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.presence_only:
        presence_table(args.frames, RapidOCRDetector(threads=1))
        return 0
    if args.loops_only:
        loop_table(args.loop_frames, RapidOCRDetector(threads=1))
        return 0
    try:  # before the minutes the other backends take: the comparison needs it
        redactor = presidio()
    except ImportError as exc:
        print(
            f"bench/pixels.py compares with presidio-image-redactor ({exc.name} is "
            "missing): pip install '.[bench]', or run --presence-only",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="dicomnode-pixels-"))
    try:
        truth = make_set(work / "orig", args.count, seed=3)
        files = sorted((work / "orig").glob("*.dcm"))
        frames = sum(len(e["frames"]) for e in truth["instances"])
        print(f"{len(files)} instances, {frames} frames", file=sys.stderr)
        detector = RapidOCRDetector(threads=1)
        backends: list[tuple[str, Any]] = [
            ("dicomnode PP-OCRv6 + fill", PixelStage(PixelConfig(), detector=detector)),
            (
                "dicomnode PP-OCRv6 + telea",
                PixelStage(PixelConfig(remover=RemoverConfig(method="telea")), detector=detector),
            ),
        ]
        if args.diffusion_model:
            backends.append(
                (
                    "dicomnode PP-OCRv6 + diffusion",
                    PixelStage(
                        PixelConfig(
                            remover=RemoverConfig(
                                method="diffusion", model_path=args.diffusion_model
                            )
                        ),
                        detector=detector,
                    ),
                )
            )
        rows = []
        for name, stage in backends:
            spent = run(with_stage(stage), files, work / name.replace(" ", "_"), truth)
            result = evaluate(
                work / "orig", work / name.replace(" ", "_"), truth, detector, lambda u: u
            )
            rows.append((name, spent, result))
            print(f"  measured {name}", file=sys.stderr)
        spent = run(redactor, files, work / "presidio", truth)
        result = evaluate(work / "orig", work / "presidio", truth, detector, lambda u: u)
        rows.append(("presidio-image-redactor (tesseract)", spent, result))
        base = rows[-1][1]
        base_text = base["text"] / max(1, base["text_frames"])
        print()
        print(f"{len(files)} instances, {frames} frames; CPU time on one core per frame")
        print()
        print(
            f"| {'backend':<38} | {'text-free ms':>12} | {'with text ms':>12} | "
            f"{'vs presidio':>11} | {'PHI boxes removed':>17} | {'pixel leaks':>11} | "
            f"{'instances failed':>16} |"
        )
        print(
            f"|{'-' * 40}|{'-' * 13}:|{'-' * 13}:|{'-' * 12}:|{'-' * 18}:|{'-' * 12}:|{'-' * 17}:|"
        )
        for name, s, r in rows:
            free = 1000 * s["free"] / max(1, s["free_frames"])
            text = 1000 * s["text"] / max(1, s["text_frames"])
            ratio = (s["text"] / max(1, s["text_frames"])) / base_text if base_text else 0
            removed = f"{r['phi_boxes_removed']}/{r['phi_boxes']} ({100 * r['phi_removed_fraction']:.1f}%)"
            print(
                f"| {name:<38} | {free:>12.1f} | {text:>12.0f} | {ratio:>10.2f}x | {removed:>17} | "
                f"{len(r['pixel_leaks']):>11} | {s.get('failed', 0):>16} |"
            )
        print()
        print(
            "PHI boxes removed: planted PHI lines of which OCR (PP-OCRv6) can read no word "
            "afterwards. vs presidio: time per frame with text, relative to presidio (over the "
            "instances it handled; it raises on multi-frame instances, which stay uncleaned)."
        )
        ours = rows[0][2]
        print(
            f"dicomnode default: detection recall {ours['detection_recall']:.3f}, precision "
            f"{ours['detection_precision']:.3f}; PSNR inside boxes {ours['psnr_inside_db']:.1f} dB, "
            f"outside {ours['psnr_outside_db']:.1f} dB; SSIM inside {ours['ssim_inside']:.3f}, "
            f"outside {ours['ssim_outside']:.3f}; text-free frames untouched "
            f"{ours['text_free_untouched']}/{ours['text_free_frames']}"
        )
        presence_table(args.frames, detector)
        loop_table(args.loop_frames, detector)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
