"""The pixel stage: every photometric interpretation and transfer syntax, every remover,
fail-closed behaviour, and the synthetic set end to end."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from dicomnode.config import PixelConfig, RemoverConfig
from dicomnode.dicomio import encode_instance, read_instance
from dicomnode.errors import ConfigError, InstanceError
from dicomnode.pixels import PixelStage, TextRemainsError, codec
from dicomnode.pixels.boxes import Box, corners, held, touching
from dicomnode.pixels.detect import PaddleOCRDetector, RapidOCRDetector, Remembering
from dicomnode.pixels.policy import load_policy
from dicomnode.pixels.presence import candidates
from dicomnode.pixels.remove import make_remover
from tests.conftest import PYDICOM_FILES

WORDS = ["QUARTERMAINE", "ZEBULON", "8837461"]


@pytest.fixture(scope="module")
def detector() -> RapidOCRDetector:
    return RapidOCRDetector()


@pytest.fixture(scope="module")
def stage(detector: RapidOCRDetector) -> PixelStage:
    return PixelStage(PixelConfig(), detector=detector)


def _font(size: int = 16) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",):
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def text_picture(mode: str = "L", size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A dark image with a smooth gradient and burned-in PHI in the top-left corner."""
    width, height = size
    ramp = np.tile(np.linspace(30, 110, width, dtype=np.float32), (height, 1)).astype(np.uint8)
    image = Image.fromarray(ramp).convert(mode)
    draw = ImageDraw.Draw(image)
    white = 255 if mode == "L" else (255, 255, 255)
    draw.text((6, 6), "QUARTERMAINE ZEBULON", font=_font(), fill=white)
    draw.text((6, 28), "MRN 8837461", font=_font(), fill=white)
    return image


