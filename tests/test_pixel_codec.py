"""Re-encoding after text removal: the Photometric Interpretation and Planar Configuration
written are valid for the transfer syntax written (PS3.5 8.2), dciodvfy finds no error the
source did not have, and decoding the output gives back exactly the cleaned frames.

The codec is driven directly (decode, change a box, encode), without the scrubber or OCR."""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.pixels import convert_color_space  # type: ignore[attr-defined]
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from dicomnode.pixels import codec
from tests.conftest import PYDICOM_FILES, require_tool

# What PS3.5 allows for three samples (Tables 8.2.2-1, 8.2.3-1, 8.2.4-1; native data: PS3.3
# C.7.6.3.1.2), and the Planar Configuration each syntax takes (None: the source's own value).
COLOUR_PI = {
    JPEG2000Lossless: {"YBR_RCT", "RGB", "YBR_FULL"},
    JPEGLSLossless: {"RGB", "YBR_FULL"},
    RLELossless: {"RGB", "YBR_FULL"},
    ExplicitVRLittleEndian: {"RGB", "YBR_FULL", "YBR_FULL_422"},
}
PLANAR = {JPEG2000Lossless: 0, JPEGLSLossless: 0, RLELossless: None, ExplicitVRLittleEndian: None}

# file: (syntax written, Photometric Interpretation written)
BUNDLED = {
    "examples_jpeg2k.dcm": (JPEG2000Lossless, "YBR_RCT"),  # US, the tester's case
    "GDCMJ2K_TextGBR.dcm": (JPEG2000Lossless, "YBR_RCT"),  # SC
    "MR_small_jp2klossless.dcm": (JPEG2000Lossless, "MONOCHROME2"),
    "SC_rgb_rle.dcm": (RLELossless, "RGB"),
    "SC_rgb_rle_16bit_2frame.dcm": (RLELossless, "RGB"),
    "SC_rgb_rle_32bit.dcm": (ExplicitVRLittleEndian, "RGB"),  # no encoder takes 32-bit RLE
    "MR_small_RLE.dcm": (RLELossless, "MONOCHROME2"),
    "MR_small_jpeg_ls_lossless.dcm": (JPEGLSLossless, "MONOCHROME2"),
    "examples_palette.dcm": (ExplicitVRLittleEndian, "PALETTE COLOR"),
    "SC_rgb_dcmtk_+eb+cy+np.dcm": (ExplicitVRLittleEndian, "RGB"),  # JPEG baseline YBR_FULL_422
    "examples_ybr_color.dcm": (ExplicitVRLittleEndian, "RGB"),  # US, JPEG baseline, 30 frames
    "SC_ybr_full_422_uncompressed.dcm": (ExplicitVRLittleEndian, "RGB"),
    "SC_rgb_gdcm_KY.dcm": (ExplicitVRLittleEndian, "RGB"),  # JPEG 2000 lossy, RGB
    "693_J2KI.dcm": (ExplicitVRLittleEndian, "MONOCHROME2"),  # JPEG 2000 lossy, grey
}


def _dciodvfy_errors(dciodvfy: str, path: Path) -> set[str]:
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return {re.sub(r"\d+(\.\d+)*", "N", line) for line in lines if line.startswith("Error")}


def _clean_a_box(ds: Dataset) -> codec.Frames:
    """Decode, blank a 10x10 box in every frame (as the remover would), encode; the frames."""
    frames = codec.decode(ds)
    for frame in frames.arrays:
        frame[:10, :10] = codec.fill_value(frame, frames.photometric, ds)
    codec.encode(ds, frames)
    return frames


def _uses_mct(ds: Dataset) -> list[bool]:
    """Per frame: does the JPEG 2000 codestream apply a multiple component transform?"""
    flags = []
    for stream in generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))):
        position = 2  # after SOC
        while stream[position : position + 2] != b"\xff\x52":  # COD
            position += 2 + int.from_bytes(stream[position + 2 : position + 4], "big")
        # COD: marker, Lcod, Scod, progression order, layers (2 bytes), MCT
        flags.append(stream[position + 8] == 1)
    return flags


