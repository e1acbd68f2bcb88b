"""Hostile input, memory: no small file can make a worker allocate gigabytes.

The bombs a tester sent (each was acknowledged and took a worker past 6 GB before this):
a 1 KB JPEG whose frame header declares 60000 x 60000, a ~150-byte JPEG 2000 codestream whose
SIZ declares 50000 x 50000, a 3 MB deflated dataset that inflates to more than 3 GiB; and an
uncompressed header declaring 65535 x 65535 x 1000 frames over a tiny payload, and headers
with absurd values. Each must end in quarantine with its reason (``too-large`` or
``pixel-decode-failed``) and a message with the numbers, without being decoded; a real
multi-frame instance must be cleaned a frame at a time.

Memory is measured in subprocesses (VmHWM from /proc); the bombs run there under a worker's
RLIMIT_DATA, so that a regression fails as a wrong reason or a number instead of taking the
test machine.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from dicomnode.config import Config, PixelConfig
from dicomnode.dicomio import read_instance
from dicomnode.limits import MB, TooLargeError, instance_limit_of
from dicomnode.pixels import codec, streams
from dicomnode.pixels.boxes import Box
from dicomnode.pixels.codec import PixelDecodeError, PixelLimits
from dicomnode.pixels.stage import PixelStage
from tests.conftest import SECRET, require_tool
from tests.peers import NodeProcess, make_study, running, storescu
from tests.phi import to_bytes
from tests.test_pixels import make_ds, text_picture

# The "1e9" NumberOfFrames bomb is an invalid IS on purpose; pydicom says so when it reads it.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR IS")

ROOT = Path(__file__).resolve().parent.parent
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


# -- the bombs ---------------------------------------------------------------------------------


def image_dataset(
    syntax: str,
    pixel_data: bytes,
    *,
    rows: int,
    columns: int,
    frames: int | str | None = None,
    samples: int = 1,
    bits: int = 8,
    photometric: str = "MONOCHROME2",
    sop_class: str = SECONDARY_CAPTURE,
) -> Dataset:
    """An image whose header says exactly what it is told to (even nonsense)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BOMB"
    ds.PatientName = "Bomb^Test"
    ds.Modality = "OT" if sop_class == SECONDARY_CAPTURE else "US"
    ds.Rows, ds.Columns = rows, columns
    if frames is not None:
        ds.add_new(0x00280008, "IS", frames)
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB" if bits <= 8 else "OW"
    if syntax != ExplicitVRLittleEndian:  # encapsulated (deflate is not: it has no pixels)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return ds