def make_ds(
    pixels: np.ndarray,
    photometric: str,
    syntax: str = ExplicitVRLittleEndian,
    modality: str = "US",
    bits: int | None = None,
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = (
        "1.2.840.10008.5.1.4.1.1.6.1" if modality == "US" else "1.2.840.10008.5.1.4.1.1.2"
    )
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    frames = (
        pixels if pixels.ndim == (4 if photometric in ("RGB", "YBR_FULL") else 3) else pixels[None]
    )
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.SamplesPerPixel = 3 if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") else 1
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    bits = bits or frames.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = frames.dtype.itemsize * 8, bits, bits - 1
    ds.PixelRepresentation = 1 if frames.dtype.kind == "i" else 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.PixelData = frames.tobytes()
    ds["PixelData"].VR = "OW" if frames.dtype.itemsize > 1 else "OB"
    if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds.compress(syntax, frames if len(frames) > 1 else frames[0], generate_instance_uid=False)
    elif syntax != ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def through_bytes(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return read_instance(buffer.getvalue())


def readable(detector: RapidOCRDetector, ds: Dataset) -> str:
    """Everything OCR can read in every frame."""
    frames = codec.decode(ds)
    words = []
    for frame in frames.arrays:
        picture = codec.display(frame, frames.photometric, ds)
        boxes = detector.detect(picture)
        words += [b.text or "" for b in detector.recognize(picture, boxes)]
    return " ".join(words).upper()


def header(ds: Dataset) -> dict[str, object]:
    return {
        "Modality": ds.Modality,
        "SOPClassUID": ds.SOPClassUID,
        "Rows": ds.Rows,
        "Columns": ds.Columns,
    }


def grey() -> np.ndarray:
    return np.array(text_picture("L"))


def rgb() -> np.ndarray:
    return np.array(text_picture("RGB"))


def jpeg_ds() -> Dataset:
    buffer = io.BytesIO()
    text_picture("RGB").save(buffer, format="JPEG", quality=95, subsampling=1)
    ds = make_ds(rgb(), "RGB")
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def palette_ds() -> Dataset:
    indices = (grey() // 16).astype(np.uint8)  # 16 grey levels
    ds = make_ds(indices, "PALETTE COLOR")
    lut = (np.arange(16, dtype=np.uint16) * 4369)[::-1].copy()  # index 15 is black
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [16, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.tobytes())
    return ds


CASES = {
    "MONOCHROME2 16-bit explicit": lambda: make_ds(
        (grey().astype(np.uint16) * 16), "MONOCHROME2", bits=12
    ),
    "MONOCHROME1 16-bit implicit": lambda: make_ds(
        ((255 - grey()).astype(np.uint16) * 16), "MONOCHROME1", ImplicitVRLittleEndian, bits=12
    ),
    "MONOCHROME2 signed 16-bit deflated": lambda: make_ds(
        grey().astype(np.int16) * 8 - 1000, "MONOCHROME2", DeflatedExplicitVRLittleEndian
    ),
    "RGB RLE": lambda: make_ds(rgb(), "RGB", RLELossless),
    "MONOCHROME2 JPEG-LS lossless": lambda: make_ds(grey(), "MONOCHROME2", JPEGLSLossless),
    "MONOCHROME2 JPEG 2000 lossless": lambda: make_ds(
        grey().astype(np.uint16), "MONOCHROME2", JPEG2000Lossless, bits=8
    ),
    "YBR_FULL uncompressed": lambda: make_ds(
        convert_color_space(rgb(), "RGB", "YBR_FULL"), "YBR_FULL"
    ),
    "YBR_FULL_422 JPEG baseline (lossy)": jpeg_ds,
    "PALETTE COLOR": palette_ds,
}
EXPECTED_SYNTAX = {
    "MONOCHROME2 16-bit explicit": ExplicitVRLittleEndian,
    "MONOCHROME1 16-bit implicit": ImplicitVRLittleEndian,
    "MONOCHROME2 signed 16-bit deflated": DeflatedExplicitVRLittleEndian,
    "RGB RLE": RLELossless,
    "MONOCHROME2 JPEG-LS lossless": JPEGLSLossless,
    "MONOCHROME2 JPEG 2000 lossless": JPEG2000Lossless,
    "YBR_FULL uncompressed": ExplicitVRLittleEndian,
    "YBR_FULL_422 JPEG baseline (lossy)": ExplicitVRLittleEndian,
    "PALETTE COLOR": ExplicitVRLittleEndian,
}


@pytest.mark.parametrize("case", list(CASES))
def test_text_removed_in_every_encoding(
    case: str, stage: PixelStage, detector: RapidOCRDetector
) -> None:
    ds = through_bytes(CASES[case]())
    before = codec.decode(ds)
    assert any(w in readable(detector, ds) for w in WORDS), "the planted text must be readable"
    report = stage.clean(ds, header(ds))
    assert report["frames_changed"] == 1
    out = read_instance(encode_instance(ds))
    assert out.file_meta.TransferSyntaxUID == EXPECTED_SYNTAX[case]
    text = readable(detector, out)
    assert not any(w in text for w in WORDS), text
    after = codec.decode(out)
    # Far from the text, the frame is as it was (exactly, unless the source was lossy).
    a, b = before.arrays[0][120:, 200:], after.arrays[0][120:, 200:]
    if before.photometric == after.photometric:
        assert np.array_equal(a, b)
    assert out.BurnedInAnnotation == "NO"
    assert out.ImageType[0] == "DERIVED"
    assert any(i.CodeValue == "113101" for i in out.DeidentificationMethodCodeSequence)
    if "lossy" in case:
        assert out.LossyImageCompression == "01" and after.photometric == "RGB"


def test_opencv_gets_the_detector_s_threads() -> None:
    """pixels.detector.threads sets OpenCV's pool too: 1 (the default) runs OpenCV in the
    worker's own thread, as a worker per core already uses every core."""
    import cv2

    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        PixelStage(PixelConfig())
        assert cv2.getNumThreads() == 1
        PixelStage(PixelConfig(detector={"threads": 3}))
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_text_free_ct_keeps_its_pixel_data_byte_for_byte(stage: PixelStage) -> None:
    ds = read_instance(PYDICOM_FILES / "CT_small.dcm")
    original = bytes(ds.PixelData)
    report = stage.clean(ds, header(ds))
    assert report["checked"] and report["frames_changed"] == 0
    assert read_instance(encode_instance(ds)).PixelData == original


def test_identical_frames_are_cleaned_once(stage: PixelStage) -> None:
    frame = grey()
    other = frame.copy()
    other[200:, :] = 0
    ds = through_bytes(make_ds(np.stack([frame, frame, frame, other]), "MONOCHROME2"))
    report = stage.clean(ds, header(ds))
    assert report["frames"] == 4 and report["distinct_frames"] == 2
    assert report["frames_changed"] == 4


def test_policy(tmp_path: Path) -> None:
    policy = load_policy()
    assert policy.decide({"Modality": "CT", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]}).check
    site = tmp_path / "pixels.yaml"
    site.write_text(
        "default: check\nskip:\n  - {modality: [CT], image_type: [AXIAL]}\n"
        "always_check:\n  - {burned_in_annotation: ['YES']}\n"
    )
    narrowed = load_policy(site)
    assert not narrowed.decide({"Modality": "CT", "ImageType": ["ORIGINAL", "AXIAL"]}).check
    assert narrowed.decide(
        {"Modality": "CT", "ImageType": "ORIGINAL\\AXIAL", "BurnedInAnnotation": "YES"}
    ).check
    # A known device region (from deid/CTP) is found whatever OCR says.
    dose = policy.decide(
        {
            "Modality": "CT",
            "ManufacturerModelName": "LightSpeed VCT",
            "ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"],
            "Rows": 512,
            "Columns": 512,
        }
    )
    assert Box(0, 0, 512, 121, source="region") in dose.regions
    site.write_text("default: sometimes\n")
    with pytest.raises(ConfigError, match="use check or skip"):
        load_policy(site)


class Blind:
    """A detector that sees nothing (to prove known regions need no OCR)."""

    name = "blind"

    def detect(self, picture: np.ndarray) -> list[Box]:
        return []

    def recognize(self, picture: np.ndarray, boxes: list[Box]) -> list[Box]:
        return boxes


def test_known_regions_are_removed_without_ocr(tmp_path: Path) -> None:
    site = tmp_path / "pixels.yaml"
    site.write_text(
        "regions:\n  - {label: banner, when: [[{field: Modality, op: equals, value: US}]],"
        " boxes: [[0, 0, 320, 50]]}\nuse_known_regions: false\n"
    )
    stage = PixelStage(PixelConfig(policy=site), detector=Blind())
    ds = through_bytes(make_ds(grey(), "MONOCHROME2"))
    stage.clean(ds, header(ds))
    frame = codec.decode(ds).arrays[0]
    assert (frame[:50] == frame.min()).all() and (frame[60:] == grey()[60:]).all()


class Broken(Blind):
    def detect(self, picture: np.ndarray) -> list[Box]:
        raise RuntimeError("model file corrupted")


class Useless:
    name = "useless"

    def remove(
        self, frame: np.ndarray, picture: np.ndarray, boxes: list[Box], fill: np.ndarray
    ) -> np.ndarray:
        return frame.copy()


def test_a_failing_detector_or_remover_never_passes_text(detector: RapidOCRDetector) -> None:
    ds = through_bytes(make_ds(grey(), "MONOCHROME2"))
    with pytest.raises(InstanceError) as caught:
        PixelStage(PixelConfig(), detector=Broken()).clean(ds, header(ds))
    assert caught.value.reason == "pixel-stage-failed"
    ds = through_bytes(make_ds(grey(), "MONOCHROME2"))
    stage = PixelStage(PixelConfig(), detector=detector, remover=Useless())
    stage._fill = Useless()  # the second pass cannot remove anything either
    with pytest.raises(TextRemainsError):
        stage.clean(ds, header(ds))


def test_telea_inpaints_better_than_a_box(detector: RapidOCRDetector) -> None:
    clean = np.array(
        Image.fromarray(
            np.tile(np.linspace(30, 110, 320, dtype=np.float32), (240, 1)).astype(np.uint8)
        )
    )
    results = {}
    for method in ("fill", "telea"):
        ds = through_bytes(make_ds(grey(), "MONOCHROME2"))
        PixelStage(PixelConfig(remover=RemoverConfig(method=method)), detector=detector).clean(
            ds, header(ds)
        )
        frame = codec.decode(ds).arrays[0].astype(float)
        results[method] = float(np.abs(frame[:50, :250] - clean[:50, :250]).mean())
    assert results["telea"] < results["fill"] / 2


def test_sensitive_mode_keeps_markers_and_scales(detector: RapidOCRDetector) -> None:
    image = Image.fromarray(np.full((240, 320), 40, np.uint8))
    draw = ImageDraw.Draw(image)
    draw.text((6, 6), "QUARTERMAINE", font=_font(18), fill=255)
    draw.text((250, 200), "5 cm", font=_font(18), fill=255)
    draw.text((280, 6), "LT", font=_font(18), fill=255)
    ds = through_bytes(make_ds(np.array(image), "MONOCHROME2"))
    stage = PixelStage(PixelConfig(mode="sensitive-text"), detector=detector)
    stage.clean(ds, header(ds), identity=("Quartermaine^Zebulon", "8837461"))
    frame = codec.decode(ds).arrays[0]
    original = np.array(image)
    assert (frame[:30, :150] != original[:30, :150]).any()  # the name went
    assert np.array_equal(frame[195:, 240:], original[195:, 240:])  # the scale stayed
    assert np.array_equal(frame[:30, 270:], original[:30, 270:])  # the marker stayed


def test_diffusion_remover_loads_local_weights(tmp_path: Path) -> None:
    from tests.tiny_diffusion import build

    model = build(tmp_path)
    remover = make_remover("diffusion", model_path=model, device="cpu", steps=2, crop=64)
    frame = np.array(text_picture("RGB"))
    out = remover.remove(frame, frame, [Box(0, 0, 220, 50)], np.zeros(3, np.uint8))
    assert out.shape == frame.shape and out.dtype == frame.dtype
    changed = (out != frame).any(axis=2)
    assert changed[:50, :220].any() and not changed[60:].any()
    with pytest.raises(ConfigError, match="local Stable Diffusion"):
        make_remover("diffusion", model_path=None)


def test_paddle_backend_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="det_model_dir"):
        PaddleOCRDetector(det_model_dir=None, rec_model_dir=None)
    with pytest.raises(ConfigError, match="no model folder"):
        PaddleOCRDetector(det_model_dir=tmp_path / "x", rec_model_dir=tmp_path / "y")
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    with pytest.raises(ConfigError, match="dicomnode\\[paddle\\]"):
        PaddleOCRDetector(det_model_dir=tmp_path / "x", rec_model_dir=tmp_path / "y")


