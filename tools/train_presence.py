#!/usr/bin/env python3
"""Train the learned presence check's line model: dicomnode/pixels/lines_model.json, shipped
in the package (see dicomnode/pixels/lines.py; the pixel stage uses it per ``pixels.presence``).

Frames: text-free CT, MR, PET, NM and CR from ``dicomnode.synth_anatomy`` (a third of them),
and the same kinds of frames, flat screens and ultrasound-like speckle with text burned in:
every kind ``synth_anatomy.burn`` plants (plain, small, faint, inverted, coloured, over
anatomy, dense, vertical) and lines in every TrueType font of the system at 7 to 40 px, in
any grey or colour, light on dark and dark on light, anywhere on the frame. Each candidate
line of ``lines.describe`` is a positive when it lies (mostly) on a planted line or covers
most of one, a negative when it touches none; the rest teaches nothing and is left out.

The model is a small ensemble of boosted trees of depth 4 (logistic loss, histogram splits),
fitted here in numpy, so that the node needs nothing but numpy to use it. Frames of seeds
from ``--seed`` on train it; the next ``--held-out`` seeds choose the threshold for recall:
the highest at which the held-out planted lines covered by the candidates (padded as the
detector's crops are, 90% of the line) are all those covered when every line is sent, less
``--miss`` of them (default 0.5%: a handful of near-invisible lines of the varied set would
otherwise hold the threshold at 0 and send every frame). Lines seen on the copy reduced four
times get a threshold of their own, the highest that loses at most ``--coarse-miss`` (0.1%)
of the held-out lines more (``lines.sends``).

    .venv/bin/python tools/train_presence.py [--frames 1500] [--held-out 400] [--seed 0]
    .venv/bin/python tools/train_presence.py --frames 40 --held-out 20 --out /tmp/model.json

Deterministic: the same arguments write the same file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode.pixels import codec  # noqa: E402
from dicomnode.pixels.lines import (  # noqa: E402
    FEATURES,
    MODEL,
    MODEL_VERSION,
    Ensemble,
    describe,
    sends,
)
from dicomnode.synth_anatomy import FRAMES, TEXT_KINDS, burn  # noqa: E402

FONT_DIRS = ("dejavu", "liberation", "noto")
_WORDS = (
    "SMITH^JOHN", "DOE, JANE", "MRN 00482913", "1958-04-17", "14:32:08", "Dr K. Meyer",
    "Acc 77812-B", "St. Mary Hospital", "PATIENT: MUELLER, ANNA", "DOB 03.11.1947", "ID 5521",
    "Kowalski Jan", "F 072Y", "ST SWITHIN MEMORIAL", "Tel 0161 496 0000", "LIVER", "R", "kV 120",
    "mAs 250", "W 400 L 40", "Se 3 Im 45", "O'Brien, Siobhan", "jane.doe@example.org", "59Y M",
    "12/03/2019", "ACC# 4471902", "Ref: Dr Patel", "HEAD", "LT KIDNEY", "3.0 mm",
)  # fmt: skip


def shown(values: np.ndarray) -> np.ndarray:
    """As the stage shows a stored frame: stretched to 8 bits, RGB."""
    return codec.display(values, "MONOCHROME2", Dataset(), codec.value_span(values))


def _fonts() -> list[Path]:
    base = Path("/usr/share/fonts/truetype")
    return sorted(p for d in FONT_DIRS for p in (base / d).glob("*.ttf") if "Math" not in p.name)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A frame to write on: anatomy of any modality, a flat screen, or speckle."""
    pick = rng.random()
    if pick < 0.8:
        modality = list(FRAMES)[int(rng.integers(len(FRAMES)))]
        return shown(FRAMES[modality](rng))
    h, w = (int(v) for v in rng.choice([256, 384, 512, 640], 2))
    if pick < 0.9:
        grey = np.full((h, w), int(rng.integers(0, 90)), np.uint8)
    else:
        noise = cv2.GaussianBlur(rng.rayleigh(0.5, (h, w)).astype(np.float32), (0, 0), 1.4)
        grey = np.clip(noise * rng.uniform(60, 160), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _varied(
    picture: np.ndarray, rng: np.random.Generator, fonts: list[Path]
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Lines in any font, size, tone and place (see the module's docstring)."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(np.ascontiguousarray(picture))
    draw = ImageDraw.Draw(image)
    h, w = picture.shape[:2]
    grey = picture.max(axis=2)
    boxes = []
    size_band = rng.random()
    size = int(
        rng.integers(7, 11)
        if size_band < 0.3
        else rng.integers(11, 19)
        if size_band < 0.75
        else rng.integers(19, 41)
    )
    font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size)
    x, y = int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h - 3 * size)))
    tone = rng.random()
    for n in range(int(rng.integers(1, 5))):
        text = _WORDS[int(rng.integers(len(_WORDS)))]
        at = (x, y + n * int(size * rng.uniform(1.1, 1.8)))
        x0, y0, x1, y1 = (int(v) for v in draw.textbbox(at, text, font=font))
        if min(x0, y0) < 0 or x1 > w or y1 > h or x1 - x0 < 2 or y1 - y0 < 2:
            continue
        local = int(grey[y0:y1, x0:x1].mean())
        box = None
        if tone < 0.35:
            fill: Any = (255, 255, 255)
        elif tone < 0.55:  # faint or mid-grey, above or below the local background
            step = int(rng.integers(20, 90)) * (1 if local < 128 else -1)
            level = int(np.clip(local + step, 0, 255))
            fill = (level, level, level)
        elif tone < 0.7:
            fill, box = (20, 20, 20), (230, 230, 230)
        elif tone < 0.8:
            fill = (0, 0, 0)
        else:
            fill = tuple(int(v) for v in rng.choice([0, 60, 200, 255], 3))
        if box is not None:
            draw.rectangle((x0 - 3, y0 - 3, x1 + 3, y1 + 3), fill=box)
        draw.text(at, text, font=font, fill=fill)
        boxes.append((x0, y0, x1, y1))
    return np.array(image), boxes