def jpeg_bomb(rows: int = 60000, columns: int = 60000) -> bytes:
    """A real 8 x 8 baseline JPEG (about 300 bytes) whose SOF0 is patched to ``rows`` x
    ``columns``: libjpeg would allocate the declared image before finding the scan short."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(buffer, "JPEG", quality=90)
    stream = bytearray(buffer.getvalue())
    sof = stream.index(b"\xff\xc0")
    stream[sof + 5 : sof + 9] = struct.pack(">HH", rows, columns)
    return bytes(stream)


def j2k_bomb(side: int = 50000) -> bytes:
    """A JPEG 2000 codestream of about 150 bytes: SIZ declares ``side`` x ``side`` in one
    tile, COD and QCD are valid, the tile's packets are empty. OpenJPEG would allocate the
    whole tile (4 bytes a sample) before reading them."""
    siz = struct.pack(">HHIIIIIIIIH3B", 41, 0, side, side, 0, 0, side, side, 0, 0, 1, 7, 1, 1)
    cod = struct.pack(">HBBHBBBBBB", 12, 0, 0, 1, 0, 5, 4, 4, 0, 1)
    qcd = struct.pack(">HB", 19, 0x40) + bytes([0x40] * 16)
    sot = struct.pack(">HHIBB", 10, 0, 0, 0, 1)
    packets = b"\x00" * 40
    return (
        b"\xff\x4f\xff\x51" + siz + b"\xff\x52" + cod + b"\xff\x5c" + qcd
        + b"\xff\x90" + sot + b"\xff\x93" + packets + b"\xff\xd9"
    )  # fmt: skip


def deflate_bomb(path: Path, inflated_mb: int = 3200) -> Path:
    """A deflated dataset of about 3 MB that inflates to ``inflated_mb`` MiB, most of it one
    private OB element of zeros, written in milliseconds.

    After a full flush a deflate stream may continue with blocks that refer to nothing
    before them, so the deflate of 1 MiB of zeros, repeated, inflates to repeated zeros."""
    ds = image_dataset(
        DeflatedExplicitVRLittleEndian, b"", rows=8, columns=8, sop_class=SECONDARY_CAPTURE
    )
    del ds.PixelData
    ds.add_new(0x7FE10010, "LO", "DICOMNODE BOMB")
    meta = DicomBytesIO()
    meta.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    size = inflated_mb * MB
    header = body.getvalue() + struct.pack("<HH2sHI", 0x7FE1, 0x1000, b"OB", 0, size)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = packer.compress(header) + packer.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = zeros.compress(bytes(MB)) + zeros.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH)
    with open(path, "wb") as out:
        out.write(meta.getvalue() + start)
        for _ in range(inflated_mb):
            out.write(block)
        out.write(end)
    return path


def bombs(folder: Path) -> dict[str, tuple[str, str]]:
    """Write every bomb into ``folder``; file name -> (expected reason, words in the message)."""
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, tuple[str, Dataset | None, str]] = {
        # 60000 x 60000 in the header too: refused from the header's numbers.
        "jpeg-honest": (
            "too-large",
            image_dataset(JPEGBaseline8Bit, encapsulate([jpeg_bomb()]), rows=60000, columns=60000),
            "60000 x 60000",
        ),
        # A 64 x 64 header over a stream that declares 60000 x 60000: the stream is read.
        "jpeg-lying": (
            "too-large",
            image_dataset(JPEGBaseline8Bit, encapsulate([jpeg_bomb()]), rows=64, columns=64),
            "JPEG SOF declares 60000 x 60000",
        ),
        "j2k-lying": (
            "too-large",
            image_dataset(JPEG2000, encapsulate([j2k_bomb()]), rows=64, columns=64),
            "JPEG 2000 SIZ declares 50000 x 50000",
        ),
        "raw-65535": (
            "too-large",
            image_dataset(
                ExplicitVRLittleEndian, bytes(128), rows=65535, columns=65535, frames=1000, bits=16
            ),
            "65535 x 65535 pixels, 1000 frame(s)",
        ),
        "rows-zero": (
            "pixel-decode-failed",
            image_dataset(ExplicitVRLittleEndian, bytes(64), rows=0, columns=8),
            "Rows is 0",
        ),
        "bits-3": (
            "pixel-decode-failed",
            image_dataset(ExplicitVRLittleEndian, bytes(64), rows=8, columns=8, bits=3),
            "BitsAllocated is 3",
        ),
        "frames-negative": (
            "pixel-decode-failed",
            image_dataset(ExplicitVRLittleEndian, bytes(64), rows=8, columns=8, frames="-1"),
            "NumberOfFrames is -1",
        ),
        "frames-1e9": (
            "too-large",
            image_dataset(ExplicitVRLittleEndian, bytes(64), rows=8, columns=8, frames="1e9"),
            "1000000000 frame(s)",
        ),
        "deflated": ("too-large", None, "inflates to more than"),
    }
    expected = {}
    for name, (reason, ds, words) in made.items():
        path = folder / f"{name}.dcm"
        if ds is None:
            deflate_bomb(path)
        else:
            path.write_bytes(to_bytes(ds))
        expected[path.name] = (reason, words)
    return expected


# -- helpers -----------------------------------------------------------------------------------


class FindsNothing:
    """A detector for tests that must not load the OCR models (bombs are never decoded)."""

    name = "none"

    def detect(self, picture: np.ndarray) -> list[Box]:
        return []

    def recognize(self, picture: np.ndarray, boxes: list[Box]) -> list[Box]:
        return boxes


class FindsInk(FindsNothing):
    """A detector that calls the bright pixels of a picture one text line."""

    def detect(self, picture: np.ndarray) -> list[Box]:
        ys, xs = np.nonzero(picture.max(axis=-1) > 200)
        if not len(xs):
            return []
        return [Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, 0.9)]


class Allocates(FindsNothing):
    """A detector that asks for 8 GB: only ever run in a subprocess under a worker limit."""

    def detect(self, picture: np.ndarray) -> list[Box]:
        np.ones(8 * 1024 * MB, np.uint8)
        return []


class RunsOutOfMemory(FindsNothing):
    """A detector that meets a MemoryError, as a decoder or a model would at the limit."""

    def detect(self, picture: np.ndarray) -> list[Box]:
        raise MemoryError


def memory_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process in MB: its peak and current resident memory."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(value.split()[0]) / 1024
    return values["VmHWM"], values["VmRSS"]


def run_python(code: str, *args: str, timeout: float = 60) -> Any:
    """Run ``code`` in a fresh interpreter at the repository root; its last line of output,
    parsed as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, "DICOMNODE_SECRET": SECRET.decode()},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def text_frames(count: int, side: int = 512, every: int = 2) -> tuple[list[bytes], np.ndarray]:
    """RLE frames of a 16-bit multi-frame image: every ``every``-th frame carries a line of
    burned-in text on a flat background, the others are blank. Two distinct frames, encoded
    once and repeated: the instance is small, its decoded pixels are not."""
    picture = Image.new("L", (side, side), 0)
    ImageDraw.Draw(picture).text((10, 10), "MRN 8837461 QUARTERMAINE", fill=255)
    text = np.where(np.asarray(picture) > 0, 4000, 1000).astype(np.uint16)
    blank = np.full((side, side), 1000, np.uint16)
    encoded = []
    for frame in (text, blank):
        single = image_dataset(
            ExplicitVRLittleEndian, frame.tobytes(), rows=side, columns=side, bits=16
        )
        single.compress(RLELossless, frame, generate_instance_uid=False)
        encoded.append(next(generate_frames(single.PixelData, number_of_frames=1)))
    return [encoded[0] if n % every == 0 else encoded[1] for n in range(count)], text


