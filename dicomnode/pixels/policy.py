"""Which instances go through the pixel stage, and which device regions are always removed.

The policy is ``rules/pixels.yaml`` (or a site's file); the known regions are
``rules/burned-in-regions.yaml`` (translated from deid/CTP) plus any the site adds. The safe
default checks every frame of every image: BurnedInAnnotation is often absent or wrong. A
site narrows it with ``skip`` rules; ``always_check`` rules win over ``skip``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydicom.datadict import keyword_dict, repeater_has_keyword

from dicomnode.errors import InstanceError
from dicomnode.pixels.boxes import Box
from dicomnode.scrub.profile import rules_dir
from dicomnode.validate import parse_model, read_yaml

__all__ = ["Decision", "Operator", "PixelPolicy", "load_policy", "load_regions"]


class Operator(StrEnum):
    """How a region's condition compares a header value (``op:``)."""

    PRESENT = "present"  # the attribute is there with a value
    MISSING = "missing"  # the attribute is not there
    EMPTY = "empty"  # the attribute is there without a value
    EQUALS = "equals"  # the whole value, exactly (spaces around it aside)
    NOTEQUALS = "notequals"
    STARTSWITH = "startswith"  # case-insensitive
    CONTAINS = "contains"  # a case-insensitive regular expression, or the plain text

    @property
    def needs_value(self) -> bool:
        return self not in (Operator.PRESENT, Operator.MISSING, Operator.EMPTY)


_OPERATORS = ", ".join(o.value for o in Operator)


class _Match(BaseModel):
    """Conditions on header values; all given must hold, a list means any of its values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: list[str] = []
    sop_class: list[str] = []
    image_type: list[str] = []
    burned_in_annotation: list[str] = []
    manufacturer: list[str] = []

    def matches(self, header: Mapping[str, Any]) -> bool:
        checks = (
            (self.modality, [header.get("Modality", "")]),
            (self.sop_class, [header.get("SOPClassUID", "")]),
            (self.image_type, _values(header.get("ImageType"))),
            (self.burned_in_annotation, [header.get("BurnedInAnnotation", "")]),
            (self.manufacturer, [header.get("Manufacturer", "")]),
        )
        given = [(wanted, have) for wanted, have in checks if wanted]
        if not given:
            return False
        return all(
            any(str(h).strip().upper() == str(w).strip().upper() for h in have for w in wanted)
            for wanted, have in given
        )


class _Condition(BaseModel):
    """``{field: ManufacturerModelName, op: contains, value: "LOGIQ"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    op: str
    value: str | int | float | None = None
    _operator: Operator = PrivateAttr(Operator.PRESENT)
    _pattern: re.Pattern[str] | None = PrivateAttr(None)

    @field_validator("field")
    @classmethod
    def _keyword(cls, v: str) -> str:
        if v not in keyword_dict and not repeater_has_keyword(v):
            near = difflib.get_close_matches(v, list(keyword_dict), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"{v!r} is not a DICOM keyword{hint}")
        return v

    @field_validator("op")
    @classmethod
    def _op(cls, v: str) -> str:
        if v not in Operator._value2member_map_:
            raise ValueError(f"unknown operator {v!r}; use one of {_OPERATORS}")
        return v

    @model_validator(mode="after")
    def _value(self) -> _Condition:
        operator = Operator(self.op)
        if operator.needs_value and self.value is None:
            raise ValueError(f"operator {operator.value!r} needs a 'value'")
        if not operator.needs_value and self.value is not None:
            raise ValueError(f"operator {operator.value!r} takes no 'value'")
        if operator is Operator.CONTAINS:
            try:
                self._pattern = re.compile(str(self.value), re.IGNORECASE)
            except re.error as exc:
                raise ValueError(
                    f"value is not a valid regular expression ({exc.msg}); put a backslash "
                    "before ( ) [ ] . * + ? | ^ $ meant literally"
                ) from None
        self._operator = operator
        return self

    def holds(self, header: Mapping[str, Any]) -> bool:
        return _condition(self, header)


_Box = tuple[int, int, int, int]


class _RegionSpec(BaseModel):
    """A known device region: removed whenever its conditions hold, whatever OCR sees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = "region"
    origin: str | None = None
    when: list[list[_Condition]] = Field(
        default=[], description="every group must hold; within a group, any condition"
    )
    boxes: list[_Box] = []
    whole_image: bool = False
    keep_only: Literal["SequenceOfUltrasoundRegions"] | None = None
    enabled: bool = True

    @field_validator("boxes")
    @classmethod
    def _boxes(cls, v: list[_Box]) -> list[_Box]:
        for x0, y0, x1, y1 in v:
            if min(x0, y0) < 0 or x1 <= x0 or y1 <= y0:
                raise ValueError(
                    f"[{x0}, {y0}, {x1}, {y1}] is not a box: write [x0, y0, x1, y1] in pixels, "
                    "with x1 > x0 >= 0 and y1 > y0 >= 0"
                )
        return v

    @model_validator(mode="after")
    def _does_something(self) -> _RegionSpec:
        if not (self.boxes or self.whole_image or self.keep_only):
            raise ValueError("the region removes nothing: give boxes, or whole_image: true")
        if not self.when and not self.whole_image:
            raise ValueError(
                "the region has no 'when' conditions and would apply to every image; add "
                "conditions (e.g. [[{field: Modality, op: equals, value: US}]])"
            )
        return self


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str = "check"
    always_check: list[_Match] = []
    skip: list[_Match] = []
    regions: list[_RegionSpec] = []
    use_known_regions: bool = True

    @field_validator("default")
    @classmethod
    def _default(cls, v: str) -> str:
        if v not in ("check", "skip"):
            raise ValueError(f"use check or skip, not {v!r}")
        return v


class _KnownRegions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    regions: list[_RegionSpec] = []


@dataclass(frozen=True)
class Decision:
    check: bool
    why: str
    regions: tuple[Box, ...] = ()
    keep_only: tuple[Box, ...] = ()


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split("\\")
    try:
        return [str(v) for v in value]
    except TypeError:
        return [str(value)]


def _text(value: Any) -> str:
    return "+".join(_values(value))


def _condition(cond: _Condition, header: Mapping[str, Any]) -> bool:
    return _Test.of(cond).holds(header, {})


@dataclass(frozen=True, slots=True)
class _Test:
    """A condition as plain values: tested for ~100 known regions per instance, where the
    validated model's attribute access alone cost ~2 ms per instance."""

    field: str
    op: Operator
    wanted: str  # the value, spaces around it aside
    lowered: str  # ... in lower case
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, cond: _Condition) -> _Test:
        wanted = str(cond.value)
        return cls(cond.field, cond._operator, wanted.strip(), wanted.lower(), cond._pattern)

    def holds(self, header: Mapping[str, Any], texts: dict[str, str]) -> bool:
        """``texts``: the header's values as text, filled as the tests need them (one
        instance's tests share it)."""
        field, op = self.field, self.op
        value = header.get(field)
        present = field in header and value not in (None, "")
        if op is Operator.PRESENT:
            return present
        if op is Operator.MISSING:
            return field not in header
        if op is Operator.EMPTY:
            return field in header and value in (None, "")
        if not present:
            return False
        text = texts.get(field)
        if text is None:
            text = texts[field] = _text(value)
        if op is Operator.EQUALS:
            return text.strip() == self.wanted
        if op is Operator.NOTEQUALS:
            return text.strip() != self.wanted
        if op is Operator.STARTSWITH:
            return text.lower().startswith(self.lowered)
        assert op is Operator.CONTAINS and self.pattern is not None
        return self.pattern.search(text) is not None or self.lowered in text.lower()