def test_presence_check_narrows_where_ocr_looks() -> None:
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    picture = codec.display(ds.pixel_array, "MONOCHROME2", ds)
    area = sum(b.area for b in candidates(picture))
    assert area < 0.3 * picture.shape[0] * picture.shape[1]  # anatomy: a few places to look
    assert candidates(np.zeros((512, 512, 3), np.uint8)) == []
    # Faint text on a flat background (15 grey levels) is a candidate all the same.
    image = Image.fromarray(np.full((100, 300), 80, np.uint8))
    ImageDraw.Draw(image).text((10, 10), "ZEBULON 8837461", font=_font(14), fill=95)
    assert candidates(np.array(image.convert("RGB")))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, dict]]:
    from dicomnode.batch import run_batch
    from dicomnode.config import Config
    from dicomnode.synth import make_set
    from tests.conftest import SECRET

    root = tmp_path_factory.mktemp("synth")
    truth = make_set(root / "orig", 18, seed=7)
    outcomes = run_batch(
        sorted((root / "orig").glob("*.dcm")), root / "anon", Config(), SECRET, jobs=2
    )
    assert len(outcomes) == len(truth["instances"]) == 18  # all() of nothing would pass
    assert all(o.ok for o in outcomes), [(o.source.name, o.reason) for o in outcomes if not o.ok]
    yield root / "orig", root / "anon", truth


