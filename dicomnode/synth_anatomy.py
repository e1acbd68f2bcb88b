"""Text-free frames that look like real CT, MR, PET, NM and CR, for the synthetic set and the
benchmarks.

Not uniform noise: a body outline that is not a perfect ellipse, skin, fat and muscle layers,
organs with their own values and texture, bone (cortex and marrow, ribs, spine), lung with
vessels, air in the bowel, a patient table, correlated noise, and (MR) a bias field and
Rician background; PET is blurred and counts-noisy, NM planar is Poisson noise on a body
silhouette, CR is a projection with ribs and a collimation edge. These are the structures a
presence check for burned-in text sees on real frames: long curved edges, small round
vessels, trabecular bone, speckle-like noise.

Each function takes a numpy Generator and returns the stored values (int16 HU for CT,
unsigned for the others), as the modality writes them.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "FRAMES",
    "SIDES",
    "burn_small",
    "cr_chest",
    "ct_slice",
    "mr_slice",
    "nm_planar",
    "pt_slice",
    "sized",
]


def _blob(
    rng: np.random.Generator,
    centre: tuple[float, float],
    axes: tuple[float, float],
    wobble: float = 0.06,
    angle: float = 0.0,
) -> np.ndarray:
    """An irregular closed outline (points, int32): an ellipse whose radius wanders."""
    t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    radius = np.ones_like(t)
    for k in (2, 3, 5):
        radius += wobble / k * rng.normal() * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    x = axes[0] * radius * np.cos(t)
    y = axes[1] * radius * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    points = np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], axis=1)
    return points.astype(np.int32)


def _fill(canvas: np.ndarray, outline: np.ndarray, value: float) -> None:
    cv2.fillPoly(canvas, [outline], float(value), lineType=cv2.LINE_AA)


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean correlated noise of unit-ish amplitude."""
    noise = rng.normal(0, 1, shape).astype(np.float32)
    out = cv2.GaussianBlur(noise, (0, 0), sigma)
    return out / (float(out.std()) or 1.0)


