"""A length a sender declares is hostile too: an element whose value would run past the end of
the file, an element that occurs twice, and a value that took the elements after it into
itself (headers and all) must not carry PHI out.

Found by mutating tests/phi.py's planted instance byte by byte and cleaning each mutant: a
length declared past the end of the file, on an element that was not the last one, took
every later element (names, IDs, address) into a kept Manufacturer; a tag changed into an
earlier one's replaced that element's value silently; a birth date moved into (0010,0034),
an attribute the 2024b table does not list, was kept as text.
"""

from __future__ import annotations

import struct

import pytest
from pydicom.datadict import keyword_dict

from dicomnode.dicomio import read_instance
from dicomnode.errors import InstanceError
from tests.phi import planted_dataset, to_bytes

MANUFACTURER = keyword_dict["Manufacturer"]


def _explicit_header(data: bytes, tag: int, vr: bytes) -> int:
    """Where the one element ``tag`` (explicit VR, 2-byte length) starts in ``data``."""
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    assert data.count(header) == 1
    return data.index(header)


def test_a_length_past_the_end_of_the_file_is_refused_wherever_the_element_is() -> None:
    data = bytearray(to_bytes(planted_dataset()))
    at = _explicit_header(data, MANUFACTURER, b"LO")
    data[at + 6 : at + 8] = struct.pack("<H", 0xFFF0)  # more than the ~2 KB left
    with pytest.raises(InstanceError) as refused:
        read_instance(bytes(data))
    assert refused.value.reason == "truncated"
    assert "(0008,0070)" in str(refused.value)


def test_a_length_past_the_end_is_refused_in_implicit_vr_too() -> None:
    data = bytearray(to_bytes(planted_dataset(implicit=True)))
    header = struct.pack("<HHI", 0x0008, 0x0070, 4)
    assert data.count(header) == 1
    at = data.index(header)
    data[at + 4 : at + 8] = struct.pack("<I", 0x7FFF0000)
    with pytest.raises(InstanceError) as refused:
        read_instance(bytes(data))
    assert refused.value.reason == "truncated"


def test_an_element_that_occurs_twice_is_refused() -> None:
    # InstitutionName's tag turned into Manufacturer's: the later value would have replaced
    # "ACME" silently, and been kept.
    data = to_bytes(planted_dataset())
    institution = struct.pack("<HH", 0x0008, 0x0080) + b"LO"
    assert data.count(institution) == 1
    twice = data.replace(institution, struct.pack("<HH", 0x0008, 0x0070) + b"LO")
    with pytest.raises(InstanceError) as refused:
        read_instance(twice)
    assert refused.value.reason == "unreadable"
    assert "occurs twice" in str(refused.value)
    read_instance(data)  # and the file as it was reads


def test_a_bad_length_in_the_file_meta_is_unreadable_not_an_internal_error() -> None:
    data = bytearray(to_bytes(planted_dataset()))
    group_length = data.index(b"\x02\x00\x00\x00UL\x04\x00")
    data[group_length + 6 : group_length + 8] = struct.pack("<H", 3)  # a UL of 3 bytes
    with pytest.raises(InstanceError) as refused:
        read_instance(bytes(data))
    assert refused.value.reason in ("unreadable", "truncated")