def test_synthetic_set_end_to_end(
    synthetic: tuple[Path, Path, dict], detector: RapidOCRDetector
) -> None:
    from dicomnode.evaluate import evaluate
    from dicomnode.scrub import Pseudonymizer
    from tests.conftest import SECRET

    orig, anon, truth = synthetic
    # What is left in the outputs; the detector's recall on the originals is bench/pixels.py's.
    result = evaluate(orig, anon, truth, detector, Pseudonymizer(SECRET).uid, detection=False)
    assert result["detection_recall"] is None
    assert result["missing_outputs"] == [] and result["header_leaks"] == []
    assert result["pixel_leaks"] == []
    assert result["phi_removed_fraction"] >= 0.99
    assert result["text_free_untouched"] == result["text_free_frames"] > 0
    assert result["psnr_outside_db"] > 25


def test_a_known_region_with_alternative_values_matches_either() -> None:
    """deid's "equals Rows 600|768" means either size (tools/translate_regions.py)."""
    from dicomnode.pixels.policy import load_policy

    policy = load_policy()
    for rows, expected in ((600, True), (768, True), (601, False)):
        header = {"Manufacturer": "Philips EPIQ 7G", "Rows": rows, "Columns": 800}
        found = any(r.label == "EPIQ_7G (CTP)" and r.applies(header) for r in policy.regions)
        assert found is expected, rows


