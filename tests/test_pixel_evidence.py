"""What the pixel stage keeps of its work, through the real code paths (the real OCR models,
no stand-in detector or remover):

- :class:`~dicomnode.pixels.evidence.Evidence`: boxes per frame and kind, counts, the cap on
  coordinates, the sentence an administrator reads, and never the text that was read;
- a ``text-remains`` instance through a running node: the original held in
  ``quarantine/text-remains/`` with its cleaned copy beside it (never forwarded, not an item
  of ``quarantine list``, gone with the original on expiry or retry), the sidecar's evidence
  where the text is, and the audit line's counts without text;
- real ultrasound and secondary capture images from pydicom's test data through
  ``dicomnode scrub --demo``: clean, and the places where their text was read no longer read.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut  # type: ignore[attr-defined]
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode import quarantine
from dicomnode.audit import AuditTrail
from dicomnode.cli import main
from dicomnode.config import PixelConfig, load_config
from dicomnode.dicomio import read_instance
from dicomnode.pixels import PixelStage, codec
from dicomnode.pixels.boxes import Box
from dicomnode.pixels.detect import RapidOCRDetector
from dicomnode.pixels.evidence import MAX_BOXES, Evidence, Kind
from dicomnode.scrub.pseudonym import DEMO_SECRET, Pseudonymizer
from dicomnode.spool import CLEAN_SUFFIX, Spool
from tests.conftest import SECRET
from tests.phi import PHI, leaks, planted_dataset, to_bytes
from tests.test_cli import dicomnode

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
# What the recogniser reads on the pages below: it must never be written anywhere.
READ_WORDS = ("QUARTERMAINE", "ZEBULON", "8837461", "CTDIVOL", "PHANTOM", "DOSE REPORT")


@pytest.fixture(scope="module")
def detector() -> RapidOCRDetector:
    return RapidOCRDetector()


def _no_read_text(data: str | bytes) -> None:
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    for word in READ_WORDS:
        assert word not in text.upper(), word


def readable(detector: RapidOCRDetector, picture: np.ndarray, box: Box | None = None) -> list[str]:
    """What OCR reads (two letters or digits or more, score 0.5 or more) in ``box`` of an 8-bit
    picture (also enlarged three times, and read whole), or anywhere in it (also enlarged
    twice): small fonts are read enlarged."""
    import cv2

    if box is not None:
        picture = np.ascontiguousarray(picture[box.y0 : box.y1, box.x0 : box.x1])
    words = []
    for scale in (1, 2, 3) if box is not None else (1, 2):
        view = (
            picture
            if scale == 1
            else cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        )
        boxes = detector.detect(view)
        if box is not None:  # a crop: read it whole as well (a single line)
            boxes.append(Box(0, 0, view.shape[1], view.shape[0]))
        for read in detector.recognize(view, boxes):
            text = (read.text or "").strip()
            if sum(c.isalnum() for c in text) >= 2 and read.score >= 0.5:
                words.append(text)
    return words


# -- 1. Evidence ---------------------------------------------------------------------------------


def test_evidence_keeps_boxes_per_frame_and_kind_and_counts() -> None:
    evidence = Evidence(frames_total=3, width=640, height=480)
    evidence.add(0, Kind.FOUND, [Box(10, 2, 120, 14, 0.9), Box(500, 2, 630, 14)])
    evidence.add(0, Kind.REGION, [Box(0, 0, 640, 30, source="region")])
    evidence.add(0, Kind.REMOVED, [Box(10, 2, 120, 14), Box(500, 2, 630, 14)])
    evidence.add(2, Kind.REMOVED, [Box(20, 450, 90, 470)])
    evidence.add(1, Kind.FOUND, [])  # nothing: the frame is not listed

    assert evidence.counts() == {"found": 2, "removed": 3, "region": 1, "remains": 0}
    assert evidence.remains == 0 and not evidence.truncated
    record = evidence.as_dict()
    assert [f["index"] for f in record["frames"]] == [0, 2]
    frame0 = record["frames"][0]["boxes"]
    assert frame0[0] == {"box": [10, 2, 120, 14], "kind": "found"}
    assert [b["kind"] for b in frame0] == ["found", "found", "region", "removed", "removed"]
    assert record["frames"][1]["boxes"] == [{"box": [20, 450, 90, 470], "kind": "removed"}]
    assert record["frames_total"] == 3 and record["boxes_total"] == 6
    assert record["truncated"] is False
    assert {k.value for k in Kind} == {"found", "removed", "region", "remains"}
    for frame in record["frames"]:
        for box in frame["boxes"]:
            assert set(box) == {"box", "kind"}  # no score, source or text
            assert all(type(v) is int for v in box["box"])
    # Without remains the sentence says what was done, over how many frames.
    assert record["summary"] == (
        "2 text box(es) found and 3 removed, 1 of them known device region(s) over 3 frame(s)"
    )
    json.dumps(record)  # a sidecar value as it is


def test_evidence_sentence_counts_frames_from_one_and_says_where() -> None:
    one = Evidence(frames_total=1, width=640, height=480)
    one.add(0, Kind.REMAINS, [Box(550, 0, 639, 12)])
    assert one.summary().startswith(
        "text was still found in 1 place(s) on frame 1 after removal, in the top 12 rows "
        "(of 640 x 480)"
    )

    cine = Evidence(frames_total=12, width=640, height=480)
    cine.add(4, Kind.REMAINS, [Box(20, 456, 99, 468)])  # frame index 4: the 5th frame
    assert "on frame 5 of 12 after removal, in the bottom 24 rows (of 640 x 480)" in (
        cine.summary()
    )

    several = Evidence(frames_total=12, width=640, height=480)
    several.add(0, Kind.REMAINS, [Box(80, 0, 249, 12)])
    several.add(1, Kind.REMAINS, [Box(20, 456, 99, 468)])
    several.add(4, Kind.REMAINS, [Box(300, 200, 350, 220)])
    summary = several.summary()
    assert "3 place(s) on frames 1, 2, 5 of 12 after removal" in summary
    assert "1 in the top 12 rows" in summary and "1 in the bottom 24 rows" in summary
    assert "1 in the middle (columns 300-350, rows 200-220)" in summary

    sides = Evidence(frames_total=1, width=640, height=480)
    sides.add(0, Kind.REMAINS, [Box(0, 200, 40, 220), Box(600, 300, 640, 320)])
    assert "1 in the left 40 columns, 1 in the right 40 columns" in sides.summary()

    run = Evidence(frames_total=40, width=320, height=240)
    for index in range(40):
        run.add(index, Kind.REMAINS, [Box(300, 100, 318, 110)])
    assert "40 place(s) on frames 1-40 of 40 after removal" in run.summary()

    many = Evidence(frames_total=30, width=320, height=240)
    for index in range(0, 30, 2):  # frames 1, 3, ..., 29: fifteen of them
        many.add(index, Kind.REMAINS, [Box(300, 100, 318, 110)])
    assert "on frames 1, 3, 5, 7, 9, 11, 13, 15, 17, 19 and 5 more of 30" in many.summary()


def test_evidence_stops_listing_at_the_cap_and_keeps_counting() -> None:
    evidence = Evidence(frames_total=10, width=100, height=100, limit=5)
    for index in range(10):
        evidence.add(index, Kind.REMOVED, [Box(1, 1, 9, 9)])
    evidence.add(9, Kind.REMAINS, [Box(50, 50, 60, 60)])
    record = evidence.as_dict()
    listed = [b for f in record["frames"] for b in f["boxes"]]
    # The remains are listed past the cap: they are what a reviewer must see.
    assert len(listed) == 6 and [f["index"] for f in record["frames"]] == [0, 1, 2, 3, 4, 9]
    assert listed[-1] == {"box": [50, 50, 60, 60], "kind": "remains"}
    assert record["truncated"] is True and record["boxes_total"] == 11
    assert evidence.counts() == {"found": 0, "removed": 10, "region": 0, "remains": 1}
    # The remains are still in the sentence, beyond the cap, and the cap is said.
    assert "1 place(s) on frame 10 of 10" in record["summary"]
    assert "only 6 of 11 boxes are listed" in record["summary"]
    # The default cap: MAX_BOXES coordinates per instance, whatever the frames.
    capped = Evidence(frames_total=3, width=640, height=480)
    for index in range(3):
        capped.add(index, Kind.FOUND, [Box(n % 600, 0, n % 600 + 10, 10) for n in range(700)])
    record = capped.as_dict()
    assert MAX_BOXES == capped.limit == 2000
    assert sum(len(f["boxes"]) for f in record["frames"]) == MAX_BOXES
    assert record["boxes_total"] == 2100 and record["truncated"] is True
    assert f"only {MAX_BOXES} of 2100 boxes are listed" in record["summary"]


def test_evidence_never_holds_the_text_that_was_read() -> None:
    planted = [
        PHI["name"],
        PHI["pid"],
        "QUARTERMAINE ZEBULON",
        "8837461",
        "DOB 23/07/1961",
        "St Swithin Memorial Infirmary",
    ]
    evidence = Evidence(frames_total=2, width=640, height=480)
    for n, text in enumerate(planted):
        box = Box(10, 10 + 20 * n, 300, 26 + 20 * n, 0.97, "ocr", text)
        for kind in Kind:
            evidence.add(n % 2, kind, [box])
    written = json.dumps(evidence.as_dict()) + json.dumps(evidence.counts()) + evidence.summary()
    for text in planted:
        assert text not in written
        assert text.upper() not in written.upper()
    assert leaks(written.encode()) == []
    _no_read_text(written)
    assert "0.97" not in written and "ocr" not in written  # neither score nor source


# -- 2. text-remains: a dense report page through a running node ---------------------------------

WIDTH, HEIGHT = 1400, 1200  # a screen capture larger than 1280 x 1024
TITLE = Box(16, 8, 600, 60)  # "DOSE REPORT QUARTERMAINE" in a 40 px font
BODY_TOP = 70  # 8 px lines of PHI and dose values from here to the bottom


def dense_page() -> tuple[np.ndarray, Box]:
    """A dose report saved as an image: a large title, then a page of 8 px text lines.

    The first pass looks at a frame this large (its candidates cover most of it) at its own
    size, where 8 px text is below what the detector sees; verification looks again, enlarged,
    around what was removed, and keeps finding the next lines after its second fill: text
    remains, so the instance is held (deterministic: the same models read the same pixels).
    Returns the frame and the bounding box of the body text.
    """
    small = ImageFont.truetype(FONT, 8)
    large = ImageFont.truetype(FONT, 40)
    image = Image.new("L", (WIDTH, HEIGHT), 20)
    draw = ImageDraw.Draw(image)
    draw.text((20, 10), "DOSE REPORT QUARTERMAINE", font=large, fill=255)
    y, n = BODY_TOP, 0
    while y < HEIGHT - 20:
        line = f"Series {n} ZEBULON 8837461 CTDIvol 12.{n} mGy DLP 44{n} mGy cm Phantom Body "
        draw.text((20, y), line * 3, font=small, fill=230)
        y, n = y + 12, n + 1
    pixels = np.array(image)
    ys, xs = np.nonzero(pixels[BODY_TOP - 4 :] > 128)
    top = BODY_TOP - 4
    body = Box(int(xs.min()), int(ys.min()) + top, int(xs.max()) + 1, int(ys.max()) + 1 + top)
    return pixels, body


def dense_instance(pixels: np.ndarray) -> Dataset:
    """The planted CT header (tests.phi: PHI everywhere) over the page, as a dose screen."""
    ds = planted_dataset()
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    return ds


def _store(port: int, ds: Dataset) -> int:
    from pynetdicom import AE

    ae = AE(ae_title="DOSE_SCREEN")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status)


def _wait(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class Held:
    """A text-remains item as a running node left it."""

    def __init__(self, root: Path, config_path: Path, page: np.ndarray, body: Box) -> None:
        self.root = root
        self.config_path = config_path
        self.config = load_config(config_path)
        self.spool = Spool(self.config.spool.path)
        self.page = page
        self.body = body
        self.sent = b""
        self.status = -1
        self.id = ""

    @property
    def folder(self) -> Path:
        return self.spool.quarantine / "text-remains"

    @property
    def audit_lines(self) -> list[dict[str, Any]]:
        path = self.config.logging.audit_file
        assert path is not None
        return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    """Send the dose page to a node (default pixel settings: RapidOCR, fill) and stop it once
    the item is quarantined."""
    from dicomnode.node import Node

    root = tmp_path_factory.mktemp("held")
    config_path = root / "dicomnode.yaml"
    config_path.write_text(
        json.dumps(  # JSON is YAML
            {
                "node": {"port": 0, "disk_floor_mb": 1},
                "spool": {"path": str(root / "spool")},
                "pipeline": {"workers": 1},
                "metrics": {"enabled": False},
                "review": {"enabled": False},
                "logging": {"audit_file": str(root / "audit.jsonl")},
                "quarantine": {"keep_days": 30},
                "destinations": [{"name": "folder", "type": "folder", "path": str(root / "out")}],
            }
        )
    )
    page, body = dense_page()
    made = Held(root, config_path, page, body)
    ds = dense_instance(page)
    made.sent = to_bytes(ds)
    node = Node(made.config, SECRET)
    node.start()
    try:
        made.status = _store(node.ingest.port, read_instance(made.sent))

        def outcome() -> bool:
            path = made.config.logging.audit_file
            return (
                path is not None
                and path.exists()
                and any(
                    line.get("event") in ("cleaned", "quarantined") for line in made.audit_lines
                )
            )

        _wait(outcome, 180, "the node to clean or quarantine the instance")
        _wait(lambda: node.spool.counts()["work"].count == 0, 30, "the worker to finish")
    finally:
        node.stop(30)
    events = [
        (e["event"], e.get("reason"))
        for e in made.audit_lines
        if e["event"] in ("cleaned", "quarantined")
    ]
    assert ("quarantined", "text-remains") in events, (
        f"the dose page was not held as text-remains ({events}): if the pixel stage now "
        "removes every line of it, this test needs another page on which verification still "
        "reads text after its second fill"
    )
    (sidecar,) = made.folder.glob("*.json")
    made.id = sidecar.stem
    yield made


def test_text_remains_holds_the_original_with_evidence_where_the_text_is(held: Held) -> None:
    assert held.status == 0x0000  # received and acknowledged: the node's to clean or hold
    folder = held.folder
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{held.id}.clean.dcm", f"{held.id}.dcm", f"{held.id}.json"]
    # The original as it was received: its PHI and its pixels.
    original = read_instance((folder / f"{held.id}.dcm").read_bytes())
    assert original.PatientName == PHI["name"]
    assert np.array_equal(original.pixel_array, held.page)

    sidecar = json.loads((folder / f"{held.id}.json").read_text())
    assert sidecar["reason"] == "text-remains" and sidecar["stage"] == "pixels"
    assert sidecar["clean_copy"] == f"{held.id}{CLEAN_SUFFIX}"
    evidence = sidecar["evidence"]
    assert evidence["frames_total"] == 1 and not evidence["truncated"]
    (frame,) = evidence["frames"]
    assert frame["index"] == 0
    by_kind: dict[str, list[Box]] = {}
    for entry in frame["boxes"]:
        by_kind.setdefault(entry["kind"], []).append(Box(*entry["box"]))
    assert set(by_kind) == {"found", "removed", "remains"}  # no device region applies
    assert evidence["boxes_total"] == sum(len(v) for v in by_kind.values())

    # The title was found and removed.
    assert any(b.intersection(TITLE) >= 0.5 * b.area for b in by_kind["found"])
    assert TITLE.covered_by(by_kind["removed"], 0.8)
    # What remains is on the page of small text, and there is text there on the cleaned copy.
    clean = read_instance((folder / sidecar["clean_copy"]).read_bytes()).pixel_array
    page = held.body.padded(16, WIDTH, HEIGHT)  # detector boxes reach a little beyond the ink
    for box in by_kind["remains"]:
        assert box.intersection(page) >= 0.8 * box.area, box
        assert int((clean[box.y0 : box.y1, box.x0 : box.x1] > 128).sum()) >= 8, box
    assert int((clean[TITLE.y0 : TITLE.y1, TITLE.x0 : TITLE.x1] > 128).sum()) == 0

    # One sentence an administrator can act on, and nothing that was read.
    message = sidecar["message"]
    remains = len(by_kind["remains"])
    assert message.startswith(
        f"Burned-in text was still found in {remains} place(s) on frame 1 after removal, "
    )
    assert f"(of {WIDTH} x {HEIGHT})" in message
    assert evidence["summary"] in message
    assert "The cleaned copy is kept beside the original" in message
    assert "release the cleaned copy" in message and "region rule" in message  # what to do
    assert "\n" not in message
    raw = (folder / f"{held.id}.json").read_bytes()
    assert leaks(raw) == []
    _no_read_text(raw)


def test_the_clean_copy_is_the_scrubbed_object_and_is_never_forwarded(held: Held) -> None:
    data = (held.folder / f"{held.id}{CLEAN_SUFFIX}").read_bytes()
    assert leaks(data) == []  # no PHI of tests.phi anywhere in the file
    copy = pydicom.dcmread(held.folder / f"{held.id}{CLEAN_SUFFIX}")  # a valid Part 10 file
    assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
    sent = read_instance(held.sent)
    assert copy.SOPInstanceUID == Pseudonymizer(SECRET).uid(str(sent.SOPInstanceUID))
    assert copy.PatientIdentityRemoved == "YES"
    assert str(copy.PatientName) != PHI["name"] and not copy.get("PatientBirthDate")
    # Said for what it is: text removed, some still read; not stamped as clean pixel data.
    assert copy.BurnedInAnnotation == "YES"
    assert "Burned-in text removed; some remained: held for review" in list(
        copy.DeidentificationMethod
    )
    codes = [i.CodeValue for i in copy.get("DeidentificationMethodCodeSequence", [])]
    assert "113101" not in codes
    assert copy.ImageType[0] == "DERIVED"
    pixels = copy.pixel_array
    assert pixels.shape == held.page.shape and not np.array_equal(pixels, held.page)
    # Never forwarded: nothing reached the destination or waits for it, nothing left in work.
    assert [p for p in (held.root / "out").rglob("*") if p.is_file()] == []
    assert held.spool.outgoing_items("folder") == []
    counts = held.spool.counts()
    assert counts["work"].count == 0 and counts["incoming"].count == 0


def test_the_audit_line_has_counts_per_kind_and_no_text(held: Held) -> None:
    lines = held.audit_lines
    (line,) = [e for e in lines if e.get("id") == held.id and e["event"] == "quarantined"]
    assert line["reason"] == "text-remains" and line["stage"] == "pixels"
    counts = line["done"]["pixels"]["boxes_by_kind"]
    sidecar = json.loads((held.folder / f"{held.id}.json").read_text())
    listed: dict[str, int] = {}
    for entry in sidecar["evidence"]["frames"][0]["boxes"]:
        listed[entry["kind"]] = listed.get(entry["kind"], 0) + 1
    assert counts == {
        "found": listed["found"],
        "removed": listed["removed"],
        "region": 0,
        "remains": listed["remains"],
    }
    assert not [e for e in lines if e["event"] == "cleaned"]  # a held item is not cleaned
    raw = held.config.logging.audit_file.read_bytes()  # type: ignore[union-attr]
    assert leaks(raw) == []
    _no_read_text(raw)
    assert b'"box"' not in raw  # counts, not coordinates


def test_quarantine_list_shows_the_item_not_its_clean_copy(
    held: Held, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quarantine", "list", "--config", str(held.config_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in listed] == [held.id]
    assert listed[0]["reason"] == "text-remains"
    assert [q.id for q in quarantine.items(held.spool.root)] == [held.id]
    assert main(["quarantine", "list", "--config", str(held.config_path)]) == 0
    out = capsys.readouterr().out
    assert "1 item(s)" in out and CLEAN_SUFFIX not in out and ".clean" not in out
    assert main(["quarantine", "show", held.id, "--config", str(held.config_path)]) == 0
    shown = capsys.readouterr().out
    assert "place(s) on frame 1 after removal" in shown
    assert leaks(shown.encode()) == []
    _no_read_text(shown)
    # A prefix of the clean copy's name is no item either.
    assert quarantine.find(held.spool.root, f"{held.id}.clean") is None


def test_retry_and_expiry_take_the_clean_copy_with_the_original(held: Held, tmp_path: Path) -> None:
    # Retry (on a copy of the spool): the original goes back to be cleaned anew, its cleaned
    # copy does not go anywhere.
    again = Spool(Path(shutil.copytree(held.spool.root, tmp_path / "spool")))
    assert again.requeue_quarantined("text-remains") == 1
    assert [p.name for p in again.incoming.iterdir()] == [f"{held.id}.dcm"]
    assert [p for p in again.quarantine.rglob("*") if p.is_file()] == []
    assert again.outgoing_items("folder") == []

    # Expiry: 31 days later the original, its clean copy and its sidecar go, audited once.
    sidecar_path = held.folder / f"{held.id}.json"
    info = json.loads(sidecar_path.read_text())
    info["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - 31 * 86400))
    sidecar_path.write_text(json.dumps(info))
    audit = AuditTrail(tmp_path / "expiry.jsonl")
    try:
        assert quarantine.expire(held.spool.root, 30, audit) == 1
    finally:
        audit.close()
    assert list(held.folder.iterdir()) == []
    (line,) = [json.loads(x) for x in (tmp_path / "expiry.jsonl").read_text().splitlines()]
    assert (line["event"], line["id"], line["reason"]) == (
        "quarantine-expired",
        held.id,
        "text-remains",
    )


# -- 3. and 4. real ultrasound and secondary capture through `dicomnode scrub --demo` ------------

# gdcm-US-ALOKA-16: 640 x 480, 16-bit palette; the boxes hold the text with a pixel to spare
# (found by thresholding the rendered original, checked by eye on before/after renderings).
ALOKA = {
    "WESTWAY MEDICAL": Box(80, 0, 249, 12),  # the institution, top bar
    "ULTRASOUND": Box(110, 12, 209, 24),
    "24-MAY-02": Box(550, 0, 639, 12),  # date, top right
    "11:24:20": Box(561, 12, 639, 24),  # time, under it
    "3:PELVIS": Box(20, 456, 99, 468),  # bottom left
    "94%": Box(550, 456, 630, 468),  # "DVA: 94%", bottom right
}
# The other files that come out clean; each with a box where OCR reads text in the original.
OTHERS = {
    "examples_rgb_color.dcm": ("BAPTIST", Box(6, 8, 92, 25)),  # GE, 320 x 240 RGB
    "US1_UNCR.dcm": ("BAPTIST", Box(13, 18, 176, 46)),  # GE, 640 x 480 RGB
    "examples_palette.dcm": ("5/25/2011", Box(662, 2, 780, 30)),  # Philips, 8-bit palette
    "GDCMJ2K_TextGBR.dcm": ("green", Box(14, 138, 270, 225)),  # SC, large coloured words
}


def rgb(ds: Dataset) -> np.ndarray:
    """An 8-bit RGB rendering with pydicom alone (not the project's display code)."""
    pixels = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        values = apply_color_lut(pixels, ds).astype(np.float64)
        if values.max() > 255:
            values = values / 257.0
        return np.clip(values, 0, 255).astype(np.uint8)
    if ds.PhotometricInterpretation.startswith("YBR"):
        from pydicom.pixels import convert_color_space  # type: ignore[attr-defined]

        pixels = convert_color_space(pixels, ds.PhotometricInterpretation, "RGB")
    return np.asarray(pixels, np.uint8)


@pytest.fixture(scope="module")
def scrubbed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """The ALOKA file and the others through `dicomnode scrub --demo`, in one run; each
    input's output is found by its pseudonymised SOP Instance UID."""
    root = tmp_path_factory.mktemp("us")
    src = root / "in"
    src.mkdir()
    names = ["gdcm-US-ALOKA-16.dcm", *OTHERS]
    for name in names:
        path = get_testdata_file(name, download=False)  # pydicom-data (the dev extra)
        assert path is not None, f"{name}: not installed (pip install pydicom-data)"
        shutil.copy(path, src / name)
    out = root / "out"
    result = dicomnode("scrub", str(src), "-o", str(out), "--demo", "-j", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(names)} input(s): {len(names)} de-identified" in result.stdout, result.stdout
    assert "failed, by reason" not in result.stdout and "text-remains" not in result.stdout
    uid = Pseudonymizer(DEMO_SECRET).uid
    found = {}
    for name in names:
        sop = str(pydicom.dcmread(src / name, stop_before_pixels=True).SOPInstanceUID)
        (output,) = out.rglob(f"{uid(sop)}.dcm")
        found[name] = (src / name, output)
    return found


def _stage_finds_nothing(detector: RapidOCRDetector, path: Path) -> None:
    """The pixel stage itself, run again on its output, finds no text and changes nothing."""
    ds = read_instance(path.read_bytes())
    before = bytes(ds.PixelData)
    header = {k: ds.get(k) for k in ("Modality", "SOPClassUID", "Rows", "Columns")}
    report = PixelStage(PixelConfig(), detector=detector).clean(ds, header)
    assert report["checked"] and report["frames_changed"] == 0, report
    assert report["boxes_by_kind"] == {"found": 0, "removed": 0, "region": 0, "remains": 0}
    assert bytes(ds.PixelData) == before


def test_aloka_ultrasound_comes_out_clean_with_its_text_gone(
    scrubbed: dict[str, tuple[Path, Path]], detector: RapidOCRDetector
) -> None:
    source, output = scrubbed["gdcm-US-ALOKA-16.dcm"]
    original, cleaned = pydicom.dcmread(source), pydicom.dcmread(output)
    assert cleaned.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in cleaned.DeidentificationMethodCodeSequence]
    assert cleaned.PhotometricInterpretation == "PALETTE COLOR"
    assert cleaned.Rows == 480 and cleaned.Columns == 640
    before, after = rgb(original), rgb(cleaned)
    shown = codec.display(cleaned.pixel_array, "PALETTE COLOR", cleaned)
    shown_before = codec.display(original.pixel_array, "PALETTE COLOR", original)
    for word, box in ALOKA.items():
        region = (slice(box.y0, box.y1), slice(box.x0, box.x1))
        ink_before = int((before[region].mean(axis=2) > 150).sum())
        ink_after = int((after[region].mean(axis=2) > 150).sum())
        assert ink_before >= 200, (word, ink_before)  # the box does hold the text
        assert ink_after == 0, (word, ink_after)
        assert float(after[region].std()) < float(before[region].std()) / 4, word
        assert not np.array_equal(before[region], after[region]), word
        # OCR reads the word there in the original, and nothing in the output.
        assert any(word in w.upper() for w in readable(detector, shown_before, box)), word
        assert readable(detector, shown, box) == [], word
    # The ultrasound image itself is untouched (the left pane, away from its annotations).
    assert np.array_equal(
        original.pixel_array[120:400, 40:330], cleaned.pixel_array[120:400, 40:330]
    )
    assert readable(detector, shown) == []
    _stage_finds_nothing(detector, output)


@pytest.mark.parametrize("name", list(OTHERS))
def test_other_real_ultrasound_and_screen_captures_come_out_clean(
    name: str, scrubbed: dict[str, tuple[Path, Path]], detector: RapidOCRDetector
) -> None:
    source, output = scrubbed[name]
    word, box = OTHERS[name]
    original, cleaned = read_instance(source.read_bytes()), read_instance(output.read_bytes())
    assert cleaned.BurnedInAnnotation == "NO"
    first = codec.decode(original)
    picture = codec.display(first.arrays[0], first.photometric, original)
    assert any(word.upper() in w.upper() for w in readable(detector, picture, box)), word
    out = codec.decode(cleaned)
    for frame in out.arrays:
        shown = codec.display(frame, out.photometric, cleaned)
        assert readable(detector, shown) == [], name
        assert readable(detector, shown, box) == [], name
    _stage_finds_nothing(detector, output)
