"""Dates and dummies (the free-text cleaner: tests/test_freetext.py)."""

from __future__ import annotations

import pytest

from dicomnode.scrub.values import (
    DUMMY_BY_VR,
    shift_date,
    shift_datetime,
)


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20200301", -1, "20200229"),  # leap day
        ("20210101", -366, "20200101"),
        ("20200101-20200131", -10, "20191222-20200121"),  # a range
        ("-20200131", -1, "-20200130"),
    ],
)
def test_shift_date(value: str, days: int, expected: str) -> None:
    assert shift_date(value, days) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20200301101500.123456+0200", "20200229101500.123456+0200"),
        ("202003", "202002"),  # month precision stays month precision
        ("2020", "2019"),
    ],
)
def test_shift_datetime_keeps_time_precision_and_offset(value: str, expected: str) -> None:
    assert shift_datetime(value, -1) == expected


def test_malformed_dates_raise() -> None:
    with pytest.raises(ValueError):
        shift_date("2020-03-01", 1)
    with pytest.raises(ValueError):
        shift_date("20201341", 1)


def test_dummies_are_valid_for_their_vr() -> None:
    for vr, value in DUMMY_BY_VR.items():
        assert value and len(value) % 2 == 0, vr
    assert len(DUMMY_BY_VR["CS"].rstrip()) <= 16 and DUMMY_BY_VR["CS"].isupper()
    assert len(DUMMY_BY_VR["AE"]) <= 16
