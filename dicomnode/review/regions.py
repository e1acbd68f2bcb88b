"""A known region for one device, added from the review page to the project's pixel policy.

The rule keys on the device (Manufacturer and ManufacturerModelName, exactly) and the image
size (Rows, Columns), in the form of ``rules/burned-in-regions.yaml``: one line of JSON flow
style, appended to the ``regions:`` list of the policy file the project's ``pixels.policy``
names or, where the project uses the bundled policy, of its ``pixels.site_regions`` file
(created on first use). The whole file is validated with the policy's own loader before it
replaces the old one (atomically); comments and layout of the rest of the file are kept.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from dicomnode.config import Config, PixelConfig
from dicomnode.durable import fsync_dir, write_temp
from dicomnode.errors import ConfigError

__all__ = ["append_region", "policy_of", "region_rule"]

_LOCK = threading.Lock()


def policy_of(config: Config, project: str) -> PixelConfig:
    """The pixel settings of an item's project (the top-level ones without projects)."""
    for configured in config.projects:
        if configured.name == project:
            return configured.pixels
    if config.projects:
        raise ConfigError(f"project {project} is not configured any more")
    return config.pixels


def region_rule(
    summary: dict[str, str], box: tuple[int, int, int, int], *, user: str, item_id: str
) -> dict[str, Any]:
    """The rule for the device and image size of ``summary``, removing ``box``."""
    manufacturer, model = summary.get("manufacturer", ""), summary.get("model", "")
    rows, columns = summary.get("rows", ""), summary.get("columns", "")
    if not manufacturer or not model:
        raise ConfigError(
            "the original has no Manufacturer or no ManufacturerModelName: a rule keyed on the "
            "device cannot be made from it; write one by hand in the pixel policy"
        )
    if not rows.isdigit() or not columns.isdigit():
        raise ConfigError("the original's Rows and Columns cannot be read")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= int(columns) and 0 <= y0 < y1 <= int(rows)):
        raise ConfigError(
            f"[{x0}, {y0}, {x1}, {y1}] is not a box inside the {columns} x {rows} image: give "
            "x0 < x1 <= columns and y0 < y1 <= rows, in pixels"
        )
    return {
        "label": f"{manufacturer} {model} {columns}x{rows}"[:120],
        "origin": (f"review page, {user}, {time.strftime('%Y-%m-%d')}, from spool item {item_id}"),
        "when": [
            [{"field": "Manufacturer", "op": "equals", "value": manufacturer}],
            [{"field": "ManufacturerModelName", "op": "equals", "value": model}],
            [{"field": "Rows", "op": "equals", "value": rows}],
            [{"field": "Columns", "op": "equals", "value": columns}],
        ],
        "boxes": [[x0, y0, x1, y1]],
        "enabled": True,
    }


def _with_rule(text: str, rule: dict[str, Any]) -> str:
    """``text`` with ``rule`` appended to its ``regions:`` list, the rest untouched."""
    flow = json.dumps(rule, ensure_ascii=True)
    if text and not text.endswith("\n"):
        text += "\n"
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return text + f"regions:\n  - {flow}\n"
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError("the pixel policy is not a mapping of settings")
    for key, value in root.value:
        if key.value != "regions":
            continue
        if isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null"):
            start, end = key.end_mark.index, value.end_mark.index
            return text[:start] + f":\n  - {flow}" + text[end:]
        if not isinstance(value, yaml.SequenceNode):
            raise ConfigError("regions: in the pixel policy is not a list")
        if value.flow_style:
            close = value.end_mark.index - 1
            joint = ", " if value.value else ""
            return text[:close] + joint + flow + text[close:]
        last = value.value[-1]
        pos = last.end_mark.index
        if last.end_mark.column != 0:
            newline = text.find("\n", pos)
            pos = len(text) if newline < 0 else newline + 1
        indent = " " * value.start_mark.column
        return text[:pos] + f"{indent}- {flow}\n" + text[pos:]
    return text + f"regions:\n  - {flow}\n"


SITE_REGIONS_HEADER = """\
# Device regions added from the review page (pixels.site_regions). Each rule removes its boxes
# from every image of that manufacturer, model and size; set "enabled": false to turn one off.
regions:
"""


def append_region(path: Path, rule: dict[str, Any], *, regions_only: bool = False) -> None:
    """Append ``rule`` to the policy file at ``path`` (``regions_only``: a site regions file,
    created when absent), validated as a whole first.

    Raises :class:`ConfigError` (or the loader's ``ConfigProblems``): the file is then left
    as it was.
    """
    from dicomnode.pixels.policy import load_policy, load_regions

    with _LOCK:
        try:
            if regions_only and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                text = SITE_REGIONS_HEADER
            else:
                text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the pixel policy {path} ({exc.strerror})") from None
        before = (yaml.safe_load(text) or {}).get("regions") or []
        new = _with_rule(text, rule)
        after = (yaml.safe_load(new) or {}).get("regions") or []
        if after != [*before, rule]:
            raise ConfigError(
                f"the rule could not be added to {path} without changing the rest; add it by "
                "hand under regions:"
            )
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o640
        staged = write_temp(path.parent, new.encode("utf-8"), mode=mode)
        try:
            if regions_only:
                load_regions(staged)  # the policy loader's validation, on the whole new file
            else:
                load_policy(staged)
            staged.replace(path)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
