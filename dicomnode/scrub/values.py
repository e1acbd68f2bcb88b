"""Replacement values: dummies by VR, shifted dates, cleaned text.

Everything here works on encoded bytes and returns encoded bytes, padded to even length, so
the engine never has to decode an element it does not change.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
from collections.abc import Iterable
from pathlib import Path

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
    if len(text) != 8 or not text.isdigit():
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


# -- free text -----------------------------------------------------------------------------

_DATE_LIKE = re.compile(
    r"\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b"  # 12/03/2021, 2021-03-12, 12.3.21
    r"|\b(?:19|20)\d{6}\b"  # 20210312
    r"|\b\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?\b"  # 10:42, 10:42:07
    r"|\b\d{1,2}[ -]?(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?[ -]?\d{2,4}\b",
    re.IGNORECASE,
)
# Any run of letters or digits, in any script: a name in Cyrillic or kanji is a token too, and
# only tokens can survive cleaning (what lies between them is punctuation and space).
_TOKEN = re.compile(r"[^\W_]+(?:\.[0-9]+)?")
_YEAR = re.compile(r"^(?:18|19|20)\d\d$")


class TextCleaner:
    """Keeps only known-safe words of a free-text value (the C action on text).

    A word survives when it is in the safe vocabulary (``rules/safe-words.txt`` plus site
    words) and is not one of the instance's identity terms; a number survives when it is
    short (at most 4 digits, or a decimal) and not a year; a token mixing letters and digits
    ("T1W", "B30f", "5mm") survives when it is short and its letters are safe words or at
    most two single letters.
    Dates, times and everything else are dropped.
    """

    def __init__(self, words: Iterable[str]) -> None:
        self._words = frozenset(w.lower() for w in words)

    @classmethod
    def from_files(cls, *paths: Path, extra: Iterable[str] = ()) -> TextCleaner:
        words: list[str] = list(extra)
        for path in paths:
            for line in path.read_text(encoding="utf-8").splitlines():
                words.extend(line.split("#", 1)[0].split())
        return cls(words)

    def _safe_token(self, token: str, banned: frozenset[str]) -> bool:
        low = token.lower()
        if low in banned:
            return False
        if low.isalpha():
            return low in self._words
        if low.replace(".", "", 1).isdigit():
            if "." in low:
                return len(low) <= 8
            return len(low) <= 4 and not _YEAR.match(low)
        # letters and digits mixed ("T1W", "B30f", "5mm", "b1000"): short, few digits, and its
        # letters safe words or at most two stray single letters (an ID has more).
        if len(low) > 8 or sum(c.isdigit() for c in low) > 4:
            return False
        letters = [part for part in re.split(r"[\d.]+", low) if part]
        stray = [part for part in letters if part not in self._words]
        return len(stray) <= 2 and all(len(part) == 1 for part in stray)

    def clean(self, text: str, banned: frozenset[str] = frozenset()) -> str:
        """Return ``text`` with every token not known to be safe removed."""
        text = _DATE_LIKE.sub(" ", text)
        out: list[str] = []
        pos = 0
        for match in _TOKEN.finditer(text):
            out.append(text[pos : match.start()])
            if self._safe_token(match.group(), banned):
                out.append(match.group())
            pos = match.end()
        out.append(text[pos:])
        cleaned = "".join(out)
        # Collapse what removal left behind: runs of spaces and orphaned separators.
        cleaned = re.sub(r"[ \t]{2,}", " ", cleaned)
        cleaned = re.sub(r"(?m)^[\s,;:/^_-]+|[\s,;:/^_-]+$", "", cleaned)
        return cleaned


def identity_terms(values: Iterable[str]) -> frozenset[str]:
    """Lower-cased words of identity values (names, IDs, addresses) to ban from clean text."""
    terms: set[str] = set()
    for value in values:
        for token in _TOKEN.findall(value.replace("^", " ")):
            if len(token) >= 2:
                terms.add(token.lower())
    return frozenset(terms)
