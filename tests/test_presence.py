"""The presence check on frames that look like real anatomy (``dicomnode.synth_anatomy``), and
the anatomy itself: it must look like CT and MR (air, fat, soft tissue, bone; a body with
structure), not uniform noise, or a benchmark on it says nothing about real frames.

Recall is what is pinned here: every kind of burned-in line the pixel benchmark plants
(plain, small, faint, inverted, coloured, over anatomy, a dense block, vertical) is sent to
the detector, on realistic CT, MR and CR. No timing is asserted (``bench/pixels.py`` measures cost)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomnode.pixels import codec
from dicomnode.pixels.boxes import Box
from dicomnode.pixels.presence import candidates
from dicomnode.synth_anatomy import (
    FRAMES,
    TEXT_KINDS,
    burn,
    cr_chest,
    ct_slice,
    mr_slice,
    nm_planar,
    pt_slice,
)


def _shown(values: np.ndarray) -> np.ndarray:
    """As the stage shows a stored frame: stretched to 8 bits, RGB."""
    return codec.display(values, "MONOCHROME2", Dataset(), codec.value_span(values))


def _covered(line: tuple[int, int, int, int], found: list[Box], shape: tuple[int, ...]) -> float:
    """The share of ``line`` inside the candidates, padded as the detector's crops are."""
    height, width = shape[:2]
    truth = Box(*line).clipped(width, height)
    mask = np.zeros((height, width), bool)
    for box in found:
        crop = box.padded(24, width, height)
        mask[crop.y0 : crop.y1, crop.x0 : crop.x1] = True
    return float(mask[truth.y0 : truth.y1, truth.x0 : truth.x1].mean())


@pytest.mark.parametrize("region", ["chest", "abdomen", "head"])
def test_ct_anatomy_has_the_tissues_of_a_ct(region: str) -> None:
    hu = ct_slice(np.random.default_rng(1), region=region)
    assert hu.dtype == np.int16 and hu.shape == (512, 512)
    share = {
        "air": np.mean(hu < -900),
        "fat": np.mean((hu > -150) & (hu < -50)),
        "soft tissue": np.mean((hu > 0) & (hu < 100)),
        "bone": np.mean(hu > 500),
    }
    assert 0.2 < share["air"] < 0.8, share  # the body does not fill the field of view
    assert share["soft tissue"] > 0.1, share
    assert share["bone"] > 0.002, share
    if region != "head":
        assert share["fat"] > 0.01, share  # subcutaneous fat under the skin
    if region == "chest":
        assert np.mean((hu > -900) & (hu < -700)) > 0.03  # lung


def test_anatomy_is_structure_not_uniform_noise() -> None:
    """Smoothed, a frame keeps most of its variation (organs, body, bone); uniform noise
    would lose nearly all of it."""
    rng = np.random.default_rng(2)
    for values in (
        ct_slice(rng),
        mr_slice(rng, 256),
        pt_slice(rng),
        nm_planar(rng),
        cr_chest(rng),
    ):
        picture = values.astype(np.float32)
        smooth = cv2.GaussianBlur(picture, (0, 0), 4)
        assert smooth.std() > 0.6 * picture.std()
        noise = np.random.default_rng(3).uniform(0, 1, picture.shape).astype(np.float32)
        assert cv2.GaussianBlur(noise, (0, 0), 4).std() < 0.1 * noise.std()


def test_mr_has_a_noisy_background_and_a_bright_body() -> None:
    image = mr_slice(np.random.default_rng(4), 256, region="head").astype(np.float32)
    corner = image[:20, :20]
    centre = image[100:156, 100:156]
    assert 0 < corner.mean() < 0.15 * centre.mean()  # Rician noise, not zero
    assert corner.std() > 2


def test_every_modality_makes_frames() -> None:
    rng = np.random.default_rng(5)
    for modality, make in FRAMES.items():
        picture = _shown(make(rng))
        assert picture.dtype == np.uint8 and picture.ndim == 3, modality


@pytest.mark.parametrize("kind", TEXT_KINDS)
@pytest.mark.parametrize("modality", ["CT", "MR", "CR"])
def test_every_kind_of_burned_in_line_is_a_candidate(kind: str, modality: str) -> None:
    rng = np.random.default_rng(10 * TEXT_KINDS.index(kind) + list(FRAMES).index(modality))
    for _ in range(2):
        picture, lines = burn(_shown(FRAMES[modality](rng)), kind, rng)
        found = candidates(picture)
        for line in lines:
            # Most of the line: the detector reads it whole from a crop that holds most of
            # it, and verification looks again around what was removed. (A faint line in
            # MR background noise is covered 83% here; a stricter bound would pin luck.)
            assert _covered(line, found, picture.shape) >= 0.8, (kind, modality, line)


def test_burn_reports_every_line_it_writes() -> None:
    rng = np.random.default_rng(6)
    blank = np.zeros((256, 256), np.uint8)
    for kind in TEXT_KINDS:
        picture, lines = burn(blank, kind, rng)
        assert lines, kind
        ink = picture if picture.ndim == 2 else picture.max(axis=2)
        for x0, y0, x1, y1 in lines:
            assert ink[y0:y1, x0:x1].max() > 0, (kind, (x0, y0, x1, y1))
    with pytest.raises(ValueError):
        burn(blank, "gothic", rng)


@pytest.fixture(scope="module")
def stage() -> object:
    from dicomnode.config import PixelConfig
    from dicomnode.pixels import PixelStage
    from dicomnode.pixels.detect import RapidOCRDetector

    return PixelStage(PixelConfig(), detector=RapidOCRDetector())


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_vertical_text_is_found_and_read(stage: object, modality: str) -> None:
    """A line written along the side (turned a quarter) is found where the presence check
    points, and read turned upright, so that all-text mode removes it: before, the detector's
    tall box was read as it lay (garbage) and dropped."""
    from dicomnode.pixels import PixelStage

    assert isinstance(stage, PixelStage)
    rng = np.random.default_rng(3 + list(FRAMES).index(modality))
    picture, lines = burn(_shown(FRAMES[modality](rng)), "vertical", rng)
    line = Box(*lines[0])
    near = [Box(*lines[0]).padded(4, picture.shape[1], picture.shape[0])]  # a tight candidate
    boxes = stage._text(picture, near, None)
    assert any(b.intersection(line) >= 0.7 * line.area for b in boxes), boxes