def frame(seed: int, fonts: list[Path]) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The frame of one seed and its planted lines (none for a text-free frame)."""
    rng = np.random.default_rng([seed, 7])
    pick = rng.random()
    if pick < 0.33:
        modality = list(FRAMES)[seed % len(FRAMES)]
        return shown(FRAMES[modality](rng)), []
    if pick < 0.7:
        modality = list(FRAMES)[seed % len(FRAMES)]
        kind = TEXT_KINDS[int(rng.integers(len(TEXT_KINDS)))]
        picture, boxes = burn(shown(FRAMES[modality](rng)), kind, rng)
        if picture.ndim == 2:
            picture = np.repeat(picture[:, :, None], 3, axis=2)
        return picture, boxes
    return _varied(_background(rng), rng, fonts)


def labels(lines: np.ndarray, truths: list[tuple[int, int, int, int]], shape: Any) -> np.ndarray:
    """1 (text), 0 (not), -1 (unclear: left out) per candidate line box."""
    if not truths:
        return np.zeros(len(lines), np.int8)
    mask = np.zeros(shape[:2], np.uint8)
    for x0, y0, x1, y1 in truths:
        mask[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = 1
    integral = cv2.integral(mask)
    out = np.full(len(lines), -1, np.int8)
    for k, (x0, y0, x1, y1) in enumerate(lines):
        area = max(1, (x1 - x0) * (y1 - y0))
        inside = int(integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0])
        covers = any(
            _overlap((x0, y0, x1, y1), t) >= 0.5 * max(1, (t[2] - t[0]) * (t[3] - t[1]))
            for t in truths
        )
        if inside >= 0.5 * area or covers:
            out[k] = 1
        elif inside == 0:
            out[k] = 0
    return out


def _overlap(a: Any, b: Any) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def covered(truth: Any, boxes: np.ndarray, shape: Any, share: float = 0.9) -> bool:
    """Is the planted line covered by the boxes padded as the detector's crops are?"""
    height, width = shape[:2]
    x0, y0 = max(0, truth[0]), max(0, truth[1])
    x1, y1 = min(width, truth[2]), min(height, truth[3])
    if x1 <= x0 or y1 <= y0:
        return True
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for bx0, by0, bx1, by1 in boxes:
        a0, b0 = max(bx0 - 24, x0) - x0, max(by0 - 24, y0) - y0
        a1, b1 = min(bx1 + 24, x1) - x0, min(by1 + 24, y1) - y0
        if a1 > a0 and b1 > b0:
            mask[b0:b1, a0:a1] = True
    return bool(mask.mean() >= share)


