"""Dates and times move together: one per-patient offset, intervals kept to the second."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode.dicomio import encode_instance, read_instance
from dicomnode.scrub import Scrubber
from dicomnode.scrub.timeshift import (
    DATE_TIME_PAIRS,
    Shift,
    shift_da,
    shift_dt,
    shift_pair,
    shift_tm,
)
from tests.phi import planted_dataset, to_bytes

Make = Callable[..., Scrubber]
BACK = Shift(-10, 3600)  # ten days back, then one hour forward


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10", "11"),  # hour precision stays hour precision
        ("1015", "1115"),
        ("101500", "111500"),
        ("101500.123456", "111500.123456"),  # the fraction is kept
        ("233000", "003000"),  # alone, a time wraps around midnight
        ("10:15:00", "111500"),  # ACR-NEMA colons: written in today's form
        ("1000-1100", "1100-1200"),  # a range (queries)
    ],
)
def test_shift_tm(value: str, expected: str) -> None:
    assert shift_tm(value, BACK) == expected


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("20200301", "101500", ("20200220", "111500")),
        ("20200301", "233000", ("20200221", "003000")),  # crosses midnight: the date moves
        ("20200301", "2330", ("20200221", "0030")),
        ("20200301", "233059.5", ("20200221", "003059.5")),
        ("20210101", "23", ("20201223", "00")),
    ],
)
def test_a_date_and_its_time_move_as_one_instant(
    date: str, time: str, expected: tuple[str, str]
) -> None:
    assert shift_pair(date, time, BACK) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20200301233000", "20200221003000"),
        ("20200301233000.123456+0200", "20200221003000.123456+0200"),
        ("20200301233000-0500", "20200221003000-0500"),  # a negative offset is not a range
        ("2020030110", "2020022011"),
        ("20200301", "20200220"),  # date precision: whole days, like a DA
        ("202003", "202002"),
        ("2020", "2019"),  # as the first day of that year
    ],
)
def test_shift_dt_keeps_precision_fraction_and_offset(value: str, expected: str) -> None:
    assert shift_dt(value, BACK) == expected


def test_a_date_alone_moves_by_whole_days() -> None:
    assert shift_da("20200301", BACK) == "20200220"
    assert shift_da("20200101-20200131", BACK) == "20191222-20200121"


@pytest.mark.parametrize("bad", ["2461", "1060", "12:3", "ab", "101500.1234567"])
def test_malformed_times_raise(bad: str) -> None:
    with pytest.raises(ValueError):
        shift_tm(bad, BACK)


def test_every_date_time_pair_of_the_dictionary_is_known() -> None:
    names = {
        (pydicom.datadict.keyword_for_tag(a), pydicom.datadict.keyword_for_tag(b))
        for a, b in DATE_TIME_PAIRS.items()
    }
    for pair in [
        ("StudyDate", "StudyTime"),
        ("SeriesDate", "SeriesTime"),
        ("AcquisitionDate", "AcquisitionTime"),
        ("ContentDate", "ContentTime"),
        ("InstanceCreationDate", "InstanceCreationTime"),
        ("DateOfLastCalibration", "TimeOfLastCalibration"),
        ("Date", "Time"),  # SR content items
        ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
    ]:
        assert pair in names
    assert len(DATE_TIME_PAIRS) >= 40


# -- through the engine --------------------------------------------------------------------


def run(scrubber: Scrubber, ds: Dataset) -> Dataset:
    parsed = read_instance(to_bytes(ds))
    scrubber.scrub(parsed)
    return pydicom.dcmread(io.BytesIO(encode_instance(parsed)))


def _instant(date: str, time: str) -> dt.datetime:
    time = time.split(".")[0].ljust(6, "0")
    return dt.datetime.strptime(date + time, "%Y%m%d%H%M%S")


def _dt(value: str) -> dt.datetime:
    text = value.split("+")[0].split("-")[0]
    return dt.datetime.strptime(text.split(".")[0], "%Y%m%d%H%M%S")


def _timed() -> Dataset:
    ds = planted_dataset()
    ds.StudyDate, ds.StudyTime = "20210314", "235010"
    ds.SeriesDate, ds.SeriesTime = "20210314", "235500.25"
    ds.AcquisitionDate, ds.AcquisitionTime = "20210315", "000130"
    ds.ContentDate, ds.ContentTime = "20210315", "001500.123456"
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20210315", "0020"
    ds.AcquisitionDateTime = "20210315000130.5+0100"
    ds.AcquisitionTime = "000130"
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.add_new(0x00181014, "TM", "120000")  # TimeOfSecondaryCapture, no date: alone
    # An SR content item with a Date/Time pair, two levels down.
    item = Dataset()
    item.ValueType = "DATE"
    item.Date = "20210314"
    item.Time = "235959"
    outer = Dataset()
    outer.ValueType = "CONTAINER"
    outer.ContentSequence = Sequence([item])
    ds.ContentSequence = Sequence([outer])
    return ds


PAIRS = [
    ("StudyDate", "StudyTime"),
    ("SeriesDate", "SeriesTime"),
    ("AcquisitionDate", "AcquisitionTime"),
    ("ContentDate", "ContentTime"),
    ("InstanceCreationDate", "InstanceCreationTime"),
]


def test_times_shift_with_their_dates_and_keep_intervals(scrubber: Scrubber) -> None:
    ds = _timed()
    out = run(scrubber, ds)
    before = {d: _instant(ds[d].value, ds[t].value) for d, t in PAIRS}
    after = {d: _instant(out[d].value, out[t].value) for d, t in PAIRS}
    offsets = {after[d] - before[d] for d in before if d != "InstanceCreationDate"}
    assert len(offsets) == 1, "every pair moves by the same offset"
    offset = offsets.pop()
    # HHMM precision: the same instant, cut to the minute.
    coarse = after["InstanceCreationDate"] - before["InstanceCreationDate"]
    assert abs(coarse - offset) < dt.timedelta(minutes=1)
    assert offset != dt.timedelta(0) and offset.seconds % 86400 != 0, "times moved too"
    # The DT moves by the same instant offset, keeps its fraction and its UTC offset.
    assert _dt(out.AcquisitionDateTime) - _dt(ds.AcquisitionDateTime) == offset
    assert out.AcquisitionDateTime.endswith(".5+0100")
    # Precision kept: HHMM stays HHMM, fractions stay.
    assert len(out.InstanceCreationTime) == 4
    assert out.ContentTime.endswith(".123456") and out.SeriesTime.endswith(".25")
    # Nested SR items: the same offset, at depth 2.
    inner = out.ContentSequence[0].ContentSequence[0]
    assert _instant(inner.Date, inner.Time) - _instant("20210314", "235959") == offset
    # A time alone wraps around 24 h by the same seconds.
    alone = _instant("20000101", out[0x00181014].value) - _instant("20000101", "120000")
    assert alone.seconds == offset.seconds
    for keyword in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"):
        assert out[keyword].value != ds[keyword].value


def test_intervals_kept_across_instances_series_and_studies(scrubber: Scrubber) -> None:
    first = _timed()
    second = _timed()
    second.StudyInstanceUID = first.StudyInstanceUID + ".2"
    second.StudyDate, second.StudyTime = "20220101", "080000"
    second.ContentDate, second.ContentTime = "20220101", "081533"
    a, b = run(scrubber, first), run(scrubber, second)
    gap_before = _instant("20220101", "081533") - _instant("20210315", "001500")
    gap_after = _instant(b.ContentDate, b.ContentTime) - _instant(a.ContentDate, a.ContentTime)
    assert gap_after == gap_before
    other = _timed()
    other.PatientID = "ANOTHER-PATIENT"
    c = run(scrubber, other)
    assert (c.StudyDate, c.StudyTime) != (a.StudyDate, a.StudyTime), "each patient its own shift"


def test_malformed_time_becomes_a_dummy(scrubber: Scrubber) -> None:
    ds = _timed()
    ds.StudyTime = "99:99"
    out = run(scrubber, ds)
    assert out.StudyTime == "000000"
    assert out.StudyDate != "20210314"


def test_full_dates_keep_times_and_no_option_removes_them(make_scrubber: Make) -> None:
    ds = _timed()
    full = run(make_scrubber(options=("retain-long-full-dates",)), ds)
    assert (full.StudyDate, full.StudyTime) == ("20210314", "235010")
    assert full.ContentTime == "001500.123456"
    basic = run(make_scrubber(options=()), ds)
    assert basic.StudyTime == ""  # Z
    assert "AcquisitionTime" not in basic or basic.AcquisitionTime == ""
    assert basic.get("ContentTime", "") in ("", "000000")


PAIR_KEYWORDS = sorted(
    (pydicom.datadict.keyword_for_tag(d), pydicom.datadict.keyword_for_tag(t))
    for d, t in DATE_TIME_PAIRS.items()
)


@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize(("date_kw", "time_kw"), PAIR_KEYWORDS, ids=[p[0] for p in PAIR_KEYWORDS])
def test_every_date_time_pair_at_every_depth_moves_as_one_instant(
    scrubber: Scrubber, date_kw: str, time_kw: str, depth: int
) -> None:
    ds = planted_dataset()
    shift = scrubber.pseudonyms.shift(ds.PatientID)
    offset = dt.timedelta(days=shift.days, seconds=shift.seconds)
    target = ds
    for _ in range(depth):  # kept sequences, walked with the profile
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.99.4242"
        holder = Dataset()
        holder.SeriesInstanceUID = "1.2.826.0.1.3680043.99.4243"
        holder.ReferencedInstanceSequence = Sequence([item])
        target.ReferencedSeriesSequence = Sequence([holder])
        target = item
    setattr(target, date_kw, "20210314")
    setattr(target, time_kw, "235530")
    out = run(scrubber, ds)
    found = out
    for _ in range(depth):
        found = found.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    date, time = str(found.get(date_kw) or ""), str(found.get(time_kw) or "")
    if date in ("", "19000101") or time in ("", "000000"):
        # Removed, emptied or dummied by the profile: nothing of the original instant is left.
        assert date != "20210314" and time != "235530"
        return
    assert _instant(date, time) - _instant("20210314", "235530") == offset