# -- what the streams declare ------------------------------------------------------------------


def test_frame_headers_are_read_without_decoding() -> None:
    assert len(jpeg_bomb()) < 1200 and len(j2k_bomb()) < 160
    jpeg = streams.declared_jpeg(jpeg_bomb())
    assert (jpeg.rows, jpeg.columns, jpeg.components, jpeg.where) == (60000, 60000, 1, "JPEG SOF")
    j2k = streams.declared_j2k(j2k_bomb())
    assert (j2k.rows, j2k.columns, j2k.components, j2k.precision) == (50000, 50000, 1, 8)
    honest = streams.declared_j2k(j2k_bomb(64))
    assert (honest.rows, honest.columns) == (64, 64)
    nonsense = {
        "no SOI": b"\x00\x00" + jpeg_bomb()[2:],
        "scan first": b"\xff\xd8\xff\xda\x00\x02",
        "runs past the end": b"\xff\xd8\xff\xe0\x40\x00",
        "DNL height": jpeg_bomb(rows=0),
    }
    for what, stream in nonsense.items():
        try:
            streams.declared_jpeg(stream)
        except streams.StreamError:
            continue
        pytest.fail(f"a JPEG stream with {what} was accepted")
    bomb = bytearray(j2k_bomb())
    bomb[24:32] = struct.pack(">II", 1, 1)  # 1 x 1 tiles: 2.5 billion of them
    with pytest.raises(streams.StreamError, match="tiles"):
        streams.declared_j2k(bytes(bomb))
    with pytest.raises(streams.StreamError):
        streams.declared_j2k(j2k_bomb()[:30])
    with pytest.raises(streams.StreamError, match="segments"):
        streams.rle_segments(struct.pack("<I", 99) + bytes(60))


# -- the bombs, through the stages -------------------------------------------------------------


def test_each_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    expected = bombs(tmp_path)
    for name, (reason, words) in expected.items():
        with pytest.raises((TooLargeError, PixelDecodeError)) as caught:
            with instance_limit_of(256):
                ds = read_instance(tmp_path / name)
            PixelStage(PixelConfig(), detector=FindsNothing()).clean(ds, {"Modality": "OT"})
        assert caught.value.reason == reason, (name, str(caught.value))
        assert words in str(caught.value), (name, str(caught.value))
        assert "BOMB" not in str(caught.value)  # nothing from the instance but numbers