def _check_written(ds: Dataset, syntax: UID, source_planar: int | None) -> None:
    pi = ds.PhotometricInterpretation
    if ds.SamplesPerPixel == 3:
        assert pi in COLOUR_PI[syntax]
        expected_planar = PLANAR[syntax]
        assert ds.PlanarConfiguration == (
            expected_planar if expected_planar is not None else (source_planar or 0)
        )
    else:
        assert "PlanarConfiguration" not in ds
    if syntax == JPEG2000Lossless and ds.SamplesPerPixel == 3:
        # PS3.5 8.2.4: YBR_RCT if and only if the reversible transform was applied.
        assert set(_uses_mct(ds)) == {pi == "YBR_RCT"}


@pytest.mark.parametrize("name", list(BUNDLED))
def test_reencoded_bundled_file_stays_valid(name: str, tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy")
    path = PYDICOM_FILES / name
    assert path.exists(), f"{name} is not among pydicom's bundled files (pydicom changed?)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's remarks on odd test files
        ds = pydicom.dcmread(path)
    source_planar = ds.get("PlanarConfiguration")
    lossy = codec.decode(ds).lossy
    frames = _clean_a_box(ds)
    out = tmp_path / name
    ds.save_as(out, enforce_file_format=True)

    syntax, photometric = BUNDLED[name]
    written = pydicom.dcmread(out)
    assert written.file_meta.TransferSyntaxUID == syntax
    assert written.PhotometricInterpretation == photometric
    _check_written(written, syntax, source_planar)
    if lossy:
        assert written.LossyImageCompression == "01"
    back = codec.decode(written)
    assert back.photometric == frames.photometric
    assert len(back.arrays) == len(frames.arrays)
    assert all(np.array_equal(a, b) for a, b in zip(back.arrays, frames.arrays, strict=True))
    new = _dciodvfy_errors(dciodvfy, out) - _dciodvfy_errors(dciodvfy, path)
    assert not new, f"dciodvfy reports new errors: {sorted(new)}"


def _us_colour(photometric: str, syntax: UID, planar: int) -> Dataset:
    """A two-frame colour ultrasound in ``syntax``, its frames random (nothing compresses away)."""
    rgb = np.random.default_rng(7).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    pixels = convert_color_space(rgb, "RGB", "YBR_FULL") if photometric == "YBR_FULL" else rgb
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.NumberOfFrames = 2
    ds.Rows, ds.Columns = 48, 64
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = photometric  # YBR_RCT: pydicom applies the transform
    ds.PlanarConfiguration = planar
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = (np.moveaxis(pixels, -1, 1) if planar else pixels).tobytes()
    ds["PixelData"].VR = "OB"
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, pixels, generate_instance_uid=False)
    return ds


# (source PI, syntax, source Planar Configuration): PI and Planar Configuration written
COLOUR_CASES = {
    ("YBR_RCT", JPEG2000Lossless, 0): ("YBR_RCT", 0),
    ("RGB", JPEG2000Lossless, 0): ("RGB", 0),  # no transform in the source, none written
    ("YBR_FULL", JPEG2000Lossless, 0): ("YBR_FULL", 0),
    ("RGB", JPEGLSLossless, 1): ("RGB", 0),  # PS3.5 8.2.3: shall be 0
    ("YBR_FULL", JPEGLSLossless, 0): ("YBR_FULL", 0),
    ("RGB", RLELossless, 0): ("RGB", 0),
    ("YBR_FULL", RLELossless, 1): ("YBR_FULL", 1),  # US requires 1 for YBR_FULL
    ("YBR_FULL", ExplicitVRLittleEndian, 1): ("YBR_FULL", 1),
    ("RGB", ExplicitVRLittleEndian, 1): ("RGB", 1),
}


@pytest.mark.parametrize("case", list(COLOUR_CASES), ids=lambda c: f"{c[0]}-{c[1].name}-{c[2]}")
def test_colour_reencoding_keeps_a_valid_photometric(
    case: tuple[str, UID, int], tmp_path: Path
) -> None:
    photometric, syntax, planar = case
    ds = _us_colour(photometric, syntax, planar)
    source = tmp_path / "source.dcm"
    ds.save_as(source, enforce_file_format=True)
    frames = _clean_a_box(ds)
    out = tmp_path / "out.dcm"
    ds.save_as(out, enforce_file_format=True)

    written = pydicom.dcmread(out)
    assert written.file_meta.TransferSyntaxUID == syntax
    assert (written.PhotometricInterpretation, written.PlanarConfiguration) == COLOUR_CASES[case]
    _check_written(written, syntax, planar)
    back = codec.decode(written)
    assert all(np.array_equal(a, b) for a, b in zip(back.arrays, frames.arrays, strict=True))
    dciodvfy = require_tool("dciodvfy")
    new = _dciodvfy_errors(dciodvfy, out) - _dciodvfy_errors(dciodvfy, source)
    assert not new, f"dciodvfy reports new errors: {sorted(new)}"