@dataclass(frozen=True)
class _Region:
    label: str
    when: tuple[tuple[_Test, ...], ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    whole_image: bool
    keep_only: str | None

    def applies(self, header: Mapping[str, Any], texts: dict[str, str] | None = None) -> bool:
        """This region's rule alone (the policy runs all regions' tests together:
        :meth:`PixelPolicy.decide`; both through :func:`_holds`)."""
        tests = [test for group in self.when for test in group]
        numbers = iter(range(len(tests)))
        plan = tuple(tuple(next(numbers) for _ in group) for group in self.when)
        known: list[bool | None] = [None] * len(tests)
        return _holds(plan, tests, known, header, {} if texts is None else texts)


def _holds(
    plan: tuple[tuple[int, ...], ...],
    tests: list[_Test],
    known: list[bool | None],
    header: Mapping[str, Any],
    texts: dict[str, str],
) -> bool:
    """Whether a region's rule holds: every group has a test that holds. ``plan``: the
    groups as numbers into ``tests``; each outcome is kept in ``known`` for the instance's
    other regions (loops, not all(any(...)): this runs ~100 times an instance)."""
    for group in plan:
        for index in group:
            held = known[index]
            if held is None:
                held = known[index] = tests[index].holds(header, texts)
            if held:
                break
        else:
            return False
    return True


class PixelPolicy:
    def __init__(self, spec: _PolicyFile, regions: list[_Region], source: str) -> None:
        self.spec = spec
        self.regions = regions
        self.source = source
        fields = {
            "Modality",
            "SOPClassUID",
            "ImageType",
            "BurnedInAnnotation",
            "Manufacturer",
            "Rows",
            "Columns",
            "SequenceOfUltrasoundRegions",
        }
        for region in regions:
            for group in region.when:
                fields.update(c.field for c in group)
        self.fields = frozenset(fields)
        # Each distinct test once, and every region's groups as their numbers: an instance
        # runs a test once however many regions begin with it (Modality contains US, ...).
        number: dict[_Test, int] = {}
        self._plans = [
            tuple(tuple(number.setdefault(t, len(number)) for t in group) for group in r.when)
            for r in regions
        ]
        self._tests = list(number)

    def decide(self, header: Mapping[str, Any]) -> Decision:
        regions, keep = self._regions(header)
        if any(m.matches(header) for m in self.spec.always_check):
            return Decision(True, "always-check rule", regions, keep)
        if any(m.matches(header) for m in self.spec.skip):
            return Decision(
                bool(regions),
                "skip rule" + (" (known regions only)" if regions else ""),
                regions,
                keep,
            )
        return Decision(
            self.spec.default == "check" or bool(regions),
            f"default {self.spec.default}",
            regions,
            keep,
        )

    def _regions(self, header: Mapping[str, Any]) -> tuple[tuple[Box, ...], tuple[Box, ...]]:
        rows = _size(header.get("Rows"))
        cols = _size(header.get("Columns"))
        boxes: list[Box] = []
        keep: list[Box] = []
        texts: dict[str, str] = {}
        tests = self._tests
        known: list[bool | None] = [None] * len(tests)
        for region, plan in zip(self.regions, self._plans, strict=True):
            if not _holds(plan, tests, known, header, texts):
                continue
            if region.whole_image:
                boxes.append(Box(0, 0, cols, rows, source="region"))
            for x0, y0, x1, y1 in region.boxes:
                boxes.append(Box(x0, y0, x1, y1, source="region").clipped(cols, rows))
            if region.keep_only == "SequenceOfUltrasoundRegions":
                try:
                    for item in header.get("SequenceOfUltrasoundRegions") or []:
                        keep.append(
                            Box(
                                int(item.RegionLocationMinX0),
                                int(item.RegionLocationMinY0),
                                int(item.RegionLocationMaxX1) + 1,
                                int(item.RegionLocationMaxY1) + 1,
                                source="region",
                            )
                        )
                except Exception as exc:  # pydicom's, or int() of what a sender wrote
                    raise InstanceError(
                        f"the region rule {region.label!r} keeps only the ultrasound regions, "
                        f"and they cannot be read ({type(exc).__name__}); ask the sender to "
                        "fix the Sequence of Ultrasound Regions",
                        reason="pixel-decode-failed",
                    ) from None
        return tuple(b for b in boxes if b.area > 0), tuple(keep)


def _size(value: Any) -> int:
    """Rows or Columns as the header says, or a size larger than any frame when that is not
    a number (a region clipped to it is the region; the codec refuses such a frame later)."""
    try:
        return int(value or 0) or 1 << 16
    except (TypeError, ValueError):
        return 1 << 16


def _region(spec: _RegionSpec) -> _Region:
    return _Region(
        label=spec.label,
        when=tuple(tuple(_Test.of(c) for c in group) for group in spec.when),
        boxes=tuple(spec.boxes),
        whole_image=spec.whole_image,
        keep_only=spec.keep_only,
    )


def load_policy(path: Path | None = None, site_regions: Path | None = None) -> PixelPolicy:
    """The pixel policy (default: rules/pixels.yaml), validated, with its known regions and
    those of ``site_regions`` (``pixels.site_regions``, written by the review page) when that
    file exists.

    Raises :class:`~dicomnode.validate.ConfigProblems`: every mistake of the file at once,
    each with its line (an unknown operator, a condition without a field or value, a box
    that is not one, a region that removes nothing...).
    """
    path = path or rules_dir() / "pixels.yaml"
    doc = read_yaml(path, what="the pixel policy")
    spec = parse_model(_PolicyFile, doc.data if doc.data is not None else {}, doc)
    regions = [_region(r) for r in spec.regions if r.enabled]
    if spec.use_known_regions:
        known_doc = read_yaml(
            rules_dir() / "burned-in-regions.yaml", what="the known regions", strict=False
        )
        known = parse_model(_KnownRegions, known_doc.data or {}, known_doc)
        regions += [_region(r) for r in known.regions if r.enabled]
    if site_regions is not None and site_regions.exists():
        regions += load_regions(site_regions)
    return PixelPolicy(spec, regions, str(path))


def load_regions(path: Path) -> list[_Region]:
    """The enabled regions of a file holding only a ``regions:`` list (the site's regions),
    validated like the policy's own (:class:`~dicomnode.validate.ConfigProblems`)."""
    doc = read_yaml(path, what="the site's device regions")
    spec = parse_model(_KnownRegions, doc.data or {}, doc)
    return [_region(r) for r in spec.regions if r.enabled]
