"""Which instances go through the pixel stage, and which device regions are always removed.

The policy is ``rules/pixels.yaml`` (or a site's file); the known regions are
``rules/burned-in-regions.yaml`` (translated from deid/CTP) plus any the site adds. The safe
default checks every frame of every image: BurnedInAnnotation is often absent or wrong. A
site narrows it with ``skip`` rules; ``always_check`` rules win over ``skip``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dicomnode.errors import ConfigError
from dicomnode.pixels.boxes import Box
from dicomnode.scrub.profile import rules_dir

__all__ = ["Decision", "PixelPolicy", "load_policy"]


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


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str = "check"
    always_check: list[_Match] = []
    skip: list[_Match] = []
    regions: list[dict[str, Any]] = []
    use_known_regions: bool = True


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


def _condition(cond: Mapping[str, Any], header: Mapping[str, Any]) -> bool:
    field, op = cond["field"], cond["op"]
    present = field in header and header[field] not in (None, "")
    if op == "present":
        return present
    if op == "missing":
        return field not in header
    if op == "empty":
        return field in header and header[field] in (None, "")
    if not present:
        return False
    text = _text(header[field])
    wanted = str(cond.get("value", ""))
    if op == "equals":
        return text.strip() == wanted.strip()
    if op == "notequals":
        return text.strip() != wanted.strip()
    if op == "startswith":
        return text.lower().startswith(wanted.lower())
    try:
        found = re.search(wanted, text, re.IGNORECASE) is not None
    except re.error:
        found = False
    return found or wanted.lower() in text.lower()


@dataclass(frozen=True)
class _Region:
    label: str
    when: tuple[tuple[Mapping[str, Any], ...], ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    whole_image: bool
    keep_only: str | None

    def applies(self, header: Mapping[str, Any]) -> bool:
        return all(any(_condition(c, header) for c in group) for group in self.when)


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
                fields.update(str(c["field"]) for c in group)
        self.fields = frozenset(fields)

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
        rows = int(header.get("Rows") or 0) or 1 << 16
        cols = int(header.get("Columns") or 0) or 1 << 16
        boxes: list[Box] = []
        keep: list[Box] = []
        for region in self.regions:
            if not region.applies(header):
                continue
            if region.whole_image:
                boxes.append(Box(0, 0, cols, rows, source="region"))
            for x0, y0, x1, y1 in region.boxes:
                boxes.append(Box(x0, y0, x1, y1, source="region").clipped(cols, rows))
            if region.keep_only == "SequenceOfUltrasoundRegions":
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
        return tuple(b for b in boxes if b.area > 0), tuple(keep)


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _region(raw: Mapping[str, Any], where: str) -> _Region:
    try:
        return _Region(
            label=str(raw.get("label", "?")),
            when=tuple(tuple(group) for group in raw.get("when", [])),
            boxes=tuple(tuple(int(v) for v in box) for box in raw.get("boxes", [])),  # type: ignore[misc]
            whole_image=bool(raw.get("whole_image", False)),
            keep_only=raw.get("keep_only"),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{where}: region {raw.get('label', '?')!r}: {exc}; boxes are "
            "[x0, y0, x1, y1] in pixels"
        ) from None


def load_policy(path: Path | None = None) -> PixelPolicy:
    """The pixel policy (default: rules/pixels.yaml), validated, with its known regions."""
    path = path or rules_dir() / "pixels.yaml"
    data = _load_yaml(path)
    try:
        spec = _PolicyFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
    if spec.default not in ("check", "skip"):
        raise ConfigError(f"{path}: default: use check or skip, not {spec.default!r}")
    regions = [_region(r, str(path)) for r in spec.regions]
    if spec.use_known_regions:
        known = _load_yaml(rules_dir() / "burned-in-regions.yaml").get("regions", [])
        regions += [_region(r, "burned-in-regions.yaml") for r in known if r.get("enabled", True)]
    return PixelPolicy(spec, regions, str(path))