def test_an_rle_frame_that_makes_the_decoder_panic_is_refused(tmp_path: Path) -> None:
    """pylibjpeg-rle (Rust) panics on some corrupt RLE segments: pyo3's PanicException is a
    BaseException, which ``except Exception`` let through, and the worker died on it (each
    such instance cost worker restarts before its quarantine). Found by the file campaign
    on a real scanner's RLE file (``tools/mutate_instances.py --vendor``): eight bytes gone
    from the first segment. It is ``pixel-decode-failed``, here and through the stages."""
    from pydicom.encaps import encapsulate

    from dicomnode.batch import build_stages, clean_file
    from dicomnode.config import Config
    from dicomnode.errors import panicked
    from tests.conftest import SECRET

    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small_RLE.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:1671] + frame[1679:]])
    with pytest.raises(BaseException) as raw:  # what the decoder does with it
        for _ in pydicom.pixels.iter_pixels(ds):
            pass
    assert panicked(raw.value) and not isinstance(raw.value, Exception)
    with pytest.raises(codec.PixelDecodeError, match="cannot decode the pixel data"):
        list(codec.open_frames(ds).frames())
    ds.PatientName = "Test^Rle"
    path = tmp_path / "panic.dcm"
    ds.save_as(path, enforce_file_format=True)
    outcome = clean_file(build_stages(Config(), SECRET), path, tmp_path / "out")
    assert outcome.reason == "pixel-decode-failed", outcome.message
    assert outcome.output is None


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


def _with_frame(name: str, change: Any) -> Dataset:
    """pydicom's file ``name`` with its one frame's codestream changed by ``change``."""
    from pydicom.encaps import encapsulate

    from dicomnode.dicomio import encode_instance, read_instance

    ds = pydicom.dcmread(PYDICOM_FILES / name)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([change(frame)])
    return read_instance(encode_instance(ds))


NAME = b"Vandersloot^Henrietta 8837461"


def _jpeg_with_extras(frame: bytes) -> bytes:
    exif = b"Exif\x00\x00" + NAME
    return frame[:2] + _segment(0xE1, exif) + _segment(0xFE, NAME) + frame[2:] + NAME


def _jpeg_with_a_reserved_segment(frame: bytes) -> bytes:
    """NAME in a JPG0 segment (0xFFF0, reserved for extensions: decoders skip it)."""
    return frame[:2] + _segment(0xF0, NAME) + frame[2:]


def _j2k_with_extras(frame: bytes) -> bytes:
    siz_end = 4 + int.from_bytes(frame[4:6], "big")  # SOC, SIZ marker, then its length
    return frame[:siz_end] + _segment(0x64, b"\x00\x01" + NAME) + frame[siz_end:] + NAME


def _j2k_with_a_reserved_segment(frame: bytes) -> bytes:
    """NAME in a main-header segment of a marker no part of JPEG 2000 defines (0xFF6A)."""
    siz_end = 4 + int.from_bytes(frame[4:6], "big")
    return frame[:siz_end] + _segment(0x6A, NAME + b"\x00" * (len(NAME) % 2)) + frame[siz_end:]


def _j2k_with_a_tile_part_comment(frame: bytes, marker: int = 0x64) -> bytes:
    sot = frame.index(b"\xff\x90")
    comment = _segment(marker, b"\x00\x01" + NAME + b"\x00" * (len(NAME) % 2))
    psot = int.from_bytes(frame[sot + 6 : sot + 10], "big")
    head = frame[: sot + 6] + (psot + len(comment) if psot else 0).to_bytes(4, "big")
    return head + frame[sot + 10 : sot + 12] + comment + frame[sot + 12 :]


def _rle_frame(offsets: list[int], segments: list[bytes]) -> bytes:
    header = len(segments).to_bytes(4, "little")
    header += b"".join(o.to_bytes(4, "little") for o in offsets).ljust(60, b"\x00")
    return header + b"".join(segments)