# --- boosted trees -------------------------------------------------------------------------


def fit(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, trees: int, depth: int, rate: float
) -> dict[str, Any]:
    """Boosted trees of ``depth`` (full binary, heap order) for the logistic loss, on 64
    quantile bins per feature; a node too small to split sends everything left."""
    bins = 64
    quantiles = np.linspace(0, 1, bins + 1)[1:-1]
    edges = [
        np.unique(np.quantile(x[:, f], quantiles).astype(np.float32)) for f in range(x.shape[1])
    ]
    binned = np.stack(
        [np.searchsorted(edges[f], x[:, f], side="left") for f in range(x.shape[1])], 1
    )
    prior = float(np.average(y, weights=weight))
    base = float(np.log(prior / (1 - prior)))
    margin = np.full(len(y), base)
    inner, leaves = 2**depth - 1, 2**depth
    features = np.zeros((trees, inner), np.intp)
    splits = np.full((trees, inner), np.inf, np.float64)
    values = np.zeros((trees, leaves), np.float64)
    for t in range(trees):
        p = 1 / (1 + np.exp(-margin))
        grad = (p - y) * weight
        hess = np.maximum(p * (1 - p), 1e-6) * weight
        node = np.zeros(len(y), np.intp)
        for level in range(depth):
            for k in range(2**level - 1, 2 ** (level + 1) - 1):
                rows = np.nonzero(node == k)[0]
                best = _best_split(binned[rows], grad[rows], hess[rows], bins)
                if best is not None:
                    f, b = best
                    features[t, k] = f
                    splits[t, k] = edges[f][b] if b < len(edges[f]) else np.inf
                go = binned[rows, features[t, k]] > (best[1] if best is not None else bins)
                node[rows] = 2 * k + 1 + go
        leaf = node - inner
        g = np.bincount(leaf, grad, leaves)
        h = np.bincount(leaf, hess, leaves)
        values[t] = np.round(-g / (h + 1.0) * rate, 6)
        margin += values[t][leaf]
    return {
        "base": round(base, 6),
        "depth": depth,
        "feature": features.tolist(),
        "split": [[float(v) if np.isfinite(v) else 3.0e38 for v in row] for row in splits],
        "leaf": values.tolist(),
    }


def _best_split(
    binned: np.ndarray, grad: np.ndarray, hess: np.ndarray, bins: int
) -> tuple[int, int] | None:
    """The feature and bin (go right above it) that most lowers the loss, or None."""
    if len(grad) < 40:
        return None
    total_g, total_h = grad.sum(), hess.sum()
    best, gain_best = None, 0.0
    for f in range(binned.shape[1]):
        g = np.cumsum(np.bincount(binned[:, f], grad, bins))[:-1]
        h = np.cumsum(np.bincount(binned[:, f], hess, bins))[:-1]
        ok = (h > 1.0) & (total_h - h > 1.0)
        if not ok.any():
            continue
        gain = g**2 / (h + 1) + (total_g - g) ** 2 / (total_h - h + 1) - total_g**2 / (total_h + 1)
        gain[~ok] = -np.inf
        b = int(np.argmax(gain))
        if gain[b] > gain_best:
            best, gain_best = (f, b), float(gain[b])
    return best


# --- the run -------------------------------------------------------------------------------


