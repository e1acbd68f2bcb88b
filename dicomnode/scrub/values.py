"""Replacement values: dummies by VR and shifted dates (free text: :mod:`.freetext`).

Everything here works on encoded bytes and returns encoded bytes, padded to even length, so
the engine never has to decode an element it does not change.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
from collections.abc import Iterable

# Dummy values (action D): non-empty, valid for the VR, and recognisable as replaced.
_TEXT_DUMMY = b"ANONYMIZED"
DUMMY_BY_VR: dict[str, bytes] = {
    "AE": b"ANONYMIZED",
    "AS": b"000Y",
    "AT": b"\x00\x00\x00\x00",
    "CS": b"ANONYMIZED",
    "DA": b"19000101",
    "DS": b"0 ",
    "DT": b"19000101000000",
    "FD": struct.pack("<d", 0.0),
    "FL": struct.pack("<f", 0.0),
    "IS": b"0 ",
    "LO": _TEXT_DUMMY,
    "LT": _TEXT_DUMMY,
    "OB": b"\x00\x00",
    "OD": struct.pack("<d", 0.0),
    "OF": struct.pack("<f", 0.0),
    "OL": b"\x00\x00\x00\x00",
    "OV": b"\x00" * 8,
    "OW": b"\x00\x00",
    "PN": _TEXT_DUMMY,
    "SH": _TEXT_DUMMY,
    "SL": b"\x00\x00\x00\x00",
    "SS": b"\x00\x00",
    "ST": _TEXT_DUMMY,
    "SV": b"\x00" * 8,
    "TM": b"000000",
    "UC": _TEXT_DUMMY,
    "UL": b"\x00\x00\x00\x00",
    "UN": b"\x00\x00",
    "UR": b"urn:anonymized",
    "US": b"\x00\x00",
    "UT": _TEXT_DUMMY,
    "UV": b"\x00" * 8,
}

# Maximum value lengths (PS3.5 Table 6.2-1) of the VRs a pseudonym may be written to.
MAX_LENGTH = {
    "AE": 16,
    "CS": 16,
    "SH": 16,
    "LO": 64,
    "PN": 64,
    "UC": 1024,
    "ST": 1024,
    "LT": 10240,
    "UT": 65536,
}

TEXT_VRS = frozenset(
    {
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    }
)
FREE_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})


def pad(value: bytes, vr: str) -> bytes:
    """Pad to even length as PS3.5 6.2 asks: NUL for UI and binary VRs, space for text."""
    if len(value) % 2:
        return value + (b" " if vr in TEXT_VRS and vr != "UI" else b"\x00")
    return value


def split_values(raw: bytes) -> list[str]:
    """Split an ASCII multi-valued element into its values, without padding."""
    text = raw.decode("ascii", "replace").rstrip("\x00 ")
    return [v.strip("\x00 ") for v in text.split("\\")] if text else []


def join_values(values: Iterable[str], vr: str) -> bytes:
    """Encode ASCII values (UIDs, dates, codes) as one padded multi-valued element."""
    return pad("\\".join(values).encode("ascii"), vr)


def join_text(values: Iterable[str], vr: str) -> bytes:
    """Like :func:`join_values` for text we wrote ourselves (ASCII by construction)."""
    return pad("\\".join(values).encode("ascii", "replace"), vr)


# -- dates ---------------------------------------------------------------------------------


def shift_date(value: str, days: int) -> str:
    """Shift a DA value (YYYYMMDD, or a range with '-') by whole days; keeps its form."""
    if "-" in value:
        return "-".join(shift_date(part, days) if part else "" for part in value.split("-"))
    text = value.strip()
    if len(text) != 8 or not text.isdecimal():
        raise ValueError("not a DA value")
    shifted = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])) + dt.timedelta(days=days)
    return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}"


_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(.*)$")


def shift_datetime(value: str, days: int) -> str:
    """Shift the date part of a DT value; time, fraction and UTC offset stay as they are.

    A DT of year or year-month precision shifts as the first day of that period and keeps
    its precision, so "2019" may become "2016".
    """
    match = _DT.match(value.strip())
    if not match:
        raise ValueError("not a DT value")
    year, month, day, rest = match.groups()
    base = dt.date(int(year), int(month or 1), int(day or 1)) + dt.timedelta(days=days)
    out = f"{base.year:04d}"
    if month:
        out += f"{base.month:02d}"
    if day:
        out += f"{base.day:02d}"
    return out + rest
