"""A small, validated condition language on the header as received.

Project matching (``projects[].match.when``) and filters (``projects[].filters[].when``) use
it. A condition has the pixel policy's form (``rules/pixels.yaml``), ``{field, op, value}``::

    {field: Modality, op: equals, value: [CT, MR]}          # any of the values
    {field: SeriesDescription, op: matches, value: "(?i)dose\\s*report"}
    {field: BurnedInAnnotation, op: present}

and conditions combine as the pixel policy's region ``when`` does: a list must hold as a
whole (and), a list inside it holds when one of its conditions does (or)::

    when: [{field: SOPClassUID, op: equals, value: 1.2.840.10008.5.1.4.1.1.7},
           [{field: ImageType, op: equals, value: "SCREEN SAVE"},
            {field: SeriesDescription, op: matches, value: "(?i)dose"}]]

``field`` is a DICOM keyword of a top-level attribute of the data set (no sequences, no file
meta), or one of the fields that are not in the header: ``calling_ae_title`` (as the spool
records it: letters, digits, ``_`` and ``-``, other characters replaced by ``-``),
``called_ae_title`` (project matching only) and ``pixel_stage`` (filters only: ``check`` when
the project's pixel stage will check the instance, ``skip`` when its policy skips it, ``off``
when the stage is disabled).

Ops, on every value of a multi-valued attribute (ImageType ``ORIGINAL\\PRIMARY\\AXIAL`` equals
``AXIAL``): ``equals`` (exact, after trimming spaces), ``notequals`` (no value equals),
``startswith`` and ``contains`` (ignoring case), ``matches`` (a Python regular expression,
searched; checked when the configuration is loaded), and ``present``, ``missing``, ``empty``
(no ``value``). A value op on an attribute that is missing or empty is false. A value that
cannot be decoded counts as missing: a sender cannot make a condition raise.

Instance values are untrusted: at most ``MAX_VALUES`` values of at most ``MAX_TEXT``
characters each are looked at, so a regular expression never runs over a sender's megabyte.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
)
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomnode.dicomio import decoded_copy

__all__ = [
    "CALLED_AE",
    "CALLING_AE",
    "PIXEL_STAGE",
    "Condition",
    "Header",
    "Op",
    "Predicate",
    "When",
    "header_values",
    "when_fields",
]

CALLING_AE = "calling_ae_title"
CALLED_AE = "called_ae_title"
PIXEL_STAGE = "pixel_stage"
PSEUDO_FIELDS = frozenset({CALLING_AE, CALLED_AE, PIXEL_STAGE})
MAX_VALUES = 64
MAX_TEXT = 1024

# field -> its values (stripped strings); a missing attribute has no key, an empty one ().
Header = Mapping[str, tuple[str, ...]]

_SPOOL_AE = re.compile(r"[A-Za-z0-9_-]{1,16}")


class Op(StrEnum):
    """What a condition tests."""

    EQUALS = "equals"
    NOTEQUALS = "notequals"
    STARTSWITH = "startswith"
    CONTAINS = "contains"
    MATCHES = "matches"
    PRESENT = "present"
    MISSING = "missing"
    EMPTY = "empty"


_NO_VALUE = frozenset({Op.PRESENT, Op.MISSING, Op.EMPTY})


class Condition(BaseModel):
    """One test of one field (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    op: Op
    value: tuple[str, ...] | None = Field(default=None, validate_default=True)

    @field_validator("value", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        # YAML gives 1 for "1" and a bare string for a single value: one form for the rest.
        if v is None:
            return None
        items = v if isinstance(v, list | tuple) else [v]
        if not all(isinstance(x, str | int | float) and not isinstance(x, bool) for x in items):
            raise ValueError("a value is a string, or a list of strings (any of them)")
        return tuple(str(x).strip() for x in items)

    @field_validator("field")
    @classmethod
    def _field(cls, v: str) -> str:
        if v in PSEUDO_FIELDS:
            return v
        tag = tag_for_keyword(v)
        if tag is None:
            raise ValueError(
                f"{v!r} is not a DICOM keyword (e.g. Modality, SOPClassUID, ImageType) nor "
                f"one of {', '.join(sorted(PSEUDO_FIELDS))}; check the spelling"
            )
        if tag >> 16 == 0x0002:
            raise ValueError(f"{v} is file meta information; conditions look at the data set")
        if dictionary_VR(tag) == "SQ":
            raise ValueError(f"{v} is a sequence; conditions look at top-level values only")
        return v

    @field_validator("value")
    @classmethod
    def _value(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        op, field = info.data.get("op"), info.data.get("field")
        if op is None:
            return value  # the op is wrong already: one message is enough
        if op in _NO_VALUE:
            if value is not None:
                raise ValueError(f"op {op.value} takes no value: remove value")
            return value
        if not value:
            raise ValueError(f"op {op.value} needs a value (a string or a list)")
        if op is Op.MATCHES:
            for pattern in value:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(
                        f"{pattern!r} is not a regular expression ({exc}); fix it or use "
                        "op: contains"
                    ) from None
        if field == CALLING_AE:
            for ae in value:
                if not _SPOOL_AE.fullmatch(ae):
                    raise ValueError(
                        f"calling AE titles are compared as the spool records them (1 to 16 "
                        f"letters, digits, '_' or '-'; other characters become '-'): write "
                        f"{re.sub(r'[^A-Za-z0-9_-]', '-', ae)[:16]!r} for {ae!r}"
                    )
        return value


# A mapping is one condition, a list a group: errors then name one shape, not every one.
def _shape(value: Any) -> str:
    if isinstance(value, Mapping | Condition):
        return "condition"
    return "list"


_AnyOf = Annotated[
    Annotated[Condition, Tag("condition")] | Annotated[tuple[Condition, ...], Tag("list")],
    Discriminator(_shape),
]
# A condition, or a list that must hold as a whole, whose inner lists need one of theirs.
When = Annotated[
    Annotated[Condition, Tag("condition")] | Annotated[tuple[_AnyOf, ...], Tag("list")],
    Discriminator(_shape),
]


def _conditions(when: When) -> Iterable[Condition]:
    if isinstance(when, Condition):
        yield when
        return
    for part in when:
        if isinstance(part, Condition):
            yield part
        else:
            yield from part


def when_fields(when: When | None) -> frozenset[str]:
    """The fields a ``when`` looks at (what a header read must provide)."""
    return frozenset(c.field for c in _conditions(when)) if when is not None else frozenset()


class Predicate:
    """A ``when`` made ready to run: regular expressions compiled once."""

    def __init__(self, when: When) -> None:
        self.when = when
        self.fields = when_fields(when)
        self._patterns = {
            c: tuple(re.compile(p) for p in c.value or ())
            for c in _conditions(when)
            if c.op is Op.MATCHES
        }

    def __call__(self, header: Header) -> bool:
        when = self.when
        if isinstance(when, Condition):
            return self._test(when, header)
        for part in when:
            if isinstance(part, Condition):
                if not self._test(part, header):
                    return False
            elif not any(self._test(c, header) for c in part):
                return False
        return True

    def _test(self, cond: Condition, header: Header) -> bool:
        have = header.get(cond.field)
        op = cond.op
        if op is Op.MISSING:
            return have is None
        filled = have is not None and any(have)
        if op is Op.PRESENT:
            return filled
        if op is Op.EMPTY:
            return have is not None and not filled
        if not filled:
            return False
        assert have is not None and cond.value is not None
        values = [h[:MAX_TEXT] for h in have[:MAX_VALUES]]
        if op is Op.EQUALS:
            return any(h == w for h in values for w in cond.value)
        if op is Op.NOTEQUALS:
            return not any(h == w for h in values for w in cond.value)
        if op is Op.STARTSWITH:
            return any(h.casefold().startswith(w.casefold()) for h in values for w in cond.value)
        if op is Op.CONTAINS:
            return any(w.casefold() in h.casefold() for h in values for w in cond.value)
        return any(p.search(h) for p in self._patterns[cond] for h in values)


def header_values(ds: Dataset, fields: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The values of ``fields`` (DICOM keywords) in ``ds``, as conditions see them.

    Raw elements are decoded on a copy: the data set is left exactly as read (the scrubber
    checks every raw element's VR itself, and must see what the sender sent).
    """
    found: dict[str, tuple[str, ...]] = {}
    for keyword in fields:
        if keyword in PSEUDO_FIELDS:
            continue
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in ds:
            continue
        try:
            values = _strings(decoded_copy(ds, tag))
        except Exception:  # undecodable: as good as missing, never an error
            continue
        if values is not None:
            found[keyword] = values
    return found


def _strings(elem: DataElement | None) -> tuple[str, ...] | None:
    if elem is None:
        return None
    value = elem.value
    if value is None or value == "":
        return ()
    if isinstance(value, bytes | bytearray) or elem.VR == "SQ":
        return None  # binary or a sequence where text was expected: not comparable
    if isinstance(value, str | int | float) or not hasattr(value, "__iter__"):
        return (str(value).strip()[:MAX_TEXT],)
    return tuple(str(v).strip()[:MAX_TEXT] for v in list(value)[:MAX_VALUES])