PIPELINE_RUN = """
    import json, sys
    from pathlib import Path
    from tests.test_hostile_memory import bombs_through_a_worker
    print(json.dumps(bombs_through_a_worker(Path(sys.argv[1]))))
"""


def bombs_through_a_worker(workdir: Path) -> dict[str, Any]:
    """Run in a subprocess: every bomb through a worker's pipeline, under a worker's limits.

    Returns each item's outcome and quarantine message, and the process's peak memory."""
    from dicomnode.limits import apply_worker_limits
    from dicomnode.pipeline import Pipeline, ScrubStage
    from dicomnode.scrub import build_scrubber
    from dicomnode.spool import Spool

    config = Config.model_validate(
        {
            "node": {"max_instance_mb": 256},
            "pipeline": {"worker_memory_mb": 1536},
            "spool": {"path": str(workdir / "spool")},
        }
    )
    apply_worker_limits(config)
    spool = Spool(config.spool.path).create(["folder"])
    pixels = PixelStage(config.pixels, detector=FindsNothing())
    scrub = ScrubStage(build_scrubber(config, secret=SECRET), header_fields=pixels.policy.fields)
    pipeline = Pipeline(spool, [scrub, pixels], ["folder"])
    results = {}
    for path in sorted((workdir / "bombs").glob("*.dcm")):
        outcome = pipeline.process(spool.write_incoming(path.read_bytes(), "BOMBER"), "0")
        sidecar = spool.quarantine / str(outcome.reason) / f"{outcome.id}.json"
        message = json.loads(sidecar.read_text())["message"] if sidecar.exists() else ""
        results[path.name] = [outcome.status, outcome.reason, message]
    return {"results": results, "peak_mb": memory_mb()[0]}


def test_bombs_cost_a_worker_little_memory(tmp_path: Path) -> None:
    expected = bombs(tmp_path / "bombs")
    # Through the pipeline the scrubber reads the header first: "1e9" is no integer string,
    # so the instance is refused there, before the pixel stage would count a billion frames.
    expected["frames-1e9.dcm"] = ("pixel-decode-failed", "NumberOfFrames")
    report = run_python(PIPELINE_RUN, str(tmp_path))
    for name, (reason, words) in expected.items():
        status, got, message = report["results"][name]
        assert (status, got) == ("quarantined", reason), (name, message)
        assert words in message, (name, message)
    # Python, pydicom, numpy, OpenCV and the scrubber alone take about 150 MB.
    assert report["peak_mb"] < 300, report


STREAM_RUN = """
    import json
    from tests.test_hostile_memory import multiframe_cleaned
    print(json.dumps(multiframe_cleaned()))
"""


def multiframe_cleaned(count: int = 400) -> dict[str, Any]:
    """Run in a subprocess: clean a 400-frame RLE instance (200 MB decoded) and report the
    peak memory the cleaning added, and what came out."""
    from dicomnode.dicomio import encode_instance

    frames, text = text_frames(count)
    ds = image_dataset(
        RLELossless,
        encapsulate(frames),
        rows=512,
        columns=512,
        frames=count,
        bits=16,
        sop_class=US_MULTIFRAME,
    )
    ds = read_instance(to_bytes(ds))
    stage = PixelStage(PixelConfig(), detector=FindsInk())
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = memory_mb()[1]
    report = stage.clean(ds, {"Modality": "US", "SOPClassUID": US_MULTIFRAME})
    added = memory_mb()[0] - before
    out = read_instance(encode_instance(ds))
    decoded = codec.open_frames(out)
    blank = np.full_like(text, 1000)
    changed = same = 0
    for index, frame in enumerate(decoded.frames()):
        if index % 2:
            same += int(np.array_equal(frame, blank))
        else:
            changed += int(not np.array_equal(frame, text) and frame.max() < 4000)
    return {
        "report": {k: v for k, v in report.items() if k != "seconds"},
        "syntax": str(out.file_meta.TransferSyntaxUID),
        "added_mb": added,
        "decoded_mb": decoded.geometry.decoded_bytes / MB,
        "changed": changed,
        "same": same,
    }


