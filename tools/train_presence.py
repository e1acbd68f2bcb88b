#!/usr/bin/env python3
"""Train the learned presence check: dicomnode/pixels/lines_model.json (boosted trees) and
lines_model.onnx (the net's second look), shipped in the package (see
dicomnode/pixels/lines.py and lines_net.py; the pixel stage uses them per
``pixels.presence``).

Frames: text-free CT, MR, PET, NM and CR from ``dicomnode.synth_anatomy`` (a third of them;
half at the modality's usual size, half at any of its other sizes, 64 px up:
``synth_anatomy.SIDES``), and the same kinds of frames, flat screens and ultrasound-like
speckle with text burned in: every kind ``synth_anatomy.burn`` plants (plain, small, faint,
inverted, coloured, over anatomy, dense, vertical) and lines in every TrueType font of the
system at 7 to 40 px, in any grey or colour, light on dark and dark on light, anywhere on
the frame. Each candidate line of ``lines.describe`` is a positive when it lies (mostly) on
a planted line or covers most of one, a negative when it touches none; the rest teaches
nothing and is left out.

The trees: boosted trees of depth 5 (logistic loss, histogram splits), fitted here in numpy,
so that the node needs nothing but numpy to use them. Frames of seeds from ``--seed`` on
train them; the next ``--held-out`` seeds choose the threshold for recall: the highest at
which the held-out planted lines covered by the candidates (padded as the detector's crops
are, 90% of the line) are all those covered when every line is sent, less ``--miss`` of them
(default 0.5%: a handful of near-invisible lines of the varied set would otherwise hold the
threshold at 0 and send every frame). Lines seen on the copy reduced four times get a
threshold of their own, the highest that loses at most ``--coarse-miss`` (0.1%) of the
held-out lines more (``lines.sends``).

The net (``lines_net.py``): trained with torch (the diffusion extra; not needed by the node)
on the same training lines as the net sees them (``lines.line_crops``), written as plain ONNX
operators beside the model file; its threshold is the highest that loses at most
``--net-miss`` (0.25%) of the held-out lines more than the trees alone. The lines the stage
looks at first have a net threshold of their own (``lines.first_and_rest``): where it finds
text on a frame it searches the frame further (the other lines, the thorough check's
candidates, a small frame whole), so that one line of a frame with text is enough there; the
highest threshold at which as many held-out frames with text still send a line over a planted
one, less ``--first-miss`` (none) of them.

    .venv/bin/python tools/train_presence.py [--frames 3000] [--held-out 800] [--seed 0]
    .venv/bin/python tools/train_presence.py --frames 40 --held-out 20 --epochs 1 \\
        --out /tmp/model/lines_model.json

Deterministic: the same arguments write the same files on the same machine (torch's
deterministic algorithms, its thread count as the machine has it). About 25 minutes on two
cores with the defaults, most of it the net.
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
    line_crops,
    load_model,
    sends,
)
from dicomnode.pixels.lines_net import HEIGHT, WIDTH, load_net  # noqa: E402
from dicomnode.synth_anatomy import FRAMES, SIDES, TEXT_KINDS, burn, sized  # noqa: E402

FONT_DIRS = ("dejavu", "liberation", "noto")
#: The thresholds tried, low to high.
GRID = [round(float(v), 3) for v in np.r_[0.0, np.geomspace(0.001, 0.9, 60)]]
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


def _anatomy(modality: str, rng: np.random.Generator) -> np.ndarray:
    """A text-free frame of ``modality``: half of them at the modality's usual width, half at
    any of its other widths (``synth_anatomy.SIDES``)."""
    if rng.random() < 0.5:
        return FRAMES[modality](rng)
    sides = SIDES[modality]
    return sized(modality, rng, int(sides[int(rng.integers(len(sides)))]))


def _background(rng: np.random.Generator) -> np.ndarray:
    """A frame to write on: anatomy of any modality, a flat screen, or speckle."""
    pick = rng.random()
    if pick < 0.8:
        return shown(_anatomy(list(FRAMES)[int(rng.integers(len(FRAMES)))], rng))
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
        return shown(_anatomy(modality, rng)), []
    if pick < 0.7:
        modality = list(FRAMES)[seed % len(FRAMES)]
        kind = TEXT_KINDS[int(rng.integers(len(TEXT_KINDS)))]
        picture, boxes = burn(shown(_anatomy(modality, rng)), kind, rng)
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


def collect(seeds: range, fonts: list[Path]) -> list[tuple[Any, Any, Any, Any, Any]]:
    """Per frame: its candidate lines (features, boxes), planted lines, shape, and the
    lines as the net sees them (``lines.line_crops``)."""
    out = []
    for seed in seeds:
        picture, truths = frame(seed, fonts)
        lines = describe(picture)
        crops = line_crops(picture, lines, np.arange(len(lines.features)))
        out.append((lines.features, lines.boxes, truths, picture.shape, crops))
    return out


# --- the net (dicomnode/pixels/lines_net.py) -----------------------------------------------


def fit_net(x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> dict[str, np.ndarray]:
    """Three 3 x 3 convolutions (16, 32, 64 channels, ReLU; 2 x 2 maximum after the first
    two), the maximum over the crop, one linear output: trained with torch (Adam, one-cycle
    rate, logistic loss with the positives weighted to balance), returned as numpy arrays."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        sys.exit("training the net needs torch: pip install torch==2.13.0 (the diffusion extra)")
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _fit_net(torch, F, x, y, epochs, seed)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _fit_net(torch: Any, F: Any, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> Any:
    torch.manual_seed(seed)
    layers = torch.nn.ModuleDict(
        {
            "c1": torch.nn.Conv2d(1, 16, 3, padding=1),
            "c2": torch.nn.Conv2d(16, 32, 3, padding=1),
            "c3": torch.nn.Conv2d(32, 64, 3, padding=1),
            "fc": torch.nn.Linear(64, 1),
        }
    )

    def forward(batch: Any) -> Any:
        out = F.max_pool2d(F.relu(layers["c1"](batch)), 2)
        out = F.max_pool2d(F.relu(layers["c2"](out)), 2)
        out = F.relu(layers["c3"](out)).amax(dim=(2, 3))
        return layers["fc"](out).squeeze(1)

    inputs, targets = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    positive = float(y.mean())
    weight = torch.tensor((1 - positive) / max(positive, 1e-6))
    size = 256
    optimizer = torch.optim.Adam(layers.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=max(1, epochs * -(-len(x) // size))
    )
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), size):
            rows = order[start : start + size]
            loss = F.binary_cross_entropy_with_logits(
                forward(inputs[rows]), targets[rows], pos_weight=weight
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(rows)
        print(f"net epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}", file=sys.stderr)
    return {k: v.detach().numpy().copy() for k, v in layers.state_dict().items()}


def write_net(weights: dict[str, np.ndarray], path: Path) -> None:
    """The net as plain ONNX operators (opset 13), input ``lines`` n x 1 x HEIGHT x WIDTH,
    output ``logit`` n x 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, tensors = [], []
    previous = "lines"
    for n, name in enumerate(("c1", "c2", "c3")):
        tensors += [
            numpy_helper.from_array(weights[f"{name}.weight"].astype(np.float32), f"{name}.w"),
            numpy_helper.from_array(weights[f"{name}.bias"].astype(np.float32), f"{name}.b"),
        ]
        nodes += [
            helper.make_node(
                "Conv", [previous, f"{name}.w", f"{name}.b"], [f"{name}.conv"],
                kernel_shape=[3, 3], pads=[1, 1, 1, 1],
            ),
            helper.make_node("Relu", [f"{name}.conv"], [f"{name}.relu"]),
        ]  # fmt: skip
        previous = f"{name}.relu"
        if n < 2:
            nodes.append(
                helper.make_node(
                    "MaxPool", [previous], [f"{name}.pool"], kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            previous = f"{name}.pool"
    tensors += [
        numpy_helper.from_array(weights["fc.weight"].astype(np.float32), "fc.w"),
        numpy_helper.from_array(weights["fc.bias"].astype(np.float32), "fc.b"),
    ]
    nodes += [
        helper.make_node("ReduceMax", [previous], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["pooled", "fc.w", "fc.b"], ["logit"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "lines_net",
        [helper.make_tensor_value_info("lines", TensorProto.FLOAT, ["n", 1, HEIGHT, WIDTH])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n", 1])],
        tensors,
    )
    model = helper.make_model(
        graph, producer_name="tools/train_presence.py", opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8  # read by every ONNX Runtime the node accepts
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="training frames")
    parser.add_argument("--held-out", type=int, default=800, help="frames that set the thresholds")
    parser.add_argument("--seed", type=int, default=0, help="the first training frame's seed")
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="the net's passes over the lines")
    parser.add_argument(
        "--out", type=Path, default=MODEL, help="the model file (the net beside it)"
    )
    parser.add_argument("--miss", type=float, default=0.005, help="held-out lines that may be lost")
    parser.add_argument(
        "--coarse-miss",
        type=float,
        default=0.001,
        help="held-out lines that may be lost more by the reduced copy's own threshold",
    )
    parser.add_argument(
        "--net-miss",
        type=float,
        default=0.0025,
        help="held-out lines that may be lost more by the net's second look",
    )
    parser.add_argument(
        "--first-only",
        action="store_true",
        help="only choose the first lines' net threshold of the model at --out (and its net), "
        "on the same held-out frames, and write it there",
    )
    parser.add_argument(
        "--first-miss",
        type=float,
        default=0.0,
        help="held-out frames with text that may be lost more by the first lines' threshold",
    )
    args = parser.parse_args()
    cv2.setNumThreads(1)
    started = time.perf_counter()
    fonts = _fonts()
    if args.first_only:
        return _only_first(args, fonts)
    train = collect(range(args.seed, args.seed + args.frames), fonts)
    held = collect(range(args.seed + args.frames, args.seed + args.frames + args.held_out), fonts)
    y = np.concatenate([labels(b, t, s) for _, b, t, s, _ in train])
    keep = y >= 0
    x = np.concatenate([f for f, *_ in train])[keep]
    y = y[keep].astype(np.float64)
    positives = y.sum()
    weight = np.where(y > 0, min(20.0, (len(y) - positives) / max(positives, 1)), 1.0)
    print(
        f"{len(y)} lines, {int(positives)} text, {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    model = fit(x.astype(np.float32), y, weight, args.trees, args.depth, 0.2)
    print(f"fitted, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    net_file = args.out.with_suffix(".onnx")
    data = {
        "version": MODEL_VERSION,
        "features": list(FEATURES),
        "threshold": 0.0,
        "coarse_threshold": 0.0,
        "net": net_file.name,
        "net_threshold": 0.0,
        **model,
    }
    ensemble = Ensemble(data)
    scores = [ensemble.score(f) if len(f) else np.zeros(0) for f, *_ in held]
    grid = GRID
    found_all = _recall(held, _masks(held, scores, 0.0, 0.0))
    threshold = _highest(
        held,
        grid,
        "threshold",
        lambda t: _masks(held, scores, t, 0.0),
        found_all[0] - args.miss * found_all[1],
        f" (all sent: {found_all[0]})",
    )
    data["threshold"] = threshold
    # Lines of the reduced copy: the highest threshold of their own that loses at most
    # --coarse-miss of the held-out lines more than the first threshold alone.
    kept = _recall(held, _masks(held, scores, threshold, 0.0))
    coarse = _highest(
        held,
        [v for v in grid if v >= threshold],
        "coarse threshold",
        lambda t: _masks(held, scores, threshold, t),
        kept[0] - args.coarse_miss * kept[1],
        default=threshold,
    )
    data["coarse_threshold"] = coarse
    # The net: on the training lines; its threshold the highest that loses at most
    # --net-miss of the held-out lines more than the trees alone.
    crops = np.concatenate([c for *_, c in train])[keep]
    weights = fit_net(crops, y, args.epochs, args.seed)
    write_net(weights, net_file)
    net = load_net(net_file)
    trees = _masks(held, scores, threshold, coarse)
    looks = [net.score(crops) if len(crops) else np.zeros(0) for *_, crops in held]
    kept = _recall(held, trees)
    net_threshold = _highest(
        held,
        grid,
        "net threshold",
        lambda t: [m & (look >= t) for m, look in zip(trees, looks, strict=True)],
        kept[0] - args.net_miss * kept[1],
    )
    data["net_threshold"] = net_threshold
    first_threshold = _first_threshold(held, trees, looks, net_threshold, grid, args.first_miss)
    data["first_net_threshold"] = first_threshold
    args.out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(
        f"threshold {threshold}, coarse {coarse}, net {net_threshold}, first lines "
        f"{first_threshold}, wrote {args.out} and "
        f"{net_file}, {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return 0


def _only_first(args: argparse.Namespace, fonts: list[Path]) -> int:
    """``--first-only``: the first lines' net threshold of an existing model, written into
    its file (the rest of the file as it was)."""
    model = load_model(args.out)
    net = model.net
    if net is None:
        sys.exit(f"{args.out} has no net beside it")
    first = args.seed + args.frames
    held = collect(range(first, first + args.held_out), fonts)
    scores = [model.score(f) if len(f) else np.zeros(0) for f, *_ in held]
    trees = _masks(held, scores, model.threshold, model.coarse_threshold)
    looks = [net.score(crops) if len(crops) else np.zeros(0) for *_, crops in held]
    chosen = _first_threshold(held, trees, looks, model.net_threshold, GRID, args.first_miss)
    data = json.loads(args.out.read_text())
    data["first_net_threshold"] = chosen
    args.out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"first lines {chosen}, wrote {args.out}", file=sys.stderr)
    return 0


def _highest(
    held: list[Any],
    grid: list[float],
    name: str,
    masks_at: Any,
    least: float,
    note: str = "",
    default: float = 0.0,
) -> float:
    """The highest threshold of ``grid`` at which the held-out lines covered (by the lines
    ``masks_at(threshold)`` sends) are at least ``least``; ``default`` when none is. Prints
    each step: lines covered and text-free frames sent."""
    chosen = default
    for t in grid:
        masks = masks_at(t)
        hits = _recall(held, masks)
        print(
            f"{name} {t:.3f}: lines {hits[0]}/{hits[1]}{note}; "
            f"text-free sent {_free_sent(held, masks)}",
            file=sys.stderr,
        )
        if hits[0] >= least:
            chosen = t
    return chosen


def _masks(
    held: list[Any], scores: list[np.ndarray], threshold: float, coarse: float
) -> list[np.ndarray]:
    """Per held-out frame, which of its lines the trees send at these thresholds."""
    return [
        sends(features, s, threshold, coarse) if len(s) else np.zeros(0, bool)
        for (features, *_), s in zip(held, scores, strict=True)
    ]


def _free_sent(held: list[Any], masks: list[np.ndarray]) -> int:
    """Held-out text-free frames that would go to the detector."""
    return sum(
        bool(m.any()) for (_, _, truths, *_), m in zip(held, masks, strict=True) if not truths
    )


def _first_threshold(
    held: list[Any],
    trees: list[np.ndarray],
    looks: list[np.ndarray],
    net_threshold: float,
    grid: list[float],
    miss: float,
) -> float:
    """The net's threshold for the lines looked at first. Where the stage finds text on a
    frame it searches it further, so one of its lines sent first is enough: the highest
    threshold at which the held-out frames with text that send a line over a planted one at
    ``net_threshold`` still do, less ``miss`` of them."""
    with_text = [i for i, (_, _, truths, _, _) in enumerate(held) if truths]

    def at(t: float) -> list[np.ndarray]:
        return [m & (look >= t) for m, look in zip(trees, looks, strict=True)]

    caught = _frames_caught(held, with_text, at(net_threshold))
    if not caught:  # nothing to choose by: every line first
        print("no held-out frame with text is caught: the net's threshold", file=sys.stderr)
        return net_threshold
    chosen = net_threshold
    for t in [net_threshold, *(t for t in grid if t > net_threshold)]:
        masks = at(t)
        hits = _frames_caught(held, with_text, masks)
        print(
            f"first lines' net threshold {t:.3f}: frames {hits}/{len(with_text)}; "
            f"text-free sent {_free_sent(held, masks)}",
            file=sys.stderr,
        )
        if hits >= caught - miss * len(with_text):
            chosen = t
    return chosen


def _frames_caught(held: list[Any], rows: list[int], masks: list[np.ndarray]) -> int:
    """Of the held-out frames ``rows``, those on which a line sent covers a planted one."""
    caught = 0
    for i in rows:
        _, boxes, truths, shape, _ = held[i]
        sent = boxes[masks[i]] if len(masks[i]) else boxes
        caught += any(covered(truth, sent, shape) for truth in truths)
    return caught


def _recall(held: list[Any], masks: list[np.ndarray]) -> tuple[int, int]:
    """Held-out planted lines covered by the lines sent, and all of them."""
    hits = total = 0
    for (_, boxes, truths, shape, _), m in zip(held, masks, strict=True):
        sent = boxes[m] if len(m) else boxes
        for truth in truths:
            total += 1
            hits += covered(truth, sent, shape)
    return hits, total


if __name__ == "__main__":
    sys.exit(main())