def ct_slice(rng: np.random.Generator, size: int = 512, region: str | None = None) -> np.ndarray:
    """A 16-bit CT slice in HU (chest, abdomen or head)."""
    region = region or str(rng.choice(["chest", "abdomen", "head"]))
    s = size / 512
    hu: np.ndarray = np.full((size, size), -1000.0, np.float32)
    if region == "head":
        cx, cy = 256 * s, 250 * s
        _fill(hu, _blob(rng, (cx, cy), (170 * s, 205 * s), 0.03), 30)  # scalp
        _fill(hu, _blob(rng, (cx, cy), (160 * s, 195 * s), 0.02), 1100)  # skull
        _fill(hu, _blob(rng, (cx, cy), (148 * s, 182 * s), 0.02), 36)  # brain
        brain = np.zeros_like(hu)
        _fill(brain, _blob(rng, (cx, cy), (148 * s, 182 * s), 0.02), 1)
        hu += (brain > 0.5) * _texture(rng, hu.shape, 6 * s) * 4  # grey/white variation
        for side in (-1, 1):  # ventricles
            _fill(hu, _blob(rng, (cx + side * 22 * s, cy - 10 * s), (10 * s, 38 * s), 0.2), 8)
        _fill(hu, _blob(rng, (cx, cy + 150 * s), (60 * s, 30 * s), 0.2), 900)  # skull base
    else:
        body_axes = (
            (rng.uniform(185, 215) * s, rng.uniform(135, 160) * s)
            if region == "chest"
            else (rng.uniform(170, 210) * s, rng.uniform(130, 155) * s)
        )
        cx, cy = 256 * s + rng.uniform(-8, 8) * s, 262 * s
        outline = _blob(rng, (cx, cy), body_axes, 0.05)
        _fill(hu, outline, -100)  # subcutaneous fat
        inner = (body_axes[0] - 18 * s, body_axes[1] - 16 * s)
        _fill(hu, _blob(rng, (cx, cy), inner, 0.05), 55)  # muscle wall
        cavity = (inner[0] - 14 * s, inner[1] - 14 * s)
        _fill(hu, _blob(rng, (cx, cy - 6 * s), cavity, 0.06), -60 if region == "abdomen" else 40)
        if region == "chest":
            lungs: np.ndarray = np.zeros_like(hu)
            for side in (-1, 1):  # lungs
                lung = _blob(
                    rng, (cx + side * 82 * s, cy - 12 * s), (70 * s, 100 * s), 0.08, side * 0.15
                )
                _fill(hu, lung, -860)
                _fill(lungs, lung, 1)
            lungs = lungs > 0.5
            vessels = np.zeros_like(hu)
            for _ in range(int(260 * s * s)):  # vessels seen end-on and along
                x, y = rng.uniform(0, size), rng.uniform(0, size)
                if not lungs[int(y), int(x)]:
                    continue
                if rng.random() < 0.7:
                    cv2.circle(vessels, (int(x), int(y)), int(rng.integers(1, 4)), 1.0, -1)
                else:
                    dx, dy = rng.normal(0, 12 * s, 2)
                    cv2.line(
                        vessels, (int(x), int(y)), (int(x + dx), int(y + dy)), 1.0, 1, cv2.LINE_AA
                    )
            hu = np.where(lungs, hu + cv2.GaussianBlur(vessels, (0, 0), 0.7) * 850, hu)
            _fill(hu, _blob(rng, (cx + 18 * s, cy - 10 * s), (62 * s, 55 * s), 0.08), 45)  # heart
            _fill(hu, _blob(rng, (cx + 10 * s, cy - 20 * s), (22 * s, 18 * s), 0.1), 260)
            cv2.circle(hu, (int(cx - 10 * s), int(cy - 80 * s)), int(16 * s), 280, -1)  # aorta
            cv2.circle(hu, (int(cx - 20 * s), int(cy + 58 * s)), int(13 * s), 270, -1)
            for k in range(7):  # ribs along the wall
                angle = np.pi * (0.15 + 0.7 * k / 6)
                for side in (-1, 1):
                    x = cx + side * (body_axes[0] - 26 * s) * np.cos(angle)
                    y = cy + (body_axes[1] - 24 * s) * np.sin(angle) * (1 if k % 2 else -1)
                    _fill(hu, _blob(rng, (x, y), (9 * s, 5 * s), 0.1, angle), 650)
        else:
            _fill(hu, _blob(rng, (cx - 60 * s, cy - 30 * s), (85 * s, 70 * s), 0.1), 62)  # liver
            _fill(hu, _blob(rng, (cx + 95 * s, cy - 40 * s), (35 * s, 45 * s), 0.1), 48)  # spleen
            for side in (-1, 1):  # kidneys: cortex and medulla
                kidney = _blob(rng, (cx + side * 70 * s, cy + 45 * s), (24 * s, 34 * s), 0.1, 0.3)
                _fill(hu, kidney, 170)
                core = _blob(rng, (cx + side * 66 * s, cy + 45 * s), (12 * s, 20 * s), 0.2, 0.3)
                _fill(hu, core, 60)
            for _ in range(int(rng.integers(8, 16))):  # bowel, some with gas
                x, y = cx + rng.uniform(-60, 90) * s, cy + rng.uniform(-10, 60) * s
                side_ = rng.uniform(8, 18) * s
                loop = _blob(rng, (x, y), (side_, side_), 0.2)
                _fill(hu, loop, rng.choice([35, 35, -850, 120]))
            cv2.circle(hu, (int(cx - 5 * s), int(cy + 50 * s)), int(12 * s), 230, -1)  # aorta
        # spine: cortex, marrow with trabecular texture, canal
        sx, sy = cx, cy + body_axes[1] - 58 * s
        _fill(hu, _blob(rng, (sx, sy), (26 * s, 24 * s), 0.05), 850)
        marrow = np.zeros_like(hu)
        _fill(marrow, _blob(rng, (sx, sy), (21 * s, 19 * s), 0.05), 1)
        trabecular = 260 + _texture(rng, hu.shape, 1.2) * 90
        hu = np.where(marrow > 0.5, trabecular, hu)
        cv2.circle(hu, (int(sx), int(sy + 34 * s)), int(10 * s), 20, -1)  # canal
        for side in (-1, 1):  # transverse processes
            cv2.line(
                hu,
                (int(sx + side * 20 * s), int(sy + 30 * s)),
                (int(sx + side * 48 * s), int(sy + 42 * s)),
                700,
                max(1, int(7 * s)),
            )
        # the table under the patient
        ty = int(cy + body_axes[1] + 22 * s)
        if ty < size - 4:
            cv2.ellipse(hu, (size // 2, ty + 300), (int(300 * s), 300), 0, 235, 305, 150, 3)
    body = hu > -900
    noise = _texture(rng, hu.shape, 0.8) * rng.uniform(8, 18)
    hu = hu + noise * np.where(body, 1.0, 0.4)
    return np.asarray(np.clip(hu, -1024, 3071), dtype=np.int16)


def mr_slice(rng: np.random.Generator, size: int = 256, region: str | None = None) -> np.ndarray:
    """An MR magnitude slice (unsigned, ~12 bit): head or abdomen, T1-like, with a bias field
    and Rician background noise."""
    region = region or str(rng.choice(["head", "abdomen"]))
    s = size / 256
    img = np.zeros((size, size), np.float32)
    cx, cy = 128 * s, 128 * s
    if region == "head":
        _fill(img, _blob(rng, (cx, cy), (92 * s, 112 * s), 0.03), 900)  # scalp fat
        _fill(img, _blob(rng, (cx, cy), (86 * s, 106 * s), 0.03), 60)  # skull (dark)
        _fill(img, _blob(rng, (cx, cy), (80 * s, 99 * s), 0.03), 380)  # CSF rim
        _fill(img, _blob(rng, (cx, cy), (76 * s, 95 * s), 0.04), 520)  # grey matter
        white = np.zeros_like(img)
        _fill(white, _blob(rng, (cx, cy), (58 * s, 76 * s), 0.12), 1)
        folds = _texture(rng, img.shape, 2.5 * s)
        img = np.where((white > 0.5) & (folds > -0.6), 700, img)  # gyri: white into grey
        for side in (-1, 1):
            ventricle = _blob(rng, (cx + side * 12 * s, cy - 8 * s), (6 * s, 24 * s), 0.2)
            _fill(img, ventricle, 150)
        for side in (-1, 1):  # eyes
            _fill(img, _blob(rng, (cx + side * 30 * s, cy - 100 * s), (11 * s, 11 * s)), 200)
    else:
        axes = (rng.uniform(100, 115) * s, rng.uniform(70, 85) * s)
        _fill(img, _blob(rng, (cx, cy), axes, 0.05), 950)  # subcutaneous fat
        _fill(img, _blob(rng, (cx, cy), (axes[0] - 9 * s, axes[1] - 9 * s), 0.05), 420)
        _fill(img, _blob(rng, (cx, cy), (axes[0] - 18 * s, axes[1] - 18 * s), 0.06), 800)
        _fill(img, _blob(rng, (cx - 30 * s, cy - 12 * s), (45 * s, 35 * s), 0.1), 560)  # liver
        _fill(img, _blob(rng, (cx + 50 * s, cy - 20 * s), (17 * s, 22 * s), 0.1), 480)
        for side in (-1, 1):
            _fill(img, _blob(rng, (cx + side * 38 * s, cy + 24 * s), (12 * s, 17 * s)), 640)
        _fill(img, _blob(rng, (cx, cy + 50 * s), (14 * s, 12 * s)), 350)  # vertebra
        for _ in range(int(rng.integers(5, 10))):
            x, y = cx + rng.uniform(-30, 50) * s, cy + rng.uniform(0, 35) * s
            r = rng.uniform(4, 9) * s
            _fill(img, _blob(rng, (x, y), (r, r), 0.2), 120)
        cv2.circle(img, (int(cx - 4 * s), int(cy + 30 * s)), int(6 * s), 80, -1)  # flow void
    img += _texture(rng, img.shape, 1.0 * s) * 25 * (img > 0)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    bias = 1.0 + 0.25 * np.cos(2.4 * (xx - rng.uniform(0.2, 0.8))) * np.cos(
        2.0 * (yy - rng.uniform(0.2, 0.8))
    )
    img *= bias
    sigma = rng.uniform(12, 22)
    real = img + rng.normal(0, sigma, img.shape)
    imag = rng.normal(0, sigma, img.shape)
    return np.clip(np.hypot(real, imag), 0, 4095).astype(np.uint16)


def pt_slice(rng: np.random.Generator, size: int = 192) -> np.ndarray:
    """A PET slice (counts-like, unsigned): blurred uptake in body, organs and hot spots."""
    s = size / 192
    img: np.ndarray = np.zeros((size, size), np.float32)
    cx, cy = 96 * s, 100 * s
    _fill(img, _blob(rng, (cx, cy), (70 * s, 52 * s), 0.05), 1.0)
    _fill(img, _blob(rng, (cx - 24 * s, cy - 6 * s), (28 * s, 22 * s), 0.1), 2.2)  # liver
    _fill(img, _blob(rng, (cx + 10 * s, cy - 25 * s), (14 * s, 13 * s), 0.1), 5.0)  # heart
    for side in (-1, 1):
        _fill(img, _blob(rng, (cx + side * 26 * s, cy + 20 * s), (7 * s, 10 * s)), 3.5)
    for _ in range(int(rng.integers(1, 4))):  # lesions
        x, y = cx + rng.uniform(-50, 50) * s, cy + rng.uniform(-35, 35) * s
        cv2.circle(img, (int(x), int(y)), int(rng.integers(2, 5)), float(rng.uniform(4, 12)), -1)
    img = cv2.GaussianBlur(img, (0, 0), 2.2 * s)
    counts = rng.poisson(np.clip(img, 0, None) * 40.0).astype(np.float32)
    img = cv2.GaussianBlur(counts, (0, 0), 1.0) * 25
    return np.clip(img, 0, 32767).astype(np.uint16)


def nm_planar(rng: np.random.Generator, shape: tuple[int, int] = (1024, 256)) -> np.ndarray:
    """A whole-body planar NM (bone scan) frame: Poisson counts on a body silhouette."""
    h, w = shape
    img: np.ndarray = np.zeros(shape, np.float32)
    cx = w / 2
    _fill(img, _blob(rng, (cx, h * 0.07), (w * 0.11, h * 0.06), 0.03), 1.5)  # head
    _fill(img, _blob(rng, (cx, h * 0.3), (w * 0.2, h * 0.18), 0.03), 1.0)  # trunk
    _fill(img, _blob(rng, (cx, h * 0.5), (w * 0.18, h * 0.1), 0.03), 1.0)
    for side in (-1, 1):
        cv2.line(img, (int(cx + side * w * 0.08), int(h * 0.55)), (int(cx + side * w * 0.09), int(h * 0.97)), 0.9, int(w * 0.09))  # fmt: skip
        cv2.line(img, (int(cx + side * w * 0.2), int(h * 0.16)), (int(cx + side * w * 0.33), int(h * 0.5)), 0.8, int(w * 0.05))  # fmt: skip
    cv2.line(img, (int(cx), int(h * 0.13)), (int(cx), int(h * 0.55)), 3.0, 5)  # spine
    for k in range(10):  # ribs
        y = int(h * (0.17 + 0.025 * k))
        cv2.ellipse(img, (int(cx), y), (int(w * 0.17), 12), 0, 200, 340, 2.2, 2)
    cv2.circle(img, (int(cx), int(h * 0.56)), 9, 8.0, -1)  # bladder
    img = cv2.GaussianBlur(img, (0, 0), 1.5)
    return rng.poisson(img * rng.uniform(6, 14)).astype(np.uint16)


def cr_chest(rng: np.random.Generator, shape: tuple[int, int] = (640, 512)) -> np.ndarray:
    """A chest radiograph (12-bit, MONOCHROME2: bone bright): lungs, heart, ribs, clavicles,
    spine, soft tissue, and a collimation edge."""
    h, w = shape
    img = np.full(shape, 300.0, np.float32)  # attenuation: air darkest, lung dark
    _fill(img, _blob(rng, (w / 2, h * 0.55), (w * 0.46, h * 0.5), 0.03), 2100)  # soft tissue
    for side in (-1, 1):
        _fill(img, _blob(rng, (w / 2 + side * w * 0.2, h * 0.5), (w * 0.15, h * 0.3), 0.08), 1100)
    _fill(img, _blob(rng, (w * 0.55, h * 0.62), (w * 0.14, h * 0.14), 0.06), 2200)  # heart
    ribs = np.zeros(shape, np.float32)
    for k in range(9):
        y = h * (0.25 + 0.06 * k)
        for side in (-1, 1):
            cv2.ellipse(ribs, (int(w / 2), int(y)), (int(w * 0.36), int(h * 0.12)), 0, 90 - side * 90 + side * 10, 90 - side * 90 + side * 75, 1.0, max(2, h // 90))  # fmt: skip
    for side in (-1, 1):
        cv2.line(ribs, (int(w / 2 + side * 20), int(h * 0.2)), (int(w / 2 + side * w * 0.3), int(h * 0.15)), 1.0, max(3, h // 60))  # fmt: skip
    cv2.line(ribs, (w // 2, 0), (w // 2, h), 1.5, max(8, w // 20))
    img += cv2.GaussianBlur(ribs, (0, 0), 2) * 500
    img += _texture(rng, shape, 2.0) * 40 + rng.normal(0, 12, shape)
    edge = int(rng.integers(10, 30))
    img[:, :edge] = img[:, -edge:] = 3900  # collimator shadow (bright in MONOCHROME2)
    return np.clip(img, 0, 4095).astype(np.uint16)


FRAMES = {  # modality -> a text-free frame as stored (for the benchmarks)
    "CT": lambda rng: ct_slice(rng),
    "MR": lambda rng: mr_slice(rng, int(rng.choice([256, 512]))),
    "PT": lambda rng: pt_slice(rng),
    "NM": lambda rng: nm_planar(rng),
    "CR": lambda rng: cr_chest(rng),
}

#: Other widths each modality is stored at: reduced series and thumbnails (CT), MR matrices,
#: PET and SPECT matrices, NM static and dynamic studies (64 and 128), CR from a small
#: detector or a reduced copy. Frames below 512 px are common and look different to a
#: presence check: organs and bones shrink to the size of characters.
SIDES = {
    "CT": (64, 128, 256, 384, 512),
    "MR": (64, 128, 192, 256, 320, 384, 512),
    "PT": (64, 96, 128, 144, 192, 256),
    "NM": (64, 128, 256),
    "CR": (256, 384, 512, 1024),
}


def sized(modality: str, rng: np.random.Generator, side: int) -> np.ndarray:
    """A text-free frame of ``modality`` (a key of ``FRAMES``) ``side`` pixels wide: square
    slices; NM a whole-body strip four times as high, or a square static frame below 256;
    CR a portrait detector (5:4)."""
    if modality == "CT":
        return ct_slice(rng, side)
    if modality == "MR":
        return mr_slice(rng, side)
    if modality == "PT":
        return pt_slice(rng, side)
    if modality == "NM":
        return nm_planar(rng, (side if side < 256 else 4 * side, side))
    if modality == "CR":
        return cr_chest(rng, (side * 5 // 4, side))
    raise ValueError(f"no synthetic {modality} frames")


TEXT_KINDS = (
    "plain",
    "small",
    "faint",
    "inverted",
    "coloured",
    "over-anatomy",
    "dense",
    "vertical",
)
_WORDS = ("SMITH^JOHN", "DOE, JANE", "MRN 00482913", "1958-04-17", "14:32:08", "Dr K. Meyer", "Acc 77812-B", "St. Mary Hospital")  # fmt: skip


def _font(size: int, rng: np.random.Generator) -> object:
    from PIL import ImageFont

    names = ("DejaVuSans.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf")
    name = names[int(rng.integers(len(names)))]
    try:
        return ImageFont.truetype(f"/usr/share/fonts/truetype/dejavu/{name}", size)
    except OSError:
        return ImageFont.load_default(size=size)


def burn(
    picture: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """``picture`` (8-bit grey or RGB, as the stage shows a frame) with lines of fake PHI
    burned in the way ``kind`` says, and the lines' boxes (x0, y0, x1, y1):

    plain: white, 12-16 px, in a corner; small: 8-9 px; faint: 20-35 grey levels above the
    local background; inverted: dark letters on a light box; coloured: yellow, cyan, red or
    green (the picture becomes RGB); over-anatomy: mid-grey over the body; dense: a block of
    six lines of bright text on a mid-grey panel; vertical: a line written top to bottom.
    """
    from PIL import Image, ImageDraw

    colour = kind == "coloured" or picture.ndim == 3
    rgb = picture if picture.ndim == 3 else np.repeat(picture[:, :, None], 3, axis=2)
    image = Image.fromarray(np.ascontiguousarray(rgb if colour else rgb[:, :, 0]))
    draw = ImageDraw.Draw(image)
    h, w = picture.shape[:2]
    boxes: list[tuple[int, int, int, int]] = []
    grey = rgb[:, :, 0]

    def put(xy: tuple[int, int], text: str, size: int, fill: object, box: object = None) -> None:
        font = _font(size, rng)
        x0, y0, x1, y1 = draw.textbbox(xy, text, font=font)  # type: ignore[arg-type]
        if box is not None:
            draw.rectangle((x0 - 3, y0 - 3, x1 + 3, y1 + 3), fill=box)  # type: ignore[arg-type]
        draw.text(xy, text, font=font, fill=fill)  # type: ignore[arg-type]
        boxes.append((int(x0), int(y0), int(x1), int(y1)))

    def white(level: int) -> object:
        return (level,) * 3 if colour else level

    words = [_WORDS[int(i)] for i in rng.permutation(len(_WORDS))]
    if kind in ("plain", "small", "faint", "inverted", "coloured"):
        size = int(rng.integers(8, 10)) if kind == "small" else int(rng.integers(12, 17))
        for n in range(3):
            x = 6 if n != 1 else w // 2 + 10
            y = 6 + n * (size + 6) if n != 2 else h - size - 10
            text = words[n]
            if kind == "faint":
                local = int(grey[max(0, y - 2) : y + size + 4, x : x + 8 * size].mean())
                put((x, y), text, size, white(min(255, local + int(rng.integers(20, 36)))))
            elif kind == "inverted":
                put((x, y), text, size, white(20), box=white(230))
            elif kind == "coloured":
                tone = [(255, 255, 0), (0, 255, 255), (255, 40, 40), (60, 220, 60)][n % 4]
                put((x, y), text, size, tone)
            else:
                put((x, y), text, size, white(255))
    elif kind == "over-anatomy":
        size = int(rng.integers(11, 16))
        for n in range(2):
            y = h // 3 + n * (h // 4)
            put((w // 4, y), words[n], size, white(int(rng.integers(150, 200))))
    elif kind == "dense":
        size = int(rng.integers(11, 15))
        panel = (4, 4, min(w - 4, 4 + 17 * size), 4 + 6 * (size + 4) + 6)
        draw.rectangle(panel, fill=white(110))  # type: ignore[arg-type]
        for n in range(6):
            put((8, 8 + n * (size + 4)), words[n % len(words)], size, white(240))
    elif kind == "vertical":
        size = int(rng.integers(11, 15))
        font = _font(size, rng)
        text = words[0]
        _, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)  # type: ignore[arg-type]
        strip = Image.new(image.mode, (int(x1) + 2, int(y1) + 2), 0)
        ImageDraw.Draw(strip).text((0, 0), text, font=font, fill=white(255))  # type: ignore[arg-type]
        strip = strip.rotate(90, expand=True)
        mask = strip.convert("L")
        x, y = w - strip.width - 6, h // 4
        image.paste(strip, (x, y), mask)
        boxes.append((x, y + y0, x + strip.width, y + strip.height))
    else:
        raise ValueError(f"unknown text kind {kind!r}")
    return np.array(image), boxes


def burn_small(
    picture: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """``picture`` (8-bit grey or RGB, 64 to 256 px: ``SIDES``' small matrices) with one to
    three lines of fake PHI in a 6 to 10 px font, cut to fit its width: white, mid-grey (175)
    with the first line over the body, or dark on a light box; at the top and the bottom;
    and the lines' boxes. On such frames organs and bones are the size of these
    characters: the case a presence check finds hardest."""
    from PIL import Image, ImageDraw

    rgb = picture if picture.ndim == 3 else np.repeat(picture[:, :, None], 3, axis=2)
    image = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(image)
    h, w = picture.shape[:2]
    size = int(rng.integers(6, 11))
    font = _font(size, rng)
    tone = int(rng.integers(3))
    boxes: list[tuple[int, int, int, int]] = []
    words = [_WORDS[int(i)] for i in rng.permutation(len(_WORDS))]
    for n in range(int(rng.integers(1, 4))):
        text = words[n]
        while len(text) > 3 and draw.textbbox((0, 0), text, font=font)[2] > w - 4:  # type: ignore[arg-type]
            text = text[:-1]
        at = (2, 2 + n * (size + 3)) if n < 2 else (2, h - size - 4)
        if tone == 2 and n == 0:
            at = (2, h // 2 - size // 2)  # over the body
        x0, y0, x1, y1 = draw.textbbox(at, text, font=font)  # type: ignore[arg-type]
        if tone == 0:
            fill: tuple[int, int, int] = (255, 255, 255)
        elif tone == 1:
            fill = (20, 20, 20)
            draw.rectangle((x0 - 2, y0 - 2, x1 + 2, y1 + 2), fill=(230, 230, 230))
        else:
            fill = (175, 175, 175)
        draw.text(at, text, font=font, fill=fill)  # type: ignore[arg-type]
        boxes.append((int(x0), int(y0), int(x1), int(y1)))
    return np.array(image), boxes