def test_frames_are_cleaned_one_at_a_time() -> None:
    got = run_python(STREAM_RUN)
    report = got["report"]
    assert report["frames"] == 400 and report["distinct_frames"] == 2
    assert report["frames_changed"] == 200
    assert report["pixel_data"] == "re-encoded in RLE Lossless"
    assert got["syntax"] == RLELossless
    assert (got["changed"], got["same"]) == (200, 200)  # text gone; blank frames as they were
    # Every frame in a list, then stacked, took twice the decoded size (400 MB) here.
    assert got["decoded_mb"] == 200
    assert got["added_mb"] < 40, got


def test_memory_error_in_the_pixel_stage_is_too_large() -> None:
    frames, _ = text_frames(2)
    ds = image_dataset(RLELossless, encapsulate(frames), rows=512, columns=512, frames=2, bits=16)
    ds = read_instance(to_bytes(ds))
    stage = PixelStage(PixelConfig(), detector=RunsOutOfMemory())
    with pytest.raises(TooLargeError, match="ran out of memory"):  # not a bare MemoryError
        stage.clean(ds, {"Modality": "OT"})


def test_limits_name_the_setting_to_raise() -> None:
    ds = image_dataset(
        ExplicitVRLittleEndian, bytes(1024 * 1024 * 2 * 3), rows=1024, columns=1024, frames=3,
        bits=16,
    )  # fmt: skip
    with pytest.raises(TooLargeError, match=r"pixels.max_frame_mb \(1 MB\)"):
        codec.open_frames(ds, PixelLimits(max_decoded_mb=100, max_frame_mb=1))
    with pytest.raises(TooLargeError, match=r"6.0 MB decoded, over pixels.max_decoded_mb \(5 MB\)"):
        codec.open_frames(ds, PixelLimits(max_decoded_mb=5, max_frame_mb=4))
    assert len(codec.open_frames(ds, PixelLimits(max_decoded_mb=6, max_frame_mb=2))) == 3
    with pytest.raises(TooLargeError, match=r"node\.max_instance_mb"):
        read_instance(to_bytes(ds), max_bytes=MB)
    short = image_dataset(ExplicitVRLittleEndian, bytes(100), rows=64, columns=64)
    with pytest.raises(PixelDecodeError, match="holds 100 bytes"):
        codec.open_frames(short)


def test_a_worker_survives_an_allocation_over_its_limit(tmp_path: Path) -> None:
    got = run_python(
        """
        import json, sys
        from pathlib import Path
        from tests.test_hostile_memory import allocation_in_a_worker
        print(json.dumps(allocation_in_a_worker(Path(sys.argv[1]))))
        """,
        str(tmp_path),
    )
    assert got["first"][:2] == ["quarantined", "too-large"], got
    assert "pipeline.worker_memory_mb, is 1024 MB" in got["first"][2]
    assert got["second"][0] == "clean", got


def allocation_in_a_worker(workdir: Path) -> dict[str, Any]:
    """Run in a subprocess: under a 1 GB worker limit, a stage that asks for 8 GB costs one
    item (too-large); the next item is cleaned by the same process."""
    from dicomnode.limits import apply_worker_limits
    from dicomnode.pipeline import Pipeline
    from dicomnode.spool import Spool

    config = Config.model_validate(
        {"pipeline": {"worker_memory_mb": 1024}, "spool": {"path": str(workdir / "spool")}}
    )
    apply_worker_limits(config)
    spool = Spool(config.spool.path).create(["folder"])
    frames, _ = text_frames(1)
    data = to_bytes(image_dataset(RLELossless, encapsulate(frames), rows=512, columns=512, bits=16))
    outcomes = []
    for detector in (Allocates(), FindsInk()):
        pipeline = Pipeline(spool, [PixelStage(config.pixels, detector=detector)], ["folder"])
        outcome = pipeline.process(spool.write_incoming(data, "TEST"), "0")
        sidecar = spool.quarantine / str(outcome.reason) / f"{outcome.id}.json"
        message = json.loads(sidecar.read_text())["message"] if sidecar.exists() else ""
        outcomes.append([outcome.status, outcome.reason, message])
    return {"first": outcomes[0], "second": outcomes[1]}


# -- the node, every bomb at once beside a real study --------------------------------------------