def _rle_segments(frame: bytes) -> list[bytes]:
    count = int.from_bytes(frame[:4], "little")
    offsets = [int.from_bytes(frame[4 + 4 * n : 8 + 4 * n], "little") for n in range(count)]
    return [frame[a:b] for a, b in zip(offsets, [*offsets[1:], len(frame)], strict=True)]


def _rle_with_bytes_after_rows(frame: bytes) -> bytes:
    """NAME after the first segment's rows (the second segment's offset moved) and after
    the last's."""
    first, second = _rle_segments(frame)
    first += NAME + b"\x00" * (len(NAME) % 2)
    return _rle_frame([64, 64 + len(first)], [first, second + NAME])


def _rle_with_a_long_literal_run(frame: bytes) -> bytes:
    """The last run of the last segment a literal run carrying NAME past the rows."""
    from dicomnode.pixels import streams

    first, second = _rle_segments(frame)
    last, needed = streams._last_run(second, 0, len(second), 64 * 64)
    control = second[last]
    values = (
        second[last + 1 : last + 1 + needed]
        if control < 128
        else second[last + 1 : last + 2] * needed
    )
    assert needed + len(NAME) <= 128
    second = second[:last] + bytes([needed + len(NAME) - 1]) + values + NAME
    return _rle_frame([64, 64 + len(first)], [first, second])


def _rle_with_a_gap_after_its_header(frame: bytes) -> bytes:
    first, second = _rle_segments(frame)
    gap = NAME + b"\x00" * (len(NAME) % 2)
    return _rle_frame([64 + len(gap), 64 + len(gap) + len(first)], [gap + first, second])


@pytest.mark.parametrize(
    ("name", "change", "removed"),
    [
        ("MR_small_RLE.dcm", _rle_with_bytes_after_rows, "bytes after an RLE segment's rows"),
        ("MR_small_RLE.dcm", _rle_with_a_gap_after_its_header, "between the RLE header"),
        ("SC_rgb_jpeg_dcmtk.dcm", _jpeg_with_extras, "a comment"),
        ("SC_rgb_jpeg_dcmtk.dcm", _jpeg_with_a_reserved_segment, "a reserved segment (0xFFF0)"),
        ("MR_small_jpeg_ls_lossless.dcm", _jpeg_with_a_reserved_segment, "a reserved segment"),
        ("MR_small_jpeg_ls_lossless.dcm", _jpeg_with_extras, "an APP1 segment"),
        ("MR_small_jp2klossless.dcm", _j2k_with_extras, "a comment"),
        ("MR_small_jp2klossless.dcm", _j2k_with_a_reserved_segment, "a reserved segment"),
        ("MR_small_jp2klossless.dcm", _j2k_with_a_tile_part_comment, "re-encoded"),
    ],
    ids=[
        "rle-after-rows",
        "rle-gap",
        "jpeg",
        "jpeg-reserved",
        "jpeg-ls-reserved",
        "jpeg-ls",
        "j2k",
        "j2k-reserved",
        "j2k-tile-part",
    ],
)
def test_what_a_codestream_holds_besides_the_image_is_removed(
    name: str, change: Any, removed: str
) -> None:
    """A decoder skips application segments (EXIF with its dates and GPS place, XMP),
    comments and bytes after the end of a frame, and so did every check: a frame left
    unchanged went out with a name in them. They are cut out, the codestream kept byte for
    byte otherwise (the same pixels, nothing compressed again); what cannot be cut out by
    itself (a comment inside a JPEG 2000 tile-part) makes the frame written anew."""
    from dicomnode.config import PixelConfig
    from dicomnode.dicomio import encode_instance, read_instance
    from dicomnode.pipeline import header_snapshot
    from dicomnode.pixels import PixelStage

    ds = _with_frame(name, change)
    assert NAME in bytes(ds.PixelData)
    pixels = ds.pixel_array.copy()
    stage = PixelStage(PixelConfig())
    report = stage.clean(ds, header_snapshot(ds, stage.policy.fields))
    assert report["frames_changed"] == 0
    assert any(removed in what for what in report["removed_from_codestreams"]), report
    out = read_instance(encode_instance(ds))
    assert NAME not in encode_instance(out)
    assert np.array_equal(out.pixel_array, pixels)
    if removed != "re-encoded":  # cut out: the rest of the codestream as it was
        assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert len(out.PixelData) < len(_with_frame(name, change).PixelData)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "MR_small_RLE.dcm"])
