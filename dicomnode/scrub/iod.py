"""The Type of an attribute in an instance's IOD (DICOM PS3.3), for combined action codes.

PS3.15 Table E.1-1's combined codes (X/Z, X/D, X/Z/D, Z/D, X/Z/U*) mean "the weakest action the
IOD allows": an attribute that is Type 3 may be removed, Type 2 must stay (empty), Type 1 needs
a value. The Types come from ``rules/iod/attribute-types.json``, generated from highdicom's
tables by ``tools/generate_iod.py`` (edition in ``rules/iod/README.md``).

>>> attribute_type("1.2.840.10008.5.1.4.1.1.2", (0x00081110,))  # CT: ReferencedStudySequence
<AttributeType.TYPE3: '3'>
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from functools import cache
from typing import Any

from dicomnode.scrub.profile import rules_dir

__all__ = ["AttributeType", "attribute_type", "knows"]

TABLE_FILE = "attribute-types.json"
_FORMAT = 1


class AttributeType(StrEnum):
    """PS3.5 §7.4 data element Types, from most to least demanding."""

    TYPE1 = "1"
    TYPE1C = "1C"
    TYPE2 = "2"
    TYPE2C = "2C"
    TYPE3 = "3"


# Lower is more demanding: where modules disagree, the lowest rank wins.
_RANK = {kind: rank for rank, kind in enumerate(AttributeType)}

Path = tuple[int, ...]


@cache
def _tables() -> Mapping[str, Any]:
    """The generated file, read once per process (on first use, so imports stay cheap)."""
    path = rules_dir() / "iod" / TABLE_FILE
    data: dict[str, Any] = json.loads(path.read_bytes())
    if data.get("format") != _FORMAT:
        raise RuntimeError(
            f"{path}: format {data.get('format')!r}, expected {_FORMAT}; regenerate it"
        )
    return data


@cache
def _group(group: int) -> tuple[tuple[int, AttributeType | None, int | None], ...]:
    """One stored group as (tag, Type, group of the items), parsed once and shared by IODs."""
    return tuple(
        (
            int(row[0], 16),
            None if row[1] is None else AttributeType(row[1]),
            row[2] if len(row) > 2 else None,
        )
        for row in _tables()["groups"][group]
    )


_PATHS: dict[Path, Path] = {}  # one tuple per distinct path, shared by the IOD tables


@cache
def _iod_types(iod: str) -> Mapping[Path, AttributeType]:
    """Every attribute path of one IOD and its most demanding Type across the IOD's modules.

    Cached per IOD (at most a few hundred), not per SOP Class UID: UIDs come from the wire.
    """
    data = _tables()
    out: dict[Path, AttributeType] = {}

    def walk(group: int, prefix: Path) -> None:
        for tag, kind, items in _group(group):
            path = (*prefix, tag)
            path = _PATHS.setdefault(path, path)
            if kind is not None:
                old = out.get(path)
                if old is None or _RANK[kind] < _RANK[old]:
                    out[path] = kind
            if items is not None:
                walk(items, path)

    for module in data["iods"][iod]:
        walk(data["modules"][module], ())
    return out


def attribute_type(sop_class_uid: str, path: Sequence[int]) -> AttributeType | None:
    """The Type of the attribute at `path` in the IOD of `sop_class_uid`, or None if unknown.

    `path` is the chain of tags from the top level, items left out: ``(0x00400275, 0x00081110)``
    is ReferencedStudySequence inside RequestAttributesSequence. Where several modules of the
    IOD hold the attribute at that path (whatever their usage), the most demanding Type wins.
    None when the SOP class is not in the table or the attribute is not in its IOD there;
    callers then keep their IOD-blind choice.
    """
    iod = _tables()["sop_classes"].get(sop_class_uid)
    if iod is None:
        return None
    return _iod_types(iod).get(path if isinstance(path, tuple) else tuple(path))


def knows(sop_class_uid: str) -> bool:
    """Whether the table has the IOD of `sop_class_uid`: then an attribute it does not list
    at a path is not part of that IOD there, and removing it cannot break conformance."""
    return sop_class_uid in _tables()["sop_classes"]