SEND_AS_IS = """
    import sys
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes as they are, never inflated
    ae = AE(ae_title="BOMBER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.7", DeflatedExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="DICOMNODE")
    status = assoc.send_c_store(sys.argv[2]) if assoc.is_established else None
    assoc.release()
    print(int(status.Status) if status else -1)
"""


def family(pid: int) -> list[int]:
    """``pid`` and its child processes (the node's workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return [pid, *children]


def send(port: int, folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu, proposing what ``options`` say (it proposes no compressed syntax of
    its own accord)."""
    args = [require_tool("storescu"), *options, "-aet", "BOMBER", "-aec", "DICOMNODE", "-nh"]
    return subprocess.run(
        [*args, "127.0.0.1", str(port), "+sd", "+r", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.peers
def test_node_quarantines_every_bomb_at_once_and_delivers_the_study(tmp_path: Path) -> None:
    expected = bombs(tmp_path / "bombs")
    expected["frames-1e9.dcm"] = ("pixel-decode-failed", "NumberOfFrames")  # see above
    by_syntax = {"jpeg": ("-xy",), "j2k": ("-xw",), "raw": ()}
    for name in expected:
        kind = name.split("-")[0] if name.startswith(("jpeg", "j2k")) else "raw"
        if name != "deflated.dcm":
            (tmp_path / kind).mkdir(exist_ok=True)
            (tmp_path / "bombs" / name).rename(tmp_path / kind / name)
    # dcmtk's storescu inflates a deflated file in its own memory before sending it (3 GiB
    # here), so that bomb goes by pynetdicom, from the file as it is.
    deflated = tmp_path / "bombs" / "deflated.dcm"
    study = make_study(tmp_path / "study", series=1, per_series=4)
    us = make_ds(np.stack([np.asarray(text_picture("RGB"))] * 3), "RGB")
    (tmp_path / "study" / "us.dcm").write_bytes(to_bytes(us))
    node = NodeProcess(
        tmp_path / "node",
        node={"max_instance_mb": 512},
        pipeline={"workers": 2, "worker_memory_mb": 2048},
    )
    with running(node):
        sent: dict[str, Any] = {}
        senders = [
            threading.Thread(
                target=lambda: sent.update(
                    deflated=run_python(SEND_AS_IS, str(node.port), str(deflated))
                )
            ),
            threading.Thread(
                target=lambda: sent.update(study=storescu(node.port, tmp_path / "study"))
            ),
        ]
        for kind, options in by_syntax.items():
            senders.append(
                threading.Thread(
                    target=lambda k=kind, o=options: sent.update(
                        {k: send(node.port, tmp_path / k, *o)}
                    )
                )
            )
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        assert sent.get("deflated") == 0, sent
        for kind in ("study", *by_syntax):
            assert sent[kind].returncode == 0 and "E:" not in sent[kind].stderr, sent[kind].stderr
        node.wait_idle(60)
        assert node.proc is not None
        peaks = {pid: memory_mb(pid)[0] for pid in family(node.proc.pid)}
    log = node.log.read_text()
    assert "died" not in log, log[-3000:]
    delivered = [pydicom.dcmread(p) for p in node.out.rglob("*.dcm")]
    assert len(delivered) == len(study) + 1
    cleaned_us = [ds for ds in delivered if ds.Modality == "US"]
    assert len(cleaned_us) == 1 and cleaned_us[0].PixelData != us.PixelData
    assert "Clean Pixel Data: written uncompressed" in cleaned_us[0].DeidentificationMethod
    messages: dict[str, list[str]] = {}
    for sidecar in (node.spool / "quarantine").rglob("*.json"):
        info = json.loads(sidecar.read_text())
        messages.setdefault(info["reason"], []).append(info["message"])
    wanted: dict[str, int] = {}
    for reason, words in [*expected.values()]:
        wanted[reason] = wanted.get(reason, 0) + 1
        assert any(words in m for m in messages.get(reason, [])), (words, messages)
    assert {r: len(m) for r, m in messages.items()} == wanted
    # The node and each of its workers (which load the OCR models) stay under 1 GiB.
    assert len(peaks) >= 3 and max(peaks.values()) < 1024, peaks