def test_bytes_in_a_single_frames_offset_table_are_removed(name: str) -> None:
    """The Basic Offset Table (the first item of encapsulated Pixel Data) of a single frame
    is read by no decoder: a name put there went out with the frame left unchanged. A table
    that is not the frames' offsets is rebuilt; the frame's codestream is kept byte for
    byte; a real file's table is kept (every encapsulated file of pydicom's)."""
    import struct

    from pydicom.encaps import encapsulate

    from dicomnode.config import PixelConfig
    from dicomnode.dicomio import encode_instance, read_instance
    from dicomnode.pipeline import header_snapshot
    from dicomnode.pixels import PixelStage

    ds = pydicom.dcmread(PYDICOM_FILES / name)
    pixels = ds.pixel_array.copy()
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    data = encapsulate([frame], has_bot=False)
    table = NAME + b"\x00" * (-len(NAME) % 4)
    ds.PixelData = data[:4] + struct.pack("<I", len(table)) + table + data[8:]
    ds = read_instance(encode_instance(ds))
    stage = PixelStage(PixelConfig())
    report = stage.clean(ds, header_snapshot(ds, stage.policy.fields))
    assert report["removed_from_codestreams"] == [
        "an offset table that holds more than the frames' offsets"
    ]
    out = read_instance(encode_instance(ds))
    assert NAME not in encode_instance(out)
    assert next(generate_frames(out.PixelData, number_of_frames=1)) == frame
    assert np.array_equal(out.pixel_array, pixels)


def test_an_rle_literal_run_longer_than_the_rows_is_cut_to_them() -> None:
    """Bytes of the last literal run past the rows decode to nothing shown (pydicom's decoder
    drops them with a warning; pylibjpeg-rle's panics, so the node quarantines such a frame
    as undecodable): the walk cuts the run to what the rows take."""
    from pydicom.encaps import encapsulate

    from dicomnode.pixels import streams

    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small_RLE.dcm")
    pixels = ds.pixel_array.copy()
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    longer = _rle_with_a_long_literal_run(frame)
    kept, removed = streams.rle_image_only(longer, 64 * 64)
    assert removed == ["bytes of a literal run past an RLE segment's rows"]
    assert NAME not in kept and len(kept) <= len(frame) + 1
    ds.PixelData = encapsulate([kept])
    assert np.array_equal(ds.pixel_array, pixels)
    assert streams.rle_image_only(kept, 64 * 64) == (kept, [])
    slots = kept[:60] + b"Vand" + kept[64:]  # the header's last, unused, offset
    cleared, removed = streams.rle_image_only(slots, 64 * 64)
    assert removed == ["offsets in the RLE header's unused slots"] and cleared == kept


