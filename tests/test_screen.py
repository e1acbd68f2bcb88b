"""The 8-bit screen in front of the text detector (``dicomnode.pixels.detect._Screen``).

It must never be why text is missed: wherever the float32 model finds a box of a text line's
height, the screen must see something, and the stage must find every planted line with it
that it finds without it.
It must also be worth having: it spares the float32 model inputs with nothing in them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomnode.errors import ConfigError
from dicomnode.pixels import codec, detect, lines, presence
from dicomnode.pixels.detect import INT8_MODEL, RapidOCRDetector, find_text, line_height
from dicomnode.synth_anatomy import FRAMES, TEXT_KINDS, burn


def _shown(values: np.ndarray) -> np.ndarray:
    return codec.display(values, "MONOCHROME2", Dataset(), codec.value_span(values))


@lru_cache(maxsize=1)
def _detectors() -> tuple[RapidOCRDetector, RapidOCRDetector]:
    return RapidOCRDetector(screen="off"), RapidOCRDetector(screen="int8")


def _frames(seed: int, count: int) -> list[tuple[np.ndarray, list[tuple[int, int, int, int]]]]:
    """Frames of every modality with every kind of burned-in text, and text-free ones."""
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        modality = list(FRAMES)[n % len(FRAMES)]
        picture = _shown(FRAMES[modality](rng))
        if n % 3 == 2:
            out.append((picture, []))
            continue
        picture, truths = burn(picture, TEXT_KINDS[n % len(TEXT_KINDS)], rng)
        if picture.ndim == 2:
            picture = np.repeat(picture[:, :, None], 3, axis=2)
        out.append((picture, truths))
    return out


def _regions(picture: np.ndarray) -> list[Any]:
    return lines.candidates(picture) + presence.candidates(picture)


def test_the_shipped_screen_was_made_from_the_model_rapidocr_loads_here() -> None:
    """det_int8.json names the file it was made from and the file itself; a rapidocr release
    with new detection weights fails here: run tools/quantize_detector.py again."""
    info = json.loads(INT8_MODEL.with_suffix(".json").read_text())
    assert hashlib.sha256(INT8_MODEL.read_bytes()).hexdigest() == info["sha256"]
    plain, screened = _detectors()
    source = Path(plain._detection.model.session.session._model_path)
    assert hashlib.sha256(source.read_bytes()).hexdigest() == info["source_sha256"]
    assert screened.screen == "int8" and plain.screen == "off"
    measured = info["measured"]  # the tool's held-out frames: no planted line lost
    assert measured["planted_lines_found_screened"] == measured["planted_lines_found_float32"]


def test_the_screen_sees_something_wherever_the_float32_model_finds_a_box() -> None:
    """On the inputs the detector gets (crops of both checks' candidates, at their scales) of
    held-out frames: none in which the float32 model finds a box of a text line's height is
    spared, and a good part of those in which it finds none are."""
    plain, screened = _detectors()
    screen = screened._screen
    assert screen is not None
    seen: list[np.ndarray] = []
    session = plain._detection.model.session
    plain._detection.model.session = lambda planes: (seen.append(planes), session(planes))[1]
    try:
        for picture, _ in _frames(2024, 15):
            regions = _regions(picture)
            if regions:
                find_text(plain, picture, regions, tall=True)
    finally:
        plain._detection.model.session = session
    post = plain._detection.model.postprocess_op
    with_boxes = box_free = spared = 0
    for planes in seen:
        shape = planes.shape[2:]
        sees = len(screen.find(screen.session(planes), shape)[1])
        quads, _ = post(session(planes), shape)
        if len(quads):
            with_boxes += 1
            # every box of a text line's height is seen; boxes taller than a line of the
            # input (anatomy: 459 px of 1024, or as large as the input) may be spared
            heights = [np.ptp(np.asarray(q, np.float32)[:, 1]) for q in quads]
            assert sees or min(heights) > line_height(shape[0]), (planes.shape, heights)
        else:
            box_free += 1
            spared += not sees
    assert with_boxes >= 20 and box_free >= 5, (with_boxes, box_free)
    assert spared >= box_free // 3, (spared, box_free)


def test_the_stage_finds_every_planted_line_with_the_screen_that_it_finds_without() -> None:
    plain, screened = _detectors()
    planted = found = 0
    for picture, truths in _frames(77, 15):
        if not truths:
            continue
        regions = _regions(picture)
        without = find_text(plain, picture, regions, tall=True) if regions else []
        with_screen = find_text(screened, picture, regions, tall=True) if regions else []
        for truth in truths:
            planted += 1
            if any(_covers(b, truth) for b in without):
                found += 1
                assert any(_covers(b, truth) for b in with_screen), truth
    assert planted >= 15 and found >= planted * 0.8, (found, planted)


def _covers(box: Any, truth: tuple[int, int, int, int]) -> bool:
    x0, y0, x1, y1 = truth
    inside = max(0, min(box.x1, x1) - max(box.x0, x0)) * max(0, min(box.y1, y1) - max(box.y0, y0))
    return inside >= 0.9 * max(1, (x1 - x0) * (y1 - y0))


def test_where_the_screen_sees_nothing_the_float32_model_does_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, screened = _detectors()
    calls: list[tuple[int, ...]] = []
    real = screened._float32
    monkeypatch.setattr(screened, "_float32", lambda p: (calls.append(p.shape), real(p))[1])
    flat = np.full((200, 300, 3), 40, np.uint8)
    assert screened.detect(flat) == [] and calls == []
    picture, truths = _frames(5, 1)[0]
    boxes = screened.detect(np.ascontiguousarray(picture))
    assert calls and any(_covers(b, truths[0]) for b in boxes), (boxes, truths)
    # the float32 model looked around the text, not at the whole frame
    assert sum(r * c for r, c, _ in calls) < picture.shape[0] * picture.shape[1] / 2, calls


def test_a_screen_made_from_another_model_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rapidocr release with new detection weights: the float32 model runs alone (slower,
    as sure) and the log says how to make a screen for it."""
    info = json.loads(INT8_MODEL.with_suffix(".json").read_text())
    info["source_sha256"] = "0" * 64
    fake = tmp_path / "det_int8.onnx"
    fake.write_bytes(INT8_MODEL.read_bytes())
    fake.with_suffix(".json").write_text(json.dumps(info))
    monkeypatch.setattr(detect, "INT8_MODEL", fake)
    with caplog.at_level(logging.WARNING, logger="dicomnode.pixels.detect"):
        detector = RapidOCRDetector(screen="int8")
    assert detector.screen == "off" and detector._screen is None
    assert "tools/quantize_detector.py" in caplog.text


def test_a_missing_screen_model_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(detect, "INT8_MODEL", tmp_path / "det_int8.onnx")
    with pytest.raises(ConfigError, match=r"reinstall dicomnode, or set pixels\.detector\.screen"):
        RapidOCRDetector(screen="int8")
    assert RapidOCRDetector(screen="off").screen == "off"


def test_the_screen_is_off_by_default_and_can_be_turned_on() -> None:
    from dicomnode.config import PixelConfig

    assert PixelConfig().detector.screen == "off"
    assert RapidOCRDetector().screen == "off"
    on = PixelConfig.model_validate({"detector": {"screen": "int8"}})
    assert on.detector.screen == "int8"
    with pytest.raises(ValueError):
        PixelConfig.model_validate({"detector": {"screen": "fp16"}})