def test_the_policy_finds_the_regions_each_rule_alone_finds() -> None:
    """The policy runs each distinct test of its ~100 known regions once an instance (most
    begin alike): the regions it finds, in their order, are those whose own rule holds."""
    policy = load_policy()
    headers = [
        {"Modality": modality, "Manufacturer": maker, "Rows": rows, "Columns": columns,
         "ManufacturerModelName": model, "ImageType": image_type, "BurnedInAnnotation": burned}
        for modality in ("US", "CT", "PT", "MR")
        for maker in ("GE MEDICAL SYSTEMS", "Philips", "SIEMENS", "Zonare", "EPIQ")
        for rows, columns in ((600, 800), (768, 1024), (512, 512), (480, 640))
        for model in ("LOGIQE9", "iU22", "EPIQ 7", "ACUSON S3000", "Z_ONE", "")
        for image_type, burned in ((["ORIGINAL", "PRIMARY"], "NO"), ("DERIVED\\SECONDARY", "YES"))
    ]  # fmt: skip
    matched = 0
    for header in headers:
        expected: list[Box] = []
        for region in policy.regions:
            if region.applies(header):
                whole = [(0, 0, header["Columns"], header["Rows"])] if region.whole_image else []
                for x0, y0, x1, y1 in whole + list(region.boxes):
                    box = Box(x0, y0, x1, y1, source="region")
                    expected.append(box.clipped(header["Columns"], header["Rows"]))
        assert list(policy.decide(header).regions) == expected, header
        matched += bool(expected)
    assert 0 < matched < len(headers)


def test_pair_checks_on_many_boxes_agree_with_the_box_methods() -> None:
    """The stage asks "does one of these touch / hold it" of every candidate against every
    crop in numpy blocks (a frame made to have thousands of lines is array work, not a Python
    loop over every pair): the answers are the Box methods', edges and empty boxes included."""
    rng = np.random.default_rng(7)

    def boxes(n: int) -> list[Box]:
        x0, y0 = rng.integers(0, 200, n), rng.integers(0, 200, n)
        w, h = rng.integers(0, 40, n), rng.integers(0, 40, n)
        corners = zip(x0, y0, x0 + w, y0 + h, strict=True)
        return [Box(int(a), int(b), int(c), int(d)) for a, b, c, d in corners]

    many, others = boxes(4000), boxes(300)  # more than one block (1 << 20 pairs)
    for gap in (0, 24):
        want = [any(b.touches(o, gap) for o in others) for b in many]
        assert touching(many, others, gap).tolist() == want
    for fraction in (1.0, 0.9):
        want = [any(b.intersection(o) >= fraction * b.area for o in others) for b in many]
        assert held(many, others, fraction).tolist() == want
    assert sum(want) and not all(want)  # both answers occur
    assert (
        touching(corners(many), corners(others), 24).tolist() == touching(many, others, 24).tolist()
    )
    assert touching(many, []).tolist() == [False] * len(many)
    assert held([], others).tolist() == []


