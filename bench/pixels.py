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

    .venv/bin/python bench/pixels.py [--count 90] [--diffusion-model DIR]
"""

from __future__ import annotations

import argparse
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

cv2.setNumThreads(1)


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
    args = parser.parse_args()
    warnings.simplefilter("ignore")
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
        spent = run(presidio(), files, work / "presidio", truth)
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
