"""Moving dates and times by one per-patient offset, so that intervals are kept to the second.

Under Retain Longitudinal Temporal Information with Modified Dates, every DA, TM and DT of a
patient moves by the same :class:`Shift` (whole days plus seconds, derived from the keyed
digest of the patient). A date and the time that belongs to it (StudyDate and StudyTime,
ContentDate and ContentTime, ...) move as one instant, so a shift across midnight moves the
date too. Alone, a date moves as its midnight would (whole days), and a time wraps around
24 hours. Every value keeps its precision (a TM of "HHMM" stays "HHMM"), its fraction and its
UTC offset.

Values that are not what their VR says raise :class:`ValueError`; the engine then writes a
dummy, never the original. Results are cached: the instances of a series share their dates.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache

from pydicom.datadict import DicomDictionary, keyword_dict  # type: ignore[attr-defined]

__all__ = ["DATE_TIME_PAIRS", "Shift", "shift_da", "shift_dt", "shift_pair", "shift_tm"]

_DAY = 86400


@dataclass(frozen=True, slots=True)
class Shift:
    """A patient's offset: ``days`` whole days (never 0) and ``seconds`` in [0, 86400)."""

    days: int
    seconds: int

    @property
    def delta(self) -> dt.timedelta:
        return dt.timedelta(days=self.days, seconds=self.seconds)


# -- parsing -------------------------------------------------------------------------------

_TM = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?$")
_DT = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$"
)


@dataclass(frozen=True, slots=True)
class _Time:
    """A parsed TM: the fields present (precision) and the seconds since midnight."""

    parts: int  # 1: HH, 2: HHMM, 3: HHMMSS
    seconds: int
    fraction: str  # ".123" or ""


def _parse_tm(value: str) -> _Time:
    match = _TM.match(value.strip())
    if not match:
        raise ValueError("not a TM value")
    hh, mm, ss, fraction = match.groups()
    hour, minute, second = int(hh), int(mm or 0), int(ss or 0)
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError("not a TM value")
    parts = 1 + (mm is not None) + (ss is not None)
    return _Time(parts, hour * 3600 + minute * 60 + min(second, 59), fraction or "")


def _format_tm(seconds: int, parts: int, fraction: str) -> str:
    hour, rest = divmod(seconds % _DAY, 3600)
    minute, second = divmod(rest, 60)
    text = f"{hour:02d}"
    if parts > 1:
        text += f"{minute:02d}"
    if parts > 2:
        text += f"{second:02d}{fraction}"
    return text


def _parse_da(value: str) -> dt.date:
    text = value.strip()
    if len(text) != 8 or not text.isdecimal():
        raise ValueError("not a DA value")
    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def _format_da(day: dt.date) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _ranged(value: str, one: Callable[[str], str]) -> str:
    """Apply ``one`` to each side of a range ("A-B", "-B", "A-"; query values) or to a value."""
    if "-" in value:
        return "-".join(one(part) if part.strip() else "" for part in value.split("-"))
    return one(value)


# -- shifting ------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def shift_da(value: str, shift: Shift) -> str:
    """A date alone: whole days (the date of its midnight after the shift)."""

    def one(part: str) -> str:
        return _format_da(_parse_da(part) + dt.timedelta(days=shift.days))

    return _ranged(value, one)


@lru_cache(maxsize=4096)
def shift_tm(value: str, shift: Shift) -> str:
    """A time alone: the seconds of the shift, modulo 24 hours; precision kept."""

    def one(part: str) -> str:
        time = _parse_tm(part)
        return _format_tm(time.seconds + shift.seconds, time.parts, time.fraction)

    return _ranged(value, one)


@lru_cache(maxsize=4096)
def shift_pair(date: str, time: str, shift: Shift) -> tuple[str, str]:
    """A date and its time as one instant; a shift across midnight moves the date."""
    day = _parse_da(date)
    parsed = _parse_tm(time)
    total = parsed.seconds + shift.seconds
    day += dt.timedelta(days=shift.days + total // _DAY)
    return _format_da(day), _format_tm(total, parsed.parts, parsed.fraction)


@lru_cache(maxsize=4096)
def shift_dt(value: str, shift: Shift) -> str:
    """A DT: the whole instant when it has a time, keeping precision, fraction and offset.

    A DT of date precision moves as a date; one of year or year-month precision moves as the
    first day of that period and keeps its precision (so "2019" may become "2016").
    """

    def one(part: str) -> str:
        match = _DT.match(part.strip())
        if not match:
            raise ValueError("not a DT value")
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        base = dt.date(int(year), int(month or 1), int(day or 1))
        if hour is None:
            moved = base + dt.timedelta(days=shift.days)
            out = f"{moved.year:04d}"
            if month:
                out += f"{moved.month:02d}"
            if day:
                out += f"{moved.day:02d}"
            return out + (offset or "")
        time_text = hour + (minute or "") + (second or "") + (fraction or "")
        new_date, new_time = shift_pair(_format_da(base), time_text, shift)
        return new_date + new_time + (offset or "")

    try:
        return one(value)  # a negative UTC offset has a '-' too: try a single value first
    except ValueError:
        if "-" not in value:
            raise
    return _ranged(value, one)


# -- which date goes with which time -------------------------------------------------------


@cache
def _pairs() -> dict[int, int]:
    """DA tag -> TM tag of the same event, from the dictionary's keywords.

    "StudyDate" goes with "StudyTime", "DateOfLastCalibration" with "TimeOfLastCalibration",
    the SR content item's "Date" with "Time": the keyword with "Date" read as "Time".
    """
    vrs = {entry[4]: (tag, entry[0]) for tag, entry in DicomDictionary.items() if entry[4]}
    pairs: dict[int, int] = {}
    for keyword, (tag, vr) in vrs.items():
        if vr != "DA" or "Date" not in keyword:
            continue
        candidates = [keyword.replace("Date", "Time")]
        start = keyword.find("Date")
        while start != -1:
            candidates.append(keyword[:start] + "Time" + keyword[start + 4 :])
            start = keyword.find("Date", start + 1)
        for candidate in candidates:
            partner = vrs.get(candidate)
            if partner is not None and partner[1] == "TM" and candidate in keyword_dict:
                pairs[tag] = partner[0]
                break
    return pairs


DATE_TIME_PAIRS: dict[int, int] = _pairs()