class _Counting:
    """A detector that counts what it is given (pictures looked at, boxes read)."""

    def __init__(self, inner: RapidOCRDetector) -> None:
        self.inner, self.name = inner, inner.name
        self.looked = self.read = 0

    def detect(self, picture: np.ndarray) -> list[Box]:
        self.looked += 1
        return self.inner.detect(picture)

    def recognize(self, picture: np.ndarray, boxes: list[Box]) -> list[Box]:
        self.read += len(boxes)
        return self.inner.recognize(picture, boxes)


def _cine(frames: int = 4) -> Dataset:
    """An ultrasound loop: the same burned-in text on every frame, and an image that moves
    (speckle, different on every frame) beside it."""
    rng = np.random.default_rng(5)
    loop = []
    for _ in range(frames):
        frame = rgb()
        frame[120:220, 150:300] = rng.integers(0, 200, (100, 150, 1), dtype=np.uint8)
        loop.append(frame)
    return through_bytes(make_ds(np.stack(loop), "RGB"))


def test_a_loop_s_overlay_is_looked_at_and_read_once_with_the_same_result(
    detector: RapidOCRDetector,
) -> None:
    """The text on every frame of a loop is the same pixels, and the stage's looks and
    readings of it are answered from memory (``detect.Remembering``): fewer looks, and the
    cleaned loop byte for byte what looking at every frame afresh gives."""
    outcomes = []
    for limit in (0, 1 << 14):  # 0: nothing remembered, every look made
        counting = _Counting(detector)
        stage = PixelStage(PixelConfig(), detector=counting)
        stage._looks.limit = limit
        ds = _cine()
        report = stage.clean(ds, header(ds))
        assert report["distinct_frames"] == 4 and report["frames_changed"] == 4
        assert not stage._looks._boxes and not stage._looks._readings  # forgotten
        outcomes.append((bytes(ds.PixelData), report["boxes_by_kind"], counting))
    (fresh, boxes, every), (remembered, same_boxes, once) = outcomes
    assert remembered == fresh and same_boxes == boxes
    assert "QUARTERMAINE" not in readable(detector, through_bytes(ds))
    assert once.looked < every.looked and once.read <= every.read
    assert every.looked - once.looked >= 3  # the overlay's crops, on frames 2-4


