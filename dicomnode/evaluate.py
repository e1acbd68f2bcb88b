"""How well did de-identification work on a synthetic set? (``dicomnode evaluate``)

Given the originals, the de-identified copies and ``truth.json`` from ``dicomnode synth``:

- header leaks: planted header strings found in the bytes of the de-identified file;
- pixel leaks: planted PHI strings that OCR (detection and recognition, on every frame of the
  output) can still read;
- removal: planted PHI boxes whose text is no longer readable in the output;
- detection recall and precision of the detector on the originals, against the true boxes;
- PSNR and SSIM between original and output, inside the true boxes and outside them
  (outside should be untouched); time per frame of detection.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom

from dicomnode.pixels import codec
from dicomnode.pixels.boxes import Box
from dicomnode.pixels.detect import TextDetector, find_text
from dicomnode.pixels.presence import candidates

__all__ = ["evaluate", "psnr", "ssim"]


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return math.inf
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two 8-bit grey images (Wang et al. 2004, Gaussian window)."""
    if min(a.shape[:2]) < 7:
        return 1.0 if np.array_equal(a, b) else 0.0
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(v: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(v, (7, 7), 1.5)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(value.mean())


def _pictures(orig: Path, anon: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """8-bit RGB pictures of both files' frames, the output scaled as the original is, so
    that a removed bright word does not look like a change of the whole image."""
    ds_before, ds_after = pydicom.dcmread(orig), pydicom.dcmread(anon)
    before, after = codec.decode(ds_before), codec.decode(ds_after)
    pictures_before, pictures_after = [], []
    for a, b in zip(before.arrays, after.arrays, strict=True):
        if a.dtype != np.uint8 and a.ndim == 2:
            low, high = float(a.min()), float(a.max()) or 1.0
            scale = 255.0 / max(high - low, 1e-9)
            pa = np.clip((a - low) * scale, 0, 255).astype(np.uint8)
            pb = np.clip((b.astype(np.float64) - low) * scale, 0, 255).astype(np.uint8)
            pictures_before.append(np.repeat(pa[:, :, None], 3, axis=2))
            pictures_after.append(np.repeat(pb[:, :, None], 3, axis=2))
        else:
            pictures_before.append(codec.display(a, before.photometric, ds_before))
            pictures_after.append(codec.display(b, after.photometric, ds_after))
    return pictures_before, pictures_after


def evaluate(
    orig: Path, anon: Path, truth: dict[str, Any], detector: TextDetector, pseudonymize: Any
) -> dict[str, Any]:
    """Compare ``orig`` and ``anon`` folders against ``truth``; returns the figures."""
    by_uid = {}
    for path in anon.rglob("*.dcm"):
        by_uid[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID] = path
    totals: dict[str, Any] = {
        "instances": 0,
        "missing_outputs": [],
        "header_leaks": [],
        "pixel_leaks": [],
        "phi_boxes": 0,
        "phi_boxes_removed": 0,
        "true_boxes": 0,
        "detected_true": 0,
        "detected": 0,
        "detected_correct": 0,
        "frames": 0,
        "text_free_frames": 0,
        "text_free_untouched": 0,
        "detect_seconds": 0.0,
        "psnr_inside": [],
        "psnr_outside": [],
        "ssim_inside": [],
        "ssim_outside": [],
    }
    for entry in truth["instances"]:
        totals["instances"] += 1
        output = by_uid.get(pseudonymize(entry["sop_instance_uid"]))
        if output is None:
            totals["missing_outputs"].append(entry["file"])
            continue
        data = output.read_bytes()
        for value in entry["header_phi"]:
            for variant in {value, value.replace("^", " "), value.upper()}:
                if variant.encode("latin-1", "ignore") in data and len(variant) >= 4:
                    totals["header_leaks"].append(f"{entry['file']}: header")
        before, after = _pictures(orig / entry["file"], output)
        for frame_truth in entry["frames"]:
            index = frame_truth["index"]
            _score_frame(
                totals,
                entry["file"],
                index,
                before[index],
                after[index],
                frame_truth["boxes"],
                detector,
            )
    return _summarise(totals)


def _score_frame(
    totals: dict[str, Any],
    name: str,
    index: int,
    before: np.ndarray,
    after: np.ndarray,
    truth_boxes: list[dict[str, Any]],
    detector: TextDetector,
) -> None:
    height, width = before.shape[:2]
    totals["frames"] += 1
    true = [Box(*t["box"]).padded(1, width, height) for t in truth_boxes]
    grey_before = cv2.cvtColor(before, cv2.COLOR_RGB2GRAY)
    grey_after = cv2.cvtColor(after, cv2.COLOR_RGB2GRAY)
    if not truth_boxes:
        totals["text_free_frames"] += 1
        totals["text_free_untouched"] += int(np.array_equal(grey_before, grey_after))
    # Detection on the original, against the truth.
    started = time.perf_counter()
    regions = candidates(before)
    found = find_text(detector, before, regions) if regions else []
    totals["detect_seconds"] += time.perf_counter() - started
    totals["true_boxes"] += len(true)
    totals["detected_true"] += sum(1 for t in true if t.covered_by(found, 0.5))
    totals["detected"] += len(found)
    totals["detected_correct"] += sum(1 for f in found if any(f.intersection(t) for t in true))
    # What OCR can still read in the output.
    readable = ""
    regions = candidates(after)
    if regions:
        boxes = find_text(detector, after, regions)
        if boxes:
            readable = " ".join(b.text or "" for b in detector.recognize(after, boxes))
    readable_norm = _norm(readable)
    for t in truth_boxes:
        if not t["phi"]:
            continue
        totals["phi_boxes"] += 1
        words = [w for w in re.split(r"[\s^,]+", t["text"]) if len(_norm(w)) >= 3]
        leaked = [w for w in words if _norm(w) in readable_norm]
        if leaked:
            totals["pixel_leaks"].append(f"{name} frame {index + 1}: {len(leaked)} word(s)")
        else:
            totals["phi_boxes_removed"] += 1
    mask = np.zeros((height, width), bool)
    for box in true:
        mask[box.y0 : box.y1, box.x0 : box.x1] = True
    if mask.any():
        totals["psnr_inside"].append(psnr(grey_before[mask], grey_after[mask]))
        ys, xs = np.nonzero(mask)
        crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        totals["ssim_inside"].append(ssim(grey_before[crop], grey_after[crop]))
    if (~mask).any():
        totals["psnr_outside"].append(psnr(grey_before[~mask], grey_after[~mask]))
        outside_before, outside_after = grey_before.copy(), grey_after.copy()
        outside_after[mask] = outside_before[mask]
        totals["ssim_outside"].append(ssim(outside_before, outside_after))


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    if not finite:
        return math.inf
    return sum(finite) / len(finite)


def _summarise(t: dict[str, Any]) -> dict[str, Any]:
    frames = max(1, t["frames"])
    return {
        "instances": t["instances"],
        "frames": t["frames"],
        "missing_outputs": t["missing_outputs"],
        "header_leaks": t["header_leaks"],
        "pixel_leaks": t["pixel_leaks"],
        "phi_boxes": t["phi_boxes"],
        "phi_boxes_removed": t["phi_boxes_removed"],
        "phi_removed_fraction": t["phi_boxes_removed"] / max(1, t["phi_boxes"]),
        "detection_recall": t["detected_true"] / max(1, t["true_boxes"]),
        "detection_precision": t["detected_correct"] / max(1, t["detected"]),
        "text_free_frames": t["text_free_frames"],
        "text_free_untouched": t["text_free_untouched"],
        "psnr_inside_db": _mean(t["psnr_inside"]),
        "psnr_outside_db": _mean(t["psnr_outside"]),
        "ssim_inside": _mean(t["ssim_inside"]),
        "ssim_outside": _mean(t["ssim_outside"]),
        "detect_ms_per_frame": 1000 * t["detect_seconds"] / frames,
    }