def collect(seeds: range, fonts: list[Path]) -> list[tuple[Any, Any, Any, Any]]:
    """Per frame: its candidate lines (features, boxes), planted lines and shape."""
    out = []
    for seed in seeds:
        picture, truths = frame(seed, fonts)
        lines = describe(picture)
        out.append((lines.features, lines.boxes, truths, picture.shape))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1500, help="training frames")
    parser.add_argument("--held-out", type=int, default=400, help="frames that set the threshold")
    parser.add_argument("--seed", type=int, default=0, help="the first training frame's seed")
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--out", type=Path, default=MODEL)
    parser.add_argument("--miss", type=float, default=0.005, help="held-out lines that may be lost")
    parser.add_argument(
        "--coarse-miss",
        type=float,
        default=0.001,
        help="held-out lines that may be lost more by the reduced copy's own threshold",
    )
    args = parser.parse_args()
    cv2.setNumThreads(1)
    started = time.perf_counter()
    fonts = _fonts()
    train = collect(range(args.seed, args.seed + args.frames), fonts)
    held = collect(range(args.seed + args.frames, args.seed + args.frames + args.held_out), fonts)
    x = np.concatenate([f for f, *_ in train])
    y = np.concatenate([labels(b, t, s) for _, b, t, s in train])
    keep = y >= 0
    x, y = x[keep], y[keep].astype(np.float64)
    positives = y.sum()
    weight = np.where(y > 0, min(20.0, (len(y) - positives) / max(positives, 1)), 1.0)
    print(
        f"{len(y)} lines, {int(positives)} text, {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    model = fit(x.astype(np.float32), y, weight, args.trees, args.depth, 0.2)
    print(f"fitted, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    data = {
        "version": MODEL_VERSION,
        "features": list(FEATURES),
        "threshold": 0.0,
        "coarse_threshold": 0.0,
        **model,
    }
    ensemble = Ensemble(data)
    scores = [ensemble.score(f) if len(f) else np.zeros(0) for f, *_ in held]
    grid = [round(v, 3) for v in np.r_[0.0, np.geomspace(0.001, 0.9, 60)]]
    found_all = _recall(held, scores, 0.0)
    threshold = 0.0
    for t in grid:
        free_sent = _free_sent(held, scores, t)
        hits = _recall(held, scores, t)
        print(
            f"threshold {t:.3f}: lines {hits[0]}/{hits[1]} (all sent: {found_all[0]}); text-free sent {free_sent}",
            file=sys.stderr,
        )
        if hits[0] >= found_all[0] - args.miss * found_all[1]:
            threshold = t
    data["threshold"] = threshold
    # Lines of the reduced copy: the highest threshold of their own that loses at most
    # --coarse-miss of the held-out lines more than the first threshold alone.
    coarse = threshold
    kept = _recall(held, scores, threshold)
    for t in (v for v in grid if v >= threshold):
        hits = _recall(held, scores, threshold, t)
        free_sent = _free_sent(held, scores, threshold, t)
        print(
            f"coarse threshold {t:.3f}: lines {hits[0]}/{hits[1]}; text-free sent {free_sent}",
            file=sys.stderr,
        )
        if hits[0] >= kept[0] - args.coarse_miss * kept[1]:
            coarse = t
    data["coarse_threshold"] = coarse
    args.out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(
        f"threshold {threshold}, coarse {coarse}, wrote {args.out}, "
        f"{time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return 0


def _free_sent(
    held: list[Any], scores: list[np.ndarray], threshold: float, coarse: float = 0.0
) -> int:
    """Held-out text-free frames that would go to the detector."""
    return sum(
        bool(sends(features, s, threshold, coarse).any())
        for s, (features, _, truths, _) in zip(scores, held, strict=True)
        if not truths and len(s)
    )


def _recall(
    held: list[Any], scores: list[np.ndarray], threshold: float, coarse: float = 0.0
) -> tuple[int, int]:
    hits = total = 0
    for (features, boxes, truths, shape), s in zip(held, scores, strict=True):
        sent = boxes[sends(features, s, threshold, coarse)] if len(s) else boxes
        for truth in truths:
            total += 1
            hits += covered(truth, sent, shape)
    return hits, total


if __name__ == "__main__":
    sys.exit(main())