def test_remembering_answers_the_same_pixels_only(detector: RapidOCRDetector) -> None:
    counting = _Counting(detector)
    looks = Remembering(counting)
    picture = rgb()
    first = looks.detect(picture)
    assert looks.detect(picture.copy()) == first and counting.looked == 1
    changed = picture.copy()
    changed[-1, -1] += 1  # one pixel, far from the text: a new look
    looks.detect(changed)
    assert counting.looked == 2
    line = first[0]
    read = looks.recognize(picture, [line])
    # Found again with another score, read again from memory; a box one pixel wider is not.
    again = looks.recognize(picture, [Box(line.x0, line.y0, line.x1, line.y1, score=0.1)])
    assert again == read and counting.read == 1
    looks.recognize(picture, [Box(line.x0, line.y0, line.x1 + 1, line.y1)])
    assert counting.read == 2
    looks.forget()
    looks.detect(picture)
    assert counting.looked == 3


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless], ids=["native", "rle"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_what_bits_outside_bits_stored_hold_is_cleared(
    stage: PixelStage, syntax: str, signed: bool
) -> None:
    """Older scanners drew overlays (text, a name) into the unused high bits of the Pixel
    Data's words (OverlayBitPosition). No viewer shows those bits and the check sees each
    pixel's BitsStored bits only (pydicom drops the rest as it decodes), so a frame left
    unchanged went out with the bitmap in it (the scrubber removes the 60xx attributes that
    say where it is, not the bits). The frames are written anew from the values checked;
    a frame whose unused bits hold only what its values imply is kept as it was."""
    rng = np.random.default_rng(3)
    values = rng.integers(-1000 if signed else 0, 2000 if signed else 4000, (64, 64))
    overlay = np.zeros((64, 64), np.uint16)
    overlay[20:30, 4:60:3] = 1  # a row of marks: characters, as far as bits go
    words = (values.astype(np.int16).view(np.uint16) & 0x0FFF) | (overlay << 14)

    def instance(frame: np.ndarray) -> Dataset:
        ds = make_ds(frame, "MONOCHROME2", syntax, modality="CT")
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
        return through_bytes(ds)

    ds = instance(words)
    report = stage.clean(ds, header(ds))
    assert report["frames_changed"] == 0 and report["frames_with_unused_bits_cleared"] == 1
    assert "for what bits outside BitsStored held" in report["pixel_data"]
    out = read_instance(encode_instance(ds))
    assert out.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(out.pixel_array, values)
    stored = codec.decode(out).arrays[0].astype(np.int64)  # as the node decodes it
    assert np.array_equal(stored, values)
    raw = pydicom.pixels.pixel_array(out, raw=True, correct_unused_bits=False).view(np.uint16)
    assert np.array_equal(
        raw, values.astype(np.int16).view(np.uint16) & (0xFFFF if signed else 0x0FFF)
    )
    # Words whose unused bits hold what their values imply: nothing to do.
    clean = values.astype(np.int16).view(np.uint16) & (0xFFFF if signed else 0x0FFF)
    ds = instance(clean)
    before = bytes(ds.PixelData)
    report = stage.clean(ds, header(ds))
    assert report["frames_with_unused_bits_cleared"] == 0 and report["pixel_data"] == "unchanged"
    assert bytes(ds.PixelData) == before


def test_text_squeezed_by_an_extreme_pixel_is_looked_for_over_the_rest(stage: PixelStage) -> None:
    """Shown stretched over its whole range, a CT slice with one pixel at 32767 has all its
    anatomy in a few grey levels, and a name written 1,000 above air (plain in any CT
    window) was not found: the frame is looked at again over the bulk of its values. A
    slice without such a pixel is looked at once."""
    from dicomnode.synth_anatomy import ct_slice

    stored = ct_slice(np.random.default_rng(7), 512).astype(np.int32) + 1024
    assert len(codec.value_spans(stored.astype(np.int16))) == 1
    picture = Image.new("L", (512, 512))
    ImageDraw.Draw(picture).text(
        (20, 20), "VANDERSLOOT^HENRIETTA 8837461", fill=255, font=_font(22)
    )
    strokes = np.asarray(picture) > 127
    stored[strokes] = 1000
    stored[500, 500] = 32767
    frame = stored.astype(np.int16)
    assert len(codec.value_spans(frame)) == 2
    ds = through_bytes(make_ds(frame, "MONOCHROME2", modality="CT"))
    report = stage.clean(ds, header(ds))
    assert report["frames_changed"] == 1, report
    out = np.frombuffer(ds.PixelData, "<i2").reshape(512, 512)
    assert not np.any(out[strokes] == 1000)


def _parametric_map(keyword: str, text: bool) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """A parametric map (Float or Double Float Pixel Data) of a smooth blob on NaN (no
    value), with a name and an ID burned in at a value of its own: the instance, the values
    and where the text is."""
    ds = make_ds(np.zeros((1, 192, 256), np.uint8), "MONOCHROME2", modality="MR")
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.30"
    dtype = codec.FLOAT_PIXELS[keyword]
    ds.BitsAllocated = 32 if dtype == "f4" else 64
    yy, xx = np.mgrid[0:192, 0:256]
    values = 1.5 * np.exp(-((xx - 128.0) ** 2 + (yy - 110.0) ** 2) / 3000.0)
    values[values < 0.05] = np.nan
    picture = Image.new("L", (256, 192))
    if text:
        ImageDraw.Draw(picture).text((8, 8), "VANDERSLOOT 8837461", fill=255, font=_font(16))
    strokes = np.asarray(picture) > 127
    values[strokes] = 2.5
    setattr(ds, keyword, values.astype("<" + dtype).tobytes())
    return through_bytes(ds), values, strokes


@pytest.mark.parametrize("keyword", ["FloatPixelData", "DoubleFloatPixelData"])
def test_text_in_float_pixel_data_is_removed(stage: PixelStage, keyword: str) -> None:
    """A parametric map keeps its values as floats, which pydicom's decoders do not read;
    the stage passed them unchecked ("no pixel data"), and a name burned into a map went out.
    They are checked and cleaned as a grey frame is and written back as floats (NaN, "no
    value", kept where no text was); a text-free map is kept byte for byte."""
    ds, values, strokes = _parametric_map(keyword, text=True)
    report = stage.clean(ds, header(ds))
    assert report["checked"] and report["frames_changed"] == 1, report
    out = read_instance(encode_instance(ds))
    cleaned = np.frombuffer(out[keyword].value, "<" + codec.FLOAT_PIXELS[keyword]).reshape(192, 256)
    assert not np.any(cleaned[strokes] == 2.5)
    far = np.zeros_like(strokes)
    far[80:, :] = True  # well away from the text: as it was, NaN included
    expected = values.astype(cleaned.dtype)
    assert np.array_equal(cleaned[far], expected[far], equal_nan=True)
    assert "DERIVED" in out.ImageType
    ds, _values, _strokes = _parametric_map(keyword, text=False)
    before = bytes(ds[keyword].value)
    report = stage.clean(ds, header(ds))
    assert report["frames_changed"] == 0 and bytes(ds[keyword].value) == before


def test_float_pixel_data_that_the_header_does_not_describe_is_refused(stage: PixelStage) -> None:
    """Shorter than the header declares: refused; longer: what follows the image dropped;
    Pixel Data beside Float Pixel Data (one would pass unchecked): refused."""
    ds, _values, _strokes = _parametric_map("FloatPixelData", text=False)
    image = bytes(ds.FloatPixelData)
    ds.FloatPixelData = image[:-4]
    with pytest.raises(codec.PixelDecodeError, match="holds 196,604 bytes"):
        stage.clean(ds, header(ds))
    ds.FloatPixelData = image + b"Vandersloot^Henrietta 88374610"
    report = stage.clean(ds, header(ds))
    assert report["bytes_after_image_removed"] == 30 and bytes(ds.FloatPixelData) == image
    ds.PixelData = b"\x00" * (192 * 256)
    with pytest.raises(codec.PixelDecodeError, match="one kind of pixel data"):
        stage.clean(ds, header(ds))


@pytest.mark.parametrize("odd", [False, True])
def test_native_pixel_data_after_the_image_is_removed(stage: PixelStage, odd: bool) -> None:
    """Bytes after the image (and its pad byte) belong to no frame and no check looks at
    them: a name and an ID there went out with a frame left unchanged (seen while triaging
    the mutation campaign through the node). They are dropped; the image stays byte for
    byte."""
    if odd:
        frame = np.full((5, 7), 40, np.uint8)  # 35 bytes: one pad byte to an even length
        ds = through_bytes(make_ds(frame, "MONOCHROME2", modality="CT"))
    else:
        ds = read_instance(PYDICOM_FILES / "CT_small.dcm")
    image = bytes(ds.PixelData)
    needed = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
    ds.PixelData = image[:needed] + (b"\x07" if odd else b"") + b"Vandersloot^Hidden MRN8837461 "
    report = stage.clean(ds, header(ds))
    assert report["frames_changed"] == 0
    assert report["bytes_after_image_removed"] == 30  # the pad byte is kept, as a zero
    out = read_instance(encode_instance(ds)).PixelData
    assert out == image[:needed] + (b"\x00" if odd else b"")
    assert "bytes after the image removed" in str(ds.DeidentificationMethod)
    ds.PixelData = image  # the image and its pad only: nothing to remove
    assert stage.clean(ds, header(ds))["bytes_after_image_removed"] == 0
