"""No value from an instance reaches a log: pydicom's warnings quote the values they find
wrong, and workers log what they meet; every malformed-value kind is planted with PHI in it,
sent to a real node, and looked for in its log."""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import pytest

from dicomnode.logs import redact_library_message, setup_logging
from tests.peers import NodeProcess, running, storescu, wait_for
from tests.phi import planted_dataset, to_bytes

MARK = "Zanzibarova"  # a surname that must never be logged


def _element(tag: int, vr: str, value: bytes) -> bytes:
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if len(value) % 2:
        value += b" "
    if vr in ("OB", "OW", "UN", "UT", "UC", "UR", "SQ"):
        return header + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return header + struct.pack("<H", len(value)) + value


# Malformed values of every kind pydicom validates, each carrying the mark.
MALFORMED = {
    0x00080018: ("UI", f"1.2.3.{MARK}".encode()),  # SOP Instance UID with letters
    0x00080020: ("DA", MARK.encode()),  # Study Date
    0x00080030: ("TM", MARK.encode()),  # Study Time
    0x0008002A: ("DT", MARK.encode()),  # Acquisition DateTime
    0x00101010: ("AS", MARK[:4].encode()),  # Patient's Age
    0x00101020: ("DS", MARK.encode()),  # Patient's Size
    0x00200013: ("IS", MARK.encode()),  # Instance Number
    0x00080060: ("CS", f"ct {MARK}".lower().encode()),  # Modality, lower case and long
    0x00081030: ("LO", (MARK + " ") * 8),  # Study Description, longer than 64
    0x00080090: ("PN", ("^".join([MARK] * 7)).encode()),  # too many components
    0x00080054: ("AE", f"{MARK}\\x{MARK}".encode()),  # Retrieve AE Title
    0x00081010: ("SH", (MARK * 3).encode()),  # Station Name, longer than 16
    0x00180015: ("CS", f"{MARK}!".encode()),  # Body Part Examined with a bad character
}


def _malformed_instance() -> bytes:
    ds = planted_dataset()
    for tag in MALFORMED:
        if tag in ds:
            del ds[tag]
    ds.SpecificCharacterSet = f"ISO_IR {MARK}"  # an unknown character set, named after them
    data = to_bytes(ds)
    # Splice the malformed elements into the data set in tag order (explicit VR LE).
    body_start = data.index(struct.pack("<HH", 0x0008, 0x0005))
    head, body = data[:body_start], data[body_start:]
    elements = _split(body)
    for tag, (vr, value) in MALFORMED.items():
        if isinstance(value, str):
            value = value.encode()
        elements[tag] = _element(tag, vr, value)
    return head + b"".join(elements[tag] for tag in sorted(elements))


def _split(body: bytes) -> dict[int, bytes]:
    """Top-level elements of an explicit VR little endian data set, by tag."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(body):
        group, element = struct.unpack_from("<HH", body, pos)
        vr = body[pos + 4 : pos + 6].decode()
        if vr in ("OB", "OW", "UN", "UT", "UC", "UR", "SQ", "OF", "OD", "OL", "OV", "SV", "UV"):
            (length,) = struct.unpack_from("<I", body, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", body, pos + 6)
            start = pos + 8
        if length == 0xFFFFFFFF:
            end = body.index(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", start) + 8
        else:
            end = start + length
        out[(group << 16) | element] = body[pos:end]
        pos = end
    return out


def test_library_messages_are_cut_before_the_value() -> None:
    for message, kept in [
        (f"Invalid value for VR UI: '1.2.3.{MARK}'. Please see <https://x>", "VR UI"),
        (f'Value "{MARK}" is not valid for elements with a VR of DS', "Value"),
        (f"/x.py:440: UserWarning: Invalid value for VR IS: '{MARK}'.\n  warn(msg)", "VR IS"),
        (f"Unknown encoding 'ISO_IR {MARK}' - using default encoding instead", "encoding"),
        (f"Value '{MARK}' for Specific Character Set does not allow code extensions", "Value"),
    ]:
        out = redact_library_message(message)
        assert MARK not in out and kept in out, out


def test_library_records_in_this_process_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    with warnings.catch_warnings():
        setup_logging(logging.INFO, verbose=1)  # -v: pynetdicom's warnings too, redacted
        warnings.simplefilter("always")  # pydicom's own warnings, each time they happen
        try:
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(_malformed_instance()))
            for element in ds.iterall():
                _ = element.value  # every value decoded: every warning pydicom has
            # What logging.captureWarnings makes of a warning (pytest may hold the real ones).
            logging.getLogger("py.warnings").warning(
                "%s",
                f"/x/valuerep.py:440: UserWarning: Invalid value for VR UI: '1.2.{MARK}'.\n"
                "  warn_and_log(msg)\n",
            )
            logging.getLogger("pydicom").error("Invalid value for VR PN: %r", MARK)
            logging.getLogger("pynetdicom.dul").warning("Unknown PDU type %r", MARK)
        finally:
            logging.getLogger().handlers.clear()
            logging.captureWarnings(False)
    err = capsys.readouterr().err
    assert err.count("value withheld") >= 3, err
    assert MARK not in err and MARK.lower() not in err


@pytest.mark.peers
def test_no_planted_value_in_the_node_log(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "malformed.dcm").write_bytes(_malformed_instance())
    node = NodeProcess(tmp_path / "node", logging={"level": "DEBUG"})
    with running(node):
        sent = storescu(node.port, folder)
        assert sent.returncode == 0, sent.stderr
        settled = node.spool / "quarantine"
        wait_for(
            lambda: any(node.out.rglob("*.dcm")) or any(settled.rglob("*.dcm")),
            60,
            "the instance to be cleaned or quarantined",
        )
    log = node.log.read_text(errors="replace")
    assert MARK not in log and MARK.lower() not in log, [
        line for line in log.splitlines() if MARK.lower() in line.lower()
    ]
    for path in node.out.rglob("*.dcm"):
        assert MARK.encode() not in path.read_bytes()