def test_damaged_rle_frames_are_refused_or_cut_to_the_same_rows() -> None:
    """Random damage to real RLE frames (bytes changed, cut out, put in; the header too):
    the walk either refuses the frame (it is then written anew from its decoded pixels) or
    returns one that decodes to the same rows as the damaged one did, and that it keeps as
    it is when walked again."""
    import random
    import struct
    import warnings

    from pydicom.pixels.decoders.rle import _rle_decode_segment

    from dicomnode.pixels import streams

    def rows(frame: bytes, length: int) -> list[bytes]:
        count = int.from_bytes(frame[:4], "little")
        offsets = struct.unpack_from("<15I", frame, 4)[:count]
        ends = [*offsets[1:], len(frame)]
        return [
            bytes(_rle_decode_segment(frame[a:b]))[:length]
            for a, b in zip(offsets, ends, strict=True)
        ]

    frames = []
    for name in ("MR_small_RLE.dcm", "SC_rgb_rle_16bit.dcm", "rtdose_rle.dcm"):
        ds = pydicom.dcmread(PYDICOM_FILES / name)
        count = int(ds.get("NumberOfFrames", 1) or 1)
        length = ds.Rows * ds.Columns
        frames += [(f, length) for f in generate_frames(ds.PixelData, number_of_frames=count)]
    rng = random.Random(7)
    outcomes = {"refused": 0, "kept or cut": 0}
    for _ in range(1500):
        frame, length = rng.choice(frames)
        damaged = bytearray(frame)
        for _ in range(rng.randint(1, 6)):
            where = rng.randrange(len(damaged))
            what = rng.random()
            if what < 0.5:
                damaged[where] = rng.randrange(256)
            elif what < 0.7:
                damaged[rng.randrange(64)] = rng.randrange(256)
            elif what < 0.85:
                del damaged[where : where + rng.randint(1, 50)]
            else:
                damaged[where:where] = rng.randbytes(rng.randint(1, 40))
        try:
            kept, _removed = streams.rle_image_only(bytes(damaged), length)
        except streams.StreamError:
            outcomes["refused"] += 1
            continue
        outcomes["kept or cut"] += 1
        assert streams.rle_image_only(kept, length) == (kept, [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's decoder warns of what it drops
            assert rows(kept, length) == rows(bytes(damaged), length)
    assert min(outcomes.values()) > 300, outcomes


def test_a_long_rle_tail_is_walked_not_decoded_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment longer than its rows can be encoded in is not handed to the decoder whole (a
    tail of repeat runs decodes 64 times its size): it is walked, and the tail cut."""
    from dicomnode.pixels import streams

    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small_RLE.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    first, second = _rle_segments(frame)
    tail = b"\x81\x00" * 50_000  # 100 kB that would decode to 6.4 MB
    longer = _rle_frame([64, 64 + len(first)], [first, second + tail])
    sizes: list[int] = []
    decode = streams.decode_segment
    monkeypatch.setattr(streams, "decode_segment", lambda s: sizes.append(len(s)) or decode(s))
    kept, removed = streams.rle_image_only(longer, 64 * 64)
    assert kept == frame and removed == [f"{len(tail)} bytes after an RLE segment's rows"]
    assert max(sizes) < 64 * 64 * 2


def test_rle_frames_of_real_files_are_kept_as_they_are() -> None:
    """Every RLE file pydicom ships: nothing found beside the image, the frame unchanged."""
    from pydicom.encaps import generate_fragmented_frames

    from dicomnode.pixels import streams

    walked = 0
    for path in sorted(PYDICOM_FILES.glob("*.dcm")):
        ds = pydicom.dcmread(path, force=True)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax != pydicom.uid.RLELossless or "PixelData" not in ds:
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        for fragments in generate_fragmented_frames(ds.PixelData, number_of_frames=frames):
            frame = b"".join(fragments)
            assert streams.rle_image_only(frame, ds.Rows * ds.Columns) == (frame, []), path.name
            walked += 1
    assert walked >= 26


def test_a_reserved_segment_in_a_tile_part_header_has_the_frame_written_anew() -> None:
    """Inside a tile-part it cannot be cut out by itself (Psot, TLM), as a comment there
    cannot: the frame is written anew. (OpenJPEG refuses such a frame, so through the stage
    it is pixel-decode-failed; another decoder may skip the segment.)"""
    from dicomnode.pixels import streams

    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small_jp2klossless.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    kept, removed = streams.j2k_image_only(_j2k_with_a_tile_part_comment(frame, 0x6A))
    assert kept is None and "a reserved segment (0xFF6A)" in removed
    assert streams.j2k_image_only(frame)[1] == ["a comment"]  # its encoder's, in the header


def test_codestreams_of_real_files_walk_to_their_end() -> None:
    """Every JPEG, JPEG-LS and JPEG 2000 file pydicom ships walks to its end: nothing of them
    is mistaken for more than image but their comments and application segments."""
    from pydicom.encaps import generate_fragmented_frames

    from dicomnode.pixels import streams

    walked = 0
    for path in sorted(PYDICOM_FILES.glob("*.dcm")):
        ds = pydicom.dcmread(path, force=True)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is None or not syntax.is_encapsulated or "PixelData" not in ds:
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if syntax in codec._JPEG_FAMILY:
            strip = streams.jpeg_image_only
        elif syntax in codec._J2K_FAMILY:
            strip = streams.j2k_image_only  # type: ignore[assignment]
        else:
            continue
        for fragments in generate_fragmented_frames(ds.PixelData, number_of_frames=frames):
            _frame, removed = strip(b"".join(fragments))
            assert all(
                what in ("a comment", "a JP2 file wrapper") or what.startswith("an APP")
                for what in removed
            ), (path.name, removed)
            walked += 1
    assert walked > 30
