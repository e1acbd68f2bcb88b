"""How well did de-identification work on a synthetic set? (``dicomnode evaluate``)

Given the originals, the de-identified copies and ``truth.json`` from ``dicomnode synth``:

- header leaks: planted header values (names, IDs, dates, times, phone numbers, e-mail
  addresses, places, and the written forms they are often rewritten in) found in any element
  of the output at any depth, private ones and the file meta information included, Pixel
  Data excepted; reported as ``file: kind (path)``, never the value;
- UIDs: one output UID per original UID and the other way round, and references
  (ReferencedSOPInstanceUID, a request's StudyInstanceUID...) that still point where they did;
- intervals: every planted instant of a patient moved by the same amount, so that every
  interval between two of them is kept to the second; times that did not move at all;
- dciodvfy errors of an output that its original does not have (when dciodvfy is installed);
- pixel leaks: planted PHI strings that OCR (detection and recognition, on every frame of the
  output) can still read;
- removal: planted PHI boxes whose text is no longer readable in the output;
- detection recall and precision of the detector on the originals, against the true boxes;
- PSNR and SSIM between original and output, inside the true boxes and outside them
  (outside should be untouched); time per frame of detection.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as time_of_day
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomnode.pixels import codec
from dicomnode.pixels.boxes import Box
from dicomnode.pixels.detect import TextDetector, find_text
from dicomnode.pixels.presence import candidates

__all__ = ["check_headers", "evaluate", "psnr", "ssim"]


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return math.inf
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two 8-bit grey images (Wang et al. 2004, Gaussian window)."""
    if min(a.shape[:2]) < 7:
        return 1.0 if np.array_equal(a, b) else 0.0
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(v: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(v, (7, 7), 1.5)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(value.mean())


def _pictures(orig: Path, anon: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """8-bit RGB pictures of both files' frames, the output scaled as the original is, so
    that a removed bright word does not look like a change of the whole image."""
    ds_before, ds_after = pydicom.dcmread(orig), pydicom.dcmread(anon)
    before, after = codec.decode(ds_before), codec.decode(ds_after)
    pictures_before, pictures_after = [], []
    for a, b in zip(before.arrays, after.arrays, strict=True):
        if a.dtype != np.uint8 and a.ndim == 2:
            low, high = float(a.min()), float(a.max()) or 1.0
            scale = 255.0 / max(high - low, 1e-9)
            pa = np.clip((a - low) * scale, 0, 255).astype(np.uint8)
            pb = np.clip((b.astype(np.float64) - low) * scale, 0, 255).astype(np.uint8)
            pictures_before.append(np.repeat(pa[:, :, None], 3, axis=2))
            pictures_after.append(np.repeat(pb[:, :, None], 3, axis=2))
        else:
            pictures_before.append(codec.display(a, before.photometric, ds_before))
            pictures_after.append(codec.display(b, after.photometric, ds_after))
    return pictures_before, pictures_after


def evaluate(
    orig: Path,
    anon: Path,
    truth: dict[str, Any],
    detector: TextDetector,
    pseudonymize: Pseudonymize,
    *,
    dciodvfy: bool = True,
    detection: bool = True,
) -> dict[str, Any]:
    """Compare ``orig`` and ``anon`` folders against ``truth``; returns the figures.

    ``detection=False`` leaves out the detector's recall and precision on the originals
    (None in the figures): what is left in the outputs is measured all the same, at about
    half the cost."""
    matched, missing, shared = _match(anon, truth, pseudonymize)
    header = _header_figures(orig, matched, shared, dciodvfy)
    totals: dict[str, Any] = {
        "instances": len(truth["instances"]),
        "pixel_leaks": [],
        "phi_boxes": 0,
        "phi_boxes_removed": 0,
        "true_boxes": 0,
        "detected_true": 0,
        "detected": 0,
        "detected_correct": 0,
        "frames": 0,
        "text_free_frames": 0,
        "text_free_untouched": 0,
        "detect_seconds": 0.0,
        "psnr_inside": [],
        "psnr_outside": [],
        "ssim_inside": [],
        "ssim_outside": [],
        "detection": detection,
    }
    for entry, output in matched:
        before, after = _pictures(orig / entry["file"], output)
        for frame_truth in entry["frames"]:
            index = frame_truth["index"]
            _score_frame(
                totals,
                entry["file"],
                index,
                before[index],
                after[index],
                frame_truth["boxes"],
                detector,
            )
    return {
        "instances": totals["instances"],
        "frames": totals["frames"],
        "missing_outputs": missing,
        **header,
        **_summarise(totals),
    }


def _score_frame(
    totals: dict[str, Any],
    name: str,
    index: int,
    before: np.ndarray,
    after: np.ndarray,
    truth_boxes: list[dict[str, Any]],
    detector: TextDetector,
) -> None:
    height, width = before.shape[:2]
    totals["frames"] += 1
    true = [Box(*t["box"]).padded(1, width, height) for t in truth_boxes]
    grey_before = cv2.cvtColor(before, cv2.COLOR_RGB2GRAY)
    grey_after = cv2.cvtColor(after, cv2.COLOR_RGB2GRAY)
    if not truth_boxes:
        totals["text_free_frames"] += 1
        totals["text_free_untouched"] += int(np.array_equal(grey_before, grey_after))
    if totals["detection"]:  # detection on the original, against the truth
        started = time.perf_counter()
        regions = candidates(before)
        found = find_text(detector, before, regions) if regions else []
        totals["detect_seconds"] += time.perf_counter() - started
        totals["true_boxes"] += len(true)
        totals["detected_true"] += sum(1 for t in true if t.covered_by(found, 0.5))
        totals["detected"] += len(found)
        totals["detected_correct"] += sum(1 for f in found if any(f.intersection(t) for t in true))
    # What OCR can still read in the output.
    readable = ""
    regions = candidates(after)
    if regions:
        boxes = find_text(detector, after, regions)
        if boxes:
            readable = " ".join(b.text or "" for b in detector.recognize(after, boxes))
    readable_norm = _norm(readable)
    for t in truth_boxes:
        if not t["phi"]:
            continue
        totals["phi_boxes"] += 1
        words = [w for w in re.split(r"[\s^,]+", t["text"]) if len(_norm(w)) >= 3]
        leaked = [w for w in words if _norm(w) in readable_norm]
        if leaked:
            totals["pixel_leaks"].append(f"{name} frame {index + 1}: {len(leaked)} word(s)")
        else:
            totals["phi_boxes_removed"] += 1
    mask = np.zeros((height, width), bool)
    for box in true:
        mask[box.y0 : box.y1, box.x0 : box.x1] = True
    if mask.any():
        totals["psnr_inside"].append(psnr(grey_before[mask], grey_after[mask]))
        ys, xs = np.nonzero(mask)
        crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        totals["ssim_inside"].append(ssim(grey_before[crop], grey_after[crop]))
    if (~mask).any():
        totals["psnr_outside"].append(psnr(grey_before[~mask], grey_after[~mask]))
        outside_before, outside_after = grey_before.copy(), grey_after.copy()
        outside_after[mask] = outside_before[mask]
        totals["ssim_outside"].append(ssim(outside_before, outside_after))


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    if not finite:
        return math.inf
    return sum(finite) / len(finite)


def _summarise(t: dict[str, Any]) -> dict[str, Any]:
    frames = max(1, t["frames"])
    measured = t["detection"]
    return {
        "pixel_leaks": t["pixel_leaks"],
        "phi_boxes": t["phi_boxes"],
        "phi_boxes_removed": t["phi_boxes_removed"],
        "phi_removed_fraction": t["phi_boxes_removed"] / max(1, t["phi_boxes"]),
        "detection_recall": t["detected_true"] / max(1, t["true_boxes"]) if measured else None,
        "detection_precision": (
            t["detected_correct"] / max(1, t["detected"]) if measured else None
        ),
        "text_free_frames": t["text_free_frames"],
        "text_free_untouched": t["text_free_untouched"],
        "psnr_inside_db": _mean(t["psnr_inside"]),
        "psnr_outside_db": _mean(t["psnr_outside"]),
        "ssim_inside": _mean(t["ssim_inside"]),
        "ssim_outside": _mean(t["ssim_outside"]),
        "detect_ms_per_frame": 1000 * t["detect_seconds"] / frames if measured else None,
    }


# --- Header figures -------------------------------------------------------------------------

_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # (Float/Double Float) Pixel Data
_TEMPORAL = ("DA", "TM", "DT")
_IDENTITY_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
# Written forms a planted DA value is also searched in (C locale month names).
_DATE_FORMS = (
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d.%m.%Y",
    "%d-%b-%y",
    "%d-%b-%Y",
    "%B %d, %Y",
    "%b %d, %Y",
    "%d %B %Y",
)
_PHONE_SEPARATORS = r"[\s().\-/]*"
_ALNUM_BEFORE, _ALNUM_AFTER = r"(?<![0-9A-Za-z])", r"(?![0-9A-Za-z])"

Pseudonymize = Callable[[str], str]
_Pair = tuple[dict[str, Any], Dataset, Dataset]  # truth entry, original, output


def _literal(text: str) -> str:
    """``text`` as a pattern: any run of spaces, and not inside a longer word or number."""
    body = r"\s+".join(re.escape(part) for part in text.split())
    before = _ALNUM_BEFORE if text[:1].isalnum() else ""
    after = _ALNUM_AFTER if text[-1:].isalnum() else ""
    return before + body + after


def _digit_run(digits: str) -> str:
    return r"(?<!\d)" + _PHONE_SEPARATORS.join(digits) + r"(?!\d)"


def _forms(kind: str, value: str) -> list[str]:
    """Patterns that find ``value`` as it was planted and in the forms it is often rewritten in."""
    value = value.strip()
    forms = [value]
    patterns: list[str] = []
    if kind == "name" and "^" in value:
        parts = [p for p in value.split("^") if p]
        forms += [" ".join(parts), ", ".join(parts)]
    elif kind == "phone":  # the digits with any separators, with and without the country code
        digits = re.sub(r"\D", "", value)
        runs = [digits]
        if value.startswith("+1"):
            runs.append(digits[1:])
        elif value.startswith("+44"):
            runs += [digits[2:], "0" + digits[2:]]
        patterns += [_digit_run(run) for run in runs if len(run) >= 7]
    elif kind == "email":
        local = value.split("@")[0]
        if len(local) >= 4:
            forms.append(local)
    elif kind == "date" and re.fullmatch(r"\d{8}", value):
        try:
            day = datetime.strptime(value, "%Y%m%d")
        except ValueError:
            pass
        else:
            forms += [day.strftime(f) for f in _DATE_FORMS]
    elif kind == "time" and (hms := re.fullmatch(r"(\d\d)(\d\d)(\d\d)(\.\d+)?", value)):
        hours, minutes, seconds = hms.group(1, 2, 3)
        forms += [hours + minutes + seconds, f"{hours}:{minutes}:{seconds}", f"{hours}:{minutes}"]
    return patterns + [_literal(f) for f in dict.fromkeys(forms) if len(f) >= 3]


def _needles(entry: dict[str, Any]) -> dict[str, re.Pattern[str]]:
    """One pattern per kind for the values planted in this instance."""
    planted = entry.get("header_planted")
    if planted is None:  # a truth.json of an earlier version: identity strings, untyped
        planted = [{"kind": "header", "value": v} for v in entry.get("header_phi", [])]
    by_kind: dict[str, list[str]] = defaultdict(list)
    for item in planted:
        by_kind[item["kind"]] += _forms(item["kind"], str(item["value"]))
    return {
        kind: re.compile("|".join(dict.fromkeys(forms)), re.IGNORECASE)
        for kind, forms in by_kind.items()
        if forms
    }


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1")
    if isinstance(value, str):
        return value
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_as_text(v) for v in value)
    return str(value)


def _walk(ds: Dataset, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(path, VR, value as text) of every element at every depth, private ones included and
    Pixel Data excepted; a path reads ``Keyword[item].Keyword``, ``(gggg,eeee)`` if private."""
    for tag in list(ds.keys()):
        if tag in _PIXEL_TAGS:
            continue
        name = f"({tag.group:04X},{tag.element:04X})"
        try:
            element = ds[tag]
        except Exception:  # a value pydicom cannot decode: its bytes are searched as they are
            yield prefix + name, "UN", _as_text(getattr(ds.get_item(tag), "value", b""))
            continue
        path = prefix + (element.keyword or name)
        if element.VR == "SQ":
            for index, item in enumerate(element.value or []):
                yield from _walk(item, f"{path}[{index}].")
        else:
            yield path, element.VR, _as_text(element.value)


def _everything(ds: Dataset) -> Iterator[tuple[str, str, str]]:
    """The data set, its file meta information and its preamble, as ``_walk`` gives them."""
    yield from _walk(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield from _walk(meta, "meta.")
    preamble = getattr(ds, "preamble", None)
    if preamble and any(preamble):
        yield "preamble", "OB", _as_text(preamble)


def _temporal_text(vr: str, text: str) -> str:
    """A DT split into its date and time, so that either is found on its own."""
    if vr != "DT":
        return text
    return "\\".join(f"{v[:8]} {v[8:]}" for v in text.split("\\"))


def _leaks(entry: dict[str, Any], before: Dataset, after: Dataset) -> list[str]:
    """``file: kind (path)`` for each element of the output where a planted value is found.

    A date or time element whose value changed is a shifted value, not a planted one: it is
    searched only when it kept the original's value (or has no counterpart there)."""
    needles = _needles(entry)
    original = {path: text for path, vr, text in _walk(before) if vr in _TEMPORAL}
    found: list[str] = []
    for path, vr, text in _everything(after):
        if vr in _TEMPORAL:
            if path in original and original[path] != text:
                continue
            text = _temporal_text(vr, text)
        for kind, pattern in needles.items():
            if pattern.search(text):
                found.append(f"{entry['file']}: {kind} ({path})")
    return found


def _uid_errors(pairs: list[_Pair]) -> list[str]:
    """One original UID, one output UID, and the other way round; references follow."""
    outputs: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    originals: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    errors: list[str] = []
    for entry, before, after in pairs:
        name = entry["file"]
        for keyword in _IDENTITY_UIDS:
            if keyword not in before:
                continue
            if not after.get(keyword):
                errors.append(f"{name}: {keyword} removed")
                continue
            source, target = str(before[keyword].value), str(after[keyword].value)
            outputs[source][target].append(f"{keyword} of {name}")
            originals[target][source].append(f"{keyword} of {name}")
        meta = getattr(after, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPInstanceUID") != after.get(
            "SOPInstanceUID"
        ):
            errors.append(f"{name}: MediaStorageSOPInstanceUID is not the SOPInstanceUID")
    for targets in outputs.values():
        if len(targets) > 1:
            where = ", ".join(sorted(w for ws in targets.values() for w in ws)[:4])
            errors.append(f"one original UID became {len(targets)} UIDs: {where}")
    for sources in originals.values():
        if len(sources) > 1:
            where = ", ".join(sorted(w for ws in sources.values() for w in ws)[:4])
            errors.append(f"{len(sources)} original UIDs became one: {where}")
    mapping = {s: next(iter(t)) for s, t in outputs.items() if len(t) == 1}
    for entry, before, after in pairs:
        present = {path: text for path, vr, text in _walk(after) if vr == "UI"}
        for path, vr, text in _walk(before):
            if vr != "UI" or path in _IDENTITY_UIDS or text not in outputs:
                continue
            got = present.get(path)
            if got is None:
                errors.append(f"{entry['file']}: reference {path} removed")
            elif got not in originals:
                errors.append(f"{entry['file']}: reference {path} points to no output")
            elif text in mapping and got != mapping[text]:
                errors.append(f"{entry['file']}: reference {path} points to another UID")
    return errors


def _value_at(ds: Dataset, path: str) -> str | None:
    """The value at ``Keyword[item].Keyword`` as text; None when absent or empty."""
    node: Any = ds
    for step in path.split("."):
        keyword, _, index = step.partition("[")
        if not isinstance(node, Dataset) or keyword not in node:
            return None
        node = node[keyword].value
        if index:
            try:
                node = node[int(index.rstrip("]"))]
            except (IndexError, TypeError, ValueError):
                return None
    text = _as_text(node).strip()
    return text or None


def _parse_date(text: str) -> date | None:
    digits = re.sub(r"\D", "", text)
    try:
        return datetime.strptime(digits[:8], "%Y%m%d").date() if len(digits) >= 8 else None
    except ValueError:
        return None


def _parse_time(text: str) -> time_of_day | None:
    hms = re.fullmatch(r"(\d\d)(\d\d)?(\d\d)?(?:\.\d*)?", text.replace(":", "").strip())
    if hms is None:
        return None
    hours, minutes, seconds = (int(part or 0) for part in hms.group(1, 2, 3))
    try:
        return time_of_day(hours, minutes, seconds)
    except ValueError:  # 24 hours, 60 seconds: not a time
        return None


def _parse_datetime(text: str) -> datetime | None:
    """A DT to the second; UTC when it states no offset."""
    dt = re.fullmatch(
        r"(\d{4})(\d\d)?(\d\d)?(\d\d)?(\d\d)?(\d\d)?(?:\.\d*)?(?:([+-])(\d\d)(\d\d))?",
        text.strip(),
    )
    if dt is None:
        return None
    year, month, day, hours, minutes, seconds = (
        int(part) if part else default
        for part, default in zip(dt.groups()[:6], (0, 1, 1, 0, 0, 0), strict=True)
    )
    sign, zone_hours, zone_minutes = dt.group(7, 8, 9)
    offset = timedelta(hours=int(zone_hours), minutes=int(zone_minutes)) if sign else timedelta(0)
    try:
        zone = timezone(-offset if sign == "-" else offset)
        return datetime(year, month, day, hours, minutes, seconds, tzinfo=zone)
    except ValueError:
        return None


def _vr(path: str) -> str:
    """The dictionary VR of the last keyword of a path; "" for a private or unknown one."""
    try:
        return str(dictionary_VR(path.rpartition(".")[2].partition("[")[0]))
    except KeyError:
        return ""


def _instants(values: Mapping[str, str | None]) -> dict[str, datetime | date | None]:
    """Date+time pairs (StudyDate with StudyTime...) as one instant, DTs as instants, dates
    alone as dates; times alone are not instants."""
    found: dict[str, datetime | date | None] = {}
    for path, value in values.items():
        head, _, keyword = path.rpartition(".")
        vr = _vr(path)
        if vr == "DT":
            found[path] = _parse_datetime(value) if value else None
        elif vr == "DA":
            time_path = (f"{head}." if head else "") + keyword.replace("Date", "Time")
            day = _parse_date(value) if value else None
            if time_path != path and time_path in values:
                moment = values[time_path]
                clock = _parse_time(moment) if moment else None
                found[f"{path}+{keyword.replace('Date', 'Time')}"] = (
                    datetime.combine(day, clock, UTC) if day and clock is not None else None
                )
            else:
                found[path] = day
    return found


def _intervals(pairs: list[_Pair]) -> tuple[list[str], list[str]]:
    """(interval errors, patients whose times were not shifted), patient by patient.

    Every planted instant of a patient must move by the same amount (datetimes to the second,
    dates alone by whole days): then every interval between two of them is kept."""
    patients: dict[str, list[_Pair]] = defaultdict(list)
    for pair in pairs:
        patients[str(pair[1].get("PatientID", pair[0]["file"]))].append(pair)
    errors: list[str] = []
    unshifted: list[str] = []
    for group in patients.values():
        label = f"patient of {group[0][0]['file']}"
        moves: dict[str, list[tuple[int, str]]] = defaultdict(list)
        clocks: list[bool] = []
        for entry, _, after in group:
            planted = {i["path"]: i["value"] for i in entry.get("instants", [])}
            output = {path: _value_at(after, path) for path in planted}
            was, now = _instants(planted), _instants(output)
            for name, moment in was.items():
                where = f"{entry['file']} {name}"
                shifted = now.get(name)
                if moment is None:
                    continue
                if shifted is None:
                    errors.append(f"{label}: {where} missing or unreadable in the output")
                elif isinstance(moment, datetime) and isinstance(shifted, datetime):
                    seconds = shifted.replace(microsecond=0) - moment.replace(microsecond=0)
                    moves["s"].append((int(seconds.total_seconds()), where))
                elif not isinstance(moment, datetime) and not isinstance(shifted, datetime):
                    moves["days"].append(((shifted - moment).days, where))
            for path, value in planted.items():
                kept = output[path]
                vr = _vr(path)
                if vr in ("TM", "DT") and kept:
                    clock = value[8:14] if vr == "DT" else value.replace(":", "")[:6]
                    new_clock = kept[8:14] if vr == "DT" else kept.replace(":", "")[:6]
                    clocks.append(clock == new_clock)
        for unit, shifts in moves.items():
            usual = Counter(delta for delta, _ in shifts).most_common(1)[0][0]
            errors += [
                f"{label}: {where} moved {delta - usual:+d} {unit} relative to the others"
                for delta, where in shifts
                if delta != usual
            ]
        if clocks and all(clocks):
            unshifted.append(f"{label}: times not shifted ({len(clocks)} values)")
    return errors, unshifted


def _dciodvfy_errors(tool: str, path: Path) -> set[str]:
    """dciodvfy's error lines for one file, numbers normalised so that values do not count."""
    run = subprocess.run(
        [tool, str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=300,
        check=False,
    )
    lines = (run.stdout + run.stderr).splitlines()
    return {re.sub(r"\d+(\.\d+)*", "N", line.strip()) for line in lines if line.startswith("Error")}


def _dciodvfy_new_errors(files: list[tuple[str, Path, Path]]) -> list[str] | None:
    """``file: error`` for each dciodvfy error of an output that its original does not have;
    None when dciodvfy is not installed (Debian: dicom3tools)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        return None
    paths = [path for _, before, after in files for path in (before, after)]
    with ThreadPoolExecutor(2) as pool:
        errors = dict(zip(paths, pool.map(partial(_dciodvfy_errors, tool), paths), strict=True))
    return [
        f"{name}: {line}"
        for name, before, after in files
        for line in sorted(errors[after] - errors[before])
    ]


def _match(
    anon: Path, truth: dict[str, Any], pseudonymize: Pseudonymize
) -> tuple[list[tuple[dict[str, Any], Path]], list[str], list[str]]:
    """(truth entry, output) pairs found by pseudonymised SOP Instance UID; the entries with no
    output; outputs that share one SOP Instance UID."""
    outputs: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(anon.rglob("*.dcm")):
        uid = pydicom.dcmread(path, stop_before_pixels=True).get("SOPInstanceUID")
        if uid:
            outputs[str(uid)].append(path)
    matched: list[tuple[dict[str, Any], Path]] = []
    missing: list[str] = []
    shared: list[str] = []
    for entry in truth["instances"]:
        found = outputs.get(pseudonymize(entry["sop_instance_uid"]), [])
        if not found:
            missing.append(entry["file"])
            continue
        if len(found) > 1:
            shared.append(f"{entry['file']}: {len(found)} outputs have its SOPInstanceUID")
        matched.append((entry, found[0]))
    return matched, missing, shared


def _header_figures(
    orig: Path, matched: list[tuple[dict[str, Any], Path]], shared: list[str], dciodvfy: bool
) -> dict[str, Any]:
    leaks: list[str] = []
    pairs: list[_Pair] = []
    for entry, output in matched:
        before, after = pydicom.dcmread(orig / entry["file"]), pydicom.dcmread(output)
        leaks += dict.fromkeys(_leaks(entry, before, after))
        pairs.append((entry, before, after))
    uid_errors = shared + _uid_errors(pairs)
    interval_errors, unshifted = _intervals(pairs)
    files = [(entry["file"], orig / entry["file"], output) for entry, output in matched]
    return {
        "header_leaks": leaks,
        "header_leaks_by_kind": dict(Counter(line.split(": ", 1)[1].split()[0] for line in leaks)),
        "uids_consistent": not uid_errors,
        "uid_errors": uid_errors,
        "intervals_kept": not interval_errors,
        "interval_errors": interval_errors,
        "times_unshifted": unshifted,
        "dciodvfy_new_errors": _dciodvfy_new_errors(files) if dciodvfy else None,
    }


def check_headers(
    orig: Path,
    anon: Path,
    truth: dict[str, Any],
    pseudonymize: Pseudonymize,
    *,
    dciodvfy: bool = True,
) -> dict[str, Any]:
    """The header figures of :func:`evaluate` alone (no OCR, no images).

    Returns ``missing_outputs``, ``header_leaks`` (``file: kind (path)``, never the value) and
    ``header_leaks_by_kind``, ``uids_consistent`` with ``uid_errors``, ``intervals_kept`` with
    ``interval_errors``, ``times_unshifted``, and ``dciodvfy_new_errors`` (None when dciodvfy
    is not installed or ``dciodvfy`` is false).
    """
    matched, missing, shared = _match(anon, truth, pseudonymize)
    return {
        "instances": len(truth["instances"]),
        "missing_outputs": missing,
        **_header_figures(orig, matched, shared, dciodvfy),
    }
